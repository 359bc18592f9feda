"""Unit tests of the gateway's pure core: operations table, roles, tokens, statuses, paging, limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.common.errors import InvalidRequest
from libs.common.messages import FlowQuery, PolicyWait, TokenRecord
from services.firewall.actor import FirewallActor
from services.gateway.core import pagination, statuses, tokens
from services.gateway.core.operations import (
    MAX_WAIT_S,
    OPERATIONS,
    ROLES,
    operation,
    request_of,
    role_allows,
    wait_of,
)
from services.gateway.core.ratelimit import RateLimiter, retry_after_header


def _bus_verbs(actor_cls: type) -> set[tuple[str, str, type, type]]:
    # The services' own handler tables, read without running them: endpoints() only needs bound methods.
    actor = object.__new__(actor_cls)
    return {(ep.verb, ep.scope, ep.request, ep.reply) for ep in actor.endpoints()}


def test_every_bus_operation_matches_the_service_handler_tables() -> None:
    from services.dns.actor import DnsActor
    from services.vnet.actor import VnetActor

    served = {
        "vnet": _bus_verbs(VnetActor),
        "firewall": _bus_verbs(FirewallActor),
        "dns": _bus_verbs(DnsActor),
    }
    for op in OPERATIONS.values():
        if op.service in served:
            assert (op.verb, op.scope, op.request, op.reply) in served[op.service], op.name
    offered = {op.name for op in OPERATIONS.values()}
    for resource, verbs in {
        "network": ("create", "get", "list", "update", "delete"),
        "endpoint": ("add", "remove", "labels", "get", "list"),
        "policy": ("create", "get", "list", "update", "delete", "import", "explain", "wait"),
        "service": ("create", "get", "list", "delete"),
        "port": ("publish", "unpublish", "list"),
        "token": ("create", "list", "revoke"),
    }.items():
        assert {f"{resource}.{v}" for v in verbs} <= offered


def test_subjects() -> None:
    assert operation("network.create").subject("n1") == "qnf.v1.cmd.vnet.network.create"
    assert operation("endpoint.add").subject("n7") == "qnf.v1.node.n7.vnet.endpoint.add"
    assert operation("port.publish").subject("n1") == "qnf.v1.node.n1.nat.port.publish"
    with pytest.raises(ValueError):
        operation("token.create").subject("n1")


def test_roles_are_ordered_and_reads_are_viewer_writes_operator_tokens_admin() -> None:
    assert ROLES == ("viewer", "operator", "admin")
    assert role_allows("admin", "viewer") and role_allows("operator", "operator")
    assert not role_allows("viewer", "operator") and not role_allows("operator", "admin")
    for op in OPERATIONS.values():
        if op.name.startswith("token."):
            assert op.role == "admin"
        elif op.name.endswith((".get", ".list", ".explain", ".wait")):
            assert op.role == "viewer", op.name
        else:
            assert op.role == "operator" and op.write, op.name


def test_request_of_names_the_bad_field() -> None:
    with pytest.raises(ValidationError) as exc:
        request_of(operation("network.create"), {"name": "blue", "subnet": "nonsense"})
    assert exc.value.errors()[0]["loc"] == ("subnet",)
    with pytest.raises(ValidationError):
        request_of(operation("network.create"), {"name": "blue", "subnet": "10.0.0.0/24", "color": 1})


def test_only_policy_wait_waits_and_its_wait_is_bounded() -> None:
    waits = operation("policy.wait")
    assert wait_of(waits, PolicyWait(revision=3)) == 5.0
    assert wait_of(waits, PolicyWait(revision=3, timeout_s=MAX_WAIT_S)) == MAX_WAIT_S
    with pytest.raises(InvalidRequest) as exc:
        wait_of(waits, PolicyWait(revision=3, timeout_s=MAX_WAIT_S + 1))
    assert exc.value.message.startswith("timeout_s:")
    assert [op.name for op in OPERATIONS.values() if op.wait_field is not None] == ["policy.wait"]
    assert wait_of(operation("policy.explain"), FlowQuery(source="10.0.0.1", destination="10.0.0.2")) == 0.0


def test_token_round_trip_and_refusals() -> None:
    text, record = tokens.generate(name="ci", role="operator", ttl_s=60, created_by="x", now_ms=1000)
    presented = tokens.parse(text)
    assert presented is not None and presented.id == record.id
    assert text not in record.model_dump_json() and presented.secret not in record.model_dump_json()
    assert tokens.check(record, presented, now_ms=1000) is None
    assert tokens.check(record, presented, now_ms=61_000) == "expired"
    assert tokens.check(None, presented, now_ms=1000) == "unknown"
    assert tokens.check(tokens.revoke(record, now_ms=2000), presented, now_ms=2000) == "revoked"
    forged = tokens.Presented(presented.id, "A" * 43)
    assert tokens.check(record, forged, now_ms=1000) == "mismatch"
    # A wrong secret for a revoked/expired token learns nothing more than "mismatch".
    assert tokens.check(tokens.revoke(record, now_ms=2000), forged, now_ms=99_000) == "mismatch"


@pytest.mark.parametrize(
    "text", ["", "qnf_", "Bearer x", "qnf_0123456789abcdeg_" + "A" * 43, "qnf_0123456789abcdef_" + "A" * 42]
)
def test_malformed_tokens(text: str) -> None:
    assert tokens.parse(text) is None


def test_tokens_are_unique_and_info_hides_the_hash() -> None:
    made = {
        tokens.generate(name="a", role="viewer", ttl_s=60, created_by="x", now_ms=0)[0] for _ in range(50)
    }
    assert len(made) == 50
    _, record = tokens.generate(name="a", role="admin", ttl_s=60, created_by="x", now_ms=0)
    assert "secret_sha256" not in tokens.info(record, 7).model_dump()
    assert tokens.info(record, 7).revision == 7
    assert tokens.is_live_admin(record, now_ms=0) and not tokens.is_live_admin(record, now_ms=60_000)
    assert isinstance(record, TokenRecord)


def test_status_mapping() -> None:
    assert statuses.http_status("not_found") == 404
    assert statuses.http_status("conflict") == 409
    assert statuses.http_status("conflict", precondition=True) == 412
    assert statuses.http_status("invalid") == 422
    assert statuses.http_status("exhausted") == 409
    assert statuses.http_status("unauthorized") == 401
    assert statuses.http_status("forbidden") == 403
    assert statuses.http_status("unavailable") == 503
    assert statuses.http_status("internal") == 500
    assert statuses.http_status("something-new") == 500
    assert statuses.grpc_status("conflict", precondition=True) == "FAILED_PRECONDITION"
    assert statuses.grpc_status("unauthorized") == "UNAUTHENTICATED"
    assert statuses.grpc_status("forbidden") == "PERMISSION_DENIED"
    assert statuses.retry_after("unavailable") == 1 and statuses.retry_after("invalid") is None


def test_pagination_walks_everything_once_despite_inserts() -> None:
    items = [f"k{i:03d}" for i in range(25)]
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = pagination.paginate(items, lambda s: s, limit=10, cursor=cursor)
        seen += page
        items.append("a-new-item-before-the-cursor")  # must not shift later pages
        if cursor is None:
            break
    assert seen == sorted(f"k{i:03d}" for i in range(25))
    assert pagination.paginate([], lambda s: s, limit=5, cursor=None) == ([], None)
    with pytest.raises(pagination.BadCursor):
        pagination.paginate(items, lambda s: s, limit=5, cursor="%%%")


def test_rate_limiter() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [None, None, None]
    wait = limiter.take("a")
    assert wait == pytest.approx(0.5)
    assert limiter.take("b") is None  # another identity has its own bucket
    now[0] += 0.5
    assert limiter.take("a") is None
    assert retry_after_header(0.01) == "1" and retry_after_header(2.2) == "3"
    small = RateLimiter(rate=1, burst=1, clock=lambda: now[0], max_keys=2)
    for key in "xyz":
        small.take(key)
    assert len(small._buckets) <= 2
