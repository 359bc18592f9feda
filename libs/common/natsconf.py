"""nats-server configuration for the fabric, generated from the identity list and the authz table.

The config is JSON (a subset of the nats-server config syntax), so nothing is hand-quoted.
Invariants:
- Clients must present a certificate from the fabric CA (`verify_and_map`); its URI SAN maps to a
  user whose permissions are exactly `authz.server_permissions` of that identity.
- TLS first (no plaintext INFO before the handshake) and TLS 1.3 only.
- JetStream writes are fsynced before they are acknowledged (`sync_interval: always`): an acked
  write survives a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from libs.common.authz import server_permissions
from libs.common.ids import SpiffeId


def server_config(
    *,
    host: str,
    port: int,
    server_name: str,
    store_dir: Path,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    identities: Iterable[SpiffeId],
    monitor_port: int | None = None,
) -> dict[str, Any]:
    """The nats-server config as a dict; `render` turns it into the file's text."""
    users = []
    for identity in sorted(identities, key=lambda i: i.uri):
        perms = server_permissions(identity)
        users.append(
            {
                "user": identity.uri,
                "permissions": {
                    "publish": {"allow": perms.publish or ["_QNF_NOTHING"]},
                    "subscribe": {"allow": perms.subscribe or ["_QNF_NOTHING"]},
                    "allow_responses": True,
                },
            }
        )
    config: dict[str, Any] = {
        "server_name": server_name,
        "host": host,
        "port": port,
        "tls": {
            "ca_file": str(ca_file),
            "cert_file": str(cert_file),
            "key_file": str(key_file),
            "verify_and_map": True,
            "handshake_first": True,
            "min_version": "1.3",
            "timeout": 2,
        },
        "jetstream": {"store_dir": str(store_dir), "sync_interval": "always"},
        "authorization": {"users": users},
        "max_payload": 1048576,
    }
    if monitor_port is not None:
        config["http"] = f"127.0.0.1:{monitor_port}"
    return config


def render(config: dict[str, Any]) -> str:
    """The config file's text."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"
