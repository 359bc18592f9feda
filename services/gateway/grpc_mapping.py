"""qnf.v1 proto messages ↔ the gateway's operations and pydantic models: the only place they meet.

The proto (`proto/qnf/v1/fabric.proto`) names its fields as the JSON models do, so conversion is
generic: a request becomes a dict (json_format, proto field names), loses its envelope fields
(`node`, `revision`, `page_size`, `page_token`, local filters) and is validated into the
operation's request model, whose errors name the field; a reply model is dumped as JSON (by
alias: `endpointSelector` is the json_name of `endpoint_selector`) and parsed into the reply
message. What differs per method is in `METHODS`; the two shapes JSON has and proto cannot
(a policy port that is a number or a name; labels whose absence differs from none) are fixed up
here.

Stubs: `scripts/gen-proto` generates `proto/qnf/v1/fabric_pb2*.py` with grpcio-tools; they are
committed, and tests/unit/test_gateway_grpc.py fails when they differ from what the .proto gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage
from pydantic import BaseModel, ValidationError

from libs.common.errors import InvalidRequest
from libs.common.messages import FabricEvent
from services.gateway.core.operations import Operation, operation
from services.gateway.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, BadCursor, paginate
from services.gateway.proto.qnf.v1 import fabric_pb2

SERVICE: Final = "qnf.v1.Fabric"
WATCH_EVENTS: Final = "WatchEvents"


@dataclass(frozen=True)
class Method:
    """One unary RPC: the operation it runs and how its request differs from the model."""

    rpc: str
    op: str
    body: str | None = None  # the request field that holds the model (the rest is envelope)
    precondition: bool = False  # `optional int64 revision` is the caller's precondition
    rename: dict[str, str] = field(default_factory=dict)  # proto field → model field
    defaults: dict[str, Any] = field(default_factory=dict)  # model fields proto cannot leave unset
    items: str | None = None  # a list reply's field: paginated here
    key: Callable[[Any], str] | None = None  # the list's stable order, for page tokens
    filters: tuple[str, ...] = ()  # request fields the gateway filters the list by itself
    default_node: Callable[[dict[str, Any]], str | None] | None = None
    unwrap: tuple[str, ...] = ()  # LabelSet fields: present (possibly empty) or absent

    @property
    def operation(self) -> Operation:
        return operation(self.op)


def _by_name(item: Any) -> str:
    return str(item.name)


def _in_network(item: Any) -> str:
    return f"{item.network or ''}/{item.name}"


_ALL: Final[list[Method]] = [
    Method("CreateNetwork", "network.create"),
    Method("GetNetwork", "network.get"),
    Method("ListNetworks", "network.list", items="networks", key=_by_name),
    Method("UpdateNetwork", "network.update", precondition=True, unwrap=("labels",)),
    Method("DeleteNetwork", "network.delete", precondition=True),
    Method("ConnectEndpoint", "endpoint.add", defaults={"netns": ""}),
    Method("GetEndpoint", "endpoint.get"),
    Method(
        "ListEndpoints",
        "endpoint.list",
        rename={"endpoint_node": "node"},
        items="endpoints",
        key=lambda e: str(e.endpoint_id),
    ),
    Method("SetEndpointLabels", "endpoint.labels", defaults={"labels": {}}),
    Method("DisconnectEndpoint", "endpoint.remove"),
    Method("CreatePolicy", "policy.create"),
    Method("ImportPolicy", "policy.import"),
    Method("GetPolicy", "policy.get"),
    Method("ListPolicies", "policy.list", items="policies", key=_in_network),
    Method("UpdatePolicy", "policy.update", body="policy", precondition=True),
    Method("DeletePolicy", "policy.delete", precondition=True),
    Method("ExplainFlow", "policy.explain"),
    Method("WaitPolicy", "policy.wait"),
    Method("CreateService", "service.create"),
    Method("GetService", "service.get"),
    Method("ListServices", "service.list", items="services", key=_in_network, filters=("network",)),
    Method("DeleteService", "service.delete", precondition=True),
    Method("PublishPort", "port.publish"),
    Method("ListPublishedPorts", "port.list", items="ports", key=lambda p: str(p.id)),
    # A published port's id starts with its node: "<node>.<protocol>.<port>.<address>".
    Method("UnpublishPort", "port.unpublish", default_node=lambda d: str(d.get("id", "")).split(".")[0]),
    Method("CreateToken", "token.create"),
    Method("ListTokens", "token.list", items="tokens", key=lambda t: str(t.id)),
    Method("RevokeToken", "token.revoke", precondition=True),
]

METHODS: Final[dict[str, Method]] = {m.rpc: m for m in _ALL}


def message_classes(rpc: str) -> tuple[type[ProtoMessage], type[ProtoMessage]]:
    """The request and reply message classes of an RPC of qnf.v1.Fabric."""
    desc = fabric_pb2.DESCRIPTOR.services_by_name["Fabric"].methods_by_name[rpc]
    request: type[ProtoMessage] = getattr(fabric_pb2, desc.input_type.name)
    reply: type[ProtoMessage] = getattr(fabric_pb2, desc.output_type.name)
    return request, reply


@dataclass(frozen=True)
class Call:
    """A request message turned into what `Gateway.call` takes, plus list handling."""

    request: BaseModel
    node: str | None = None
    precondition: int | None = None
    page_size: int = DEFAULT_LIMIT
    page_token: str | None = None
    filters: dict[str, Any] = field(default_factory=dict)


def to_call(method: Method, message: ProtoMessage) -> Call:
    """Validate a request message into the operation's request model; InvalidRequest names fields."""
    doc = json_format.MessageToDict(message, preserving_proto_field_name=True)
    node = doc.pop("node", None) if method.operation.scope == "node" else None
    if node is None and method.default_node is not None:
        node = method.default_node(doc) or None
    precondition = int(doc.pop("revision")) if method.precondition and "revision" in doc else None
    page_size, page_token = DEFAULT_LIMIT, None
    if method.items is not None:
        page_size = int(doc.pop("page_size", 0)) or DEFAULT_LIMIT
        page_token = doc.pop("page_token", None)
        if not 1 <= page_size <= MAX_LIMIT:
            raise InvalidRequest(f"page_size: must be between 1 and {MAX_LIMIT}")
    filters = {name: doc.pop(name) for name in method.filters if name in doc}
    prefix = ""
    if method.body is not None:
        prefix = method.body + "."
        doc = doc.get(method.body, {})
    for proto_name, model_name in method.rename.items():
        if proto_name in doc:
            doc[model_name] = doc.pop(proto_name)
    for name, value in method.defaults.items():
        doc.setdefault(name, value)
    for name in method.unwrap:
        if name in doc:
            doc[name] = doc[name].get(name, {})
    _ports_from_proto(doc)
    try:
        request = method.operation.request.model_validate(doc)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc, prefix, method.rename)) from exc
    return Call(request, node, precondition, page_size, page_token, filters)


