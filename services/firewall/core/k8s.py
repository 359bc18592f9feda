"""Kubernetes NetworkPolicy (networking.k8s.io/v1) → qnf policy: namespace = network, pod = endpoint.

Parsing the YAML text is the caller's business (it needs PyYAML); this takes the decoded
document, so it stays pure. Errors name the field, as `kubectl` would.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from libs.common.errors import PolicyRejected
from libs.common.messages import PolicySpec

_NAME = re.compile(r"[^a-z0-9-]")


def _label(name: str, field: str) -> str:
    """A Kubernetes object name as a qnf name (DNS label): dots and the like become dashes."""
    out = _NAME.sub("-", name.lower())[:63].strip("-")
    if not out:
        raise PolicyRejected(f"{field}: {name!r} does not make a valid qnf name")
    return out


def _peers(items: Any, where: str) -> list[dict[str, Any]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise PolicyRejected(f"{where}: must be a list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item:
            raise PolicyRejected(f"{where}[{i}]: a peer needs podSelector, namespaceSelector or ipBlock")
        unknown = set(item) - {"podSelector", "namespaceSelector", "ipBlock"}
        if unknown:
            raise PolicyRejected(f"{where}[{i}]: unknown field {sorted(unknown)[0]}")
        peer: dict[str, Any] = {}
        if "podSelector" in item:
            peer["endpointSelector"] = item["podSelector"] or {}
        if "namespaceSelector" in item:
            peer["networkSelector"] = item["namespaceSelector"] or {}
        if "ipBlock" in item:
            peer["ipBlock"] = item["ipBlock"]
        out.append(peer)
    return out


def _rules(items: Any, key: str, where: str) -> list[dict[str, Any]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise PolicyRejected(f"{where}: must be a list")
    out = []
    for i, item in enumerate(items):
        item = item or {}
        if not isinstance(item, dict):
            raise PolicyRejected(f"{where}[{i}]: must be an object")
        unknown = set(item) - {key, "ports"}
        if unknown:
            raise PolicyRejected(f"{where}[{i}]: unknown field {sorted(unknown)[0]}")
        out.append({"peers": _peers(item.get(key), f"{where}[{i}].{key}"), "ports": item.get("ports") or []})
    return out


def translate(doc: Any, *, default_network: str | None = None) -> PolicySpec:
    """A NetworkPolicy document as a normal-tier qnf policy."""
    if not isinstance(doc, dict):
        raise PolicyRejected("document: not a YAML/JSON object")
    if doc.get("apiVersion") != "networking.k8s.io/v1" or doc.get("kind") != "NetworkPolicy":
        raise PolicyRejected(
            "apiVersion/kind: expected networking.k8s.io/v1 NetworkPolicy, "
            f"got {doc.get('apiVersion')!r} {doc.get('kind')!r}"
        )
    meta = doc.get("metadata") or {}
    spec = doc.get("spec")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise PolicyRejected("metadata.name: required")
    if not isinstance(spec, dict):
        raise PolicyRejected("spec: required")
    unknown = set(spec) - {"podSelector", "policyTypes", "ingress", "egress"}
    if unknown:
        raise PolicyRejected(f"spec.{sorted(unknown)[0]}: unknown field")
    network = meta.get("namespace") or default_network or "default"
    body = {
        "name": _label(str(meta["name"]), "metadata.name"),
        "network": _label(str(network), "metadata.namespace"),
        "endpointSelector": spec.get("podSelector") or {},
        "ingress": _rules(spec.get("ingress"), "from", "spec.ingress"),
        "egress": _rules(spec.get("egress"), "to", "spec.egress"),
    }
    if spec.get("policyTypes") is not None:
        body["policyTypes"] = spec["policyTypes"]
    try:
        return PolicySpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise PolicyRejected(f"spec ({loc}): {first['msg']}") from exc
