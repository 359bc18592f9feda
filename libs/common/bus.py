"""The signed, mutually authenticated bus: connect, request, serve a handler table, publish events.

Everything a service says goes through `Bus`; every request a service answers goes through
`serve`. Both sign what they send and verify what they receive (`envelope`), so handlers only
ever see validated request models from an authenticated, authorized sender.

Serving model (an actor with per-key mailboxes): each endpoint names a `key` function over its
request; requests with the same key run one at a time in arrival order, requests with different
keys may overlap, and at most `max_inflight` run at once (further messages wait in the client's
pending buffer: backpressure, never an unbounded task per message). The default key serialises
the whole service, the safe choice for a service that has not thought about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request
from nats.micro.service import Service, ServiceConfig
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from libs.common.authz import may_publish
from libs.common.config import Settings
from libs.common.envelope import Rejected, Signer, TrustAnchors, Verifier
from libs.common.errors import QnfError, Unavailable, from_code
from libs.common.ids import SpiffeId, cmd_subject, event_subject, inbox_prefix, node_subject
from libs.common.kv import TypedKV
from libs.common.messages import ErrorReply, SecurityEvent
from libs.common.metrics import BusMetrics
from libs.common.pki import PkiDirectory

log = logging.getLogger("qnf.bus")

Req = TypeVar("Req", bound=BaseModel)
Rep = TypeVar("Rep", bound=BaseModel)
M = TypeVar("M", bound=BaseModel)

# The verified sender of the request being handled, for handlers that authorize per caller.
current_sender: contextvars.ContextVar[SpiffeId] = contextvars.ContextVar("current_sender")

_REJECT_CODES: dict[str, Literal["unauthorized", "forbidden", "invalid"]] = {
    "forbidden": "forbidden",
    "invalid": "invalid",
}


def tls_context(pki: PkiDirectory, identity: SpiffeId) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting `identity`'s certificate and trusting only the fabric CA."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    reload_tls(ctx, pki, identity)
    return ctx


def reload_tls(ctx: ssl.SSLContext, pki: PkiDirectory, identity: SpiffeId) -> None:
    """Load the identity's current certificate into `ctx`; later (re)connects present it."""
    d = pki.identity_dir(identity)
    ctx.load_cert_chain(d / "tls.crt", d / "tls.key")


def trust_anchors(pki: PkiDirectory, trust_domain: str) -> TrustAnchors:
    from cryptography import x509

    return TrustAnchors(
        trust_domain,
        x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes()),
        x509.load_pem_x509_certificate(pki.ca_mldsa_cert_path.read_bytes()),
    )


@dataclass(frozen=True)
class Endpoint(Generic[Req, Rep]):
    """One entry of a service's handler table."""

    verb: str  # e.g. "network.create"; the subject's last tokens
    request: type[Req]
    reply: type[Rep]
    handler: Callable[[Req], Awaitable[Rep]]
    scope: Literal["cluster", "node"] = "cluster"
    key: Callable[[Req], str] | None = None  # mailbox key; None serialises the whole service

    def subject(self, service: str, node: str) -> str:
        if self.scope == "node":
            return node_subject(node, service, self.verb)
        return cmd_subject(service, self.verb)