def describe(exc: ValidationError, prefix: str = "", rename: dict[str, str] | None = None) -> str:
    """'field: problem; ...' for the first few errors, with proto field names."""
    back = {model: proto for proto, model in (rename or {}).items()}
    found: dict[str, str] = {}
    for err in exc.errors():
        # Union members add pydantic's validator names to `loc`; they are not fields.
        loc = [str(p) for p in err.get("loc", ()) if not any(c in str(p) for c in "[(")]
        if loc and loc[0] in back:
            loc[0] = back[loc[0]]
        found.setdefault(prefix + (".".join(loc) or "request"), str(err.get("msg", "invalid")))
    return "; ".join(f"{where}: {msg}" for where, msg in list(found.items())[:10])


def to_reply(method: Method, call: Call, reply: BaseModel, out: type[ProtoMessage]) -> ProtoMessage:
    """The reply message of a model the service returned (a page of it for lists)."""
    if method.items is None or method.key is None:
        return _parse(_dump(reply), out)
    items = [
        item
        for item in getattr(reply, method.items)
        if all(getattr(item, k, None) == v for k, v in call.filters.items())
    ]
    try:
        page, next_token = paginate(items, method.key, limit=call.page_size, cursor=call.page_token)
    except BadCursor as exc:
        raise InvalidRequest("page_token: not a page token returned by this API") from exc
    doc = {method.items: [_dump(item) for item in page], "next_page_token": next_token or ""}
    return _parse(doc, out)


def event_message(event: FabricEvent) -> fabric_pb2.FabricEvent:
    message = fabric_pb2.FabricEvent(seq=event.seq, subject=event.subject, sender=event.sender)
    message.data.update(event.data)
    return message


def _dump(model: BaseModel) -> dict[str, Any]:
    doc = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    _ports_to_proto(doc)
    return doc


def _parse(doc: dict[str, Any], out: type[ProtoMessage]) -> ProtoMessage:
    # A field a service adds before the .proto knows it is dropped rather than failing the call;
    # the unit tests check that every model field has its proto field.
    return json_format.ParseDict(doc, out(), ignore_unknown_fields=True)


def _ports_from_proto(node: Any) -> None:
    """PolicyPort's `port_name` (proto oneof) is JSON's string-valued `port`."""
    if isinstance(node, dict):
        if "port_name" in node:
            node["port"] = node.pop("port_name")
        for value in node.values():
            _ports_from_proto(value)
    elif isinstance(node, list):
        for value in node:
            _ports_from_proto(value)


def _ports_to_proto(node: Any) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("port"), str):
            node["port_name"] = node.pop("port")
        for value in node.values():
            _ports_to_proto(value)
    elif isinstance(node, list):
        for value in node:
            _ports_to_proto(value)
