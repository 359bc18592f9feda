"""The dns actor: services on the bus, and the resolver on every gateway address.

Handler table (see `endpoints()`), cluster commands (queue group "dns"):

    qnf.v1.cmd.dns.service.create|get|list|delete

The resolver follows networks, endpoints and services in KV: a watcher rebuilds the record
store and the wire cache on every change (a snapshot swapped in whole, so the listener threads
never see half an update) and opens or closes the UDP and TCP listeners as networks come and go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from ipaddress import ip_address
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from libs.common.bus import Endpoint as BusEndpoint
from libs.common.errors import Conflict, InvalidRequest, NotFound, QnfError
from libs.common.ids import cmd_subject
from libs.common.kv import Change, TypedKV
from libs.common.messages import (
    Empty,
    Endpoint,
    Network,
    Policy,
    Reach,
    Reachable,
    Removed,
    Service,
    ServiceList,
    ServiceRef,
    ServiceSpec,
)
from libs.common.service import Context
from services.dns.adapters.server import TcpListener, UdpListener
from services.dns.adapters.upstream import Forwarder
from services.dns.adapters.wire import Answerer, Forward, error_response
from services.dns.core.records import build

log = logging.getLogger("qnf.dns")

SCOPE_SETTLE_S = 1.0
_QTYPES = {1: "A", 28: "AAAA", 12: "PTR", 33: "SRV", 255: "ANY", 5: "CNAME", 15: "MX", 16: "TXT"}
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _parse_upstream(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if sep and host and "]" not in port and port.isdigit():
        return host.strip("[]"), int(port)
    return text.strip("[]"), 53


class DnsActor:
    """Owns the record snapshot, the listeners and the forwarder of this node."""

    def __init__(
        self,
        ctx: Context,
        *,
        networks: TypedKV[Network],
        endpoints: TypedKV[Endpoint],
        services: TypedKV[Service],
        policies: TypedKV[Policy],
    ) -> None:
        self._bus = ctx.bus
        self._policies_kv = policies
        self._scope_requests: dict[str, asyncio.Future[None]] = {}
        self._forget: asyncio.TimerHandle | None = None
        self._networks_kv = networks
        self._endpoints_kv = endpoints
        self._services_kv = services
        self.services: dict[str, Service] = {}
        self._domain = ctx.settings.dns_domain
        self.networks: dict[str, Network] = {}
        self.known: dict[str, Endpoint] = {}
        self._answerer = Answerer(build([], [], self._domain))
        self._forwarder = Forwarder([_parse_upstream(u) for u in ctx.settings.dns_upstreams])
        self._udp: dict[str, UdpListener] = {}
        self._tcp: dict[str, TcpListener] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        r = ctx.registry
        self._retired_counts: dict[int, int] = {}  # of listeners that have stopped
        r.register(_QueryCounter(self._query_counts))
        self._latency = Histogram(
            "qnf_dns_query_seconds",
            "Time to answer a query",
            buckets=(0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.1, 1.0),
            registry=r,
        )
        self._upstream_failures = Counter(
            "qnf_dns_upstream_failures_total", "Upstream queries that failed", registry=r
        )
        self._forwarded = Counter("qnf_dns_forwarded_total", "Queries forwarded upstream", registry=r)
        self._hits_before = 0  # answers served from earlier snapshots' wire caches
        hits = Gauge("qnf_dns_wire_cache_hits", "Fabric answers served from the wire cache", registry=r)
        hits.set_function(
            lambda: (
                self._hits_before + self._answerer.hits + sum(u.exact_hits for u in list(self._udp.values()))
            )
        )

    def endpoints(self) -> list[BusEndpoint[Any, Any]]:
        return [
            BusEndpoint(
                "service.create", ServiceSpec, Service, self.create_service, key=lambda r: "services"
            ),
            BusEndpoint("service.get", ServiceRef, Service, self.get_service, key=lambda r: "read"),
            BusEndpoint("service.list", Empty, ServiceList, self.list_services, key=lambda r: "read"),
            BusEndpoint("service.delete", ServiceRef, Removed, self.delete_service, key=lambda r: "services"),
        ]

    async def create_service(self, spec: ServiceSpec) -> Service:
        if spec.network not in self.networks:
            raise InvalidRequest(f"network: unknown network {spec.network!r}")
        key = f"{spec.network}.{spec.name}"
        existing = await self._services_kv.get(key)
        if existing is not None:
            if ServiceSpec.model_validate(existing.value.model_dump(exclude={"revision"})) == spec:
                return existing.value.model_copy(update={"revision": existing.revision})
            raise Conflict(f"service {spec.name} exists in {spec.network} with a different spec")
        service = Service(**spec.model_dump())
        revision = await self._services_kv.create(key, service)
        self._bus.emit("service.created", service)
        return service.model_copy(update={"revision": revision})

    async def get_service(self, ref: ServiceRef) -> Service:
        record = await self._services_kv.get(f"{ref.network}.{ref.name}")
        if record is None:
            raise NotFound(f"service {ref.name} does not exist in {ref.network}")
        return record.value.model_copy(update={"revision": record.revision})

    async def list_services(self, _: Empty) -> ServiceList:
        return ServiceList(
            services=[
                r.value.model_copy(update={"revision": r.revision}) for r in await self._services_kv.items()
            ]
        )

    async def delete_service(self, ref: ServiceRef) -> Removed:
        key = f"{ref.network}.{ref.name}"
        record = await self._services_kv.get(key)
        if record is None:
            return Removed(existed=False)
        await self._services_kv.delete(key, record.revision)
        self._bus.emit("service.deleted", record.value)
        return Removed(existed=True)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        synced = [asyncio.Event() for _ in range(4)]
        self._tasks = [
            asyncio.create_task(self._follow(self._networks_kv, self.networks, synced[0])),
            asyncio.create_task(self._follow(self._endpoints_kv, self.known, synced[1])),
            asyncio.create_task(self._follow(self._services_kv, self.services, synced[2])),
            # Policies only matter to policy-scoped networks: a change forgets what clients may
            # see there, and nothing else (the records do not depend on policies).
            asyncio.create_task(self._policies_kv.follow(self._policy_changed, synced[3])),
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in synced)), 30)
        await self._rebuild()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for udp in self._udp.values():
            udp.stop()
        for tcp in self._tcp.values():
            await tcp.stop()

    def _follow(
        self, kv: TypedKV[Any], into: dict[str, Any], synced: asyncio.Event
    ) -> Coroutine[Any, Any, None]:
        async def changed(change: Change[Any]) -> None:
            if change.value is None:
                into.pop(change.key, None)
            else:
                into[change.key] = change.value
            if synced.is_set():
                await self._rebuild()

        return kv.follow(changed, synced)

    async def _rebuild(self) -> None:
        self._hits_before += self._answerer.hits
        scoped = frozenset(n.name for n in self.networks.values() if n.dns_scope == "policy")
        self._answerer = Answerer(
            build(self.networks.values(), self.known.values(), self._domain, self.services.values()), scoped
        )
        if scoped:
            self._forget_scopes_again_soon()
        wanted: dict[str, str] = {}
        for net in self.networks.values():
            wanted[str(net.gateway)] = net.name
            if net.gateway6 is not None:
                wanted[str(net.gateway6)] = net.name
        for address in set(self._udp) - set(wanted):
            gone = self._udp.pop(address)
            gone.stop()
            for key, n in dict(gone.counts).items():
                self._retired_counts[key] = self._retired_counts.get(key, 0) + n
            self._hits_before += gone.exact_hits
            await self._tcp.pop(address).stop()
        for address, network in wanted.items():
            if address in self._udp:
                continue
            try:
                udp = UdpListener(
                    address,
                    network,
                    lambda: self._answerer,
                    forward=self._forward_udp,
                    observe=self._observe,
                    cached=lambda fwd: self._forwarder.cached_until(fwd.question),
                    rescope=self._rescope,
                )
                tcp = TcpListener(
                    address,
                    network,
                    lambda: self._answerer,
                    forward=self._forward_tcp,
                    learn_scope=self.learn_scope,
                )
                await tcp.start()
            except OSError as exc:
                log.error("cannot listen on %s:53: %s", address, exc)
                continue
            udp.start()
            self._udp[address], self._tcp[address] = udp, tcp
            log.info("answering on %s:53 for network %s", address, network)

    async def _policy_changed(self, _: Change[Policy]) -> None:
        if self._answerer.scoped:
            self._forget_scopes()
            self._forget_scopes_again_soon()

    def _forget_scopes_again_soon(self) -> None:
        """The firewall learns a change from its own watch, maybe later than we did: what a
        client may reach is asked again a moment after, not only now."""
        if self._loop is None:
            return
        if self._forget is not None:
            self._forget.cancel()
        self._forget = self._loop.call_later(SCOPE_SETTLE_S, self._forget_scopes)

    def _forget_scopes(self) -> None:
        self._forget = None
        self._hits_before += self._answerer.hits
        self._answerer = Answerer(self._answerer.store, self._answerer.scoped)

    async def learn_scope(self, client: str) -> None:
        """Ask the firewall which addresses `client` may reach; its answers follow from then on.

        Concurrent queries of one client share one request; a failure leaves the scope unknown,
        so the query gets SERVFAIL (never an unscoped answer)."""
        pending = self._scope_requests.get(client)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_scope(client))
            self._scope_requests[client] = pending
            pending.add_done_callback(lambda _: self._scope_requests.pop(client, None))
        await asyncio.shield(pending)

    async def _fetch_scope(self, client: str) -> None:
        answerer = self._answerer
        try:
            reply = await self._bus.request(
                cmd_subject("firewall", "policy.reachable"),
                Reach(source=ip_address(client)),
                Reachable,
                timeout=2,
            )
        except (QnfError, ValueError) as exc:
            log.warning("cannot scope DNS answers for %s: %s", client, exc)
            return
        if answerer is self._answerer:  # else a newer snapshot came meanwhile: ask again on demand
            answerer.scopes[client] = frozenset(str(a) for a in reply.destinations) | {client}

    def _rescope(self, client: str, then: Callable[[], None]) -> None:
        """From a listener thread: learn `client`'s scope on the event loop, then call `then` there."""
        assert self._loop is not None

        async def run() -> None:
            try:
                await self.learn_scope(client)
            finally:
                then()

        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(run()))  # type: ignore[union-attr]

    def _observe(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def _query_counts(self) -> dict[int, int]:
        totals = dict(self._retired_counts)
        for listener in list(self._udp.values()):
            for key, n in dict(listener.counts).items():  # a copy: the listener thread keeps counting
                totals[key] = totals.get(key, 0) + n
        return totals

    def _forward_udp(self, fwd: Forward, reply: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._forward_then(fwd, reply)))  # type: ignore[union-attr]

    async def _forward_then(self, fwd: Forward, reply: Any) -> None:
        reply(await self._forward_tcp(fwd))

    async def _forward_tcp(self, fwd: Forward) -> bytes:
        self._forwarded.inc()
        failures = self._forwarder.failures
        if not self._forwarder.upstreams:
            return error_response(fwd.packet, 5) or b""  # REFUSED: nobody to ask
        out = await self._forwarder.answer(fwd.question, fwd.packet)
        self._upstream_failures.inc(self._forwarder.failures - failures)
        return out


class _QueryCounter(Collector):
    """`qnf_dns_queries_total{qtype,rcode}` from the listeners' lock-free counts, read at scrape."""

    def __init__(self, counts: Callable[[], dict[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("qnf_dns_queries", "Queries answered", labels=["qtype", "rcode"])
        merged: dict[tuple[str, str], int] = {}
        for key, n in self._counts().items():
            labels = (_QTYPES.get(key >> 4, "other"), _RCODES.get(key & 0x0F, "other"))
            merged[labels] = merged.get(labels, 0) + n
        for labels, n in sorted(merged.items()):
            family.add_metric(list(labels), n)
        yield family
