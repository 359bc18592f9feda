"""Docker's network driver: the protocol against a real fabric, and a real Docker engine on it.

One fabric per module, in its own node namespace, started by `qnf up` with the Docker plugin
enabled (so the supervisor's start of the plugin is under test too). The plugin's socket is
`/run/docker/plugins/qnft<hex>.sock`: Docker 20.10 discovers plugins only there or through spec
files in /etc, so the driver gets a unique name per run and the socket goes with the fabric.

Protocol tests speak to the socket with httpx, as Docker does; the engine test starts dockerd in
the node namespace with all its state in temp dirs and no iptables or bridge of its own.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyroute2 import NetNS

from libs.common.ids import SpiffeId, endpoint_id
from libs.common.testing import FabricNode, NodeClient, busybox_rootfs_tar, fabric_on_new_node, outside_host

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

PLUGINS = Path("/run/docker/plugins")
ADMIN = SpiffeId.user("qnf.local", "admin")


@pytest.fixture(scope="module")
def docker_root() -> Path:
    """Where the engine of this module will live (decided before the fabric: the driver reads
    container labels from its API socket). Short: containerd's socket paths must fit."""
    return Path("/tmp") / f"qdk-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def plugin_fabric(
    tmp_path_factory: pytest.TempPathFactory, docker_root: Path
) -> Iterator[tuple[FabricNode, Path]]:
    made = [d for d in (PLUGINS.parent, PLUGINS) if not d.exists()]
    PLUGINS.mkdir(parents=True, exist_ok=True)
    socket = PLUGINS / f"qnft{uuid.uuid4().hex[:8]}.sock"
    env = {
        "QNF_DOCKER_PLUGIN": "true",
        "QNF_DOCKER_PLUGIN_SOCKET": str(socket),
        "QNF_DOCKER_HOST": f"unix://{docker_root}/d.sock",
    }
    try:
        with fabric_on_new_node(tmp_path_factory.mktemp("docker") / "state", env=env) as fabric:
            assert socket.is_socket() and (socket.stat().st_mode & 0o777) == 0o600
            yield fabric, socket
        assert not socket.exists(), "the plugin left its socket behind"
    finally:
        socket.unlink(missing_ok=True)
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass


class Plugin:
    """Docker's side of the protocol: POST JSON to `/<Method>` over the unix socket."""

    def __init__(self, socket: Path) -> None:
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), timeout=30)

    def raw(self, method: str, body: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post(
            f"http://docker/{method}",
            content=content,
            headers={"Accept": "application/vnd.docker.plugins.v1.2+json"},
        )

    def call(self, method: str, body: Any = None) -> dict[str, Any]:
        reply = self.raw(method, body if body is not None else {})
        assert reply.status_code == 200, reply.text
        doc: dict[str, Any] = reply.json()
        assert "Err" not in doc, doc
        return doc

    def err(self, method: str, body: Any, status: int = 200) -> str:
        reply = self.raw(method, body)
        assert reply.status_code == status, reply.text
        message: str = reply.json()["Err"]
        assert message
        return message


@pytest.fixture
def plugin(plugin_fabric: tuple[FabricNode, Path]) -> Iterator[Plugin]:
    p = Plugin(plugin_fabric[1])
    yield p
    p.http.close()


@pytest.fixture
def admin(plugin_fabric: tuple[FabricNode, Path]) -> Iterator[NodeClient]:
    client = plugin_fabric[0].client(ADMIN)
    yield client
    client.close()


def _id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def _create_network(subnet: str, nid: str | None = None, **options: str) -> dict[str, Any]:
    """What Docker sends for `docker network create -d qnf --subnet SUBNET -o K=V`."""
    net = ipaddress.ip_network(subnet)
    return {
        "NetworkID": nid or _id(),
        "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": options},
        "IPv4Data": [
            {"AddressSpace": "LocalDefault", "Pool": subnet, "Gateway": f"{net[1]}/{net.prefixlen}"}
        ],
        "IPv6Data": [],
    }


