"""The signed envelope: how every bus message, reply and KV record proves who sent it.

Headers of a signed message (DESIGN §3):

    Qnf-Sender  the sender's SPIFFE ID
    Qnf-Kid     SHA-256 fingerprint of the sender's Ed25519 certificate
    Qnf-Ts      unix milliseconds at signing
    Qnf-Nonce   16 random bytes, base64url
    Qnf-Sig     "<alg>:<base64url sig>[,<alg>:<sig>]" one signature per algorithm of the suite
    Qnf-Cert    "<alg>:<base64url DER>[,...]" the sender's certificate per algorithm

Every signature covers a domain tag, the subject, sender, kid, ts, nonce and SHA-256(body), so no
header can be swapped and a message cannot be moved to another subject. A reply is signed over
the requester's reply subject, a KV record over `$KV.<bucket>.<key>`.

The certificates travel with the message, so verification needs no directory: a receiver checks
the chain against the fabric CA once per certificate (cached) and the validity window on every
message, because nats-server keeps a TLS connection open after its certificate expires.

This module is pure apart from `os.urandom`; time comes in as a parameter. It imports neither
pydantic nor asyncio so that the CNI shim can sign and verify within its start-up budget.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from libs.common.ids import SpiffeId
from libs.common.pki import IdentityMaterial, spiffe_uri

HDR_SENDER: Final = "Qnf-Sender"
HDR_KID: Final = "Qnf-Kid"
HDR_TS: Final = "Qnf-Ts"
HDR_NONCE: Final = "Qnf-Nonce"
HDR_SIG: Final = "Qnf-Sig"
HDR_CERT: Final = "Qnf-Cert"
SIGNED_HEADERS: Final = (HDR_SENDER, HDR_KID, HDR_TS, HDR_NONCE, HDR_SIG, HDR_CERT)

Algorithm = Literal["ed25519", "mldsa65"]
SuiteName = Literal["ed25519", "hybrid"]
SUITES: Final[dict[str, tuple[Algorithm, ...]]] = {
    "ed25519": ("ed25519",),
    "hybrid": ("ed25519", "mldsa65"),
}

# Why a message was refused; the label values of qnf_bus_rejected_total{reason}.
RejectReason = Literal[
    "malformed",  # headers missing or unparsable
    "untrusted",  # certificate not issued by the fabric CA, or for another trust domain
    "expired",  # certificate outside its validity window
    "bad_signature",  # signature does not verify, or headers disagree with the certificate
    "skew",  # timestamp outside the allowed clock skew
    "replay",  # nonce seen before within the window
    "forbidden",  # the sender's role may not send on this subject
    "invalid",  # the body fails validation (reported by the service base)
]

_DOMAIN_TAG: Final = b"qnf-envelope-v1"
NONCE_BYTES: Final = 16


class Rejected(Exception):
    """A message failed verification; `reason` is a RejectReason, `detail` stays local."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail = detail


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_input(subject: str, sender: str, kid: str, ts_ms: int, nonce: str, body: bytes) -> bytes:
    """The exact bytes every signature of an envelope covers."""
    return b"\x00".join(
        (
            _DOMAIN_TAG,
            subject.encode(),
            sender.encode(),
            kid.encode(),
            str(ts_ms).encode(),
            nonce.encode(),
            hashlib.sha256(body).digest(),
        )
    )


