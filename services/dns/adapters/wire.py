"""DNS packets: the fast path for fabric names, and dnslib for everything else.

Fast path: a query with one question, no compression and at most an OPT record (nearly every
stub resolver's query) is parsed by hand, and its answer is a prebuilt response looked up by
(network, lower-cased name, type, class, EDNS). Only the 2-byte id, the RD bit and the question
bytes (to echo the asker's letter case, RFC 4343) are patched in, so a fabric answer costs a
dict lookup and a bytes join, not a parse and an encode. The cache is replaced whole whenever
records change.

Anything unusual goes through dnslib: a packet it cannot parse gets FORMERR when its header is
readable and is dropped otherwise; a bad opcode gets NOTIMP. Never an exception to the caller.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from dnslib import AAAA as AAAA_RDATA
from dnslib import EDNS0, PTR, QTYPE, RR, SOA, SRV, DNSHeader, DNSQuestion, DNSRecord
from dnslib import A as A_RDATA

from services.dns.core.records import AAAA, NOERROR, NXDOMAIN, SRV_TYPE, TTL, A, Answer, RecordStore, resolve

EDNS_SIZE: Final = 1232  # the DNS flag day 2020 default
MAX_UDP_NO_EDNS: Final = 512
FORMERR: Final = 1
SERVFAIL: Final = 2
NOTIMP: Final = 4


@dataclass(frozen=True)
class Question:
    """A parsed query's question and what the response must echo."""

    qid: int
    rd: bool
    name: str  # lower case, trailing dot
    qtype: int
    qclass: int
    edns: int | None  # advertised UDP size, None without EDNS
    raw_question: bytes  # the question section as sent


@dataclass(frozen=True)
class Forward:
    """Not the fabric's name: ask the upstreams (the original packet, and how to answer)."""

    question: Question
    packet: bytes


def parse_fast(packet: bytes) -> Question | None:
    """The common query shape, or None (the caller then takes the slow path)."""
    if len(packet) < 17:
        return None
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", packet)
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:  # QR=0 and opcode QUERY only
        return None
    pos = 12
    labels = []
    while True:
        length = packet[pos]
        if length == 0:
            pos += 1
            break
        if length > 63 or pos + 1 + length > len(packet):
            return None
        label = packet[pos + 1 : pos + 1 + length]
        if b"." in label:
            return None  # a dot inside a label: leave such names to the slow path
        labels.append(label)
        pos += 1 + length
        if pos >= len(packet) or pos - 12 > 255:
            return None
    if pos + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack_from("!HH", packet, pos)
    end = pos + 4
    edns = None
    if ar:
        # Exactly one OPT record: root name, type 41, class = UDP size.
        if len(packet) < end + 11 or packet[end] != 0 or packet[end + 1 : end + 3] != b"\x00\x29":
            return None
        edns = struct.unpack_from("!H", packet, end + 3)[0]
    try:
        name = b".".join(labels).decode("ascii").lower() + "."
    except UnicodeDecodeError:
        return None
    return Question(qid, bool(flags & 0x0100), name, qtype, qclass, edns, packet[12:end])


def _rdata(rtype: int, value: str) -> object:
    if rtype == A:
        return A_RDATA(value)
    if rtype == AAAA:
        return AAAA_RDATA(value)
    if rtype == SRV_TYPE:
        priority, weight, port, target = value.split()
        return SRV(int(priority), int(weight), int(port), target)
    return PTR(value)


def build_response(q: Question, answer: Answer, store: RecordStore, *, ra: bool = True) -> bytes:
    """A full response for a fabric answer (used to fill the cache and on the slow path)."""
    header = DNSHeader(id=q.qid, qr=1, aa=1, rd=int(q.rd), ra=int(ra), rcode=answer.rcode)
    reply = DNSRecord(header, q=DNSQuestion(q.name, q.qtype, q.qclass))
    for name, rtype, value in answer.records:
        reply.add_answer(RR(name, rtype, rdata=_rdata(rtype, value), ttl=TTL))
    if answer.rcode == NXDOMAIN or (answer.rcode == NOERROR and not answer.records):
        # RFC 2308: negative answers carry the zone's SOA, whose minimum bounds negative caching.
        soa = SOA(f"ns.{store.domain}", f"hostmaster.{store.domain}", (1, 60, 30, 3600, TTL))
        reply.add_auth(RR(store.domain, QTYPE.SOA, rdata=soa, ttl=TTL))
    if q.edns is not None:
        reply.add_ar(EDNS0(udp_len=EDNS_SIZE))
    return bytes(reply.pack())


def error_response(packet: bytes, rcode: int) -> bytes | None:
    """A header-only error response echoing the query id, or None if there is no header."""
    if len(packet) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", packet)
    if flags & 0x8000:
        return None  # a response sent to us: never answer it (no reflection loops)
    out_flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode  # QR, opcode, RD kept, RA
    return struct.pack("!HHHHHH", qid, out_flags, 0, 0, 0, 0)


def truncate(response: bytes, q: Question) -> bytes:
    """Header with TC set and the question only: the client retries over TCP."""
    qid, flags = struct.unpack_from("!HH", response)
    return struct.pack("!HHHHHH", qid, flags | 0x0200, 1, 0, 0, 0) + q.raw_question


EXACT_MAX: Final = 65536  # entries per table; a flood of distinct queries cannot grow it further

