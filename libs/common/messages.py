"""Typed message models shared by every service: the only place wire models are defined.

Every model forbids unknown fields, so a typo in a request is an error rather than a silent
default. Services import the models they speak; none defines its own wire types.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from libs.common.errors import ErrorCode


class Message(BaseModel):
    """Base of every wire model: strict about unknown fields, immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Empty(Message):
    """A request or reply with no fields."""


class ErrorReply(Message):
    """The body of every error reply; the same code is in `Nats-Service-Error-Code`."""

    code: ErrorCode
    message: str
    retryable: bool = False
    correlation_id: str | None = Field(
        None, description="set for internal errors; find it in the service log"
    )


class SecurityEvent(Message):
    """A rejected message or login: published on `qnf.v1.evt.<service>.security.rejected`."""

    service: str
    node: str
    reason: str
    subject: str
    claimed_sender: str | None = None
    ts_ms: int


class ServiceStarted(Message):
    """Published on `qnf.v1.evt.<service>.lifecycle.started` when a service is serving."""

    service: str
    node: str
    identity: str
    version: str


class Echo(Message):
    """Request and reply of every service's `diag.echo` endpoint: a signed round trip for probes."""

    text: str = Field("", max_length=4096)


# ---------------------------------------------------------------- vnet: networks and endpoints

_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_CONTAINER_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_MAC = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"
_LABEL_KEY = (
    r"^([a-z0-9A-Z]([a-zA-Z0-9.-]{0,251}[a-zA-Z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
)

NetworkName = Annotated[str, StringConstraints(pattern=_NAME)]
Labels = dict[
    Annotated[str, StringConstraints(pattern=_LABEL_KEY)], Annotated[str, StringConstraints(max_length=63)]
]
Isolation = Literal["zero-trust", "default-allow"]
DnsScope = Literal["network", "policy"]


class NetworkSpec(Message):
    """What an operator asks for when creating a network."""

    name: NetworkName
    subnet: IPv4Network
    gateway: IPv4Address | None = Field(None, description="default: the first usable address")
    subnet6: IPv6Network | None = None
    gateway6: IPv6Address | None = None
    mtu: int = Field(1500, ge=576, le=9000)
    labels: Labels = Field(default_factory=dict)
    nat: bool = Field(True, description="masquerade traffic leaving the fabric")
    isolation: Isolation = "zero-trust"
    dns_scope: DnsScope = Field(
        "network", description="policy: a client resolves only the endpoints its policies let it reach"
    )


class Network(NetworkSpec):
    """A network as stored: gateways resolved, bridge named."""

    gateway: IPv4Address
    bridge: str
    created_ms: int
    revision: int = Field(0, description="KV revision when read; pass it back as a precondition")


class NetworkRef(Message):
    name: NetworkName


class NetworkUpdate(Message):
    """Mutable fields of a network; absent fields stay as they are."""

    name: NetworkName
    mtu: int | None = Field(None, ge=576, le=9000)
    labels: Labels | None = None
    nat: bool | None = None
    isolation: Isolation | None = None
    dns_scope: DnsScope | None = None
    revision: int | None = Field(None, description="only update if the network is still at this revision")


class NetworkDelete(Message):
    name: NetworkName
    force: bool = Field(False, description="detach attached endpoints first instead of refusing")


class NetworkList(Message):
    networks: list[Network]


class PortMapping(Message):
    """A published port, as CNI's portMappings capability describes it."""

    host_port: int = Field(ge=1, le=65535)
    container_port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    host_ip: IPv4Address | IPv6Address | None = None


class NamedPort(Message):
    """A port a workload names (Kubernetes containerPort name), for policies that use the name."""

    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class EndpointAdd(Message):
    """Attach a container's network namespace to a network on this node."""

    request_id: str = Field(min_length=1, max_length=64, description="retries of one request reuse it")
    container_id: Annotated[str, StringConstraints(pattern=_CONTAINER_ID)]
    ifname: Annotated[str, StringConstraints(min_length=1, max_length=15, pattern=r"^[^/:\s]+$")]
    netns: Annotated[str, StringConstraints(pattern=r"^(/|$)", max_length=4096)] = Field(
        description="path of the container's network namespace; empty only with `handoff`"
    )
    network: NetworkName
    name: NetworkName | None = Field(None, description="DNS name; default: the container id's first 12")
    labels: Labels = Field(default_factory=dict)
    mac: Annotated[str, StringConstraints(pattern=_MAC)] | None = None
    ips: list[IPv4Address | IPv6Address] = Field(default_factory=list, max_length=2)
    port_mappings: list[PortMapping] = Field(default_factory=list, max_length=1024)
    named_ports: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")], NamedPort
    ] = Field(default_factory=dict)
    handoff: bool = Field(
        False,
        description="leave the container end in the node's namespace (MAC and MTU set, no address) "
        "for a runtime that moves and configures it itself: Docker's remote driver protocol",
    )

    @model_validator(mode="after")
    def _netns_unless_handoff(self) -> EndpointAdd:
        if not self.netns and not self.handoff:
            raise ValueError("netns: required unless handoff is set")
        return self


