"""API tokens: format, generation, hashing, checking.

A token reads `qnf_<id>_<secret>`: `id` is 16 hex digits (the key in `qnf-tokens`, safe to log),
`secret` is 256 random bits in URL-safe base64. Only SHA-256 of the secret is stored: with 256
random bits there is nothing to brute-force, so a slow password hash would buy nothing. The
stored hash is compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final, Literal

from libs.common.messages import GatewayRole, TokenInfo, TokenRecord

PREFIX: Final = "qnf_"
_FORMAT: Final = re.compile(r"^qnf_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")

# Why a token was refused; a closed list, used as a metric label.
Refusal = Literal["malformed", "unknown", "mismatch", "expired", "revoked"]


@dataclass(frozen=True)
class Presented:
    """A syntactically valid token split into its parts."""

    id: str
    secret: str


def parse(text: str) -> Presented | None:
    """Split a presented token; None if it is not of the form qnf_<16 hex>_<43 base64url>."""
    m = _FORMAT.match(text)
    return Presented(m.group(1), m.group(2)) if m else None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate(
    *, name: str, role: GatewayRole, ttl_s: int, created_by: str, now_ms: int
) -> tuple[str, TokenRecord]:
    """A new token: the text to hand out once, and the record to store."""
    token_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    record = TokenRecord(
        id=token_id,
        name=name,
        role=role,
        created_ms=now_ms,
        expires_ms=now_ms + ttl_s * 1000,
        created_by=created_by,
        secret_sha256=digest(secret),
    )
    return f"{PREFIX}{token_id}_{secret}", record


def check(record: TokenRecord | None, presented: Presented, *, now_ms: int) -> Refusal | None:
    """None if `presented` is a live token matching `record`, else why it is refused.

    The hash is compared before expiry and revocation are looked at, so that only the holder of
    the secret learns that a token exists but expired.
    """
    if record is None:
        return "unknown"
    if not hmac.compare_digest(record.secret_sha256, digest(presented.secret)):
        return "mismatch"
    if record.revoked_ms is not None:
        return "revoked"
    if now_ms >= record.expires_ms:
        return "expired"
    return None


def revoke(record: TokenRecord, *, now_ms: int) -> TokenRecord:
    """The record revoked now (kept, so that lists show who had access and until when)."""
    if record.revoked_ms is not None:
        return record
    return record.model_copy(update={"revoked_ms": now_ms})


def info(record: TokenRecord, revision: int = 0) -> TokenInfo:
    """What an operator may see of a token: everything but the hash."""
    return TokenInfo.model_validate(
        {**record.model_dump(exclude={"secret_sha256"}), "revision": revision or record.revision}
    )


def is_live_admin(record: TokenRecord, *, now_ms: int) -> bool:
    return record.role == "admin" and record.revoked_ms is None and now_ms < record.expires_ms
