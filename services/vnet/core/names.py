"""Deterministic names, derived from ids so that DEL and GC find things again without state.

Invariants: every kernel name fits IFNAMSIZ (15 bytes); the prefixes `qnf-` (bridges) and `q` +
10 hex (host-side veths) mark links the fabric owns, and reconcile only ever touches those.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from libs.common.ids import endpoint_id as endpoint_id  # shared with nat and the Docker driver

BRIDGE_PREFIX: Final = "qnf-"
OWNED_BRIDGE: Final = re.compile(r"^qnf-[0-9a-f]{8}$")
OWNED_VETH: Final = re.compile(r"^q[0-9a-f]{10}$")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def bridge_name(network: str) -> str:
    """`qnf-<8 hex>`: the bridge of a network on every node."""
    return f"{BRIDGE_PREFIX}{_digest('bridge', network)[:8]}"


def host_veth_name(endpoint: str) -> str:
    """`q<10 hex>`: the host end of an endpoint's veth pair."""
    return f"q{endpoint[:10]}"


def handoff_veth_name(endpoint: str) -> str:
    """`h<10 hex>`: a handed-off container end while it waits in the node's namespace."""
    return f"h{endpoint[:10]}"


def bridge_mac(network: str) -> str:
    """A fixed MAC for a network's bridge.

    Left to itself a Linux bridge takes the lowest MAC of its ports, so removing one container
    can change the gateway's MAC under every other container's ARP cache: seconds of silence.
    """
    raw = bytearray(bytes.fromhex(_digest("bridge-mac", network)[:12]))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def endpoint_mac(endpoint: str) -> str:
    """A locally administered unicast MAC derived from the endpoint id."""
    raw = bytearray(bytes.fromhex(_digest("mac", endpoint)[:12]))
    raw[0] = (raw[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in raw)


def lease_key(network: str, address: str) -> str:
    """KV key of an address lease; ':' is not allowed in KV keys, so IPv6 uses '_'."""
    return f"{network}.{address.replace(':', '_')}"


def default_endpoint_name(container_id: str) -> str:
    """A DNS label from a container id when the runtime names nothing better (its first 12)."""
    label = re.sub(r"[^a-z0-9-]", "-", container_id.lower())[:12].strip("-")
    return label or "endpoint"