def _parse_pairs(value: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in value.split(","):
        alg, sep, data = item.partition(":")
        if not sep or not data or alg in pairs:
            raise ValueError("bad algorithm list")
        pairs[alg] = data
    return pairs


class Signer:
    """Signs messages as one identity under one suite. Swap keys with `rotate` after renewal."""

    def __init__(self, keys: IdentityMaterial, suite: SuiteName, *, clock: Callable[[], float]) -> None:
        if suite not in SUITES:
            raise ValueError(f"unknown signature suite {suite!r}")
        self._suite = SUITES[suite]
        self._clock = clock
        self.rotate(keys)

    def rotate(self, keys: IdentityMaterial) -> None:
        """Sign with new keys from now on."""
        self.identity = keys.identity
        self._sender = keys.identity.uri
        der = keys.ed25519_cert.public_bytes(serialization.Encoding.DER)
        self.kid = hashlib.sha256(der).hexdigest()
        certs = {"ed25519": der, "mldsa65": keys.mldsa_cert.public_bytes(serialization.Encoding.DER)}
        self._cert_header = ",".join(f"{alg}:{_b64e(certs[alg])}" for alg in self._suite)
        self._keys: dict[str, ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey] = {
            "ed25519": keys.ed25519_key,
            "mldsa65": keys.mldsa_key,
        }

    def headers(self, subject: str, body: bytes) -> dict[str, str]:
        """The envelope headers for `body` sent on `subject`."""
        ts_ms = int(self._clock() * 1000)
        nonce = _b64e(os.urandom(NONCE_BYTES))
        data = signing_input(subject, self._sender, self.kid, ts_ms, nonce, body)
        sig = ",".join(f"{alg}:{_b64e(self._keys[alg].sign(data))}" for alg in self._suite)
        return {
            HDR_SENDER: self._sender,
            HDR_KID: self.kid,
            HDR_TS: str(ts_ms),
            HDR_NONCE: nonce,
            HDR_SIG: sig,
            HDR_CERT: self._cert_header,
        }


@dataclass(frozen=True)
class TrustAnchors:
    """The fabric CA certificates and the trust domain a verifier accepts."""

    trust_domain: str
    ed25519_ca: x509.Certificate
    mldsa_ca: x509.Certificate

    def ca_for(self, alg: str) -> x509.Certificate:
        return self.ed25519_ca if alg == "ed25519" else self.mldsa_ca


@dataclass(frozen=True, slots=True)
class _TrustedCert:
    identity: SpiffeId
    public_key: ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey
    not_before_ms: int
    not_after_ms: int
    kid: str  # fingerprint of this certificate


class ReplayCache:
    """Nonces seen within the skew window, per sender key. Bounded; oldest expire first.

    A message older than the window is refused for skew before it reaches the cache, so a nonce
    needs to be remembered only as long as its timestamp stays inside the window.
    """

    def __init__(self, *, window_ms: int, max_entries: int = 1_000_000) -> None:
        self._window_ms = window_ms
        self._max = max_entries
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def check_and_add(self, kid: str, nonce: str, ts_ms: int, now_ms: int) -> bool:
        """Record the nonce; False if it was seen before (a replay) or the cache is full."""
        self._expire(now_ms)
        key = (kid, nonce)
        if key in self._seen:
            return False
        if len(self._seen) >= self._max:
            return False  # refuse rather than forget a nonce that is still inside the window
        self._seen[key] = ts_ms
        return True

    def _expire(self, now_ms: int) -> None:
        horizon = now_ms - 2 * self._window_ms
        while self._seen:
            key, ts = next(iter(self._seen.items()))
            if ts >= horizon:
                break
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)


Authorizer = Callable[[SpiffeId, str], bool]


