"""vnet's state in JetStream KV: networks, endpoints and address leases (DESIGN §4).

`AddressBook` mirrors the lease bucket in memory so that choosing a candidate address costs no
round trip; the mirror is only a hint. A claim is a create-if-absent write, so a stale mirror can
cost a retry, never a duplicate address.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from libs.common.bus import Bus
from libs.common.errors import Conflict
from libs.common.kv import TypedKV
from libs.common.messages import Endpoint, Lease, Network
from services.vnet.core.ipam import Address
from services.vnet.core.names import lease_key


@dataclass
class Stores:
    networks: TypedKV[Network]
    endpoints: TypedKV[Endpoint]
    leases: TypedKV[Lease]

    @classmethod
    async def open(cls, bus: Bus) -> Stores:
        return cls(
            await bus.kv("qnf-networks", Network),
            await bus.kv("qnf-endpoints", Endpoint),
            await bus.kv("qnf-ipam", Lease),
        )


class AddressBook:
    """Which addresses of each network are leased, and to whom (a mirror of `qnf-ipam`)."""

    def __init__(self, leases: TypedKV[Lease]) -> None:
        self._kv = leases
        self.used: dict[str, dict[Address, str]] = defaultdict(dict)
        self.last: dict[tuple[str, int], Address] = {}

    async def load(self) -> None:
        """Replace the mirror with what KV holds now."""
        self.used.clear()
        for record in await self._kv.items():
            self.used[record.value.network][record.value.address] = record.value.owner

    async def claim(self, lease: Lease) -> bool:
        """Create-if-absent; False (and the mirror learns) if someone else holds the address."""
        try:
            await self._kv.create(lease_key(lease.network, str(lease.address)), lease)
        except Conflict:
            current = await self._kv.get(lease_key(lease.network, str(lease.address)))
            self.used[lease.network][lease.address] = current.value.owner if current else "?"
            return False
        self.used[lease.network][lease.address] = lease.owner
        self.last[(lease.network, lease.address.version)] = lease.address
        return True

    async def release(self, network: str, address: Address, owner: str) -> bool:
        """Release only if `owner` still holds it: a late remove never frees a newer holder's address."""
        key = lease_key(network, str(address))
        current = await self._kv.get(key)
        if current is None:
            self.used[network].pop(address, None)
            return False
        if current.value.owner != owner:
            self.used[network][address] = current.value.owner
            return False
        try:
            await self._kv.delete(key, current.revision)
        except Conflict:
            return False
        self.used[network].pop(address, None)
        return True

    def owned_by(self, owner: str) -> list[tuple[str, Address]]:
        return [
            (net, addr) for net, addrs in self.used.items() for addr, who in addrs.items() if who == owner
        ]

    def forget_network(self, network: str) -> None:
        self.used.pop(network, None)
