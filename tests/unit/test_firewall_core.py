"""Unit tests of the firewall's pure core: selectors, validation, the policy model, explain, the
nftables compiler, Kubernetes NetworkPolicy translation and KV keys.

No I/O: networks, endpoints and policies are plain values; the compiler's JSON is inspected, never
applied. Flows are judged with `explain`, which walks the same grants the compiler turns into sets.

The world most tests use (DESIGN §5):
    blue  10.1.0.0/24  zero-trust     web .10, db .20 (named port pg=5432), cache .30, api .40
    red   10.2.0.0/24  zero-trust     red-api .10, red-db .20 (named port pg=6432)
    green 10.3.0.0/24  default-allow  ga .10, gb .20
    203.0.113.0/24 and 198.51.100.0/24 are the world outside the fabric.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest

from libs.common.errors import PolicyRejected
from libs.common.messages import (
    Endpoint,
    FlowQuery,
    LabelSelector,
    NamedPort,
    Network,
    Policy,
    PolicySpec,
    Verdict,
)
from libs.common.selectors import NETWORK_NAME_LABEL, matches
from services.firewall.core import k8s
from services.firewall.core.compiler import Box, Compiled, compile_model, disjoint
from services.firewall.core.explain import explain
from services.firewall.core.keys import policy_key, ref_key
from services.firewall.core.model import Model, build, group_id, policy_types
from services.firewall.core.validate import validate

OUTSIDE = "203.0.113.7"

# ---------------------------------------------------------------- helpers


def network(name: str, subnet: str, *, isolation: str = "zero-trust", **labels: str) -> Network:
    net = ip_network(subnet)
    return Network(
        name=name,
        subnet=net,
        gateway=net[1],
        bridge=f"qnf-{name}",
        created_ms=1,
        isolation=isolation,
        labels=labels,
    )


def endpoint(
    name: str,
    net: Network,
    host: int,
    labels: dict[str, str] | None = None,
    *,
    node: str = "n1",
    named_ports: dict[str, NamedPort] | None = None,
) -> Endpoint:
    address = net.subnet[host]
    uid = int(address) & 0xFFFFFF
    return Endpoint(
        endpoint_id=f"ep-{name}",
        request_id=f"req-{name}",
        container_id=f"ctr-{name}",
        ifname="eth0",
        netns=f"/var/run/netns/{name}",
        node=node,
        network=net.name,
        name=name,
        labels=labels or {},
        identity=f"spiffe://qnf.test/ns/{net.name}/ep/{name}",
        mac=f"02:00:00:{uid >> 16:02x}:{(uid >> 8) & 0xFF:02x}:{uid & 0xFF:02x}",
        mtu=1500,
        host_ifname=f"q{uid:010x}",
        addresses=[ip_interface(f"{address}/{net.subnet.prefixlen}")],
        gateways=[net.gateway],
        named_ports=named_ports or {},
        created_ms=1,
    )


def relabel(ep: Endpoint, **labels: str) -> Endpoint:
    return ep.model_copy(update={"labels": labels})


def policy(**body: Any) -> Policy:
    return Policy.model_validate(body)


def spec(**body: Any) -> PolicySpec:
    return PolicySpec.model_validate(body)


def addr(x: Endpoint | str) -> str:
    return str(x.addresses[0].ip) if isinstance(x, Endpoint) else x


def judge(
    model: Model, src: Endpoint | str, dst: Endpoint | str, proto: str = "TCP", port: int | None = None
) -> Verdict:
    query = FlowQuery(
        source=ip_address(addr(src)),
        destination=ip_address(addr(dst)),
        protocol=proto,
        port=port,
    )
    return explain(model, query)


def name_is(net: str) -> dict[str, Any]:
    """A networkSelector for one network by its implicit name label."""
    return {"matchLabels": {NETWORK_NAME_LABEL: net}}


def app(value: str) -> dict[str, Any]:
    return {"matchLabels": {"app": value}}


BLUE = network("blue", "10.1.0.0/24", env="prod")
RED = network("red", "10.2.0.0/24", env="prod")
GREEN = network("green", "10.3.0.0/24", isolation="default-allow", env="dev")
NETWORKS = [BLUE, RED, GREEN]

WEB = endpoint("web", BLUE, 10, {"app": "web", "tier": "front"}, named_ports={"pg": NamedPort(port=9999)})
DB = endpoint("db", BLUE, 20, {"app": "db"}, named_ports={"pg": NamedPort(port=5432)})
CACHE = endpoint("cache", BLUE, 30, {"app": "cache"})
API = endpoint("api", BLUE, 40, {"app": "api"})
RED_API = endpoint("red-api", RED, 10, {"app": "api"})
RED_DB = endpoint("red-db", RED, 20, {"app": "db"}, named_ports={"pg": NamedPort(port=6432)})
GA = endpoint("ga", GREEN, 10, {"app": "a"})
GB = endpoint("gb", GREEN, 20, {"app": "b"})
ENDPOINTS = [WEB, DB, CACHE, API, RED_API, RED_DB, GA, GB]


def model_of(*policies: Policy, endpoints: Sequence[Endpoint] = ENDPOINTS, node: str | None = None) -> Model:
    return build(NETWORKS, endpoints, policies, node=node)


def allow_egress(net: str, *peers: dict[str, Any], name: str = "egress-all") -> Policy:
    """Every endpoint of `net` may send to `peers` (none: the zero-trust 'anyone')."""
    return policy(name=name, network=net, endpointSelector={}, egress=[{"peers": list(peers)}])


def allow_ingress(net: str, *peers: dict[str, Any], name: str = "ingress-all") -> Policy:
    return policy(name=name, network=net, endpointSelector={}, ingress=[{"peers": list(peers)}])


EVERY_NETWORK: dict[str, Any] = {"networkSelector": {}}


def assert_allowed(v: Verdict, policy_name: str | None = None, rule: str | None = None) -> None:
    assert v.allowed, v.reason
    assert v.policy == policy_name
    assert v.rule == rule


def assert_denied(
    v: Verdict, direction: str, policy_name: str | None = None, rule: str | None = None
) -> None:
    assert not v.allowed, v.reason
    assert v.direction == direction
    assert v.policy == policy_name
    assert v.rule == rule


# ---------------------------------------------------------------- 1. selectors


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {}, True),
        ({}, {"app": "web"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "web", "tier": "front"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
        ({"matchLabels": {"app": "web"}}, {}, False),
        ({"matchLabels": {"app": "web", "tier": "front"}}, {"app": "web"}, False),
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]},
            {"app": "db"},
            True,
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]},
            {"app": "x"},
            False,
        ),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}, {}, False),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, {"app": "db"}, True),
        (
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]},
            {"app": "web"},
            False,
        ),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, {}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, {"app": ""}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, {"role": "x"}, False),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, {"role": "x"}, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, {"app": "web"}, False),
        (
            {
                "matchLabels": {"tier": "front"},
                "matchExpressions": [
                    {"key": "app", "operator": "In", "values": ["web"]},
                    {"key": "legacy", "operator": "DoesNotExist"},
                ],
            },
            {"app": "web", "tier": "front"},
            True,
        ),
        (
            {
                "matchLabels": {"tier": "front"},
                "matchExpressions": [
                    {"key": "app", "operator": "In", "values": ["web"]},
                    {"key": "legacy", "operator": "DoesNotExist"},
                ],
            },
            {"app": "web", "tier": "front", "legacy": "yes"},
            False,
        ),
    ],
    ids=[
        "empty-selects-empty-labels",
        "empty-selects-all",
        "labels-subset",
        "labels-wrong-value",
        "labels-missing-key",
        "labels-all-required",
        "in-member",
        "in-not-member",
        "in-absent-key",
        "notin-other-value",
        "notin-member",
        "notin-absent-key-matches",
        "exists-empty-value",
        "exists-absent",
        "doesnotexist-absent",
        "doesnotexist-present",
        "all-requirements-and",
        "one-requirement-fails",
    ],
)
def test_selector_matches(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert matches(LabelSelector.model_validate(selector), labels) is expected


# ---------------------------------------------------------------- 2. validation

KNOWN = {"blue", "red", "green"}


def _normal(**extra: Any) -> dict[str, Any]:
    return {"name": "p", "network": "blue", **extra}


def _ports(*ports: dict[str, Any]) -> dict[str, Any]:
    return _normal(ingress=[{"ports": list(ports)}])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            _normal(endpointSelector={"matchExpressions": [{"key": "a", "operator": "In"}]}),
            "endpointSelector.matchExpressions[0]: operator In needs values",
        ),
        (
            _normal(
                endpointSelector={
                    "matchExpressions": [
                        {"key": "a", "operator": "Exists"},
                        {"key": "b", "operator": "NotIn", "values": []},
                    ]
                }
            ),
            "endpointSelector.matchExpressions[1]: operator NotIn needs values",
        ),
        (
            _normal(
                ingress=[
                    {},
                    {
                        "peers": [
                            {"ipBlock": {"cidr": "10.0.0.0/8"}},
                            {
                                "endpointSelector": {
                                    "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
                                }
                            },
                        ]
                    },
                ]
            ),
            "ingress[1].peers[1].endpointSelector.matchExpressions[0]: operator Exists takes no values",
        ),
        (
            _normal(
                egress=[
                    {
                        "peers": [
                            {
                                "networkSelector": {
                                    "matchExpressions": [
                                        {"key": "a", "operator": "DoesNotExist", "values": ["x"]}
                                    ]
                                }
                            }
                        ]
                    }
                ]
            ),
            "egress[0].peers[0].networkSelector.matchExpressions[0]: operator DoesNotExist takes no values",
        ),
        (_ports({"protocol": "ICMP", "port": 8}), "ingress[0].ports[0]: ICMP has no ports"),
        (
            _ports({"protocol": "TCP", "port": 80}, {"protocol": "ICMP", "endPort": 9}),
            "ingress[0].ports[1]: ICMP",
        ),
        (_ports({"port": 0}), "ingress[0].ports[0].port: 0 is not in 1-65535"),
        (_ports({"port": 70000}), "ingress[0].ports[0].port: 70000 is not in 1-65535"),
        (_ports({"port": 8080, "endPort": 8000}), "ingress[0].ports[0].endPort: 8000 must be between port"),
        (_ports({"port": 8080, "endPort": 70000}), "ingress[0].ports[0].endPort: 70000 must be between"),
        (_ports({"endPort": 8000}), "ingress[0].ports[0].endPort: a port range needs a numeric port"),
        (
            _ports({"port": "http", "endPort": 8000}),
            "ingress[0].ports[0].endPort: a port range needs a numeric",
        ),
        (
            _normal(egress=[{"peers": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "endpointSelector": {}}]}]),
            "egress[0].peers[0]: a peer is exactly one of selectors, ipBlock or identity",
        ),
        (
            _normal(egress=[{"peers": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "networkSelector": {}}]}]),
            "egress[0].peers[0]: a peer is exactly one of",
        ),
        (
            _normal(egress=[{"peers": [{"identity": "spiffe://qnf.test/x", "endpointSelector": {}}]}]),
            "egress[0].peers[0]: a peer is exactly one of",
        ),
        (_normal(egress=[{"peers": [{}]}]), "egress[0].peers[0]: a peer is exactly one of"),
        (
            _normal(ingress=[{"peers": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]),
            "ingress[0].peers[0].ipBlock.except[0]: 10.1.0.0/24 is not inside 10.0.0.0/16",
        ),
        (
            _normal(
                ingress=[
                    {"peers": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "fd00::/64"]}}]}
                ]
            ),
            "ingress[0].peers[0].ipBlock.except[1]: fd00::/64 is not inside 10.0.0.0/8",
        ),
        (_normal(network="purple"), "network: unknown network 'purple'"),
        ({"name": "p"}, "network: a policy names the network"),
        (_normal(networkSelector={}), "networkSelector: only admin-tier policies select networks"),
        (_normal(ingress=[{"action": "Deny"}]), "ingress[0].action: only admin-tier policies deny or pass"),
        (_normal(egress=[{}, {"action": "Pass"}]), "egress[1].action: only admin-tier policies deny or pass"),
        ({"name": "p", "tier": "admin", "network": "blue"}, "network: admin-tier policies select networks"),
        (
            {
                "name": "p",
                "tier": "admin",
                "networkSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
            },
            "networkSelector.matchExpressions[0]: operator In needs values",
        ),
    ],
    ids=[
        "in-without-values",
        "notin-without-values-second",
        "exists-with-values-in-peer",
        "doesnotexist-with-values-in-network-selector",
        "icmp-with-port",
        "icmp-with-endport",
        "port-zero",
        "port-too-big",
        "endport-below-port",
        "endport-too-big",
        "endport-without-port",
        "endport-with-named-port",
        "peer-ipblock-and-endpoint-selector",
        "peer-ipblock-and-network-selector",
        "peer-identity-and-selector",
        "peer-empty",
        "except-outside-cidr",
        "except-other-family",
        "unknown-network",
        "normal-without-network",
        "network-selector-on-normal-tier",
        "deny-on-normal-tier",
        "pass-on-normal-tier",
        "admin-with-network",
        "admin-network-selector-values",
    ],
)
def test_validate_rejects_naming_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyRejected, match=re.escape(message)):
        validate(spec(**body), KNOWN)


def test_validate_admin_tier_switch() -> None:
    admin = spec(name="p", tier="admin", ingress=[{"action": "Deny"}])
    validate(admin, KNOWN)
    with pytest.raises(PolicyRejected, match=r"^tier: the admin tier is disabled"):
        validate(admin, KNOWN, admin_tier=False)


def test_validate_accepts_a_full_policy() -> None:
    body = _normal(
        endpointSelector={
            "matchLabels": {"app": "db"},
            "matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["test"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        },
        policyTypes=["Ingress", "Egress"],
        ingress=[
            {
                "peers": [
                    {"endpointSelector": app("web"), "networkSelector": name_is("red")},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.4/32"]}},
                    {"identity": "spiffe://qnf.test/*"},
                ],
                "ports": [
                    {"protocol": "TCP", "port": 8000, "endPort": 8080},
                    {"protocol": "UDP", "port": "dns"},
                    {"protocol": "SCTP"},
                    {"protocol": "ICMP"},
                    {"port": 65535, "endPort": 65535},
                ],
            }
        ],
        egress=[{}],
    )
    validate(spec(**body), KNOWN)  # no exception


# ---------------------------------------------------------------- 3. model and explain: zero trust


def test_zero_trust_without_policies_denies_everything_but_dns() -> None:
    m = model_of()
    assert_denied(judge(m, WEB, DB, port=5432), "egress")
    assert_denied(judge(m, WEB, OUTSIDE, port=443), "egress")
    assert_denied(judge(m, OUTSIDE, DB, port=5432), "ingress")
    assert_denied(judge(m, RED_API, WEB, proto="ICMP"), "egress")
    assert judge(m, WEB, DB, port=5432).reason == "no policy allows egress of web"
    assert m.grants == ()
    assert {ip_address("10.1.0.10"), ip_address("10.2.0.10")}.isdisjoint(m.open_ingress | m.open_egress)


def test_zero_trust_ingress_only_policy_opens_no_egress() -> None:
    db_in = policy(name="db-in", network="blue", endpointSelector=app("db"), ingress=[{"peers": []}])
    m = model_of(db_in)
    # db may now receive, but web still may not send, and db itself still may not send.
    assert_denied(judge(m, WEB, DB, port=5432), "egress")
    assert_denied(judge(m, DB, WEB, port=80), "egress")
    assert_denied(judge(m, DB, OUTSIDE, port=443), "egress")
    assert_allowed(judge(m, OUTSIDE, DB, port=5432), "db-in", "ingress[0]")
    assert {g.direction for g in m.grants} == {"ingress"}


def test_zero_trust_needs_both_directions() -> None:
    web_out = policy(
        name="web-out",
        network="blue",
        endpointSelector=app("web"),
        egress=[{"peers": [{"endpointSelector": {}}]}],
    )
    db_in = policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[{"peers": [{"endpointSelector": {}}]}],
    )
    assert_denied(judge(model_of(web_out), WEB, DB, port=5432), "ingress")
    assert_denied(judge(model_of(db_in), WEB, DB, port=5432), "egress")
    v = judge(model_of(web_out, db_in), WEB, DB, port=5432)
    assert_allowed(v, "db-in", "ingress[0]")
    assert v.direction == "ingress"
    assert "egress allowed by web-out egress[0]" in v.reason
    # The reverse flow is a different pair of directions, still closed.
    assert_denied(judge(model_of(web_out, db_in), DB, WEB, port=80), "egress")


def test_a_non_local_end_is_judged_by_its_own_node() -> None:
    remote = endpoint("remote", BLUE, 50, {"app": "web"}, node="n2")
    db_in = policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[{"peers": [{"endpointSelector": {}}]}],
    )
    m = build(NETWORKS, [*ENDPOINTS, remote], [db_in], node="n1")
    assert ip_address("10.1.0.50") not in m.local
    assert ip_address("10.1.0.50") not in m.group_of
    # remote's egress is n2's business; on n1 only db's ingress decides.
    assert_allowed(judge(m, remote, DB, port=5432), "db-in", "ingress[0]")


# ---------------------------------------------------------------- default-allow


def test_default_allow_without_policies_is_open() -> None:
    m = model_of()
    v = judge(m, GA, GB, port=80)
    assert_allowed(v, None, None)
    assert "not isolated" in v.reason
    assert {ip_address("10.3.0.10"), ip_address("10.3.0.20")} <= m.open_ingress & m.open_egress
    assert_allowed(judge(m, GA, OUTSIDE, proto="UDP", port=123))
    assert_allowed(judge(m, OUTSIDE, GB, proto="ICMP"))


@pytest.mark.parametrize(
    ("body", "types"),
    [
        ({}, {"Ingress"}),
        ({"ingress": [{}]}, {"Ingress"}),
        ({"egress": [{}]}, {"Ingress", "Egress"}),
        ({"ingress": [{}], "egress": [{}]}, {"Ingress", "Egress"}),
        ({"policyTypes": ["Egress"]}, {"Egress"}),
        ({"policyTypes": ["Ingress"], "egress": [{}]}, {"Ingress"}),
        ({"policyTypes": []}, set()),
    ],
    ids=[
        "empty",
        "ingress-rules",
        "egress-rules",
        "both-rules",
        "explicit-egress",
        "explicit-wins",
        "explicit-none",
    ],
)
def test_policy_types_default(body: dict[str, Any], types: set[str]) -> None:
    assert policy_types(policy(name="p", network="green", **body)) == types


@pytest.mark.parametrize(
    ("body", "in_isolated", "out_isolated"),
    [
        ({}, True, False),
        ({"ingress": [{"peers": [{"endpointSelector": app("nobody")}]}]}, True, False),
        ({"egress": [{"peers": [{"endpointSelector": app("nobody")}]}]}, True, True),
        ({"policyTypes": ["Egress"]}, False, True),
        (
            {"policyTypes": ["Ingress"], "egress": [{"peers": [{"endpointSelector": app("nobody")}]}]},
            True,
            False,
        ),
        ({"policyTypes": ["Ingress", "Egress"]}, True, True),
    ],
    ids=[
        "no-rules",
        "ingress-rules",
        "egress-rules",
        "explicit-egress",
        "explicit-ingress-ignores-egress",
        "both",
    ],
)
def test_default_allow_isolates_a_direction_only_when_a_policy_of_that_type_selects(
    body: dict[str, Any], in_isolated: bool, out_isolated: bool
) -> None:
    m = model_of(policy(name="gb-pol", network="green", endpointSelector=app("b"), **body))
    gb, ga = ip_address("10.3.0.20"), ip_address("10.3.0.10")
    assert (gb not in m.open_ingress) is in_isolated
    assert (gb not in m.open_egress) is out_isolated
    assert ga in m.open_ingress and ga in m.open_egress  # not selected: untouched
    into = judge(m, GA, GB, port=80)
    out = judge(m, GB, GA, port=80)
    assert into.allowed is not in_isolated
    assert out.allowed is not out_isolated
    if in_isolated:
        assert_denied(into, "ingress")
    if out_isolated:
        assert_denied(out, "egress")


def test_default_allow_policy_allows_what_it_lists() -> None:
    gb_in = policy(
        name="gb-in",
        network="green",
        endpointSelector=app("b"),
        ingress=[{"peers": [{"endpointSelector": app("a")}], "ports": [{"port": 80}]}],
    )
    m = model_of(gb_in)
    assert_allowed(judge(m, GA, GB, port=80), "gb-in", "ingress[0]")
    assert_denied(judge(m, GA, GB, port=81), "ingress")
    assert_denied(judge(m, OUTSIDE, GB, port=80), "ingress")


# ---------------------------------------------------------------- selection


def test_empty_endpoint_selector_selects_every_endpoint_of_its_network_only() -> None:
    everything = policy(
        name="all",
        network="blue",
        endpointSelector={},
        ingress=[{"peers": [{"endpointSelector": {}}]}],
        egress=[{"peers": [{"endpointSelector": {}}]}],
    )
    m = model_of(everything)
    for src, dst in [(WEB, DB), (DB, CACHE), (CACHE, API), (API, WEB)]:
        assert_allowed(judge(m, src, dst, port=1234), "all", "ingress[0]")
    assert {a for g in m.grants for a in m.groups[g.group]} == {
        ip_address(addr(e)) for e in (WEB, DB, CACHE, API)
    }
    # Red is zero-trust too and the blue policy does not select its endpoints.
    assert_denied(judge(m, RED_API, RED_DB, port=1), "egress")
    # endpointSelector {} as a peer means blue's endpoints only.
    assert_denied(judge(m, WEB, RED_API, port=1), "egress")


def test_a_policy_that_selects_nothing_changes_nothing() -> None:
    nobody = policy(
        name="nobody",
        network="green",
        endpointSelector=app("nobody"),
        policyTypes=["Ingress", "Egress"],
        ingress=[],
    )
    also_nobody = policy(name="wrong-net", network="blue", endpointSelector=app("a"), ingress=[{}])
    base, with_it = model_of(), model_of(nobody, also_nobody)
    assert with_it.grants == base.grants == ()
    assert with_it.open_ingress == base.open_ingress
    assert with_it.open_egress == base.open_egress
    assert_allowed(judge(with_it, GA, GB, port=80))


# ---------------------------------------------------------------- peers


# Sources: red-api (red, app=api), red-db (red, app=db), api (blue, app=api), web (blue, app=web).
AND_PEERS = [{"networkSelector": name_is("red"), "endpointSelector": app("api")}]
OR_PEERS = [{"networkSelector": name_is("red")}, {"endpointSelector": app("api")}]


@pytest.mark.parametrize(
    ("peers", "source", "allowed"),
    [
        (AND_PEERS, RED_API, True),
        (AND_PEERS, RED_DB, False),
        (AND_PEERS, API, False),
        (AND_PEERS, WEB, False),
        (OR_PEERS, RED_API, True),
        (OR_PEERS, RED_DB, True),
        (OR_PEERS, API, True),
        (OR_PEERS, WEB, False),
    ],
    ids=[
        "and-both-match",
        "and-network-only",
        "and-labels-only",
        "and-neither",
        "or-both-match",
        "or-network-only",
        "or-labels-only",
        "or-neither",
    ],
)
def test_network_and_endpoint_selector_in_one_peer_is_and_two_peers_is_or(
    peers: list[dict[str, Any]], source: Endpoint, allowed: bool
) -> None:
    db_in = policy(name="db-in", network="blue", endpointSelector=app("db"), ingress=[{"peers": peers}])
    m = model_of(db_in, allow_egress("blue", EVERY_NETWORK), allow_egress("red", EVERY_NETWORK))
    v = judge(m, source, DB, port=5432)
    if allowed:
        assert_allowed(v, "db-in", "ingress[0]")
    else:
        assert_denied(v, "ingress")


def test_network_selector_alone_allows_the_whole_subnet() -> None:
    db_in = policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[{"peers": [{"networkSelector": name_is("red")}]}],
    )
    m = model_of(db_in, allow_egress("red", EVERY_NETWORK))
    assert {g.peer for g in m.grants if g.policy == "db-in"} == {ip_network("10.2.0.0/24")}
    assert_allowed(judge(m, RED_API, DB, port=5432), "db-in", "ingress[0]")
    assert_allowed(judge(m, RED_DB, DB, proto="UDP", port=9), "db-in", "ingress[0]")
    assert_allowed(judge(m, "10.2.0.99", DB, port=1), "db-in", "ingress[0]")  # no endpoint there (yet)
    assert_denied(judge(m, "10.3.0.10", DB, port=1), "ingress")
    assert_denied(judge(m, OUTSIDE, DB, port=1), "ingress")


def test_network_selector_uses_network_labels() -> None:
    db_in = policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[{"peers": [{"networkSelector": {"matchLabels": {"env": "prod"}}}]}],
    )
    m = model_of(db_in)
    assert {g.peer for g in m.grants} == {ip_network("10.1.0.0/24"), ip_network("10.2.0.0/24")}


@pytest.mark.parametrize(
    ("destination", "allowed"),
    [("203.0.113.7", True), ("203.0.113.127", True), ("203.0.113.128", False), ("203.0.113.200", False)]
    + [("203.0.113.250", True), ("198.51.100.1", False)],
    ids=["inside", "last-before-hole", "first-in-hole", "in-hole", "after-hole", "outside-cidr"],
)
def test_ip_block_except_carves_out(destination: str, allowed: bool) -> None:
    web_out = policy(
        name="web-out",
        network="blue",
        endpointSelector=app("web"),
        egress=[
            {
                "peers": [
                    {
                        "ipBlock": {
                            "cidr": "203.0.113.0/24",
                            "except": ["203.0.113.128/26", "203.0.113.192/27"],
                        }
                    }
                ]
            }
        ],
    )
    v = judge(model_of(web_out), WEB, destination, port=443)
    if allowed:
        assert_allowed(v, "web-out", "egress[0]")
    else:
        assert_denied(v, "egress")


def test_ip_block_except_on_ingress() -> None:
    db_in = policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[{"peers": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.2.0.20/32"]}}]}],
    )
    m = model_of(db_in, allow_egress("red", EVERY_NETWORK))
    assert_allowed(judge(m, RED_API, DB, port=5432), "db-in", "ingress[0]")
    assert_denied(judge(m, RED_DB, DB, port=5432), "ingress")
    assert ip_network("10.2.0.20/32") not in {g.peer for g in m.grants if g.policy == "db-in"}


def test_identity_peer_matches_spiffe_pattern() -> None:
    db_in = policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[{"peers": [{"identity": "spiffe://qnf.test/ns/red/*"}]}],
    )
    m = model_of(db_in, allow_egress("red", EVERY_NETWORK))
    assert {g.peer for g in m.grants if g.policy == "db-in"} == {
        ip_network("10.2.0.10/32"),
        ip_network("10.2.0.20/32"),
    }
    assert_allowed(judge(m, RED_DB, DB, port=1), "db-in", "ingress[0]")


# ---------------------------------------------------------------- ports


@pytest.mark.parametrize(
    ("ports", "proto", "port", "allowed"),
    [
        ([{"port": 8000, "endPort": 8080}], "TCP", 8000, True),
        ([{"port": 8000, "endPort": 8080}], "TCP", 8080, True),
        ([{"port": 8000, "endPort": 8080}], "TCP", 8042, True),
        ([{"port": 8000, "endPort": 8080}], "TCP", 7999, False),
        ([{"port": 8000, "endPort": 8080}], "TCP", 8081, False),
        ([{"port": 8000, "endPort": 8080}], "UDP", 8000, False),
        ([{"protocol": "UDP", "port": 53}], "UDP", 53, True),
        ([{"protocol": "UDP", "port": 53}], "TCP", 53, False),
        ([{"protocol": "UDP", "port": 53}], "UDP", 54, False),
        ([{"protocol": "SCTP"}], "SCTP", 1, True),
        ([{"protocol": "SCTP"}], "SCTP", 65535, True),
        ([{"protocol": "SCTP"}], "TCP", 1, False),
        ([{"protocol": "TCP"}], "TCP", None, True),
        ([{"protocol": "TCP", "port": 80}], "TCP", None, False),
        ([{"protocol": "ICMP"}], "ICMP", None, True),
        ([{"protocol": "ICMP"}], "TCP", 80, False),
        ([{"protocol": "UDP", "port": 53}, {"port": 443}], "TCP", 443, True),
        ([], "TCP", 1, True),
        ([], "UDP", 65535, True),
        ([], "SCTP", 9, True),
        ([], "ICMP", None, True),
    ],
    ids=[
        "range-low",
        "range-high",
        "range-mid",
        "range-below",
        "range-above",
        "range-wrong-proto",
        "udp",
        "udp-not-tcp",
        "udp-other-port",
        "sctp-any-port-low",
        "sctp-any-port-high",
        "sctp-not-tcp",
        "tcp-any-port-no-port-query",
        "tcp-port-no-port-query",
        "icmp",
        "icmp-not-tcp",
        "port-list-union",
        "no-ports-tcp",
        "no-ports-udp",
        "no-ports-sctp",
        "no-ports-icmp",
    ],
)
def test_ports(ports: list[dict[str, Any]], proto: str, port: int | None, allowed: bool) -> None:
    db_in = policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[{"peers": [{"endpointSelector": app("web")}], "ports": ports}],
    )
    v = judge(model_of(db_in, allow_egress("blue")), WEB, DB, proto=proto, port=port)
    if allowed:
        assert_allowed(v, "db-in", "ingress[0]")
    else:
        assert_denied(v, "ingress")


def test_rules_union() -> None:
    db_in = policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[
            {"peers": [{"endpointSelector": app("web")}], "ports": [{"port": 5432}]},
            {"peers": [{"endpointSelector": app("cache")}], "ports": [{"port": 6379}]},
        ],
    )
    other = policy(
        name="db-metrics", network="blue", endpointSelector=app("db"), ingress=[{"ports": [{"port": 9100}]}]
    )
    m = model_of(db_in, other, allow_egress("blue"))
    assert_allowed(judge(m, WEB, DB, port=5432), "db-in", "ingress[0]")
    assert_allowed(judge(m, CACHE, DB, port=6379), "db-in", "ingress[1]")
    assert_allowed(judge(m, CACHE, DB, port=9100), "db-metrics", "ingress[0]")
    assert_denied(judge(m, WEB, DB, port=6379), "ingress")
    assert_denied(judge(m, CACHE, DB, port=5432), "ingress")


def test_icmp_rule_covers_icmpv6_for_ipv6_endpoints() -> None:
    net6 = Network(
        name="six",
        subnet=ip_network("10.6.0.0/24"),
        gateway=ip_address("10.6.0.1"),
        subnet6=ip_network("fd00:6::/64"),
        gateway6=ip_address("fd00:6::1"),
        bridge="qnf-six",
        created_ms=1,
    )
    a = endpoint("a", net6, 10).model_copy(
        update={"addresses": [ip_interface("10.6.0.10/24"), ip_interface("fd00:6::10/64")]}
    )
    b = endpoint("b", net6, 20).model_copy(
        update={"addresses": [ip_interface("10.6.0.20/24"), ip_interface("fd00:6::20/64")]}
    )
    icmp = policy(
        name="ping", network="six", endpointSelector={}, ingress=[{"ports": [{"protocol": "ICMP"}]}]
    )
    m = build([net6], [a, b], [icmp, policy(name="out", network="six", endpointSelector={}, egress=[{}])])
    assert_allowed(judge(m, "fd00:6::10", "fd00:6::20", proto="ICMP"), "ping", "ingress[0]")
    assert_allowed(judge(m, "10.6.0.10", "10.6.0.20", proto="ICMP"), "ping", "ingress[0]")
    assert {g.proto for g in m.grants if g.policy == "ping"} == {1, 58}
    assert not judge(m, "fd00:6::10", "10.6.0.20", proto="ICMP").allowed  # mixed families


# ---------------------------------------------------------------- named ports

DB2 = endpoint("db2", BLUE, 21, {"app": "db"}, named_ports={"pg": NamedPort(port=6543)})
DNS_EP = endpoint("dns", BLUE, 22, {"app": "db"}, named_ports={"pg": NamedPort(port=5432, protocol="UDP")})
NAMED_EPS = [*ENDPOINTS, DB2, DNS_EP]


@pytest.mark.parametrize(
    ("dst", "port", "allowed"),
    [(DB, 5432, True), (DB, 5433, False), (DB2, 6543, True), (DB2, 5432, False), (DB, 9999, False)]
    + [(CACHE, 5432, False), (DNS_EP, 5432, False)],
    ids=[
        "db-own",
        "db-other",
        "db2-own",
        "db2-not-db-port",
        "not-web-port",
        "no-such-name",
        "wrong-protocol",
    ],
)
def test_named_port_on_ingress_resolves_against_the_selected_endpoint(
    dst: Endpoint, port: int, allowed: bool
) -> None:
    pg_in = policy(
        name="pg-in",
        network="blue",
        endpointSelector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "cache"]}]},
        ingress=[{"peers": [{"endpointSelector": app("web")}], "ports": [{"port": "pg"}]}],
    )
    v = judge(model_of(pg_in, allow_egress("blue"), endpoints=NAMED_EPS), WEB, dst, port=port)
    if allowed:
        assert_allowed(v, "pg-in", "ingress[0]")
    else:
        assert_denied(v, "ingress")


@pytest.mark.parametrize(
    ("dst", "port", "allowed"),
    [(DB, 5432, True), (DB2, 6543, True), (DB2, 5432, False), (DB, 9999, False), (RED_DB, 6432, True)]
    + [(CACHE, 5432, False), (DNS_EP, 5432, False)],
    ids=[
        "db",
        "db2",
        "db2-not-db-port",
        "not-source-port",
        "other-network",
        "no-such-name",
        "wrong-protocol",
    ],
)
def test_named_port_on_egress_resolves_against_the_destination(
    dst: Endpoint, port: int, allowed: bool
) -> None:
    # web has its own "pg" (9999); egress must use each destination's "pg" instead.
    web_out = policy(
        name="web-out",
        network="blue",
        endpointSelector=app("web"),
        egress=[
            {
                "peers": [{"endpointSelector": {}}, {"networkSelector": name_is("red")}],
                "ports": [{"port": "pg"}],
            }
        ],
    )
    open_in = [allow_ingress("blue", EVERY_NETWORK), allow_ingress("red", EVERY_NETWORK)]
    v = judge(model_of(web_out, *open_in, endpoints=NAMED_EPS), WEB, dst, port=port)
    if allowed:
        assert_allowed(v, "ingress-all", "ingress[0]")
        assert "egress allowed by web-out egress[0]" in v.reason
    else:
        assert_denied(v, "egress")


# ---------------------------------------------------------------- empty peer list


def test_empty_peers_in_zero_trust_is_own_network_and_outside_not_other_networks() -> None:
    m = model_of(
        allow_egress("blue"),  # peers []: "anyone", the zero-trust way
        allow_ingress("blue", EVERY_NETWORK),
        allow_ingress("red", EVERY_NETWORK),
        allow_ingress("green", EVERY_NETWORK),
    )
    assert_allowed(judge(m, WEB, DB, port=5432), "ingress-all", "ingress[0]")
    assert_allowed(judge(m, WEB, OUTSIDE, port=443), "egress-all", "egress[0]")
    assert_allowed(judge(m, WEB, "2.2.2.2", proto="UDP", port=5000), "egress-all", "egress[0]")
    assert_denied(judge(m, WEB, RED_API, port=80), "egress")
    assert_denied(judge(m, WEB, GA, port=80), "egress")
    assert_denied(judge(m, WEB, "10.2.0.99", port=80), "egress")  # other network's subnet, no endpoint


def test_empty_peers_in_zero_trust_ingress() -> None:
    m = model_of(allow_ingress("blue"), allow_egress("blue"), allow_egress("red", EVERY_NETWORK))
    assert_allowed(judge(m, WEB, DB, port=5432), "ingress-all", "ingress[0]")
    assert_allowed(judge(m, OUTSIDE, DB, port=5432), "ingress-all", "ingress[0]")
    assert_denied(judge(m, RED_API, DB, port=5432), "ingress")
    assert_denied(judge(m, GA, DB, port=5432), "ingress")


def test_empty_peers_in_default_allow_is_everything() -> None:
    ga_out = policy(name="ga-out", network="green", endpointSelector=app("a"), egress=[{}])
    ga_in = policy(name="ga-in", network="green", endpointSelector=app("a"), ingress=[{}])
    m = model_of(ga_out, ga_in, allow_ingress("red", EVERY_NETWORK), allow_egress("blue", EVERY_NETWORK))
    assert_allowed(judge(m, GA, RED_API, port=80), "ingress-all", "ingress[0]")
    assert_allowed(judge(m, GA, OUTSIDE, port=80), "ga-out", "egress[0]")
    assert_allowed(judge(m, GA, GB, port=80), "ga-out", "egress[0]")
    assert_allowed(judge(m, WEB, GA, port=80), "ga-in", "ingress[0]")


# ---------------------------------------------------------------- admin tier

OPEN_BLUE = [allow_egress("blue"), allow_ingress("blue")]


def admin(name: str, priority: int, *, subject: dict[str, Any], **rules: Any) -> Policy:
    return policy(name=name, tier="admin", priority=priority, endpointSelector=subject, **rules)


def test_admin_deny_beats_a_normal_allow() -> None:
    deny = admin(
        "deny-web",
        10,
        subject=app("db"),
        ingress=[{"action": "Deny", "peers": [{"endpointSelector": app("web")}]}],
    )
    m = model_of(deny, *OPEN_BLUE)
    v = judge(m, WEB, DB, port=5432)
    assert_denied(v, "ingress", "deny-web", "ingress[0]")
    assert v.reason == "admin policy denies ingress of db"
    assert_allowed(judge(m, CACHE, DB, port=5432), "ingress-all", "ingress[0]")


def test_admin_deny_on_egress() -> None:
    deny = admin(
        "no-smtp", 5, subject={}, egress=[{"action": "Deny", "ports": [{"port": 25}, {"protocol": "UDP"}]}]
    )
    m = model_of(deny, *OPEN_BLUE)
    assert_denied(judge(m, WEB, OUTSIDE, port=25), "egress", "no-smtp", "egress[0]")
    assert_denied(judge(m, WEB, DB, proto="UDP", port=9), "egress", "no-smtp", "egress[0]")
    assert_denied(judge(m, GA, GB, port=25), "egress", "no-smtp", "egress[0]")  # default-allow too
    assert_allowed(judge(m, WEB, OUTSIDE, port=443), "egress-all", "egress[0]")


def test_admin_allow_short_circuits() -> None:
    allow = admin(
        "allow-web",
        10,
        subject=app("db"),
        ingress=[{"action": "Allow", "peers": [{"endpointSelector": app("web")}]}],
    )
    deny = admin("deny-all", 20, subject=app("db"), ingress=[{"action": "Deny"}])
    m = model_of(allow, deny, allow_egress("blue"))  # no normal-tier ingress for db at all
    v = judge(m, WEB, DB, port=5432)
    assert_allowed(v, "allow-web", "ingress[0]")
    assert v.reason == "admin policy allows ingress of db"
    assert_denied(judge(m, CACHE, DB, port=5432), "ingress", "deny-all", "ingress[0]")


def test_admin_allow_decides_one_direction_only() -> None:
    allow = admin("allow-out", 10, subject=app("web"), egress=[{"action": "Allow"}])
    m = model_of(allow)
    assert_allowed(judge(m, WEB, OUTSIDE, port=443), "allow-out", "egress[0]")
    assert_denied(judge(m, WEB, DB, port=5432), "ingress")  # db's ingress is still zero trust


@pytest.mark.parametrize(
    ("normal", "expected"),
    [(True, ("allowed", "ingress-all")), (False, ("denied", None))],
    ids=["normal-allows", "normal-silent"],
)
def test_admin_pass_falls_through_to_the_normal_tier(normal: bool, expected: tuple[str, str | None]) -> None:
    passing = admin(
        "pass-web",
        10,
        subject=app("db"),
        ingress=[{"action": "Pass", "peers": [{"endpointSelector": app("web")}]}],
    )
    deny = admin("deny-all", 20, subject=app("db"), ingress=[{"action": "Deny"}])
    normal_tier = OPEN_BLUE if normal else [allow_egress("blue")]
    m = model_of(passing, deny, *normal_tier)
    v = judge(m, WEB, DB, port=5432)
    if expected[0] == "allowed":
        assert_allowed(v, expected[1], "ingress[0]")
    else:
        assert_denied(v, "ingress", None, None)
        assert v.reason == "no policy allows ingress of db"
    # Anyone else hits the deny.
    assert_denied(judge(m, CACHE, DB, port=5432), "ingress", "deny-all", "ingress[0]")


def test_admin_pass_in_default_allow_network_leaves_it_open() -> None:
    passing = admin("pass-all", 1, subject={}, ingress=[{"action": "Pass"}])
    deny = admin("deny-all", 2, subject={}, ingress=[{"action": "Deny"}])
    assert_allowed(judge(model_of(passing, deny), GA, GB, port=80))


@pytest.mark.parametrize(
    ("allow_priority", "deny_priority", "winner"),
    [(50, 5, "z-deny"), (5, 50, "a-allow"), (7, 7, "a-allow")],
    ids=["deny-lower-number", "allow-lower-number", "tie-by-name"],
)
def test_admin_lower_priority_number_first(allow_priority: int, deny_priority: int, winner: str) -> None:
    allow = admin("a-allow", allow_priority, subject=app("db"), ingress=[{"action": "Allow"}])
    deny = admin("z-deny", deny_priority, subject=app("db"), ingress=[{"action": "Deny"}])
    v = judge(model_of(deny, allow, allow_egress("blue")), WEB, DB, port=5432)
    assert v.policy == winner and v.rule == "ingress[0]"
    assert v.allowed is (winner == "a-allow")


def test_admin_rules_of_one_policy_in_order() -> None:
    pol = admin(
        "ordered",
        10,
        subject=app("db"),
        ingress=[{"action": "Deny", "ports": [{"port": 5432}]}, {"action": "Allow"}, {"action": "Deny"}],
    )
    m = model_of(pol, allow_egress("blue"))
    assert_denied(judge(m, WEB, DB, port=5432), "ingress", "ordered", "ingress[0]")
    assert_allowed(judge(m, WEB, DB, port=80), "ordered", "ingress[1]")


def test_admin_network_selector_picks_subject_networks() -> None:
    deny = admin("deny-red", 1, subject={}, networkSelector=name_is("red"), ingress=[{"action": "Deny"}])
    m = model_of(deny, allow_ingress("red"), allow_egress("red"), *OPEN_BLUE)
    assert_denied(judge(m, RED_API, RED_DB, port=1), "ingress", "deny-red", "ingress[0]")
    assert_allowed(judge(m, WEB, DB, port=1), "ingress-all", "ingress[0]")
    assert {a for g in m.grants if g.tier == "admin" for a in m.admin_subjects[g.group]} == {
        ip_address("10.2.0.10"),
        ip_address("10.2.0.20"),
    }


# ---------------------------------------------------------------- DNS


@pytest.mark.parametrize(
    ("dst", "proto", "port", "allowed"),
    [
        ("10.1.0.1", "UDP", 53, True),
        ("10.1.0.1", "TCP", 53, True),
        ("10.2.0.1", "UDP", 53, True),
        ("10.1.0.1", "UDP", 54, False),
        ("10.1.0.1", "SCTP", 53, False),
        ("10.1.0.2", "UDP", 53, False),
        ("203.0.113.53", "UDP", 53, False),
    ],
    ids=["udp", "tcp", "other-gateway", "other-port", "sctp", "not-a-gateway", "outside-resolver"],
)
def test_dns_to_a_gateway_always_passes(dst: str, proto: str, port: int, allowed: bool) -> None:
    # Zero trust and an admin policy that denies all egress: DNS to the fabric's resolver still passes.
    deny = admin("deny-out", 0, subject={}, egress=[{"action": "Deny"}])
    v = judge(model_of(deny), WEB, dst, proto=proto, port=port)
    assert v.allowed is allowed
    if allowed:
        assert v.reason == "DNS to the fabric's resolver always passes"
    else:
        assert v.policy == "deny-out"


# ---------------------------------------------------------------- label changes


def test_label_change_moves_an_endpoint_in_and_out_of_a_policy() -> None:
    db_in = policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[{"peers": [{"endpointSelector": {"matchLabels": {"tier": "front"}}}]}],
    )
    pols = [db_in, allow_egress("blue")]
    cache_as_db = relabel(CACHE, app="db")
    web_demoted = relabel(WEB, app="web")
    before = build(NETWORKS, ENDPOINTS, pols)
    assert_allowed(judge(before, WEB, DB, port=5432), "db-in", "ingress[0]")
    assert_denied(judge(before, WEB, CACHE, port=5432), "ingress")
    # cache becomes a db: now selected; db stays.
    moved_in = build(NETWORKS, [e if e is not CACHE else cache_as_db for e in ENDPOINTS], pols)
    assert_allowed(judge(moved_in, WEB, CACHE, port=5432), "db-in", "ingress[0]")
    # db loses its label: no longer selected (zero trust: nothing allows its ingress).
    moved_out = build(NETWORKS, [e if e is not DB else relabel(DB, app="legacy") for e in ENDPOINTS], pols)
    assert_denied(judge(moved_out, WEB, DB, port=5432), "ingress")
    # web loses the label the peer selector wants: no longer a permitted source.
    peer_out = build(NETWORKS, [e if e is not WEB else web_demoted for e in ENDPOINTS], pols)
    assert_denied(judge(peer_out, WEB, DB, port=5432), "ingress")


def test_label_change_in_default_allow_isolates_and_releases() -> None:
    gb_in = policy(name="gb-in", network="green", endpointSelector=app("b"), ingress=[])
    ga_is_b = [e if e is not GA else relabel(GA, app="b") for e in ENDPOINTS]
    assert_allowed(judge(model_of(gb_in), GB, GA, port=80))
    assert_denied(judge(model_of(gb_in, endpoints=ga_is_b), GB, GA, port=80), "ingress")
    gb_is_c = [e if e is not GB else relabel(GB, app="c") for e in ENDPOINTS]
    assert_allowed(judge(model_of(gb_in, endpoints=gb_is_c), GA, GB, port=80))


# ---------------------------------------------------------------- 4. compiler

BASE_POLICIES = [
    policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[{"peers": [{"endpointSelector": app("web")}], "ports": [{"port": 5432}]}],
    ),
    allow_egress("blue"),
    allow_ingress("red", {"networkSelector": name_is("blue")}),
    policy(
        name="gb-in", network="green", endpointSelector=app("b"), ingress=[{"ports": [{"protocol": "ICMP"}]}]
    ),
]
ADMIN = admin("deny-25", 10, subject={}, egress=[{"action": "Deny", "ports": [{"port": 25}]}])


def compiled(
    endpoints: Sequence[Endpoint] = ENDPOINTS, policies: Sequence[Policy] = BASE_POLICIES, node: str = "n1"
) -> Compiled:
    local = [e for e in endpoints if e.node == node]
    return compile_model(build(NETWORKS, endpoints, policies, node=node), local)


def as_json(x: Any) -> str:
    return json.dumps(x, sort_keys=True)


def test_compile_is_deterministic() -> None:
    first = compiled()
    assert as_json(first.full()) == as_json(compiled().full())
    assert first.structure_digest() == compiled().structure_digest()
    rng = random.Random(7)
    for _ in range(5):
        eps, pols = list(ENDPOINTS), [*BASE_POLICIES, ADMIN]
        rng.shuffle(eps)
        rng.shuffle(pols)
        assert as_json(compiled(eps, pols).full()) == as_json(
            compiled(ENDPOINTS, [*BASE_POLICIES, ADMIN]).full()
        )


@pytest.mark.parametrize(
    "endpoints",
    [
        [*ENDPOINTS, endpoint("new", BLUE, 60, {"app": "db"})],
        [e for e in ENDPOINTS if e is not CACHE],
        [e if e is not CACHE else relabel(CACHE, app="db") for e in ENDPOINTS],
        [e if e is not WEB else relabel(WEB, app="nobody") for e in ENDPOINTS],
        [e if e is not GA else relabel(GA, app="b") for e in ENDPOINTS],
        [*ENDPOINTS, endpoint("remote", BLUE, 61, {"app": "web"}, node="n2")],
    ],
    ids=[
        "endpoint-added",
        "endpoint-removed",
        "label-into-policy",
        "label-out-of-peer",
        "isolated",
        "remote-added",
    ],
)
def test_structure_does_not_change_with_endpoints_or_labels(endpoints: list[Endpoint]) -> None:
    before, after = compiled(), compiled(endpoints)
    assert before.structure_digest() == after.structure_digest()
    assert before.elements != after.elements  # the change is in the set elements


def test_structure_does_not_change_with_normal_policies() -> None:
    extra = policy(name="cache-in", network="blue", endpointSelector=app("cache"), ingress=[{}])
    assert compiled().structure_digest() == compiled(policies=[*BASE_POLICIES, extra]).structure_digest()


def test_structure_changes_when_an_admin_policy_is_added() -> None:
    with_admin = compiled(policies=[*BASE_POLICIES, ADMIN])
    assert compiled().structure_digest() != with_admin.structure_digest()
    rules = [c["add"]["rule"] for c in with_admin.structure if "rule" in c.get("add", {})]
    assert any(r.get("comment", "").endswith("deny-25/egress[0]") for r in rules)


def test_structure_does_not_change_when_a_label_moves_an_endpoint_into_an_admin_policy() -> None:
    audit = admin(
        "audit-ssh",
        10,
        subject={"matchLabels": {"audit": "yes"}},
        ingress=[{"action": "Deny", "ports": [{"port": 22}]}],
    )
    before = compiled(ENDPOINTS, [*BASE_POLICIES, audit])  # the admin policy selects no endpoint yet
    audited = [e if e is not CACHE else relabel(CACHE, app="cache", audit="yes") for e in ENDPOINTS]
    after = compiled(audited, [*BASE_POLICIES, audit])  # a label change: now it selects cache
    assert before.elements != after.elements
    assert before.structure_digest() == after.structure_digest()


def elems(c: Compiled, endpoint: Any, kind: str) -> list[Any]:
    """Elements of an endpoint's identity-group set, `kind` like "in4p" or "eg4a"."""
    return c.elements[("inet", f"{kind[:2]}_{group_id(endpoint)}_{kind[2:]}")]


