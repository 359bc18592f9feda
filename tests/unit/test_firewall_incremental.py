"""Unit tests of the incremental compile (`core.incremental`) against the full compile.

After every endpoint change of a long random sequence (adds, removes, relabels, on this node and
another, across zero-trust and default-allow networks, with endpoint and network selectors,
identity patterns, named ports in both directions and an admin tier): the incremental output
equals the full compile of the new state, and the delta batch it yields, applied to a model of
the old kernel state, gives exactly the full compile's sets and groups.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from libs.common.messages import Endpoint, NamedPort
from services.firewall.core.compiler import Compiled, delta
from services.firewall.core.incremental import Incremental, canonical
from tests.unit.test_firewall_core import (
    BLUE,
    ENDPOINTS,
    GREEN,
    NETWORKS,
    RED,
    app,
    endpoint,
    name_is,
    policy,
)

POLICIES = [
    policy(
        name="db-in",
        network="blue",
        endpointSelector=app("db"),
        ingress=[{"peers": [{"endpointSelector": app("web")}], "ports": [{"port": "pg"}]}],
    ),
    policy(
        name="web-out",
        network="blue",
        endpointSelector=app("web"),
        policyTypes=["Egress"],
        egress=[
            {"peers": [{"endpointSelector": app("db")}], "ports": [{"port": "pg"}]},
            {"peers": [{"networkSelector": name_is("red"), "endpointSelector": app("api")}]},
        ],
    ),
    policy(
        name="red-in",
        network="red",
        endpointSelector={},
        ingress=[
            {
                "peers": [
                    {"networkSelector": {"matchLabels": {"env": "prod"}}, "endpointSelector": app("web")}
                ]
            },
            {"peers": [{"identity": "spiffe://qnf.test/ns/*/ep/cache*"}], "ports": [{"port": 6379}]},
        ],
    ),
    policy(
        name="green-b",
        network="green",
        endpointSelector=app("b"),
        ingress=[{"peers": [{"endpointSelector": app("a")}, {"ipBlock": {"cidr": "203.0.113.0/24"}}]}],
    ),
    policy(name="cache-any", network="blue", endpointSelector=app("cache"), ingress=[{}], egress=[{}]),
    policy(
        name="deny-canary",
        tier="admin",
        priority=5,
        endpointSelector={"matchLabels": {"canary": "yes"}},
        egress=[{"action": "Deny", "ports": [{"port": 80}]}, {"action": "Pass"}],
    ),
    policy(
        name="allow-api",
        tier="admin",
        priority=9,
        networkSelector={"matchLabels": {"env": "prod"}},
        endpointSelector=app("api"),
        ingress=[{"action": "Allow", "peers": [{"endpointSelector": app("cache")}]}],
    ),
]

LABELS = [{"app": "web"}, {"app": "db"}, {"app": "cache"}, {"app": "api"}, {"app": "a"}, {"app": "b"}, {}]


def simulate(state: dict[str, Any], commands: list[dict[str, Any]]) -> None:
    """What the kernel holds after a batch, as far as sets, maps and group chains go."""
    for cmd in commands:
        ((verb, body),) = cmd.items()
        ((kind, obj),) = body.items()
        key = (obj["family"], obj["name"]) if kind in ("set", "element") else obj.get("name")
        if kind == "element":
            elems = state["elements"].setdefault(key, {})
            for e in obj["elem"]:
                ident = repr(e[0]) if isinstance(e, list) else repr(e)
                if verb == "add":
                    assert ident not in elems, f"{key}: {e} added twice"
                    elems[ident] = repr(e)
                else:
                    assert ident in elems, f"{key}: {e} deleted but absent"
                    del elems[ident]
        elif kind == "set":
            if verb == "add":
                state["elements"].setdefault(key, {})
            else:
                del state["elements"][key]
        elif kind == "chain" and verb in ("add", "delete"):
            (state["chains"].add if verb == "add" else state["chains"].discard)(key)


def state_of(compiled: Compiled) -> dict[str, Any]:
    state: dict[str, Any] = {"elements": {}, "chains": set()}
    simulate(state, [c for gid in compiled.groups for c in compiled.groups[gid]])
    for (family, name), elems in compiled.elements.items():
        simulate(state, [{"add": {"element": {"family": family, "name": name, "elem": elems}}}])
    return state


def view(state: dict[str, Any]) -> tuple[Any, Any]:
    elements = {k: sorted(v.values()) for k, v in sorted(state["elements"].items()) if v}
    return elements, sorted(c for c in state["chains"] if c.startswith(("in_g", "eg_g")))


def random_endpoint(rng: random.Random, i: int) -> Endpoint:
    net = rng.choice([BLUE, RED, GREEN])
    labels = dict(rng.choice(LABELS))
    if rng.random() < 0.2:
        labels["canary"] = "yes"
    named = {"pg": NamedPort(port=rng.choice([5432, 6432]))} if rng.random() < 0.3 else {}
    name = rng.choice(["cache", "x", "y"]) + str(i)
    return endpoint(name, net, 100 + i, labels, node=rng.choice(["n1", "n1", "n2"]), named_ports=named)


@pytest.mark.parametrize("seed", range(6))
def test_every_incremental_change_equals_the_full_compile(seed: int) -> None:
    rng = random.Random(seed)
    current = {e.endpoint_id: e for e in ENDPOINTS}
    inc = Incremental("n1")
    kernel = state_of(inc.full(NETWORKS, current.values(), POLICIES))
    for i in range(60):
        roll = rng.random()
        if roll < 0.4 or not current:
            old, new = None, random_endpoint(rng, i)
        elif roll < 0.7:
            old = rng.choice(sorted(current.values(), key=lambda e: e.endpoint_id))
            new = None
        else:
            old = rng.choice(sorted(current.values(), key=lambda e: e.endpoint_id))
            new = old.model_copy(update={"labels": dict(rng.choice(LABELS))})
        before = inc.compiled
        assert before is not None
        after, keys, edits = inc.change(old, new)
        if old is not None:
            del current[old.endpoint_id]
        if new is not None:
            current[new.endpoint_id] = new
        reference = Incremental("n1").full(NETWORKS, current.values(), POLICIES)
        assert canonical(after) == canonical(reference), f"step {i}: {old} -> {new}"
        simulate(kernel, delta(before, after, keys, edits))
        assert view(kernel) == view(state_of(reference)), f"step {i}: the delta does not reach the reference"


def test_a_change_touches_only_the_affected_sets() -> None:
    inc = Incremental("n1")
    inc.full(NETWORKS, ENDPOINTS, POLICIES)
    # A new web endpoint: its own elements, and the peer sets of db (db-in) and red (red-in).
    web2 = endpoint("web2", BLUE, 11, {"app": "web", "tier": "front"})
    _, keys, _ = inc.change(None, web2)
    names = {name for _, name in keys}
    assert {"in4", "eg4", "local4", "ports", "portmac", "src4"} <= names
    assert all(not n.startswith(("in_", "eg_")) or n.endswith(("_4p", "_4a", "_6p", "_6a")) for n in names)
    assert len(keys) < 20, sorted(keys)


def random_policy(rng: random.Random, i: int) -> Any:
    """A normal-tier policy of random selector, direction and peers."""
    net = rng.choice(["blue", "red", "green"])
    rule: dict[str, Any] = {}
    if rng.random() < 0.7:
        rule["peers"] = [
            {"endpointSelector": dict(rng.choice(LABELS)) and {"matchLabels": rng.choice(LABELS)}}
        ]
    if rng.random() < 0.5:
        rule["ports"] = [{"port": rng.choice([80, 443, 5432, "pg"])}]
    body: dict[str, Any] = {
        "name": f"p{i}",
        "network": net,
        "endpointSelector": {"matchLabels": rng.choice(LABELS)},
    }
    kind = rng.random()
    if kind < 0.4:
        body["ingress"] = [rule]
    elif kind < 0.7:
        body |= {"policyTypes": ["Egress"], "egress": [rule]}
    else:
        body |= {"ingress": [rule], "egress": [rule]}
    return policy(**body)


@pytest.mark.parametrize("seed", range(6))
def test_every_incremental_policy_change_equals_the_full_compile(seed: int) -> None:
    """Normal-tier policies created, changed and deleted: only the groups they select are recomputed
    (isolation switching on and off included), and the result is the full compile's."""
    rng = random.Random(100 + seed)
    endpoints = list(ENDPOINTS) + [random_endpoint(rng, i) for i in range(12)]
    policies = {(p.network, p.name): p for p in POLICIES}
    inc = Incremental("n1")
    kernel = state_of(inc.full(NETWORKS, endpoints, list(policies.values())))
    for i in range(40):
        normal = sorted(k for k, p in policies.items() if p.tier == "normal")
        roll = rng.random()
        if roll < 0.4 or not normal:
            new = random_policy(rng, i)
            old = None
        elif roll < 0.7:
            old, new = policies[rng.choice(normal)], None
        else:
            old = policies[rng.choice(normal)]
            new = random_policy(rng, i).model_copy(update={"name": old.name, "network": old.network})
        if old is not None:
            del policies[(old.network, old.name)]
        if new is not None:
            policies[(new.network, new.name)] = new
        before = inc.compiled
        assert before is not None
        result = inc.policies_changed(list(policies.values()), [p for p in (old, new) if p is not None])
        assert result is not None
        after, keys, edits = result
        reference = Incremental("n1").full(NETWORKS, endpoints, list(policies.values()))
        assert canonical(after) == canonical(reference), f"step {i}: {old} -> {new}"
        simulate(kernel, delta(before, after, keys, edits))
        assert view(kernel) == view(state_of(reference)), f"step {i}: the delta does not reach the reference"


def test_an_admin_policy_change_is_left_to_the_full_compile() -> None:
    inc = Incremental("n1")
    inc.full(NETWORKS, ENDPOINTS, POLICIES)
    admin = [p for p in POLICIES if p.tier == "admin"]
    assert inc.policies_changed(POLICIES, admin[:1]) is None


def test_a_dual_stack_endpoint_changes_incrementally() -> None:
    """IPv4 and IPv6 addresses of one endpoint do not compare: nothing may sort them together."""
    from ipaddress import ip_interface

    dual = endpoint("dual", BLUE, 77, {"app": "web"})
    dual = dual.model_copy(update={"addresses": [*dual.addresses, ip_interface("fd00:77::77/64")]})
    inc = Incremental("n1")
    before = inc.full(NETWORKS, ENDPOINTS, POLICIES)
    kernel = state_of(before)
    after, keys, edits = inc.change(None, dual)
    reference = Incremental("n1").full(NETWORKS, [*ENDPOINTS, dual], POLICIES)
    assert canonical(after) == canonical(reference)
    simulate(kernel, delta(before, after, keys, edits))
    assert view(kernel) == view(state_of(reference))
    assert any(name.endswith("6") for _, name in keys)  # its IPv6 address is in the v6 sets
