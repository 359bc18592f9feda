"""Kubernetes label-selector semantics, in one place (the firewall and DNS services select by labels).

An empty selector (no labels, no expressions) selects everything; a missing selector (None) is
decided by the caller, because its meaning depends on where it stands.
"""

from __future__ import annotations

from collections.abc import Mapping

from libs.common.messages import LabelSelector

# Networks carry their name as a label, as Kubernetes namespaces do, so namespaceSelectors work.
NETWORK_NAME_LABEL = "kubernetes.io/metadata.name"


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True if `labels` satisfy every matchLabels entry and every matchExpressions requirement."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def network_labels(name: str, labels: Mapping[str, str]) -> dict[str, str]:
    return {**labels, NETWORK_NAME_LABEL: name}
