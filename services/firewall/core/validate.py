"""Policy validation beyond the model's types, in the style of Cilium's Sanitize.

Every error names the field it is about (`ingress[1].ports[0].endPort: ...`). Feature switches
come in as arguments, never from globals.
"""

from __future__ import annotations

from collections.abc import Collection

from libs.common.errors import PolicyRejected
from libs.common.messages import LabelSelector, Peer, PolicyRule, PolicySpec


def _selector(sel: LabelSelector | None, where: str) -> None:
    if sel is None:
        return
    for i, req in enumerate(sel.match_expressions):
        if req.operator in ("In", "NotIn") and not req.values:
            raise PolicyRejected(f"{where}.matchExpressions[{i}]: operator {req.operator} needs values")
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            raise PolicyRejected(f"{where}.matchExpressions[{i}]: operator {req.operator} takes no values")


def _peer(peer: Peer, where: str) -> None:
    kinds = [
        peer.endpoint_selector is not None or peer.network_selector is not None,
        peer.ip_block is not None,
        peer.identity is not None,
    ]
    if sum(kinds) != 1:
        raise PolicyRejected(f"{where}: a peer is exactly one of selectors, ipBlock or identity")
    _selector(peer.endpoint_selector, f"{where}.endpointSelector")
    _selector(peer.network_selector, f"{where}.networkSelector")
    if peer.ip_block is not None:
        for j, ex in enumerate(peer.ip_block.except_):
            if ex.version != peer.ip_block.cidr.version or not ex.subnet_of(peer.ip_block.cidr):  # type: ignore[arg-type]
                raise PolicyRejected(f"{where}.ipBlock.except[{j}]: {ex} is not inside {peer.ip_block.cidr}")


def _rule(rule: PolicyRule, where: str, *, admin: bool) -> None:
    if rule.action != "Allow" and not admin:
        raise PolicyRejected(f"{where}.action: only admin-tier policies deny or pass")
    for i, peer in enumerate(rule.peers):
        _peer(peer, f"{where}.peers[{i}]")
    for i, port in enumerate(rule.ports):
        here = f"{where}.ports[{i}]"
        if port.protocol == "ICMP" and (port.port is not None or port.end_port is not None):
            raise PolicyRejected(f"{here}: ICMP has no ports")
        if isinstance(port.port, int) and not 1 <= port.port <= 65535:
            raise PolicyRejected(f"{here}.port: {port.port} is not in 1-65535")
        if port.end_port is not None:
            if not isinstance(port.port, int):
                raise PolicyRejected(f"{here}.endPort: a port range needs a numeric port")
            if not port.port <= port.end_port <= 65535:
                raise PolicyRejected(f"{here}.endPort: {port.end_port} must be between port and 65535")


def validate(policy: PolicySpec, networks: Collection[str], *, admin_tier: bool = True) -> None:
    """Raise PolicyRejected naming the first bad field; `networks` are the known network names."""
    if policy.tier == "admin":
        if not admin_tier:
            raise PolicyRejected("tier: the admin tier is disabled")
        if policy.network is not None:
            raise PolicyRejected("network: admin-tier policies select networks with networkSelector")
    else:
        if policy.network is None:
            raise PolicyRejected("network: a policy names the network whose endpoints it selects")
        if policy.network not in networks:
            raise PolicyRejected(f"network: unknown network {policy.network!r}")
        if policy.network_selector is not None:
            raise PolicyRejected("networkSelector: only admin-tier policies select networks")
    _selector(policy.endpoint_selector, "endpointSelector")
    _selector(policy.network_selector, "networkSelector")
    for direction in ("ingress", "egress"):
        for i, rule in enumerate(getattr(policy, direction)):
            _rule(rule, f"{direction}[{i}]", admin=policy.tier == "admin")
