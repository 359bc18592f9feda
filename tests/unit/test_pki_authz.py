"""Unit tests of identities, the PKI on disk, the authorization table and the NATS config.

Files only (tmp_path); no network, no processes.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from libs.common import natsconf
from libs.common.authz import may_publish, may_write_bucket, role_of, server_permissions
from libs.common.config import Settings
from libs.common.ids import SpiffeId, subject_matches
from libs.common.pki import PkiDirectory, spiffe_uri

TD = "qnf.test"
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "uri",
    ["spiffe://qnf.test/service/vnet", "spiffe://qnf.test/node/n1/cni", "spiffe://qnf.test/user/admin"],
)
def test_spiffe_ids_round_trip(uri: str) -> None:
    assert SpiffeId.parse(uri).uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "https://qnf.test/service/vnet",
        "spiffe://qnf.test/node/n1",
        "spiffe://qnf.test/service/VNET",
        "spiffe://qnf.test/service/a.b",
        "spiffe:///service/x",
        "spiffe://qnf.test/user/admin/extra",
    ],
)
def test_bad_spiffe_ids_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        SpiffeId.parse(uri)


@pytest.mark.parametrize(
    ("pattern", "subject", "match"),
    [
        ("a.*.c", "a.b.c", True),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.*", "a.b.c", False),
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        (">", "x", True),
    ],
)
def test_subject_matching(pattern: str, subject: str, match: bool) -> None:
    assert subject_matches(pattern, subject) is match


def test_identity_certificates_carry_one_uri_and_no_dns(tmp_path: Path) -> None:
    pki = PkiDirectory(tmp_path)
    ca = pki.ensure_ca(TD, now=NOW)
    vnet = SpiffeId.node_agent(TD, "n1", "vnet")
    material, issued = pki.ensure_identity(ca, vnet, now=NOW, lifetime=dt.timedelta(hours=24))
    assert issued
    for cert in (material.ed25519_cert, material.mldsa_cert):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [vnet.uri]
        assert san.get_values_for_type(x509.DNSName) == []
        assert spiffe_uri(cert) == vnet.uri
    key_mode = stat.S_IMODE((pki.identity_dir(vnet) / "tls.key").stat().st_mode)
    assert key_mode == 0o600
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_identity_is_renewed_after_two_thirds_of_its_life(tmp_path: Path) -> None:
    pki = PkiDirectory(tmp_path)
    ca = pki.ensure_ca(TD, now=NOW)
    vnet = SpiffeId.node_agent(TD, "n1", "vnet")
    first, _ = pki.ensure_identity(ca, vnet, now=NOW, lifetime=dt.timedelta(hours=3))
    same, issued = pki.ensure_identity(
        ca, vnet, now=NOW + dt.timedelta(hours=1), lifetime=dt.timedelta(hours=3)
    )
    assert not issued and same.kid == first.kid
    renewed, issued = pki.ensure_identity(
        ca, vnet, now=NOW + dt.timedelta(hours=2, minutes=1), lifetime=dt.timedelta(hours=3)
    )
    assert issued and renewed.kid != first.kid
    assert pki.load_identity(vnet).kid == renewed.kid


def test_ca_is_made_once(tmp_path: Path) -> None:
    pki = PkiDirectory(tmp_path)
    first = pki.ensure_ca(TD, now=NOW)
    again = pki.ensure_ca(TD, now=NOW)
    assert first.ed25519_cert == again.ed25519_cert


def test_identity_from_another_ca_is_reissued(tmp_path: Path) -> None:
    pki = PkiDirectory(tmp_path / "a")
    other = PkiDirectory(tmp_path / "b")
    ca = pki.ensure_ca(TD, now=NOW)
    other_ca = other.ensure_ca(TD, now=NOW)
    vnet = SpiffeId.node_agent(TD, "n1", "vnet")
    pki.save_identity(other_ca.issue(vnet, now=NOW, lifetime=dt.timedelta(hours=1)))
    _, issued = pki.ensure_identity(ca, vnet, now=NOW, lifetime=dt.timedelta(hours=1))
    assert issued


def test_mismatched_key_and_certificate_are_refused(tmp_path: Path) -> None:
    pki = PkiDirectory(tmp_path)
    ca = pki.ensure_ca(TD, now=NOW)
    a, b = SpiffeId.node_agent(TD, "n1", "vnet"), SpiffeId.node_agent(TD, "n1", "dns")
    pki.ensure_identity(ca, a, now=NOW, lifetime=dt.timedelta(hours=1))
    pki.ensure_identity(ca, b, now=NOW, lifetime=dt.timedelta(hours=1))
    (pki.identity_dir(a) / "tls.key").write_bytes((pki.identity_dir(b) / "tls.key").read_bytes())
    with pytest.raises(ValueError, match="do not match"):
        pki.load_identity(a)


def test_roles_and_publish_rights() -> None:
    vnet = SpiffeId.node_agent(TD, "n1", "vnet")
    cni = SpiffeId.node_agent(TD, "n1", "cni")
    gateway = SpiffeId.service(TD, "gateway")
    mallory = SpiffeId.user(TD, "mallory")
    assert role_of(mallory) is None and not may_publish(mallory, "qnf.v1.evt.vnet.x")
    assert may_publish(gateway, "qnf.v1.cmd.vnet.network.create")
    assert may_publish(cni, "qnf.v1.node.n1.vnet.endpoint.add")
    assert not may_publish(cni, "qnf.v1.node.n2.vnet.endpoint.add")
    assert not may_publish(cni, "qnf.v1.cmd.vnet.network.delete")
    assert may_publish(vnet, "qnf.v1.evt.vnet.endpoint.added")
    assert not may_publish(vnet, "qnf.v1.evt.firewall.flow.denied")  # no one speaks for another service
    assert may_write_bucket(vnet, "qnf-ipam") and not may_write_bucket(vnet, "qnf-policies")
    assert not may_write_bucket(SpiffeId.service(TD, "vnet"), "qnf-tokens")


def test_server_permissions_follow_the_role_table() -> None:
    cni = server_permissions(SpiffeId.node_agent(TD, "n1", "cni"))
    assert "qnf.v1.node.n1.vnet.>" in cni.publish
    assert not any(p.startswith("$KV.") for p in cni.publish)
    assert cni.subscribe[:1] == ["_INBOX_node-n1-cni.>"]
    vnet = server_permissions(SpiffeId.node_agent(TD, "n1", "vnet"))
    assert {"$KV.qnf-networks.>", "$KV.qnf-ipam.>", "$KV.qnf-endpoints.>"} <= set(vnet.publish)
    assert "$KV.qnf-policies.>" not in vnet.publish
    assert not any(
        p.startswith("$JS.API.STREAM.CREATE") or p.startswith("$JS.API.STREAM.DELETE") for p in vnet.publish
    )
    assert server_permissions(SpiffeId.user(TD, "mallory")).publish == []


def test_nats_config_maps_every_identity_with_tls_first(tmp_path: Path) -> None:
    ids = [SpiffeId.node_agent(TD, "n1", "vnet"), SpiffeId.user(TD, "mallory")]
    config = natsconf.server_config(
        host="127.0.0.1",
        port=4222,
        server_name="s",
        store_dir=tmp_path,
        ca_file=tmp_path / "ca",
        cert_file=tmp_path / "c",
        key_file=tmp_path / "k",
        identities=ids,
    )
    parsed = json.loads(natsconf.render(config))
    assert parsed["tls"]["verify_and_map"] is True and parsed["tls"]["handshake_first"] is True
    assert parsed["jetstream"]["sync_interval"] == "always"
    users = {u["user"]: u["permissions"] for u in parsed["authorization"]["users"]}
    assert users["spiffe://qnf.test/user/mallory"]["publish"]["allow"] == ["_QNF_NOTHING"]
    assert users["spiffe://qnf.test/node/n1/vnet"]["allow_responses"] is True


def test_settings_from_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "qnf.toml"
    config.write_text('trust_domain = "example.org"\nnats_port = 5222\n')
    monkeypatch.setenv("QNF_CONFIG", str(config))
    monkeypatch.setenv("QNF_NATS_PORT", "6222")
    settings = Settings(node="n1")
    assert (settings.trust_domain, settings.nats_port, settings.url) == (
        "example.org",
        6222,
        "tls://127.0.0.1:6222",
    )
    monkeypatch.setenv("QNF_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="missing.toml"):
        Settings(node="n1")
    monkeypatch.delenv("QNF_CONFIG")
    with pytest.raises(ValueError):
        Settings(node="Not A Token")