class Verifier:
    """Verifies envelopes against the fabric CA, the suite, the clock, replays and the authz table."""

    def __init__(
        self,
        anchors: TrustAnchors,
        suite: SuiteName,
        *,
        authorize: Authorizer,
        clock: Callable[[], float],
        max_skew_ms: int = 30_000,
        cache_size: int = 4096,
    ) -> None:
        if suite not in SUITES:
            raise ValueError(f"unknown signature suite {suite!r}")
        self._anchors = anchors
        self._suite = SUITES[suite]
        self._authorize = authorize
        self._clock = clock
        self._max_skew_ms = max_skew_ms
        self.replay = ReplayCache(window_ms=max_skew_ms)
        self._certs: OrderedDict[tuple[str, str], _TrustedCert] = OrderedDict()
        self._cache_size = cache_size

    def verify(
        self,
        subject: str,
        headers: Mapping[str, str] | None,
        body: bytes,
        *,
        replies: bool = False,
    ) -> SpiffeId:
        """Return the verified sender of a live message, or raise Rejected.

        With `replies=True` the message is a reply to our own request: the server only lets a
        responder publish to the reply subject of a request it received, so the role table is
        not consulted (the caller may still check who answered).
        """
        now_ms = int(self._clock() * 1000)
        sender, kid, ts_ms, nonce, sigs, certs = self._parse(headers)
        if abs(now_ms - ts_ms) > self._max_skew_ms:
            raise Rejected("skew", f"timestamp {ts_ms} is {now_ms - ts_ms} ms from now")
        identity = self._check_signatures(subject, sender, kid, ts_ms, nonce, sigs, certs, body, at_ms=now_ms)
        if not replies and not self._authorize(identity, subject):
            raise Rejected("forbidden", f"{identity} may not send {subject}")
        if not self.replay.check_and_add(kid, nonce, ts_ms, now_ms):
            raise Rejected("replay", f"nonce {nonce} from {identity} seen before")
        return identity

    def verify_record(self, subject: str, headers: Mapping[str, str], body: bytes) -> SpiffeId:
        """Verify a stored record: the certificate must have been valid when it was signed."""
        sender, kid, ts_ms, nonce, sigs, certs = self._parse(headers)
        return self._check_signatures(subject, sender, kid, ts_ms, nonce, sigs, certs, body, at_ms=ts_ms)

    def _parse(
        self, headers: Mapping[str, str] | None
    ) -> tuple[str, str, int, str, dict[str, str], dict[str, str]]:
        if not headers:
            raise Rejected("malformed", "no envelope headers")
        try:
            sender = headers[HDR_SENDER]
            kid = headers[HDR_KID]
            ts_ms = int(headers[HDR_TS])
            nonce = headers[HDR_NONCE]
            sigs = _parse_pairs(headers[HDR_SIG])
            certs = _parse_pairs(headers[HDR_CERT])
        except (KeyError, ValueError) as exc:
            raise Rejected("malformed", f"envelope headers: {exc!r}") from exc
        if not nonce or len(nonce) > 64:
            raise Rejected("malformed", "bad nonce")
        return sender, kid, ts_ms, nonce, sigs, certs

    def _check_signatures(
        self,
        subject: str,
        sender: str,
        kid: str,
        ts_ms: int,
        nonce: str,
        sigs: dict[str, str],
        certs: dict[str, str],
        body: bytes,
        *,
        at_ms: int,
    ) -> SpiffeId:
        data = signing_input(subject, sender, kid, ts_ms, nonce, body)
        identity: SpiffeId | None = None
        for alg in self._suite:
            if alg not in sigs or alg not in certs:
                raise Rejected("bad_signature", f"no {alg} signature")
            trusted = self._trusted(alg, certs[alg])
            if not trusted.not_before_ms <= at_ms <= trusted.not_after_ms:
                raise Rejected("expired", f"{trusted.identity} certificate not valid at {at_ms}")
            if trusted.identity.uri != sender:
                raise Rejected(
                    "bad_signature", f"sender {sender} is not the certificate's {trusted.identity}"
                )
            if alg == "ed25519" and trusted.kid != kid:
                raise Rejected("bad_signature", "key id does not match the certificate")
            try:
                trusted.public_key.verify(_b64d(sigs[alg]), data)
            except (InvalidSignature, ValueError, binascii.Error) as exc:
                raise Rejected("bad_signature", f"{alg} signature of {sender} does not verify") from exc
            identity = trusted.identity
        assert identity is not None  # every suite has at least one algorithm
        return identity

    def _trusted(self, alg: str, cert_b64: str) -> _TrustedCert:
        key = (alg, cert_b64)
        hit = self._certs.get(key)
        if hit is not None:
            self._certs.move_to_end(key)
            return hit
        try:
            der = _b64d(cert_b64)
            cert = x509.load_der_x509_certificate(der)
        except (ValueError, binascii.Error) as exc:
            raise Rejected("malformed", f"unparsable {alg} certificate") from exc
        try:
            cert.verify_directly_issued_by(self._anchors.ca_for(alg))
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise Rejected("untrusted", f"{alg} certificate not issued by the fabric CA") from exc
        try:
            basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            if basic.ca:
                raise Rejected("untrusted", "a CA certificate cannot sign messages")
            identity = SpiffeId.parse(spiffe_uri(cert))
        except (x509.ExtensionNotFound, ValueError) as exc:
            raise Rejected("untrusted", f"certificate without a valid fabric identity: {exc}") from exc
        if identity.trust_domain != self._anchors.trust_domain:
            raise Rejected("untrusted", f"{identity} is outside trust domain {self._anchors.trust_domain}")
        public_key = cert.public_key()
        expected = ed25519.Ed25519PublicKey if alg == "ed25519" else mldsa.MLDSA65PublicKey
        if not isinstance(public_key, expected):
            raise Rejected("untrusted", f"{alg} certificate holds a {type(public_key).__name__}")
        trusted = _TrustedCert(
            identity,
            public_key,
            int(cert.not_valid_before_utc.timestamp() * 1000),
            int(cert.not_valid_after_utc.timestamp() * 1000),
            hashlib.sha256(der).hexdigest(),
        )
        self._certs[key] = trusted
        if len(self._certs) > self._cache_size:
            self._certs.popitem(last=False)
        return trusted


def seal_record(signer: Signer, bucket: str, key: str, body: bytes) -> bytes:
    """A KV value: the body and its envelope, signed over `$KV.<bucket>.<key>`."""
    headers = signer.headers(record_subject(bucket, key), body)
    return json.dumps({"v": 1, "hdr": headers, "body": body.decode()}, separators=(",", ":")).encode()


def open_record(verifier: Verifier, bucket: str, key: str, raw: bytes) -> tuple[SpiffeId, bytes]:
    """Verify a KV value written by `seal_record`; return the writer and the body."""
    try:
        doc = json.loads(raw)
        headers = doc["hdr"]
        body = doc["body"].encode()
        if doc.get("v") != 1 or not isinstance(headers, dict):
            raise ValueError("unknown record version")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Rejected("malformed", f"record {bucket}/{key} is not a signed envelope") from exc
    writer = verifier.verify_record(record_subject(bucket, key), headers, body)
    return writer, body


def record_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"
