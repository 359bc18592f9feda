from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeleteResponse(_message.Message):
    __slots__ = ("existed", "revision")
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    revision: int
    def __init__(self, existed: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class LabelSet(_message.Message):
    __slots__ = ("labels",)
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class NetworkSpec(_message.Message):
    __slots__ = ("name", "subnet", "gateway", "subnet6", "gateway6", "mtu", "labels", "nat", "isolation", "dns_scope")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    SUBNET6_FIELD_NUMBER: _ClassVar[int]
    GATEWAY6_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NAT_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    DNS_SCOPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    subnet: str
    gateway: str
    subnet6: str
    gateway6: str
    mtu: int
    labels: _containers.ScalarMap[str, str]
    nat: bool
    isolation: str
    dns_scope: str
    def __init__(self, name: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., subnet6: _Optional[str] = ..., gateway6: _Optional[str] = ..., mtu: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., nat: _Optional[bool] = ..., isolation: _Optional[str] = ..., dns_scope: _Optional[str] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("name", "subnet", "gateway", "subnet6", "gateway6", "mtu", "labels", "nat", "isolation", "bridge", "created_ms", "revision", "dns_scope")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    SUBNET6_FIELD_NUMBER: _ClassVar[int]
    GATEWAY6_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NAT_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DNS_SCOPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    subnet: str
    gateway: str
    subnet6: str
    gateway6: str
    mtu: int
    labels: _containers.ScalarMap[str, str]
    nat: bool
    isolation: str
    bridge: str
    created_ms: int
    revision: int
    dns_scope: str
    def __init__(self, name: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., subnet6: _Optional[str] = ..., gateway6: _Optional[str] = ..., mtu: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., nat: _Optional[bool] = ..., isolation: _Optional[str] = ..., bridge: _Optional[str] = ..., created_ms: _Optional[int] = ..., revision: _Optional[int] = ..., dns_scope: _Optional[str] = ...) -> None: ...

class GetNetworkRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListNetworksRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("networks", "next_page_token")
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    next_page_token: str
    def __init__(self, networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateNetworkRequest(_message.Message):
    __slots__ = ("name", "mtu", "labels", "nat", "isolation", "revision", "dns_scope")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NAT_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DNS_SCOPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    mtu: int
    labels: LabelSet
    nat: bool
    isolation: str
    revision: int
    dns_scope: str
    def __init__(self, name: _Optional[str] = ..., mtu: _Optional[int] = ..., labels: _Optional[_Union[LabelSet, _Mapping]] = ..., nat: _Optional[bool] = ..., isolation: _Optional[str] = ..., revision: _Optional[int] = ..., dns_scope: _Optional[str] = ...) -> None: ...

class DeleteNetworkRequest(_message.Message):
    __slots__ = ("name", "force", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    revision: int
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class PortMapping(_message.Message):
    __slots__ = ("host_port", "container_port", "protocol", "host_ip")
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    host_port: int
    container_port: int
    protocol: str
    host_ip: str
    def __init__(self, host_port: _Optional[int] = ..., container_port: _Optional[int] = ..., protocol: _Optional[str] = ..., host_ip: _Optional[str] = ...) -> None: ...

class NamedPort(_message.Message):
    __slots__ = ("port", "protocol")
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    port: int
    protocol: str
    def __init__(self, port: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class ConnectEndpointRequest(_message.Message):
    __slots__ = ("request_id", "container_id", "ifname", "netns", "network", "name", "labels", "mac", "ips", "port_mappings", "named_ports", "handoff", "node")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NamedPortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: NamedPort
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[NamedPort, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    IPS_FIELD_NUMBER: _ClassVar[int]
    PORT_MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    NAMED_PORTS_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    container_id: str
    ifname: str
    netns: str
    network: str
    name: str
    labels: _containers.ScalarMap[str, str]
    mac: str
    ips: _containers.RepeatedScalarFieldContainer[str]
    port_mappings: _containers.RepeatedCompositeFieldContainer[PortMapping]
    named_ports: _containers.MessageMap[str, NamedPort]
    handoff: bool
    node: str
    def __init__(self, request_id: _Optional[str] = ..., container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., netns: _Optional[str] = ..., network: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., mac: _Optional[str] = ..., ips: _Optional[_Iterable[str]] = ..., port_mappings: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., named_ports: _Optional[_Mapping[str, NamedPort]] = ..., handoff: _Optional[bool] = ..., node: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("endpoint_id", "request_id", "container_id", "ifname", "netns", "node", "network", "name", "labels", "identity", "mac", "mtu", "host_ifname", "addresses", "gateways", "port_mappings", "named_ports", "created_ms", "handoff_ifname")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NamedPortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: NamedPort
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[NamedPort, _Mapping]] = ...) -> None: ...
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    HOST_IFNAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    PORT_MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    NAMED_PORTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_IFNAME_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    request_id: str
    container_id: str
    ifname: str
    netns: str
    node: str
    network: str
    name: str
    labels: _containers.ScalarMap[str, str]
    identity: str
    mac: str
    mtu: int
    host_ifname: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    gateways: _containers.RepeatedScalarFieldContainer[str]
    port_mappings: _containers.RepeatedCompositeFieldContainer[PortMapping]
    named_ports: _containers.MessageMap[str, NamedPort]
    created_ms: int
    handoff_ifname: str
    def __init__(self, endpoint_id: _Optional[str] = ..., request_id: _Optional[str] = ..., container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., netns: _Optional[str] = ..., node: _Optional[str] = ..., network: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., identity: _Optional[str] = ..., mac: _Optional[str] = ..., mtu: _Optional[int] = ..., host_ifname: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., gateways: _Optional[_Iterable[str]] = ..., port_mappings: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., named_ports: _Optional[_Mapping[str, NamedPort]] = ..., created_ms: _Optional[int] = ..., handoff_ifname: _Optional[str] = ...) -> None: ...

class GetEndpointRequest(_message.Message):
    __slots__ = ("container_id", "ifname", "node")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    ifname: str
    node: str
    def __init__(self, container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ("network", "endpoint_node", "node", "page_size", "page_token")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_NODE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    network: str
    endpoint_node: str
    node: str
    page_size: int
    page_token: str
    def __init__(self, network: _Optional[str] = ..., endpoint_node: _Optional[str] = ..., node: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "next_page_token")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    next_page_token: str
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetEndpointLabelsRequest(_message.Message):
    __slots__ = ("container_id", "ifname", "labels", "node")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    ifname: str
    labels: _containers.ScalarMap[str, str]
    node: str
    def __init__(self, container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., node: _Optional[str] = ...) -> None: ...

class DisconnectEndpointRequest(_message.Message):
    __slots__ = ("container_id", "ifname", "node")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    ifname: str
    node: str
    def __init__(self, container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class SelectorRequirement(_message.Message):
    __slots__ = ("key", "operator", "values")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    key: str
    operator: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., operator: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class LabelSelector(_message.Message):
    __slots__ = ("match_labels", "match_expressions")
    class MatchLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MATCH_LABELS_FIELD_NUMBER: _ClassVar[int]
    MATCH_EXPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    match_labels: _containers.ScalarMap[str, str]
    match_expressions: _containers.RepeatedCompositeFieldContainer[SelectorRequirement]
    def __init__(self, match_labels: _Optional[_Mapping[str, str]] = ..., match_expressions: _Optional[_Iterable[_Union[SelectorRequirement, _Mapping]]] = ...) -> None: ...

class IPBlock(_message.Message):
    __slots__ = ("cidr",)
    CIDR_FIELD_NUMBER: _ClassVar[int]
    EXCEPT_FIELD_NUMBER: _ClassVar[int]
    cidr: str
    def __init__(self, cidr: _Optional[str] = ..., **kwargs) -> None: ...

class Peer(_message.Message):
    __slots__ = ("endpoint_selector", "network_selector", "ip_block", "identity")
    ENDPOINT_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    IP_BLOCK_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    endpoint_selector: LabelSelector
    network_selector: LabelSelector
    ip_block: IPBlock
    identity: str
    def __init__(self, endpoint_selector: _Optional[_Union[LabelSelector, _Mapping]] = ..., network_selector: _Optional[_Union[LabelSelector, _Mapping]] = ..., ip_block: _Optional[_Union[IPBlock, _Mapping]] = ..., identity: _Optional[str] = ...) -> None: ...

class PolicyPort(_message.Message):
    __slots__ = ("protocol", "port", "port_name", "end_port")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PORT_NAME_FIELD_NUMBER: _ClassVar[int]
    END_PORT_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    port: int
    port_name: str
    end_port: int
    def __init__(self, protocol: _Optional[str] = ..., port: _Optional[int] = ..., port_name: _Optional[str] = ..., end_port: _Optional[int] = ...) -> None: ...

class PolicyRule(_message.Message):
    __slots__ = ("peers", "ports", "action")
    PEERS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    ports: _containers.RepeatedCompositeFieldContainer[PolicyPort]
    action: str
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., ports: _Optional[_Iterable[_Union[PolicyPort, _Mapping]]] = ..., action: _Optional[str] = ...) -> None: ...

class PolicySpec(_message.Message):
    __slots__ = ("name", "network", "endpoint_selector", "network_selector", "policy_types", "ingress", "egress", "tier", "priority", "keep_established")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    POLICY_TYPES_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    KEEP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: str
    endpoint_selector: LabelSelector
    network_selector: LabelSelector
    policy_types: _containers.RepeatedScalarFieldContainer[str]
    ingress: _containers.RepeatedCompositeFieldContainer[PolicyRule]
    egress: _containers.RepeatedCompositeFieldContainer[PolicyRule]
    tier: str
    priority: int
    keep_established: bool
    def __init__(self, name: _Optional[str] = ..., network: _Optional[str] = ..., endpoint_selector: _Optional[_Union[LabelSelector, _Mapping]] = ..., network_selector: _Optional[_Union[LabelSelector, _Mapping]] = ..., policy_types: _Optional[_Iterable[str]] = ..., ingress: _Optional[_Iterable[_Union[PolicyRule, _Mapping]]] = ..., egress: _Optional[_Iterable[_Union[PolicyRule, _Mapping]]] = ..., tier: _Optional[str] = ..., priority: _Optional[int] = ..., keep_established: _Optional[bool] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "network", "endpoint_selector", "network_selector", "policy_types", "ingress", "egress", "tier", "priority", "keep_established", "revision", "created_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    POLICY_TYPES_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    KEEP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: str
    endpoint_selector: LabelSelector
    network_selector: LabelSelector
    policy_types: _containers.RepeatedScalarFieldContainer[str]
    ingress: _containers.RepeatedCompositeFieldContainer[PolicyRule]
    egress: _containers.RepeatedCompositeFieldContainer[PolicyRule]
    tier: str
    priority: int
    keep_established: bool
    revision: int
    created_ms: int
    def __init__(self, name: _Optional[str] = ..., network: _Optional[str] = ..., endpoint_selector: _Optional[_Union[LabelSelector, _Mapping]] = ..., network_selector: _Optional[_Union[LabelSelector, _Mapping]] = ..., policy_types: _Optional[_Iterable[str]] = ..., ingress: _Optional[_Iterable[_Union[PolicyRule, _Mapping]]] = ..., egress: _Optional[_Iterable[_Union[PolicyRule, _Mapping]]] = ..., tier: _Optional[str] = ..., priority: _Optional[int] = ..., keep_established: _Optional[bool] = ..., revision: _Optional[int] = ..., created_ms: _Optional[int] = ...) -> None: ...

class ImportPolicyRequest(_message.Message):
    __slots__ = ("document", "network")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    document: str
    network: str
    def __init__(self, document: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("name", "network")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: str
    def __init__(self, name: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ("network", "page_size", "page_token")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    network: str
    page_size: int
    page_token: str
    def __init__(self, network: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies", "next_page_token")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    next_page_token: str
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdatePolicyRequest(_message.Message):
    __slots__ = ("policy", "revision")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    policy: PolicySpec
    revision: int
    def __init__(self, policy: _Optional[_Union[PolicySpec, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class DeletePolicyRequest(_message.Message):
    __slots__ = ("name", "network", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: str
    revision: int
    def __init__(self, name: _Optional[str] = ..., network: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class FlowQuery(_message.Message):
    __slots__ = ("source", "destination", "protocol", "port")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    protocol: str
    port: int
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ..., protocol: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("allowed", "reason", "policy", "rule", "direction")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: str
    policy: str
    rule: str
    direction: str
    def __init__(self, allowed: _Optional[bool] = ..., reason: _Optional[str] = ..., policy: _Optional[str] = ..., rule: _Optional[str] = ..., direction: _Optional[str] = ...) -> None: ...

class WaitPolicyRequest(_message.Message):
    __slots__ = ("revision", "timeout_s")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    revision: int
    timeout_s: float
    def __init__(self, revision: _Optional[int] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class WaitPolicyResponse(_message.Message):
    __slots__ = ("revision", "complete", "acked", "pending", "seconds")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    complete: bool
    acked: _containers.RepeatedScalarFieldContainer[str]
    pending: _containers.RepeatedScalarFieldContainer[str]
    seconds: float
    def __init__(self, revision: _Optional[int] = ..., complete: _Optional[bool] = ..., acked: _Optional[_Iterable[str]] = ..., pending: _Optional[_Iterable[str]] = ..., seconds: _Optional[float] = ...) -> None: ...

class ServicePort(_message.Message):
    __slots__ = ("name", "port", "protocol")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    port: int
    protocol: str
    def __init__(self, name: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class ServiceSpec(_message.Message):
    __slots__ = ("name", "network", "endpoint_selector", "ports")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: str
    endpoint_selector: LabelSelector
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    def __init__(self, name: _Optional[str] = ..., network: _Optional[str] = ..., endpoint_selector: _Optional[_Union[LabelSelector, _Mapping]] = ..., ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "network", "endpoint_selector", "ports", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: str
    endpoint_selector: LabelSelector
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    revision: int
    def __init__(self, name: _Optional[str] = ..., network: _Optional[str] = ..., endpoint_selector: _Optional[_Union[LabelSelector, _Mapping]] = ..., ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetServiceRequest(_message.Message):
    __slots__ = ("name", "network")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: str
    def __init__(self, name: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("network", "page_size", "page_token")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    network: str
    page_size: int
    page_token: str
    def __init__(self, network: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services", "next_page_token")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    next_page_token: str
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteServiceRequest(_message.Message):
    __slots__ = ("name", "network", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: str
    revision: int
    def __init__(self, name: _Optional[str] = ..., network: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class PublishPortRequest(_message.Message):
    __slots__ = ("host_port", "container_port", "protocol", "host_ip", "container_id", "ifname", "node")
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    host_port: int
    container_port: int
    protocol: str
    host_ip: str
    container_id: str
    ifname: str
    node: str
    def __init__(self, host_port: _Optional[int] = ..., container_port: _Optional[int] = ..., protocol: _Optional[str] = ..., host_ip: _Optional[str] = ..., container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class PublishedPort(_message.Message):
    __slots__ = ("host_port", "container_port", "protocol", "host_ip", "id", "node", "endpoint_id", "container_id", "ifname", "network", "source", "created_ms")
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    host_port: int
    container_port: int
    protocol: str
    host_ip: str
    id: str
    node: str
    endpoint_id: str
    container_id: str
    ifname: str
    network: str
    source: str
    created_ms: int
    def __init__(self, host_port: _Optional[int] = ..., container_port: _Optional[int] = ..., protocol: _Optional[str] = ..., host_ip: _Optional[str] = ..., id: _Optional[str] = ..., node: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., network: _Optional[str] = ..., source: _Optional[str] = ..., created_ms: _Optional[int] = ...) -> None: ...

class ListPublishedPortsRequest(_message.Message):
    __slots__ = ("endpoint_id", "node", "page_size", "page_token")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    node: str
    page_size: int
    page_token: str
    def __init__(self, endpoint_id: _Optional[str] = ..., node: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPublishedPortsResponse(_message.Message):
    __slots__ = ("ports", "next_page_token")
    PORTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ports: _containers.RepeatedCompositeFieldContainer[PublishedPort]
    next_page_token: str
    def __init__(self, ports: _Optional[_Iterable[_Union[PublishedPort, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UnpublishPortRequest(_message.Message):
    __slots__ = ("id", "node")
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    id: str
    node: str
    def __init__(self, id: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "role", "ttl_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    ttl_s: int
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., ttl_s: _Optional[int] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("id", "name", "role", "created_ms", "expires_ms", "created_by", "revoked_ms", "revision")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_MS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    role: str
    created_ms: int
    expires_ms: int
    created_by: str
    revoked_ms: int
    revision: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., created_ms: _Optional[int] = ..., expires_ms: _Optional[int] = ..., created_by: _Optional[str] = ..., revoked_ms: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class IssuedToken(_message.Message):
    __slots__ = ("id", "name", "role", "created_ms", "expires_ms", "created_by", "revoked_ms", "revision", "token")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_MS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    role: str
    created_ms: int
    expires_ms: int
    created_by: str
    revoked_ms: int
    revision: int
    token: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., created_ms: _Optional[int] = ..., expires_ms: _Optional[int] = ..., created_by: _Optional[str] = ..., revoked_ms: _Optional[int] = ..., revision: _Optional[int] = ..., token: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens", "next_page_token")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    next_page_token: str
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("id", "revision")
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    id: str
    revision: int
    def __init__(self, id: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_seq",)
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    def __init__(self, after_seq: _Optional[int] = ...) -> None: ...

class FabricEvent(_message.Message):
    __slots__ = ("seq", "subject", "sender", "data")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    seq: int
    subject: str
    sender: str
    data: _struct_pb2.Struct
    def __init__(self, seq: _Optional[int] = ..., subject: _Optional[str] = ..., sender: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
