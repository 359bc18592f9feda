"""The operations table: every resource verb the API offers, who may call it, where it goes.

One entry per verb, shared by every transport (REST now, gRPC later), so a route cannot forget
its role check: a transport looks the operation up and the caller's role is compared with
`Operation.role` before anything is sent.

    scope "cluster"  →  qnf.v1.cmd.<service>.<verb>            any replica of the service
    scope "node"     →  qnf.v1.node.<node>.<service>.<verb>    the agent on that node
    scope "gateway"  →  answered by the gateway itself (tokens in `qnf-tokens`)

An operation that waits on purpose (`policy.wait`) names the request field holding its wait;
the bus call gets that long on top of the request timeout, and the field is bounded by
`MAX_WAIT_S` so that no client can hold a call (and a firewall mailbox) open indefinitely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel

from libs.common.errors import InvalidRequest
from libs.common.ids import cmd_subject, node_subject
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
    GatewayRole,
    Network,
    NetworkDelete,
    NetworkList,
    NetworkRef,
    NetworkSpec,
    NetworkUpdate,
    Policy,
    PolicyFilter,
    PolicyList,
    PolicyRef,
    PolicyRemoved,
    PolicySpec,
    PolicyWait,
    PolicyWaitResult,
    PolicyYaml,
    PortPublish,
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
    TokenIssued,
    TokenList,
    TokenRef,
    Verdict,
)

ROLES: Final[tuple[GatewayRole, ...]] = ("viewer", "operator", "admin")  # each includes the ones before

Scope = Literal["cluster", "node", "gateway"]

MAX_WAIT_S: Final = 60.0


def role_allows(have: GatewayRole, need: GatewayRole) -> bool:
    """True if a caller acting in `have` may call an operation that needs `need`."""
    return ROLES.index(have) >= ROLES.index(need)


@dataclass(frozen=True)
class Operation:
    """One API verb: e.g. `network.create` → vnet's `network.create`, cluster-wide, operator."""

    name: str
    role: GatewayRole
    request: type[BaseModel]
    reply: type[BaseModel]
    service: str
    verb: str
    scope: Scope = "cluster"
    write: bool = False
    wait_field: str | None = None  # the request field (seconds) the service spends waiting

    def subject(self, node: str) -> str:
        """The bus subject; `node` matters only for node commands."""
        if self.scope == "node":
            return node_subject(node, self.service, self.verb)
        if self.scope == "cluster":
            return cmd_subject(self.service, self.verb)
        raise ValueError(f"{self.name} is answered by the gateway itself, not sent on the bus")


def _op(
    name: str,
    role: GatewayRole,
    request: type[BaseModel],
    reply: type[BaseModel],
    service: str,
    *,
    scope: Scope = "cluster",
    wait_field: str | None = None,
) -> Operation:
    return Operation(
        name, role, request, reply, service, name, scope, write=role != "viewer", wait_field=wait_field
    )


_TABLE: Final[list[Operation]] = [
    _op("network.create", "operator", NetworkSpec, Network, "vnet"),
    _op("network.get", "viewer", NetworkRef, Network, "vnet"),
    _op("network.list", "viewer", Empty, NetworkList, "vnet"),
    _op("network.update", "operator", NetworkUpdate, Network, "vnet"),
    _op("network.delete", "operator", NetworkDelete, Removed, "vnet"),
    _op("endpoint.add", "operator", EndpointAdd, Endpoint, "vnet", scope="node"),
    _op("endpoint.remove", "operator", EndpointRemove, Removed, "vnet", scope="node"),
    _op("endpoint.labels", "operator", EndpointLabels, Endpoint, "vnet", scope="node"),
    _op("endpoint.get", "viewer", EndpointRef, Endpoint, "vnet", scope="node"),
    _op("endpoint.list", "viewer", EndpointFilter, EndpointList, "vnet", scope="node"),
    _op("policy.create", "operator", PolicySpec, Policy, "firewall"),
    _op("policy.get", "viewer", PolicyRef, Policy, "firewall"),
    _op("policy.list", "viewer", PolicyFilter, PolicyList, "firewall"),
    _op("policy.update", "operator", PolicySpec, Policy, "firewall"),
    _op("policy.delete", "operator", PolicyRef, PolicyRemoved, "firewall"),
    _op("policy.import", "operator", PolicyYaml, Policy, "firewall"),
    _op("policy.explain", "viewer", FlowQuery, Verdict, "firewall"),
    _op("policy.wait", "viewer", PolicyWait, PolicyWaitResult, "firewall", wait_field="timeout_s"),
    _op("service.create", "operator", ServiceSpec, Service, "dns"),
    _op("service.get", "viewer", ServiceRef, Service, "dns"),
    _op("service.list", "viewer", Empty, ServiceList, "dns"),
    _op("service.delete", "operator", ServiceRef, Removed, "dns"),
    _op("port.publish", "operator", PortPublish, PublishedPort, "nat", scope="node"),
    _op("port.unpublish", "operator", PublishedPortRef, Removed, "nat", scope="node"),
    _op("port.list", "viewer", PublishedPortFilter, PublishedPortList, "nat", scope="node"),
    _op("token.create", "admin", TokenCreate, TokenIssued, "gateway", scope="gateway"),
    _op("token.list", "admin", Empty, TokenList, "gateway", scope="gateway"),
    _op("token.revoke", "admin", TokenRef, Removed, "gateway", scope="gateway"),
]

OPERATIONS: Final[dict[str, Operation]] = {op.name: op for op in _TABLE}

# Reading the event stream needs no bus verb; it is listed so that transports check it the same way.
EVENTS_ROLE: Final[GatewayRole] = "viewer"
METRICS_ROLE: Final[GatewayRole] = "viewer"


def operation(name: str) -> Operation:
    """The operation called `name`; KeyError for a name that is not in the table."""
    return OPERATIONS[name]


def request_of(op: Operation, fields: dict[str, Any]) -> BaseModel:
    """Build (and validate) the bus request of `op`; pydantic's ValidationError names bad fields."""
    return op.request.model_validate(fields)


def wait_of(op: Operation, request: BaseModel) -> float:
    """Seconds `op` may wait by design before it answers (0 for most); InvalidRequest above MAX_WAIT_S."""
    if op.wait_field is None:
        return 0.0
    wait = float(getattr(request, op.wait_field))
    if wait > MAX_WAIT_S:
        raise InvalidRequest(f"{op.wait_field}: at most {MAX_WAIT_S:g} seconds through the API, not {wait:g}")
    return wait
