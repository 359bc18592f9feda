"""The fabric's resolver with real queries from container namespaces to their gateway address.

Scope: names and PTR of endpoints resolve for clients on the same network only; a removed
endpoint stops resolving within its TTL; other names go to a test upstream (a tiny resolver
started by the test in the node namespace), cached, and a dead upstream gives SERVFAIL fast;
TCP, EDNS and letter case behave; malformed packets get FORMERR or nothing, and the server
still answers afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from libs.common.testing import Containers, FabricNode, NodeClient, fabric_on_new_node

UPSTREAM_PORT = 5353
UPSTREAM = f"""
import socket
from dnslib import DNSRecord, RR, A, QTYPE, RCODE
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", {UPSTREAM_PORT}))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(4096)
    q = DNSRecord.parse(data)
    r = q.reply()
    if str(q.q.qname).lower() == "example.test.":
        r.add_answer(RR("example.test.", QTYPE.A, rdata=A("192.0.2.1"), ttl=300))
    else:
        r.header.rcode = RCODE.NXDOMAIN
    s.sendto(r.pack(), addr)
"""


@dataclass
class Env:
    fabric: FabricNode
    gw: NodeClient
    spaces: dict[str, str]
    ips: dict[str, str]
    upstream: subprocess.Popen[str]

    def query(
        self,
        client: str,
        name: str,
        qtype: str = "A",
        *,
        server: str | None = None,
        tcp: bool = False,
        raw: bytes | None = None,
        timeout: float = 3.0,
    ) -> DNSRecord | None:
        """Send a query from `client`'s namespace to its gateway; None on timeout."""
        packet = raw if raw is not None else DNSRecord.question(name, qtype).pack()
        code = (
            "import socket, struct, sys\n"
            f"data = bytes.fromhex({packet.hex()!r})\n"
            f"addr = ({(server or self.gateway(client))!r}, 53)\n"
            f"if {tcp}:\n"
            f"    s = socket.create_connection(addr, timeout={timeout})\n"
            "    s.sendall(struct.pack('!H', len(data)) + data)\n"
            "    n = struct.unpack('!H', s.recv(2))[0]; out = b''\n"
            "    while len(out) < n: out += s.recv(n - len(out))\n"
            "else:\n"
            f"    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout({timeout})\n"
            "    s.sendto(data, addr)\n"
            "    try: out = s.recv(65535)\n"
            "    except socket.timeout: out = b''\n"
            "print(out.hex())\n"
        )
        res = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.spaces[client]}", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout + 10,
        )
        hexed = res.stdout.strip()
        return DNSRecord.parse(bytes.fromhex(hexed)) if hexed else None

    def gateway(self, client: str) -> str:
        return {"blue": "10.150.0.1", "red": "10.151.0.1"}[NETWORK_OF[client]]


NETWORK_OF = {"web": "blue", "db": "blue", "other": "red"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A fabric (module scope) whose resolver forwards to a test upstream on the node's loopback."""
    state = Path(tmp_path_factory.mktemp("dns")) / "state"
    upstreams = {"QNF_DNS_UPSTREAMS": f'["127.0.0.1:{UPSTREAM_PORT}"]'}
    containers = Containers()
    with fabric_on_new_node(state, env=upstreams) as fabric:
        upstream = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{fabric.ns}", sys.executable, "-c", UPSTREAM],
            stdout=subprocess.PIPE,
            text=True,
        )
        gw = fabric.client()
        try:
            assert upstream.stdout is not None and upstream.stdout.readline().strip() == "ready"
            gw.call("qnf.v1.cmd.vnet.network.create", {"name": "blue", "subnet": "10.150.0.0/24"})
            gw.call("qnf.v1.cmd.vnet.network.create", {"name": "red", "subnet": "10.151.0.0/24"})
            spaces, ips = {}, {}
            for name, network in NETWORK_OF.items():
                spaces[name], ips[name] = containers.attach(gw, network, name)
            yield Env(fabric, gw, spaces, ips, upstream)
        finally:
            upstream.kill()
            upstream.wait()
            assert upstream.stdout is not None
            upstream.stdout.close()
            gw.close()
            containers.close()