class EndpointRemove(Message):
    """Detach; succeeds when the endpoint is already gone."""

    container_id: Annotated[str, StringConstraints(pattern=_CONTAINER_ID)]
    ifname: Annotated[str, StringConstraints(min_length=1, max_length=15, pattern=r"^[^/:\s]+$")]
    netns: str | None = None


class EndpointRef(Message):
    container_id: Annotated[str, StringConstraints(pattern=_CONTAINER_ID)]
    ifname: Annotated[str, StringConstraints(min_length=1, max_length=15, pattern=r"^[^/:\s]+$")]


class EndpointLabels(Message):
    """Replace an endpoint's labels (policies that select by label follow at once)."""

    container_id: Annotated[str, StringConstraints(pattern=_CONTAINER_ID)]
    ifname: Annotated[str, StringConstraints(min_length=1, max_length=15, pattern=r"^[^/:\s]+$")]
    labels: Labels


class Endpoint(Message):
    """An attached container interface, as recorded in `qnf-endpoints` and returned by ADD."""

    endpoint_id: str
    request_id: str
    container_id: str
    ifname: str
    netns: str
    node: str
    network: str
    name: str
    labels: Labels
    identity: str
    mac: str
    mtu: int
    host_ifname: str
    addresses: list[IPv4Interface | IPv6Interface]
    gateways: list[IPv4Address | IPv6Address]
    port_mappings: list[PortMapping] = Field(default_factory=list)
    named_ports: dict[str, NamedPort] = Field(default_factory=dict)
    created_ms: int
    handoff_ifname: str | None = Field(
        None, description="handed off: the container end's name in the node's namespace until moved"
    )


class EndpointList(Message):
    endpoints: list[Endpoint]


class EndpointFilter(Message):
    network: NetworkName | None = None
    node: str | None = None


class Lease(Message):
    """One allocated address in `qnf-ipam`: who holds it."""

    network: str
    address: IPv4Address | IPv6Address
    owner: str = Field(description="endpoint id of the holder")
    node: str
    agent: str = Field("", description="instance id of the vnet agent that claimed it")
    ts_ms: int


class Removed(Message):
    """Reply of idempotent deletes: whether something was there."""

    existed: bool


# ---------------------------------------------------------------- firewall: policies

Protocol = Literal["TCP", "UDP", "SCTP", "ICMP"]
_PORT_NAME = r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$"  # IANA_SVC_NAME, as Kubernetes


