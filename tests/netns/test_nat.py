"""NAT with real packets: masquerade, published ports, hairpin, and the firewall still ruling.

Topology, all in namespaces this module creates:

    outside (192.0.2.2) ── veth ── node (uplink 192.0.2.1; the whole fabric runs here)
                                     ├── bridge of "pub"    10.140.0.0/24 (nat on):  c1, c2, c4
                                     └── bridge of "nomasq" 10.141.0.0/24 (nat off): c3

"outside" has no route to the fabric's networks, as a host beyond a node's uplink would not.
Every container and the outside host run a server that answers each TCP connection and each
UDP datagram with the peer address it saw, so a test can tell who NAT made the source.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import NetNS

from libs.common.testing import Containers, FabricNode, NodeClient, fabric_on_new_node, outside_host

CMD = "qnf.v1.cmd"
NAT = "qnf.v1.node.n1.nat"
NODE_UPLINK = "192.0.2.1"
OUTSIDE = "192.0.2.2"
NODE_UPLINK6 = "2001:db8::1"
OUTSIDE6 = "2001:db8::2"

SERVER = """
import asyncio, socket, sys
ports = [int(p) for p in sys.argv[1:]]
async def main():
    async def answer(r, w):
        w.write(w.get_extra_info('peername')[0].encode()); await w.drain(); w.close()
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, t): self.t = t
        def datagram_received(self, data, addr): self.t.sendto(addr[0].encode(), addr)
    loop = asyncio.get_running_loop()
    for port in ports:
        await asyncio.start_server(answer, None, port)  # IPv4 and IPv6
        await loop.create_datagram_endpoint(Echo, local_addr=('0.0.0.0', port))
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); v6.bind(('::', port))
        await loop.create_datagram_endpoint(Echo, sock=v6)
    print('ready', flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

PROBE = """
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == 'tcp':
        s = socket.create_connection((host, port), timeout=1.5)
    else:
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(1.5); s.sendto(b'x', (host, port))
    print(s.recv(64).decode() or 'empty')
except OSError:
    print('blocked')
"""


@dataclass
class Env:
    fabric: FabricNode
    gw: NodeClient
    outside: str
    spaces: dict[str, str]
    ips: dict[str, str]
    containers: Containers

    def ask(self, space: str, proto: str, host: str, port: int) -> str:
        """What the server at host:port saw as our address, or 'blocked'."""
        out = subprocess.run(
            ["nsenter", f"--net=/run/netns/{space}", sys.executable, "-c", PROBE, proto, host, str(port)],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip()

    def publish(self, name: str, host_port: int, container_port: int = 80, **extra: object) -> dict:
        return self.gw.call(
            f"{NAT}.port.publish",
            {
                "container_id": self.spaces[name],
                "host_port": host_port,
                "container_port": container_port,
                **extra,
            },
        )

    def nat_table(self) -> dict:
        out = self.fabric.exec("nft", "-j", "list", "table", "inet", "qnf_nat")
        assert out.returncode == 0, out.stderr
        elements: dict[str, list] = {}
        for item in json.loads(out.stdout)["nftables"]:
            obj = item.get("set") or item.get("map")
            if obj:
                elements[obj["name"]] = obj.get("elem", [])
        return elements

    def set_policies(self, policies: list[dict]) -> None:
        for p in self.gw.call(f"{CMD}.firewall.policy.list", {})["policies"]:
            self.gw.call(f"{CMD}.firewall.policy.delete", {"name": p["name"], "network": p.get("network")})
        for p in policies:
            self.gw.call(f"{CMD}.firewall.policy.create", p)
        deadline = time.monotonic() + 15
        while True:
            status = self.gw.call("qnf.v1.node.n1.firewall.status")
            if status["in_sync"] and status["policies"] == len(policies):
                return
            assert time.monotonic() < deadline, status
            time.sleep(0.05)


def _serve(space: str, ports: list[int], procs: list[subprocess.Popen[str]]) -> None:
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{space}", sys.executable, "-c", SERVER, *map(str, ports)],
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    containers = Containers()
    servers: list[subprocess.Popen[str]] = []
    with (
        fabric_on_new_node(
            Path(tmp_path_factory.mktemp("nat")) / "state", env={"QNF_DRIFT_CHECK_S": "1"}
        ) as fabric,
        outside_host(fabric.ns, node_address=NODE_UPLINK, address=OUTSIDE) as outside,
    ):
        gw = fabric.client()
        try:
            gw.call(
                f"{CMD}.vnet.network.create",
                {"name": "pub", "subnet": "10.140.0.0/24", "subnet6": "fd00:140::/64"},
            )
            gw.call(f"{CMD}.vnet.network.create", {"name": "nomasq", "subnet": "10.141.0.0/24", "nat": False})
            spaces, ips = {}, {}
            for name, network in (("c1", "pub"), ("c2", "pub"), ("c3", "nomasq")):
                spaces[name], ips[name] = containers.attach(gw, network, name, labels={"app": name})
                _serve(spaces[name], [80], servers)
            _serve(outside, [7000], servers)
            yield Env(fabric, gw, outside, spaces, ips, containers)
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()
                assert proc.stdout is not None
                proc.stdout.close()
            gw.close()
            containers.close()


def egress_to_outside(*apps: str) -> list[dict]:
    return [
        {
            "name": f"{app}-out",
            "network": "pub" if app != "c3" else "nomasq",
            "endpointSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Egress"],
            "egress": [{"peers": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}],
        }
        for app in apps
    ]


OPEN_C1_TO_OUTSIDE = {
    "name": "c1-from-outside",
    "network": "pub",
    "endpointSelector": {"matchLabels": {"app": "c1"}},
    "ingress": [{"peers": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 80}]}],
}