class KeyedLocks:
    """One asyncio.Lock per key, created on demand and dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class KeyedSerializer:
    """Runs jobs one at a time per key, in arrival order, with at most `max_inflight` overall."""

    def __init__(self, max_inflight: int = 64) -> None:
        self._slots = asyncio.Semaphore(max_inflight)
        self._locks = KeyedLocks()
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: str, job: Callable[[], Awaitable[None]]) -> None:
        """Queue `job` behind earlier jobs of the same key; waits only while all slots are busy."""
        await self._slots.acquire()
        task = asyncio.create_task(self._run(key, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: str, job: Callable[[], Awaitable[None]]) -> None:
        try:
            async with self._locks.hold(key):
                await job()
        finally:
            self._slots.release()

    async def join(self) -> None:
        """Wait until every submitted job has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class _EventLimiter:
    """Token bucket for security events, so a flood of forgeries cannot flood the stream."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


@dataclass
class Bus:
    """A connected, signing, verifying bus client acting as one identity for one service."""

    nc: Client
    service: str
    node: str
    signer: Signer
    verifier: Verifier
    metrics: BusMetrics
    request_timeout: float = 5.0
    _limiter: _EventLimiter = field(default_factory=lambda: _EventLimiter(rate=20, burst=50))
    _outbox: asyncio.Queue[tuple[str, bytes, str]] | None = None
    _publisher: asyncio.Task[None] | None = None

    @property
    def identity(self) -> SpiffeId:
        return self.signer.identity

    @classmethod
    async def connect(
        cls,
        *,
        url: str,
        tls: ssl.SSLContext,
        service: str,
        node: str,
        signer: Signer,
        verifier: Verifier,
        metrics: BusMetrics,
        request_timeout: float = 5.0,
        reconnect: bool = True,
    ) -> Bus:
        """Connect with mutual TLS (TLS first); raise Unavailable if the server cannot be reached."""

        async def on_error(exc: Exception) -> None:
            log.warning("bus error: %s", exc)

        try:
            nc = await nats.connect(
                url,
                tls=tls,
                tls_handshake_first=True,
                name=f"qnf-{service}@{node}",
                inbox_prefix=inbox_prefix(signer.identity),
                allow_reconnect=reconnect,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=3,
                error_cb=on_error,
            )
        except (TimeoutError, OSError, nats.errors.Error, ssl.SSLError) as exc:
            raise Unavailable(f"cannot connect to the bus at {url}: {exc}") from exc
        return cls(nc, service, node, signer, verifier, metrics, request_timeout)

    @classmethod
    async def connect_as(
        cls, settings: Settings, identity: SpiffeId, *, service: str, reconnect: bool = True
    ) -> Bus:
        """Connect as `identity` with its files under the settings' state directory (tools, tests)."""
        pki = PkiDirectory(settings.pki_dir)
        return await cls.connect(
            url=settings.url,
            tls=tls_context(pki, identity),
            service=service,
            node=settings.node,
            signer=Signer(pki.load_identity(identity), settings.signature_suite, clock=time.time),
            verifier=Verifier(
                trust_anchors(pki, settings.trust_domain),
                settings.signature_suite,
                authorize=may_publish,
                clock=time.time,
                max_skew_ms=int(settings.max_clock_skew_s * 1000),
            ),
            metrics=BusMetrics(CollectorRegistry()),
            request_timeout=settings.request_timeout_s,
            reconnect=reconnect,
        )

    async def kv(self, bucket: str, model: type[M]) -> TypedKV[M]:
        """A typed, signed view of one of the fabric's KV buckets."""
        js = self.nc.jetstream(timeout=self.request_timeout)
        kv = await js.key_value(bucket)
        return TypedKV(kv, bucket, model, js=js, signer=self.signer, verifier=self.verifier)

    async def close(self) -> None:
        """Publish queued events, drain (deliver what is in flight) when connected; else just close."""
        if self.nc.is_closed:
            return
        if self.nc.is_connected:
            await self.flush_events()
        if self._publisher is not None:
            self._publisher.cancel()
        if self.nc.is_connected:
            try:
                await self.nc.drain()
                return
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("drain failed: %s", exc)
        await self.nc.close()

    def sign(self, subject: str, body: bytes) -> dict[str, str]:
        return self.signer.headers(subject, body)

    async def request(
        self,
        subject: str,
        payload: BaseModel,
        reply_type: type[Rep],
        *,
        timeout: float | None = None,
        expect: Callable[[SpiffeId], bool] | None = None,
    ) -> Rep:
        """Signed request/reply; returns the verified, validated reply or raises its QnfError."""
        body = payload.model_dump_json().encode()
        try:
            msg = await self.nc.request(
                subject, body, timeout=timeout or self.request_timeout, headers=self.sign(subject, body)
            )
        except nats.errors.NoRespondersError as exc:
            raise Unavailable(f"no service answers {subject}") from exc
        except nats.errors.TimeoutError as exc:
            raise Unavailable(f"no reply on {subject} in time") from exc
        try:
            responder = self.verifier.verify(msg.subject, msg.headers, msg.data, replies=True)
        except Rejected as exc:
            self.metrics.rejected.labels(self.service, exc.reason).inc()
            raise QnfError(f"reply on {subject} failed verification ({exc.reason})") from exc
        if expect is not None and not expect(responder):
            raise QnfError(f"reply on {subject} came from unexpected {responder}")
        headers = msg.headers or {}
        if ERROR_CODE_HEADER in headers:
            raise from_code(headers[ERROR_CODE_HEADER], headers.get(ERROR_HEADER, ""))
        return reply_type.model_validate_json(msg.data)

    def emit(self, what: str, payload: BaseModel, *, kind: str = "event") -> None:
        """Queue an event for QNF_EVENTS; a background task publishes it in order, awaiting acks.

        Handlers never wait for the stream: replying to a caller must not cost an fsync of the
        event store. `close()` flushes what is queued.
        """
        if self._outbox is None:
            self._outbox = asyncio.Queue(maxsize=10_000)
            self._publisher = asyncio.create_task(self._publish_loop())
        item = (event_subject(self.service, what), payload.model_dump_json().encode(), kind)
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.events_dropped.labels(self.service).inc()

    async def _publish_loop(self) -> None:
        assert self._outbox is not None
        js = self.nc.jetstream()
        while True:
            subject, body, kind = await self._outbox.get()
            for attempt in range(3):
                try:
                    await js.publish(
                        subject, body, headers=self.sign(subject, body), timeout=self.request_timeout
                    )
                    self.metrics.events.labels(self.service, kind).inc()
                    break
                except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                    if attempt == 2 or self.nc.is_closed:
                        log.warning("dropping event %s: %s", subject, exc)
                        self.metrics.events_dropped.labels(self.service).inc()
                    else:
                        await asyncio.sleep(0.2 * (attempt + 1))
            self._outbox.task_done()

    async def flush_events(self, timeout: float = 5.0) -> None:
        """Wait until every queued event is published (or given up)."""
        if self._outbox is not None:
            try:
                await asyncio.wait_for(self._outbox.join(), timeout)
            except TimeoutError:
                log.warning("%d events not published before the deadline", self._outbox.qsize())

    def security_event(self, reason: str, subject: str, claimed: str | None) -> None:
        """Count a rejection, and publish it as a security event unless the rate limit says no."""
        self.metrics.rejected.labels(self.service, reason).inc()
        if not self._limiter.allow():
            return
        event = SecurityEvent(
            service=self.service,
            node=self.node,
            reason=reason,
            subject=subject[:256],
            claimed_sender=(claimed or None) and claimed[:256],
            ts_ms=int(time.time() * 1000),
        )
        self.emit("security.rejected", event, kind="security")


