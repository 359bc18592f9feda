"""The firewall's view of libnftables: its two tables, their element counts and named counters.

Invariants: only the fabric's tables (`inet qnf`, `bridge qnf`) are ever named; applying,
atomicity, the generation check and the separate reader context are `libs.common.nftables`'.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from libs.common import nftables
from services.firewall.core.compiler import TABLE

FAMILIES = ("inet", "bridge")


class Nft(Protocol):
    async def apply(self, commands: list[dict[str, Any]]) -> None: ...
    async def unchanged(self) -> bool: ...
    def checked(self) -> None: ...
    async def element_counts(self) -> dict[tuple[str, str], int] | None: ...
    def counters(self) -> dict[str, tuple[int, int]]: ...
    async def close(self) -> None: ...


class LibNftables(nftables.LibNftables):
    def _counts(self) -> dict[tuple[str, str], int] | None:
        out: dict[tuple[str, str], int] = {}
        for family in FAMILIES:
            listed = self.read(f"list table {family} {TABLE}")
            if listed is None:
                return None
            for item in listed:
                obj = item.get("set") or item.get("map")
                if obj is not None:
                    out[(family, obj["name"])] = len(obj.get("elem", []))
        return out

    def counters(self) -> dict[str, tuple[int, int]]:
        """(packets, bytes) of every named counter in the fabric's tables; empty if none.

        Called on the metrics server's thread: it reads through the reader context."""
        out: dict[str, tuple[int, int]] = {}
        for family in FAMILIES:
            for item in self.read(f"list counters table {family} {TABLE}") or []:
                c = item.get("counter")
                if c:
                    out[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        return out

    async def element_counts(self) -> dict[tuple[str, str], int] | None:
        """Element count per fabric set and map in the kernel, or None if a table is missing.

        A listing of every element (~0.9 s at 10,000 endpoints): callers ask `unchanged()` first."""
        return await asyncio.get_running_loop().run_in_executor(None, self._counts)
