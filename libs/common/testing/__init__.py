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
import contextlib
import datetime as dt
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    return make_fabric_pki(tmp_path)


def make_fabric_pki(tmp_path: Path) -> FabricPki:
    """A new CA, node n1's identities and the server certificate under `tmp_path`, valid one hour."""
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
    with run_nats_server(fabric_pki) as server:
        yield server


@contextlib.contextmanager
def run_nats_server(fabric_pki: FabricPki) -> Iterator[NatsServer]:
    """nats-server with the fabric's generated config on an ephemeral port; stopped by PID on exit."""
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


def remove_namespace(name: str) -> None:
    """Kill what still runs in a test namespace (by PID, nothing else), then delete it."""
    from pyroute2 import netns

    for pid in pids_in_netns(name):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    netns.remove(name)


@contextlib.contextmanager
def new_node(*, strict: bool = False) -> Iterator[str]:
    """A fresh network namespace playing one node, loopback up; deleted on exit.

    Needs root; nothing is created in the root namespace. With `strict`, exiting normally fails
    if a process is still inside (the code under test must stop everything it started); on any
    exit the processes left inside are killed before the namespace goes.
    """
    from pyroute2 import NetNS, netns

    name = f"qnft-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        yield name
        if strict:
            leftovers = pids_in_netns(name)
            assert not leftovers, f"processes left in {name}: {leftovers}"
    finally:
        remove_namespace(name)


@pytest.fixture
def node_netns() -> Iterator[str]:
    """A node namespace (see `new_node`), function scope; teardown fails on leftover processes."""
    with new_node(strict=True) as name:
        yield name


@contextlib.contextmanager
def outside_host(
    node_ns: str,
    *,
    node_address: str = "192.0.2.1",
    address: str = "192.0.2.2",
    prefixlen: int = 24,
    node_address6: str = "2001:db8::1",
    address6: str = "2001:db8::2",
) -> Iterator[str]:
    """A namespace beyond the node's uplink, "the outside world", with no route into the fabric.

    The veth is made inside the node namespace and one end moved out (never in root); the node
    end `up0` gets `node_address` and `node_address6` (/64, no duplicate detection, so usable at
    once), the outside end the others. Yields the namespace's name; removes it on exit.
    """
    from pyroute2 import NetNS, netns

    name = f"qnfo-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        with NetNS(node_ns) as node:
            node.link("add", ifname="up0", kind="veth", peer={"ifname": "out0", "net_ns_fd": name})
            up = node.link_lookup(ifname="up0")[0]
            node.addr("add", index=up, address=node_address, prefixlen=prefixlen)
            node.addr("add", index=up, address=node_address6, prefixlen=64, flags=0x02)  # IFA_F_NODAD
            node.link("set", index=up, state="up")
        with NetNS(name) as out:
            out.link("set", index=out.link_lookup(ifname="lo")[0], state="up")
            idx = out.link_lookup(ifname="out0")[0]
            out.addr("add", index=idx, address=address, prefixlen=prefixlen)
            out.addr("add", index=idx, address=address6, prefixlen=64, flags=0x02)
            out.link("set", index=idx, state="up")
        yield name
    finally:
        remove_namespace(name)


class NodeClient:
    """Signed requests from inside a node namespace, through `libs.common.testing.nodeclient`."""

    def __init__(self, ns: str, state: Path, identity: SpiffeId) -> None:
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{ns}",
                sys.executable,
                "-m",
                "libs.common.testing.nodeclient",
                str(state),
                identity.uri,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[3],
        )
        self._read()  # {"ready": true}

    def _read(self) -> dict:  # type: ignore[type-arg]
        import json

        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("node client exited")
        return json.loads(line)  # type: ignore[no-any-return]

    def _send(self, doc: dict) -> dict:  # type: ignore[type-arg]
        import json

        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(doc) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def request(self, subject: str, body: dict | None = None, timeout: float = 15) -> dict:  # type: ignore[type-arg]
        """The reply as a dict, or {"error": {"code", "message"}}."""
        return self._send({"subject": subject, "body": body or {}, "timeout": timeout})

    def call(self, subject: str, body: dict | None = None, timeout: float = 15) -> dict:  # type: ignore[type-arg]
        """The reply; fails the test on an error reply."""
        out = self.request(subject, body, timeout)
        assert "reply" in out, out
        return out["reply"]  # type: ignore[no-any-return]

    def batch(self, items: list[tuple[str, dict]]) -> list[dict]:  # type: ignore[type-arg]
        """Send all at once (concurrently) and return the results in order."""
        out = self._send({"batch": [{"subject": s, "body": b} for s, b in items]})
        return out["replies"]  # type: ignore[no-any-return]

    def kv_keys(self, bucket: str) -> list[str]:
        return self._send({"kv_keys": bucket})["keys"]  # type: ignore[no-any-return]

    def kv_put(self, bucket: str, key: str, model: str, value: dict) -> int:  # type: ignore[type-arg]
        """Write a signed record (admin identity only): `model` names a libs.common.messages model."""
        out = self._send({"kv_put": bucket, "key": key, "model": model, "value": value})
        assert "revision" in out, out
        return out["revision"]  # type: ignore[no-any-return]

    def events(self, subject: str, quiet: float = 1.0) -> list[dict]:  # type: ignore[type-arg]
        """Bodies of the events QNF_EVENTS retains on `subject` (wildcards allowed)."""
        return self._send({"events": subject, "quiet": quiet})["events"]  # type: ignore[no-any-return]

    def kv_delete(self, bucket: str, key: str) -> None:
        assert self._send({"kv_delete": bucket, "key": key}) == {"deleted": True}

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except Exception:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()


