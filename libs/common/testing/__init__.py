"""Test fixtures every tier shares, loaded as a pytest plugin (`-p libs.common.testing`).

Production code never imports this package.

Fixtures:
    fabric_pki      function  a fresh CA and the identities of node "n1" under tmp_path
    nats_server     function  a real nats-server with the fabric's generated mTLS config on an
                              ephemeral port; stopped (by PID) in teardown, also on failure
    connect_bus     function  factory: a signing, verifying Bus acting as a given identity
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from fabric.node import find_nats_server, node_identities
from libs.common import natsconf
from libs.common.authz import may_publish
from libs.common.bus import Bus, tls_context, trust_anchors
from libs.common.config import Settings
from libs.common.envelope import Signer, Verifier
from libs.common.ids import SpiffeId
from libs.common.metrics import BusMetrics
from libs.common.pki import CertificateAuthority, PkiDirectory

TRUST_DOMAIN = "qnf.test"
NODE = "n1"


@dataclass
class FabricPki:
    """A CA and issued identities on disk."""

    root: Path
    pki: PkiDirectory
    ca: CertificateAuthority
    settings: Settings

    def identity(self, kind: str, name: str, node: str | None = None) -> SpiffeId:
        if kind == "node":
            assert node is not None
            return SpiffeId.node_agent(TRUST_DOMAIN, node, name)
        if kind == "service":
            return SpiffeId.service(TRUST_DOMAIN, name)
        return SpiffeId.user(TRUST_DOMAIN, name)

    def issue(
        self,
        identity: SpiffeId,
        *,
        lifetime: dt.timedelta = dt.timedelta(hours=1),
        now: dt.datetime | None = None,
    ) -> None:
        material = self.ca.issue(identity, now=now or dt.datetime.now(dt.UTC), lifetime=lifetime)
        self.pki.save_identity(material)


@pytest.fixture
def fabric_pki(tmp_path: Path) -> FabricPki:
    """A new CA and all identities of node n1, issued for one hour (function scope, no I/O but files)."""
    settings = Settings(state_dir=tmp_path / "state", trust_domain=TRUST_DOMAIN, node=NODE, nats_port=0)
    pki = PkiDirectory(settings.pki_dir)
    now = dt.datetime.now(dt.UTC)
    ca = pki.ensure_ca(TRUST_DOMAIN, now=now)
    for identity in node_identities(settings):
        pki.ensure_identity(ca, identity, now=now, lifetime=dt.timedelta(hours=1))
    pki.ensure_server(ca, ["localhost", "127.0.0.1"], now=now, lifetime=dt.timedelta(hours=1))
    return FabricPki(tmp_path, pki, ca, settings)


@dataclass
class NatsServer:
    """A running nats-server: its URL, PID and log."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


_LISTEN = re.compile(r"Listening for client connections on [^\s]+:(\d+)")


@pytest.fixture
def nats_server(fabric_pki: FabricPki) -> Iterator[NatsServer]:
    """A real nats-server with the fabric's config (mTLS, verify_and_map, permissions, JetStream).

    Depends on fabric_pki. Listens on 127.0.0.1 with an ephemeral port read from its log; killed by
    PID in teardown.
    """
    store = fabric_pki.root / "js"
    config = natsconf.server_config(
        host="127.0.0.1",
        port=-1,
        server_name="qnf-test",
        store_dir=store,
        ca_file=fabric_pki.pki.ca_cert_path,
        cert_file=fabric_pki.pki.server_cert_path,
        key_file=fabric_pki.pki.server_key_path,
        identities=node_identities(fabric_pki.settings),
    )
    conf = fabric_pki.root / "nats.conf"
    conf.write_text(natsconf.render(config))
    log = fabric_pki.root / "nats.log"
    proc = subprocess.Popen([str(find_nats_server()), "-c", str(conf), "-l", str(log)])
    try:
        port = _wait_for_listen(log, proc)
        yield NatsServer(f"tls://127.0.0.1:{port}", port, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_listen(log: Path, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited: {log.read_text() if log.exists() else ''}")
        if log.exists():
            m = _LISTEN.search(log.read_text())
            if m:
                return int(m.group(1))
        time.sleep(0.02)
    raise RuntimeError("nats-server did not start listening")


BusFactory = Callable[..., Awaitable[Bus]]


@pytest_asyncio.fixture
async def connect_bus(fabric_pki: FabricPki, nats_server: NatsServer) -> AsyncIterator[BusFactory]:
    """Factory `await connect_bus(identity, service=..., suite=..., clock=...)` → a connected Bus.

    Depends on nats_server; every bus made is closed in teardown.
    """
    made: list[Bus] = []

    async def factory(
        identity: SpiffeId,
        *,
        service: str | None = None,
        suite: str = "ed25519",
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> Bus:
        pki = fabric_pki.pki
        anchors = trust_anchors(pki, TRUST_DOMAIN)
        signer = Signer(pki.load_identity(identity), suite, clock=clock)  # type: ignore[arg-type]
        verifier = Verifier(anchors, suite, authorize=may_publish, clock=clock)  # type: ignore[arg-type]
        bus = await Bus.connect(
            url=nats_server.url,
            tls=tls_context(pki, identity),
            service=service or identity.name,
            node=identity.node or NODE,
            signer=signer,
            verifier=verifier,
            metrics=BusMetrics(registry or CollectorRegistry()),
            reconnect=False,
        )
        made.append(bus)
        return bus

    yield factory
    for bus in made:
        await bus.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> None:
    """Poll `predicate` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def netns_inode(name: str) -> int:
    """The inode that identifies a named network namespace."""
    import os

    return os.stat(f"/run/netns/{name}").st_ino


def pids_in_netns(name: str) -> list[int]:
    """PIDs of every process whose network namespace is `name`."""
    import os

    inode = netns_inode(name)
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                out.append(int(entry))
        except OSError:
            continue
    return out


@pytest.fixture
def node_netns() -> Iterator[str]:
    """A fresh network namespace playing one node, loopback up; deleted in teardown.

    Function scope. Needs root. Nothing is created in the root namespace. Teardown fails the test
    if a process is still inside (the code under test must stop everything it started).
    """
    import os
    import uuid

    from pyroute2 import NetNS, netns

    name = f"qnft-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        yield name
        leftovers = pids_in_netns(name)
        assert not leftovers, f"processes left in {name}: {leftovers}"
    finally:
        for pid in pids_in_netns(name):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        netns.remove(name)
