"""The address allocator, modelled on CNI's host-local: pure, storage-agnostic.

`candidates` yields free addresses round-robin from just after the last one handed out, wrapping
once, skipping the network address, the gateway, the IPv4 broadcast address and every address
in use. The caller claims a candidate with a create-if-absent write (compare-and-set) and, if
another replica won it, simply takes the next candidate: the allocator never decides alone that
an address is free, the store's CAS does. Static requests are checked by `check_static`.

Non-goals: per-node blocks (a later optimisation, as Calico does), more than one range per family.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
)

from libs.common.errors import Conflict, InvalidRequest

Address = IPv4Address | IPv6Address
Subnet = IPv4Network | IPv6Network

# Scanning a huge IPv6 range for a free address must stop somewhere; a /64 is never full in practice.
MAX_SCAN = 1 << 20


def reserved(subnet: Subnet, gateway: Address) -> set[Address]:
    """Addresses never handed out: network, gateway and (IPv4) broadcast."""
    out: set[Address] = {subnet.network_address, gateway}
    if isinstance(subnet, IPv4Network):
        out.add(subnet.broadcast_address)
    return out


def candidates(
    subnet: Subnet, gateway: Address, used: Container[Address], last: Address | None
) -> Iterator[Address]:
    """Free addresses in allocation order: after `last`, wrapping around once."""
    first = int(subnet.network_address)
    size = subnet.num_addresses
    skip = reserved(subnet, gateway)
    start = (int(last) - first + 1) % size if last is not None and last in subnet else 1
    for i in range(min(size, MAX_SCAN)):
        addr = ip_address(first + (start + i) % size)
        if addr not in skip and addr not in used:
            yield addr


def check_static(subnet: Subnet, gateway: Address, address: Address, used: Container[Address]) -> None:
    """Raise unless `address` may be given out on request."""
    if address not in subnet:
        raise InvalidRequest(f"requested address {address} is outside {subnet}")
    if address in reserved(subnet, gateway):
        raise InvalidRequest(f"requested address {address} is reserved in {subnet}")
    if address in used:
        raise Conflict(f"requested address {address} is already allocated")


def free_count(subnet: Subnet, gateway: Address, used_count: int) -> int:
    """How many addresses are left to hand out."""
    return subnet.num_addresses - len(reserved(subnet, gateway)) - used_count


def interface(address: Address, subnet: Subnet) -> IPv4Interface | IPv6Interface:
    """The address with its subnet's prefix length, as configured on an interface."""
    return ip_interface(f"{address}/{subnet.prefixlen}")
