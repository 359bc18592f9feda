"""KV keys of policies: unique per network for the normal tier, global for the admin tier."""

from __future__ import annotations

from libs.common.messages import PolicySpec


def policy_key(policy: PolicySpec) -> str:
    return f"admin.{policy.name}" if policy.tier == "admin" else f"net.{policy.network}.{policy.name}"


def ref_key(name: str, network: str | None) -> str:
    return f"net.{network}.{name}" if network else f"admin.{name}"
