"""The REST API (FastAPI) over the transport-neutral `Gateway`.

Every route under /v1 authenticates (bearer token or fabric client certificate), applies the
per-identity rate limit, and calls `Gateway.call` with an operation name, which checks the
operation's role before anything reaches the bus. Errors are RFC 9457 problem documents whose
status comes from `core.statuses`. ETag is the resource's KV revision; If-Match becomes the
request's revision precondition (stale: 412).

/healthz, /readyz and /openapi.json are open (probes and tooling); /metrics needs the viewer role.
"""

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common.errors import InvalidRequest, QnfError
from libs.common.messages import (
    Empty,
    Endpoint,
    EndpointAdd,
    EndpointFilter,
    EndpointLabels,
    EndpointList,
    EndpointRef,
    EndpointRemove,
    FlowQuery,
    Labels,
    Network,
    NetworkDelete,
    NetworkList,
    NetworkPatch,
    NetworkRef,
    NetworkSpec,
    NetworkUpdate,
    Page,
    Policy,
    PolicyFilter,
    PolicyList,
    PolicyRef,
    PolicySpec,
    PolicyWait,
    PolicyWaitResult,
    PolicyYaml,
    PortPublish,
    Problem,
    ProblemField,
    PublishedPort,
    PublishedPortFilter,
    PublishedPortList,
    PublishedPortRef,
    Removed,
    Service,
    ServiceList,
    ServiceRef,
    ServiceSpec,
    TokenCreate,
    TokenInfo,
    TokenIssued,
    TokenList,
    TokenRef,
    Verdict,
)
from services.gateway.api import AuthError, Gateway, Principal
from services.gateway.core import statuses
from services.gateway.core.operations import EVENTS_ROLE, METRICS_ROLE, operation
from services.gateway.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, BadCursor, paginate
from services.gateway.core.ratelimit import RateLimiter, retry_after_header

log = logging.getLogger("qnf.gateway.rest")

PEER_CERT: Final = "qnf_peer_cert"  # per-connection ASGI state: the client certificate (DER)
PROBLEM: Final = "application/problem+json"
YAML_TYPES: Final = ("application/yaml", "application/x-yaml", "text/yaml")
SSE_HEARTBEAT_S: Final = 15.0

_bearer = HTTPBearer(auto_error=False, description="an API token: qnf_<id>_<secret>")

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")]
Cursor = Annotated[str | None, Query(max_length=1024, description="next_cursor of the previous page")]
Node = Annotated[
    str | None,
    Query(pattern=r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$", description="node; default: the gateway's"),
]
IfMatch = Annotated[str | None, Header(description="the ETag (revision) this change is based on")]
_NAME_RE: Final = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
NetName = Annotated[str, Query(pattern=_NAME_RE)]
Name = Annotated[str, Path(pattern=_NAME_RE)]
ContainerId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
IfName = Annotated[str, Path(min_length=1, max_length=15, pattern=r"^[^/:\s]+$")]
TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]
PortId = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._-]+$")]