def span(elem: Any) -> tuple[int, int]:
    """The address interval of an nft JSON address element: address, prefix or range."""
    if isinstance(elem, str):
        return int(ip_address(elem)), int(ip_address(elem))
    if "prefix" in elem:
        net = ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
        return int(net.network_address), int(net.broadcast_address)
    lo, hi = elem["range"]
    return int(ip_address(lo)), int(ip_address(hi))


def points(boxes: Iterable[Box]) -> set[tuple[int, int]]:
    return {(x, y) for lo, hi, a, z in boxes for x in range(lo, hi + 1) for y in range(a, z + 1)}


def overlaps(p: Box, q: Box) -> bool:
    return p[0] <= q[1] and q[0] <= p[1] and p[2] <= q[3] and q[2] <= p[3]


@pytest.mark.parametrize("seed", range(12), ids=[f"seed{s}" for s in range(12)])
def test_disjoint_covers_the_same_points_without_overlap(seed: int) -> None:
    rng = random.Random(seed)
    boxes: list[Box] = []
    for _ in range(rng.randint(1, 9)):
        lo, a = rng.randint(0, 15), rng.randint(0, 15)
        boxes.append((lo, rng.randint(lo, 17), a, rng.randint(a, 17)))
    out = disjoint(boxes)
    assert all(lo <= hi and a <= z for lo, hi, a, z in out)
    assert points(out) == points(boxes)
    assert not [(p, q) for i, p in enumerate(out) for q in out[i + 1 :] if overlaps(p, q)]
    assert out == disjoint(reversed(boxes))  # order of the input does not matter


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([], []),
        ([(1, 2, 3, 4), (1, 2, 3, 4)], [(1, 2, 3, 4)]),
        ([(0, 3, 0, 3), (4, 7, 0, 3)], [(0, 7, 0, 3)]),
        ([(0, 3, 0, 3), (0, 3, 4, 9)], [(0, 3, 0, 9)]),
        ([(0, 9, 0, 9), (2, 3, 2, 3)], [(0, 9, 0, 9)]),
        ([(0, 4, 0, 0), (2, 6, 1, 1)], [(0, 1, 0, 0), (2, 4, 0, 1), (5, 6, 1, 1)]),
    ],
    ids=["empty", "duplicates", "adjacent-first", "adjacent-second", "contained", "staircase"],
)
def test_disjoint_examples(boxes: list[Box], expected: list[Box]) -> None:
    assert disjoint(boxes) == expected


