"""The node's own addresses, read by netlink in the service's network namespace (the node's)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address, ip_address

from pyroute2 import IPRoute


def _read() -> set[IPv4Address | IPv6Address]:
    with IPRoute() as ipr:
        return {ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}


async def node_addresses() -> set[IPv4Address | IPv6Address]:
    return await asyncio.get_running_loop().run_in_executor(None, _read)
