"""Docker's remote network driver protocol (libnetwork `drivers/remote/api`), and its mapping to qnf.

Pure: request models, option parsing and the translation into qnf's wire models; no I/O.

What Docker 20.10 sends a remote driver (seen on the wire, not only documented):
- CreateNetwork: the network id, `--subnet/--gateway` as `IPv4Data`/`IPv6Data` (the gateway with a
  prefix length, "10.70.0.1/24"), and `-o key=value` under `Options["com.docker.network.generic"]`.
  Not the network's name, not its `--label`s.
- CreateEndpoint: the network and endpoint ids, the address Docker's IPAM chose (`Interface.Address`),
  and `Options` with the published ports (`com.docker.network.portmap`) and `--driver-opt`s of
  `docker network connect`. Not the container's id, name or labels.
- Join: the endpoint and the sandbox path (`SandboxKey`), which does not exist yet: Docker creates
  the container's namespace only after Join has answered, then moves the interface the driver named
  (`InterfaceName.SrcName`) into it, renames it (`DstPrefix` + index) and sets its address and the
  gateway route.

So the veth pair is made at CreateEndpoint, with its container end left in the node's namespace
(vnet's `handoff`), and the address comes from Docker's IPAM as a static request that qnf's IPAM
leases (or, with `--ipam-driver null`, from qnf's IPAM alone: then `-o qnf.subnet=` names the CIDR).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_interface
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from libs.common.messages import Endpoint, EndpointAdd, Labels, NetworkName, NetworkSpec, PortMapping

GENERIC: Final = "com.docker.network.generic"
PORTMAP: Final = "com.docker.network.portmap"
DOCKER_MTU: Final = "com.docker.network.driver.mtu"
ENABLE_IPV6: Final = "com.docker.network.enable_ipv6"

# The qnf network of a Docker network carries this label: Docker's ids are 64 hex characters,
# label values at most 63, and the first 32 (128 bits) identify a network as well as all 64.
NETWORK_ID_LABEL: Final = "docker/network-id"
ID_CHARS: Final = 32
IFNAME: Final = "eth0"  # the name recorded for the container end; Docker picks DstPrefix + index
DST_PREFIX: Final = "eth"

_ID = re.compile(r"^[0-9a-f]{64}$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_PROTOCOLS: Final[dict[int, Literal["tcp", "udp", "sctp"]]] = {6: "tcp", 17: "udp", 132: "sctp"}


class DriverError(Exception):
    """A request Docker sent that the driver refuses; the message becomes the reply's `Err`."""


class _Docker(BaseModel):
    # Docker adds fields between versions; unknown ones are ignored, known ones are checked.
    model_config = ConfigDict(extra="ignore", frozen=True)


class IPAMData(_Docker):
    AddressSpace: str = ""
    Pool: str
    Gateway: str = ""
    AuxAddresses: dict[str, str] = Field(default_factory=dict)


class CreateNetworkRequest(_Docker):
    NetworkID: str
    Options: dict[str, Any] = Field(default_factory=dict)
    IPv4Data: list[IPAMData] = Field(default_factory=list)
    IPv6Data: list[IPAMData] = Field(default_factory=list)


class NetworkRequest(_Docker):
    NetworkID: str


class EndpointInterface(_Docker):
    Address: str = ""
    AddressIPv6: str = ""
    MacAddress: str = ""


class CreateEndpointRequest(_Docker):
    NetworkID: str
    EndpointID: str
    Interface: EndpointInterface | None = None
    Options: dict[str, Any] = Field(default_factory=dict)


class EndpointRequest(_Docker):
    NetworkID: str
    EndpointID: str
    Options: dict[str, Any] = Field(default_factory=dict)


class JoinRequest(_Docker):
    NetworkID: str
    EndpointID: str
    SandboxKey: str = ""
    Options: dict[str, Any] = Field(default_factory=dict)


def check_id(value: str, what: str) -> str:
    """Docker's ids are 64 lower-case hex characters; anything else is not from Docker."""
    if not _ID.match(value):
        raise DriverError(f"{what} {value!r} is not a Docker id (64 hex characters)")
    return value