def test_grant_elements_land_in_the_right_sets() -> None:
    c = compiled()
    # db-in: ingress of db (local) from web (peer), TCP 5432.
    assert {"concat": ["10.1.0.10", 6, 5432]} in elems(c, DB, "in4p")
    # egress-all in zero-trust blue: own network plus outside, every protocol ("a" elements), never red
    # or green (other fabric networks).
    covered = [span(e["concat"][0]) for e in elems(c, WEB, "eg4a")]
    assert all(e["concat"][1] == {"range": [0, 255]} for e in elems(c, WEB, "eg4a"))
    for inside in ("10.1.0.0", "10.1.0.20", "10.1.0.255", OUTSIDE, "0.0.0.0", "255.255.255.255"):
        assert any(lo <= int(ip_address(inside)) <= hi for lo, hi in covered), inside
    for other in (RED.subnet, GREEN.subnet):
        assert not any(
            lo <= int(other.broadcast_address) and int(other.network_address) <= hi for lo, hi in covered
        )
    # red's ingress from blue's whole subnet.
    assert {"concat": [{"prefix": {"addr": "10.1.0.0", "len": 24}}, {"range": [0, 255]}]} in elems(
        c, RED_API, "in4a"
    )
    # ICMP has no port: an "a" element with protocol 1.
    assert {"concat": [{"prefix": {"addr": "0.0.0.0", "len": 0}}, 1]} in elems(c, GB, "in4a")
    # Open directions and locals.
    assert c.elements[("inet", "in_open4")] == ["10.3.0.10"]
    assert c.elements[("inet", "eg_open4")] == ["10.3.0.10", "10.3.0.20"]
    assert ("10.1.0.1" in c.elements[("inet", "gw4")]) and ("10.3.0.1" in c.elements[("inet", "gw4")])
    assert set(c.elements[("inet", "local4")]) == {addr(e) for e in ENDPOINTS}


