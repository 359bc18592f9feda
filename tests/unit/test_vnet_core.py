"""Unit tests of vnet's pure core: the allocator, network validation, deterministic names.

No I/O: the "store" of leased addresses is a plain set, as host-local's FakeStore.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from libs.common.errors import Conflict, InvalidRequest
from libs.common.messages import NetworkSpec, NetworkUpdate
from services.vnet.core import ipam
from services.vnet.core.names import (
    OWNED_BRIDGE,
    OWNED_VETH,
    bridge_mac,
    bridge_name,
    default_endpoint_name,
    endpoint_id,
    endpoint_mac,
    host_veth_name,
    lease_key,
)
from services.vnet.core.networks import apply_update, build_network, same_spec

NET = ip_network("10.0.0.0/29")  # .0 network, .1 gateway, .2-.6 usable, .7 broadcast
GW = ip_address("10.0.0.1")


def take_all(subnet, gateway, used, last=None):  # type: ignore[no-untyped-def]
    """Allocate until exhausted, the way the actor does: first candidate wins each round."""
    got = []
    while True:
        nxt = next(ipam.candidates(subnet, gateway, used, last), None)
        if nxt is None:
            return got
        used.add(nxt)
        got.append(nxt)
        last = nxt


def test_allocates_in_order_and_never_reserved_addresses() -> None:
    got = take_all(NET, GW, set())
    assert [str(a) for a in got] == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    assert ipam.free_count(NET, GW, len(got)) == 0


@pytest.mark.parametrize(
    ("last", "first"),
    [(None, "10.0.0.2"), ("10.0.0.3", "10.0.0.4"), ("10.0.0.6", "10.0.0.2")],
    ids=["start", "middle", "end-wraps"],
)
def test_round_robin_from_last(last: str | None, first: str) -> None:
    nxt = next(ipam.candidates(NET, GW, set(), ip_address(last) if last else None))
    assert str(nxt) == first


def test_release_and_reuse() -> None:
    used = set(take_all(NET, GW, set()))
    used.discard(ip_address("10.0.0.4"))
    assert [str(a) for a in ipam.candidates(NET, GW, used, ip_address("10.0.0.6"))] == ["10.0.0.4"]


def test_gateway_in_the_middle_is_skipped() -> None:
    got = take_all(NET, ip_address("10.0.0.4"), set())
    assert ip_address("10.0.0.4") not in got and ip_address("10.0.0.1") in got


def test_static_requests() -> None:
    used = {ip_address("10.0.0.3")}
    ipam.check_static(NET, GW, ip_address("10.0.0.5"), used)
    for bad in ("10.0.0.0", "10.0.0.1", "10.0.0.7", "10.0.1.5"):
        with pytest.raises(InvalidRequest):
            ipam.check_static(NET, GW, ip_address(bad), used)
    with pytest.raises(Conflict):
        ipam.check_static(NET, GW, ip_address("10.0.0.3"), used)


def test_ipv6_has_no_broadcast_and_big_ranges_are_lazy() -> None:
    net6 = ip_network("fd00::/126")
    got = take_all(net6, ip_address("fd00::1"), set())
    assert [str(a) for a in got] == ["fd00::2", "fd00::3"]
    big = ip_network("fd00:1::/64")
    first = next(ipam.candidates(big, ip_address("fd00:1::1"), set(), None))
    assert str(first) == "fd00:1::2"
    assert str(ipam.interface(first, big)) == "fd00:1::2/64"


def spec(**kw) -> NetworkSpec:  # type: ignore[no-untyped-def]
    return NetworkSpec(**{"name": "blue", "subnet": "10.1.0.0/24", **kw})


def test_network_defaults_and_bridge() -> None:
    net = build_network(spec(subnet6="fd00:1::/64"), [], now_ms=1)
    assert (str(net.gateway), str(net.gateway6), net.bridge) == ("10.1.0.1", "fd00:1::1", bridge_name("blue"))
    assert same_spec(net, spec(subnet6="fd00:1::/64"))
    assert not same_spec(net, spec(subnet6="fd00:1::/64", mtu=1400))


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"subnet": "10.1.0.0/31"}, InvalidRequest),
        ({"gateway": "10.2.0.1"}, InvalidRequest),
        ({"gateway": "10.1.0.0"}, InvalidRequest),
        ({"gateway": "10.1.0.255"}, InvalidRequest),
        ({"subnet6": "fd00::/127"}, InvalidRequest),
        ({"gateway6": "fd00::1"}, InvalidRequest),
        ({"subnet": "10.9.0.0/16"}, Conflict),
        ({"subnet": "10.7.0.0/24", "subnet6": "fd09::/48"}, Conflict),
    ],
    ids=[
        "too-small",
        "gw-outside",
        "gw-network",
        "gw-broadcast",
        "v6-too-small",
        "gw6-without-subnet6",
        "overlap",
        "overlap-v6",
    ],
)
def test_bad_networks(kw, error) -> None:  # type: ignore[no-untyped-def]
    other = build_network(NetworkSpec(name="other", subnet="10.9.3.0/24", subnet6="fd09::/64"), [], now_ms=0)
    with pytest.raises(error):
        build_network(spec(**kw), [other], now_ms=1)


def test_update_changes_only_mutable_fields() -> None:
    net = build_network(spec(), [], now_ms=1)
    updated = apply_update(net, NetworkUpdate(name="blue", mtu=1400, labels={"team": "a"}))
    assert (updated.mtu, updated.labels, updated.subnet, updated.nat) == (
        1400,
        {"team": "a"},
        net.subnet,
        True,
    )


def test_names_are_deterministic_and_fit_ifnamsiz() -> None:
    eid = endpoint_id("c0ffee", "eth0")
    assert eid == endpoint_id("c0ffee", "eth0") != endpoint_id("c0ffee", "eth1")
    assert OWNED_VETH.match(host_veth_name(eid)) and len(host_veth_name(eid)) <= 15
    assert OWNED_BRIDGE.match(bridge_name("a" * 63)) and len(bridge_name("a" * 63)) <= 15
    assert bridge_mac("blue") == bridge_mac("blue") != bridge_mac("red")
    assert int(bridge_mac("blue")[:2], 16) & 0x03 == 0x02
    mac = endpoint_mac(eid)
    assert int(mac[:2], 16) & 0x03 == 0x02  # unicast, locally administered
    assert lease_key("blue", "fd00::2") == "blue.fd00__2"
    assert default_endpoint_name("ABC_def.123456789") == "abc-def-1234"