async def live_instances(bus: Bus, service: str, *, wait: float = 0.3) -> set[str]:
    """Instance ids of every running replica of `service` (from `$SRV.PING` replies)."""
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    found: set[str] = set()
    try:
        await bus.nc.publish(f"$SRV.PING.qnf-{service}", b"", reply=inbox)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                break
            try:
                found.add(json.loads(msg.data)["metadata"]["instance"])
            except (ValueError, KeyError, TypeError):
                continue
    finally:
        await sub.unsubscribe()
    return found


async def _respond(bus: Bus, request: Request, body: bytes, extra: dict[str, str] | None = None) -> None:
    reply_to = request._msg.reply  # micro's Request hides the reply subject we must sign over
    if not reply_to:
        return
    headers = bus.sign(reply_to, body)
    if extra:
        headers.update(extra)
    await request.respond(body, headers=headers)


async def respond_error(bus: Bus, request: Request, error: ErrorReply) -> None:
    """Send a signed error reply in the nats micro format (code and message headers + body)."""
    await _respond(
        bus,
        request,
        error.model_dump_json().encode(),
        {ERROR_CODE_HEADER: error.code, ERROR_HEADER: error.message},
    )


def validation_summary(exc: ValidationError) -> str:
    # Field paths and messages help the caller; input values are left out on purpose.
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:10]]
    return "invalid request: " + "; ".join(parts)


