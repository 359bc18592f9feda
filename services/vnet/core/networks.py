"""Network validation: a spec becomes a stored Network or an InvalidRequest/Conflict.

Rules (issue #3): a CIDR must hold a gateway and at least one endpoint; the gateway lies inside
the CIDR and is neither its network nor (IPv4) broadcast address; CIDRs of different networks
never overlap, in either family. Pure: the existing networks come in as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from libs.common.errors import Conflict, InvalidRequest
from libs.common.messages import Network, NetworkSpec, NetworkUpdate
from services.vnet.core.names import bridge_name

MAX_PREFIX_V4 = 30  # /30: network, gateway, one endpoint, broadcast
MAX_PREFIX_V6 = 126


def _gateway4(subnet: IPv4Network, gateway: IPv4Address | None) -> IPv4Address:
    if subnet.prefixlen > MAX_PREFIX_V4:
        raise InvalidRequest(
            f"subnet {subnet} is too small for a gateway and one endpoint (need /{MAX_PREFIX_V4})"
        )
    gw = gateway or subnet.network_address + 1
    if gw not in subnet:
        raise InvalidRequest(f"gateway {gw} is outside {subnet}")
    if gw in (subnet.network_address, subnet.broadcast_address):
        raise InvalidRequest(f"gateway {gw} is the network or broadcast address of {subnet}")
    return gw


def _gateway6(subnet: IPv6Network, gateway: IPv6Address | None) -> IPv6Address:
    if subnet.prefixlen > MAX_PREFIX_V6:
        raise InvalidRequest(
            f"subnet {subnet} is too small for a gateway and one endpoint (need /{MAX_PREFIX_V6})"
        )
    gw = gateway or subnet.network_address + 1
    if gw not in subnet:
        raise InvalidRequest(f"gateway {gw} is outside {subnet}")
    if gw == subnet.network_address:
        raise InvalidRequest(f"gateway {gw} is the subnet-router anycast address of {subnet}")
    return gw


def build_network(spec: NetworkSpec, existing: Iterable[Network], *, now_ms: int) -> Network:
    """Validate `spec` against the rules and the other networks; return the record to store."""
    others = [n for n in existing if n.name != spec.name]
    gateway = _gateway4(spec.subnet, spec.gateway)
    gateway6 = None
    if spec.subnet6 is not None:
        gateway6 = _gateway6(spec.subnet6, spec.gateway6)
    elif spec.gateway6 is not None:
        raise InvalidRequest("gateway6 needs subnet6")
    for other in others:
        if spec.subnet.overlaps(other.subnet):
            raise Conflict(f"subnet {spec.subnet} overlaps {other.subnet} of network {other.name}")
        if spec.subnet6 is not None and other.subnet6 is not None and spec.subnet6.overlaps(other.subnet6):
            raise Conflict(f"subnet6 {spec.subnet6} overlaps {other.subnet6} of network {other.name}")
    return Network(
        **spec.model_dump(exclude={"gateway", "gateway6"}),
        gateway=gateway,
        gateway6=gateway6,
        bridge=bridge_name(spec.name),
        created_ms=now_ms,
    )


def apply_update(network: Network, update: NetworkUpdate) -> Network:
    """The network with the update's present fields changed; CIDRs and gateways are immutable."""
    changes = update.model_dump(exclude={"name", "revision"}, exclude_none=True)
    return network.model_copy(update=changes)


def same_spec(network: Network, spec: NetworkSpec) -> bool:
    """True if creating `spec` again would give `network` (so a retried create is a no-op)."""
    gateway = spec.gateway or network.gateway
    gateway6 = spec.gateway6 or network.gateway6
    mine = network.model_dump(include=set(NetworkSpec.model_fields))
    theirs = spec.model_dump() | {"gateway": gateway, "gateway6": gateway6}
    return bool(mine == theirs)
