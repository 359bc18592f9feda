"""Revocation: which established flows a new policy state denies, and so must be cut.

Conntrack lets established flows pass before any policy is consulted (that is what keeps
per-packet cost flat), so a change that denies a live flow would otherwise never touch it. After
each change the reconciler asks this module which tracked flows the new model denies and deletes
their conntrack entries; the next packet of such a flow is then judged as new, and dropped.

A flow is kept instead when the endpoint whose side denies it (the source for egress, the
destination for ingress) is selected by a policy with `keepEstablished`: that policy asks for
new flows to be denied while flows already running finish. Pure: flows and policies are values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from libs.common.messages import FlowQuery, Policy
from libs.common.selectors import matches
from services.firewall.core.explain import explain
from services.firewall.core.model import Address, Model

PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMP"}


@dataclass(frozen=True, order=True)
class Flow:
    """The original direction of a tracked connection."""

    source: Address
    destination: Address
    proto: int
    port: int | None  # destination port; None for protocols without ports


def _keeps(policies: Sequence[Policy], model: Model, local: Address) -> bool:
    endpoint = model.by_address.get(local)
    if endpoint is None:
        return False
    for p in policies:
        if not p.keep_established:
            continue
        if p.tier == "normal" and p.network != endpoint.network:
            continue
        if matches(p.endpoint_selector, endpoint.labels):
            return True
    return False


def flows_to_cut(model: Model, policies: Sequence[Policy], flows: Iterable[Flow]) -> list[Flow]:
    """The flows touching this node's endpoints that the model denies and no policy keeps."""
    out = []
    judged: dict[Flow, bool] = {}
    for flow in flows:
        if flow.source not in model.local and flow.destination not in model.local:
            continue
        name = PROTOCOL_NAMES.get(flow.proto)
        if name is None or flow.source.version != flow.destination.version:
            continue
        if flow not in judged:
            port = (flow.port or None) if name in ("TCP", "UDP", "SCTP") else None
            verdict = explain(
                model,
                FlowQuery(source=flow.source, destination=flow.destination, protocol=name, port=port),
            )
            cut = not verdict.allowed
            if cut and verdict.direction is not None:
                local = flow.source if verdict.direction == "egress" else flow.destination
                cut = not _keeps(policies, model, local)
            judged[flow] = cut
        if judged[flow]:
            out.append(flow)
    return out