def test_masquerade_shows_the_node_address_outside(env: Env) -> None:
    env.set_policies(egress_to_outside("c1"))
    assert env.ask(env.spaces["c1"], "tcp", OUTSIDE, 7000) == NODE_UPLINK
    assert env.ask(env.spaces["c1"], "udp", OUTSIDE, 7000) == NODE_UPLINK


def test_masquerade_off_leaves_the_container_address(env: Env) -> None:
    env.set_policies(egress_to_outside("c3"))
    # The outside host has no route back to an unmasqueraded fabric address: nothing returns.
    assert env.ask(env.spaces["c3"], "tcp", OUTSIDE, 7000) == "blocked"
    with NetNS(env.outside) as out:
        out.route("add", dst="10.141.0.0/24", gateway=NODE_UPLINK)
    try:
        assert env.ask(env.spaces["c3"], "tcp", OUTSIDE, 7000) == env.ips["c3"]
        env.gw.call(f"{CMD}.vnet.network.update", {"name": "nomasq", "nat": True})
        deadline = time.monotonic() + 5
        while "10.141.0.0" not in json.dumps(env.nat_table()["masq4"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert env.ask(env.spaces["c3"], "tcp", OUTSIDE, 7000) == NODE_UPLINK
    finally:
        env.gw.call(f"{CMD}.vnet.network.update", {"name": "nomasq", "nat": False})
        with NetNS(env.outside) as out:
            out.route("del", dst="10.141.0.0/24", gateway=NODE_UPLINK)


def test_published_port_is_closed_until_a_policy_opens_it(env: Env) -> None:
    port = env.publish("c1", 8080)
    try:
        assert port["id"] == "n1.tcp.8080.any" and port["source"] == "api"
        env.set_policies([])
        assert env.ask(env.outside, "tcp", NODE_UPLINK, 8080) == "blocked"  # zero trust
        env.set_policies([OPEN_C1_TO_OUTSIDE])
        # The container sees the real client: published ports do not hide who connects.
        assert env.ask(env.outside, "tcp", NODE_UPLINK, 8080) == OUTSIDE
        assert env.ask(env.outside, "tcp", NODE_UPLINK, 8081) == "blocked"  # nothing published there
    finally:
        env.gw.call(f"{NAT}.port.unpublish", {"id": port["id"]})
    assert env.ask(env.outside, "tcp", NODE_UPLINK, 8080) == "blocked"


def test_udp_and_address_bound_ports(env: Env) -> None:
    env.set_policies(
        [
            {
                **OPEN_C1_TO_OUTSIDE,
                "ingress": [
                    {
                        "peers": [{"ipBlock": {"cidr": "192.0.2.0/24"}}],
                        "ports": [{"port": 80, "protocol": "UDP"}],
                    }
                ],
            }
        ]
    )
    udp = env.publish("c1", 5353, protocol="udp", host_ip=NODE_UPLINK)
    try:
        assert udp["id"] == "n1.udp.5353.192-0-2-1"
        assert env.ask(env.outside, "udp", NODE_UPLINK, 5353) == OUTSIDE
        assert env.ask(env.outside, "tcp", NODE_UPLINK, 5353) == "blocked"
    finally:
        env.gw.call(f"{NAT}.port.unpublish", {"id": udp["id"]})


def test_hairpin_through_the_node_address(env: Env) -> None:
    env.set_policies(
        [
            {
                "name": "pub-internal",
                "network": "pub",
                "endpointSelector": {},
                "ingress": [{"peers": [{"endpointSelector": {}}]}],
                "egress": [{"peers": [{"endpointSelector": {}}]}],
            }
        ]
    )
    port = env.publish("c1", 8090)
    try:
        gateway = "10.140.0.1"
        # Another container and the container itself reach the port through the node's address;
        # the DNATed connection is masqueraded, so replies come back the way they went.
        assert env.ask(env.spaces["c2"], "tcp", NODE_UPLINK, 8090) == gateway
        assert env.ask(env.spaces["c1"], "tcp", NODE_UPLINK, 8090) == gateway
        # A gateway address is the fabric's own: a published port never captures it (DNS is there).
        assert env.ask(env.spaces["c2"], "tcp", gateway, 8090) == "blocked"
    finally:
        env.gw.call(f"{NAT}.port.unpublish", {"id": port["id"]})


def test_removing_an_endpoint_unpublishes_its_ports(env: Env) -> None:
    space, ip = env.containers.attach(env.gw, "pub", "c4", labels={"app": "c4"})
    port = env.gw.call(
        f"{NAT}.port.publish", {"container_id": space, "host_port": 9000, "container_port": 80}
    )
    assert [ip, 80] in [e[1:] for e in _flat(env.nat_table())]
    env.gw.call("qnf.v1.node.n1.vnet.endpoint.remove", {"container_id": space, "ifname": "eth0"})
    deadline = time.monotonic() + 5
    while any(p["id"] == port["id"] for p in env.gw.call(f"{NAT}.port.list", {})["ports"]):
        assert time.monotonic() < deadline, "the port outlived its endpoint"
        time.sleep(0.05)
    while [ip, 80] in [e[1:] for e in _flat(env.nat_table())]:
        assert time.monotonic() < deadline, "the kernel still maps the removed endpoint"
        time.sleep(0.05)


def _flat(table: dict[str, list]) -> list[list]:
    """(host port, address, port) of every wildcard IPv4 mapping in the kernel's maps."""
    addr = {json.dumps(k): v for k, v in table.get("any4_addr", [])}
    port = {json.dumps(k): v for k, v in table.get("any4_port", [])}
    return [[json.loads(k)["concat"][1], addr[k], port[k]] for k in addr]


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"host_port": 0, "container_port": 80}, "invalid", "host_port"),
        ({"host_port": 70000, "container_port": 80}, "invalid", "host_port"),
        ({"host_port": 8100, "container_port": 0}, "invalid", "container_port"),
        ({"host_port": 8100, "container_port": 80, "protocol": "icmp"}, "invalid", "protocol"),
        ({"host_port": 8100, "container_port": 80, "host_ip": "203.0.113.9"}, "invalid", "host_ip"),
        ({"host_port": 8100, "container_port": 80, "host_ip": "10.140.0.1"}, "invalid", "host_ip"),
        ({"host_port": 8100, "container_port": 80, "host_ip": "not-an-ip"}, "invalid", "host_ip"),
    ],
)
def test_bad_publish_is_refused_and_changes_nothing(env: Env, body: dict, code: str, field: str) -> None:
    before = env.nat_table()
    reply = env.gw.request(f"{NAT}.port.publish", {"container_id": env.spaces["c2"], **body})
    assert reply["error"]["code"] == code and field in reply["error"]["message"], reply
    assert env.nat_table() == before


