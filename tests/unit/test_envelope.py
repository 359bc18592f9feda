"""Unit tests of the signed envelope: signing, verification, replay, authorization, records.

No I/O: certificates are made in memory, time is an injected clock.
"""

from __future__ import annotations

import datetime as dt

import pytest

from libs.common.authz import may_publish
from libs.common.envelope import (
    HDR_CERT,
    HDR_KID,
    HDR_NONCE,
    HDR_SENDER,
    HDR_SIG,
    HDR_TS,
    Rejected,
    ReplayCache,
    Signer,
    TrustAnchors,
    Verifier,
    open_record,
    seal_record,
)
from libs.common.ids import SpiffeId
from libs.common.pki import CertificateAuthority

TD = "qnf.test"
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
T0 = NOW.timestamp()
GATEWAY = SpiffeId.service(TD, "gateway")
CNI = SpiffeId.node_agent(TD, "n1", "cni")
SUBJECT = "qnf.v1.cmd.vnet.network.create"
BODY = b'{"name":"blue"}'


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD, now=NOW)


def anchors(ca: CertificateAuthority) -> TrustAnchors:
    return TrustAnchors(TD, ca.ed25519_cert, ca.mldsa_cert)


def make(
    ca: CertificateAuthority,
    identity: SpiffeId = GATEWAY,
    suite: str = "ed25519",
    lifetime: dt.timedelta = dt.timedelta(hours=1),
    clock: Clock | None = None,
) -> tuple[Signer, Verifier, Clock]:
    clock = clock or Clock()
    signer = Signer(ca.issue(identity, now=NOW, lifetime=lifetime), suite, clock=clock)  # type: ignore[arg-type]
    verifier = Verifier(anchors(ca), suite, authorize=may_publish, clock=clock, max_skew_ms=30_000)  # type: ignore[arg-type]
    return signer, verifier, clock


@pytest.mark.parametrize("suite", ["ed25519", "hybrid"])
def test_valid_message_passes(ca: CertificateAuthority, suite: str) -> None:
    signer, verifier, _ = make(ca, suite=suite)
    headers = signer.headers(SUBJECT, BODY)
    assert verifier.verify(SUBJECT, headers, BODY) == GATEWAY


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s, h, b: (s, h, b + b" "), "bad_signature"),
        (lambda s, h, b: ("qnf.v1.cmd.vnet.network.delete", h, b), "bad_signature"),
        (lambda s, h, b: (s, {**h, HDR_TS: str(int(h[HDR_TS]) + 1)}, b), "bad_signature"),
        (lambda s, h, b: (s, {**h, HDR_NONCE: "AAAAAAAAAAAAAAAAAAAAAA"}, b), "bad_signature"),
        (lambda s, h, b: (s, {**h, HDR_SIG: "ed25519:" + "A" * 86}, b), "bad_signature"),
        (lambda s, h, b: (s, {**h, HDR_SENDER: "spiffe://qnf.test/service/firewall"}, b), "bad_signature"),
        (lambda s, h, b: (s, {**h, HDR_KID: "0" * 64}, b), "bad_signature"),
        (lambda s, h, b: (s, {k: v for k, v in h.items() if k != HDR_SIG}, b), "malformed"),
        (lambda s, h, b: (s, {**h, HDR_TS: "soon"}, b), "malformed"),
        (lambda s, h, b: (s, {**h, HDR_CERT: "ed25519:!!!"}, b), "malformed"),
        (lambda s, h, b: (s, None, b), "malformed"),
    ],
    ids=[
        "body",
        "subject",
        "timestamp",
        "nonce",
        "signature",
        "sender",
        "kid",
        "no-sig",
        "bad-ts",
        "bad-cert",
        "unsigned",
    ],
)
def test_tampering_fails(ca: CertificateAuthority, change, reason: str) -> None:  # type: ignore[no-untyped-def]
    signer, verifier, _ = make(ca)
    subject, headers, body = change(SUBJECT, signer.headers(SUBJECT, BODY), BODY)
    with pytest.raises(Rejected) as info:
        verifier.verify(subject, headers, body)
    assert info.value.reason == reason


def test_replay_inside_window_fails(ca: CertificateAuthority) -> None:
    signer, verifier, clock = make(ca)
    headers = signer.headers(SUBJECT, BODY)
    verifier.verify(SUBJECT, headers, BODY)
    clock.t += 5
    with pytest.raises(Rejected) as info:
        verifier.verify(SUBJECT, headers, BODY)
    assert info.value.reason == "replay"


def test_old_message_fails_on_skew_after_window(ca: CertificateAuthority) -> None:
    signer, verifier, clock = make(ca)
    headers = signer.headers(SUBJECT, BODY)
    verifier.verify(SUBJECT, headers, BODY)
    clock.t += 31
    with pytest.raises(Rejected) as info:
        verifier.verify(SUBJECT, headers, BODY)
    assert info.value.reason == "skew"


def test_future_timestamp_fails(ca: CertificateAuthority) -> None:
    signer, verifier, clock = make(ca)
    clock.t += 60
    headers = signer.headers(SUBJECT, BODY)
    clock.t -= 60
    with pytest.raises(Rejected) as info:
        verifier.verify(SUBJECT, headers, BODY)
    assert info.value.reason == "skew"


