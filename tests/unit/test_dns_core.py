"""Unit tests of the resolver's pure core and wire layer, with a fuzz test of the packet path.

No sockets: the record store is built from values, packets are bytes.
"""

from __future__ import annotations

import struct
from ipaddress import ip_address, ip_interface

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.messages import Endpoint, Network
from services.dns.adapters.wire import Answerer, Forward, parse_fast
from services.dns.core.records import NXDOMAIN, build, normalise, resolve

BLUE = Network(
    name="blue",
    subnet="10.1.0.0/24",
    gateway="10.1.0.1",
    subnet6="fd00:1::/64",
    gateway6="fd00:1::1",
    bridge="qnf-b",
    created_ms=0,
)
RED = Network(name="red", subnet="10.2.0.0/24", gateway="10.2.0.1", bridge="qnf-r", created_ms=0)


def ep(name: str, net: Network, *addrs: str) -> Endpoint:
    return Endpoint(
        endpoint_id=name,
        request_id="r",
        container_id=name,
        ifname="eth0",
        netns="/x",
        node="n1",
        network=net.name,
        name=name,
        labels={},
        identity=f"spiffe://t/{name}",
        mac="02:00:00:00:00:01",
        mtu=1500,
        host_ifname="q0000000001",
        addresses=[ip_interface(a) for a in addrs],
        gateways=[ip_address(str(net.gateway))],
        created_ms=0,
    )


STORE = build(
    [BLUE, RED],
    [
        ep("web", BLUE, "10.1.0.2/24", "fd00:1::2/64"),
        ep("db", BLUE, "10.1.0.3/24"),
        ep("api", RED, "10.2.0.2/24"),
    ],
    "QNF.local",
)


def test_normalise() -> None:
    assert normalise("Web.Blue.QNF.local") == "web.blue.qnf.local."
    assert normalise("x.") == "x."


def test_resolve_scopes_and_types() -> None:
    assert resolve(STORE, "blue", "web.blue.qnf.local", 1).records == (
        ("web.blue.qnf.local.", 1, "10.1.0.2"),
    )
    assert resolve(STORE, "blue", "WEB.blue.qnf.local.", 28).records == (
        ("web.blue.qnf.local.", 28, "fd00:1::2"),
    )
    assert {r[1] for r in resolve(STORE, "blue", "web.blue.qnf.local", 255).records} == {1, 28}
    assert resolve(STORE, "blue", "api.red.qnf.local", 1).rcode == NXDOMAIN  # another network's name
    assert resolve(STORE, "red", "api.red.qnf.local", 1).records[0][2] == "10.2.0.2"
    assert resolve(STORE, "blue", "nobody.blue.qnf.local", 1).rcode == NXDOMAIN
    assert resolve(STORE, "blue", "example.org", 1).forward
    assert resolve(STORE, "blue", "3.0.1.10.in-addr.arpa", 12).records == (
        ("3.0.1.10.in-addr.arpa.", 12, "db.blue.qnf.local."),
    )
    assert resolve(STORE, "blue", "2.0.2.10.in-addr.arpa", 12).rcode == NXDOMAIN  # red's address
    assert resolve(STORE, "blue", "9.9.9.9.in-addr.arpa", 12).forward  # not a fabric address
    assert resolve(STORE, "green", "web.blue.qnf.local", 1).rcode == 5  # no such network: REFUSED


def test_wire_answers_echo_id_case_and_rd_from_the_cache() -> None:
    answerer = Answerer(STORE)
    for qid, name, rd in ((1, "web.blue.qnf.local", 1), (2, "WEB.Blue.qnf.LOCAL", 0)):
        q = DNSRecord.question(name, "A")
        q.header.id, q.header.rd = qid, rd
        out = answerer.answer("blue", q.pack(), udp=True)
        assert isinstance(out, bytes)
        r = DNSRecord.parse(out)
        assert (r.header.id, r.header.rd, str(r.q.qname)) == (qid, rd, name + ".")
        assert [str(a.rdata) for a in r.rr] == ["10.1.0.2"] and r.header.aa
    assert answerer.hits == 1