def test_conflicting_and_unknown_publishes_are_refused(env: Env) -> None:
    port = env.publish("c1", 8200)
    try:
        before = env.nat_table()
        again = env.publish("c1", 8200)  # the same mapping again: a retry, not a conflict
        assert again == port
        for extra in ({}, {"host_ip": NODE_UPLINK}):
            reply = env.gw.request(
                f"{NAT}.port.publish",
                {"container_id": env.spaces["c2"], "host_port": 8200, "container_port": 80, **extra},
            )
            assert reply["error"]["code"] == "conflict" and "8200" in reply["error"]["message"], reply
        reply = env.gw.request(
            f"{NAT}.port.publish",
            {"container_id": "no-such-container", "host_port": 8201, "container_port": 80},
        )
        assert reply["error"]["code"] == "not_found", reply
        assert env.nat_table() == before
    finally:
        env.gw.call(f"{NAT}.port.unpublish", {"id": port["id"]})
    assert env.gw.call(f"{NAT}.port.unpublish", {"id": port["id"]}) == {"existed": False}


def test_a_kernel_that_drifted_is_put_back(env: Env) -> None:
    """Someone deletes the NAT table or the firewall's set elements behind the agents' backs."""
    port = env.publish("c1", 8300)
    try:
        table = env.nat_table()
        for argv in (
            ["nft", "delete", "table", "inet", "qnf_nat"],
            ["nft", "flush", "map", "inet", "qnf_nat", "any4_addr"],
        ):
            out = env.fabric.exec(*argv)
            assert out.returncode == 0, out.stderr
            deadline = time.monotonic() + 10
            while True:
                listed = env.fabric.exec("nft", "-j", "list", "table", "inet", "qnf_nat")
                if listed.returncode == 0 and env.nat_table() == table:
                    break
                assert time.monotonic() < deadline, f"{' '.join(argv)}: the NAT table was not put back"
                time.sleep(0.2)
        before = env.fabric.exec("nft", "-j", "list", "table", "bridge", "qnf").stdout
        sets = [
            o["set"]["name"] for o in json.loads(before)["nftables"] if "set" in o and o["set"].get("elem")
        ]
        assert sets, "the firewall's bridge table has no filled set to break"
        assert env.fabric.exec("nft", "flush", "set", "bridge", "qnf", sets[0]).returncode == 0
        deadline = time.monotonic() + 10
        while True:
            now = env.fabric.exec("nft", "-j", "list", "set", "bridge", "qnf", sets[0]).stdout
            if json.loads(now)["nftables"][1]["set"].get("elem"):
                break
            assert time.monotonic() < deadline, "the firewall did not put its set back"
            time.sleep(0.2)
    finally:
        env.gw.call(f"{NAT}.port.unpublish", {"id": port["id"]})