Exact = dict[bytes, tuple[bytes, int]]


@dataclass(frozen=True)
class NeedScope:
    """A policy-scoped network's client whose reachable addresses are not known yet: ask, retry."""

    client: str


Outcome = bytes | Forward | NeedScope | None


class Answerer:
    """Answers queries for one record store snapshot, with the wire cache on the fast path.

    Two levels: `exact(network, scope)` maps a UDP query's bytes after its id to the response's
    bytes after the id (plus the response's qtype/rcode key for the counters), so a repeated
    query costs one dict lookup before the listener replies; below it, the template cache keyed
    by the lower-cased question serves every letter case and id. Both die with the snapshot.

    In a policy-scoped network (`scoped`) answers depend on the asker: `scopes` maps a client
    address to the addresses it may reach (filled by the actor, read by the listeners), and the
    caches are keyed by the client too.
    """

    def __init__(self, store: RecordStore, scoped: frozenset[str] = frozenset()) -> None:
        self.store = store
        self.scoped = scoped
        self.scopes: dict[str, frozenset[str]] = {}
        self._cache: dict[tuple[str, str, str, int, int, bool], bytes] = {}
        self._exact: dict[tuple[str, str], Exact] = {}
        self.hits = 0

    def scope_of(self, network: str, client: str) -> str:
        """The cache scope of a query: the client in a policy-scoped network, else nobody."""
        return client if network in self.scoped else ""

    def exact(self, network: str, scope: str = "") -> Exact:
        table = self._exact.get((network, scope))
        if table is None:
            table = self._exact[(network, scope)] = {}
        return table

    def answer(self, network: str, packet: bytes, *, udp: bool, client: str = "") -> Outcome:
        scope = self.scope_of(network, client)
        q = parse_fast(packet)
        if q is None:
            return self._slow(network, packet, udp=udp, scope=scope)
        out = self._answer(network, q, packet, udp=udp, scope=scope)
        if udp and isinstance(out, bytes):
            table = self.exact(network, scope)
            if len(table) < EXACT_MAX:
                table[bytes(packet[2:])] = (out[2:], stat_key(q.qtype, out))
        return out

    def _answer(self, network: str, q: Question, packet: bytes, *, udp: bool, scope: str) -> Outcome:
        key = (network, scope, q.name, q.qtype, q.qclass, q.edns is not None)
        template = self._cache.get(key)
        if template is None:
            if q.qclass not in (1, 255):
                return error_response(packet, NOTIMP)
            visible = None
            if scope:
                visible = self.scopes.get(scope)
                if visible is None:
                    return NeedScope(scope)
            answer = resolve(self.store, network, q.name, q.qtype, visible)
            if answer.forward:
                return Forward(q, packet)
            try:
                template = build_response(q, answer, self.store)
            except Exception:  # a name dnslib cannot encode (empty or odd labels): the query was bad
                return error_response(packet, FORMERR)
            self._cache[key] = template
        else:
            self.hits += 1
        flags = struct.unpack_from("!H", template, 2)[0] & ~0x0100 | (0x0100 if q.rd else 0)
        qlen = len(q.raw_question)
        response = struct.pack("!HH", q.qid, flags) + template[4:12] + q.raw_question + template[12 + qlen :]
        limit = max(q.edns or 0, MAX_UDP_NO_EDNS)
        if udp and len(response) > limit:
            return truncate(response, q)
        return response

    def _slow(self, network: str, packet: bytes, *, udp: bool, scope: str) -> Outcome:
        try:
            record = DNSRecord.parse(packet)
        except Exception:  # dnslib raises many kinds on garbage; all mean "not a DNS message"
            return error_response(packet, FORMERR)
        if record.header.qr:
            return None
        if record.header.opcode != 0:
            return error_response(packet, NOTIMP)
        if len(record.questions) != 1:
            return error_response(packet, FORMERR)
        question = record.questions[0]
        name = str(question.qname).lower()
        if len(name) > 254:
            return error_response(packet, FORMERR)
        edns = next((rr.rclass for rr in record.ar if rr.rtype == QTYPE.OPT), None)
        q = Question(
            record.header.id,
            bool(record.header.rd),
            name if name.endswith(".") else name + ".",
            question.qtype,
            question.qclass,
            edns,
            _pack_question(question),
        )
        return self._answer(network, q, packet, udp=udp, scope=scope)


def stat_key(qtype: int, response: bytes) -> int:
    """qtype and rcode in one int, the counters' key: qtype << 4 | rcode."""
    return qtype << 4 | (response[3] & 0x0F)


def qtype_of(response: bytes) -> int:
    """The question type of a response (0 when it carries no question)."""
    if response[4:6] == b"\x00\x00":
        return 0
    pos = 12
    while pos < len(response) and response[pos] != 0:
        if response[pos] & 0xC0:
            pos += 1
            break
        pos += 1 + response[pos]
    pos += 1
    return int.from_bytes(response[pos : pos + 2], "big") if pos + 2 <= len(response) else 0


def _pack_question(question: DNSQuestion) -> bytes:
    # Uncompressed question bytes: a fresh record whose only content is this question.
    record = DNSRecord(DNSHeader(), q=DNSQuestion(question.qname, question.qtype, question.qclass))
    return bytes(record.pack())[12:]
