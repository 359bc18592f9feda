"""Forwarding to the configured upstream resolvers, with a TTL-honouring cache.

Positive answers are cached for their smallest TTL, negative ones (NXDOMAIN, NODATA) for the
SOA minimum (RFC 2308), both capped. An upstream that does not answer within `timeout` is
skipped; when none answers the client gets SERVFAIL at once, never a hang. A truncated UDP
answer is fetched again over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections import OrderedDict

from dnslib import QTYPE, DNSRecord

from services.dns.adapters.wire import SERVFAIL, Question, error_response

log = logging.getLogger("qnf.dns.upstream")

MAX_TTL = 3600
MAX_ENTRIES = 10_000


class _Once(asyncio.DatagramProtocol):
    def __init__(self, want_id: int) -> None:
        self.want_id = want_id
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) >= 2 and struct.unpack_from("!H", data)[0] == self.want_id and not self.reply.done():
            self.reply.set_result(data)


class Forwarder:
    """Asks upstreams in order; caches answers by (name, type, class)."""

    def __init__(self, upstreams: list[tuple[str, int]], *, timeout: float = 1.0) -> None:
        self.upstreams = upstreams
        self.timeout = timeout
        self._cache: OrderedDict[tuple[str, int, int], tuple[float, float, bytes]] = OrderedDict()
        self.failures = 0

    def cached(self, q: Question) -> bytes | None:
        """The cached answer, if fresh (safe from the listener threads: one dict read)."""
        hit = self.cached_until(q)
        return None if hit is None else hit[0]

    def cached_until(self, q: Question) -> tuple[bytes, float] | None:
        """The cached answer and the monotonic time until which it stays the same to the byte
        (its TTLs age in whole seconds), so a listener may send it again until then."""
        hit = self._cache.get((q.name, q.qtype, q.qclass))
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            age = int(now - hit[1])
            return _patch(_aged(hit[2], age), q), min(hit[0], hit[1] + age + 1)
        return None

    async def answer(self, q: Question, packet: bytes) -> bytes:
        key = (q.name, q.qtype, q.qclass)
        hit = self.cached(q)
        if hit is not None:
            return hit
        for host, port in self.upstreams:
            try:
                data = await self._ask_udp(host, port, packet)
                if struct.unpack_from("!H", data, 2)[0] & 0x0200:  # TC: the full answer over TCP
                    data = await self._ask_tcp(host, port, packet)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self.failures += 1
                log.debug("upstream %s:%d failed: %s", host, port, exc)
                continue
            self._store(key, data)
            return _patch(data, q)
        return error_response(packet, SERVFAIL) or b""

    async def _ask_udp(self, host: str, port: int, packet: bytes) -> bytes:
        qid = struct.unpack_from("!H", os.urandom(2))[0]  # our own id: the client's is not ours to reuse
        query = struct.pack("!H", qid) + packet[2:]
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(lambda: _Once(qid), remote_addr=(host, port))
        try:
            transport.sendto(query)
            return await asyncio.wait_for(proto.reply, self.timeout)
        finally:
            transport.close()

    async def _ask_tcp(self, host: str, port: int, packet: bytes) -> bytes:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), self.timeout))[0]
            return await asyncio.wait_for(reader.readexactly(size), self.timeout)
        finally:
            writer.close()

    def _store(self, key: tuple[str, int, int], data: bytes) -> None:
        try:
            record = DNSRecord.parse(data)
        except Exception:  # an upstream answer we cannot read is passed on, not cached
            return
        rcode = record.header.rcode
        if rcode not in (0, 3):
            return  # SERVFAIL and friends are not cached
        if record.rr:
            ttl = min(rr.ttl for rr in record.rr)
        else:
            soa = [rr for rr in record.auth if rr.rtype == QTYPE.SOA]
            ttl = min(soa[0].ttl, soa[0].rdata.times[4]) if soa else 0
        if ttl <= 0:
            return
        now = time.monotonic()
        self._cache[key] = (now + min(ttl, MAX_TTL), now, data)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)


def _aged(data: bytes, seconds: int) -> bytes:
    """The cached answer with every TTL lowered by the time it has spent in the cache."""
    if seconds <= 0:
        return data
    try:
        record = DNSRecord.parse(data)
        for rr in (*record.rr, *record.auth, *record.ar):
            if rr.rtype != QTYPE.OPT:
                rr.ttl = max(0, rr.ttl - seconds)
        return bytes(record.pack())
    except Exception:  # an answer we cannot rewrite is served as it came
        return data


def _patch(data: bytes, q: Question) -> bytes:
    """The upstream's answer with the client's id and question bytes (letter case) put back."""
    qlen = len(q.raw_question)
    if data[12 : 12 + qlen].lower() != q.raw_question.lower():
        return struct.pack("!H", q.qid) + data[2:]
    return struct.pack("!H", q.qid) + data[2:12] + q.raw_question + data[12 + qlen :]
