"""Policy-scoped DNS: in a network with `dns_scope: policy`, a client resolves only what it may reach.

Real queries from container namespaces to their gateway, over UDP and TCP; the firewall's
policies (created over the bus) decide what each client sees, and a policy change is followed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from libs.common.testing import Containers, NodeClient, fabric_on_new_node

CMD = "qnf.v1.cmd"
GATEWAY = "10.170.0.1"

QUERY = """
import socket, struct, sys
data, tcp = bytes.fromhex(sys.argv[1]), sys.argv[2] == "tcp"
if tcp:
    s = socket.create_connection((sys.argv[3], 53), timeout=3)
    s.sendall(struct.pack("!H", len(data)) + data)
    n = struct.unpack("!H", s.recv(2))[0]; out = b""
    while len(out) < n: out += s.recv(n - len(out))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(data, (sys.argv[3], 53))
    try: out = s.recv(65535)
    except socket.timeout: out = b""
print(out.hex())
"""

WEB_TO_DB = [
    {
        "name": "db-in",
        "network": "sc",
        "endpointSelector": {"matchLabels": {"app": "db"}},
        "ingress": [
            {"peers": [{"endpointSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}
        ],
    },
    {
        "name": "web-out",
        "network": "sc",
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Egress"],
        "egress": [
            {"peers": [{"endpointSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}
        ],
    },
]


class Env:
    def __init__(self, gw: NodeClient, spaces: dict[str, str], ips: dict[str, str]) -> None:
        self.gw, self.spaces, self.ips = gw, spaces, ips

    def ask(self, client: str, name: str, qtype: str = "A", *, tcp: bool = False) -> DNSRecord:
        packet = DNSRecord.question(name, qtype).pack()
        out = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.spaces[client]}", sys.executable, "-c", QUERY]
            + [packet.hex(), "tcp" if tcp else "udp", GATEWAY],
            capture_output=True,
            text=True,
            timeout=15,
        )
        assert out.stdout.strip(), out.stderr
        return DNSRecord.parse(bytes.fromhex(out.stdout.strip()))

    def sees(self, client: str, name: str, **kw: bool) -> list[str]:
        """The addresses `client` gets for `name`, [] for NXDOMAIN; fails on any other rcode."""
        reply = self.ask(client, f"{name}.sc.qnf.local", **kw)
        assert reply.header.rcode in (RCODE.NOERROR, RCODE.NXDOMAIN), reply
        return sorted(str(rr.rdata) for rr in reply.rr)

    def eventually(self, client: str, name: str, want: list[str]) -> None:
        deadline = time.monotonic() + 5
        while (got := self.sees(client, name)) != want:
            assert time.monotonic() < deadline, f"{client} still sees {got} for {name}, not {want}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    containers = Containers()
    with fabric_on_new_node(Path(tmp_path_factory.mktemp("dnsscope")) / "state") as fabric:
        gw = fabric.client()
        try:
            gw.call(
                f"{CMD}.vnet.network.create", {"name": "sc", "subnet": "10.170.0.0/24", "dns_scope": "policy"}
            )
            spaces, ips = {}, {}
            for name in ("web", "db", "cache"):
                spaces[name], ips[name] = containers.attach(gw, "sc", name, labels={"app": name})
            for p in WEB_TO_DB:
                gw.call(f"{CMD}.firewall.policy.create", p)
            yield Env(gw, spaces, ips)
        finally:
            gw.close()
            containers.close()


def test_a_client_resolves_only_what_its_policies_let_it_reach(env: Env) -> None:
    env.eventually("web", "db", [env.ips["db"]])
    assert env.sees("web", "cache") == []  # exists, but web may not talk to it: NXDOMAIN
    assert env.sees("web", "web") == [env.ips["web"]]  # itself, always
    assert env.sees("db", "web") == []  # db may not open connections to web
    assert env.sees("cache", "db") == []
    assert env.sees("web", "db", tcp=True) == [env.ips["db"]]  # TCP follows the same scope
    assert env.sees("web", "cache", tcp=True) == []
    reverse = env.ask("web", ".".join(reversed(env.ips["cache"].split("."))) + ".in-addr.arpa", "PTR")
    assert reverse.header.rcode == RCODE.NXDOMAIN and not reverse.rr


def test_a_policy_change_is_followed(env: Env) -> None:
    opened = {
        "name": "cache-to-db",
        "network": "sc",
        "endpointSelector": {"matchLabels": {"app": "cache"}},
        "policyTypes": ["Egress"],
        "egress": [
            {"peers": [{"endpointSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}
        ],
    }
    ingress = {**WEB_TO_DB[0], "ingress": [{"peers": [{"endpointSelector": {}}], "ports": [{"port": 5432}]}]}
    env.gw.call(f"{CMD}.firewall.policy.create", opened)
    env.gw.call(f"{CMD}.firewall.policy.update", ingress)
    try:
        env.eventually("cache", "db", [env.ips["db"]])
    finally:
        env.gw.call(f"{CMD}.firewall.policy.delete", {"name": "cache-to-db", "network": "sc"})
        env.gw.call(f"{CMD}.firewall.policy.update", WEB_TO_DB[0])
    env.eventually("cache", "db", [])


def test_a_network_scoped_network_shows_every_name(env: Env) -> None:
    env.gw.call(f"{CMD}.vnet.network.update", {"name": "sc", "dns_scope": "network"})
    try:
        env.eventually("web", "cache", [env.ips["cache"]])
        assert env.sees("db", "web") == [env.ips["web"]]
    finally:
        env.gw.call(f"{CMD}.vnet.network.update", {"name": "sc", "dns_scope": "policy"})
    env.eventually("web", "cache", [])