def _wait_answer(env: Env, client: str, name: str, want: list[str], timeout: float = 10) -> DNSRecord:
    deadline = time.monotonic() + timeout
    while True:
        r = env.query(client, name)
        if r is not None and sorted(str(a.rdata) for a in r.rr) == want:
            return r
        assert time.monotonic() < deadline, r
        time.sleep(0.2)


def test_endpoint_names_resolve_case_insensitively(env: Env) -> None:
    r = _wait_answer(env, "web", "db.blue.qnf.local", [env.ips["db"]])
    assert r.header.aa and r.header.rcode == RCODE.NOERROR and r.rr[0].ttl <= 5
    mixed = env.query("web", "DB.Blue.QNF.local")
    assert mixed is not None and [str(a.rdata) for a in mixed.rr] == [env.ips["db"]]
    assert str(mixed.q.qname) == "DB.Blue.QNF.local."  # the question is echoed as asked


def test_ptr_and_nodata_and_nxdomain(env: Env) -> None:
    _wait_answer(env, "web", "db.blue.qnf.local", [env.ips["db"]])
    ptr = env.query("web", f"{'.'.join(reversed(env.ips['db'].split('.')))}.in-addr.arpa", "PTR")
    assert ptr is not None and [str(a.rdata) for a in ptr.rr] == ["db.blue.qnf.local."]
    nodata = env.query("web", "db.blue.qnf.local", "MX")
    assert nodata is not None and nodata.header.rcode == RCODE.NOERROR and not nodata.rr
    assert any(rr.rtype == QTYPE.SOA for rr in nodata.auth)
    missing = env.query("web", "nobody.blue.qnf.local")
    assert missing is not None and missing.header.rcode == RCODE.NXDOMAIN


def test_other_networks_names_are_invisible(env: Env) -> None:
    _wait_answer(env, "other", "other.red.qnf.local", [env.ips["other"]])
    r = env.query("web", "other.red.qnf.local")
    assert r is not None and r.header.rcode == RCODE.NXDOMAIN
    rev = env.query("web", f"{'.'.join(reversed(env.ips['other'].split('.')))}.in-addr.arpa", "PTR")
    assert rev is not None and rev.header.rcode == RCODE.NXDOMAIN and not rev.rr


def test_tcp_and_edns(env: Env) -> None:
    _wait_answer(env, "web", "db.blue.qnf.local", [env.ips["db"]])
    r = env.query("web", "db.blue.qnf.local", tcp=True)
    assert r is not None and [str(a.rdata) for a in r.rr] == [env.ips["db"]]
    q = DNSRecord.question("db.blue.qnf.local", "A")
    q.add_ar(EDNS0(udp_len=4096))
    e = env.query("web", "", raw=q.pack())
    assert e is not None and any(rr.rtype == QTYPE.OPT for rr in e.ar)


def test_forwarding_and_upstream_failure(env: Env) -> None:
    r = env.query("web", "example.test")
    assert r is not None and [str(a.rdata) for a in r.rr] == ["192.0.2.1"]
    assert env.query("web", "nothing.test") is not None
    env.upstream.kill()
    env.upstream.wait()
    time.sleep(1.1)
    cached = env.query("web", "example.test")  # cached for its TTL, which counts down
    assert cached is not None and [str(a.rdata) for a in cached.rr] == ["192.0.2.1"]
    assert cached.rr[0].ttl < 300
    started = time.monotonic()
    dead = env.query("web", "uncached.test", timeout=5)
    assert dead is not None and dead.header.rcode == RCODE.SERVFAIL
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x12",
        b"\x12\x34\x01\x00\x00\x01",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63 * 5,
        b"\x12\x34\x81\x80" + b"\x00" * 8,
    ],
    ids=["empty", "one-byte", "short-question", "compression-loop", "oversized-name", "a-response"],
)
def test_malformed_packets(env: Env, packet: bytes) -> None:
    r = env.query("web", "", raw=packet, timeout=1.0)
    assert r is None or r.header.rcode in (RCODE.FORMERR, RCODE.NOTIMP)
    alive = env.query("web", "db.blue.qnf.local")
    assert alive is not None and [str(a.rdata) for a in alive.rr] == [env.ips["db"]]