class SelectorRequirement(Message):
    """One matchExpressions entry."""

    key: Annotated[str, StringConstraints(pattern=_LABEL_KEY)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[Annotated[str, StringConstraints(max_length=63)]] = Field(default_factory=list)


class LabelSelector(Message):
    """Kubernetes label selector; the empty selector selects everything."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    match_labels: Labels = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[SelectorRequirement] = Field(default_factory=list, alias="matchExpressions")


class IPBlock(Message):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    cidr: IPv4Network | IPv6Network
    except_: list[IPv4Network | IPv6Network] = Field(default_factory=list, alias="except")


class Peer(Message):
    """A peer: endpoint and/or network selector (both: AND), an IP block, or SPIFFE identity pattern."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    endpoint_selector: LabelSelector | None = Field(None, alias="endpointSelector")
    network_selector: LabelSelector | None = Field(None, alias="networkSelector")
    ip_block: IPBlock | None = Field(None, alias="ipBlock")
    identity: Annotated[str, StringConstraints(pattern=r"^spiffe://", max_length=512)] | None = None


class PolicyPort(Message):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    protocol: Protocol = "TCP"
    port: int | Annotated[str, StringConstraints(pattern=_PORT_NAME)] | None = None
    end_port: int | None = Field(None, alias="endPort")


class PolicyRule(Message):
    """An ingress (`peers` are sources) or egress (`peers` are destinations) rule."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    peers: list[Peer] = Field(default_factory=list, description="empty: every peer")
    ports: list[PolicyPort] = Field(default_factory=list, description="empty: every protocol and port")
    action: Literal["Allow", "Deny", "Pass"] = Field("Allow", description="admin tier only")


class PolicySpec(Message):
    """A policy: selects endpoints of its network and allows (admin tier: also denies) traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: NetworkName
    network: NetworkName | None = Field(
        None, description="normal tier: the network whose endpoints it selects"
    )
    endpoint_selector: LabelSelector = Field(default_factory=LabelSelector, alias="endpointSelector")
    network_selector: LabelSelector | None = Field(
        None, alias="networkSelector", description="admin tier: networks whose endpoints it selects"
    )
    policy_types: list[Literal["Ingress", "Egress"]] | None = Field(None, alias="policyTypes")
    ingress: list[PolicyRule] = Field(default_factory=list)
    egress: list[PolicyRule] = Field(default_factory=list)
    tier: Literal["normal", "admin"] = "normal"
    priority: int = Field(1000, ge=0, le=1000, description="admin tier: lower runs first")
    keep_established: bool = Field(False, alias="keepEstablished")


class Policy(PolicySpec):
    """A stored policy."""

    revision: int = 0
    created_ms: int = 0


class PolicyRef(Message):
    """A policy by name: normal-tier policies are named within their network, admin ones globally."""

    name: NetworkName
    network: NetworkName | None = None


class PolicyList(Message):
    policies: list[Policy]


class PolicyFilter(Message):
    network: NetworkName | None = None


class PolicyYaml(Message):
    """A Kubernetes NetworkPolicy (networking.k8s.io/v1) document, as YAML or JSON text."""

    document: str = Field(max_length=1 << 20)
    network: NetworkName | None = Field(None, description="when the document names no namespace")


class FlowQuery(Message):
    """`policy.explain`: what happens to this packet?"""

    source: IPv4Address | IPv6Address
    destination: IPv4Address | IPv6Address
    protocol: Protocol = "TCP"
    port: int | None = Field(None, ge=1, le=65535)


class Reach(Message):
    """`policy.reachable`: which endpoint addresses a new flow from `source` may reach at all."""

    source: IPv4Address | IPv6Address


class Reachable(Message):
    source: IPv4Address | IPv6Address
    destinations: list[IPv4Address | IPv6Address]


class Verdict(Message):
    """The verdict on a flow and what decided it."""

    allowed: bool
    reason: str
    policy: str | None = None
    rule: str | None = None
    direction: Literal["ingress", "egress"] | None = None


# ---------------------------------------------------------------- dns: services


class ServicePort(Message):
    """A named port of a service: SRV records `_<name>._<protocol>.<service>.<network>.<domain>`."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")]
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class ServiceSpec(Message):
    """A name for every endpoint of a network that the selector selects."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: NetworkName
    network: NetworkName
    endpoint_selector: LabelSelector = Field(default_factory=LabelSelector, alias="endpointSelector")
    ports: list[ServicePort] = Field(default_factory=list, max_length=64)


class Service(ServiceSpec):
    revision: int = 0


class ServiceRef(Message):
    name: NetworkName
    network: NetworkName


class ServiceList(Message):
    services: list[Service]


# ---------------------------------------------------------------- nat: published ports


class PortPublish(PortMapping):
    """Publish a port of an endpoint attached on the node that serves the request."""

    container_id: Annotated[str, StringConstraints(pattern=_CONTAINER_ID)]
    ifname: Annotated[str, StringConstraints(min_length=1, max_length=15, pattern=r"^[^/:\s]+$")] = "eth0"


class PublishedPort(PortMapping):
    """A published port as stored in `qnf-ports`: host port → endpoint port on one node."""

    id: str = Field(description="<node>.<protocol>.<host port>.<host address or 'any'>")
    node: str
    endpoint_id: str
    container_id: str
    ifname: str
    network: str
    source: Literal["api", "endpoint", "docker"] = Field(
        description="api: port.publish; endpoint: the endpoint's own mappings at ADD; docker: `-p`"
    )
    created_ms: int


class PublishedPortRef(Message):
    id: Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._-]+$")]


class PublishedPortFilter(Message):
    endpoint_id: str | None = None


class PublishedPortList(Message):
    ports: list[PublishedPort]


# ---------------------------------------------------------------- firewall: enforcement and flows


class PolicyRemoved(Removed):
    """Reply of `policy.delete`: `revision` is what `policy.wait` takes to know the delete is in force."""

    revision: int | None = None


