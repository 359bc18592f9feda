"""`policy.explain`: the verdict on one flow and the policy rule that decides it.

It walks the same grants the compiler turns into nftables sets, in the same order the datapath
checks them: the source's egress (admin tier, then DNS, open direction or a normal grant), then
the destination's ingress. Pure.
"""

from __future__ import annotations

from typing import Final

from libs.common.messages import FlowQuery, Verdict
from services.firewall.core.model import ICMP4, ICMP6, PROTOCOLS, Address, Direction, Model, grant_matches


def _proto(query: FlowQuery) -> int:
    if query.protocol == "ICMP":
        return ICMP6 if query.source.version == 6 else ICMP4
    return PROTOCOLS[query.protocol]


def _direction(
    model: Model, direction: Direction, local: Address, peer: Address, proto: int, port: int | None
) -> Verdict | None:
    """The verdict of one side, or None if it allows (so the other side decides)."""
    name = model.by_address[local].name if local in model.by_address else str(local)
    grants = model.grants_of(local, direction)
    for g in grants:
        if g.tier != "admin" or not grant_matches(g, peer, proto, port):
            continue
        if g.action == "Deny":
            return Verdict(
                allowed=False,
                reason=f"admin policy denies {direction} of {name}",
                policy=g.policy,
                rule=g.rule,
                direction=direction,
            )
        if g.action == "Allow":
            return Verdict(
                allowed=True,
                reason=f"admin policy allows {direction} of {name}",
                policy=g.policy,
                rule=g.rule,
                direction=direction,
            )
        break  # Pass: on to the normal tier
    opened = model.open_ingress if direction == "ingress" else model.open_egress
    if local in opened:
        return None
    if any(g.tier == "normal" and grant_matches(g, peer, proto, port) for g in grants):
        return None
    return Verdict(allowed=False, reason=f"no policy allows {direction} of {name}", direction=direction)


def explain(model: Model, query: FlowQuery) -> Verdict:
    """What the firewall does with a new flow from `source` to `destination`."""
    proto = _proto(query)
    src, dst = query.source, query.destination
    if src.version != dst.version:
        return Verdict(allowed=False, reason="source and destination are of different IP versions")
    deciding: Verdict | None = None
    if src in model.local:
        if dst in model.gateways and proto in (6, 17) and query.port == 53:
            return Verdict(allowed=True, reason="DNS to the fabric's resolver always passes")
        verdict = _direction(model, "egress", src, dst, proto, query.port)
        if verdict is not None and not verdict.allowed:
            return verdict
        deciding = verdict
    if dst in model.local:
        verdict = _direction(model, "ingress", dst, src, proto, query.port)
        if verdict is not None:
            return verdict
    if deciding is not None:
        return deciding
    return _allowed(model, src, dst, proto, query.port)


def _allowed(model: Model, src: Address, dst: Address, proto: int, port: int | None) -> Verdict:
    """An allowed flow: the reasons of both ends; the destination's grant (else the source's) decides."""
    parts: list[str] = []
    deciding: tuple[str, str, Direction] | None = None
    sides: tuple[tuple[Direction, Address, Address], ...] = (("egress", src, dst), ("ingress", dst, src))
    for direction, local, peer in sides:
        if local not in model.local:
            continue
        opened = model.open_ingress if direction == "ingress" else model.open_egress
        if local in opened:
            parts.append(f"{direction} of {local} is not isolated")
            continue
        g = next(
            g
            for g in model.grants_of(local, direction)
            if g.tier == "normal" and grant_matches(g, peer, proto, port)
        )
        parts.append(f"{direction} allowed by {g.policy} {g.rule}")
        deciding = (g.policy, g.rule, direction)
    reason = "; ".join(parts) or "neither end is a fabric endpoint on this node"
    if deciding is None:
        return Verdict(allowed=True, reason=reason)
    return Verdict(allowed=True, reason=reason, policy=deciding[0], rule=deciding[1], direction=deciding[2])


_NAMES: Final = {6: "TCP", 17: "UDP", 132: "SCTP", ICMP4: "ICMP", ICMP6: "ICMP"}


def reaches(model: Model, src: Address, dst: Address) -> bool:
    """True if some new flow from `src` to `dst` is allowed (policy-scoped DNS asks this).

    Any allowed flow is allowed by a grant of one side (or both sides are open), so the flows
    worth asking `explain` about are one per grant that names the other end: its protocol and
    its first port.
    """
    if src == dst:
        return True  # to itself: never through the firewall
    if src.version != dst.version:
        return False
    flows: set[tuple[int, int | None]] = {(6, 1)}  # both ends open: anything passes
    sides: tuple[tuple[Address, Address, Direction], ...] = ((src, dst, "egress"), (dst, src, "ingress"))
    for local, peer, direction in sides:
        for g in model.grants_of(local, direction):
            if peer in g.peer:
                proto = 6 if g.proto is None else g.proto
                port = None if proto in (ICMP4, ICMP6) else (g.ports[0] if g.ports else 1)
                flows.add((proto, port))
    for proto, port in sorted(flows, key=lambda f: (f[0], f[1] or 0)):
        query = FlowQuery(source=src, destination=dst, protocol=_NAMES[proto], port=port or None)
        if explain(model, query).allowed:
            return True
    return False