def default_network_name(network_id: str) -> str:
    """The qnf network of a Docker network that names none with `-o qnf.name=`."""
    return f"docker-{network_id[:12]}"


def _generic(options: dict[str, Any]) -> dict[str, Any]:
    # `-o` options arrive under the generic key; `--driver-opt`s of an endpoint at the top level.
    merged = {k: v for k, v in options.items() if k.startswith("qnf.")}
    nested = options.get(GENERIC) or {}
    if not isinstance(nested, dict):
        raise DriverError(f"option {GENERIC} must be a map")
    merged.update(nested)
    return merged


def _bool(key: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DriverError(f"option {key}: {value!r} is not a boolean (true or false)")


def _validated(adapter: TypeAdapter[Any], key: str, value: Any) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise DriverError(f"option {key}: {exc.errors()[0]['msg']}") from exc


_NAME: TypeAdapter[str] = TypeAdapter(NetworkName)
_LABELS: TypeAdapter[dict[str, str]] = TypeAdapter(Labels)


def _labels(opts: dict[str, Any]) -> dict[str, str]:
    raw = {k.removeprefix("qnf.label."): str(v) for k, v in opts.items() if k.startswith("qnf.label.")}
    for key, value in raw.items():
        _validated(_LABELS, f"qnf.label.{key}", {key: value})
    return raw


NETWORK_OPTIONS: Final = ("qnf.name", "qnf.isolation", "qnf.nat", "qnf.mtu", "qnf.subnet", "qnf.gateway")
ENDPOINT_OPTIONS: Final = ("qnf.name",)


def _unknown(opts: dict[str, Any], known: tuple[str, ...]) -> None:
    for key in sorted(opts):
        if key.startswith("qnf.") and key not in known and not key.startswith("qnf.label."):
            raise DriverError(f"unknown option {key} (known: {', '.join(known)}, qnf.label.<key>)")


def _pool(data: list[IPAMData], family: str) -> IPAMData | None:
    if len(data) > 1:
        raise DriverError(f"a qnf network has one {family} subnet, Docker asked for {len(data)}")
    return data[0] if data else None


def _gateway(text: str, what: str) -> IPv4Address | IPv6Address | None:
    if not text:
        return None
    try:
        return ip_interface(text).ip  # Docker sends the gateway with the pool's prefix length
    except ValueError as exc:
        raise DriverError(f"{what}: {text!r} is not an address") from exc


def network_spec(req: CreateNetworkRequest) -> NetworkSpec:
    """The qnf network for a Docker network; DriverError names the option or field that is wrong."""
    check_id(req.NetworkID, "NetworkID")
    opts = _generic(req.Options)
    _unknown(opts, NETWORK_OPTIONS)
    name = _validated(_NAME, "qnf.name", opts.get("qnf.name", default_network_name(req.NetworkID)))
    fields: dict[str, Any] = {
        "name": name,
        "labels": {**_labels(opts), NETWORK_ID_LABEL: req.NetworkID[:ID_CHARS]},
    }
    if "qnf.isolation" in opts:
        fields["isolation"] = opts["qnf.isolation"]
    if "qnf.nat" in opts:
        fields["nat"] = _bool("qnf.nat", opts["qnf.nat"])
    mtu = opts.get("qnf.mtu", req.Options.get(DOCKER_MTU))
    if mtu is not None:
        fields["mtu"] = mtu

    v4 = _pool(req.IPv4Data, "IPv4")
    if v4 is not None and v4.AddressSpace != "null":  # the null IPAM driver sends 0.0.0.0/0
        for key in ("qnf.subnet", "qnf.gateway"):
            if key in opts:
                raise DriverError(f"option {key} is only for --ipam-driver null; use --subnet/--gateway")
        fields["subnet"] = v4.Pool
        fields["gateway"] = _gateway(v4.Gateway, "IPv4Data.Gateway")
    elif "qnf.subnet" in opts:
        fields["subnet"] = opts["qnf.subnet"]
        fields["gateway"] = opts.get("qnf.gateway")
    else:
        raise DriverError("no IPv4 subnet: give --subnet, or -o qnf.subnet=CIDR with --ipam-driver null")
    v6 = _pool(req.IPv6Data, "IPv6")
    if v6 is not None and v6.AddressSpace != "null":
        fields["subnet6"] = v6.Pool
        fields["gateway6"] = _gateway(v6.Gateway, "IPv6Data.Gateway")
    try:
        return NetworkSpec.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        option = {"isolation": "qnf.isolation", "mtu": "qnf.mtu", "subnet": "subnet"}.get(where, where)
        raise DriverError(f"{option}: {err['msg']}") from exc


def _port_mappings(raw: Any) -> list[PortMapping]:
    """`-p HOST:CONTAINER[/proto]` as Docker passes it; ports without a host port are not published."""
    out = []
    for item in raw or []:
        try:
            proto = _PROTOCOLS.get(int(item.get("Proto", 6)))
            host_port, port = int(item.get("HostPort") or 0), int(item["Port"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise DriverError(f"option {PORTMAP}: malformed entry {item!r}") from exc
        if proto is None or not host_port:
            continue
        try:
            out.append(
                PortMapping(
                    host_port=host_port,
                    container_port=port,
                    protocol=proto,
                    host_ip=item.get("HostIP") or None,
                )
            )
        except ValidationError as exc:
            raise DriverError(f"option {PORTMAP}: {exc.errors()[0]['msg']}") from exc
    return out


def endpoint_add(req: CreateEndpointRequest, network: str) -> EndpointAdd:
    """vnet's endpoint.add for a Docker endpoint: the pair is handed off for Docker to move."""
    check_id(req.NetworkID, "NetworkID")
    check_id(req.EndpointID, "EndpointID")
    opts = _generic(req.Options)
    _unknown(opts, ENDPOINT_OPTIONS)
    iface = req.Interface or EndpointInterface()
    ips: list[IPv4Address | IPv6Address] = []
    for text, what in ((iface.Address, "Interface.Address"), (iface.AddressIPv6, "Interface.AddressIPv6")):
        address = _gateway(text, what)
        if address is not None:
            ips.append(address)
    fields: dict[str, Any] = {
        "request_id": req.EndpointID,
        "container_id": req.EndpointID,
        "ifname": IFNAME,
        "netns": "",
        "handoff": True,
        "network": network,
        "labels": _labels(opts),
        "ips": ips,
        "mac": iface.MacAddress.lower() or None,
        "port_mappings": _port_mappings(req.Options.get(PORTMAP)),
    }
    if "qnf.name" in opts:
        fields["name"] = _validated(_NAME, "qnf.name", opts["qnf.name"])
    try:
        return EndpointAdd.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DriverError(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from exc


def create_endpoint_reply(req: CreateEndpointRequest, endpoint: Endpoint) -> dict[str, Any]:
    """Only what Docker did not set itself: it refuses a driver that overrides its values."""
    given = req.Interface or EndpointInterface()
    out: dict[str, str] = {}
    if not given.MacAddress:
        out["MacAddress"] = endpoint.mac
    for address in endpoint.addresses:
        if isinstance(address, IPv4Interface) and not given.Address:
            out["Address"] = str(address)
        if isinstance(address, IPv6Interface) and not given.AddressIPv6:
            out["AddressIPv6"] = str(address)
    return {"Interface": out}


def join_reply(endpoint: Endpoint) -> dict[str, Any]:
    """Which interface Docker moves into the sandbox, and the gateways it routes through."""
    if endpoint.handoff_ifname is None:
        raise DriverError(f"endpoint {endpoint.container_id} was not created for Docker")
    out: dict[str, Any] = {"InterfaceName": {"SrcName": endpoint.handoff_ifname, "DstPrefix": DST_PREFIX}}
    for gateway in endpoint.gateways:
        out["Gateway" if isinstance(gateway, IPv4Address) else "GatewayIPv6"] = str(gateway)
    return out


def oper_info(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "Value": {
            "qnf.network": endpoint.network,
            "qnf.name": endpoint.name,
            "qnf.identity": endpoint.identity,
            "qnf.host_ifname": endpoint.host_ifname,
            "qnf.addresses": [str(a) for a in endpoint.addresses],
        }
    }