def test_port_range_and_admin_elements() -> None:
    ranged = policy(
        name="web-in",
        network="blue",
        endpointSelector=app("web"),
        ingress=[
            {"peers": [{"ipBlock": {"cidr": "198.51.100.0/24"}}], "ports": [{"port": 8000, "endPort": 8080}]}
        ],
    )
    c = compiled(policies=[ranged, ADMIN])
    assert {"concat": [{"prefix": {"addr": "198.51.100.0", "len": 24}}, 6, {"range": [8000, 8080]}]} in elems(
        c, WEB, "in4p"
    )
    admin_sets = [k for k in c.elements if k[1].startswith("adm_")]
    filled = [k for k in admin_sets if c.elements[k]]
    # Subjects: only IPv4 endpoints here; peers: the whole world of both versions, port 25.
    assert {k[1].rsplit("_", 1)[1] for k in filled} == {"4p", "6p", "s4"}
    ported = next(v for k, v in c.elements.items() if k[1].startswith("adm_") and k[1].endswith("_4p"))
    assert {"concat": [{"prefix": {"addr": "0.0.0.0", "len": 0}}, 6, 25]} in ported


def test_anti_spoofing_elements_cover_every_local_endpoint() -> None:
    c = compiled()
    src4 = c.elements[("bridge", "src4")]
    assert len(src4) == len(ENDPOINTS)
    for e in ENDPOINTS:
        assert {"concat": [e.host_ifname, e.mac, addr(e)]} in src4
        assert {"concat": [e.host_ifname, e.mac]} in c.elements[("bridge", "portmac")]
        assert e.host_ifname in c.elements[("bridge", "ports")]
    assert c.elements[("bridge", "src6")] == []