def _networks(admin: NodeClient) -> dict[str, dict[str, Any]]:
    reply = admin.call("qnf.v1.cmd.vnet.network.list")
    return {n["name"]: n for n in reply["networks"]}


def _links(fabric: FabricNode) -> set[str]:
    with NetNS(f"/run/netns/{fabric.ns}") as node:
        return {link.get("ifname") for link in node.get_links()}


def _ours(links: set[str]) -> set[str]:
    """Links of endpoints (host ends `q<hex>`, handed-off ends `h<hex>`), not bridges."""
    return {n for n in links if (n.startswith("q") and not n.startswith("qnf-")) or n.startswith("h")}


# ---------------------------------------------------------------- the protocol, against a real fabric


def test_handshake_and_calls_docker_may_send(plugin: Plugin) -> None:
    assert plugin.call("Plugin.Activate") == {"Implements": ["NetworkDriver"]}
    assert plugin.call("NetworkDriver.GetCapabilities")["Scope"] == "local"
    assert plugin.call("NetworkDriver.DiscoverNew", {"DiscoveryType": 1, "DiscoveryData": {}}) == {}
    assert plugin.call("NetworkDriver.DiscoverDelete", {"DiscoveryType": 1, "DiscoveryData": {}}) == {}
    assert "not supported" in plugin.err("NetworkDriver.AllocateNetwork", {"NetworkID": _id()})
    assert "not supported" in plugin.err("NetworkDriver.FreeNetwork", {"NetworkID": _id()})
    # libnetwork reads 404 as "this driver does not implement the call", not as a failure.
    assert plugin.raw("NetworkDriver.SomethingNew", {}).status_code == 404
    assert "not JSON" in plugin.err("NetworkDriver.CreateNetwork", b"{nope", status=400)
    assert "NetworkID" in plugin.err("NetworkDriver.CreateNetwork", {"Options": {}}, status=400)


def test_network_options_map_to_the_qnf_network(plugin: Plugin, admin: NodeClient) -> None:
    nid = _id()
    body = _create_network(
        "10.90.1.0/24",
        nid,
        **{"qnf.name": "dk-opts", "qnf.isolation": "default-allow", "qnf.nat": "false", "qnf.mtu": "1400"},
        **{"qnf.label.team": "blue"},
    )
    assert plugin.call("NetworkDriver.CreateNetwork", body) == {}
    assert plugin.call("NetworkDriver.CreateNetwork", body) == {}  # a retry changes nothing
    net = _networks(admin)["dk-opts"]
    assert (net["subnet"], net["gateway"], net["isolation"], net["nat"], net["mtu"]) == (
        "10.90.1.0/24",
        "10.90.1.1",
        "default-allow",
        False,
        1400,
    )
    assert net["labels"] == {"team": "blue", "docker/network-id": nid[:32]}
    # Without qnf.name the network is named after Docker's id; zero trust and NAT by default.
    other = _id()
    plugin.call("NetworkDriver.CreateNetwork", _create_network("10.90.2.0/24", other))
    net = _networks(admin)[f"docker-{other[:12]}"]
    assert (net["isolation"], net["nat"]) == ("zero-trust", True)
    for n in (nid, other):
        assert plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": n}) == {}
    names = _networks(admin)
    assert "dk-opts" not in names and f"docker-{other[:12]}" not in names


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"qnf.isolation": "open"}, "qnf.isolation"),
        ({"qnf.nat": "maybe"}, "qnf.nat"),
        ({"qnf.mtu": "100"}, "qnf.mtu"),
        ({"qnf.name": "Not_A_Name"}, "qnf.name"),
        ({"qnf.colour": "red"}, "unknown option qnf.colour"),
        ({"qnf.label.bad key": "x"}, "qnf.label.bad key"),
        ({"qnf.subnet": "10.90.9.0/24"}, "qnf.subnet"),
    ],
)
def test_invalid_network_options_create_nothing(
    plugin: Plugin, admin: NodeClient, options: dict[str, str], message: str
) -> None:
    before = set(_networks(admin))
    err = plugin.err("NetworkDriver.CreateNetwork", _create_network("10.90.3.0/24", **options))
    assert message in err, err
    assert set(_networks(admin)) == before


