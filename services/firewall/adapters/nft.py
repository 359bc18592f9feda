"""libnftables through the nftables project's Python binding: one JSON batch per transaction.

Invariants: only the fabric's tables (`inet qnf`, `bridge qnf`) are ever named; a batch is one
atomic transaction (a failure leaves the previous ruleset in force); libnftables acts in the
calling process's network namespace, which is the node's.
Errors: a non-zero rc becomes AdapterError carrying nft's own message.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from libs.common.errors import AdapterError
from services.firewall.core.compiler import TABLE


class Nft(Protocol):
    async def apply(self, commands: list[dict[str, Any]]) -> None: ...
    async def element_counts(self) -> dict[tuple[str, str], int] | None: ...
    def counters(self) -> dict[str, tuple[int, int]]: ...
    async def close(self) -> None: ...


def _load() -> Any:
    try:
        import nftables
    except ImportError as exc:  # pragma: no cover - a set-up problem, said clearly
        raise AdapterError(
            "the nftables Python binding is missing: apt-get install python3-nftables and run scripts/setup"
        ) from exc
    nft = nftables.Nftables()
    nft.set_json_output(True)
    nft.set_handle_output(False)
    return nft


class LibNftables:
    """The real kernel, on one worker thread (libnftables contexts are not thread-safe)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nft")
        self._nft: Any = None
        # Metrics are scraped on the HTTP server's thread: it reads through a context of its own.
        self._reader: Any = None
        self._lock = threading.Lock()

    def _ctx(self) -> Any:
        if self._nft is None:
            self._nft = _load()
        return self._nft

    def _apply(self, commands: list[dict[str, Any]]) -> None:
        rc, _, err = self._ctx().json_cmd({"nftables": commands})
        if rc != 0:
            raise AdapterError(f"nftables transaction failed: {str(err).strip()[:2000]}")

    def _counts(self) -> dict[tuple[str, str], int] | None:
        out: dict[tuple[str, str], int] = {}
        for family in ("inet", "bridge"):
            for kind in ("sets", "maps"):
                rc, text, _ = self._ctx().cmd(f"list {kind} {family}")
                if rc != 0:
                    return None
                doc = json.loads(text) if isinstance(text, str) else text
                for item in doc.get("nftables", []):
                    obj = item.get(kind[:-1])
                    if obj and obj.get("table") == TABLE:
                        out[(family, obj["name"])] = len(obj.get("elem", []))
        return out

    def counters(self) -> dict[str, tuple[int, int]]:
        """(packets, bytes) of every named counter in the fabric's tables; empty if none."""
        out: dict[str, tuple[int, int]] = {}
        with self._lock:
            if self._reader is None:
                self._reader = _load()
            for family in ("inet", "bridge"):
                rc, text, _ = self._reader.cmd(f"list counters table {family} {TABLE}")
                if rc != 0:
                    continue
                doc = json.loads(text) if isinstance(text, str) else text
                for item in doc.get("nftables", []):
                    c = item.get("counter")
                    if c:
                        out[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        return out

    async def apply(self, commands: list[dict[str, Any]]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._apply, commands)

    async def element_counts(self) -> dict[tuple[str, str], int] | None:
        """Element count per fabric set in the kernel, or None if the tables are missing."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._counts)

    async def close(self) -> None:
        self._pool.shutdown(wait=False)
