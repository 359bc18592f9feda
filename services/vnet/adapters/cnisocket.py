"""The node-local socket the CNI shim talks to (see `cni/agent.py` for why not NATS).

Invariants: the socket file is 0600 in a 0700 directory, and a peer must have the agent's own
uid (SO_PEERCRED), so only root on this node can attach containers. One JSON line in, one out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("qnf.vnet.cni")

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 1 << 20


class CniSocket:
    """An asyncio unix-socket server handing each request to `handler(verb, body)`."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self._path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._path.parent, 0o700)
        if self._path.exists() or self._path.is_symlink():
            self._path.unlink()  # a stale socket of a previous run; ours to replace
        self._server = await asyncio.start_unix_server(self._client, path=str(self._path), limit=MAX_REQUEST)
        os.chmod(self._path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        try:
            self._path.unlink()
        except FileNotFoundError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
            if uid != os.getuid():
                log.warning("refused CNI request from uid %d", uid)
                await _send(writer, {"error": {"code": "forbidden", "message": "not allowed"}})
                return
            line = await reader.readline()
            try:
                request = json.loads(line)
                verb, body = request["verb"], request.get("body") or {}
                if not isinstance(verb, str) or not isinstance(body, dict):
                    raise ValueError("verb must be a string, body an object")
            except (ValueError, KeyError, TypeError) as exc:
                await _send(writer, {"error": {"code": "invalid", "message": f"bad request: {exc}"}})
                return
            await _send(writer, await self._handler(verb, body))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.warning("CNI client went away: %s", exc)
        finally:
            writer.close()


async def _send(writer: asyncio.StreamWriter, doc: dict[str, Any]) -> None:
    writer.write(json.dumps(doc, default=str).encode() + b"\n")
    await writer.drain()
