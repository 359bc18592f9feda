"""Published ports: ids and the conflict rule, without I/O.

A host port is one (node, protocol, port) and is published either on every node address or on
chosen addresses; a wildcard and any specific address of the same port conflict, as they would
for two sockets. The id names exactly that slot, so a KV create refuses a second writer.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from libs.common.messages import PortMapping, PublishedPort


def port_id(node: str, mapping: PortMapping) -> str:
    host = "any" if mapping.host_ip is None else str(mapping.host_ip).replace(":", "_").replace(".", "-")
    return f"{node}.{mapping.protocol}.{mapping.host_port}.{host}"


def same_target(a: PublishedPort, endpoint_id: str, mapping: PortMapping) -> bool:
    """True if `a` already publishes `mapping` to that endpoint: a retry, not a conflict."""
    return (
        a.endpoint_id == endpoint_id
        and a.container_port == mapping.container_port
        and a.protocol == mapping.protocol
        and a.host_port == mapping.host_port
        and a.host_ip == mapping.host_ip
    )


def conflicting(existing: Iterable[PublishedPort], node: str, mapping: PortMapping) -> PublishedPort | None:
    """The published port on `node` that holds the host port `mapping` asks for, if any."""
    for p in existing:
        if p.node != node or p.protocol != mapping.protocol or p.host_port != mapping.host_port:
            continue
        if p.host_ip is None or mapping.host_ip is None or p.host_ip == mapping.host_ip:
            return p
    return None


def host_address_error(
    host_ip: IPv4Address | IPv6Address | None,
    node_addresses: set[IPv4Address | IPv6Address],
    fabric_addresses: set[IPv4Address | IPv6Address],
) -> str | None:
    """Why `host_ip` cannot carry a published port on this node, or None if it can."""
    if host_ip is None:
        return None
    if host_ip in fabric_addresses:
        return f"host_ip: {host_ip} is a fabric gateway address; publish on a node address"
    if host_ip not in node_addresses:
        return f"host_ip: this node has no address {host_ip}"
    return None