def _make_handler(bus: Bus, ep: Endpoint[Any, Any], serializer: KeyedSerializer) -> Callable[[Request], Any]:
    name = ep.verb

    async def handle(request: Request) -> None:
        started = time.perf_counter()
        msg: Msg = request._msg
        try:
            sender = bus.verifier.verify(msg.subject, msg.headers, msg.data)
        except Rejected as exc:
            log.warning("rejected %s: %s", msg.subject, exc.detail, extra={"reason": exc.reason})
            code = _REJECT_CODES.get(exc.reason, "unauthorized")
            await respond_error(bus, request, ErrorReply(code=code, message=f"request rejected: {code}"))
            bus.security_event(exc.reason, msg.subject, (msg.headers or {}).get("Qnf-Sender"))
            return
        try:
            req = ep.request.model_validate_json(msg.data)
        except ValidationError as exc:
            bus.metrics.rejected.labels(bus.service, "invalid").inc()
            await respond_error(bus, request, ErrorReply(code="invalid", message=validation_summary(exc)))
            return

        async def job() -> None:
            token = current_sender.set(sender)
            code = "ok"
            try:
                rep = await ep.handler(req)
                await _respond(bus, request, rep.model_dump_json().encode())
            except QnfError as exc:
                code = exc.code
                await respond_error(
                    bus,
                    request,
                    ErrorReply(code=exc.code, message=exc.message, retryable=exc.retryable),
                )
            except Exception:
                code = "internal"
                correlation = uuid.uuid4().hex[:12]
                log.exception("handler %s failed", name, extra={"correlation_id": correlation})
                await respond_error(
                    bus,
                    request,
                    ErrorReply(code="internal", message="internal error", correlation_id=correlation),
                )
            finally:
                current_sender.reset(token)
                bus.metrics.handled.labels(bus.service, name, code).inc()
                bus.metrics.handle_seconds.labels(bus.service, name).observe(time.perf_counter() - started)

        key = ep.key(req) if ep.key is not None else "*"
        await serializer.submit(f"{name}:{key}" if ep.key is not None else key, job)

    return handle


@dataclass
class Served:
    """A running service: stop() unsubscribes, finishes in-flight work and returns."""

    micro: Service
    serializer: KeyedSerializer

    async def stop(self) -> None:
        await self.micro.stop()
        await self.serializer.join()


async def serve(
    bus: Bus,
    endpoints: list[Endpoint[Any, Any]],
    *,
    version: str,
    description: str = "",
    max_inflight: int = 64,
    instance: str = "",
) -> Served:
    """Register the handler table with nats micro (so `nats micro ls|info|stats` see it) and serve."""
    service = await add_service(
        bus.nc,
        ServiceConfig(
            name=f"qnf-{bus.service}",
            version=version,
            description=description or f"qnf {bus.service}",
            metadata={"node": bus.node, "identity": bus.identity.uri, "instance": instance},
            queue_group=bus.service,
        ),
    )
    serializer = KeyedSerializer(max_inflight)
    for ep in endpoints:
        await service.add_endpoint(
            name=ep.verb.replace(".", "-"),
            subject=ep.subject(bus.service, bus.node),
            handler=_make_handler(bus, ep, serializer),
            metadata={"request": ep.request.__name__, "reply": ep.reply.__name__, "scope": ep.scope},
        )
    await bus.nc.flush()
    return Served(service, serializer)
