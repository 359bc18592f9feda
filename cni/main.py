"""The plugin's command table and its single exit for errors, in the manner of CNI's skel.

`dispatch(environ, stdin, stdout)` does all the work with everything injected, so tests can drive
it in-process; `main()` only wires in the real process environment.
"""

from __future__ import annotations

import os
import sys

from cni import agent
from cni.spec import (
    INTERNAL,
    INVALID_CONFIG,
    LATEST,
    PLUGIN_NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
    Invocation,
    labels_and_name,
    parse,
    port_mappings,
    requested_ips,
    result,
)
from cni.wire import dumps

try:  # the C module directly: hashlib would load OpenSSL's bindings (~3 ms per exec)
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python >= 3.12 renamed it
    from hashlib import sha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

# Agent error codes → CNI error codes (the one mapping, looked up once).
_CODES = {
    "invalid": INVALID_CONFIG,
    "not_found": INVALID_CONFIG,
    "unavailable": TRY_AGAIN_LATER,
    "unauthorized": INTERNAL,
    "forbidden": INTERNAL,
    "conflict": INTERNAL,
    "exhausted": INTERNAL,
    "internal": INTERNAL,
}


def _agent(inv: Invocation, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return agent.call(inv.state_dir, verb, body)
    except agent.AgentUnreachable as exc:
        raise CniError(
            TRY_AGAIN_LATER, "the qnf node agent is not reachable; try again later", str(exc)
        ) from exc
    except agent.AgentError as exc:
        raise CniError(_CODES.get(exc.code, INTERNAL), exc.message, f"agent code {exc.code}") from exc


def cmd_add(inv: Invocation) -> dict[str, Any] | None:
    if not os.path.exists(inv.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {inv.netns} does not exist")
    labels, name = labels_and_name(inv)
    rc = inv.runtime_config
    # A retried ADD of the same sandbox gets the same id, so the agent returns the first result.
    request_id = sha256(f"{inv.container_id}\0{inv.ifname}\0{inv.netns}".encode()).hexdigest()[:32]
    body: dict[str, Any] = {
        "request_id": request_id,
        "container_id": inv.container_id,
        "ifname": inv.ifname,
        "netns": inv.netns,
        "network": inv.network,
        "labels": labels,
        "ips": requested_ips(inv),
        "port_mappings": port_mappings(inv),
    }
    if name:
        body["name"] = name
    if rc.get("mac"):
        body["mac"] = str(rc["mac"]).lower()
    reply = _agent(inv, "add", body)
    return result(inv.version, reply)


def cmd_del(inv: Invocation) -> dict[str, Any] | None:
    body = {"container_id": inv.container_id, "ifname": inv.ifname, "netns": inv.netns or None}
    try:
        agent.call(inv.state_dir, "del", body)
    except agent.AgentUnreachable:
        # Leave a durable request the agent completes when it is back: DEL must not fail the
        # runtime for an agent restart, and must not leak the attachment either.
        _write_pending(inv, body)
    except agent.AgentError as exc:
        raise CniError(_CODES.get(exc.code, INTERNAL), exc.message, f"agent code {exc.code}") from exc
    return None


def _write_pending(inv: Invocation, body: dict[str, Any]) -> None:
    directory = f"{inv.state_dir.rstrip('/')}/{agent.PENDING_DIR}"
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = sha256(f"{inv.container_id}\0{inv.ifname}".encode()).hexdigest()[:24]
    tmp = f"{directory}/.{key}.tmp"
    with open(tmp, "w") as f:
        f.write(dumps(body))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, f"{directory}/{key}.json")


def cmd_check(inv: Invocation) -> dict[str, Any] | None:
    reply = _agent(inv, "check", {"container_id": inv.container_id, "ifname": inv.ifname})
    prev = inv.config.get("prevResult")
    if isinstance(prev, dict):
        want = sorted(ip.get("address", "") for ip in prev.get("ips") or [])
        if want and want != sorted(reply["addresses"]):
            raise CniError(INTERNAL, f"addresses {reply['addresses']} differ from prevResult {want}")
    return None


def cmd_status(inv: Invocation) -> dict[str, Any] | None:
    try:
        agent.call(inv.state_dir, "status", {"network": inv.network}, timeout=5)
    except agent.AgentUnreachable as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, "the qnf node agent is not running", str(exc)) from exc
    except agent.AgentError as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, exc.message, f"agent code {exc.code}") from exc
    return None


def cmd_gc(inv: Invocation) -> dict[str, Any] | None:
    valid = inv.config.get("cni.dev/valid-attachments") or []
    if not isinstance(valid, list):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    keep = [
        {"container_id": str(a.get("containerID", "")), "ifname": str(a.get("ifname", ""))}
        for a in valid
        if isinstance(a, dict)
    ]
    _agent(inv, "gc", {"network": inv.network, "valid": keep})
    return None


def cmd_version(inv: Invocation) -> dict[str, Any] | None:
    return {"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


COMMANDS: dict[str, Callable[[Invocation], dict[str, Any] | None]] = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "STATUS": cmd_status,
    "GC": cmd_gc,
    "VERSION": cmd_version,
}


def dispatch(environ: dict[str, str], stdin: bytes, stdout: IO[str]) -> int:
    """Run one CNI command; the only place an exception becomes CNI error JSON and exit 1."""
    version = LATEST
    try:
        inv = parse(environ, stdin)
        version = inv.version if inv.config else LATEST
        out = COMMANDS[inv.command](inv)
    except CniError as exc:
        stdout.write(dumps(exc.to_json(version)) + "\n")
        return 1
    except Exception as exc:  # a bug: report it in the spec's format rather than a traceback
        stdout.write(
            dumps(CniError(INTERNAL, "internal error in the qnf plugin", repr(exc)).to_json(version)) + "\n"
        )
        return 1
    if out is not None:
        stdout.write(dumps(out) + "\n")
    return 0


def main() -> int:
    return dispatch(dict(os.environ), sys.stdin.buffer.read(), sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