def test_overlapping_subnet_and_unknown_ids(plugin: Plugin, admin: NodeClient) -> None:
    first = _id()
    plugin.call("NetworkDriver.CreateNetwork", _create_network("10.90.4.0/24", first))
    before = set(_networks(admin))
    err = plugin.err("NetworkDriver.CreateNetwork", _create_network("10.90.4.128/25"))
    assert "overlap" in err, err
    assert set(_networks(admin)) == before

    unknown = _id()
    ep = {"NetworkID": unknown, "EndpointID": _id()}
    for method, body in [
        ("NetworkDriver.DeleteNetwork", {"NetworkID": unknown}),
        ("NetworkDriver.CreateEndpoint", {**ep, "Interface": {"Address": "10.90.4.9/24"}}),
        ("NetworkDriver.Join", {**ep, "SandboxKey": "/var/run/docker/netns/x"}),
        ("NetworkDriver.Leave", ep),
        ("NetworkDriver.DeleteEndpoint", ep),
        ("NetworkDriver.EndpointOperInfo", ep),
    ]:
        assert "not a qnf network" in plugin.err(method, body), method
    assert "not a Docker id" in plugin.err("NetworkDriver.DeleteNetwork", {"NetworkID": "../etc"})
    plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": first})


def test_endpoint_lifecycle_leaves_nothing(
    plugin: Plugin, admin: NodeClient, plugin_fabric: tuple[FabricNode, Path]
) -> None:
    fabric = plugin_fabric[0]
    nid, eid = _id(), _id()
    plugin.call("NetworkDriver.CreateNetwork", _create_network("10.90.5.0/24", nid, **{"qnf.name": "dk-ep"}))
    ep = {"NetworkID": nid, "EndpointID": eid}
    join = {**ep, "SandboxKey": "/var/run/docker/netns/0123456789ab", "Options": {}}
    assert "join before create" in plugin.err("NetworkDriver.Join", join)
    links_before = _ours(_links(fabric))

    # An address outside the subnet: refused, and nothing is left of the attempt.
    err = plugin.err("NetworkDriver.CreateEndpoint", {**ep, "Interface": {"Address": "10.91.0.5/24"}})
    assert "10.91.0.5" in err, err
    assert admin.kv_keys("qnf-ipam") == [] and _ours(_links(fabric)) == links_before
    assert "unknown option qnf.size" in plugin.err(
        "NetworkDriver.CreateEndpoint", {**ep, "Interface": {}, "Options": {"qnf.size": "xl"}}
    )

    created = plugin.call(
        "NetworkDriver.CreateEndpoint",
        {
            **ep,
            "Interface": {"Address": "10.90.5.7/24", "AddressIPv6": "", "MacAddress": ""},
            "Options": {
                "com.docker.network.portmap": [
                    {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}
                ],
                "qnf.name": "web",
                "qnf.label.app": "web",
            },
        },
    )
    # Docker chose the address: the reply may only add the MAC (Docker refuses overrides).
    assert set(created["Interface"]) == {"MacAddress"}
    record = admin.call("qnf.v1.node.n1.vnet.endpoint.get", {"container_id": eid, "ifname": "eth0"})
    assert record["addresses"] == ["10.90.5.7/24"] and record["mac"] == created["Interface"]["MacAddress"]
    assert record["name"] == "web" and record["labels"] == {"app": "web"}
    assert record["port_mappings"][0]["host_port"] == 8080
    assert admin.kv_keys("qnf-ipam") == ["dk-ep.10.90.5.7"]
    links = _links(fabric)
    assert {record["host_ifname"], record["handoff_ifname"]} <= links

    joined = plugin.call("NetworkDriver.Join", join)
    assert joined == {
        "InterfaceName": {"SrcName": record["handoff_ifname"], "DstPrefix": "eth"},
        "Gateway": "10.90.5.1",
    }
    info = plugin.call("NetworkDriver.EndpointOperInfo", ep)["Value"]
    assert info["qnf.identity"].endswith("/network/dk-ep/endpoint/web")
    assert plugin.call("NetworkDriver.ProgramExternalConnectivity", {**ep, "Options": {}}) == {}
    ports = admin.call("qnf.v1.node.n1.nat.port.list", {})["ports"]
    assert [(p["host_port"], p["container_port"], p["source"]) for p in ports] == [(8080, 80, "docker")]
    assert plugin.call("NetworkDriver.ProgramExternalConnectivity", {**ep, "Options": {}}) == {}  # a retry
    # Another container asking for the same host port: a clear Err, and nothing of it published.
    other = {"NetworkID": nid, "EndpointID": _id()}
    portmap = [{"Proto": 6, "IP": "", "Port": 81, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]
    plugin.call(
        "NetworkDriver.CreateEndpoint",
        {
            **other,
            "Interface": {"Address": "10.90.5.8/24"},
            "Options": {"com.docker.network.portmap": portmap},
        },
    )
    assert "8080" in plugin.err("NetworkDriver.ProgramExternalConnectivity", {**other, "Options": {}})
    assert len(admin.call("qnf.v1.node.n1.nat.port.list", {})["ports"]) == 1
    plugin.call("NetworkDriver.DeleteEndpoint", other)
    assert plugin.call("NetworkDriver.RevokeExternalConnectivity", ep) == {}
    assert admin.call("qnf.v1.node.n1.nat.port.list", {})["ports"] == []
    # Retried by Docker after a timeout: the same endpoint, not a second one.
    again = plugin.call(
        "NetworkDriver.CreateEndpoint", {**ep, "Interface": {"Address": "10.90.5.7/24"}, "Options": {}}
    )
    assert again == created
    assert plugin.call("NetworkDriver.Leave", ep) == {}
    assert plugin.call("NetworkDriver.DeleteEndpoint", ep) == {}
    assert plugin.call("NetworkDriver.DeleteEndpoint", ep) == {}  # gone already is success
    assert "does not exist" in plugin.err("NetworkDriver.EndpointOperInfo", ep)
    assert admin.kv_keys("qnf-ipam") == [] and admin.kv_keys("qnf-endpoints") == []
    assert _ours(_links(fabric)) == links_before
    plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
    assert "not a qnf network" in plugin.err("NetworkDriver.DeleteNetwork", {"NetworkID": nid})


def test_null_ipam_lets_qnf_allocate(plugin: Plugin, admin: NodeClient) -> None:
    nid, eid = _id(), _id()
    body = {
        "NetworkID": nid,
        "Options": {"com.docker.network.generic": {"qnf.subnet": "10.90.6.0/24", "qnf.name": "dk-null"}},
        "IPv4Data": [{"AddressSpace": "null", "Pool": "0.0.0.0/0"}],
    }
    assert "qnf.subnet" in plugin.err(
        "NetworkDriver.CreateNetwork", {**body, "Options": {"com.docker.network.generic": {}}}
    )
    plugin.call("NetworkDriver.CreateNetwork", body)
    ep = {"NetworkID": nid, "EndpointID": eid}
    created = plugin.call("NetworkDriver.CreateEndpoint", {**ep, "Interface": {}})
    assert created["Interface"]["Address"] == "10.90.6.2/24" and created["Interface"]["MacAddress"]
    assert endpoint_id(eid, "eth0") in admin.kv_keys("qnf-endpoints")
    plugin.call("NetworkDriver.DeleteEndpoint", ep)
    plugin.call("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
    assert admin.kv_keys("qnf-endpoints") == []


# ---------------------------------------------------------------- a real Docker engine


class Docker:
    """dockerd 20.10 in the fabric's node namespace, every file of it under one temp dir."""

    def __init__(self, fabric: FabricNode, root: Path) -> None:
        self.fabric, self.root = fabric, root
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{root}/d.sock",
            "DOCKER_CONFIG": str(root / "cli"),
        }
        self.log = (root / "dockerd.log").open("w")
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{fabric.ns}",
                "dockerd",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "-H",
                f"unix://{root}/d.sock",
                "--pidfile",
                str(root / "d.pid"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and out.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {out.stderr}")
        return out

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self("version", check=False).returncode != 0:
            assert self.proc.poll() is None, (self.root / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "dockerd did not come up"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self("rm", "-f", *self("ps", "-aq", check=False).stdout.split(), check=False)
            self.proc.send_signal(signal.SIGTERM)  # its containerd goes with it
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        for mount in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            point = mount.split()[1]
            if point.startswith(str(self.root)):
                subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def docker(plugin_fabric: tuple[FabricNode, Path], docker_root: Path, tmp_path: Path) -> Iterator[Docker]:
    docker_root.mkdir(mode=0o700)
    engine = Docker(plugin_fabric[0], docker_root)
    try:
        engine.wait_ready()
        tar = busybox_rootfs_tar(tmp_path / "busybox.tar")
        engine("import", "--change", "ENV PATH=/bin", str(tar), "qnf-busybox:test")
        yield engine
    finally:
        engine.stop()


def test_docker_containers_on_a_qnf_network(
    docker: Docker, plugin_fabric: tuple[FabricNode, Path], admin: NodeClient
) -> None:
    fabric, socket = plugin_fabric
    driver = socket.stem
    docker("network", "create", "-d", driver, "--subnet", "10.92.0.0/24", "-o", "qnf.name=dknet", "dknet")
    net = _networks(admin)["dknet"]
    assert (net["subnet"], net["gateway"], net["isolation"]) == ("10.92.0.0/24", "10.92.0.1", "zero-trust")

    web_cmd = ["httpd", "-f", "-p", "8080", "-h", "/etc"]
    labels = ["--label", "app=web", "--label", "x" * 70 + "=not-a-valid-endpoint-label"]
    docker("run", "-d", "--name", "web", "--network", "dknet", *labels, "qnf-busybox:test", *web_cmd)
    docker("run", "-d", "--name", "client", "--network", "dknet", "qnf-busybox:test", "sleep", "600")
    seen = {}
    for name in ("web", "client"):
        settings = json.loads(docker("inspect", name).stdout)[0]["NetworkSettings"]["Networks"]["dknet"]
        assert ipaddress.ip_address(settings["IPAddress"]) in ipaddress.ip_network("10.92.0.0/24")
        seen[name] = settings
    records = admin.call("qnf.v1.node.n1.vnet.endpoint.list", {"network": "dknet"})["endpoints"]
    assert {r["addresses"][0].split("/")[0] for r in records} == {s["IPAddress"] for s in seen.values()}
    assert {r["container_id"] for r in records} == {s["EndpointID"] for s in seen.values()}
    routes = docker("exec", "client", "ip", "route").stdout
    assert "default via 10.92.0.1 dev eth0" in routes, routes
    web_ip = seen["web"]["IPAddress"]

    def fetch() -> bool:
        out = docker(
            "exec",
            "client",
            "timeout",
            "3",
            "wget",
            "-q",
            "-O",
            "-",
            f"http://{web_ip}:8080/passwd",
            check=False,
        )
        return out.stdout.startswith("root:x:0:0")

    # Docker does not send container labels to a driver: they come from the engine's API.
    deadline = time.monotonic() + 15
    while True:
        records = admin.call("qnf.v1.node.n1.vnet.endpoint.list", {"network": "dknet"})["endpoints"]
        labelled = {r["container_id"]: r["labels"] for r in records}
        if labelled.get(seen["web"]["EndpointID"]) == {"app": "web"}:
            break
        assert time.monotonic() < deadline, f"the container's labels did not reach its endpoint: {labelled}"
        time.sleep(0.2)
    assert labelled[seen["client"]["EndpointID"]] == {}

    assert not fetch()  # zero trust: no policy, no packet
    gw = fabric.client()
    try:
        gw.call(
            "qnf.v1.cmd.firewall.policy.create",
            {
                "name": "web-in",
                "network": "dknet",
                "endpointSelector": {"matchLabels": {"app": "web"}},  # a `docker run --label`
                "ingress": [{"ports": [{"port": 8080}]}],
            },
        )
        gw.call(
            "qnf.v1.cmd.firewall.policy.create",
            {
                "name": "all-out",
                "network": "dknet",
                "endpointSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{}],
            },
        )
    finally:
        gw.close()
    deadline = time.monotonic() + 15
    while not fetch():
        assert time.monotonic() < deadline, "the policy was not enforced in time"
        time.sleep(0.2)

    # The fabric's resolver on the gateway knows the container by its endpoint's DNS name.
    web_name = f"{seen['web']['EndpointID'][:12]}.dknet.qnf.local"
    answer = docker("exec", "client", "nslookup", web_name, "10.92.0.1").stdout
    assert f"Address: {web_ip}" in answer or f"Address 1: {web_ip}" in answer, answer

    # `docker network connect --driver-opt`: Docker's only way to hand a driver a name and labels.
    docker("network", "create", "-d", driver, "--subnet", "10.93.0.0/24", "-o", "qnf.name=dkside", "dkside")
    opts = ["--driver-opt", "qnf.name=webside", "--driver-opt", "qnf.label.app=web"]
    docker("network", "connect", *opts, "dkside", "web")
    side = admin.call("qnf.v1.node.n1.vnet.endpoint.list", {"network": "dkside"})["endpoints"]
    assert [(e["name"], e["labels"]) for e in side] == [("webside", {"app": "web"})]
    assert "10.93.0." in docker("exec", "web", "ip", "addr").stdout

    # `docker run -p`: published through the node's NAT agent, reached from beyond the node.
    labelled = ["--label", "app=web", "-p", "8082:8080"]
    docker("run", "-d", "--name", "pubweb", "--network", "dknet", *labelled, "qnf-busybox:test", *web_cmd)
    ports = admin.call("qnf.v1.node.n1.nat.port.list", {})["ports"]
    assert [(p["host_port"], p["container_port"], p["source"]) for p in ports] == [(8082, 8080, "docker")]
    fetch_outside = (
        "import socket, sys\n"
        "try:\n"
        "    s = socket.create_connection(('192.0.2.1', 8082), timeout=2)\n"
        "    s.sendall(b'GET /passwd HTTP/1.0\\r\\n\\r\\n'); print(s.recv(4096).decode(errors='replace'))\n"
        "except OSError as exc:\n"
        "    print('blocked', exc)\n"
    )
    with outside_host(fabric.ns) as outside:
        deadline = time.monotonic() + 30
        while True:  # the label (and so web-in) reaches the new container a moment after start
            page = subprocess.run(
                ["nsenter", f"--net=/run/netns/{outside}", sys.executable, "-c", fetch_outside],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout
            if "root:x:0:0" in page or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        records = admin.call("qnf.v1.node.n1.vnet.endpoint.list", {"network": "dknet"})["endpoints"]
        assert "root:x:0:0" in page, (page, {r["container_id"][:12]: r["labels"] for r in records})

    docker("rm", "-f", "web", "client", "pubweb")
    docker("network", "rm", "dknet", "dkside")
    assert not {"dknet", "dkside"} & set(_networks(admin))
    assert admin.kv_keys("qnf-ipam") == [] and admin.kv_keys("qnf-endpoints") == []
    assert admin.kv_keys("qnf-ports") == []  # -p went with its container
    links = _links(fabric)
    assert _ours(links) == set() and net["bridge"] not in links
    rules = fabric.exec("nft", "list", "ruleset").stdout
    for settings in seen.values():
        assert settings["IPAddress"] not in rules
