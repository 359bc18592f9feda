"""The nat actor: published ports on the bus, and the node's NAT table reconciler.

Handler table (node commands of this node's agent, one mailbox: publishes are checked for
conflicts one at a time):

    qnf.v1.node.<node>.nat.port.publish     PortPublish       → PublishedPort
    qnf.v1.node.<node>.nat.port.unpublish   PublishedPortRef  → Removed
    qnf.v1.node.<node>.nat.port.list        PublishedPortFilter → PublishedPortList

Published ports live in `qnf-ports` (this service owns it; each node's agent writes only its
node's keys). The vnet agent publishes a container's CNI `portMappings` through the same
command, so one conflict rule covers both. Networks and endpoints are watched from KV; when an
endpoint goes away its ports are unpublished. One reconciler compiles networks + ports into
`inet qnf_nat` and applies element deltas (a full replace on start and on drift); publish and
unpublish reply once the kernel enforces the change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from prometheus_client import Gauge, Histogram

from libs.common.authz import role_of
from libs.common.bus import Endpoint as BusEndpoint
from libs.common.bus import current_sender
from libs.common.errors import Conflict, InvalidRequest, NotFound, QnfError, Unavailable
from libs.common.ids import endpoint_id
from libs.common.kv import Change, TypedKV
from libs.common.messages import (
    Endpoint,
    Message,
    Network,
    PortMapping,
    PortPublish,
    PublishedPort,
    PublishedPortFilter,
    PublishedPortList,
    PublishedPortRef,
    Removed,
)
from libs.common.metrics import LATENCY_BUCKETS
from libs.common.nftables import LibNftables
from libs.common.reconcile import reconcile_forever
from libs.common.service import Context
from services.nat.core.compiler import (
    FAMILY,
    MAPS,
    SETS,
    TABLE,
    Compiled,
    Target,
    compile_nat,
    delta,
    replace_targets,
    targets,
)
from services.nat.core.ports import conflicting, host_address_error, port_id, same_target

log = logging.getLogger("qnf.nat")

ENFORCE_WAIT_S = 10.0

NodeAddresses = Callable[[], Awaitable[set[IPv4Address | IPv6Address]]]


class PortEvent(Message):
    """Events `qnf.v1.evt.nat.port.published|unpublished`."""

    port: PublishedPort
    reason: str = ""


class NatActor:
    """Owns this node's published ports and its NAT table."""

    def __init__(
        self,
        ctx: Context,
        *,
        ports: TypedKV[PublishedPort],
        networks: TypedKV[Network],
        endpoints: TypedKV[Endpoint],
        nft: LibNftables,
        node_addresses: NodeAddresses,
    ) -> None:
        self._bus = ctx.bus
        self._node = ctx.settings.node
        self._drift_check_s = ctx.settings.drift_check_s
        self._ports_kv = ports
        self._networks_kv = networks
        self._endpoints_kv = endpoints
        self._nft = nft
        self._node_addresses = node_addresses
        self.networks: dict[str, Network] = {}
        self.attached: dict[str, Endpoint] = {}  # this node's endpoints
        self.ports: dict[str, PublishedPort] = {}  # this node's
        self._revision = 0
        self._applied_revision = -1
        self._applied: Compiled | None = None
        self._compiled_targets: dict[str, list[Target]] = {}  # port id -> what `_applied` maps it to
        self._dirty_ports: set[str] = set()  # published ports changed since the last compile
        self._structural = True  # networks changed (or nothing applied yet): compile everything
        self._changed = asyncio.Event()
        self._enforced = asyncio.Condition()
        self._synced = {name: asyncio.Event() for name in ("net", "ep", "port")}
        self._tasks: list[asyncio.Task[None]] = []
        r = ctx.registry
        self._apply_seconds = Histogram(
            "qnf_nat_apply_seconds",
            "Time to apply a NAT change",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._mappings = Gauge("qnf_nat_port_mappings", "Published port mappings in force", registry=r)
        self._masqueraded = Gauge("qnf_nat_masqueraded_networks", "Networks masqueraded", registry=r)

    def endpoints(self) -> list[BusEndpoint[Any, Any]]:
        return [
            BusEndpoint("port.publish", PortPublish, PublishedPort, self.publish, scope="node", key=_ports),
            BusEndpoint(
                "port.unpublish", PublishedPortRef, Removed, self.unpublish, scope="node", key=_ports
            ),
            BusEndpoint(
                "port.list", PublishedPortFilter, PublishedPortList, self.list_ports, scope="node", key=_read
            ),
        ]

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow(self._networks_kv, "net", self._on_network)),
            asyncio.create_task(self._follow(self._endpoints_kv, "ep", self._on_endpoint)),
            asyncio.create_task(self._follow(self._ports_kv, "port", self._on_port)),
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self._synced.values())), 30)
        for port in list(self.ports.values()):
            if port.endpoint_id not in self.attached:
                await self._drop_if_orphan(port)
        await self.reconcile_once()
        reconciler = reconcile_forever(
            self._changed,
            self.reconcile_once,
            self._check_drift,
            drift_s=self._drift_check_s,
            failed=self._compile_everything_next,
            log=log,
            what="the NAT table",
        )
        self._tasks.append(asyncio.create_task(reconciler))

    async def stop(self) -> None:
        # The table stays: published ports keep working while the agent restarts.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._nft.close()

    # ------------------------------------------------------------------ desired state

    def _follow(
        self, kv: TypedKV[Any], name: str, apply: Callable[[str, Any], Awaitable[None]]
    ) -> Coroutine[Any, Any, None]:
        async def changed(change: Change[Any]) -> None:
            await apply(change.key, change.value)
            self._bump()

        return kv.follow(changed, self._synced[name])

    async def _on_network(self, key: str, value: Network | None) -> None:
        self._structural = True  # the fabric and masquerade sets: recompiled whole
        if value is None:
            self.networks.pop(key, None)
        else:
            self.networks[key] = value

    async def _on_endpoint(self, key: str, value: Endpoint | None) -> None:
        if value is not None:
            if value.node == self._node:
                before = self.attached.get(key)
                self.attached[key] = value
                if before is None or before.addresses != value.addresses:
                    self._dirty_ports |= {p.id for p in self.ports.values() if p.endpoint_id == key}
            return
        if self.attached.pop(key, None) is None:
            return
        for port in [p for p in self.ports.values() if p.endpoint_id == key]:
            await self._drop_if_orphan(port)

    async def _on_port(self, key: str, value: PublishedPort | None) -> None:
        self._dirty_ports.add(key)
        if value is None:
            self.ports.pop(key, None)
        elif value.node == self._node:
            self.ports[key] = value

    async def _drop_if_orphan(self, port: PublishedPort) -> None:
        """Unpublish a port whose endpoint is gone (checked in KV, not only in the watch)."""
        try:
            if await self._endpoints_kv.get(port.endpoint_id) is not None:
                return
            await self._ports_kv.delete(port.id)
        except QnfError as exc:
            log.warning("could not unpublish %s of a removed endpoint: %s", port.id, exc)
            return
        self.ports.pop(port.id, None)
        self._dirty_ports.add(port.id)
        self._bus.emit("port.unpublished", PortEvent(port=port, reason="endpoint removed"))

    def _bump(self) -> int:
        self._revision += 1
        self._changed.set()
        return self._revision

    # ------------------------------------------------------------------ realisation

    def _compile_everything_next(self) -> None:
        self._structural = True  # the failed step's changes are lost: compile it all

    async def reconcile_once(self) -> None:
        self._changed.clear()
        revision = self._revision
        dirty, structural = self._dirty_ports, self._structural
        self._dirty_ports, self._structural = set(), False
        started = time.perf_counter()
        if self._applied is None or structural:
            # Everything compiled again (start, drift, networks): the reference.
            self._compiled_targets = {p.id: targets([p], self.attached) for p in self.ports.values()}
            compiled = compile_nat(
                self.networks.values(), [t for ts in self._compiled_targets.values() for t in ts]
            )
            commands = compiled.full() if self._applied is None else delta(self._applied, compiled)
            kind = "full" if self._applied is None else "delta"
        else:
            # Only published ports changed: their elements out and in, nothing recompiled.
            gone, came = [], []
            for pid in dirty:
                gone += self._compiled_targets.pop(pid, [])
                port = self.ports.get(pid)
                if port is not None:
                    self._compiled_targets[pid] = targets([port], self.attached)
                    came += self._compiled_targets[pid]
            compiled, commands = replace_targets(self._applied, gone, came)
            kind = "ports"
        if commands:
            await self._nft.apply(commands)
        self._apply_seconds.labels(kind).observe(time.perf_counter() - started)
        self._applied = compiled
        self._mappings.set(len(self.ports))
        self._masqueraded.set(sum(1 for n in self.networks.values() if n.nat))
        async with self._enforced:
            self._applied_revision = revision
            self._enforced.notify_all()

    async def _until_enforced(self, revision: int) -> None:
        try:
            async with self._enforced:
                await asyncio.wait_for(
                    self._enforced.wait_for(lambda: self._applied_revision >= revision), ENFORCE_WAIT_S
                )
        except TimeoutError:
            raise Unavailable("recorded, but the node's NAT table has not applied it yet") from None

    async def _check_drift(self) -> None:
        if self._applied is None or await self._nft.unchanged():
            return  # nobody committed to nf_tables here since our last apply: nothing drifted
        applied = self._applied
        listed = await self._nft.list_table(FAMILY, TABLE)
        if applied is not self._applied:
            return  # we applied meanwhile (the listing runs beside applies): look again next time
        counts = {}
        for item in listed or []:
            obj = item.get("set") or item.get("map")
            if obj is not None:
                counts[obj["name"]] = len(obj.get("elem", []))
        want = {name: len(applied.elements[name]) for name in SETS + MAPS}
        if listed is None or counts != want:
            log.warning("the kernel drifted from the compiled NAT table; re-applying it whole")
            self._applied = None
            self._changed.set()
        else:
            self._nft.checked()

    # ------------------------------------------------------------------ handlers

    async def publish(self, req: PortPublish) -> PublishedPort:
        eid = endpoint_id(req.container_id, req.ifname)
        record = await self._endpoints_kv.get(eid)
        if record is None:
            raise NotFound(f"container {req.container_id} has no interface {req.ifname} attached")
        endpoint = record.value
        if endpoint.node != self._node:
            raise InvalidRequest(f"the endpoint is on node {endpoint.node}; publish there")
        mapping = PortMapping(
            host_port=req.host_port,
            container_port=req.container_port,
            protocol=req.protocol,
            host_ip=req.host_ip,
        )
        if mapping.host_ip is not None:
            if not any(a.version == mapping.host_ip.version for a in endpoint.addresses):
                raise InvalidRequest(f"host_ip: the endpoint has no IPv{mapping.host_ip.version} address")
            fabric = {g for n in self.networks.values() for g in (n.gateway, n.gateway6) if g is not None}
            error = host_address_error(mapping.host_ip, await self._node_addresses(), fabric)
            if error is not None:
                raise InvalidRequest(error)
        holder = conflicting(self.ports.values(), self._node, mapping)
        if holder is not None:
            if same_target(holder, eid, mapping):
                return holder
            where = "every address" if holder.host_ip is None else str(holder.host_ip)
            raise Conflict(
                f"{mapping.protocol} port {mapping.host_port} on {where} of node {self._node} is already "
                f"published to container {holder.container_id}"
            )
        sender = current_sender.get(None)
        port = PublishedPort(
            **mapping.model_dump(),
            id=port_id(self._node, mapping),
            node=self._node,
            endpoint_id=eid,
            container_id=endpoint.container_id,
            ifname=endpoint.ifname,
            network=endpoint.network,
            source=_SOURCES.get(role_of(sender) or "", "api") if sender is not None else "api",
            created_ms=int(time.time() * 1000),
        )
        await self._ports_kv.create(port.id, port)
        self.ports[port.id] = port
        self._dirty_ports.add(port.id)
        self.attached[eid] = endpoint  # the watch may not have delivered it yet
        await self._until_enforced(self._bump())
        self._bus.emit("port.published", PortEvent(port=port))
        return port

    async def unpublish(self, ref: PublishedPortRef) -> Removed:
        if not ref.id.startswith(f"{self._node}."):
            raise InvalidRequest(f"id: {ref.id} is not a port of node {self._node}")
        record = await self._ports_kv.get(ref.id)
        if record is None:
            return Removed(existed=False)
        await self._ports_kv.delete(ref.id, record.revision)
        self.ports.pop(ref.id, None)
        self._dirty_ports.add(ref.id)
        await self._until_enforced(self._bump())
        self._bus.emit("port.unpublished", PortEvent(port=record.value, reason="unpublished"))
        return Removed(existed=True)

    async def list_ports(self, flt: PublishedPortFilter) -> PublishedPortList:
        ports = sorted(self.ports.values(), key=lambda p: p.id)
        return PublishedPortList(
            ports=[p for p in ports if flt.endpoint_id is None or p.endpoint_id == flt.endpoint_id]
        )


# Who published: the vnet agent with an endpoint's own mappings (CNI portMappings, or
# EndpointAdd.port_mappings over the API), the Docker driver for `-p`, else the API.
_SOURCES: dict[str, Literal["endpoint", "docker"]] = {"vnet": "endpoint", "docker": "docker"}


def _ports(_: Message) -> str:
    return "ports"


def _read(_: Message) -> str:
    return "read"