def test_forward_and_truncation_and_edns() -> None:
    answerer = Answerer(STORE)
    assert isinstance(answerer.answer("blue", DNSRecord.question("example.org").pack(), udp=True), Forward)
    q = DNSRecord.question("web.blue.qnf.local", "A")
    q.add_ar(EDNS0(udp_len=1232))
    r = DNSRecord.parse(answerer.answer("blue", q.pack(), udp=True))  # type: ignore[arg-type]
    assert any(rr.rtype == QTYPE.OPT for rr in r.ar)
    nx = DNSRecord.parse(answerer.answer("blue", DNSRecord.question("x.blue.qnf.local").pack(), udp=True))  # type: ignore[arg-type]
    assert nx.header.rcode == RCODE.NXDOMAIN and nx.auth[0].rtype == QTYPE.SOA


def test_parse_fast_refuses_the_unusual() -> None:
    good = DNSRecord.question("a.b").pack()
    assert parse_fast(good) is not None
    assert parse_fast(good[:-1]) is None
    pointer = good[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    assert parse_fast(pointer) is None
    response = struct.pack("!H", 1) + b"\x81\x80" + good[4:]
    assert parse_fast(response) is None


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_raise(data: bytes) -> None:
    out = Answerer(STORE).answer("blue", data, udp=True)
    assert out is None or isinstance(out, (bytes, Forward))
    if isinstance(out, bytes):
        assert len(out) >= 12


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=12, max_value=40), st.binary(min_size=1, max_size=8), st.integers(0, 255))
def test_fuzz_mutated_queries_never_raise(offset: int, junk: bytes, cut: int) -> None:
    base = bytearray(DNSRecord.question("web.blue.qnf.local", "AAAA").pack())
    base[offset : offset + len(junk)] = junk
    for packet in (bytes(base), bytes(base[:cut])):
        out = Answerer(STORE).answer("blue", packet, udp=True)
        assert out is None or isinstance(out, (bytes, Forward))


def test_services_select_endpoints_and_publish_srv() -> None:
    from libs.common.messages import Service

    svc = Service.model_validate(
        {"name": "app", "network": "blue", "endpointSelector": {}, "ports": [{"name": "pg", "port": 5432}]}
    )
    store = build(
        [BLUE, RED],
        [ep("web", BLUE, "10.1.0.2/24"), ep("db", BLUE, "10.1.0.3/24"), ep("api", RED, "10.2.0.2/24")],
        "qnf.local",
        [svc],
    )
    assert [r[2] for r in resolve(store, "blue", "app.blue.qnf.local", 1).records] == ["10.1.0.2", "10.1.0.3"]
    assert [r[2] for r in resolve(store, "blue", "_pg._tcp.app.blue.qnf.local", 33).records] == [
        "0 10 5432 db.blue.qnf.local.",
        "0 10 5432 web.blue.qnf.local.",
    ]
    out = Answerer(store).answer(
        "blue", DNSRecord.question("_pg._tcp.app.blue.qnf.local", "SRV").pack(), udp=True
    )
    assert isinstance(out, bytes) and sorted(a.rdata.port for a in DNSRecord.parse(out).rr) == [5432, 5432]
    assert resolve(store, "red", "app.blue.qnf.local", 1).rcode == NXDOMAIN


def test_a_flooding_client_does_not_starve_others() -> None:
    from services.dns.adapters.server import RateLimiter

    limiter = RateLimiter(rate=100, burst=200)
    flood = [limiter.allow("10.1.0.9", 0.0) for _ in range(1000)]
    assert flood.count(True) == 200  # the burst, then nothing until tokens come back
    assert limiter.allow("10.1.0.2", 0.0)  # another client is untouched
    assert (
        limiter.allow("10.1.0.9", 0.5)
        and [limiter.allow("10.1.0.9", 0.5) for _ in range(60)].count(True) == 49
    )


def test_the_limit_holds_only_while_someone_else_asks() -> None:
    from services.dns.adapters.server import RateLimiter

    limiter = RateLimiter(rate=100, burst=200)
    assert all(limiter.admit("10.1.0.9", 0.0) for _ in range(1000))  # alone: nobody to starve
    assert limiter.admit("10.1.0.2", 0.1)  # someone else asks: from now on, buckets hold
    flood = [limiter.admit("10.1.0.9", 0.1) for _ in range(1000)]
    assert flood.count(True) == 200
    assert limiter.admit("10.1.0.2", 0.2)
    # The flooder's next query meets the other's recent one: still held for a second, then alone.
    assert [limiter.admit("10.1.0.9", 1.3) for _ in range(1000)].count(True) == 120  # 1.2 s of refill
    assert all(limiter.admit("10.1.0.9", 2.4) for _ in range(1000))
