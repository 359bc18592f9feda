"""The gRPC mapping without I/O: stubs up to date, every operation served, proto ↔ model fidelity."""

from __future__ import annotations

import subprocess
import typing
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic import BaseModel

from libs.common.errors import InvalidRequest
from libs.common.messages import FabricEvent, Policy, PolicySpec, PolicyWait
from services.gateway import grpc_mapping
from services.gateway.core.operations import OPERATIONS
from services.gateway.proto.qnf.v1 import fabric_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("fabric_pb2.py", "fabric_pb2.pyi", "fabric_pb2_grpc.py")


def test_committed_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "gen-proto"), str(tmp_path)], check=True, timeout=60)
    here = ROOT / "services/gateway/proto/qnf/v1"
    fresh = tmp_path / "services/gateway/proto/qnf/v1"
    stale = [n for n in GENERATED if (fresh / n).read_bytes() != (here / n).read_bytes()]
    assert stale == [], f"run scripts/gen-proto and commit: {stale} differ from fabric.proto"


def test_every_rpc_has_a_handler_and_every_operation_an_rpc() -> None:
    rpcs = set(pb.DESCRIPTOR.services_by_name["Fabric"].methods_by_name)
    assert rpcs == set(grpc_mapping.METHODS) | {grpc_mapping.WATCH_EVENTS}
    assert {m.op for m in grpc_mapping.METHODS.values()} == set(OPERATIONS)


