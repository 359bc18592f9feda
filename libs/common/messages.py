"""Typed message models shared by every service: the only place wire models are defined.

Every model forbids unknown fields, so a typo in a request is an error rather than a silent
default. Services import the models they speak; none defines its own wire types.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from libs.common.errors import ErrorCode


class Message(BaseModel):
    """Base of every wire model: strict about unknown fields, immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Empty(Message):
    """A request or reply with no fields."""


class ErrorReply(Message):
    """The body of every error reply; the same code is in `Nats-Service-Error-Code`."""

    code: ErrorCode
    message: str
    retryable: bool = False
    correlation_id: str | None = Field(
        None, description="set for internal errors; find it in the service log"
    )


class SecurityEvent(Message):
    """A rejected message or login: published on `qnf.v1.evt.<service>.security.rejected`."""

    service: str
    node: str
    reason: str
    subject: str
    claimed_sender: str | None = None
    ts_ms: int


class ServiceStarted(Message):
    """Published on `qnf.v1.evt.<service>.lifecycle.started` when a service is serving."""

    service: str
    node: str
    identity: str
    version: str


class Echo(Message):
    """Request and reply of every service's `diag.echo` endpoint: a signed round trip for probes."""

    text: str = Field("", max_length=4096)
