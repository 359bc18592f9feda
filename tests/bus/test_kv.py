"""Typed, signed KV on a real JetStream: compare-and-set, ownership, forged records.

Scope: libs.common.kv against the fabric's buckets with the generated server permissions.
"""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest

from libs.common.bus import Bus, tls_context
from libs.common.envelope import Rejected, seal_record
from libs.common.errors import Conflict
from libs.common.kv import TypedKV
from libs.common.messages import Message
from libs.common.state import ensure_state
from libs.common.testing import NODE, FabricPki, NatsServer


class Item(Message):
    name: str
    size: int = 0


@pytest.fixture
async def admin_nc(fabric_pki: FabricPki, nats_server: NatsServer):  # type: ignore[no-untyped-def]
    """An admin connection that has created the fabric's streams and buckets."""
    nc = await nats.connect(
        nats_server.url,
        tls=tls_context(fabric_pki.pki, fabric_pki.identity("user", "admin")),
        tls_handshake_first=True,
        allow_reconnect=False,
    )
    await ensure_state(nc.jetstream())
    yield nc
    await nc.close()


async def _typed(bus: Bus, bucket: str) -> TypedKV[Item]:
    return await bus.kv(bucket, Item)


async def test_create_update_are_compare_and_set(admin_nc, connect_bus, fabric_pki: FabricPki) -> None:  # type: ignore[no-untyped-def]
    vnet: Bus = await connect_bus(fabric_pki.identity("node", "vnet", NODE))
    store = await _typed(vnet, "qnf-networks")
    rev = await store.create("blue", Item(name="blue"))
    with pytest.raises(Conflict):
        await store.create("blue", Item(name="blue", size=1))
    record = await store.get("blue")
    assert record is not None and record.value == Item(name="blue") and record.revision == rev
    rev2 = await store.update("blue", Item(name="blue", size=2), rev)
    with pytest.raises(Conflict):
        await store.update("blue", Item(name="blue", size=3), rev)  # stale revision loses
    await store.delete("blue", rev2)
    assert await store.get("blue") is None
    await store.create("blue", Item(name="blue", size=4))  # re-create after delete
    assert [r.value.size for r in await store.items()] == [4]


async def test_concurrent_creates_have_exactly_one_winner(admin_nc, connect_bus, fabric_pki) -> None:  # type: ignore[no-untyped-def]
    buses = [await connect_bus(fabric_pki.identity("node", "vnet", NODE)) for _ in range(2)]
    stores = [await _typed(b, "qnf-ipam") for b in buses]
    results = await asyncio.gather(
        *(stores[i % 2].create("net.10-0-0-5", Item(name=f"owner{i}")) for i in range(10)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if isinstance(r, int)) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, int))


async def test_non_owner_cannot_write_bucket(admin_nc, connect_bus, fabric_pki) -> None:  # type: ignore[no-untyped-def]
    firewall: Bus = await connect_bus(fabric_pki.identity("node", "firewall", NODE))
    store = await _typed(firewall, "qnf-networks")
    with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
        await store.put("red", Item(name="red"))  # the server refuses the publish: no ack arrives


async def test_reader_refuses_records_of_a_non_owner_or_unsigned(admin_nc, connect_bus, fabric_pki) -> None:  # type: ignore[no-untyped-def]
    vnet: Bus = await connect_bus(fabric_pki.identity("node", "vnet", NODE))
    firewall: Bus = await connect_bus(fabric_pki.identity("node", "firewall", NODE))
    kv = await admin_nc.jetstream().key_value("qnf-networks")
    # Even if a writer got past the server (here: admin writes the bytes), the reader checks the signer.
    await kv.put("forged", seal_record(firewall.signer, "qnf-networks", "forged", b'{"name":"forged"}'))
    await kv.put("plain", b'{"name":"plain"}')
    store = await _typed(vnet, "qnf-networks")
    with pytest.raises(Rejected) as info:
        await store.get("forged")
    assert info.value.reason == "forbidden"
    with pytest.raises(Rejected) as info:
        await store.get("plain")
    assert info.value.reason == "malformed"
    assert await store.items() == []


async def test_watch_sees_current_then_changes(admin_nc, connect_bus, fabric_pki) -> None:  # type: ignore[no-untyped-def]
    vnet: Bus = await connect_bus(fabric_pki.identity("node", "vnet", NODE))
    store = await _typed(vnet, "qnf-endpoints")
    await store.put("a", Item(name="a"))
    seen: list[tuple[str, int | None] | None] = []

    async def watch() -> None:
        async for change in store.watch():
            seen.append(None if change is None else (change.key, change.value.size if change.value else None))
            if len(seen) == 4:
                return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    await store.put("b", Item(name="b", size=2))
    await store.delete("a")
    await asyncio.wait_for(task, 5)
    assert seen == [("a", 0), None, ("b", 2), ("a", None)]
