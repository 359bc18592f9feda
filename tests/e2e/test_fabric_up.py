"""The README's start command, end to end, inside a test node namespace.

Scope: `scripts/up` starts nats-server and every service as real processes; each answers the
micro-service PING and a signed echo; SIGTERM stops everything and leaves no process behind.
Bad start-up input (missing binary, corrupt key, port in use) gives one error line and exit 2.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from libs.common.ids import SERVICES
from libs.common.testing import pids_in_netns

ROOT = Path(__file__).resolve().parents[2]


def _in_ns(ns: str, *argv: str, **kw) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", *argv],
        cwd=ROOT,
        text=True,
        start_new_session=True,
        **kw,
    )


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """Read proc's stdout (on a thread: select and buffered readline do not mix) until `needle`."""
    assert proc.stdout is not None
    stream = proc.stdout
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"no {needle!r} in output: {seen}")


def _probe(ns: str, state: Path, verb: str) -> dict:
    proc = _in_ns(ns, sys.executable, "-m", "tests.e2e.probe", str(state), verb, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return json.loads(out)


def test_up_serves_every_service_and_stops_clean(node_netns: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "QNF_NODE": "n1"}
    up = _in_ns(node_netns, "scripts/up", "--state-dir", str(state), stdout=subprocess.PIPE, env=env)
    try:
        banner = _wait_for_line(up, "stop:", timeout=90)
        assert any("fabric up on node n1" in line for line in banner)
        pings = _probe(node_netns, state, "ping")
        assert {svc: pings[svc].get("name") for svc in SERVICES} == {svc: f"qnf-{svc}" for svc in SERVICES}
        infos = _probe(node_netns, state, "info")
        for svc in SERVICES:
            subjects = [ep["subject"] for ep in infos[svc]["endpoints"]]
            assert f"qnf.v1.cmd.{svc}.diag.echo" in subjects
        assert _probe(node_netns, state, "echo") == {svc: svc for svc in SERVICES}
        assert (state / "pki" / "ca.crt").exists()
        assert len(pids_in_netns(node_netns)) >= 1 + len(SERVICES) + 1
    finally:
        up.send_signal(signal.SIGTERM)
        rc = up.wait(timeout=60)
        assert up.stdout is not None
        up.stdout.close()
    assert rc == 0
    assert pids_in_netns(node_netns) == []


def _start_fails(ns: str, args: list[str], env_extra: dict[str, str] | None = None) -> tuple[int, str]:
    env = {**os.environ, "QNF_NODE": "n1", **(env_extra or {})}
    proc = _in_ns(ns, ".venv/bin/qnf", *args, "up", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = proc.communicate(timeout=60)
    errors = [line for line in err.splitlines() if line.startswith("qnf: error:")]
    assert len(errors) == 1, err
    return proc.returncode, errors[0]


def test_missing_nats_server_binary(node_netns: str, tmp_path: Path) -> None:
    rc, line = _start_fails(
        node_netns,
        ["--state-dir", str(tmp_path)],
        {"QNF_NATS_SERVER_BIN": str(tmp_path / "no-such-nats-server")},
    )
    assert rc == 2 and "nats-server" in line


def test_corrupt_ca_key(node_netns: str, tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir(parents=True)
    (tmp_path / "pki" / "ca.key").write_text("not a key")
    rc, line = _start_fails(node_netns, ["--state-dir", str(tmp_path)])
    assert rc == 2 and "PKI" in line


def test_port_in_use(node_netns: str, tmp_path: Path) -> None:
    holder = _in_ns(
        node_netns,
        sys.executable,
        "-c",
        "import socket,sys,time\n"
        "s=socket.socket(); s.bind(('127.0.0.1', 4222)); s.listen(); print('ok', flush=True); time.sleep(60)",
        stdout=subprocess.PIPE,
    )
    try:
        _wait_for_line(holder, "ok", timeout=10)
        rc, line = _start_fails(node_netns, ["--state-dir", str(tmp_path)])
        assert rc == 2 and "4222" in line
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


@pytest.mark.parametrize("bad", ["--node=Bad_Name!", "--nats-port=70000"])
def test_bad_configuration(node_netns: str, tmp_path: Path, bad: str) -> None:
    rc, line = _start_fails(node_netns, ["--state-dir", str(tmp_path), bad])
    assert rc == 2 and "bad configuration" in line