def test_ipv6_masquerade_and_published_ports(env: Env) -> None:
    """The same table serves IPv6: masquerade out, a published port in, the client seen as is."""
    ep = env.gw.call("qnf.v1.node.n1.vnet.endpoint.get", {"container_id": env.spaces["c1"], "ifname": "eth0"})
    c1_v6 = next(a.split("/")[0] for a in ep["addresses"] if ":" in a)
    out6 = {
        "name": "c1-out6",
        "network": "pub",
        "endpointSelector": {"matchLabels": {"app": "c1"}},
        "policyTypes": ["Egress"],
        "egress": [{"peers": [{"ipBlock": {"cidr": "2001:db8::/64"}}]}],
    }
    in6 = {
        **OPEN_C1_TO_OUTSIDE,
        "ingress": [
            {
                "peers": [{"ipBlock": {"cidr": "2001:db8::/64"}}, {"ipBlock": {"cidr": "192.0.2.0/24"}}],
                "ports": [{"port": 80}],
            }
        ],
    }
    env.set_policies([out6, in6])
    deadline = time.monotonic() + 5  # the container's IPv6 address may still be settling
    while (seen := env.ask(env.spaces["c1"], "tcp", OUTSIDE6, 7000)) == "blocked":
        assert time.monotonic() < deadline, "no IPv6 connection from the container to the outside"
        time.sleep(0.2)
    assert seen == NODE_UPLINK6  # masqueraded to the node's IPv6 address
    port = env.publish("c1", 8086)
    try:
        assert env.ask(env.outside, "tcp", NODE_UPLINK6, 8086) == OUTSIDE6
        assert env.ask(env.outside, "tcp", NODE_UPLINK, 8086) == OUTSIDE  # and IPv4, one mapping
        assert [c1_v6, 80] in [[a, p] for _, a, p in _flat6(env.nat_table())]
    finally:
        env.gw.call(f"{NAT}.port.unpublish", {"id": port["id"]})


def _flat6(table: dict[str, list]) -> list[list]:
    addr = {json.dumps(k): v for k, v in table.get("any6_addr", [])}
    port = {json.dumps(k): v for k, v in table.get("any6_port", [])}
    return [[json.loads(k)["concat"][1], addr[k], port[k]] for k in addr]


def test_an_endpoints_own_port_mappings_are_published_with_it(env: Env) -> None:
    """EndpointAdd.port_mappings over the bus (as CNI portMappings): published at ADD, one rule."""
    space, ip = env.containers.attach(
        env.gw, "pub", "c5", labels={"app": "c5"}, port_mappings=[{"host_port": 9100, "container_port": 80}]
    )
    ports = [p for p in env.gw.call(f"{NAT}.port.list", {})["ports"] if p["container_id"] == space]
    assert [(p["host_port"], p["source"]) for p in ports] == [(9100, "endpoint")]
    assert [9100, ip, 80] in _flat(env.nat_table())
    clash = env.gw.request(
        "qnf.v1.node.n1.vnet.endpoint.add",
        {
            "request_id": "clash",
            "container_id": "clash",
            "ifname": "eth1",
            "netns": f"/run/netns/{env.spaces['c2']}",
            "network": "pub",
            "port_mappings": [{"host_port": 9100, "container_port": 80}],
        },
    )
    assert clash["error"]["code"] == "conflict" and "9100" in clash["error"]["message"], clash
    endpoints = env.gw.call("qnf.v1.node.n1.vnet.endpoint.list", {"network": "pub"})["endpoints"]
    assert "clash" not in {e["container_id"] for e in endpoints}  # the refused ADD left nothing
    env.gw.call("qnf.v1.node.n1.vnet.endpoint.remove", {"container_id": space, "ifname": "eth0"})
