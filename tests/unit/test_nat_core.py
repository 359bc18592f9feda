"""The NAT compiler and the published-port rules, without I/O."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_address

import pytest

from libs.common.messages import Endpoint, Network, PortMapping, PublishedPort
from services.nat.core.compiler import MAPS, SETS, STRUCTURE, compile_nat, delta, targets
from services.nat.core.ports import conflicting, host_address_error, port_id, same_target


def network(name: str, subnet: str, *, nat: bool = True, subnet6: str | None = None) -> Network:
    base = subnet.rsplit(".", 1)[0]
    return Network.model_validate(
        {
            "name": name,
            "subnet": subnet,
            "gateway": f"{base}.1",
            "subnet6": subnet6,
            "gateway6": None if subnet6 is None else subnet6.split("/")[0] + "1",
            "nat": nat,
            "bridge": "qnf-00000000",
            "created_ms": 0,
        }
    )


def endpoint(eid: str, *addresses: str) -> Endpoint:
    ifaces: list[IPv4Interface | IPv6Interface] = [
        IPv4Interface(a) if ":" not in a else IPv6Interface(a) for a in addresses
    ]
    return Endpoint(
        endpoint_id=eid,
        request_id="r",
        container_id=f"c-{eid}",
        ifname="eth0",
        netns="/run/netns/x",
        node="n1",
        network="a",
        name=eid,
        labels={},
        identity="spiffe://qnf.local/network/a/endpoint/x",
        mac="02:00:00:00:00:01",
        mtu=1500,
        host_ifname="q0000000000",
        addresses=ifaces,
        gateways=[],
        created_ms=0,
    )


def published(eid: str, host_port: int, container_port: int = 80, **extra: object) -> PublishedPort:
    mapping = PortMapping.model_validate({"host_port": host_port, "container_port": container_port, **extra})
    return PublishedPort(
        **mapping.model_dump(),
        id=port_id("n1", mapping),
        node="n1",
        endpoint_id=eid,
        container_id=f"c-{eid}",
        ifname="eth0",
        network="a",
        source="api",
        created_ms=0,
    )


def test_networks_fill_the_fabric_and_masquerade_sets() -> None:
    compiled = compile_nat(
        [network("a", "10.1.0.0/24", subnet6="fd00:1::/64"), network("b", "10.2.0.0/24", nat=False)], []
    )
    prefix = lambda a, n: {"prefix": {"addr": a, "len": n}}  # noqa: E731
    assert compiled.elements["fabric4"] == [prefix("10.1.0.0", 24), prefix("10.2.0.0", 24)]
    assert compiled.elements["masq4"] == [prefix("10.1.0.0", 24)]  # b opted out
    assert compiled.elements["fabric6"] == compiled.elements["masq6"] == [prefix("fd00:1::", 64)]
    assert all(not compiled.elements[m] for m in MAPS)


def test_a_wildcard_port_maps_every_family_and_a_bound_port_only_its_own() -> None:
    eps = {"e1": endpoint("e1", "10.1.0.5/24", "fd00:1::5/64")}
    ports = [published("e1", 8080), published("e1", 5353, 53, protocol="udp", host_ip="192.0.2.1")]
    compiled = compile_nat([], targets(ports, eps))
    assert compiled.elements["any4_addr"] == [[{"concat": ["tcp", 8080]}, "10.1.0.5"]]
    assert compiled.elements["any4_port"] == [[{"concat": ["tcp", 8080]}, 80]]
    assert compiled.elements["any6_addr"] == [[{"concat": ["tcp", 8080]}, "fd00:1::5"]]
    assert compiled.elements["at4_addr"] == [[{"concat": ["192.0.2.1", "udp", 5353]}, "10.1.0.5"]]
    assert compiled.elements["at4_port"] == [[{"concat": ["192.0.2.1", "udp", 5353]}, 53]]
    assert compiled.elements["at6_addr"] == []
    assert compiled.mappings() == 3


def test_ports_of_unknown_endpoints_are_not_compiled() -> None:
    assert targets([published("gone", 8080)], {}) == []


def test_delta_changes_only_what_changed_and_rewrites_moved_targets() -> None:
    eps = {"e1": endpoint("e1", "10.1.0.5/24"), "e2": endpoint("e2", "10.1.0.6/24")}
    old = compile_nat(
        [network("a", "10.1.0.0/24")], targets([published("e1", 8080), published("e1", 9090)], eps)
    )
    new = compile_nat([network("a", "10.1.0.0/24")], targets([published("e2", 8080)], eps))
    cmds = delta(old, new)
    deleted = {
        (c["delete"]["element"]["name"], repr(e))
        for c in cmds
        if "delete" in c
        for e in c["delete"]["element"]["elem"]
    }
    added = {
        (c["add"]["element"]["name"], repr(e))
        for c in cmds
        if "add" in c
        for e in c["add"]["element"]["elem"]
    }
    key8080, key9090 = repr({"concat": ["tcp", 8080]}), repr({"concat": ["tcp", 9090]})
    assert deleted == {("any4_addr", key8080), ("any4_addr", key9090), ("any4_port", key9090)}
    assert added == {("any4_addr", repr([{"concat": ["tcp", 8080]}, "10.1.0.6"]))}
    # Deletions come first: a re-added key never collides with itself.
    assert [next(iter(c)) for c in cmds] == sorted([next(iter(c)) for c in cmds], key=lambda k: k != "delete")
    assert delta(new, new) == []


def test_full_replaces_the_table_atomically_and_names_only_its_own() -> None:
    compiled = compile_nat([network("a", "10.1.0.0/24")], [])
    cmds = compiled.full()
    assert cmds[0] == {"add": {"table": {"family": "inet", "name": "qnf_nat"}}}
    assert cmds[1] == {"delete": {"table": {"family": "inet", "name": "qnf_nat"}}}
    for cmd in cmds:
        (obj,) = next(iter(cmd.values())).values()
        assert obj.get("table", obj.get("name")) == "qnf_nat"
    assert compile_nat([network("a", "10.1.0.0/24")], []).full() == cmds  # deterministic
    names = {
        next(iter(c["add"].values()))["name"] for c in STRUCTURE if "set" in c["add"] or "map" in c["add"]
    }
    assert names == set(SETS + MAPS)


def test_port_ids_name_the_slot() -> None:
    assert port_id("n1", PortMapping(host_port=80, container_port=8080)) == "n1.tcp.80.any"
    assert (
        port_id(
            "n1",
            PortMapping(host_port=53, container_port=53, protocol="udp", host_ip=IPv4Address("192.0.2.1")),
        )
        == "n1.udp.53.192-0-2-1"
    )
    assert (
        port_id("n1", PortMapping(host_port=53, container_port=53, host_ip=IPv6Address("fd00::1")))
        == "n1.tcp.53.fd00__1"
    )


@pytest.mark.parametrize(
    ("held", "asked", "clash"),
    [
        ({}, {}, True),  # the same wildcard
        ({}, {"host_ip": "192.0.2.1"}, True),  # a wildcard holds every address
        ({"host_ip": "192.0.2.1"}, {}, True),
        ({"host_ip": "192.0.2.1"}, {"host_ip": "192.0.2.1"}, True),
        ({"host_ip": "192.0.2.1"}, {"host_ip": "192.0.2.2"}, False),  # two addresses, one port each
        ({}, {"protocol": "udp"}, False),  # TCP and UDP are different ports
    ],
)
def test_conflicts_are_those_of_two_sockets(held: dict, asked: dict, clash: bool) -> None:
    holder = published("e1", 8080, **held)
    mapping = PortMapping.model_validate({"host_port": 8080, "container_port": 80, **asked})
    assert (conflicting([holder], "n1", mapping) is holder) is clash
    assert conflicting([holder], "n2", mapping) is None  # host ports are per node


def test_a_retry_is_not_a_conflict() -> None:
    holder = published("e1", 8080)
    assert same_target(holder, "e1", PortMapping(host_port=8080, container_port=80))
    assert not same_target(holder, "e2", PortMapping(host_port=8080, container_port=80))
    assert not same_target(holder, "e1", PortMapping(host_port=8080, container_port=81))


def test_host_addresses_must_be_the_nodes_own_and_not_the_fabrics() -> None:
    mine = {ip_address("192.0.2.1"), ip_address("10.1.0.1")}
    fabric = {ip_address("10.1.0.1")}
    assert host_address_error(None, mine, fabric) is None
    assert host_address_error(ip_address("192.0.2.1"), mine, fabric) is None
    assert "no address" in (host_address_error(ip_address("203.0.113.9"), mine, fabric) or "")
    assert "gateway" in (host_address_error(ip_address("10.1.0.1"), mine, fabric) or "")


def _canonical(compiled: object) -> dict[str, list[str]]:
    return {name: sorted(repr(e) for e in elems) for name, elems in compiled.elements.items()}  # type: ignore[attr-defined]


def test_replacing_targets_equals_compiling_again() -> None:
    from services.nat.core.compiler import replace_targets

    eps = {"e1": endpoint("e1", "10.1.0.5/24", "fd00:1::5/64"), "e2": endpoint("e2", "10.1.0.6/24")}
    nets = [network("a", "10.1.0.0/24", subnet6="fd00:1::/64")]
    before = [
        published("e1", 8080),
        published("e2", 9090, protocol="udp"),
        published("e1", 53, host_ip="192.0.2.1"),
    ]
    after = [published("e1", 8080), published("e2", 9191), published("e2", 53, host_ip="192.0.2.1")]
    old = compile_nat(nets, targets(before, eps))
    gone = targets([before[1], before[2]], eps)
    came = targets([after[1], after[2]], eps)
    new, cmds = replace_targets(old, gone, came)
    assert _canonical(new) == _canonical(compile_nat(nets, targets(after, eps)))
    verbs = [next(iter(c)) for c in cmds]
    assert verbs == sorted(verbs, key=lambda v: v == "add") and "delete" in verbs and "add" in verbs
    # A target that stays (gone and back again) changes nothing.
    same, none = replace_targets(old, targets([before[0]], eps), targets([before[0]], eps))
    assert none == [] and _canonical(same) == _canonical(old)
