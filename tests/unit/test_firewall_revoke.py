"""Unit tests of revocation (`core.revoke`): which tracked flows a new policy state cuts.

No I/O: flows are values as conntrack would list them (original direction); the verdicts come
from the same model and explain the compiler and the datapath follow.
"""

from __future__ import annotations

from ipaddress import ip_address

from services.firewall.core.model import build
from services.firewall.core.revoke import Flow, flows_to_cut
from tests.unit.test_firewall_core import BLUE, CACHE, DB, NETWORKS, OUTSIDE, WEB, addr, app, policy


def flow(src: object, dst: object, port: int | None = 5432, proto: int = 6) -> Flow:
    return Flow(ip_address(addr(src)), ip_address(addr(dst)), proto, port)  # type: ignore[arg-type]


def allow_web_to_db(*, keep: bool = False, port: int = 5432) -> list:  # type: ignore[type-arg]
    return [
        policy(
            name="db-in",
            network="blue",
            endpointSelector=app("db"),
            ingress=[{"peers": [{"endpointSelector": app("web")}], "ports": [{"port": port}]}],
            keepEstablished=keep,
        ),
        policy(
            name="web-out",
            network="blue",
            endpointSelector=app("web"),
            policyTypes=["Egress"],
            egress=[{"peers": [{"endpointSelector": app("db")}], "ports": [{"port": 5432}]}],
        ),
    ]


def test_an_allowed_flow_is_kept_and_a_denied_one_cut() -> None:
    policies = allow_web_to_db()
    model = build(NETWORKS, [WEB, DB, CACHE], policies, node="n1")
    allowed, denied = flow(WEB, DB), flow(CACHE, DB)
    assert flows_to_cut(model, policies, [allowed, denied, denied]) == [denied, denied]


def test_a_narrowed_port_cuts_the_flows_on_the_old_one() -> None:
    policies = allow_web_to_db(port=6000)
    model = build(NETWORKS, [WEB, DB], policies, node="n1")
    assert flows_to_cut(model, policies, [flow(WEB, DB)]) == [flow(WEB, DB)]


def test_keep_established_keeps_flows_its_policy_denies_on_its_side() -> None:
    policies = allow_web_to_db(keep=True, port=6000)  # db's ingress now denies 5432, and keeps
    model = build(NETWORKS, [WEB, DB], policies, node="n1")
    assert flows_to_cut(model, policies, [flow(WEB, DB)]) == []
    # The switch is per policy and side: web's egress denies 6543, and web-out does not keep.
    assert flows_to_cut(model, policies, [flow(WEB, DB, 6543)]) == [flow(WEB, DB, 6543)]


def test_flows_of_other_nodes_and_foreign_addresses_are_left_alone() -> None:
    far = WEB.model_copy(update={"node": "n2"})
    model = build(NETWORKS, [far, DB.model_copy(update={"node": "n2"})], [], node="n1")
    assert flows_to_cut(model, [], [flow(far, DB), flow(OUTSIDE, "198.51.100.1", 443)]) == []


def test_a_relabel_that_leaves_a_policy_cuts_its_flows() -> None:
    policies = allow_web_to_db()
    moved = WEB.model_copy(update={"labels": {"app": "other"}})
    model = build([BLUE], [moved, DB], policies, node="n1")
    assert flows_to_cut(model, policies, [flow(moved, DB)]) == [flow(moved, DB)]


def test_dns_to_the_gateway_is_never_cut() -> None:
    model = build(NETWORKS, [WEB], [], node="n1")
    assert flows_to_cut(model, [], [flow(WEB, str(BLUE.gateway), 53, 17)]) == []
