"""The zero-trust firewall with real packets: a conformance set, each case checked three ways.

Scope: the whole fabric runs in a test node namespace; endpoints are container namespaces with
TCP listeners and a UDP echo. For every scenario the real packet outcome (a connection that
succeeds or times out) must equal both the expected verdict and what `policy.explain` says.
Also: anti-spoofing, Kubernetes YAML import, bad policies leaving the ruleset unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs.common.testing import Containers, FabricNode, NodeClient, fabric_on_new_node

CMD = "qnf.v1.cmd"
TCP_PORTS = (80, 443, 5432, 8080)
UDP_PORT = 9999

SERVER = f"""
import asyncio, socket
async def main():
    for port in {TCP_PORTS!r}:
        await asyncio.start_server(lambda r, w: w.close(), '0.0.0.0', port)
    loop = asyncio.get_running_loop()
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, t): self.t = t
        def datagram_received(self, data, addr): self.t.sendto(data, addr)
    await loop.create_datagram_endpoint(Echo, local_addr=('0.0.0.0', {UDP_PORT}))
    print('ready', flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

PROBE = """
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == 'tcp':
        socket.create_connection((host, port), timeout=1.5).close()
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5)
        s.sendto(b'x', (host, port)); s.recv(16)
    print('ok')
except OSError:
    print('blocked')
"""


@dataclass
class Env:
    fabric: FabricNode
    gw: NodeClient
    ips: dict[str, str]  # endpoint name -> IPv4 address
    spaces: dict[str, str]  # endpoint name -> namespace

    def sync(self, policies: int) -> None:
        """Wait until this node's firewall knows `policies` policies and has applied them."""
        deadline = time.monotonic() + 15
        while True:
            status = self.gw.call("qnf.v1.node.n1.firewall.status")
            if status["in_sync"] and status["policies"] == policies and status["endpoints"] == len(self.ips):
                return
            assert time.monotonic() < deadline, status
            time.sleep(0.05)

    def probe(self, src: str, dst: str, proto: str, port: int) -> bool:
        out = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{self.spaces[src]}",
                sys.executable,
                "-c",
                PROBE,
                proto,
                self.ips[dst],
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip() == "ok"

    def explain(self, src: str, dst: str, proto: str, port: int) -> dict:
        return self.gw.call(
            f"{CMD}.firewall.policy.explain",
            {"source": self.ips[src], "destination": self.ips[dst], "protocol": proto.upper(), "port": port},
        )

    def set_policies(self, policies: list[dict]) -> None:
        current = self.gw.call(f"{CMD}.firewall.policy.list", {})["policies"]
        for p in current:
            self.gw.call(f"{CMD}.firewall.policy.delete", {"name": p["name"], "network": p.get("network")})
        for p in policies:
            self.gw.call(f"{CMD}.firewall.policy.create", p)
        self.sync(len(policies))


ENDPOINTS = {
    # name: (network, labels)
    "web1": ("zt", {"app": "web", "tier": "front"}),
    "web2": ("zt", {"app": "web", "tier": "front", "canary": "yes"}),
    "db": ("zt", {"app": "db"}),
    "cache": ("zt", {"app": "cache"}),
    "da1": ("da", {"app": "a"}),
    "da2": ("da", {"app": "b"}),
    "o1": ("other", {"app": "web"}),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One fabric (module scope) with three networks, seven endpoints and their servers."""
    containers = Containers()
    servers: list[subprocess.Popen[str]] = []
    with fabric_on_new_node(Path(tmp_path_factory.mktemp("fw")) / "state") as fabric:
        gw = fabric.client()
        try:
            gw.call(f"{CMD}.vnet.network.create", {"name": "zt", "subnet": "10.130.0.0/24"})
            gw.call(
                f"{CMD}.vnet.network.create",
                {"name": "da", "subnet": "10.131.0.0/24", "isolation": "default-allow"},
            )
            gw.call(
                f"{CMD}.vnet.network.create",
                {"name": "other", "subnet": "10.132.0.0/24", "labels": {"team": "x"}},
            )
            spaces, ips = {}, {}
            for name, (network, labels) in ENDPOINTS.items():
                named = {"http": {"port": 8080, "protocol": "TCP"}} if name == "db" else {}
                spaces[name], ips[name] = containers.attach(
                    gw, network, name, labels=labels, named_ports=named
                )
                proc = subprocess.Popen(
                    ["nsenter", f"--net=/run/netns/{spaces[name]}", sys.executable, "-c", SERVER],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                servers.append(proc)
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            yield Env(fabric, gw, ips, spaces)
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()
                assert proc.stdout is not None
                proc.stdout.close()
            gw.close()
            containers.close()


def sel(**labels: str) -> dict:
    return {"matchLabels": labels}


# (id, policies, [(src, dst, proto, port, expected_allowed), ...])
PHASES: list[tuple[str, list[dict], list[tuple[str, str, str, int, bool]]]] = [
    (
        "no-policies",
        [],
        [
            ("web1", "db", "tcp", 5432, False),  # zero trust: nothing without a policy
            ("web1", "web2", "tcp", 80, False),
            ("da1", "da2", "tcp", 80, True),  # default-allow network: Kubernetes' unisolated pods
            ("da1", "da2", "udp", UDP_PORT, True),
            ("web1", "da1", "tcp", 80, False),  # web1's egress is closed
            ("da1", "web1", "tcp", 80, False),  # web1's ingress is closed
        ],
    ),
    (
        "db-from-web",
        [
            {
                "name": "db-in",
                "network": "zt",
                "endpointSelector": sel(app="db"),
                "ingress": [{"peers": [{"endpointSelector": sel(app="web")}], "ports": [{"port": 5432}]}],
            },
            {
                "name": "web-out",
                "network": "zt",
                "endpointSelector": sel(app="web"),
                "policyTypes": ["Egress"],
                "egress": [{"peers": [{"endpointSelector": sel(app="db")}], "ports": [{"port": 5432}]}],
            },
        ],
        [
            ("web1", "db", "tcp", 5432, True),
            ("web2", "db", "tcp", 5432, True),
            ("web1", "db", "tcp", 80, False),  # port not allowed
            ("cache", "db", "tcp", 5432, False),  # cache's egress is closed, and it is not web
            ("web1", "cache", "tcp", 5432, False),  # egress allowed only to db
            ("db", "web1", "tcp", 80, False),  # an ingress-only policy opens no egress for db
        ],
    ),
    (
        "egress-only-and-ranges",
        [
            {
                "name": "cache-out",
                "network": "zt",
                "endpointSelector": sel(app="cache"),
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": 400, "endPort": 500}, {"protocol": "UDP", "port": UDP_PORT}]}],
            },
            {
                "name": "web-in",
                "network": "zt",
                "endpointSelector": sel(app="web"),
                "ingress": [
                    {
                        "peers": [
                            {
                                "endpointSelector": {
                                    "matchExpressions": [
                                        {"key": "app", "operator": "In", "values": ["cache", "db"]}
                                    ]
                                }
                            }
                        ],
                        "ports": [{"port": 443}, {"protocol": "UDP"}],
                    }
                ],
            },
        ],
        [
            ("cache", "web1", "tcp", 443, True),  # in the egress range 400-500, and web allows 443 from cache
            ("cache", "web1", "tcp", 80, False),  # outside the egress range
            ("cache", "web2", "udp", UDP_PORT, True),
            ("cache", "db", "tcp", 443, False),  # egress allows it, but db's ingress is closed
            ("db", "web1", "tcp", 443, False),  # web allows db in, but db's egress is closed
        ],
    ),
    (
        "cross-network-and-named-ports",
        [
            {
                "name": "db-in",
                "network": "zt",
                "endpointSelector": sel(app="db"),
                "ingress": [
                    {
                        "peers": [{"networkSelector": sel(team="x"), "endpointSelector": sel(app="web")}],
                        "ports": [{"port": "http"}],
                    }
                ],
            },
            {
                "name": "o1-out",
                "network": "other",
                "endpointSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {"peers": [{"networkSelector": {"matchLabels": {"kubernetes.io/metadata.name": "zt"}}}]}
                ],
            },
            {
                "name": "da2-in",
                "network": "da",
                "endpointSelector": sel(app="b"),
                "ingress": [{"peers": [{"ipBlock": {"cidr": "10.131.0.0/24", "except": ["10.131.0.2/32"]}}]}],
            },
        ],
        [
            (
                "o1",
                "db",
                "tcp",
                8080,
                True,
            ),  # named port "http" of db, from another network named by selector
            ("o1", "db", "tcp", 5432, False),
            ("o1", "web1", "tcp", 80, False),  # o1's egress allows it; web1's ingress does not
            ("web1", "db", "tcp", 8080, False),  # web1 is in zt, not in team=x
            ("da1", "da2", "tcp", 80, False),  # da1 (10.131.0.2) is carved out by except
            ("da2", "da1", "tcp", 80, True),  # da1 is still unisolated
        ],
    ),
    (
        "empty-peers-zero-trust",
        [
            {"name": "all-in", "network": "zt", "endpointSelector": sel(app="cache"), "ingress": [{}]},
            {
                "name": "all-out",
                "network": "zt",
                "endpointSelector": sel(app="web"),
                "policyTypes": ["Egress"],
                "egress": [{}],
            },
            {
                "name": "da-out",
                "network": "da",
                "endpointSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{}],
            },
        ],
        [
            ("web1", "cache", "tcp", 80, True),  # same network: "every peer" includes it
            ("da1", "cache", "tcp", 80, False),  # another fabric network must be named in zero trust
            ("web1", "da1", "tcp", 80, False),  # "every peer" of web's egress excludes other fabric networks
            ("web2", "cache", "udp", UDP_PORT, True),
        ],
    ),
    (
        "admin-tier",
        [
            {"name": "all-in", "network": "zt", "endpointSelector": sel(app="cache"), "ingress": [{}]},
            {
                "name": "all-out",
                "network": "zt",
                "endpointSelector": sel(app="web"),
                "policyTypes": ["Egress"],
                "egress": [{}],
            },
            {
                "name": "deny-canary",
                "tier": "admin",
                "priority": 10,
                "endpointSelector": sel(canary="yes"),
                "egress": [{"action": "Deny", "ports": [{"port": 80}]}],
            },
            {
                "name": "allow-db",
                "tier": "admin",
                "priority": 20,
                "networkSelector": {},
                "endpointSelector": sel(app="db"),
                "ingress": [{"action": "Allow", "peers": [{"endpointSelector": sel(app="cache")}]}],
            },
        ],
        [
            ("web2", "cache", "tcp", 80, False),  # admin deny beats the normal allow
            ("web1", "cache", "tcp", 80, True),
            ("web2", "cache", "tcp", 443, True),
            ("cache", "db", "tcp", 5432, False),  # admin allows db's ingress, but cache's egress is closed
        ],
    ),
]


@pytest.mark.parametrize("phase", [p[0] for p in PHASES])
def test_conformance(env: Env, phase: str) -> None:
    _, policies, cases = next(p for p in PHASES if p[0] == phase)
    env.set_policies(policies)
    with ThreadPoolExecutor(max_workers=8) as pool:
        real = list(pool.map(lambda c: env.probe(c[0], c[1], c[2], c[3]), cases))
    failures = []
    for (src, dst, proto, port, expected), got in zip(cases, real, strict=True):
        verdict = env.explain(src, dst, proto, port)
        if not (got == expected == verdict["allowed"]):
            failures.append(
                f"{src}->{dst} {proto}/{port}: packets {got}, expected {expected}, explain {verdict}"
            )
    assert not failures, "\n".join(failures)


def test_spoofed_source_is_dropped(env: Env) -> None:
    env.set_policies(
        [
            {"name": "all-in", "network": "zt", "endpointSelector": {}, "ingress": [{}]},
            {
                "name": "all-out",
                "network": "zt",
                "endpointSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{}],
            },
        ]
    )
    assert env.probe("web1", "web2", "tcp", 80)
    space = env.spaces["web1"]
    # An address the fabric never assigned to web1: packets from it must not leave its veth.
    subprocess.run(["ip", "-n", space, "addr", "add", "10.130.0.200/24", "dev", "eth0"], check=True)
    try:
        code = (
            "import socket\ns=socket.socket(); s.bind(('10.130.0.200', 0)); s.settimeout(1.5)\n"
            f"try:\n s.connect(('{env.ips['web2']}', 80)); print('ok')\nexcept OSError: print('blocked')"
        )
        out = subprocess.run(
            ["nsenter", f"--net=/run/netns/{space}", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert out.stdout.strip() == "blocked"
    finally:
        subprocess.run(["ip", "-n", space, "addr", "del", "10.130.0.200/24", "dev", "eth0"], check=True)
    assert env.probe("web1", "web2", "tcp", 80)


def test_kubernetes_yaml_is_accepted(env: Env) -> None:
    env.set_policies([])
    yaml_doc = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a-to-b, namespace: da}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: a}}
    ports:
    - {protocol: TCP, port: 443}
"""
    policy = env.gw.call(f"{CMD}.firewall.policy.import", {"document": yaml_doc})
    assert policy["network"] == "da" and policy["name"] == "allow-a-to-b"
    env.sync(1)
    assert env.probe("da1", "da2", "tcp", 443)
    assert not env.probe("da1", "da2", "tcp", 80)
    bad = env.gw.request(
        f"{CMD}.firewall.policy.import", {"document": "kind: Deployment\napiVersion: apps/v1"}
    )
    assert bad["error"]["code"] == "invalid" and "NetworkPolicy" in bad["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {
                "name": "x",
                "network": "zt",
                "endpointSelector": {"matchExpressions": [{"key": "a", "operator": "Near", "values": ["b"]}]},
            },
            "operator",
        ),
        ({"name": "x", "network": "zt", "ingress": [{"ports": [{"port": 70000}]}]}, "port"),
        ({"name": "x", "network": "zt", "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "endPort"),
        (
            {"name": "x", "network": "zt", "ingress": [{"peers": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
            "cidr",
        ),
        ({"name": "x", "network": "nope"}, "network"),
        ({"name": "x", "network": "zt", "ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]}, "ICMP"),
    ],
    ids=["operator", "port-range", "end-port", "bad-cidr", "unknown-network", "icmp-port"],
)
def test_bad_policies_change_nothing(env: Env, body: dict, field: str) -> None:
    env.set_policies([{"name": "keep", "network": "da", "endpointSelector": {}, "ingress": [{}]}])
    before = env.fabric.exec("nft", "-j", "list", "table", "inet", "qnf").stdout
    out = env.gw.request(f"{CMD}.firewall.policy.create", body)
    assert out["error"]["code"] == "invalid" and field in out["error"]["message"], out
    env.sync(1)
    assert json.loads(env.fabric.exec("nft", "-j", "list", "table", "inet", "qnf").stdout) == json.loads(
        before
    )


def test_label_change_moves_an_endpoint_in_and_out(env: Env) -> None:
    env.set_policies(
        [
            {
                "name": "db-in",
                "network": "zt",
                "endpointSelector": sel(app="db"),
                "ingress": [{"peers": [{"endpointSelector": sel(role="client")}], "ports": [{"port": 5432}]}],
            },
            {
                "name": "out",
                "network": "zt",
                "endpointSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{}],
            },
        ]
    )
    assert not env.probe("cache", "db", "tcp", 5432)

    def relabel(labels: dict[str, str]) -> None:
        space = env.spaces["cache"]
        env.gw.call(
            "qnf.v1.node.n1.vnet.endpoint.labels", {"container_id": space, "ifname": "eth0", "labels": labels}
        )
        deadline = time.monotonic() + 10
        while env.gw.call("qnf.v1.node.n1.firewall.status")["in_sync"] is False or (
            env.explain("cache", "db", "tcp", 5432)["allowed"] != ("role" in labels)
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        env.sync(2)

    relabel({"app": "cache", "role": "client"})
    assert env.probe("cache", "db", "tcp", 5432)
    relabel({"app": "cache"})
    assert not env.probe("cache", "db", "tcp", 5432)
