"""The gateway's transport-neutral layer: authenticate, authorize, call the bus, relay events.

REST (`rest.py`) and gRPC both sit on `Gateway`: they turn their wire format into an operation
name and a request model, and turn what comes back (a reply model, or a `QnfError` whose code
`core.statuses` maps) into theirs. Nothing here knows about HTTP.

    authenticate_token / authenticate_certificate  → Principal (or Unauthorized, counted + event)
    authorize(principal, role)                     → or Forbidden
    call(principal, op, request, node, precondition)  every bus call bounded by the request timeout
                                                      (plus a waiting operation's own bounded wait)
    events(after_seq)                              verified events of QNF_EVENTS, as they come
    create_token / list_tokens / revoke_token      the tokens the gateway owns in `qnf-tokens`
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import nats.errors
import nats.js.errors
from cryptography import x509
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel

from libs.common.authz import may_publish
from libs.common.bus import Bus
from libs.common.envelope import Rejected
from libs.common.errors import Conflict, Forbidden, NotFound, QnfError, Unauthorized, Unavailable
from libs.common.ids import EVENTS_STREAM, EVENTS_SUBJECTS, SpiffeId
from libs.common.kv import Change, TypedKV
from libs.common.messages import (
    FabricEvent,
    GatewayRole,
    NetworkRef,
    PolicyRef,
    Removed,
    ServiceRef,
    TokenCreate,
    TokenInfo,
    TokenIssued,
    TokenList,
    TokenRecord,
    TokenRef,
)
from libs.common.metrics import LATENCY_BUCKETS
from libs.common.pki import spiffe_uri
from services.gateway.core import tokens
from services.gateway.core.operations import Operation, operation, role_allows, wait_of

log = logging.getLogger("qnf.gateway")

TOKENS_BUCKET: Final = "qnf-tokens"

# Operators' client certificates: spiffe://<td>/user/<name> acts in the role of that name.
CERT_ROLES: Final[dict[str, GatewayRole]] = {"admin": "admin", "operator": "operator", "viewer": "viewer"}

AuthFailure = Literal[
    "no_credentials", "malformed", "unknown", "mismatch", "expired", "revoked", "bad_certificate"
]

# Operations without a revision field of their own: the gateway reads the current revision and
# compares it with the precondition before it writes (not atomic with the write, but a stale
# caller is refused; the service's own CAS still prevents lost updates).
_PRECHECK: Final[dict[str, tuple[str, Callable[[Any], BaseModel]]]] = {
    "network.delete": ("network.get", lambda r: NetworkRef(name=r.name)),
    "policy.update": ("policy.get", lambda r: PolicyRef(name=r.name, network=r.network)),
    "policy.delete": ("policy.get", lambda r: PolicyRef(name=r.name, network=r.network)),
    "service.delete": ("service.get", lambda r: ServiceRef(name=r.name, network=r.network)),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token (`token:<id>`) or a client certificate (its SPIFFE URI)."""

    id: str
    role: GatewayRole
    kind: Literal["token", "certificate"]


