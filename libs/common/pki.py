"""The fabric's PKI: one CA, short-lived identity certificates, files on disk.

Invariants:
- The CA has two keys: Ed25519 (TLS and classic signatures) and ML-DSA-65 (the post-quantum half
  of the hybrid signature suite). Every identity gets one certificate per key type, both signed by
  the CA key of the same type and both carrying the same single SPIFFE URI SAN.
- Client certificates carry exactly one URI SAN and no DNS names, because nats-server's
  `verify_and_map` maps DNS names before URIs. Only the NATS server's certificate names hosts.
- Private keys are written 0600 by an atomic rename, so a reader never sees half a file.

Non-goals: revocation lists (lifetimes are short instead), intermediate CAs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from libs.common.ids import SpiffeId

CA_LIFETIME: Final = dt.timedelta(days=3650)
# A certificate is renewed once this fraction of its lifetime has passed.
RENEW_AT: Final = 2 / 3

SigningKey = ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey
PublicKey = ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey | ec.EllipticCurvePublicKey
# A server's key: Ed25519, or ECDSA P-256 for TLS stacks that do not sign with Ed25519 (gRPC's
# BoringSSL refuses Ed25519 handshake signatures; the chain may still be signed by the Ed25519 CA).
ServerKeyType = Literal["ed25519", "p256"]


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex: the key id (`Qnf-Kid`) of its holder."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def spiffe_uri(cert: x509.Certificate) -> str:
    """The one SPIFFE URI SAN of a certificate; ValueError if there is not exactly one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise ValueError("certificate has no subject alternative name") from exc
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise ValueError(f"certificate must carry exactly one SPIFFE URI, has {len(uris)}")
    return uris[0]


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: SigningKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_key(path: Path) -> SigningKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey):
        raise ValueError(f"{path}: unsupported key type {type(key).__name__}")
    return key


@dataclass(frozen=True)
class CertificateAuthority:
    """The fabric CA: both keys and both self-signed certificates."""

    trust_domain: str
    ed25519_key: ed25519.Ed25519PrivateKey
    ed25519_cert: x509.Certificate
    mldsa_key: mldsa.MLDSA65PrivateKey
    mldsa_cert: x509.Certificate

    @classmethod
    def create(cls, trust_domain: str, *, now: dt.datetime) -> CertificateAuthority:
        """Make a new CA for `trust_domain`."""
        ed_key = ed25519.Ed25519PrivateKey.generate()
        pq_key = mldsa.MLDSA65PrivateKey.generate()
        return cls(
            trust_domain,
            ed_key,
            _self_signed(trust_domain, "Ed25519", ed_key, now),
            pq_key,
            _self_signed(trust_domain, "ML-DSA-65", pq_key, now),
        )

    def issue(
        self,
        identity: SpiffeId,
        *,
        now: dt.datetime,
        lifetime: dt.timedelta,
    ) -> IdentityMaterial:
        """Issue a fresh identity: one Ed25519 and one ML-DSA-65 certificate with the same URI."""
        if identity.trust_domain != self.trust_domain:
            raise ValueError(f"{identity} is not in trust domain {self.trust_domain}")
        ed_key = ed25519.Ed25519PrivateKey.generate()
        pq_key = mldsa.MLDSA65PrivateKey.generate()
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)])
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        ed_cert = _leaf(self.ed25519_cert, self.ed25519_key, ed_key.public_key(), san, usages, now, lifetime)
        pq_cert = _leaf(self.mldsa_cert, self.mldsa_key, pq_key.public_key(), san, usages, now, lifetime)
        return IdentityMaterial(identity, ed_key, ed_cert, pq_key, pq_cert)

    def issue_server(
        self,
        hosts: list[str],
        *,
        now: dt.datetime,
        lifetime: dt.timedelta,
        key_type: ServerKeyType = "ed25519",
    ) -> tuple[ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey, x509.Certificate]:
        """Issue a server's TLS certificate for the given host names and addresses."""
        key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if key_type == "p256"
            else ed25519.Ed25519PrivateKey.generate()
        )
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = _leaf(
            self.ed25519_cert,
            self.ed25519_key,
            key.public_key(),
            x509.SubjectAlternativeName(names),
            [ExtendedKeyUsageOID.SERVER_AUTH],
            now,
            lifetime,
        )
        return key, cert


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qnf"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _self_signed(trust_domain: str, alg: str, key: SigningKey, now: dt.datetime) -> x509.Certificate:
    name = _name(f"qnf CA {trust_domain} {alg}")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: SigningKey,
    public_key: PublicKey,
    san: x509.SubjectAlternativeName,
    usages: list[x509.ObjectIdentifier],
    now: dt.datetime,
    lifetime: dt.timedelta,
) -> x509.Certificate:
    # Back-date a little so that a peer whose clock is slightly behind still accepts it.
    return (
        x509.CertificateBuilder()
        .subject_name(_name("qnf identity"))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + lifetime)
        .add_extension(san, critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, None)
    )