@dataclass
class FabricNode:
    """The whole single-node fabric (`qnf up`) running inside a test node namespace."""

    ns: str
    state: Path
    proc: subprocess.Popen[str]
    node: str = NODE

    def client(self, identity: SpiffeId | None = None) -> NodeClient:
        return NodeClient(self.ns, self.state, identity or SpiffeId.service("qnf.local", "gateway"))

    def service_pids(self, service: str) -> list[int]:
        out = []
        for pid in pids_in_netns(self.ns):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"services.{service}".encode() in cmdline:
                out.append(pid)
        return out

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.ns}", *argv], capture_output=True, text=True, timeout=timeout
        )


def start_fabric(
    ns: str, state: Path, *, env: dict[str, str] | None = None, timeout: float = 90
) -> FabricNode:
    """Run `qnf up` in `ns` and wait for its banner; the caller stops it with `stop_fabric`."""
    import os
    import sys

    root = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{ns}",
            str(Path(sys.executable).parent / "qnf"),
            "--state-dir",
            str(state),
            "--node",
            NODE,
            "up",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("  stop:"):
            return FabricNode(ns, state, proc)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise RuntimeError(f"fabric did not come up: {seen}")


def stop_fabric(fabric: FabricNode) -> int:
    """SIGTERM the supervisor and wait; returns its exit code."""
    import signal

    fabric.proc.send_signal(signal.SIGTERM)
    try:
        rc = fabric.proc.wait(60)
    except subprocess.TimeoutExpired:
        fabric.proc.kill()
        rc = fabric.proc.wait()
    assert fabric.proc.stdout is not None
    fabric.proc.stdout.close()
    return rc


@pytest.fixture
def fabric_node(node_netns: str, tmp_path: Path) -> Iterator[FabricNode]:
    """The fabric up in a fresh node namespace (function scope; depends on node_netns)."""
    fabric = start_fabric(node_netns, tmp_path / "state")
    try:
        yield fabric
    finally:
        stop_fabric(fabric)


class Containers:
    """Container namespaces (`/run/netns/qnfc-<hex>`) made on demand and all removed by `close`."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self) -> str:
        from pyroute2 import netns

        name = f"qnfc-{uuid.uuid4().hex[:8]}"
        netns.create(name)
        self.made.append(name)
        return name

    def attach(self, client: NodeClient, network: str, name: str, **extra: Any) -> tuple[str, str]:
        """A new namespace attached to `network` as endpoint `name`; returns (namespace, IPv4)."""
        space = self()
        ep = client.call(
            "qnf.v1.node.n1.vnet.endpoint.add",
            {
                "request_id": space,
                "container_id": space,
                "ifname": "eth0",
                "netns": f"/run/netns/{space}",
                "network": network,
                "name": name,
                **extra,
            },
        )
        return space, ep["addresses"][0].split("/")[0]

    def close(self) -> None:
        from pyroute2 import netns

        for name in self.made:
            try:
                netns.remove(name)
            except OSError:
                pass


@pytest.fixture
def container_netns() -> Iterator[Containers]:
    """Factory of container namespaces, function scope; all deleted in teardown."""
    containers = Containers()
    yield containers
    containers.close()


@contextlib.contextmanager
def fabric_on_new_node(state: Path, *, env: dict[str, str] | None = None) -> Iterator[FabricNode]:
    """The fabric up in a fresh node namespace for a whole module or a benchmark; all torn down."""
    with new_node() as node:
        fabric = start_fabric(node, state, env=env)
        try:
            yield fabric
        finally:
            stop_fabric(fabric)


def busybox_rootfs_tar(dest: Path) -> Path:
    """A tar of a minimal rootfs: Debian's static busybox and its applet links (no registry here)."""
    import shutil
    import tarfile

    busybox = shutil.which("busybox") or "/bin/busybox"
    root = dest.parent / "busybox-rootfs"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    with tarfile.open(dest, "w") as tar:
        tar.add(root, arcname=".")
    return dest


PODMAN_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{plugins}", "/usr/lib/cni"]
"""


@dataclass
class Podman:
    """podman with all its state under one test directory, run inside a node namespace."""

    ns: str
    root: Path

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        import os

        cmd = [
            "nsenter",
            f"--net=/run/netns/{self.ns}",
            "podman",
            "--root",
            str(self.root / "storage"),
            "--runroot",
            str(self.root / "run"),
            "--network-config-dir",
            str(self.root / "net"),
            *args,
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf")},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed: {proc.stderr}")
        return proc


@pytest.fixture
def podman(fabric_node: FabricNode, tmp_path: Path) -> Iterator[Podman]:
    """podman 4 (CNI backend, runc, cgroupfs) in the fabric's node namespace, with the qnf plugin
    installed in a private plugin dir and a busybox image `qnf-busybox:test`. Function scope;
    depends on fabric_node. Teardown removes every container and the image, and unmounts storage.
    """
    import shutil
    import tempfile

    from cni.install import install_plugin

    # podman refuses a runroot path longer than 50 characters; pytest's tmp_path is longer.
    root = Path(tempfile.mkdtemp(prefix="qpm-", dir="/tmp"))
    (root / "net").mkdir(parents=True)
    plugins = install_plugin(root / "cni-bin").parent
    (root / "containers.conf").write_text(PODMAN_CONF.format(plugins=plugins))
    pm = Podman(fabric_node.ns, root)
    tar = busybox_rootfs_tar(tmp_path / "busybox.tar")
    pm("import", "--change", "ENV PATH=/bin", str(tar), "qnf-busybox:test")
    try:
        yield pm
    finally:
        pm("rm", "-af", "-t", "0", check=False)
        pm("rmi", "-af", check=False)
        for mount in ("storage/overlay", "run"):
            subprocess.run(["umount", "-R", str(root / mount)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