class AuthError(Unauthorized):
    """Authentication failed; `reason` is for metrics and events, never for the caller."""

    def __init__(self, reason: AuthFailure) -> None:
        super().__init__("authentication required: a valid bearer token or client certificate")
        self.reason = reason


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.auth_failures = Counter(
            "qnf_gateway_auth_failures_total", "Refused logins, by reason", ["reason"], registry=registry
        )
        self.requests = Counter(
            "qnf_gateway_requests_total",
            "API requests, by operation and result code",
            ["operation", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "qnf_gateway_request_seconds",
            "API request latency (gateway and bus), by operation",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rate_limited = Counter(
            "qnf_gateway_rate_limited_total", "Requests refused by the rate limit", registry=registry
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


class Gateway:
    """Everything the transports share; one per gateway process."""

    def __init__(
        self,
        bus: Bus,
        tokens_kv: TypedKV[TokenRecord],
        *,
        node: str,
        trust_domain: str,
        registry: CollectorRegistry,
        timeout: float,
    ) -> None:
        self.bus = bus
        self.node = node
        self.timeout = timeout
        self._td = trust_domain
        self._kv = tokens_kv
        self._tokens: dict[str, TokenRecord] = {}
        self._synced = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self.metrics = GatewayMetrics(registry)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Follow `qnf-tokens` so that authentication is a dict lookup, not a bus round trip."""
        self._watcher = asyncio.create_task(self._kv.follow(self._changed, self._synced))
        await asyncio.wait_for(self._synced.wait(), 30)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def _changed(self, change: Change[TokenRecord]) -> None:
        if change.value is None:
            self._tokens.pop(change.key, None)
        else:
            self._tokens[change.key] = change.value.model_copy(update={"revision": change.revision})

    async def bootstrap_admin_token(self, path: Path) -> bool:
        """First start: if no live admin token exists, make one and write it 0600 to `path`."""
        now = _now_ms()
        if any(tokens.is_live_admin(r.value, now_ms=now) for r in await self._kv.items()):
            return False
        text, record = tokens.generate(
            name="bootstrap", role="admin", ttl_s=366 * 86400, created_by=self.bus.identity.uri, now_ms=now
        )
        await self._kv.create(record.id, record)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
        log.info("created the bootstrap admin token", extra={"token_id": record.id, "path": str(path)})
        return True

    # ------------------------------------------------------------------ authentication

    def refuse(self, reason: AuthFailure, where: str, claimed: str | None = None) -> AuthError:
        """Count a failed login, publish it as a security event, and return the error to raise."""
        self.metrics.auth_failures.labels(reason).inc()
        self.bus.security_event(f"login.{reason}", where, claimed)
        return AuthError(reason)

    async def authenticate_token(self, text: str, where: str) -> Principal:
        presented = tokens.parse(text)
        if presented is None:
            raise self.refuse("malformed", where)
        record = self._tokens.get(presented.id)
        if record is None:  # made by another replica a moment ago, not yet seen by the watch
            try:
                got = await asyncio.wait_for(self._kv.get(presented.id), self.timeout)
            except (TimeoutError, QnfError) as exc:
                raise Unavailable("the token store did not answer") from exc
            record = got.value if got is not None else None
        refusal = tokens.check(record, presented, now_ms=_now_ms())
        if refusal is not None or record is None:
            raise self.refuse(refusal or "unknown", where, f"token:{presented.id}")
        return Principal(f"token:{record.id}", record.role, "token")

    def authenticate_certificate(self, der: bytes, where: str) -> Principal:
        """A client certificate the TLS handshake already verified against the fabric CA."""
        try:
            identity = SpiffeId.parse(spiffe_uri(x509.load_der_x509_certificate(der)))
        except ValueError as exc:
            raise self.refuse("bad_certificate", where) from exc
        role = CERT_ROLES.get(identity.name) if identity.kind == "user" else None
        if identity.trust_domain != self._td or role is None:
            raise self.refuse("bad_certificate", where, identity.uri)
        return Principal(identity.uri, role, "certificate")

    @staticmethod
    def authorize(principal: Principal, need: GatewayRole, what: str) -> None:
        if not role_allows(principal.role, need):
            raise Forbidden(f"{what} needs the {need} role; this caller has {principal.role}")

    # ------------------------------------------------------------------ operations

    async def call(
        self,
        principal: Principal,
        name: str,
        request: BaseModel,
        *,
        node: str | None = None,
        precondition: int | None = None,
    ) -> BaseModel:
        """Run one operation for `principal`; raises the QnfError the service (or we) reported."""
        op = operation(name)
        self.authorize(principal, op.role, name)
        started = time.perf_counter()
        code = "ok"
        try:
            return await self._dispatch(principal, op, request, node or self.node, precondition)
        except QnfError as exc:
            code = exc.code
            raise
        finally:
            self.metrics.requests.labels(name, code).inc()
            self.metrics.seconds.labels(name).observe(time.perf_counter() - started)

    async def _dispatch(
        self, principal: Principal, op: Operation, request: BaseModel, node: str, precondition: int | None
    ) -> BaseModel:
        if op.scope == "gateway":
            return await self._local(principal, op, request, precondition)
        if precondition is not None:
            if "revision" in type(request).model_fields:
                request = request.model_copy(update={"revision": precondition})
            elif op.name in _PRECHECK:
                get_name, ref = _PRECHECK[op.name]
                current = await self._bus_call(operation(get_name), ref(request), node)
                if getattr(current, "revision", None) != precondition:
                    raise Conflict(
                        f"{op.name}: the resource is at revision {getattr(current, 'revision', None)}"
                    )
        return await self._bus_call(op, request, node)

    async def _bus_call(self, op: Operation, request: BaseModel, node: str) -> BaseModel:
        # Bus.request bounds the wait itself; wait_for also bounds a stalled connection. An
        # operation that waits on purpose (policy.wait) gets its own, bounded, wait on top.
        timeout = self.timeout + wait_of(op, request)
        try:
            return await asyncio.wait_for(
                self.bus.request(op.subject(node), request, op.reply, timeout=timeout), timeout + 1
            )
        except TimeoutError as exc:
            raise Unavailable(f"{op.service} did not answer {op.name} in time") from exc
        except Unavailable as exc:
            # Nobody listens on another node's subject: most likely a node that does not exist.
            # This node's own agents are known to exist, so silence there stays "unavailable".
            if (
                op.scope == "node"
                and node != self.node
                and isinstance(exc.__cause__, nats.errors.NoRespondersError)
            ):
                raise NotFound(f"node {node}: no {op.service} agent answers there (unknown or down)") from exc
            raise

    async def _local(
        self, principal: Principal, op: Operation, request: BaseModel, precondition: int | None
    ) -> BaseModel:
        if op.name == "token.create":
            assert isinstance(request, TokenCreate)
            return await self.create_token(principal, request)
        if op.name == "token.list":
            return await self.list_tokens()
        if op.name == "token.revoke":
            assert isinstance(request, TokenRef)
            return await self.revoke_token(request, precondition)
        raise NotFound(f"no operation {op.name}")

    async def create_token(self, principal: Principal, req: TokenCreate) -> TokenIssued:
        text, record = tokens.generate(
            name=req.name, role=req.role, ttl_s=req.ttl_s, created_by=principal.id, now_ms=_now_ms()
        )
        revision = await self._kv.create(record.id, record)
        self._tokens[record.id] = record.model_copy(update={"revision": revision})
        self.bus.emit("token.created", tokens.info(record, revision))
        return TokenIssued(**tokens.info(record, revision).model_dump(), token=text)

    async def list_tokens(self) -> TokenList:
        return TokenList(tokens=[tokens.info(r.value, r.revision) for r in await self._kv.items()])

    async def get_token(self, ref: TokenRef) -> TokenInfo:
        record = await self._kv.get(ref.id)
        if record is None:
            raise NotFound(f"token {ref.id} does not exist")
        return tokens.info(record.value, record.revision)

    async def revoke_token(self, ref: TokenRef, precondition: int | None = None) -> Removed:
        record = await self._kv.get(ref.id)
        if record is None:
            return Removed(existed=False)
        if precondition is not None and precondition != record.revision:
            raise Conflict(f"token {ref.id} is at revision {record.revision}, not {precondition}")
        revoked = tokens.revoke(record.value, now_ms=_now_ms())
        revision = record.revision
        if revoked is not record.value:
            revision = await self._kv.update(ref.id, revoked, record.revision)
        # Refuse it here at once; other replicas follow through their watch.
        self._tokens[ref.id] = revoked.model_copy(update={"revision": revision})
        self.bus.emit("token.revoked", tokens.info(revoked, revision))
        return Removed(existed=True)

    # ------------------------------------------------------------------ events

    async def open_events(self, *, after_seq: int | None = None) -> EventFeed:
        """Subscribe to QNF_EVENTS now (so nothing published after this returns is missed):
        new events, or every event after `after_seq` (resume)."""
        if after_seq is None:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        else:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1
            )
        js = self.bus.nc.jetstream(timeout=self.timeout)
        try:
            sub = await js.subscribe(
                EVENTS_SUBJECTS, stream=EVENTS_STREAM, ordered_consumer=True, config=config
            )
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise Unavailable(f"cannot read the event stream: {exc}") from exc
        return EventFeed(self.bus, sub)


class EventFeed:
    """Verified events of one subscription; `close()` ends it."""

    def __init__(self, bus: Bus, sub: Any) -> None:
        self._bus = bus
        self._sub = sub

    async def next(self, timeout: float) -> FabricEvent | None:
        """The next verified event, or None when none arrived within `timeout` seconds.

        Events that fail verification (forged, or from a role that may not send that subject)
        are dropped and counted.
        """
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await self._sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                return None
            try:
                sender = self._bus.verifier.verify_record(msg.subject, msg.headers or {}, msg.data)
                if not may_publish(sender, msg.subject):
                    raise Rejected("forbidden", f"{sender} may not send {msg.subject}")
                return FabricEvent(
                    seq=msg.metadata.sequence.stream,
                    subject=msg.subject,
                    sender=sender.uri,
                    data=_json_object(msg.data),
                )
            except (Rejected, ValueError) as exc:
                self._bus.metrics.rejected.labels(self._bus.service, "event").inc()
                log.warning("dropping unverifiable event on %s: %s", msg.subject, exc)
        return None

    async def close(self) -> None:
        try:
            await self._sub.unsubscribe()
        except (nats.errors.Error, nats.js.errors.Error):
            pass


def _json_object(data: bytes) -> dict[str, Any]:
    import json

    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("event body is not a JSON object")
    return doc


async def open_gateway(
    bus: Bus, *, node: str, trust_domain: str, registry: CollectorRegistry, timeout: float
) -> Gateway:
    """A Gateway over the real token bucket."""
    return Gateway(
        bus,
        await bus.kv(TOKENS_BUCKET, TokenRecord),
        node=node,
        trust_domain=trust_domain,
        registry=registry,
        timeout=timeout,
    )
