"""The resolver's sockets: UDP and TCP port 53 on every network's gateway address.

UDP runs a plain blocking receive loop on a thread per address: a fabric answer is a dict
lookup and a sendto, and asyncio's datagram machinery would cost several times that per query.
Questions for the upstreams are handed to the event loop; their answers go back through the
same socket. Each listener binds with IP_FREEBIND, so it can start before vnet has put the
gateway address on the bridge. A token bucket per client address stops one client's flood
from starving the others.
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

from services.dns.adapters.wire import Answerer, Forward

log = logging.getLogger("qnf.dns.server")

IP_FREEBIND = 15
# Per client address: far above what one stub resolver sends, far below what a flood can, so one
# client cannot take a listener from the others (measured: one core answers ~45k qps here).
RATE_PER_CLIENT = 20000.0
BURST_PER_CLIENT = 40000.0


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    """Token bucket per client address (thread-confined to one listener)."""

    rate: float = RATE_PER_CLIENT
    burst: float = BURST_PER_CLIENT
    buckets: dict[str, _Bucket] = field(default_factory=dict)

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


Observe = Callable[[bytes | None, float], None]


class UdpListener:
    """One gateway address: a receive loop on its own thread."""

    def __init__(
        self,
        address: str,
        network: str,
        answerer: Callable[[], Answerer],
        *,
        forward: Callable[[Forward, Callable[[bytes], None]], None],
        observe: Observe,
        cached: Callable[[Forward], bytes | None] = lambda fwd: None,
    ) -> None:
        self.address = address
        self.network = network
        self._answerer = answerer
        self._forward = forward
        self._observe = observe
        self._cached = cached  # a forwarded name's cached answer, served without the event loop
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
        sock = self._sock
        while not self._stopped:
            try:
                packet, client = sock.recvfrom(65535)
            except OSError:
                return
            if self._stopped or client is None:
                return  # shutdown() wakes recvfrom with an empty datagram and no peer
            started = time.perf_counter()
            if not self._limiter.allow(client[0], started):
                continue
            try:
                out = self._answerer().answer(self.network, packet, udp=True)
            except Exception:  # a bug must not kill the listener; the client just times out
                log.exception("answering a query failed")
                continue
            if isinstance(out, Forward):
                cached = self._cached(out)
                if cached is not None:
                    self._send(cached, client)
                    self._observe(cached, time.perf_counter() - started)
                else:
                    self._forward(out, self._replier(client))
                continue
            if out is not None:
                self._send(out, client)
            self._observe(out, time.perf_counter() - started)

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
    ) -> None:
        self.address = address
        self.network = network
        self._answerer = answerer
        self._forward = forward
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
                out = self._answerer().answer(self.network, packet, udp=False)
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
