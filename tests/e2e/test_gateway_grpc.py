"""The gRPC gateway against the running fabric: real processes, real bus, real namespaces.

The fabric runs in a node namespace (module scope). grpcio opens its sockets on its own threads,
which stay in the root namespace whatever the calling thread does, so the test reaches the
gateway's port on the node's loopback through a relay: a unix socket (a file, reachable from any
namespace) served by a thread that entered the node namespace. TLS runs end to end through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pyroute2.netns import popns, pushns

from libs.common.bus import Bus
from libs.common.config import load_settings
from libs.common.ids import SpiffeId
from libs.common.messages import TokenRecord
from libs.common.testing import Containers, FabricNode, fabric_on_new_node
from services.gateway import grpc_mapping
from services.gateway.core import tokens
from services.gateway.core.operations import role_allows
from services.gateway.proto.qnf.v1 import fabric_pb2 as pb
from services.gateway.proto.qnf.v1 import fabric_pb2_grpc as pb_grpc

PORT = 8481
ENV = {
    "QNF_REQUEST_TIMEOUT_S": "2",
    "QNF_GATEWAY_RATE_PER_S": "1000",
    "QNF_GATEWAY_RATE_BURST": "2000",
}
Code = grpc.StatusCode


class Relay:
    """unix socket → 127.0.0.1:`port` inside namespace `ns`, on a thread of its own."""

    def __init__(self, ns: str, port: int, path: Path) -> None:
        self.ns, self.port, self.path = ns, port, path
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "relay did not start"

    def _run(self) -> None:
        pushns(self.ns)  # this thread only: its sockets to the gateway are made in the node
        try:
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(asyncio.start_unix_server(self._pipe, str(self.path)))
            self._ready.set()
            self._loop.run_forever()
            server.close()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()
        finally:
            popns()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.close()
            return

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricNode]:
    with fabric_on_new_node(tmp_path_factory.mktemp("grpc") / "state", env=ENV) as node:
        yield node


@pytest.fixture(scope="module")
def target(fabric: FabricNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    relay = Relay(fabric.ns, PORT, tmp_path_factory.mktemp("relay") / "grpc.sock")
    try:
        yield f"unix:{relay.path}"
    finally:
        relay.close()


def _channel(fabric: FabricNode, target: str) -> grpc.Channel:
    ca = (fabric.state / "pki" / "ca.crt").read_bytes()
    # Through the relay the target is a file; the certificate names the node's loopback.
    options = [("grpc.ssl_target_name_override", "127.0.0.1")]
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca), options=options)


@pytest.fixture(scope="module")
def channel(fabric: FabricNode, target: str) -> Iterator[grpc.Channel]:
    with _channel(fabric, target) as ch:
        # The banner comes once every service answers the bus; the API may still be starting.
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


class Api:
    """The Fabric stub with one caller's token in every call's metadata."""

    def __init__(self, channel: grpc.Channel, token: str | None) -> None:
        self.stub = pb_grpc.FabricStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __getattr__(self, rpc: str) -> Any:
        method = getattr(self.stub, rpc)
        return lambda request, **kw: method(request, metadata=self.metadata, timeout=15, **kw)


def _code(call: Any) -> tuple[Code, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details())
    return Code.OK, ""


@pytest.fixture(scope="module")
def admin(fabric: FabricNode, channel: grpc.Channel) -> Api:
    return Api(channel, (fabric.state / "gateway" / "admin.token").read_text().strip())


@pytest.fixture(scope="module")
def apis(admin: Api, channel: grpc.Channel) -> dict[str, Api]:
    made = {r: Api(channel, _token(admin, r)) for r in ("viewer", "operator")}
    return {**made, "admin": admin}


def _token(admin: Api, role: str) -> str:
    return str(admin.CreateToken(pb.CreateTokenRequest(name=f"grpc-{role}", role=role, ttl_s=3600)).token)


def _uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


_subnets = iter(range(1, 250))


def _subnet() -> str:
    return f"10.{150 + os.getpid() % 50}.{next(_subnets)}.0/24"


# ---------------------------------------------------------------------- probes


def test_health_and_reflection_answer(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "qnf.v1.Fabric"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    asks = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="qnf.v1.Fabric"),
    ]
    listed, files = list(reflect.ServerReflectionInfo(iter(asks), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"qnf.v1.Fabric", "grpc.health.v1.Health"} <= names
    assert files.file_descriptor_response.file_descriptor_proto  # the .proto, for grpcurl and friends


# ---------------------------------------------------------------------- authentication


def test_no_token_wrong_token_and_garbage_are_unauthenticated(
    fabric: FabricNode, target: str, admin: Api
) -> None:
    good = _token(admin, "viewer")
    wrong = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    with _channel(fabric, target) as ch:
        stub = pb_grpc.FabricStub(ch)
        for metadata in [
            (),
            (("authorization", f"Bearer {wrong}"),),
            (("authorization", "Bearer qnf_garbage"),),
            (("authorization", "Basic YTpi"),),
            (("authorization", "Bearer "),),
        ]:
            code, details = _code(lambda m=metadata: stub.ListNetworks(pb.ListNetworksRequest(), metadata=m))
            assert code is Code.UNAUTHENTICATED, (metadata, code, details)
        code, _ = _code(lambda: list(stub.WatchEvents(pb.WatchEventsRequest(), timeout=5)))
        assert code is Code.UNAUTHENTICATED
        ok = stub.ListNetworks(pb.ListNetworksRequest(), metadata=(("authorization", f"Bearer {good}"),))
        assert isinstance(ok, pb.ListNetworksResponse)


def test_expired_and_revoked_tokens_are_refused(
    fabric: FabricNode, channel: grpc.Channel, admin: Api
) -> None:
    text = _token(admin, "viewer")
    viewer = Api(channel, text)
    viewer.ListNetworks(pb.ListNetworksRequest())
    token_id = text.split("_")[1]
    listed = {t.id: t for t in admin.ListTokens(pb.ListTokensRequest(page_size=1000)).tokens}
    assert listed[token_id].role == "viewer" and not listed[token_id].HasField("revoked_ms")
    assert admin.RevokeToken(pb.RevokeTokenRequest(id=token_id)).existed
    assert _code(lambda: viewer.ListNetworks(pb.ListNetworksRequest()))[0] is Code.UNAUTHENTICATED
    listed = {t.id: t for t in admin.ListTokens(pb.ListTokensRequest(page_size=1000)).tokens}
    assert listed[token_id].HasField("revoked_ms")
    # An expired token as it sits in the store once its time has passed (written as the gateway,
    # the bucket's owner: the API does not make tokens that are already expired).
    expired, record = tokens.generate(
        name="old", role="admin", ttl_s=60, created_by="test", now_ms=int(time.time() * 1000) - 120_000
    )
    _put_token(fabric, record)
    assert (
        _code(lambda: Api(channel, expired).ListNetworks(pb.ListNetworksRequest()))[0] is Code.UNAUTHENTICATED
    )


def _put_token(fabric: FabricNode, record: TokenRecord) -> None:
    async def put() -> None:
        settings = load_settings(state_dir=fabric.state)
        bus = await Bus.connect_as(
            settings, SpiffeId.service(settings.trust_domain, "gateway"), service="test"
        )
        try:
            await (await bus.kv("qnf-tokens", TokenRecord)).create(record.id, record)
        finally:
            await bus.close()

    pushns(fabric.ns)  # nats-py's sockets are the calling thread's
    try:
        asyncio.run(put())
    finally:
        popns()


# ---------------------------------------------------------------------- role matrix

_K8S_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: NAME
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


def _request_for(rpc: str, net: str) -> Any:
    """A request that exercises `rpc` without lasting effect (names that do not exist, etc.)."""
    ghost = "ghost-" + uuid.uuid4().hex[:6]
    return {
        "CreateNetwork": lambda: pb.NetworkSpec(name=ghost, subnet=_subnet()),
        "GetNetwork": lambda: pb.GetNetworkRequest(name=net),
        "ListNetworks": lambda: pb.ListNetworksRequest(),
        "UpdateNetwork": lambda: pb.UpdateNetworkRequest(name=net, labels=pb.LabelSet(labels={"t": "y"})),
        "DeleteNetwork": lambda: pb.DeleteNetworkRequest(name=ghost),
        "ConnectEndpoint": lambda: pb.ConnectEndpointRequest(
            request_id=ghost, container_id=ghost, ifname="eth0", netns="/run/netns/none", network=net
        ),
        "GetEndpoint": lambda: pb.GetEndpointRequest(container_id=ghost, ifname="eth0"),
        "ListEndpoints": lambda: pb.ListEndpointsRequest(),
        "SetEndpointLabels": lambda: pb.SetEndpointLabelsRequest(container_id=ghost, ifname="eth0"),
        "DisconnectEndpoint": lambda: pb.DisconnectEndpointRequest(container_id=ghost, ifname="eth0"),
        "CreatePolicy": lambda: pb.PolicySpec(name=ghost, network=net),
        "ImportPolicy": lambda: pb.ImportPolicyRequest(
            document=_K8S_POLICY.replace("NAME", ghost), network=net
        ),
        "GetPolicy": lambda: pb.GetPolicyRequest(name=ghost, network=net),
        "ListPolicies": lambda: pb.ListPoliciesRequest(),
        "UpdatePolicy": lambda: pb.UpdatePolicyRequest(policy=pb.PolicySpec(name=ghost, network=net)),
        "DeletePolicy": lambda: pb.DeletePolicyRequest(name=ghost, network=net),
        "ExplainFlow": lambda: pb.FlowQuery(
            source="10.1.0.2", destination="10.1.0.3", protocol="TCP", port=80
        ),
        "WaitPolicy": lambda: pb.WaitPolicyRequest(revision=1, timeout_s=0.5),
        "CreateService": lambda: pb.ServiceSpec(name=ghost, network=net),
        "GetService": lambda: pb.GetServiceRequest(name=ghost, network=net),
        "ListServices": lambda: pb.ListServicesRequest(),
        "DeleteService": lambda: pb.DeleteServiceRequest(name=ghost, network=net),
        "PublishPort": lambda: pb.PublishPortRequest(container_id=ghost, host_port=18080, container_port=80),
        "ListPublishedPorts": lambda: pb.ListPublishedPortsRequest(),
        "UnpublishPort": lambda: pb.UnpublishPortRequest(id=f"n1.tcp.18080.{ghost}"),
        "CreateToken": lambda: pb.CreateTokenRequest(name=ghost, role="viewer"),
        "ListTokens": lambda: pb.ListTokensRequest(),
        "RevokeToken": lambda: pb.RevokeTokenRequest(id=uuid.uuid4().hex[:16]),
    }[rpc]()


def test_role_matrix_every_role_times_every_method(apis: dict[str, Api]) -> None:
    net = _uniq("matrix")
    apis["admin"].CreateNetwork(pb.NetworkSpec(name=net, subnet=_subnet()))
    refused = {Code.UNAUTHENTICATED, Code.PERMISSION_DENIED, Code.INTERNAL, Code.UNKNOWN, Code.UNIMPLEMENTED}
    try:
        for rpc, method in grpc_mapping.METHODS.items():
            for role, api in apis.items():
                code, details = _code(lambda r=rpc, a=api: getattr(a, r)(_request_for(r, net)))
                if role_allows(role, method.operation.role):  # type: ignore[arg-type]
                    assert code not in refused, f"{role} {rpc}: {code} {details}"
                else:
                    assert code is Code.PERMISSION_DENIED, f"{role} {rpc}: {code} {details}"
                    assert method.operation.role in details
        stream = apis["viewer"].WatchEvents(pb.WatchEventsRequest())
        assert dict(stream.initial_metadata()).get("qnf-subscribed") == "1"  # the viewer may watch
        stream.cancel()
    finally:
        admin = apis["admin"]
        for n in admin.ListNetworks(pb.ListNetworksRequest(page_size=1000)).networks:
            if n.name.startswith(("ghost-", "matrix-")):
                admin.DeleteNetwork(pb.DeleteNetworkRequest(name=n.name, force=True))


# ---------------------------------------------------------------------- resources


def test_networks_crud_pages_and_stale_revision(admin: Api) -> None:
    name = _uniq("net")
    spec = pb.NetworkSpec(name=name, subnet=_subnet(), labels={"team": "a"}, nat=False)
    created = admin.CreateNetwork(spec)
    assert created.revision > 0 and created.nat is False and created.mtu == 1500 and created.bridge
    assert admin.CreateNetwork(spec).name == name  # a retried create is idempotent
    got = admin.GetNetwork(pb.GetNetworkRequest(name=name))
    assert dict(got.labels) == {"team": "a"} and got.gateway
    changed = admin.UpdateNetwork(
        pb.UpdateNetworkRequest(name=name, labels=pb.LabelSet(labels={"team": "b"}), revision=got.revision)
    )
    assert dict(changed.labels) == {"team": "b"} and changed.revision > got.revision
    code, details = _code(
        lambda: admin.UpdateNetwork(pb.UpdateNetworkRequest(name=name, mtu=1400, revision=got.revision))
    )
    assert code is Code.FAILED_PRECONDITION, details
    assert admin.GetNetwork(pb.GetNetworkRequest(name=name)).mtu == 1500  # the stale write changed nothing
    code, _ = _code(lambda: admin.DeleteNetwork(pb.DeleteNetworkRequest(name=name, revision=got.revision)))
    assert code is Code.FAILED_PRECONDITION
    # Pages: every network once, in order.
    more = [_uniq("page") for _ in range(3)]
    for n in more:
        admin.CreateNetwork(pb.NetworkSpec(name=n, subnet=_subnet()))
    seen, token = [], ""
    while True:
        page = admin.ListNetworks(pb.ListNetworksRequest(page_size=2, page_token=token))
        assert len(page.networks) <= 2
        seen += [n.name for n in page.networks]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == seen and {name, *more} <= set(seen) and len(seen) == len(set(seen))
    for n in more:
        admin.DeleteNetwork(pb.DeleteNetworkRequest(name=n))
    assert admin.DeleteNetwork(pb.DeleteNetworkRequest(name=name, revision=changed.revision)).existed
    assert _code(lambda: admin.GetNetwork(pb.GetNetworkRequest(name=name)))[0] is Code.NOT_FOUND
    assert not admin.DeleteNetwork(pb.DeleteNetworkRequest(name=name)).existed


def test_endpoints_connect_label_list_disconnect(admin: Api) -> None:
    net = _uniq("ep")
    admin.CreateNetwork(pb.NetworkSpec(name=net, subnet=_subnet()))
    containers = Containers()
    try:
        space = containers()
        request = pb.ConnectEndpointRequest(
            request_id=space,
            container_id=space,
            ifname="eth0",
            netns=f"/run/netns/{space}",
            network=net,
            name="web1",
            labels={"app": "web"},
        )
        endpoint = admin.ConnectEndpoint(request)
        assert endpoint.network == net and endpoint.node == "n1" and endpoint.addresses
        assert admin.ConnectEndpoint(request).endpoint_id == endpoint.endpoint_id  # retried: same
        got = admin.GetEndpoint(pb.GetEndpointRequest(container_id=space, ifname="eth0"))
        assert dict(got.labels) == {"app": "web"} and got.identity.startswith("spiffe://")
        relabeled = admin.SetEndpointLabels(
            pb.SetEndpointLabelsRequest(container_id=space, ifname="eth0", labels={"app": "api"})
        )
        assert dict(relabeled.labels) == {"app": "api"}
        listed = admin.ListEndpoints(pb.ListEndpointsRequest(network=net)).endpoints
        assert [e.container_id for e in listed] == [space]
        assert admin.ListEndpoints(pb.ListEndpointsRequest(network=net, endpoint_node="n2")).endpoints == []
        assert admin.DisconnectEndpoint(
            pb.DisconnectEndpointRequest(container_id=space, ifname="eth0")
        ).existed
        assert list(admin.ListEndpoints(pb.ListEndpointsRequest(network=net)).endpoints) == []
        code, _ = _code(lambda: admin.GetEndpoint(pb.GetEndpointRequest(container_id=space, ifname="eth0")))
        assert code is Code.NOT_FOUND
        code, _ = _code(
            lambda: admin.GetEndpoint(
                pb.GetEndpointRequest(container_id=space, ifname="eth0", node="nowhere")
            )
        )
        assert code in (Code.NOT_FOUND, Code.UNAVAILABLE)
    finally:
        admin.DeleteNetwork(pb.DeleteNetworkRequest(name=net, force=True))
        containers.close()


def test_policies_create_import_explain_update_stale_delete(admin: Api) -> None:
    net = _uniq("pol")
    admin.CreateNetwork(pb.NetworkSpec(name=net, subnet=_subnet()))
    try:
        spec = pb.PolicySpec(
            name="allow-web",
            network=net,
            endpoint_selector=pb.LabelSelector(match_labels={"app": "web"}),
            ingress=[
                pb.PolicyRule(ports=[pb.PolicyPort(protocol="TCP", port=80), pb.PolicyPort(port_name="http")])
            ],
        )
        created = admin.CreatePolicy(spec)
        assert created.revision > 0 and created.ingress[0].ports[1].port_name == "http"
        got = admin.GetPolicy(pb.GetPolicyRequest(name="allow-web", network=net))
        assert dict(got.endpoint_selector.match_labels) == {"app": "web"}
        assert got.ingress[0].ports[0].port == 80
        emptied = pb.PolicySpec()
        emptied.CopyFrom(spec)
        del emptied.ingress[:]
        updated = admin.UpdatePolicy(pb.UpdatePolicyRequest(policy=emptied, revision=created.revision))
        assert list(updated.ingress) == []
        code, _ = _code(
            lambda: admin.UpdatePolicy(pb.UpdatePolicyRequest(policy=spec, revision=created.revision))
        )
        assert code is Code.FAILED_PRECONDITION
        assert list(admin.GetPolicy(pb.GetPolicyRequest(name="allow-web", network=net)).ingress) == []
        imported = admin.ImportPolicy(
            pb.ImportPolicyRequest(document=_K8S_POLICY.replace("NAME", "web-allow"), network=net)
        )
        assert imported.name == "web-allow" and imported.network == net
        names = {p.name for p in admin.ListPolicies(pb.ListPoliciesRequest(network=net)).policies}
        assert names == {"allow-web", "web-allow"}
        verdict = admin.ExplainFlow(
            pb.FlowQuery(source="10.1.0.2", destination="10.1.0.3", protocol="TCP", port=80)
        )
        assert verdict.reason
        code, details = _code(
            lambda: admin.ImportPolicy(pb.ImportPolicyRequest(document="kind: [unclosed", network=net))
        )
        assert code is Code.INVALID_ARGUMENT and "document" in details
        code, _ = _code(
            lambda: admin.DeletePolicy(pb.DeletePolicyRequest(name="web-allow", network=net, revision=1))
        )
        assert code is Code.FAILED_PRECONDITION
        assert admin.DeletePolicy(pb.DeletePolicyRequest(name="allow-web", network=net)).existed
        assert admin.DeletePolicy(pb.DeletePolicyRequest(name="web-allow", network=net)).existed
        assert list(admin.ListPolicies(pb.ListPoliciesRequest(network=net)).policies) == []
    finally:
        admin.DeleteNetwork(pb.DeleteNetworkRequest(name=net, force=True))


def test_wait_policy_reports_the_nodes_that_enforce_a_revision(admin: Api) -> None:
    net = _uniq("wait")
    admin.CreateNetwork(pb.NetworkSpec(name=net, subnet=_subnet()))
    try:
        created = admin.CreatePolicy(pb.PolicySpec(name="waited", network=net))
        result = admin.WaitPolicy(pb.WaitPolicyRequest(revision=created.revision, timeout_s=10))
        assert result.revision == created.revision and result.complete
        assert "n1" in result.acked and list(result.pending) == []
        code, details = _code(
            lambda: admin.WaitPolicy(pb.WaitPolicyRequest(revision=created.revision + 1_000_000, timeout_s=1))
        )
        assert code is Code.INVALID_ARGUMENT and details.startswith("revision"), details
        code, details = _code(
            lambda: admin.WaitPolicy(pb.WaitPolicyRequest(revision=created.revision, timeout_s=61))
        )
        assert code is Code.INVALID_ARGUMENT and details.startswith("timeout_s"), details
    finally:
        admin.DeleteNetwork(pb.DeleteNetworkRequest(name=net, force=True))


def test_services_crud(admin: Api) -> None:
    net = _uniq("svc")
    admin.CreateNetwork(pb.NetworkSpec(name=net, subnet=_subnet()))
    try:
        spec = pb.ServiceSpec(
            name="db",
            network=net,
            endpoint_selector=pb.LabelSelector(match_labels={"app": "db"}),
            ports=[pb.ServicePort(name="pg", port=5432)],
        )
        created = admin.CreateService(spec)
        assert created.revision > 0 and created.ports[0].protocol == "TCP"
        assert admin.GetService(pb.GetServiceRequest(name="db", network=net)).revision == created.revision
        assert [s.name for s in admin.ListServices(pb.ListServicesRequest(network=net)).services] == ["db"]
        code, _ = _code(
            lambda: admin.DeleteService(pb.DeleteServiceRequest(name="db", network=net, revision=999999))
        )
        assert code is Code.FAILED_PRECONDITION
        assert admin.DeleteService(pb.DeleteServiceRequest(name="db", network=net)).existed
        assert (
            _code(lambda: admin.GetService(pb.GetServiceRequest(name="db", network=net)))[0] is Code.NOT_FOUND
        )
    finally:
        admin.DeleteNetwork(pb.DeleteNetworkRequest(name=net, force=True))


def test_published_ports_reach_the_nat_service(admin: Api) -> None:
    assert isinstance(admin.ListPublishedPorts(pb.ListPublishedPortsRequest()), pb.ListPublishedPortsResponse)
    code, details = _code(
        lambda: admin.PublishPort(
            pb.PublishPortRequest(container_id="nobody", host_port=18081, container_port=80)
        )
    )
    assert code in (Code.NOT_FOUND, Code.INVALID_ARGUMENT), details
    assert not admin.UnpublishPort(pb.UnpublishPortRequest(id="n1.tcp.18081.any")).existed


def test_tokens_create_list_revoke(admin: Api, channel: grpc.Channel) -> None:
    issued = admin.CreateToken(pb.CreateTokenRequest(name="ci", role="operator", ttl_s=600))
    assert issued.token.startswith("qnf_") and issued.role == "operator"
    assert issued.expires_ms - issued.created_ms == 600_000
    listed = {t.id: t for t in admin.ListTokens(pb.ListTokensRequest(page_size=1000)).tokens}
    assert listed[issued.id].name == "ci"
    operator = Api(channel, issued.token)
    assert _code(lambda: operator.ListTokens(pb.ListTokensRequest()))[0] is Code.PERMISSION_DENIED
    assert admin.RevokeToken(pb.RevokeTokenRequest(id=issued.id)).existed
    assert not admin.RevokeToken(pb.RevokeTokenRequest(id="0" * 16)).existed


# ---------------------------------------------------------------------- events


def test_watch_events_delivers_an_event_caused_by_another_call(apis: dict[str, Api]) -> None:
    name = _uniq("watch")
    stream = apis["viewer"].WatchEvents(pb.WatchEventsRequest())
    try:
        assert dict(stream.initial_metadata()).get("qnf-subscribed") == "1"  # subscribed: none missed
        apis["operator"].CreateNetwork(pb.NetworkSpec(name=name, subnet=_subnet()))
        event = _next_event(stream, "qnf.v1.evt.vnet.network.created", name)
    finally:
        stream.cancel()
    assert event.sender == "spiffe://qnf.local/node/n1/vnet"
    # Resume after a sequence: the same event again.
    again = apis["viewer"].WatchEvents(pb.WatchEventsRequest(after_seq=event.seq - 1))
    try:
        assert next(again).seq == event.seq
    finally:
        again.cancel()
    apis["admin"].DeleteNetwork(pb.DeleteNetworkRequest(name=name))


def _next_event(stream: Any, subject: str, network: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    for event in stream:
        if event.subject == subject and event.data["network"]["name"] == network:
            return event
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no {subject} event for {network}")


# ---------------------------------------------------------------------- bad input, unavailable


def test_invalid_arguments_name_the_field_and_change_nothing(admin: Api) -> None:
    before = [n.name for n in admin.ListNetworks(pb.ListNetworksRequest(page_size=1000)).networks]
    name = _uniq("bad")
    cases = [
        (lambda: admin.CreateNetwork(pb.NetworkSpec(name=name, subnet="10.0.0.0/33")), "subnet"),
        (lambda: admin.CreateNetwork(pb.NetworkSpec(name="UPPER", subnet=_subnet())), "name"),
        (lambda: admin.CreateNetwork(pb.NetworkSpec(name=name, subnet=_subnet(), mtu=10)), "mtu"),
        (
            lambda: admin.CreateNetwork(pb.NetworkSpec(name=name, subnet=_subnet(), isolation="open")),
            "isolation",
        ),
        (lambda: admin.UpdateNetwork(pb.UpdateNetworkRequest(name=name, mtu=99999)), "mtu"),
        (lambda: admin.CreatePolicy(pb.PolicySpec(name=name, tier="gold")), "tier"),
        (lambda: admin.CreateToken(pb.CreateTokenRequest(name="t", role="root")), "role"),
        (lambda: admin.ListNetworks(pb.ListNetworksRequest(page_size=100000)), "page_size"),
        (lambda: admin.ListNetworks(pb.ListNetworksRequest(page_token="!!")), "page_token"),
        (lambda: next(admin.WatchEvents(pb.WatchEventsRequest(after_seq=-1))), "after_seq"),
    ]
    for call, field in cases:
        code, details = _code(call)
        assert code is Code.INVALID_ARGUMENT, (field, code, details)
        assert details.startswith(field) or f" {field}" in details, (field, details)
    after = [n.name for n in admin.ListNetworks(pb.ListNetworksRequest(page_size=1000)).networks]
    assert after == before


def test_a_stopped_service_behind_is_unavailable_quickly(fabric: FabricNode, admin: Api) -> None:
    pids = fabric.service_pids("dns")
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with contextlib.suppress(grpc.RpcError):
            admin.stub.ListServices.with_call(pb.ListServicesRequest(), metadata=admin.metadata, timeout=15)
            raise AssertionError("ListServices answered while dns was stopped")
        took = time.monotonic() - started
        try:
            admin.stub.ListServices(pb.ListServicesRequest(), metadata=admin.metadata, timeout=15)
        except grpc.RpcError as exc:
            assert exc.code() is Code.UNAVAILABLE
            assert int(dict(exc.trailing_metadata())["retry-after"]) >= 1  # type: ignore[attr-defined]
        assert took < 2 + 1.5  # bounded by the bus timeout (QNF_REQUEST_TIMEOUT_S=2), not a hang
        assert isinstance(admin.ListNetworks(pb.ListNetworksRequest()), pb.ListNetworksResponse)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