class EndpointEnforce(Message):
    """Node command `firewall.endpoint.enforce` (vnet's start gate): reply once this node's kernel
    enforces the endpoint's record at `revision` or later; `unavailable` after `timeout_s`."""

    endpoint_id: str = Field(min_length=1, max_length=255)
    revision: int = Field(ge=1)
    timeout_s: float = Field(5.0, gt=0, le=60)


class PolicyWait(Message):
    """`qnf.v1.cmd.firewall.policy.wait` (every agent that must enforce it) and the node command
    `firewall.policy.enforced` (one agent): wait until policy `revision` is in force."""

    revision: int = Field(ge=1, description="a revision returned by policy.create|update|delete|import")
    timeout_s: float = Field(5.0, gt=0, le=300)


class Enforced(Message):
    """One firewall agent's ack: every policy change up to `policy_revision` is in its kernel."""

    node: str
    policy_revision: int
    ts_ms: int


class PolicyWaitResult(Message):
    """Reply of `policy.wait`: complete when every node that must enforce `revision` has acked."""

    revision: int
    complete: bool
    acked: list[str]
    pending: list[str] = Field(description="nodes that did not ack in time (stopped, slow, unreachable)")
    seconds: float


class FlowDenied(Message):
    """Event `qnf.v1.evt.firewall.flow.denied`: the kernel dropped a flow; `rule` decided it."""

    node: str
    source: IPv4Address | IPv6Address
    destination: IPv4Address | IPv6Address
    source_identity: str | None = None
    destination_identity: str | None = None
    network: str | None = None
    protocol: str
    port: int | None = None
    direction: Literal["ingress", "egress"] | None = None
    policy: str | None = None
    rule: str = Field(description="the deciding rule: policy/rule, or the default deny that caught it")
    ts_ms: int


class ConnectionsCut(Message):
    """Event `qnf.v1.evt.firewall.connection.cut`: established flows a policy change now denies."""

    node: str
    source: IPv4Address | IPv6Address
    destination: IPv4Address | IPv6Address
    protocol: str
    port: int | None = None
    policy_revision: int
    ts_ms: int


# ---------------------------------------------------------------- gateway: API tokens, REST shapes

GatewayRole = Literal["viewer", "operator", "admin"]


class TokenCreate(Message):
    """Ask for a new API token (admin only); its secret is shown once, in the reply."""

    name: NetworkName = Field(description="what the token is for, for humans")
    role: GatewayRole
    ttl_s: int = Field(30 * 86400, ge=60, le=366 * 86400, description="lifetime in seconds")


class TokenInfo(Message):
    """A token as operators see it: never its secret, nor the secret's hash."""

    id: str
    name: str
    role: GatewayRole
    created_ms: int
    expires_ms: int
    created_by: str
    revoked_ms: int | None = None
    revision: int = 0


class TokenRecord(TokenInfo):
    """A token as stored in `qnf-tokens` (key: its id): the SHA-256 of the secret, not the secret."""

    secret_sha256: str


class TokenIssued(TokenInfo):
    """Reply of token creation: the only time the full token is ever shown."""

    token: str


class TokenRef(Message):
    id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]


class TokenList(Message):
    tokens: list[TokenInfo]


class NetworkPatch(Message):
    """REST body of a network update: the name is in the path, the revision in If-Match."""

    mtu: int | None = Field(None, ge=576, le=9000)
    labels: Labels | None = None
    nat: bool | None = None
    isolation: Isolation | None = None
    dns_scope: DnsScope | None = None


class FabricEvent(Message):
    """One event of `QNF_EVENTS` as the gateway relays it (REST SSE, gRPC WatchEvents)."""

    seq: int = Field(description="stream sequence; resume after it with Last-Event-ID")
    subject: str
    sender: str = Field(description="SPIFFE ID of the verified publisher")
    data: dict[str, Any]


class ProblemField(Message):
    field: str = Field(description="where, e.g. body.subnet or query.limit")
    message: str


class Problem(Message):
    """An RFC 9457 problem document (application/problem+json)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    instance: str | None = None
    code: str = Field(description="the fabric's error code, e.g. not_found, invalid, forbidden")
    errors: list[ProblemField] = Field(default_factory=list)
    retry_after: int | None = None


PageItem = TypeVar("PageItem")


class Page(Message, Generic[PageItem]):
    """One page of a list: pass `next_cursor` back as `cursor` for the next; None on the last page."""

    items: list[PageItem]
    next_cursor: str | None = None
