"""The shim's line to the node's vnet agent: one JSON request and reply over a unix socket.

Why not NATS from the shim itself: the runtime execs the plugin once per container, and on these
machines a Python process that imports a TLS stack, cryptography and a NATS client spends 50-100
ms before it does anything (measured: `import ssl` 17 ms, Ed25519 from cryptography 16 ms,
`import asyncio` 73 ms over a 10 ms bare start). The agent is on the same node and already holds
a signed, mutually authenticated bus connection; the socket is root-only and the agent checks
the peer's uid (SO_PEERCRED), which proves as much as the root-only `cni` key file would. Every
record and event the agent makes from the request is signed as usual.

`_socket` (the C module) is used directly: `socket` would import enum and selectors for nothing.
"""

from __future__ import annotations

import _socket

from cni.wire import dumps, loads

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SOCKET_NAME = "run/cni.sock"
PENDING_DIR = "run/cni-pending"


class AgentUnreachable(Exception):
    """No agent listens on the socket (not started, restarting, or gone)."""


class AgentError(Exception):
    """The agent answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def call(state_dir: str, verb: str, body: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
    """Send one request and return the reply body, or raise AgentUnreachable / AgentError."""
    path = f"{state_dir.rstrip('/')}/{SOCKET_NAME}"
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise AgentUnreachable(f"no vnet agent at {path}: {exc.strerror}") from exc
        sock.sendall(dumps({"verb": verb, "body": body}).encode() + b"\n")
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError as exc:  # a timeout included: the agent did not answer in time
                raise AgentUnreachable(f"vnet agent did not answer: {exc}") from exc
            if not chunk:
                break
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
    finally:
        sock.close()
    if not chunks:
        raise AgentUnreachable("vnet agent closed the connection without an answer")
    reply = loads(b"".join(chunks))
    if "error" in reply:
        raise AgentError(reply["error"].get("code", "internal"), reply["error"].get("message", ""))
    return reply.get("ok") or {}
