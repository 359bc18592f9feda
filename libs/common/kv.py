"""Typed, signed JetStream KV: the fabric's desired state (DESIGN §4).

Every value is a signed envelope (`envelope.seal_record`) around a pydantic model. A reader
verifies the signature and that the writer's role owns the bucket, so a record forged by anyone
but the owner is refused even if the server's permissions were wrong. Writes are
compare-and-set on the key's revision: `create` only when absent, `update` only at the revision
read, so two replicas never both win.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import BaseModel

from libs.common.authz import may_write_bucket
from libs.common.envelope import Rejected, Signer, Verifier, open_record, seal_record
from libs.common.errors import Conflict, Unavailable

log = logging.getLogger("qnf.kv")

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Record(Generic[M]):
    """A verified value and the revision it was read at (pass it back to `update`)."""

    key: str
    value: M
    revision: int


@dataclass(frozen=True)
class Change(Generic[M]):
    """One watched change: `value` is None when the key was deleted."""

    key: str
    value: M | None
    revision: int


class TypedKV(Generic[M]):
    """A KV bucket whose values are signed `model` instances."""

    def __init__(
        self,
        kv: KeyValue,
        bucket: str,
        model: type[M],
        *,
        js: JetStreamContext,
        signer: Signer,
        verifier: Verifier,
    ) -> None:
        self._kv = kv
        self._js = js
        self.bucket = bucket
        self._model = model
        self._signer = signer
        self._verifier = verifier

    def _seal(self, key: str, value: M) -> bytes:
        return seal_record(self._signer, self.bucket, key, value.model_dump_json().encode())

    def _open(self, key: str, raw: bytes) -> M:
        writer, body = open_record(self._verifier, self.bucket, key, raw)
        if not may_write_bucket(writer, self.bucket):
            raise Rejected("forbidden", f"{writer} does not own bucket {self.bucket}")
        return self._model.model_validate_json(body)

    async def get(self, key: str) -> Record[M] | None:
        """The current verified value, or None if absent or deleted."""
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except nats.errors.TimeoutError as exc:
            raise Unavailable(f"reading {self.bucket}/{key} timed out") from exc
        if entry.value is None or entry.revision is None:
            return None
        return Record(key, self._open(key, entry.value), entry.revision)

    async def create(self, key: str, value: M) -> int:
        """Write only if the key is absent; Conflict otherwise. Returns the new revision."""
        try:
            return await self._kv.create(key, self._seal(key, value))
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{self.bucket}/{key} exists") from exc

    async def update(self, key: str, value: M, revision: int) -> int:
        """Write only if the key is still at `revision`; Conflict otherwise."""
        try:
            return await self._kv.update(key, self._seal(key, value), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{self.bucket}/{key} changed since revision {revision}") from exc

    async def put(self, key: str, value: M) -> int:
        """Unconditional write, for records with a single writer."""
        return await self._kv.put(key, self._seal(key, value))

    async def delete(self, key: str, revision: int | None = None) -> None:
        """Delete (at `revision` if given; Conflict if it moved on). Deleting a missing key succeeds."""
        try:
            await self._kv.delete(key, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{self.bucket}/{key} changed since revision {revision}") from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code in (10071, 10164):
                raise Conflict(f"{self.bucket}/{key} changed since revision {revision}") from exc
            raise

    async def last_revision(self) -> int:
        """The bucket's latest revision (of any key, deletes included): what a revision can be at most."""
        try:
            status = await self._kv.status()
        except nats.errors.TimeoutError as exc:
            raise Unavailable(f"reading the status of {self.bucket} timed out") from exc
        return int(status.stream_info.state.last_seq)

    async def _subjects(self) -> list[str]:
        """Every key the stream holds a last message for (deleted ones too: their marker).

        From the stream's own subject list, not nats-py's `keys()`: that one builds on a watch
        whose "no more" marker can come before the values already on their way, and then
        answers with nothing now and then (seen: 2 lists in 150, right after a create).
        """
        prefix = f"$KV.{self.bucket}."
        try:
            info = await self._js.stream_info(f"KV_{self.bucket}", subjects_filter=f"{prefix}>")
        except nats.errors.TimeoutError as exc:
            raise Unavailable(f"listing {self.bucket} timed out") from exc
        return sorted(s[len(prefix) :] for s in (info.state.subjects or {}))

    async def keys(self) -> list[str]:
        """Every current key (deleted ones left out)."""
        return [r.key for r in await self.items()]

    async def items(self) -> list[Record[M]]:
        """Every current record; records that fail verification are logged and skipped."""
        out = []
        for key in await self._subjects():
            try:
                record = await self.get(key)
            except Rejected as exc:
                log.warning("skipping unverifiable record %s/%s: %s", self.bucket, key, exc)
                continue
            if record is not None:
                out.append(record)
        return out

    async def watch(self) -> AsyncIterator[Change[M] | None]:
        """Current values, then a None marker, then every change as it happens."""
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    yield None
                    continue
                if entry.operation in ("DEL", "PURGE") or entry.value is None:
                    yield Change(entry.key, None, entry.revision or 0)
                    continue
                try:
                    yield Change(entry.key, self._open(entry.key, entry.value), entry.revision or 0)
                except Rejected as exc:
                    log.warning("ignoring unverifiable change %s/%s: %s", self.bucket, entry.key, exc)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    async def follow(
        self,
        apply: Callable[[Change[M]], Awaitable[None]],
        synced: asyncio.Event,
        restarted: Callable[[], None] = lambda: None,
    ) -> None:
        """Apply every change, for ever: the current values first (then `synced` is set), then each
        change as it happens. The watch dies with the connection; it is started again, and the
        replay of current values (deletions included) brings `apply` back in step. `restarted`
        is told first, for followers that treat changes one by one: a replay is no change list."""
        while True:
            try:
                async for change in self.watch():
                    if change is None:
                        synced.set()
                    else:
                        await apply(change)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watch of %s failed: %s", self.bucket, exc)
                restarted()
                await asyncio.sleep(1)