def test_removed_endpoint_stops_resolving(env: Env) -> None:
    containers = Containers()
    space = containers()
    try:
        ep = env.gw.call(
            "qnf.v1.node.n1.vnet.endpoint.add",
            {
                "request_id": space,
                "container_id": space,
                "ifname": "eth0",
                "netns": f"/run/netns/{space}",
                "network": "blue",
                "name": "temp",
            },
        )
        _wait_answer(env, "web", "temp.blue.qnf.local", [ep["addresses"][0].split("/")[0]])
        env.gw.call("qnf.v1.node.n1.vnet.endpoint.remove", {"container_id": space, "ifname": "eth0"})
        deadline = time.monotonic() + 6  # the records' TTL is 5 s
        while True:
            r = env.query("web", "temp.blue.qnf.local")
            if r is not None and r.header.rcode == RCODE.NXDOMAIN:
                break
            assert time.monotonic() < deadline, r
            time.sleep(0.2)
    finally:
        containers.close()


def test_service_names_and_srv(env: Env) -> None:
    svc = env.gw.call(
        "qnf.v1.cmd.dns.service.create",
        {
            "name": "app",
            "network": "blue",
            "endpointSelector": {},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        },
    )
    assert svc["name"] == "app"
    _wait_answer(env, "web", "app.blue.qnf.local", sorted([env.ips["web"], env.ips["db"]]))
    srv = env.query("web", "_http._tcp.app.blue.qnf.local", "SRV")
    assert srv is not None
    assert sorted((a.rdata.port, str(a.rdata.target)) for a in srv.rr) == [
        (8080, "db.blue.qnf.local."),
        (8080, "web.blue.qnf.local."),
    ]
    hidden = env.query("other", "app.blue.qnf.local")
    assert hidden is not None and hidden.header.rcode == RCODE.NXDOMAIN
    assert env.gw.call("qnf.v1.cmd.dns.service.delete", {"name": "app", "network": "blue"}) == {
        "existed": True
    }
    bad = env.gw.request("qnf.v1.cmd.dns.service.create", {"name": "x", "network": "nope"})
    assert bad["error"]["code"] == "invalid"


def _dns_metrics(env: Env) -> dict[str, float]:
    code = (
        "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9462/metrics').read().decode())"
    )
    text = env.fabric.exec(sys.executable, "-c", code).stdout
    out = {}
    for line in text.splitlines():
        if line.startswith(("qnf_dns_queries_total", "qnf_dns_wire_cache_hits")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_queries_are_counted_by_type_and_rcode_and_cache_hits_too(env: Env) -> None:
    """The exact-bytes fast path answers without the answerer: its answers must still count."""
    _wait_answer(env, "web", "db.blue.qnf.local", [env.ips["db"]])
    before = _dns_metrics(env)
    code = (
        "import socket\n"
        f"data = bytes.fromhex({DNSRecord.question('db.blue.qnf.local', 'A').pack().hex()!r})\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
        "for _ in range(50):\n"
        f"    s.sendto(data, ({env.gateway('web')!r}, 53)); s.recv(4096)\n"
    )
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{env.spaces['web']}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    after = _dns_metrics(env)
    key = 'qnf_dns_queries_total{qtype="A",rcode="NOERROR"}'
    assert after[key] - before.get(key, 0) == 50
    hits = "qnf_dns_wire_cache_hits"
    assert after[hits] - before[hits] >= 49  # the same bytes each time: all but maybe the first
