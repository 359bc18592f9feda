"""`reaches`: may a new flow go from one address to another at all (policy-scoped DNS's question)."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from libs.common.messages import Endpoint, Policy
from services.firewall.core.explain import reaches
from services.firewall.core.model import build
from tests.unit.test_firewall_core import endpoint, network

NET = network("zt", "10.9.0.0/24")
OPEN = network("da", "10.8.0.0/24", isolation="default-allow")
WEB = endpoint("web", NET, 2, {"app": "web"})
DB = endpoint("db", NET, 3, {"app": "db"})
CACHE = endpoint("cache", NET, 4, {"app": "cache"})
DA1 = endpoint("da1", OPEN, 2)
DA2 = endpoint("da2", OPEN, 3)


def ip(e: Endpoint) -> Any:
    return ip_address(str(e.addresses[0].ip))


def model(*policies: dict[str, Any]) -> Any:
    return build(
        [NET, OPEN], [WEB, DB, CACHE, DA1, DA2], [Policy.model_validate(p) for p in policies], node=None
    )


WEB_TO_DB = [
    {
        "name": "db-in",
        "network": "zt",
        "endpointSelector": {"matchLabels": {"app": "db"}},
        "ingress": [
            {"peers": [{"endpointSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}
        ],
    },
    {
        "name": "web-out",
        "network": "zt",
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Egress"],
        "egress": [
            {"peers": [{"endpointSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}
        ],
    },
]


def test_zero_trust_reaches_nothing_but_itself() -> None:
    m = model()
    assert reaches(m, ip(WEB), ip(WEB))
    assert not reaches(m, ip(WEB), ip(DB))


def test_a_port_allowed_on_both_sides_is_enough() -> None:
    m = model(*WEB_TO_DB)
    assert reaches(m, ip(WEB), ip(DB))
    assert not reaches(m, ip(DB), ip(WEB))  # the reverse direction is not opened
    assert not reaches(m, ip(CACHE), ip(DB))


def test_one_side_is_not_enough() -> None:
    assert not reaches(model(WEB_TO_DB[0]), ip(WEB), ip(DB))  # web's egress is closed
    assert not reaches(model(WEB_TO_DB[1]), ip(WEB), ip(DB))  # db's ingress is closed


def test_default_allow_networks_reach_each_other() -> None:
    m = model()
    assert reaches(m, ip(DA1), ip(DA2))
    assert not reaches(m, ip(DA1), ip(WEB))  # web's ingress is zero trust


def test_an_admin_deny_wins_over_normal_allows() -> None:
    deny = {
        "name": "no-db",
        "tier": "admin",
        "priority": 10,
        "endpointSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"action": "Deny", "peers": [{"endpointSelector": {}}]}],
    }
    assert not reaches(model(*WEB_TO_DB, deny), ip(WEB), ip(DB))
