"""Plans: what the kernel should look like for a network's bridge and an endpoint's veth.

Built from stored records only, so the same plan can be applied on ADD and again on reconcile.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_interface

from libs.common.messages import Endpoint, Network
from services.vnet.core.names import bridge_mac

Interface = IPv4Interface | IPv6Interface


@dataclass(frozen=True)
class BridgePlan:
    """A network's bridge: name, MTU, gateway addresses with the subnet's prefix."""

    name: str
    mtu: int
    addresses: tuple[Interface, ...]
    mac: str


@dataclass(frozen=True)
class VethPlan:
    """An endpoint's veth pair: host end on the bridge, container end configured in its netns."""

    host_ifname: str
    bridge: str
    netns: str
    ifname: str
    mac: str
    mtu: int
    addresses: tuple[Interface, ...]
    gateways: tuple[IPv4Address | IPv6Address, ...]
    handoff: str | None = None  # leave the container end in the node's namespace, under this name


def bridge_plan(network: Network) -> BridgePlan:
    addresses: list[Interface] = [ip_interface(f"{network.gateway}/{network.subnet.prefixlen}")]
    if network.subnet6 is not None and network.gateway6 is not None:
        addresses.append(ip_interface(f"{network.gateway6}/{network.subnet6.prefixlen}"))
    return BridgePlan(network.bridge, network.mtu, tuple(addresses), bridge_mac(network.name))


def veth_plan(network: Network, endpoint: Endpoint) -> VethPlan:
    return VethPlan(
        host_ifname=endpoint.host_ifname,
        bridge=network.bridge,
        netns=endpoint.netns,
        ifname=endpoint.ifname,
        mac=endpoint.mac,
        mtu=endpoint.mtu,
        addresses=tuple(endpoint.addresses),
        gateways=tuple(endpoint.gateways),
        handoff=endpoint.handoff_ifname,
    )