@dataclass(frozen=True)
class IdentityMaterial:
    """An identity's keys and certificates, as held by the process that is that identity."""

    identity: SpiffeId
    ed25519_key: ed25519.Ed25519PrivateKey
    ed25519_cert: x509.Certificate
    mldsa_key: mldsa.MLDSA65PrivateKey
    mldsa_cert: x509.Certificate

    @property
    def kid(self) -> str:
        return fingerprint(self.ed25519_cert)

    @property
    def not_after(self) -> dt.datetime:
        return min(self.ed25519_cert.not_valid_after_utc, self.mldsa_cert.not_valid_after_utc)

    def needs_renewal(self, now: dt.datetime) -> bool:
        """True once RENEW_AT of the certificate's lifetime has passed."""
        start = self.ed25519_cert.not_valid_before_utc
        return now >= start + (self.not_after - start) * RENEW_AT


class PkiDirectory:
    """The on-disk layout of the PKI under one directory.

    ca.crt ca.key ca-mldsa.crt ca-mldsa.key      the CA (keys only where certificates are made)
    server.crt server.key                        the NATS server's TLS certificate
    ids/<slug>/tls.crt tls.key mldsa.crt mldsa.key   one folder per identity
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def ca_cert_path(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_mldsa_cert_path(self) -> Path:
        return self.root / "ca-mldsa.crt"

    @property
    def server_cert_path(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key_path(self) -> Path:
        return self.root / "server.key"

    def identity_dir(self, identity: SpiffeId) -> Path:
        return self.root / "ids" / identity.slug

    def has_ca(self) -> bool:
        return (self.root / "ca.key").exists()

    def save_ca(self, ca: CertificateAuthority) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.root / "ca.key", _key_pem(ca.ed25519_key))
        _write_private(self.root / "ca-mldsa.key", _key_pem(ca.mldsa_key))
        _write_public(self.ca_cert_path, _cert_pem(ca.ed25519_cert))
        _write_public(self.ca_mldsa_cert_path, _cert_pem(ca.mldsa_cert))

    def load_ca(self, trust_domain: str) -> CertificateAuthority:
        ed_key = _load_key(self.root / "ca.key")
        pq_key = _load_key(self.root / "ca-mldsa.key")
        assert isinstance(ed_key, ed25519.Ed25519PrivateKey) and isinstance(pq_key, mldsa.MLDSA65PrivateKey)
        return CertificateAuthority(
            trust_domain,
            ed_key,
            x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes()),
            pq_key,
            x509.load_pem_x509_certificate(self.ca_mldsa_cert_path.read_bytes()),
        )

    def ensure_ca(self, trust_domain: str, *, now: dt.datetime) -> CertificateAuthority:
        """Load the CA, creating it on first run."""
        if self.has_ca():
            return self.load_ca(trust_domain)
        ca = CertificateAuthority.create(trust_domain, now=now)
        self.save_ca(ca)
        return ca

    def save_identity(self, material: IdentityMaterial) -> None:
        d = self.identity_dir(material.identity)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Keys before certificates: a reader that sees a new certificate finds its key already there.
        _write_private(d / "tls.key", _key_pem(material.ed25519_key))
        _write_private(d / "mldsa.key", _key_pem(material.mldsa_key))
        _write_public(d / "tls.crt", _cert_pem(material.ed25519_cert))
        _write_public(d / "mldsa.crt", _cert_pem(material.mldsa_cert))

    def load_identity(self, identity: SpiffeId) -> IdentityMaterial:
        """Load an identity's material; ValueError if files are missing or do not belong together."""
        d = self.identity_dir(identity)
        try:
            ed_key = _load_key(d / "tls.key")
            pq_key = _load_key(d / "mldsa.key")
            ed_cert = x509.load_pem_x509_certificate((d / "tls.crt").read_bytes())
            pq_cert = x509.load_pem_x509_certificate((d / "mldsa.crt").read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read identity {identity} from {d}: {exc.strerror}") from exc
        if not isinstance(ed_key, ed25519.Ed25519PrivateKey) or not isinstance(
            pq_key, mldsa.MLDSA65PrivateKey
        ):
            raise ValueError(f"identity {identity}: wrong key types in {d}")
        for cert in (ed_cert, pq_cert):
            if spiffe_uri(cert) != identity.uri:
                raise ValueError(f"identity {identity}: certificate in {d} names {spiffe_uri(cert)}")
        if ed_cert.public_key() != ed_key.public_key() or pq_cert.public_key() != pq_key.public_key():
            raise ValueError(f"identity {identity}: key and certificate in {d} do not match")
        return IdentityMaterial(identity, ed_key, ed_cert, pq_key, pq_cert)

    def ensure_identity(
        self, ca: CertificateAuthority, identity: SpiffeId, *, now: dt.datetime, lifetime: dt.timedelta
    ) -> tuple[IdentityMaterial, bool]:
        """Load an identity, issuing it when missing, broken or due for renewal; True if (re)issued."""
        try:
            material = self.load_identity(identity)
            if not material.needs_renewal(now) and _issued_by(material, ca):
                return material, False
        except ValueError:
            pass
        material = ca.issue(identity, now=now, lifetime=lifetime)
        self.save_identity(material)
        return material, True

    def ensure_server(
        self,
        ca: CertificateAuthority,
        hosts: list[str],
        *,
        now: dt.datetime,
        lifetime: dt.timedelta,
        name: str = "server",
        key_type: ServerKeyType = "ed25519",
    ) -> bool:
        """Issue a server certificate (`<name>.crt`, `<name>.key`; default the NATS server's) when
        missing, due for renewal, not naming every host or of another key type; True if (re)issued."""
        cert_path, key_path = self.root / f"{name}.crt", self.root / f"{name}.key"
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            start = cert.not_valid_before_utc
            same_type = isinstance(cert.public_key(), ec.EllipticCurvePublicKey) == (key_type == "p256")
            fresh = now < start + (cert.not_valid_after_utc - start) * RENEW_AT
            if fresh and same_type and _names_all(cert, hosts):
                return False
        key, cert = ca.issue_server(hosts, now=now, lifetime=lifetime, key_type=key_type)
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, _cert_pem(cert))
        return True


def _names_all(cert: x509.Certificate, hosts: list[str]) -> bool:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    names |= set(san.get_values_for_type(x509.DNSName))
    return all(str(ipaddress.ip_address(h)) in names if _is_ip(h) else h in names for h in hosts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _issued_by(material: IdentityMaterial, ca: CertificateAuthority) -> bool:
    try:
        material.ed25519_cert.verify_directly_issued_by(ca.ed25519_cert)
        material.mldsa_cert.verify_directly_issued_by(ca.mldsa_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
