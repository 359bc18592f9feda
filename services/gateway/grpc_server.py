"""The gRPC API (grpc.aio, package qnf.v1) over the transport-neutral `Gateway`.

Every method of qnf.v1.Fabric is served by one generic handler built from the service descriptor
and `grpc_mapping.METHODS`, so none can skip a step: authenticate (metadata
`authorization: Bearer <token>`), the per-identity rate limit, the operation's role (checked
before the request is even parsed, and again by `Gateway.call`), then the bus call. Errors carry
the gRPC status `core.statuses` maps from the fabric's error code; a stale revision is
FAILED_PRECONDITION; UNAVAILABLE (the service behind did not answer within the request timeout)
carries a `retry-after` trailer. The standard health service and server reflection run alongside.

TLS: the gateway's server certificate (the REST one, ECDSA P-256), reloaded when the supervisor
renews it. Client certificates are not asked for: grpcio can only require one or not ask at all
(no "optional"), and its BoringSSL refuses the Ed25519 signatures of the fabric's identity
certificates; operators use tokens here, or client certificates over REST.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf.message import Message as ProtoMessage
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from libs.common.errors import InvalidRequest, QnfError
from libs.common.messages import FabricEvent
from services.gateway import grpc_mapping
from services.gateway.api import AuthError, Gateway, Principal
from services.gateway.core import statuses
from services.gateway.core.operations import EVENTS_ROLE
from services.gateway.core.ratelimit import RateLimiter, retry_after_header
from services.gateway.proto.qnf.v1 import fabric_pb2

log = logging.getLogger("qnf.gateway.grpc")

EVENT_POLL_S: Final = 15.0
GRACE_S: Final = 3.0
SUBSCRIBED: Final = ("qnf-subscribed", "1")  # WatchEvents' initial metadata: nothing after it is missed


class GrpcApi:
    """The qnf.v1.Fabric handlers."""

    def __init__(self, gw: Gateway, *, rate_per_s: float, rate_burst: int) -> None:
        self.gw = gw
        self._limiter = RateLimiter(rate_per_s, rate_burst, clock=time.monotonic)
        # Failed logins from one address: a burst of 20, then one a second (slows down guessing).
        self._failures = RateLimiter(1.0, 20, clock=time.monotonic)

    def handler(self) -> grpc.GenericRpcHandler:
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for rpc, method in grpc_mapping.METHODS.items():
            request_cls, reply_cls = grpc_mapping.message_classes(rpc)
            handlers[rpc] = grpc.unary_unary_rpc_method_handler(
                self._unary(method, reply_cls),
                request_deserializer=request_cls.FromString,
                response_serializer=reply_cls.SerializeToString,
            )
        handlers[grpc_mapping.WATCH_EVENTS] = grpc.unary_stream_rpc_method_handler(
            self._watch,
            request_deserializer=fabric_pb2.WatchEventsRequest.FromString,
            response_serializer=fabric_pb2.FabricEvent.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(grpc_mapping.SERVICE, handlers)

    # ------------------------------------------------------------------ calls

    def _unary(
        self, method: grpc_mapping.Method, reply_cls: type[ProtoMessage]
    ) -> Callable[[ProtoMessage, grpc.aio.ServicerContext[Any, Any]], Awaitable[ProtoMessage]]:
        op = method.operation

        async def handle(message: ProtoMessage, context: grpc.aio.ServicerContext[Any, Any]) -> ProtoMessage:
            who = await self._authenticate(context, method.rpc)
            call: grpc_mapping.Call | None = None
            try:
                self.gw.authorize(who, op.role, op.name)
                call = grpc_mapping.to_call(method, message)
                reply = await self.gw.call(
                    who, op.name, call.request, node=call.node, precondition=call.precondition
                )
                return grpc_mapping.to_reply(method, call, reply, reply_cls)
            except QnfError as exc:
                await _abort(context, exc, precondition=call is not None and call.precondition is not None)
                raise AssertionError("unreachable") from None  # context.abort raises

        return handle

    async def _watch(
        self, request: fabric_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[fabric_pb2.FabricEvent]:
        who = await self._authenticate(context, grpc_mapping.WATCH_EVENTS)
        try:
            self.gw.authorize(who, EVENTS_ROLE, "watching events")
            after = request.after_seq if request.HasField("after_seq") else None
            if after is not None and after < 0:
                raise InvalidRequest("after_seq: must be 0 or more")
            feed = await self.gw.open_events(after_seq=after)
        except QnfError as exc:
            await _abort(context, exc)
            return
        try:
            await context.send_initial_metadata((SUBSCRIBED,))
            while True:
                event: FabricEvent | None = await feed.next(EVENT_POLL_S)
                if event is not None:
                    yield grpc_mapping.event_message(event)
        finally:
            await feed.close()

    # ------------------------------------------------------------------ authentication

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any], rpc: str) -> Principal:
        where = f"grpc:{grpc_mapping.SERVICE}/{rpc}"
        header = next((str(v) for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        try:
            if header is None:
                raise self.gw.refuse("no_credentials", where)
            scheme, _, credential = header.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise self.gw.refuse("malformed", where)
            who = await self.gw.authenticate_token(credential.strip(), where)
        except AuthError as exc:
            wait = self._failures.take(f"addr:{_peer_host(context.peer())}")
            if wait is not None:
                self.gw.metrics.rate_limited.inc()
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "too many failed logins; slow down",
                    (("retry-after", retry_after_header(wait)),),
                )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        except QnfError as exc:  # the token store did not answer
            await _abort(context, exc)
        wait = self._limiter.take(who.id)
        if wait is not None:
            self.gw.metrics.rate_limited.inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "request rate limit exceeded",
                (("retry-after", retry_after_header(wait)),),
            )
        return who


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: QnfError, *, precondition: bool = False
) -> None:
    code = grpc.StatusCode[statuses.grpc_status(exc.code, precondition=precondition)]
    if code is grpc.StatusCode.INTERNAL:
        correlation = uuid.uuid4().hex[:12]
        log.error("internal error: %s", exc.message, extra={"correlation_id": correlation})
        await context.abort(code, f"internal error ({correlation})")
    retry = statuses.retry_after(exc.code)
    trailers = (("retry-after", str(retry)),) if retry is not None else ()
    await context.abort(code, exc.message, trailers)


def _peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' → '127.0.0.1' (the port changes per connection)."""
    return peer.rsplit(":", 1)[0]