def test_compile_for_a_node_omits_other_nodes_endpoints() -> None:
    remote = endpoint("remote", BLUE, 70, {"app": "db"}, node="n2")
    c = compiled([*ENDPOINTS, remote])
    flat = as_json(sorted(c.elements.items()))
    assert remote.host_ifname not in flat
    assert remote.mac not in flat
    assert "10.1.0.70" not in c.elements[("inet", "local4")]
    for vmap in ("in4", "eg4"):
        assert all(e[0] != "10.1.0.70" for e in c.elements[("inet", vmap)])
    # On n2, it is the only local endpoint.
    c2 = compiled([*ENDPOINTS, remote], node="n2")
    assert c2.elements[("inet", "local4")] == ["10.1.0.70"]
    assert c2.elements[("bridge", "src4")] == [{"concat": [remote.host_ifname, remote.mac, "10.1.0.70"]}]
    assert {"concat": ["10.1.0.10", 6, 5432]} in elems(c2, remote, "in4p")


# ---------------------------------------------------------------- 5. Kubernetes translation

K8S_DOC: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "db.allow", "namespace": "Blue"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {"matchLabels": {"env": "prod"}},
                        "podSelector": {
                            "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]
                        },
                    },
                    {"podSelector": {}},
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                ],
                "ports": [
                    {"protocol": "TCP", "port": "pg"},
                    {"protocol": "TCP", "port": 8000, "endPort": 8080},
                ],
            },
            {},
        ],
        "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "UDP", "port": 53}]}],
    },
}


