"""Docker's remote driver protocol → qnf models: pure translation, no I/O."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from docker_plugin import protocol as p
from libs.common.messages import Endpoint

NID = "f42d939ed2e09587c8c7cf7cf01cc1d12da8e45ef806732fc4b1e5d148e8a22d"
EID = "50c4cdbda894b3baaa639e762504782a91e8e3c4c093d9adaf64e0e31d8d94ca"


def _net(generic: dict[str, Any] | None = None, **extra: Any) -> p.CreateNetworkRequest:
    # The shape dockerd 20.10 sends for `docker network create -d qnf --subnet 10.70.0.0/24 -o ...`.
    body: dict[str, Any] = {
        "NetworkID": NID,
        "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": generic or {}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": "10.70.0.1/24", "Pool": "10.70.0.0/24"}],
        "IPv6Data": [],
    }
    body.update(extra)
    return p.CreateNetworkRequest.model_validate(body)


def test_network_spec_defaults_and_options() -> None:
    spec = p.network_spec(_net())
    assert spec.name == "docker-f42d939ed2e0" and str(spec.subnet) == "10.70.0.0/24"
    assert str(spec.gateway) == "10.70.0.1" and spec.isolation == "zero-trust" and spec.nat
    assert spec.labels == {"docker/network-id": NID[:32]}
    spec = p.network_spec(
        _net(
            {
                "qnf.name": "blue",
                "qnf.isolation": "default-allow",
                "qnf.nat": "False",
                "qnf.label.team": "a",
                "com.docker.network.driver.mtu": "1400",
            }
        )
    )
    assert (spec.name, spec.isolation, spec.nat, spec.labels["team"]) == ("blue", "default-allow", False, "a")
    v6 = _net(IPv6Data=[{"AddressSpace": "LocalDefault", "Pool": "fd00:1::/64", "Gateway": "fd00:1::1/64"}])
    spec = p.network_spec(v6)
    assert str(spec.subnet6) == "fd00:1::/64" and spec.gateway6 == ip_address("fd00:1::1")


def test_docker_mtu_option_is_honoured() -> None:
    req = _net()
    req = req.model_copy(update={"Options": {**req.Options, "com.docker.network.driver.mtu": "1400"}})
    assert p.network_spec(req).mtu == 1400


def test_null_ipam_takes_the_subnet_from_options() -> None:
    null: dict[str, Any] = {"IPv4Data": [{"AddressSpace": "null", "Pool": "0.0.0.0/0"}]}
    spec = p.network_spec(_net({"qnf.subnet": "10.80.0.0/16", "qnf.gateway": "10.80.0.254"}, **null))
    assert str(spec.subnet) == "10.80.0.0/16" and str(spec.gateway) == "10.80.0.254"
    with pytest.raises(p.DriverError, match="no IPv4 subnet"):
        p.network_spec(_net(**null))


@pytest.mark.parametrize(
    ("generic", "extra", "field"),
    [
        ({"qnf.isolation": "open"}, {}, "qnf.isolation"),
        ({"qnf.nat": "perhaps"}, {}, "qnf.nat"),
        ({"qnf.mtu": "70000"}, {}, "qnf.mtu"),
        ({"qnf.name": "UPPER"}, {}, "qnf.name"),
        ({"qnf.zone": "x"}, {}, "unknown option qnf.zone"),
        ({"qnf.label.": "x"}, {}, "qnf.label."),
        ({"qnf.subnet": "10.1.0.0/24"}, {}, "only for --ipam-driver null"),
        ({}, {"NetworkID": "abc"}, "NetworkID"),
        ({}, {"IPv4Data": [{"Pool": "10.1.0.0/24"}, {"Pool": "10.2.0.0/24"}]}, "one IPv4 subnet"),
        ({}, {"IPv4Data": [{"Pool": "10.1.0.0/24", "Gateway": "nope"}]}, "IPv4Data.Gateway"),
        ({}, {"IPv4Data": [{"Pool": "10.1.0.1/24"}]}, "subnet"),
    ],
)
def test_bad_network_requests_name_the_field(
    generic: dict[str, Any], extra: dict[str, Any], field: str
) -> None:
    with pytest.raises(p.DriverError, match=field.replace(".", r"\.")):
        p.network_spec(_net(generic, **extra))


def _ep(interface: dict[str, str] | None = None, **options: Any) -> p.CreateEndpointRequest:
    return p.CreateEndpointRequest.model_validate(
        {
            "NetworkID": NID,
            "EndpointID": EID,
            "Interface": interface if interface is not None else {"Address": "10.70.0.2/24"},
            "Options": {
                "com.docker.network.endpoint.exposedports": [],
                "com.docker.network.portmap": [],
                **options,
            },
        }
    )


def test_endpoint_add_is_a_handoff_with_dockers_address() -> None:
    portmap = [
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
        {"Proto": 17, "IP": "", "Port": 53, "HostIP": "127.0.0.1", "HostPort": 5353, "HostPortEnd": 5353},
        {"Proto": 6, "IP": "", "Port": 9000, "HostIP": "", "HostPort": 0, "HostPortEnd": 0},
    ]
    options: dict[str, Any] = {
        "com.docker.network.portmap": portmap,
        "qnf.name": "web",
        "qnf.label.app": "web",
    }
    add = p.endpoint_add(_ep(None, **options), "blue")
    assert add.handoff and add.netns == "" and add.container_id == EID and add.ifname == "eth0"
    assert add.ips == [ip_address("10.70.0.2")] and add.mac is None and add.network == "blue"
    assert add.name == "web" and add.labels == {"app": "web"}
    assert [(m.host_port, m.container_port, m.protocol) for m in add.port_mappings] == [
        (8080, 80, "tcp"),
        (5353, 53, "udp"),
    ]
    # Without an address (null IPAM) qnf's IPAM allocates.
    assert p.endpoint_add(_ep({}), "blue").ips == []


@pytest.mark.parametrize(
    ("interface", "options", "field"),
    [
        ({"Address": "not-an-ip"}, {}, "Interface.Address"),
        ({"MacAddress": "zz:zz"}, {}, "mac"),
        ({}, {"qnf.name": "-bad-"}, "qnf.name"),
        ({}, {"qnf.colour": "x"}, "unknown option"),
        ({}, {"com.docker.network.portmap": [{"Proto": 6}]}, "portmap"),
        ({}, {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 70000}]}, "portmap"),
    ],
)
def test_bad_endpoint_requests_name_the_field(
    interface: dict[str, str], options: dict[str, Any], field: str
) -> None:
    with pytest.raises(p.DriverError, match=field):
        p.endpoint_add(_ep(interface, **options), "blue")


def _endpoint(**update: Any) -> Endpoint:
    fields: dict[str, Any] = {
        "endpoint_id": "e" * 24,
        "request_id": EID,
        "container_id": EID,
        "ifname": "eth0",
        "netns": "",
        "node": "n1",
        "network": "blue",
        "name": "web",
        "labels": {},
        "identity": "spiffe://qnf.local/network/blue/endpoint/web",
        "mac": "02:00:00:00:00:01",
        "mtu": 1500,
        "host_ifname": "q0123456789",
        "addresses": ["10.70.0.2/24", "fd00::2/64"],
        "gateways": ["10.70.0.1", "fd00::1"],
        "created_ms": 1,
        "handoff_ifname": "h0123456789",
    }
    fields.update(update)
    return Endpoint.model_validate(fields)


def test_replies_give_docker_only_what_it_lacks() -> None:
    assert p.create_endpoint_reply(_ep(), _endpoint()) == {
        "Interface": {"MacAddress": "02:00:00:00:00:01", "AddressIPv6": "fd00::2/64"}
    }
    given = _ep({"Address": "10.70.0.2/24", "AddressIPv6": "fd00::2/64", "MacAddress": "02:00:00:00:00:01"})
    assert p.create_endpoint_reply(given, _endpoint()) == {"Interface": {}}
    assert p.join_reply(_endpoint()) == {
        "InterfaceName": {"SrcName": "h0123456789", "DstPrefix": "eth"},
        "Gateway": "10.70.0.1",
        "GatewayIPv6": "fd00::1",
    }
    with pytest.raises(p.DriverError, match="not created for Docker"):
        p.join_reply(_endpoint(handoff_ifname=None))


def test_container_labels_become_endpoint_labels_where_valid() -> None:
    from docker_plugin.labels import endpoint_labels

    docker = {"app": "web", "com.example/tier": "front", "x" * 70: "too long a key", "ok": "v" * 64}
    assert endpoint_labels(docker) == {"app": "web", "com.example/tier": "front"}
    assert endpoint_labels(None) == {}
