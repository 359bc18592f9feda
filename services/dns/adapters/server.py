"""The resolver's sockets: UDP and TCP port 53 on every network's gateway address.

UDP runs a plain blocking receive loop on a thread per address: a fabric answer is a dict
lookup and a sendto, and asyncio's datagram machinery would cost several times that per query.
Questions for the upstreams are handed to the event loop; their answers go back through the
same socket. Each listener binds with IP_FREEBIND, so it can start before vnet has put the
gateway address on the bridge. A token bucket per client address, applied whenever more than
one client is asking, stops one client's flood from starving the others.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from services.dns.adapters.wire import (
    EXACT_MAX,
    SERVFAIL,
    Answerer,
    Forward,
    NeedScope,
    error_response,
    qtype_of,
    stat_key,
)

log = logging.getLogger("qnf.dns.server")

IP_FREEBIND = 15
# Per client address: far above what one stub resolver sends, far below what a flood can, so one
# client cannot take a listener from the others (measured: one core answers ~45k qps here).
RATE_PER_CLIENT = 20000.0
BURST_PER_CLIENT = 40000.0
CONTENTION_S = 1.0


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    """Token bucket per client address (thread-confined to one listener), applied under contention.

    A client alone on a listener starves nobody, so it may use the whole listener; once a second
    client has asked within CONTENTION_S, every client is held to its bucket, so a flood cannot
    take the listener from the others. (The buckets keep filling meanwhile: a flooder meets its
    limit the moment someone else asks.)
    """

    rate: float = RATE_PER_CLIENT
    burst: float = BURST_PER_CLIENT
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    _last_client: str = ""
    _contended_until: float = 0.0

    def admit(self, client: str, now: float) -> bool:
        if client != self._last_client:
            if self._last_client:
                self._contended_until = now + CONTENTION_S
            self._last_client = client
        return now >= self._contended_until or self.allow(client, now)

    def allow(self, client: str, now: float) -> bool:
        b = self.buckets.get(client)
        if b is None:
            if len(self.buckets) > 100_000:
                self.buckets.clear()  # bounded memory under a spoofed-source flood
            b = self.buckets[client] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
        b.stamp = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True


Observe = Callable[[float], None]
LATENCY_SAMPLE: Final = 64  # the fast path times one answer in this many


class UdpListener:
    """One gateway address: a receive loop on its own thread.

    `counts` (qtype << 4 | rcode → answers) is written by this thread only, with plain ints:
    the metrics collector reads a copy, so counting costs no lock on the hot path. Latency goes
    to `observe` for every slow-path answer and one in LATENCY_SAMPLE exact-cache answers.
    """

    def __init__(
        self,
        address: str,
        network: str,
        answerer: Callable[[], Answerer],
        *,
        forward: Callable[[Forward, Callable[[bytes], None]], None],
        observe: Observe,
        cached: Callable[[Forward], tuple[bytes, float] | None] = lambda fwd: None,
        rescope: Callable[[str, Callable[[], None]], None] = lambda client, then: None,
    ) -> None:
        self.address = address
        self.network = network
        self.counts: dict[int, int] = {}
        self.exact_hits = 0  # answers sent from the exact-bytes tables (fabric and forwarded)
        self._answerer = answerer
        self._forward = forward
        self._observe = observe
        self._cached = cached  # a forwarded name's cached answer, served without the event loop
        # Forwarded answers by query bytes after the id, as `exact` for fabric names, while they
        # stay the same to the byte: (bytes after the id, counter key, monotonic time of expiry).
        self._forwarded: dict[bytes, tuple[bytes, int, float]] = {}
        self._rescope = rescope  # learn a client's reachable addresses, then call back (event loop)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        self._sock.bind((address, 53))
        self._stopped = False
        self._limiter = RateLimiter()
        self._thread = threading.Thread(target=self._loop, name=f"dns-udp-{address}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _loop(self) -> None:
        sock, network, counts = self._sock, self.network, self.counts
        admit, clock, forwarded = self._limiter.admit, time.monotonic, self._forwarded
        while not self._stopped:
            try:
                packet, client = sock.recvfrom(65535)
            except OSError:
                return
            if self._stopped or client is None:
                return  # shutdown() wakes recvfrom with an empty datagram and no peer
            started = clock()
            if not admit(client[0], started):
                continue
            answerer = self._answerer()
            scope = answerer.scope_of(network, client[0]) if answerer.scoped else ""
            hit = answerer.exact(network, scope).get(packet[2:])
            if hit is None:
                fwd = forwarded.get(packet[2:])
                if fwd is not None and fwd[2] > started:
                    hit = fwd[:2]
            if hit is not None:
                self._send(packet[:2] + hit[0], client)
                counts[hit[1]] = counts.get(hit[1], 0) + 1
                self.exact_hits += 1
                if self.exact_hits % LATENCY_SAMPLE == 0:
                    self._observe(clock() - started)
                continue
            self._reply(packet, client, started, retry=True)

    def _reply(self, packet: bytes, client: tuple[str, int], started: float, *, retry: bool) -> None:
        """Answer off the exact cache: the answerer, the forwarding cache or the upstreams."""
        try:
            out = self._answerer().answer(self.network, packet, udp=True, client=client[0])
        except Exception:  # a bug must not kill the listener; the client just times out
            log.exception("answering a query failed")
            return
        if isinstance(out, NeedScope):
            if retry:
                self._rescope(out.client, lambda: self._reply(packet, client, started, retry=False))
                return
            out = error_response(packet, SERVFAIL)  # the firewall could not say what it may see
        if isinstance(out, Forward):
            cached = self._cached(out)
            if cached is None:
                self._forward(out, self._replier(client))
                return
            out, until = cached
            if len(self._forwarded) >= EXACT_MAX:
                self._forwarded.clear()
            self._forwarded[bytes(packet[2:])] = (out[2:], stat_key(qtype_of(out), out), until)
        if out is not None:
            self._send(out, client)
            if len(out) >= 12:
                key = stat_key(qtype_of(out), out)
                self.counts[key] = self.counts.get(key, 0) + 1
        self._observe(time.monotonic() - started)

    def _replier(self, client: tuple[str, int]) -> Callable[[bytes], None]:
        return lambda data: self._send(data, client)

    def _send(self, data: bytes, client: tuple[str, int]) -> None:
        try:
            self._sock.sendto(data, client)
        except OSError as exc:
            log.debug("reply to %s failed: %s", client, exc)


class TcpListener:
    """One gateway address over TCP (RFC 7766): length-prefixed messages, several per connection."""

    def __init__(
        self,
        address: str,
        network: str,
        answerer: Callable[[], Answerer],
        *,
        forward: Callable[[Forward], Awaitable[bytes]],
        learn_scope: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.address = address
        self.network = network
        self._answerer = answerer
        self._forward = forward
        self._learn_scope = learn_scope
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind((self.address, 53))
        self._server = await asyncio.start_server(self._client, sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
                packet = await asyncio.wait_for(reader.readexactly(size), 10)
                client = str(writer.get_extra_info("peername")[0])
                out = self._answerer().answer(self.network, packet, udp=False, client=client)
                if isinstance(out, NeedScope) and self._learn_scope is not None:
                    await self._learn_scope(out.client)
                    out = self._answerer().answer(self.network, packet, udp=False, client=client)
                if isinstance(out, NeedScope):
                    out = error_response(packet, SERVFAIL)
                if isinstance(out, Forward):
                    out = await self._forward(out)
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
