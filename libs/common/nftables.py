"""libnftables through the nftables project's Python binding: JSON batches on one thread.

Invariants: a batch is one atomic transaction (a failure leaves the previous ruleset in force);
callers name only their own tables; libnftables acts in the calling process's network
namespace, which is the node's. Errors: a non-zero rc becomes AdapterError with nft's message.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from libs.common.errors import AdapterError


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

    def _ctx(self) -> Any:
        if self._nft is None:
            self._nft = _load()
        return self._nft

    def _apply(self, commands: list[dict[str, Any]]) -> None:
        rc, _, err = self._ctx().json_cmd({"nftables": commands})
        if rc != 0:
            raise AdapterError(f"nftables transaction failed: {str(err).strip()[:2000]}")

    def _list(self, family: str, table: str) -> list[dict[str, Any]] | None:
        rc, text, _ = self._ctx().cmd(f"list table {family} {table}")
        if rc != 0:
            return None
        doc = json.loads(text) if isinstance(text, str) else text
        return list(doc.get("nftables", []))

    async def apply(self, commands: list[dict[str, Any]]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._apply, commands)

    async def list_table(self, family: str, table: str) -> list[dict[str, Any]] | None:
        """The table's objects as libnftables lists them, or None if the table is missing."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._list, family, table)

    async def close(self) -> None:
        self._pool.shutdown(wait=False)