def test_k8s_translate_field_by_field() -> None:
    p = k8s.translate(K8S_DOC)
    assert p.name == "db-allow" and p.network == "blue" and p.tier == "normal"
    assert p.endpoint_selector.match_labels == {"app": "db"}
    assert p.policy_types == ["Ingress", "Egress"]
    assert len(p.ingress) == 2 and len(p.egress) == 1
    first, second = p.ingress[0].peers[:2]
    assert first.network_selector is not None and first.network_selector.match_labels == {"env": "prod"}
    assert first.endpoint_selector is not None
    req = first.endpoint_selector.match_expressions[0]
    assert (req.key, req.operator, req.values) == ("app", "In", ["web"])
    assert second.endpoint_selector == LabelSelector() and second.network_selector is None
    block = p.ingress[0].peers[2].ip_block
    assert block is not None
    assert block.cidr == ip_network("172.17.0.0/16") and block.except_ == [ip_network("172.17.1.0/24")]
    named, ranged = p.ingress[0].ports
    assert (named.protocol, named.port, named.end_port) == ("TCP", "pg", None)
    assert (ranged.protocol, ranged.port, ranged.end_port) == ("TCP", 8000, 8080)
    assert p.ingress[1].peers == [] and p.ingress[1].ports == []  # an empty rule: everyone, every port
    assert p.egress[0].peers[0].network_selector == LabelSelector()
    assert p.egress[0].peers[0].endpoint_selector is None
    assert (p.egress[0].ports[0].protocol, p.egress[0].ports[0].port) == ("UDP", 53)
    assert all(r.action == "Allow" for r in [*p.ingress, *p.egress])
    validate(p, KNOWN)  # what it produces is a valid policy