class GrpcServer:
    """grpc.aio server of the API, health and reflection; TLS unless `insecure`."""

    def __init__(self, api: GrpcApi, *, host: str, port: int, cert: Path | None, key: Path | None) -> None:
        self._api = api
        self._host, self._wanted = host, port
        self._cert, self._key = cert, key
        self._seen = 0.0
        self.port = 0
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(handlers=[self._api.handler()])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (grpc_mapping.SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"[{self._host}]:{self._wanted}" if ":" in self._host else f"{self._host}:{self._wanted}"
        if self._cert is None or self._key is None:
            self.port = server.add_insecure_port(address)
        else:
            credentials = grpc.dynamic_ssl_server_credentials(
                # The stub says the fetcher must return a config; grpc documents None as "unchanged".
                self._certificate(),
                self._renewed,  # type: ignore[arg-type]
                require_client_authentication=False,
            )
            self.port = server.add_secure_port(address, credentials)
        await server.start()
        self._server = server
        for name in ("", grpc_mapping.SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(GRACE_S)

    def _certificate(self) -> grpc.ServerCertificateConfiguration:
        assert self._cert is not None and self._key is not None
        self._seen = _mtime(self._cert)
        return grpc.ssl_server_certificate_configuration([(self._key.read_bytes(), self._cert.read_bytes())])

    def _renewed(self) -> grpc.ServerCertificateConfiguration | None:
        """Asked by grpc before each handshake: the renewed certificate once the supervisor wrote it."""
        assert self._cert is not None
        if _mtime(self._cert) == self._seen:
            return None
        try:
            config = self._certificate()
        except OSError as exc:
            log.warning("cannot reload the gRPC server certificate: %s", exc)
            return None
        log.info("reloaded the gRPC server certificate")
        return config


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