def _model_of(annotation: typing.Any) -> type[BaseModel] | None:
    """The model in `annotation` (itself, or inside list[...], dict[str, ...], ... | None)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        inner = _model_of(arg)
        if inner is not None:
            return inner
    return None


def _missing(model: type[BaseModel], desc: Descriptor, path: str) -> list[str]:
    names = {f.name: f for f in desc.fields} | {f.json_name: f for f in desc.fields}
    out = []
    for name, info in model.model_fields.items():
        proto = names.get(name) or names.get(info.alias or "")
        if proto is None and name == "port":  # PolicyPort: oneof port | port_name
            proto = names.get("port_name")
        if proto is None:
            out.append(f"{path}{name}")
            continue
        inner = _model_of(info.annotation)
        if inner is not None and proto.type == FieldDescriptor.TYPE_MESSAGE:
            target = proto.message_type
            if target.GetOptions().map_entry:
                target = target.fields_by_name["value"].message_type
            if target is not None and target.full_name != "google.protobuf.Struct":
                out += _missing(inner, target, f"{path}{name}.")
    return out


@pytest.mark.parametrize("rpc", sorted(grpc_mapping.METHODS))
def test_every_reply_field_has_a_proto_field(rpc: str) -> None:
    method = grpc_mapping.METHODS[rpc]
    model = method.operation.reply
    desc = grpc_mapping.message_classes(rpc)[1].DESCRIPTOR
    if method.items is not None:
        model = _model_of(model.model_fields[method.items].annotation)  # type: ignore[assignment]
        desc = desc.fields_by_name[method.items].message_type
    assert _missing(model, desc, "") == []


def test_unset_optional_fields_take_the_model_defaults_and_set_ones_are_kept() -> None:
    create = grpc_mapping.METHODS["CreateNetwork"]
    call = grpc_mapping.to_call(create, pb.NetworkSpec(name="blue", subnet="10.1.0.0/24"))
    assert call.request.model_dump(include={"mtu", "nat", "isolation"}) == {
        "mtu": 1500,
        "nat": True,
        "isolation": "zero-trust",
    }
    call = grpc_mapping.to_call(
        create, pb.NetworkSpec(name="blue", subnet="10.1.0.0/24", nat=False, mtu=1400)
    )
    assert call.request.model_dump(include={"mtu", "nat"}) == {"mtu": 1400, "nat": False}


def test_wait_policy_leaves_the_timeout_to_the_model_unless_set() -> None:
    wait = grpc_mapping.METHODS["WaitPolicy"]
    assert grpc_mapping.to_call(wait, pb.WaitPolicyRequest(revision=9)).request == PolicyWait(revision=9)
    call = grpc_mapping.to_call(wait, pb.WaitPolicyRequest(revision=9, timeout_s=0.5))
    assert call.request == PolicyWait(revision=9, timeout_s=0.5) and call.precondition is None


def test_update_labels_absent_differs_from_empty_and_revision_is_the_precondition() -> None:
    update = grpc_mapping.METHODS["UpdateNetwork"]
    absent = grpc_mapping.to_call(update, pb.UpdateNetworkRequest(name="blue", mtu=1400))
    assert absent.request.labels is None and absent.precondition is None  # type: ignore[attr-defined]
    emptied = pb.UpdateNetworkRequest(name="blue", revision=7)
    emptied.labels.SetInParent()
    call = grpc_mapping.to_call(update, emptied)
    assert call.request.labels == {} and call.precondition == 7  # type: ignore[attr-defined]


def test_policy_round_trips_with_named_and_numbered_ports_and_except() -> None:
    policy = Policy.model_validate(
        {
            "name": "web",
            "network": "blue",
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {
                    "peers": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                    "ports": [
                        {"protocol": "TCP", "port": 80},
                        {"port": "http"},
                        {"port": 1000, "endPort": 2000},
                    ],
                }
            ],
            "revision": 5,
            "created_ms": 1,
        }
    )
    method = grpc_mapping.METHODS["GetPolicy"]
    message = grpc_mapping.to_reply(method, grpc_mapping.Call(PolicySpec(name="x")), policy, pb.Policy)
    ports = message.ingress[0].ports  # type: ignore[attr-defined]
    assert ports[0].port == 80 and ports[1].port_name == "http" and ports[2].end_port == 2000
    assert list(getattr(message.ingress[0].peers[0].ip_block, "except")) == ["10.1.0.0/16"]  # type: ignore[attr-defined]
    # And back: the same message as a create request gives the same spec.
    spec = pb.PolicySpec()
    spec.ParseFromString(message.SerializeToString())  # Policy's fields 1-10 are PolicySpec's
    call = grpc_mapping.to_call(grpc_mapping.METHODS["CreatePolicy"], spec)
    assert call.request == PolicySpec.model_validate(policy.model_dump(exclude={"revision", "created_ms"}))


@pytest.mark.parametrize(
    ("rpc", "message", "field"),
    [
        ("CreateNetwork", pb.NetworkSpec(name="blue", subnet="10.0.0.0/33"), "subnet:"),
        ("CreateNetwork", pb.NetworkSpec(name="Blue", subnet="10.0.0.0/24"), "name:"),
        ("CreateNetwork", pb.NetworkSpec(name="blue"), "subnet:"),
        ("CreateNetwork", pb.NetworkSpec(name="blue", subnet="10.0.0.0/24", isolation="open"), "isolation:"),
        ("UpdatePolicy", pb.UpdatePolicyRequest(policy=pb.PolicySpec(name="P")), "policy.name:"),
        ("CreateToken", pb.CreateTokenRequest(name="t", role="root"), "role:"),
        (
            "ConnectEndpoint",
            pb.ConnectEndpointRequest(request_id="r", container_id="c", ifname="eth0", network="blue"),
            "netns:",
        ),
        ("ListEndpoints", pb.ListEndpointsRequest(endpoint_node="x" * 300, page_size=5000), "page_size:"),
        ("ExplainFlow", pb.FlowQuery(source="10.0.0.1", destination="nowhere"), "destination:"),
        ("WaitPolicy", pb.WaitPolicyRequest(), "revision:"),
        ("WaitPolicy", pb.WaitPolicyRequest(revision=1, timeout_s=0), "timeout_s:"),
    ],
)
def test_invalid_requests_name_the_field(rpc: str, message: typing.Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        grpc_mapping.to_call(grpc_mapping.METHODS[rpc], message)
    assert field in caught.value.message


def test_lists_page_with_tokens_and_filter_locally() -> None:
    from libs.common.messages import Service, ServiceList

    method = grpc_mapping.METHODS["ListServices"]
    reply = ServiceList(services=[Service(name=f"s{i}", network="a" if i % 2 else "b") for i in range(5)])
    call = grpc_mapping.to_call(method, pb.ListServicesRequest(network="a", page_size=1))
    first = grpc_mapping.to_reply(method, call, reply, pb.ListServicesResponse)
    assert [s.name for s in first.services] == ["s1"] and first.next_page_token  # type: ignore[attr-defined]
    call = grpc_mapping.to_call(
        method,
        pb.ListServicesRequest(network="a", page_size=1, page_token=first.next_page_token),  # type: ignore[attr-defined]
    )
    second = grpc_mapping.to_reply(method, call, reply, pb.ListServicesResponse)
    assert [s.name for s in second.services] == ["s3"]  # type: ignore[attr-defined]
    bad = grpc_mapping.to_call(method, pb.ListServicesRequest(page_token="!!"))
    with pytest.raises(InvalidRequest, match="page_token"):
        grpc_mapping.to_reply(method, bad, reply, pb.ListServicesResponse)


def test_events_carry_their_body_as_a_struct() -> None:
    event = FabricEvent(
        seq=3, subject="qnf.v1.evt.vnet.network.created", sender="spiffe://x", data={"a": {"b": "c"}}
    )
    message = grpc_mapping.event_message(event)
    assert json_format.MessageToDict(message.data) == {"a": {"b": "c"}} and message.seq == 3