@pytest.mark.parametrize(
    ("spec_body", "namespace", "default", "network", "types"),
    [
        ({"podSelector": {}}, None, None, "default", None),
        ({"podSelector": {}}, None, "green", "green", None),
        ({"podSelector": {}}, "red", "green", "red", None),
        ({"podSelector": None, "policyTypes": ["Egress"]}, "red", None, "red", ["Egress"]),
    ],
    ids=["default-namespace", "default-network", "namespace-wins", "null-pod-selector"],
)
def test_k8s_translate_network_and_defaults(
    spec_body: dict[str, Any],
    namespace: str | None,
    default: str | None,
    network: str,
    types: list[str] | None,
) -> None:
    meta: dict[str, Any] = {"name": "p"}
    if namespace:
        meta["namespace"] = namespace
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec_body}
    p = k8s.translate(doc, default_network=default)
    assert p.network == network
    assert p.policy_types == types
    assert p.endpoint_selector == LabelSelector()
    assert p.ingress == [] and p.egress == []


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(K8S_DOC))
    for key, value in changes.items():
        doc[key] = value
    return doc


def _spec(**changes: Any) -> dict[str, Any]:
    doc = _doc()
    doc["spec"].update(changes)
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "document: not a YAML/JSON object"),
        (_doc(kind="Policy"), "apiVersion/kind: expected networking.k8s.io/v1 NetworkPolicy"),
        (_doc(apiVersion="networking.k8s.io/v1beta1"), "apiVersion/kind: expected networking.k8s.io/v1"),
        (_doc(metadata={"namespace": "blue"}), "metadata.name: required"),
        (_doc(metadata={"name": ""}), "metadata.name: required"),
        (_doc(metadata={"name": "..."}), "metadata.name: '...' does not make a valid qnf name"),
        (_doc(spec=None), "spec: required"),
        (_spec(podSelctor={}), "spec.podSelctor: unknown field"),
        (_spec(ingress=[{"from": [{}]}]), "spec.ingress[0].from[0]: a peer needs podSelector"),
        (
            _spec(
                egress=[
                    {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}, {"podSelector": {}, "nodeSelector": {}}]}
                ]
            ),
            "spec.egress[0].to[1]: unknown field nodeSelector",
        ),
        (_spec(ingress=[{"from": {"podSelector": {}}}]), "spec.ingress[0].from: must be a list"),
        (_spec(ingress={"from": []}), "spec.ingress: must be a list"),
        (_spec(ingress=[{"to": []}]), "spec.ingress[0]: unknown field to"),
        (_spec(egress=["x"]), "spec.egress[0]: must be an object"),
        (_spec(policyTypes=["Sideways"]), "spec (policyTypes.0)"),
        (
            _spec(egress=[{"ports": [{"protocol": "TCP", "port": 80, "range": 2}]}]),
            "spec (egress.0.ports.0.range)",
        ),
    ],
    ids=[
        "not-an-object",
        "wrong-kind",
        "wrong-api-version",
        "missing-name",
        "empty-name",
        "name-without-letters",
        "missing-spec",
        "unknown-spec-field",
        "empty-peer",
        "unknown-peer-field",
        "peers-not-a-list",
        "rules-not-a-list",
        "ingress-with-to",
        "rule-not-an-object",
        "bad-policy-type",
        "unknown-port-field",
    ],
)
def test_k8s_translate_rejects_naming_the_field(doc: Any, message: str) -> None:
    with pytest.raises(PolicyRejected, match=re.escape(message)):
        k8s.translate(doc)