def test_role_may_not_send_subject(ca: CertificateAuthority) -> None:
    signer, verifier, _ = make(ca, identity=CNI)
    headers = signer.headers(SUBJECT, BODY)  # the CNI shim may talk only to its node's vnet
    with pytest.raises(Rejected) as info:
        verifier.verify(SUBJECT, headers, BODY)
    assert info.value.reason == "forbidden"
    own = "qnf.v1.node.n1.vnet.endpoint.add"
    assert verifier.verify(own, signer.headers(own, BODY), BODY) == CNI
    other_node = "qnf.v1.node.n2.vnet.endpoint.add"
    with pytest.raises(Rejected):
        verifier.verify(other_node, signer.headers(other_node, BODY), BODY)


def test_certificate_from_another_ca_fails(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create(TD, now=NOW)
    signer = Signer(other.issue(GATEWAY, now=NOW, lifetime=dt.timedelta(hours=1)), "ed25519", clock=Clock())
    _, verifier, _ = make(ca)
    with pytest.raises(Rejected) as info:
        verifier.verify(SUBJECT, signer.headers(SUBJECT, BODY), BODY)
    assert info.value.reason == "untrusted"


def test_other_trust_domain_fails() -> None:
    other = CertificateAuthority.create("evil.test", now=NOW)
    signer = Signer(
        other.issue(SpiffeId.service("evil.test", "gateway"), now=NOW, lifetime=dt.timedelta(hours=1)),
        "ed25519",
        clock=Clock(),
    )
    verifier = Verifier(
        TrustAnchors(TD, other.ed25519_cert, other.mldsa_cert),
        "ed25519",
        authorize=may_publish,
        clock=Clock(),
    )
    with pytest.raises(Rejected) as info:
        verifier.verify(SUBJECT, signer.headers(SUBJECT, BODY), BODY)
    assert info.value.reason == "untrusted"


def test_expired_certificate_fails(ca: CertificateAuthority) -> None:
    clock = Clock()
    signer, verifier, _ = make(ca, lifetime=dt.timedelta(minutes=10), clock=clock)
    clock.t += 11 * 60  # the connection may still be open; the message must not pass
    with pytest.raises(Rejected) as info:
        verifier.verify(SUBJECT, signer.headers(SUBJECT, BODY), BODY)
    assert info.value.reason == "expired"


def test_hybrid_verifier_requires_both_signatures(ca: CertificateAuthority) -> None:
    classic, _, clock = make(ca, suite="ed25519")
    _, hybrid, _ = make(ca, suite="hybrid", clock=clock)
    with pytest.raises(Rejected) as info:
        hybrid.verify(SUBJECT, classic.headers(SUBJECT, BODY), BODY)
    assert info.value.reason == "bad_signature"


def test_hybrid_fails_if_pq_signature_is_wrong(ca: CertificateAuthority) -> None:
    signer, verifier, _ = make(ca, suite="hybrid")
    headers = signer.headers(SUBJECT, BODY)
    ed, pq = headers[HDR_SIG].split(",")
    other = signer.headers(SUBJECT, b"other")[HDR_SIG].split(",")[1]
    with pytest.raises(Rejected) as info:
        verifier.verify(SUBJECT, {**headers, HDR_SIG: f"{ed},{other}"}, BODY)
    assert info.value.reason == "bad_signature"
    assert pq.startswith("mldsa65:")


def test_ml_dsa_certificate_must_match_sender(ca: CertificateAuthority) -> None:
    signer, verifier, _ = make(ca, suite="hybrid")
    intruder, _, _ = make(ca, identity=SpiffeId.node_agent(TD, "n1", "vnet"), suite="hybrid")
    headers = signer.headers(SUBJECT, BODY)
    foreign_pq = intruder.headers(SUBJECT, BODY)[HDR_CERT].split(",")[1]
    ed_cert = headers[HDR_CERT].split(",")[0]
    with pytest.raises(Rejected):
        verifier.verify(SUBJECT, {**headers, HDR_CERT: f"{ed_cert},{foreign_pq}"}, BODY)


def test_reply_skips_role_table_but_not_signature(ca: CertificateAuthority) -> None:
    signer, verifier, _ = make(ca, identity=SpiffeId.node_agent(TD, "n1", "vnet"))
    inbox = "_INBOX_service-gateway.abc.def"
    headers = signer.headers(inbox, BODY)
    assert verifier.verify(inbox, headers, BODY, replies=True).name == "vnet"
    with pytest.raises(Rejected):
        verifier.verify(inbox, headers, BODY + b"x", replies=True)


def test_record_roundtrip_and_move_between_keys_fails(ca: CertificateAuthority) -> None:
    signer, verifier, clock = make(ca, identity=SpiffeId.node_agent(TD, "n1", "vnet"))
    raw = seal_record(signer, "qnf-networks", "blue", BODY)
    clock.t += 86400 * 30  # records outlive certificates: validity is judged at signing time
    writer, body = open_record(verifier, "qnf-networks", "blue", raw)
    assert (writer.name, body) == ("vnet", BODY)
    with pytest.raises(Rejected):
        open_record(verifier, "qnf-networks", "red", raw)
    with pytest.raises(Rejected) as info:
        open_record(verifier, "qnf-networks", "blue", b"not json")
    assert info.value.reason == "malformed"


def test_replay_cache_expires_and_bounds() -> None:
    cache = ReplayCache(window_ms=1000, max_entries=2)
    assert cache.check_and_add("k", "a", 0, 0)
    assert not cache.check_and_add("k", "a", 0, 10)
    assert cache.check_and_add("k", "b", 0, 10)
    assert not cache.check_and_add("k", "c", 0, 10)  # full: refuse rather than forget
    assert cache.check_and_add("k", "c", 5000, 5000)  # old entries expired
    assert len(cache) == 1