class ApiProblem(Exception):
    """A problem the REST layer itself reports (bad header, too large, rate limited)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: list[ProblemField] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.errors = errors or []
        self.headers = headers or {}


def problem_response(
    request: Request | None,
    status: int,
    code: str,
    detail: str,
    *,
    errors: list[ProblemField] | None = None,
    headers: dict[str, str] | None = None,
    retry_after: int | None = None,
) -> JSONResponse:
    body = Problem(
        title=statuses.title(status),
        status=status,
        detail=detail,
        instance=request.url.path if request is not None else None,
        code=code,
        errors=errors or [],
        retry_after=retry_after,
    )
    out_headers = dict(headers or {})
    if retry_after is not None:
        out_headers["Retry-After"] = str(retry_after)
    if status == 401:
        out_headers["WWW-Authenticate"] = 'Bearer realm="qnf"'
    return JSONResponse(body.model_dump(), status_code=status, headers=out_headers, media_type=PROBLEM)


def _fields(errors: list[Any], prefix: tuple[str, ...] = ()) -> list[ProblemField]:
    out = []
    for e in errors[:20]:
        loc = [*prefix, *(str(p) for p in e.get("loc", ()))]
        out.append(ProblemField(field=".".join(loc) or "body", message=str(e.get("msg", "invalid"))))
    return out


def etag(revision: int) -> str:
    return f'"{revision}"'


def parse_if_match(value: str | None) -> int | None:
    """If-Match as a revision; None when absent or `*` (any current version)."""
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 19:
        raise ApiProblem(
            400,
            "invalid",
            "If-Match must be an ETag returned by this API",
            errors=[ProblemField(field="header.if-match", message="not a revision ETag")],
        )
    return int(text)


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413, declared or streamed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # An HTTPException passes FastAPI's body reading unchanged (others become 400).
                    raise StarletteHTTPException(413, f"request body exceeds {self.limit} bytes")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        response = problem_response(
            None,
            413,
            "too_large",
            f"request body exceeds {self.limit} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def create_app(
    gw: Gateway,
    *,
    registry: CollectorRegistry,
    ready: Callable[[], bool],
    rate_per_s: float,
    rate_burst: int,
    max_body: int,
    version: str = "0.1.0",
) -> FastAPI:
    """The FastAPI application; served by uvicorn in the gateway process (see actor.py)."""
    app = FastAPI(
        title="qnf",
        version=version,
        description="Zero-trust container networking: networks, endpoints, policies, services, "
        "published ports, tokens and events of the qnf fabric.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    limiter = RateLimiter(rate_per_s, rate_burst, clock=time.monotonic)
    # Failed logins from one address: a burst of 20, then one a second (slows down guessing).
    failures = RateLimiter(1.0, 20, clock=time.monotonic)

    # ------------------------------------------------------------------ errors

    @app.exception_handler(QnfError)
    async def _qnf_error(request: Request, exc: QnfError) -> JSONResponse:
        precondition = getattr(request.state, "precondition", None) is not None
        status = statuses.http_status(exc.code, precondition=precondition)
        if status == 500:
            correlation = uuid.uuid4().hex[:12]
            log.error("internal error: %s", exc.message, extra={"correlation_id": correlation})
            return problem_response(request, 500, "internal", f"internal error ({correlation})")
        return problem_response(
            request,
            status,
            "precondition_failed" if status == 412 else exc.code,
            exc.message,
            retry_after=statuses.retry_after(exc.code),
        )

    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(
            request, exc.status, exc.code, exc.detail, errors=exc.errors, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem_response(
                request, 400, "invalid", "the body is not valid JSON", errors=_fields(errors[:1])
            )
        return problem_response(request, 422, "invalid", "the request is not valid", errors=_fields(errors))

    @app.exception_handler(ValidationError)
    async def _invalid_model(request: Request, exc: ValidationError) -> JSONResponse:
        return problem_response(
            request, 422, "invalid", "the request is not valid", errors=_fields(list(exc.errors()))
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "invalid")
        return problem_response(
            request, exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        correlation = uuid.uuid4().hex[:12]
        log.exception("unexpected error", extra={"correlation_id": correlation})
        return problem_response(request, 500, "internal", f"internal error ({correlation})")

    # ------------------------------------------------------------------ authentication

    async def principal(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        where = f"http:{request.method} {request.url.path}"
        client = request.client.host if request.client else "unknown"
        try:
            cert = (request.scope.get("state") or {}).get(PEER_CERT)
            if credentials is not None:
                who = await gw.authenticate_token(credentials.credentials, where)
            elif request.headers.get("authorization"):
                raise gw.refuse("malformed", where)
            elif cert:
                who = gw.authenticate_certificate(cert, where)
            else:
                raise gw.refuse("no_credentials", where)
        except AuthError:
            wait = failures.take(f"addr:{client}")
            if wait is not None:
                gw.metrics.rate_limited.inc()
                raise ApiProblem(
                    429,
                    "rate_limited",
                    "too many failed logins; slow down",
                    headers={"Retry-After": retry_after_header(wait)},
                ) from None
            raise
        wait = limiter.take(who.id)
        if wait is not None:
            gw.metrics.rate_limited.inc()
            raise ApiProblem(
                429,
                "rate_limited",
                "request rate limit exceeded",
                headers={"Retry-After": retry_after_header(wait)},
            )
        return who

    Caller = Annotated[Principal, Depends(principal)]

    async def call(
        request: Request,
        who: Principal,
        name: str,
        req: BaseModel,
        *,
        node: str | None = None,
        precondition: int | None = None,
    ) -> Any:
        request.state.precondition = precondition
        return await gw.call(who, name, req, node=node, precondition=precondition)

    def with_etag(response: Response, model: Any) -> Any:
        revision = getattr(model, "revision", None)
        if revision:
            response.headers["ETag"] = etag(revision)
        return model

    # ------------------------------------------------------------------ probes and metrics

    @app.get("/healthz", response_class=PlainTextResponse, tags=["probes"])
    async def healthz() -> str:
        return "ok\n"

    @app.get("/readyz", response_class=PlainTextResponse, tags=["probes"], responses={503: {}})
    async def readyz() -> PlainTextResponse:
        if ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["probes"])
    async def metrics(who: Caller) -> Response:
        gw.authorize(who, METRICS_ROLE, "reading metrics")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ networks

    @app.post("/v1/networks", status_code=201, response_model=Network, tags=["networks"])
    async def create_network(request: Request, response: Response, who: Caller, spec: NetworkSpec) -> Any:
        return with_etag(response, await call(request, who, "network.create", spec))

    @app.get("/v1/networks", response_model=Page[Network], tags=["networks"])
    async def list_networks(
        request: Request, who: Caller, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> Any:
        reply: NetworkList = await call(request, who, "network.list", Empty())
        return page(reply.networks, lambda n: n.name, limit, cursor)

    @app.get("/v1/networks/{name}", response_model=Network, tags=["networks"])
    async def get_network(request: Request, response: Response, who: Caller, name: Name) -> Any:
        return with_etag(response, await call(request, who, "network.get", NetworkRef(name=name)))

    @app.patch("/v1/networks/{name}", response_model=Network, tags=["networks"])
    async def update_network(
        request: Request,
        response: Response,
        who: Caller,
        name: Name,
        patch: NetworkPatch,
        if_match: IfMatch = None,
    ) -> Any:
        req = NetworkUpdate(name=name, **patch.model_dump(exclude_unset=True))
        reply = await call(request, who, "network.update", req, precondition=parse_if_match(if_match))
        return with_etag(response, reply)

    @app.delete("/v1/networks/{name}", response_model=Removed, tags=["networks"])
    async def delete_network(
        request: Request, who: Caller, name: Name, force: bool = False, if_match: IfMatch = None
    ) -> Any:
        req = NetworkDelete(name=name, force=force)
        return await call(request, who, "network.delete", req, precondition=parse_if_match(if_match))

    # ------------------------------------------------------------------ endpoints (containers)

    @app.post("/v1/endpoints", status_code=201, response_model=Endpoint, tags=["endpoints"])
    async def connect(request: Request, who: Caller, req: EndpointAdd, node: Node = None) -> Any:
        return await call(request, who, "endpoint.add", req, node=node)

    @app.get("/v1/endpoints", response_model=Page[Endpoint], tags=["endpoints"])
    async def list_endpoints(
        request: Request,
        who: Caller,
        network: NetName | None = None,
        on_node: Annotated[str | None, Query(alias="endpoint_node", max_length=63)] = None,
        node: Node = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Any:
        reply: EndpointList = await call(
            request, who, "endpoint.list", EndpointFilter(network=network, node=on_node), node=node
        )
        return page(reply.endpoints, lambda e: e.endpoint_id, limit, cursor)

    @app.get("/v1/endpoints/{container_id}/{ifname}", response_model=Endpoint, tags=["endpoints"])
    async def get_endpoint(
        request: Request, who: Caller, container_id: ContainerId, ifname: IfName, node: Node = None
    ) -> Any:
        req = EndpointRef(container_id=container_id, ifname=ifname)
        return await call(request, who, "endpoint.get", req, node=node)

    @app.delete("/v1/endpoints/{container_id}/{ifname}", response_model=Removed, tags=["endpoints"])
    async def disconnect(
        request: Request, who: Caller, container_id: ContainerId, ifname: IfName, node: Node = None
    ) -> Any:
        req = EndpointRemove(container_id=container_id, ifname=ifname)
        return await call(request, who, "endpoint.remove", req, node=node)

    @app.put("/v1/endpoints/{container_id}/{ifname}/labels", response_model=Endpoint, tags=["endpoints"])
    async def set_labels(
        request: Request,
        who: Caller,
        container_id: ContainerId,
        ifname: IfName,
        labels: Labels,
        node: Node = None,
    ) -> Any:
        req = EndpointLabels(container_id=container_id, ifname=ifname, labels=labels)
        return await call(request, who, "endpoint.labels", req, node=node)

    # ------------------------------------------------------------------ policies

    @app.post(
        "/v1/policies",
        status_code=201,
        response_model=Policy,
        tags=["policies"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PolicySpec"}},
                    "application/yaml": {
                        "schema": {"type": "string", "description": "a Kubernetes NetworkPolicy"}
                    },
                },
            }
        },
    )
    async def create_policy(
        request: Request, response: Response, who: Caller, network: NetName | None = None
    ) -> Any:
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        raw = await request.body()
        if content_type in YAML_TYPES:
            try:
                text = raw.decode()
            except UnicodeDecodeError as exc:
                raise InvalidRequest("document: not UTF-8 text") from exc
            req: BaseModel = PolicyYaml(document=text, network=network)
            return with_etag(response, await call(request, who, "policy.import", req))
        if content_type != "application/json":
            raise ApiProblem(
                415, "invalid", "send application/json (a policy) or application/yaml (a NetworkPolicy)"
            )
        try:
            spec = PolicySpec.model_validate(_json(raw))
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
        return with_etag(response, await call(request, who, "policy.create", spec))

    @app.get("/v1/policies", response_model=Page[Policy], tags=["policies"])
    async def list_policies(
        request: Request,
        who: Caller,
        network: NetName | None = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Any:
        reply: PolicyList = await call(request, who, "policy.list", PolicyFilter(network=network))
        return page(reply.policies, lambda p: f"{p.network or ''}/{p.name}", limit, cursor)

    @app.post("/v1/policies:explain", response_model=Verdict, tags=["policies"])
    async def explain(request: Request, who: Caller, query: FlowQuery) -> Any:
        return await call(request, who, "policy.explain", query)

    @app.post("/v1/policies:wait", response_model=PolicyWaitResult, tags=["policies"])
    async def wait_policy(request: Request, who: Caller, wait: PolicyWait) -> Any:
        """Wait (at most timeout_s, ≤ 60) until every node that must enforce `revision` does."""
        return await call(request, who, "policy.wait", wait)

    @app.get("/v1/policies/{name}", response_model=Policy, tags=["policies"])
    async def get_policy(
        request: Request, response: Response, who: Caller, name: Name, network: NetName | None = None
    ) -> Any:
        return with_etag(
            response, await call(request, who, "policy.get", PolicyRef(name=name, network=network))
        )

    @app.put("/v1/policies/{name}", response_model=Policy, tags=["policies"])
    async def update_policy(
        request: Request,
        response: Response,
        who: Caller,
        name: Name,
        spec: PolicySpec,
        if_match: IfMatch = None,
    ) -> Any:
        if spec.name != name:
            raise InvalidRequest(f"name: {spec.name!r} differs from the name in the path")
        reply = await call(request, who, "policy.update", spec, precondition=parse_if_match(if_match))
        return with_etag(response, reply)

    @app.delete("/v1/policies/{name}", response_model=operation("policy.delete").reply, tags=["policies"])
    async def delete_policy(
        request: Request, who: Caller, name: Name, network: NetName | None = None, if_match: IfMatch = None
    ) -> Any:
        ref = PolicyRef(name=name, network=network)
        return await call(request, who, "policy.delete", ref, precondition=parse_if_match(if_match))

    # ------------------------------------------------------------------ services (DNS)

    @app.post("/v1/services", status_code=201, response_model=Service, tags=["services"])
    async def create_service(request: Request, response: Response, who: Caller, spec: ServiceSpec) -> Any:
        return with_etag(response, await call(request, who, "service.create", spec))

    @app.get("/v1/services", response_model=Page[Service], tags=["services"])
    async def list_services(
        request: Request,
        who: Caller,
        network: NetName | None = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Any:
        reply: ServiceList = await call(request, who, "service.list", Empty())
        items = [s for s in reply.services if network is None or s.network == network]
        return page(items, lambda s: f"{s.network}/{s.name}", limit, cursor)

    @app.get("/v1/services/{name}", response_model=Service, tags=["services"])
    async def get_service(
        request: Request, response: Response, who: Caller, name: Name, network: NetName
    ) -> Any:
        return with_etag(
            response, await call(request, who, "service.get", ServiceRef(name=name, network=network))
        )

    @app.delete("/v1/services/{name}", response_model=Removed, tags=["services"])
    async def delete_service(
        request: Request, who: Caller, name: Name, network: NetName, if_match: IfMatch = None
    ) -> Any:
        ref = ServiceRef(name=name, network=network)
        return await call(request, who, "service.delete", ref, precondition=parse_if_match(if_match))

    # ------------------------------------------------------------------ published ports (NAT)

    @app.post("/v1/ports", status_code=201, response_model=PublishedPort, tags=["ports"])
    async def publish(request: Request, who: Caller, req: PortPublish, node: Node = None) -> Any:
        return await call(request, who, "port.publish", req, node=node)

    @app.get("/v1/ports", response_model=Page[PublishedPort], tags=["ports"])
    async def list_ports(
        request: Request,
        who: Caller,
        endpoint_id: Annotated[str | None, Query(max_length=255)] = None,
        node: Node = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Any:
        reply: PublishedPortList = await call(
            request, who, "port.list", PublishedPortFilter(endpoint_id=endpoint_id), node=node
        )
        return page(reply.ports, lambda p: p.id, limit, cursor)

    @app.delete("/v1/ports/{port_id}", response_model=Removed, tags=["ports"])
    async def unpublish(request: Request, who: Caller, port_id: PortId, node: Node = None) -> Any:
        # A published port's id starts with its node: "<node>.<protocol>.<port>.<address>".
        return await call(
            request, who, "port.unpublish", PublishedPortRef(id=port_id), node=node or port_id.split(".")[0]
        )

    # ------------------------------------------------------------------ tokens

    @app.post("/v1/tokens", status_code=201, response_model=TokenIssued, tags=["tokens"])
    async def create_token(request: Request, who: Caller, req: TokenCreate) -> Any:
        return await call(request, who, "token.create", req)

    @app.get("/v1/tokens", response_model=Page[TokenInfo], tags=["tokens"])
    async def list_tokens(
        request: Request, who: Caller, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> Any:
        reply: TokenList = await call(request, who, "token.list", Empty())
        return page(reply.tokens, lambda t: t.id, limit, cursor)

    @app.delete("/v1/tokens/{token_id}", response_model=Removed, tags=["tokens"])
    async def revoke_token(request: Request, who: Caller, token_id: TokenId, if_match: IfMatch = None) -> Any:
        ref = TokenRef(id=token_id)
        return await call(request, who, "token.revoke", ref, precondition=parse_if_match(if_match))

    # ------------------------------------------------------------------ events

    @app.get(
        "/v1/events",
        tags=["events"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def events(
        request: Request,
        who: Caller,
        after: Annotated[int | None, Query(ge=0, description="resume after this event sequence")] = None,
        last_event_id: Annotated[str | None, Header(max_length=20)] = None,
    ) -> StreamingResponse:
        """Server-sent events of the fabric (QNF_EVENTS): `id` is the stream sequence, `event` the
        subject, `data` a FabricEvent. Reconnecting with Last-Event-ID resumes after it."""
        gw.authorize(who, EVENTS_ROLE, "reading events")
        if after is None and last_event_id is not None and last_event_id.isdigit():
            after = int(last_event_id)
        feed = await gw.open_events(after_seq=after)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b": subscribed\n\n"
                while True:
                    event = await feed.next(SSE_HEARTBEAT_S)
                    if event is None:
                        yield b": keepalive\n\n"
                        continue
                    head = f"id: {event.seq}\nevent: {event.subject}\n"
                    yield f"{head}data: {event.model_dump_json()}\n\n".encode()
            finally:
                await feed.close()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    app.add_middleware(BodyLimit, limit=max_body)
    _document_problems(app)
    return app


def page(items: list[Any], key: Callable[[Any], str], limit: int, cursor: str | None) -> dict[str, Any]:
    try:
        chosen, next_cursor = paginate(items, key, limit=limit, cursor=cursor)
    except BadCursor as exc:
        raise ApiProblem(
            400, "invalid", str(exc), errors=[ProblemField(field="query.cursor", message=str(exc))]
        ) from exc
    return {"items": chosen, "next_cursor": next_cursor}


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiProblem(
            400,
            "invalid",
            "the body is not valid JSON",
            errors=[ProblemField(field="body", message=str(exc))],
        ) from exc


_ERRORS: Final = {
    "400": "Bad request (e.g. the body is not JSON)",
    "401": "No or an invalid credential",
    "403": "The caller's role does not allow this",
    "404": "Not found",
    "409": "Conflict with the current state",
    "412": "If-Match does not match the current revision",
    "413": "Body too large",
    "415": "Unsupported content type",
    "422": "Invalid request (the problem names each bad field)",
    "429": "Rate limited; see Retry-After",
    "500": "Internal error",
    "503": "The service behind did not answer; see Retry-After",
}
_OPEN_PATHS: Final = ("/healthz", "/readyz", "/openapi.json")


def _document_problems(app: FastAPI) -> None:
    """Describe the problem+json error responses of every route in the OpenAPI document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem.pop("$defs", {}))
        components["Problem"] = problem
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        ref = {"$ref": "#/components/schemas/Problem"}
        for path, item in schema.get("paths", {}).items():
            if path in _OPEN_PATHS:
                continue
            for op in item.values():
                responses = op.setdefault("responses", {})
                for status, text in _ERRORS.items():
                    responses[status] = {"description": text, "content": {PROBLEM: {"schema": ref}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
