"""The REST gateway against the running fabric: real processes, real bus, real namespaces.

The fabric runs in a node namespace (module scope); each test enters that namespace itself
(pyroute2 `pushns`) so that its HTTPS client reaches the gateway on the node's loopback, and
leaves it in teardown. Tokens for each role are made through the API by the bootstrap admin.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyroute2.netns import popns, pushns

from libs.common.bus import Bus
from libs.common.config import load_settings
from libs.common.ids import SpiffeId
from libs.common.messages import TokenRecord
from libs.common.testing import Containers, FabricNode, fabric_on_new_node
from services.gateway.core import tokens
from services.gateway.core.operations import OPERATIONS, role_allows

BASE = "https://127.0.0.1:8480"
ENV = {
    "QNF_REQUEST_TIMEOUT_S": "5",
    "QNF_GATEWAY_RATE_PER_S": "1000",
    "QNF_GATEWAY_RATE_BURST": "2000",
    "QNF_GATEWAY_MAX_BODY_BYTES": str(64 * 1024),
}


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricNode]:
    with fabric_on_new_node(tmp_path_factory.mktemp("gw") / "state", env=ENV) as node:
        yield node


@pytest.fixture
def inside(fabric: FabricNode) -> Iterator[FabricNode]:
    """Run the test's own sockets in the node's namespace (loopback there is the fabric's)."""
    pushns(fabric.ns)
    try:
        yield fabric
    finally:
        popns()


def _client(fabric: FabricNode, token: str | None = None, **kw: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ctx = ssl.create_default_context(cafile=str(fabric.state / "pki" / "ca.crt"))
    cert = kw.pop("cert", None)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    local = kw.pop("local_address", None)
    transport = httpx.HTTPTransport(verify=ctx, local_address=local) if local else None
    return httpx.Client(base_url=BASE, headers=headers, verify=ctx, timeout=15, transport=transport, **kw)


@pytest.fixture
def admin(inside: FabricNode) -> Iterator[httpx.Client]:
    token = (inside.state / "gateway" / "admin.token").read_text().strip()
    with _client(inside, token) as client:
        yield client


def _token(admin: httpx.Client, role: str, name: str = "t") -> str:
    r = admin.post("/v1/tokens", json={"name": name, "role": role, "ttl_s": 3600})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@pytest.fixture
def clients(inside: FabricNode, admin: httpx.Client) -> Iterator[dict[str, httpx.Client]]:
    made = {role: _client(inside, _token(admin, role, role)) for role in ("viewer", "operator")}
    made["admin"] = admin
    yield made
    for role in ("viewer", "operator"):
        made[role].close()


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = r.json()
    assert doc["status"] == status
    return doc


def _uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


_subnet_counter = iter(range(1, 250))


def _subnet() -> str:
    return f"10.{100 + os.getpid() % 50}.{next(_subnet_counter)}.0/24"


# ---------------------------------------------------------------------- authentication


def test_probes_and_openapi_need_no_credentials(inside: FabricNode) -> None:
    with _client(inside) as anon:
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/readyz").status_code == 200
        doc = anon.get("/openapi.json").json()
        assert "/v1/networks" in doc["paths"] and "/v1/policies:explain" in doc["paths"]
        _problem(anon.get("/metrics"), 401)


def test_plain_http_is_refused(inside: FabricNode) -> None:
    with httpx.Client(timeout=5) as plain, pytest.raises(httpx.HTTPError):
        plain.get("http://127.0.0.1:8480/healthz")


def test_no_token_wrong_token_and_garbage_are_401(inside: FabricNode, admin: httpx.Client) -> None:
    before = admin.get("/metrics").text
    with _client(inside, local_address="127.0.0.3") as anon:
        doc = _problem(anon.get("/v1/networks"), 401)
        assert doc["code"] == "unauthorized"
        assert anon.get("/v1/networks").headers["www-authenticate"].startswith("Bearer")
    good = _token(admin, "viewer")
    wrong = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    unknown = "qnf_" + "0" * 16 + "_" + good.rsplit("_", 1)[1]
    for bad in (wrong, unknown, "qnf_garbage", "x" * 300):
        with _client(inside, bad, local_address="127.0.0.3") as c:
            _problem(c.get("/v1/networks"), 401)
    with _client(inside, local_address="127.0.0.3") as c:
        _problem(c.get("/v1/networks", headers={"Authorization": "Basic YTpi"}), 401)
    after = admin.get("/metrics").text
    assert _metric(after, 'qnf_gateway_auth_failures_total{reason="mismatch"}') > _metric(
        before, 'qnf_gateway_auth_failures_total{reason="mismatch"}'
    )
    assert _metric(after, 'qnf_gateway_auth_failures_total{reason="no_credentials"}') >= 2


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_failed_logins_are_security_events(inside: FabricNode, admin: httpx.Client) -> None:
    with admin.stream("GET", "/v1/events") as events:
        lines = events.iter_lines()
        assert next(lines) == ": subscribed"
        with _client(inside, "qnf_" + "1" * 16 + "_" + "A" * 43, local_address="127.0.0.4") as c:
            _problem(c.get("/v1/networks"), 401)
        event = _next_event(lines, "qnf.v1.evt.gateway.security.rejected")
    assert event["data"]["reason"] == "login.unknown"
    assert event["data"]["claimed_sender"] == "token:" + "1" * 16
    assert event["sender"] == "spiffe://qnf.local/service/gateway"


def _next_event(lines: Iterator[str], subject: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    current = ""
    for line in lines:
        if time.monotonic() > deadline:
            break
        if line.startswith("event: "):
            current = line[7:]
        elif line.startswith("data: ") and current == subject:
            return json.loads(line[6:])  # type: ignore[no-any-return]
    raise AssertionError(f"no {subject} event")


def test_expired_and_revoked_tokens_are_refused(inside: FabricNode, admin: httpx.Client) -> None:
    text = _token(admin, "viewer")
    with _client(inside, text) as c:
        assert c.get("/v1/networks").status_code == 200
        token_id = text.split("_")[1]
        listed = {t["id"]: t for t in admin.get("/v1/tokens", params={"limit": 1000}).json()["items"]}
        assert listed[token_id]["role"] == "viewer" and "secret_sha256" not in listed[token_id]
        assert admin.delete(f"/v1/tokens/{token_id}").json() == {"existed": True}
        _problem(c.get("/v1/networks"), 401)
        listed = {t["id"]: t for t in admin.get("/v1/tokens", params={"limit": 1000}).json()["items"]}
        assert listed[token_id]["revoked_ms"] is not None
    # An expired token, as it sits in the store once its time has passed (written as the gateway,
    # the bucket's owner, because the API does not make tokens that are already expired).
    expired_text, record = tokens.generate(
        name="old", role="admin", ttl_s=60, created_by="test", now_ms=int(time.time() * 1000) - 120_000
    )
    asyncio.run(_put_token(inside.state, record))
    with _client(inside, expired_text) as c:
        _problem(c.get("/v1/networks"), 401)


async def _put_token(state: Path, record: TokenRecord) -> None:
    settings = load_settings(state_dir=state)
    bus = await Bus.connect_as(settings, SpiffeId.service(settings.trust_domain, "gateway"), service="test")
    try:
        kv = await bus.kv("qnf-tokens", TokenRecord)
        await kv.create(record.id, record)
    finally:
        await bus.close()


def test_client_certificates_authenticate_with_their_role(inside: FabricNode) -> None:
    ids = inside.state / "pki" / "ids"
    viewer = (str(ids / "user-viewer" / "tls.crt"), str(ids / "user-viewer" / "tls.key"))
    admin = (str(ids / "user-admin" / "tls.crt"), str(ids / "user-admin" / "tls.key"))
    with _client(inside, cert=viewer) as c:
        assert c.get("/v1/networks").status_code == 200
        assert _problem(c.post("/v1/networks", json={"name": "x", "subnet": "10.250.0.0/24"}), 403)[
            "code"
        ] == ("forbidden")
    with _client(inside, cert=admin) as c:
        assert c.post("/v1/tokens", json={"name": "by-cert", "role": "viewer"}).status_code == 201
    # A service identity is a fabric certificate too, but no API role.
    gateway = ids / "service-gateway"
    with _client(
        inside, cert=(str(gateway / "tls.crt"), str(gateway / "tls.key")), local_address="127.0.0.5"
    ) as c:
        _problem(c.get("/v1/networks"), 401)


def test_repeated_failed_logins_are_rate_limited(inside: FabricNode) -> None:
    with _client(inside, "qnf_" + "2" * 16 + "_" + "B" * 43, local_address="127.0.0.9") as c:
        codes = [c.get("/v1/networks").status_code for _ in range(30)]
        assert codes[:20] == [401] * 20
        assert codes[-1] == 429
        r = c.get("/v1/networks")
        _problem(r, 429)
        assert int(r.headers["retry-after"]) >= 1


# ---------------------------------------------------------------------- role matrix


def _call_for(op: str, net: str) -> tuple[str, str, dict[str, Any]]:
    """A request that exercises `op` without lasting effect (names that do not exist, etc.)."""
    ghost = "ghost-" + uuid.uuid4().hex[:6]
    table: dict[str, tuple[str, str, dict[str, Any]]] = {
        "network.create": ("POST", "/v1/networks", {"json": {"name": ghost, "subnet": _subnet()}}),
        "network.get": ("GET", f"/v1/networks/{net}", {}),
        "network.list": ("GET", "/v1/networks", {}),
        "network.update": ("PATCH", f"/v1/networks/{net}", {"json": {"labels": {"touched": "yes"}}}),
        "network.delete": ("DELETE", f"/v1/networks/{ghost}", {}),
        "endpoint.add": (
            "POST",
            "/v1/endpoints",
            {
                "json": {
                    "request_id": ghost,
                    "container_id": ghost,
                    "ifname": "eth0",
                    "netns": "/run/netns/none",
                    "network": net,
                }
            },
        ),
        "endpoint.remove": ("DELETE", f"/v1/endpoints/{ghost}/eth0", {}),
        "endpoint.labels": ("PUT", f"/v1/endpoints/{ghost}/eth0/labels", {"json": {"a": "b"}}),
        "endpoint.get": ("GET", f"/v1/endpoints/{ghost}/eth0", {}),
        "endpoint.list": ("GET", "/v1/endpoints", {}),
        "policy.create": ("POST", "/v1/policies", {"json": {"name": ghost, "network": net}}),
        "policy.get": ("GET", f"/v1/policies/{ghost}", {"params": {"network": net}}),
        "policy.list": ("GET", "/v1/policies", {}),
        "policy.update": ("PUT", f"/v1/policies/{ghost}", {"json": {"name": ghost, "network": net}}),
        "policy.delete": ("DELETE", f"/v1/policies/{ghost}", {"params": {"network": net}}),
        "policy.import": (
            "POST",
            "/v1/policies",
            {
                "content": _K8S_POLICY.replace("web-allow", ghost),
                "headers": {"content-type": "application/yaml"},
                "params": {"network": net},
            },
        ),
        "policy.explain": (
            "POST",
            "/v1/policies:explain",
            {"json": {"source": "10.1.0.2", "destination": "10.1.0.3", "protocol": "TCP", "port": 80}},
        ),
        "policy.wait": ("POST", "/v1/policies:wait", {"json": {"revision": 1, "timeout_s": 0.5}}),
        "service.create": ("POST", "/v1/services", {"json": {"name": ghost, "network": net}}),
        "service.get": ("GET", f"/v1/services/{ghost}", {"params": {"network": net}}),
        "service.list": ("GET", "/v1/services", {}),
        "service.delete": ("DELETE", f"/v1/services/{ghost}", {"params": {"network": net}}),
        "port.publish": (
            "POST",
            "/v1/ports",
            {"json": {"container_id": ghost, "host_port": 18080, "container_port": 80}},
        ),
        "port.unpublish": ("DELETE", f"/v1/ports/n1.tcp.18080.{ghost}", {}),
        "port.list": ("GET", "/v1/ports", {}),
        "token.create": ("POST", "/v1/tokens", {"json": {"name": ghost, "role": "viewer"}}),
        "token.list": ("GET", "/v1/tokens", {}),
        "token.revoke": ("DELETE", f"/v1/tokens/{uuid.uuid4().hex[:16]}", {}),
    }
    return table[op]


_K8S_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-allow
spec:
  podSelector:
    matchLabels: {app: web}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: client}
    ports:
    - {protocol: TCP, port: 80}
"""


def test_role_matrix_every_role_times_every_operation(clients: dict[str, httpx.Client]) -> None:
    net = _uniq("matrix")
    assert clients["admin"].post("/v1/networks", json={"name": net, "subnet": _subnet()}).status_code == 201
    try:
        for name, op in OPERATIONS.items():
            for role, client in clients.items():
                method, path, kw = _call_for(name, net)
                r = client.request(method, path, **kw)
                if role_allows(role, op.role):  # type: ignore[arg-type]
                    assert r.status_code not in (401, 403), f"{role} {name}: {r.status_code} {r.text}"
                    assert r.status_code < 500 or r.status_code == 503, f"{role} {name}: {r.text}"
                else:
                    assert _problem(r, 403)["code"] == "forbidden", f"{role} {name}"
        viewer = clients["viewer"]
        with viewer.stream("GET", "/v1/events") as r:
            assert r.status_code == 200  # the viewer may watch events
        assert viewer.get("/metrics").status_code == 200
    finally:
        for name in [
            n["name"] for n in clients["admin"].get("/v1/networks", params={"limit": 1000}).json()["items"]
        ]:
            if name.startswith(("ghost-", "matrix-")):
                clients["admin"].delete(f"/v1/networks/{name}", params={"force": True})


# ---------------------------------------------------------------------- resources


def test_networks_crud_etag_and_stale_revision(admin: httpx.Client) -> None:
    name = _uniq("net")
    spec = {"name": name, "subnet": _subnet(), "labels": {"team": "a"}}
    created = admin.post("/v1/networks", json=spec)
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == f'"{created.json()["revision"]}"'
    assert admin.post("/v1/networks", json=spec).status_code == 201  # a retried create is idempotent
    got = admin.get(f"/v1/networks/{name}")
    etag = got.headers["etag"]
    assert got.json()["labels"] == {"team": "a"}
    changed = admin.patch(f"/v1/networks/{name}", json={"labels": {"team": "b"}}, headers={"If-Match": etag})
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] != etag
    stale = admin.patch(f"/v1/networks/{name}", json={"mtu": 1400}, headers={"If-Match": etag})
    assert _problem(stale, 412)["code"] == "precondition_failed"
    assert admin.get(f"/v1/networks/{name}").json()["mtu"] == 1500  # the stale write changed nothing
    _problem(admin.delete(f"/v1/networks/{name}", headers={"If-Match": etag}), 412)
    _problem(admin.patch(f"/v1/networks/{name}", json={}, headers={"If-Match": "nonsense"}), 400)
    names = [n["name"] for n in admin.get("/v1/networks").json()["items"]]
    assert name in names
    assert admin.delete(f"/v1/networks/{name}", headers={"If-Match": changed.headers["etag"]}).json() == {
        "existed": True
    }
    assert _problem(admin.get(f"/v1/networks/{name}"), 404)["code"] == "not_found"
    assert admin.delete(f"/v1/networks/{name}").json() == {"existed": False}
    clash = admin.post("/v1/networks", json={**spec, "name": _uniq("other")})
    admin.post("/v1/networks", json=spec)
    assert _problem(admin.post("/v1/networks", json={**spec, "mtu": 1400}), 409)["code"] == "conflict"
    for n in (name, clash.json().get("name", "")):
        if n:
            admin.delete(f"/v1/networks/{n}")


def test_pagination_walks_every_network_once(admin: httpx.Client) -> None:
    made = [_uniq("page") for _ in range(5)]
    for name in made:
        assert admin.post("/v1/networks", json={"name": name, "subnet": _subnet()}).status_code == 201
    try:
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            body = admin.get("/v1/networks", params=params).json()
            assert len(body["items"]) <= 2
            seen += [n["name"] for n in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == seen and set(made) <= set(seen) and len(seen) == len(set(seen))
        doc = _problem(admin.get("/v1/networks", params={"cursor": "!!"}), 400)
        assert doc["errors"][0]["field"] == "query.cursor"
        assert (
            _problem(admin.get("/v1/networks", params={"limit": 0}), 422)["errors"][0]["field"]
            == "query.limit"
        )
    finally:
        for name in made:
            admin.delete(f"/v1/networks/{name}")


def test_endpoints_connect_label_list_disconnect(inside: FabricNode, admin: httpx.Client) -> None:
    net = _uniq("ep")
    assert admin.post("/v1/networks", json={"name": net, "subnet": _subnet()}).status_code == 201
    containers = Containers()
    try:
        popns()  # container namespaces are made from the root namespace, as a runtime would
        try:
            space = containers()
        finally:
            pushns(inside.ns)
        body = {
            "request_id": space,
            "container_id": space,
            "ifname": "eth0",
            "netns": f"/run/netns/{space}",
            "network": net,
            "name": "web1",
            "labels": {"app": "web"},
        }
        r = admin.post("/v1/endpoints", json=body)
        assert r.status_code == 201, r.text
        endpoint = r.json()
        assert endpoint["network"] == net and endpoint["node"] == "n1" and endpoint["addresses"]
        assert admin.post("/v1/endpoints", json=body).json()["endpoint_id"] == endpoint["endpoint_id"]
        got = admin.get(f"/v1/endpoints/{space}/eth0").json()
        assert got["labels"] == {"app": "web"}
        relabeled = admin.put(f"/v1/endpoints/{space}/eth0/labels", json={"app": "api"})
        assert relabeled.status_code == 200 and relabeled.json()["labels"] == {"app": "api"}
        listed = admin.get("/v1/endpoints", params={"network": net}).json()["items"]
        assert [e["container_id"] for e in listed] == [space]
        published = admin.post(
            "/v1/ports", json={"container_id": space, "host_port": 18090, "container_port": 80}
        )
        assert published.status_code in (200, 201), published.text
        port = published.json()
        assert (port["id"], port["source"], port["endpoint_id"]) == (
            "n1.tcp.18090.any",
            "api",
            endpoint["endpoint_id"],
        )
        assert [p["id"] for p in admin.get("/v1/ports").json()["items"]] == [port["id"]]
        clash = admin.post(
            "/v1/ports", json={"container_id": space, "host_port": 18090, "container_port": 81}
        )
        assert _problem(clash, 409)["code"] == "conflict"
        assert admin.delete(f"/v1/ports/{port['id']}").json() == {"existed": True}
        assert admin.delete(f"/v1/endpoints/{space}/eth0").json() == {"existed": True}
        assert admin.get("/v1/endpoints", params={"network": net}).json()["items"] == []
        _problem(admin.get(f"/v1/endpoints/{space}/eth0"), 404)
        missing = admin.post("/v1/endpoints", json={**body, "request_id": "r2", "netns": "/run/netns/nope"})
        assert _problem(missing, 422)["code"] == "invalid"
    finally:
        admin.delete(f"/v1/networks/{net}", params={"force": True})
        containers.close()


def test_policies_json_yaml_explain_and_stale_revision(admin: httpx.Client) -> None:
    net = _uniq("pol")
    assert admin.post("/v1/networks", json={"name": net, "subnet": _subnet()}).status_code == 201
    try:
        spec = {
            "name": "allow-web",
            "network": net,
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}],
        }
        created = admin.post("/v1/policies", json=spec)
        assert created.status_code == 201, created.text
        etag = created.headers["etag"]
        got = admin.get("/v1/policies/allow-web", params={"network": net})
        assert got.json()["endpointSelector"] == {"matchLabels": {"app": "web"}, "matchExpressions": []}
        updated = admin.put(
            "/v1/policies/allow-web", json={**spec, "ingress": []}, headers={"If-Match": etag}
        )
        assert updated.status_code == 200, updated.text
        stale = admin.put("/v1/policies/allow-web", json=spec, headers={"If-Match": etag})
        _problem(stale, 412)
        assert admin.get("/v1/policies/allow-web", params={"network": net}).json()["ingress"] == []
        imported = admin.post(
            "/v1/policies",
            content=_K8S_POLICY,
            headers={"content-type": "application/yaml"},
            params={"network": net},
        )
        assert imported.status_code == 201, imported.text
        assert imported.json()["name"] == "web-allow" and imported.json()["network"] == net
        names = {p["name"] for p in admin.get("/v1/policies", params={"network": net}).json()["items"]}
        assert names == {"allow-web", "web-allow"}
        verdict = admin.post(
            "/v1/policies:explain",
            json={"source": "10.1.0.2", "destination": "10.1.0.3", "protocol": "TCP", "port": 80},
        )
        assert verdict.status_code == 200 and isinstance(verdict.json()["allowed"], bool)
        assert verdict.json()["reason"]
        bad_yaml = admin.post(
            "/v1/policies",
            content="kind: [unclosed",
            headers={"content-type": "application/yaml"},
            params={"network": net},
        )
        assert "document" in _problem(bad_yaml, 422)["detail"]
        assert admin.delete("/v1/policies/allow-web", params={"network": net}).json()["existed"] is True
        assert admin.delete("/v1/policies/web-allow", params={"network": net}).json()["existed"] is True
        assert admin.get("/v1/policies", params={"network": net}).json()["items"] == []
    finally:
        admin.delete(f"/v1/networks/{net}", params={"force": True})


def test_policy_wait_reports_the_nodes_that_enforce_a_revision(admin: httpx.Client) -> None:
    net = _uniq("wait")
    assert admin.post("/v1/networks", json={"name": net, "subnet": _subnet()}).status_code == 201
    try:
        created = admin.post("/v1/policies", json={"name": "waited", "network": net, "ingress": []})
        assert created.status_code == 201, created.text
        revision = created.json()["revision"]
        r = admin.post("/v1/policies:wait", json={"revision": revision, "timeout_s": 10})
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["revision"] == revision and result["complete"] is True
        assert "n1" in result["acked"] and result["pending"] == []
        beyond = admin.post("/v1/policies:wait", json={"revision": revision + 1_000_000, "timeout_s": 1})
        assert _problem(beyond, 422)["detail"].startswith("revision")
        too_long = admin.post("/v1/policies:wait", json={"revision": revision, "timeout_s": 61})
        assert "timeout_s" in _problem(too_long, 422)["detail"]
    finally:
        admin.delete(f"/v1/networks/{net}", params={"force": True})


def test_services_crud(admin: httpx.Client) -> None:
    net = _uniq("svc")
    assert admin.post("/v1/networks", json={"name": net, "subnet": _subnet()}).status_code == 201
    try:
        spec = {"name": "db", "network": net, "endpointSelector": {"matchLabels": {"app": "db"}}}
        created = admin.post("/v1/services", json=spec)
        assert created.status_code == 201, created.text
        got = admin.get("/v1/services/db", params={"network": net})
        assert got.status_code == 200 and got.headers["etag"] == created.headers["etag"]
        assert [s["name"] for s in admin.get("/v1/services", params={"network": net}).json()["items"]] == [
            "db"
        ]
        _problem(
            admin.delete("/v1/services/db", params={"network": net}, headers={"If-Match": '"999999"'}), 412
        )
        assert admin.delete("/v1/services/db", params={"network": net}).json() == {"existed": True}
        _problem(admin.get("/v1/services/db", params={"network": net}), 404)
        _problem(admin.get("/v1/services/db"), 422)  # network is required
    finally:
        admin.delete(f"/v1/networks/{net}", params={"force": True})


def test_published_ports_reach_the_nat_service(admin: httpx.Client) -> None:
    r = admin.get("/v1/ports")
    assert r.status_code == 200, r.text
    missing = admin.post(
        "/v1/ports", json={"container_id": "nobody", "host_port": 18081, "container_port": 80}
    )
    assert missing.status_code in (404, 422), missing.text
    assert admin.delete("/v1/ports/n1.tcp.18081.any").json() == {"existed": False}


# ---------------------------------------------------------------------- events


def test_sse_delivers_an_event_caused_by_another_call(
    inside: FabricNode, clients: dict[str, httpx.Client]
) -> None:
    name = _uniq("sse")
    with clients["viewer"].stream("GET", "/v1/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.iter_lines()
        assert next(lines) == ": subscribed"
        assert (
            clients["operator"].post("/v1/networks", json={"name": name, "subnet": _subnet()}).status_code
            == 201
        )
        event = _next_event(lines, "qnf.v1.evt.vnet.network.created")
        while event["data"]["network"]["name"] != name:
            event = _next_event(lines, "qnf.v1.evt.vnet.network.created")
    assert event["sender"] == "spiffe://qnf.local/node/n1/vnet"
    # Resume: everything after a sequence, again (Last-Event-ID).
    with clients["viewer"].stream(
        "GET", "/v1/events", headers={"Last-Event-ID": str(event["seq"] - 1)}
    ) as again:
        replay = _next_event(again.iter_lines(), "qnf.v1.evt.vnet.network.created")
        assert replay["seq"] == event["seq"]
    clients["admin"].delete(f"/v1/networks/{name}")


# ---------------------------------------------------------------------- bad input


def test_bad_input_is_a_problem_naming_the_field_and_changes_nothing(admin: httpx.Client) -> None:
    before = admin.get("/v1/networks", params={"limit": 1000}).json()
    name = _uniq("bad")
    cases = [
        (
            admin.post("/v1/networks", content=b"{not json", headers={"content-type": "application/json"}),
            400,
            None,
        ),
        (
            admin.post("/v1/networks", json={"name": name, "subnet": _subnet(), "colour": "red"}),
            422,
            "body.colour",
        ),
        (admin.post("/v1/networks", json={"name": name, "subnet": _subnet(), "mtu": "big"}), 422, "body.mtu"),
        (admin.post("/v1/networks", json={"name": name, "subnet": "10.0.0.0/33"}), 422, "body.subnet"),
        (admin.post("/v1/networks", json={"name": "UPPER", "subnet": _subnet()}), 422, "body.name"),
        (admin.post("/v1/networks", json=[1, 2]), 422, "body"),
        (admin.patch(f"/v1/networks/{name}", json={"mtu": 10}), 422, "body.mtu"),
        (admin.get("/v1/networks/Not_A_Name"), 422, "path.name"),
        (admin.post("/v1/policies", content=b"{", headers={"content-type": "application/json"}), 400, "body"),
        (admin.post("/v1/policies", json={"name": "p", "ingress": "all"}), 422, "body.ingress"),
        (admin.post("/v1/policies", content=b"x", headers={"content-type": "text/plain"}), 415, None),
        (admin.post("/v1/tokens", json={"name": "t", "role": "root"}), 422, "body.role"),
    ]
    for r, status, field in cases:
        doc = _problem(r, status)
        if field is not None:
            assert field in [e["field"] for e in doc["errors"]], (field, doc)
    huge = {"name": name, "subnet": _subnet(), "labels": {f"k{i}": "v" * 60 for i in range(2000)}}
    _problem(admin.post("/v1/networks", json=huge), 413)

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "' + name.encode() + b'", "labels": {'
        for i in range(2000):
            yield f'"k{i}": "{"v" * 60}", '.encode()
        yield b'"z": "z"}}'

    streamed = admin.post("/v1/networks", content=chunks(), headers={"content-type": "application/json"})
    _problem(streamed, 413)
    assert admin.get("/v1/networks", params={"limit": 1000}).json() == before


def test_a_stopped_service_behind_is_503_quickly_not_a_hang(inside: FabricNode, admin: httpx.Client) -> None:
    pids = inside.service_pids("dns")
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = admin.get("/v1/services")
        took = time.monotonic() - started
        doc = _problem(r, 503)
        assert doc["code"] == "unavailable" and int(r.headers["retry-after"]) >= 1
        assert took < 5 + 1.5  # the bus timeout (QNF_REQUEST_TIMEOUT_S=5) bounds it
        assert admin.get("/v1/networks").status_code == 200  # other services unaffected
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


# ---------------------------------------------------------------------- schemathesis


def test_schemathesis_no_5xx_and_responses_conform(inside: FabricNode, admin: httpx.Client) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    doc = admin.get("/openapi.json").json()
    doc["servers"] = [{"url": BASE}]
    schema = schemathesis.openapi.from_dict(doc)
    headers = {"Authorization": admin.headers["authorization"]}
    ca = str(inside.state / "pki" / "ca.crt")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        if operation.path == "/v1/events":
            continue  # an endless stream; tested above

        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate(base_url=BASE, headers=headers, verify=ca, checks=checks, timeout=15)

        run()
        ran += 1
    assert ran >= 20


# ---------------------------------------------------------------------- the qnf command line


def _qnf(fabric: FabricNode, token: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Runs in the node namespace: a child inherits the namespace this test thread entered.
    env = {**os.environ, "QNF_URL": BASE, "QNF_TOKEN": token, "QNF_CA": str(fabric.state / "pki" / "ca.crt")}
    proc = subprocess.run([str(QNF), *args], capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


QNF = Path(sys.executable).parent / "qnf"


def test_cli_drives_the_api(inside: FabricNode, admin: httpx.Client, tmp_path: Path) -> None:
    root = admin.headers["authorization"].split()[1]
    operator = _qnf(inside, root, "token", "create", "cli-op", "--role", "operator").stdout.strip()
    assert tokens.parse(operator) is not None
    net = _uniq("cli")
    table = _qnf(
        inside, operator, "network", "create", net, "--subnet", _subnet(), "--label", "env=test"
    ).stdout
    assert table.splitlines()[0].split()[:2] == ["NAME", "SUBNET"] and net in table
    listed = json.loads(_qnf(inside, operator, "network", "ls", "-o", "json").stdout)
    assert net in [n["name"] for n in listed]
    assert json.loads(_qnf(inside, operator, "network", "inspect", net).stdout)["labels"] == {"env": "test"}
    bad = _qnf(inside, operator, "network", "create", _uniq("x"), "--subnet", "10.0.0.0/99", check=False)
    assert bad.returncode == 1 and "body.subnet" in bad.stderr and "422" in bad.stderr

    follow = subprocess.Popen(
        [str(QNF), "events", "-o", "json"],
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "QNF_URL": BASE,
            "QNF_TOKEN": operator,
            "QNF_CA": str(inside.state / "pki" / "ca.crt"),
        },
    )
    try:
        time.sleep(1.5)  # the follower subscribes
        policy = tmp_path / "p.yaml"
        policy.write_text(_K8S_POLICY)
        applied = _qnf(inside, operator, "policy", "apply", "-f", str(policy), "--network", net).stdout
        assert "web-allow" in applied
        assert _qnf(inside, operator, "policy", "apply", "-f", str(policy), "--network", net).returncode == 0
        spec = tmp_path / "p.json"
        spec.write_text(json.dumps({"name": "json-pol", "network": net, "ingress": [{}]}))
        _qnf(inside, operator, "policy", "apply", "-f", str(spec))
        spec.write_text(json.dumps({"name": "json-pol", "network": net, "ingress": []}))
        waited = _qnf(inside, operator, "policy", "apply", "-f", str(spec), "--wait", "10").stdout
        assert "json-pol" in waited and "enforced on n1" in waited  # exists: updated, then waited for
        revision = json.loads(_qnf(inside, operator, "policy", "get", "json-pol", "--network", net).stdout)[
            "revision"
        ]
        done = json.loads(_qnf(inside, operator, "policy", "wait", str(revision), "-o", "json").stdout)
        assert done["complete"] is True and "n1" in done["acked"]
        beyond = _qnf(inside, operator, "policy", "wait", str(revision + 1_000_000), check=False)
        assert beyond.returncode == 1 and "422" in beyond.stderr and "revision" in beyond.stderr
        got = json.loads(_qnf(inside, operator, "policy", "get", "json-pol", "--network", net).stdout)
        assert got["ingress"] == []
        assert "web-allow" in _qnf(inside, operator, "policy", "ls", "--network", net).stdout
        verdict = _qnf(
            inside, operator, "policy", "explain", "--from", "10.1.0.2", "--to", "10.1.0.3", "--port", "80"
        )
        assert verdict.stdout.startswith(("ALLOWED", "DENIED"))
        _qnf(inside, operator, "service", "create", "db", "--network", net, "--selector", "app=db")
        assert "db" in _qnf(inside, operator, "service", "ls", "--network", net).stdout
        assert "removed" in _qnf(inside, operator, "service", "rm", "db", "--network", net).stdout
        assert "removed" in _qnf(inside, operator, "policy", "rm", "web-allow", "--network", net).stdout
        _qnf(inside, operator, "policy", "rm", "json-pol", "--network", net)
        assert _qnf(inside, operator, "endpoint", "ls").stdout.startswith("CONTAINER")
        # The operator may not manage tokens; the admin may.
        denied = _qnf(inside, operator, "token", "ls", check=False)
        assert denied.returncode == 1 and "403" in denied.stderr
        op_id = operator.split("_")[1]
        assert op_id in _qnf(inside, root, "token", "ls").stdout
        assert "removed" in _qnf(inside, operator, "network", "rm", net).stdout
        line = ""
        deadline = time.monotonic() + 10
        assert follow.stdout is not None
        while time.monotonic() < deadline:
            line = follow.stdout.readline()
            if '"qnf.v1.evt.vnet.network.deleted"' in line and net in line:
                break
        assert net in line, "qnf events did not show the network's deletion"
    finally:
        follow.terminate()
        follow.wait(10)
        if follow.stdout is not None:
            follow.stdout.close()
    assert "revoked" in _qnf(inside, root, "token", "revoke", op_id).stdout
    assert _qnf(inside, operator, "network", "ls", check=False).returncode == 1