def _named(meta: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": {}}


def test_k8s_translate_maps_names_to_dns_labels() -> None:
    p = k8s.translate(_named({"name": "Allow.DB_in", "namespace": "Team-A"}))
    assert (p.name, p.network) == ("allow-db-in", "team-a")
    long = k8s.translate(_named({"name": "x" * 80}))
    assert long.name == "x" * 63


def test_k8s_translate_long_name_with_dot_is_a_valid_label() -> None:
    p = k8s.translate(_named({"name": "a" * 62 + ".b"}))
    assert p.name == "a" * 62


def test_k8s_translate_bad_namespace_names_metadata_namespace() -> None:
    with pytest.raises(PolicyRejected, match=r"^metadata\.namespace: "):
        k8s.translate(_named({"name": "p", "namespace": "..."}))


def test_k8s_translated_policy_enforces_kubernetes_semantics() -> None:
    doc = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "db", "namespace": "blue"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {
                    "from": [{"namespaceSelector": {"matchLabels": {NETWORK_NAME_LABEL: "red"}}}],
                    "ports": [{"port": "pg"}],
                }
            ],
        },
    }
    translated = Policy.model_validate(k8s.translate(doc).model_dump(by_alias=True))
    m = model_of(translated, allow_egress("red", EVERY_NETWORK))
    assert_allowed(judge(m, RED_API, DB, port=5432), "db", "ingress[0]")
    assert_denied(judge(m, RED_API, DB, port=6432), "ingress")
    assert_denied(judge(m, WEB, DB, port=5432), "egress")


# ---------------------------------------------------------------- KV keys


@pytest.mark.parametrize(
    ("body", "key"),
    [({"name": "p", "network": "blue"}, "net.blue.p"), ({"name": "p", "tier": "admin"}, "admin.p")],
    ids=["normal", "admin"],
)
def test_policy_keys(body: dict[str, Any], key: str) -> None:
    p = spec(**body)
    assert policy_key(p) == key
    assert ref_key(p.name, p.network) == key


def test_dual_stack_endpoints_compile_into_both_vmaps() -> None:
    dual_net = Network(
        name="dual",
        subnet="10.9.0.0/24",
        gateway="10.9.0.1",
        subnet6="fd00:9::/64",
        gateway6="fd00:9::1",
        bridge="qnf-d",
        created_ms=0,
        isolation="default-allow",
    )
    e = Endpoint(
        endpoint_id="d1",
        request_id="r",
        container_id="d1",
        ifname="eth0",
        netns="/x",
        node="n1",
        network="dual",
        name="d1",
        labels={},
        identity="spiffe://qnf.test/network/dual/endpoint/d1",
        mac="02:00:00:00:00:d1",
        mtu=1500,
        host_ifname="q00000000d1",
        addresses=[ip_interface("10.9.0.2/24"), ip_interface("fd00:9::2/64")],
        gateways=[ip_address("10.9.0.1"), ip_address("fd00:9::1")],
        created_ms=0,
    )
    c = compile_model(build([dual_net], [e], [], node="n1"), [e])
    gid = group_id(e)
    assert c.elements[("inet", "in4")] == [["10.9.0.2", {"goto": {"target": f"in_{gid}"}}]]
    assert c.elements[("inet", "eg6")] == [["fd00:9::2", {"goto": {"target": f"eg_{gid}"}}]]
    assert c.elements[("inet", "in_open6")] == ["fd00:9::2"]
