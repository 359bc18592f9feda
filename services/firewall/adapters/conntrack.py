"""The node's conntrack table through netlink (pyroute2): list tracked flows, delete some.

Invariants: acts in the calling process's network namespace (the node's), on one worker thread;
only entries the caller names are deleted, each by its original tuple.
Errors: netlink failures become AdapterError; an entry already gone is not an error.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address
from typing import Any, Protocol

from pyroute2.netlink.exceptions import NetlinkError

from libs.common.errors import AdapterError
from services.firewall.core.revoke import Flow


class ConntrackTable(Protocol):
    async def flows(self) -> list[tuple[Flow, Any]]: ...
    async def delete(self, handles: list[Any]) -> int: ...
    async def close(self) -> None: ...


class NetlinkConntrack:
    """The kernel's table; `flows` pairs each flow with the handle `delete` takes."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conntrack")
        self._ct: dict[int, Any] = {}

    def _sock(self, family: int) -> Any:
        # One socket per family: a ctnetlink dump returns the family its request names.
        if family not in self._ct:
            from pyroute2 import Conntrack

            self._ct[family] = Conntrack(nfgen_family=family)
        return self._ct[family]

    def _flows(self) -> list[tuple[Flow, Any]]:
        out = []
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                for entry in self._sock(family).dump_entries():
                    t = entry.tuple_orig
                    if t.saddr is None or t.daddr is None or t.proto is None:
                        continue
                    flow = Flow(ip_address(t.saddr), ip_address(t.daddr), int(t.proto), t.dport)
                    out.append((flow, t))
        except (OSError, NetlinkError) as exc:
            raise AdapterError(f"reading conntrack failed: {exc}") from exc
        return out

    def _delete(self, handles: list[Any]) -> int:
        done = 0
        for t in handles:
            try:
                self._sock(t.family).entry("del", tuple_orig=t)
                done += 1
            except (OSError, NetlinkError) as exc:
                if getattr(exc, "code", None) != errno.ENOENT:  # gone already: fine
                    raise AdapterError(f"deleting a conntrack entry failed: {exc}") from exc
        return done

    async def flows(self) -> list[tuple[Flow, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._flows)

    async def delete(self, handles: list[Any]) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._delete, handles)

    async def close(self) -> None:
        socks, self._ct = list(self._ct.values()), {}
        for ct in socks:
            await asyncio.get_running_loop().run_in_executor(self._pool, ct.close)
        self._pool.shutdown(wait=False)
