"""libnftables through the nftables project's Python binding: JSON batches on one thread.

Invariants: a batch is one atomic transaction (a failure leaves the previous ruleset in force);
callers name only their own tables; libnftables acts in the calling process's network
namespace, which is the node's. Errors: a non-zero rc becomes AdapterError with nft's message.

Drift checks are cheap when nothing happened: every commit in a namespace bumps nf_tables'
generation id (read over netlink in ~0.3 ms), so a caller asks `unchanged()` before listing
its tables, and listings run on a reader context of their own, never in the way of an apply.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from libs.common.errors import AdapterError

NFPROTO_UNSPEC = 0


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


class _Generation:
    """nf_tables' ruleset generation id, asked over netlink (NFT_MSG_GETGEN)."""

    def __init__(self) -> None:
        from pyroute2.netlink.nfnetlink.nftsocket import NFTSocket

        self._sock = NFTSocket()

    def read(self) -> int:
        from pyroute2.netlink import NLM_F_REQUEST
        from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETGEN, nft_gen_msg

        msg = nft_gen_msg()
        msg["nfgen_family"] = NFPROTO_UNSPEC
        (reply,) = list(self._sock.request_get(msg, NFT_MSG_GETGEN, NLM_F_REQUEST))
        return int(reply.get_attr("NFTA_GEN_ID"))

    def close(self) -> None:
        self._sock.close()


class LibNftables:
    """The real kernel: applies on one worker thread, listings on another context and thread
    (libnftables contexts are not thread-safe; two contexts are independent)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nft")
        self._nft: Any = None
        self._gen: _Generation | None = None
        self._generation: int | None = None  # what our last commit made it, if nobody else committed
        self._seen: int | None = None  # what the last `unchanged()` read
        self._reader: Any = None
        self._reader_lock = threading.Lock()

    def _ctx(self) -> Any:
        if self._nft is None:
            self._nft = _load()
        return self._nft

    def _generation_now(self) -> int | None:
        try:
            if self._gen is None:
                self._gen = _Generation()
            return self._gen.read()
        except Exception:  # no generation: every drift check lists, which is only slower
            return None

    def _apply(self, commands: list[dict[str, Any]]) -> None:
        before = self._generation
        rc, _, err = self._ctx().json_cmd({"nftables": commands})
        if rc != 0:
            raise AdapterError(f"nftables transaction failed: {str(err).strip()[:2000]}")
        commits = 1
        replaced = next((c["delete"]["table"] for c in commands if "table" in c.get("delete", {})), None)
        if replaced is not None:
            # A replaced table is torn down after the commit, and the kernel makes the next
            # transaction wait for that: let a no-op one wait now, not the next small change.
            self._ctx().json_cmd({"nftables": [{"add": {"table": replaced}}]})
            commits = 2
        # One read, after: if it moved by exactly our commits since our last known generation,
        # nobody else committed in between; otherwise the next drift check lists (only slower).
        after = self._generation_now()
        ours = before is not None and after is not None and after - before == commits
        self._generation = after if ours else None

    def _unchanged(self) -> bool:
        self._seen = self._generation_now()
        return self._seen is not None and self._seen == self._generation

    def read(self, command: str) -> list[dict[str, Any]] | None:
        """A listing command on the reader context (any thread), as JSON objects; None on error."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = _load()
            rc, text, _ = self._reader.cmd(command)
        if rc != 0:
            return None
        doc = json.loads(text) if isinstance(text, str) else text
        return list(doc.get("nftables", []))

    async def apply(self, commands: list[dict[str, Any]]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._apply, commands)

    async def unchanged(self) -> bool:
        """True if no commit touched nf_tables in this namespace since our last apply (or since
        the last `checked()`)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._unchanged)

    def checked(self) -> None:
        """The caller listed its tables after `unchanged()` said no and found them as applied:
        other tables' commits up to then are no reason to list again."""
        self._generation = self._seen

    async def list_table(self, family: str, table: str) -> list[dict[str, Any]] | None:
        """The table's objects as libnftables lists them, or None if the table is missing."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self.read, f"list table {family} {table}"
        )

    async def close(self) -> None:
        self._pool.shutdown(wait=False)
        if self._gen is not None:
            self._gen.close()
