"""Identities and subjects: the names the whole fabric agrees on.

A workload of the fabric is named by a SPIFFE ID, one per certificate:

    spiffe://<trust-domain>/service/<service>          a cluster-wide service replica
    spiffe://<trust-domain>/node/<node>/<service>      a node-local agent (or the CNI shim: service "cni")
    spiffe://<trust-domain>/user/<name>                an operator (NATS CLI, tools)

Subjects follow DESIGN §3; `v1` is the wire version and every token is lower case.
This module is pure: parsing and formatting only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final, Literal

WIRE_VERSION: Final = "v1"
SUBJECT_ROOT: Final = f"qnf.{WIRE_VERSION}"
EVENTS_STREAM: Final = "QNF_EVENTS"
EVENTS_SUBJECTS: Final = f"{SUBJECT_ROOT}.evt.>"

# Services of the fabric; each one is a process (or a set of replicas) with a role of that name.
SERVICES: Final = ("vnet", "firewall", "dns", "nat", "gateway")

# KV buckets and the one role that may write each (DESIGN §4).
BUCKET_OWNERS: Final[dict[str, str]] = {
    "qnf-networks": "vnet",
    "qnf-endpoints": "vnet",
    "qnf-ipam": "vnet",
    "qnf-policies": "firewall",
    "qnf-services": "dns",
    "qnf-nodes": "vnet",
    "qnf-tokens": "gateway",
    "qnf-ports": "nat",
}

_TOKEN = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")

Kind = Literal["service", "node", "user"]


def check_token(value: str, what: str) -> str:
    """Return `value` if it is a valid lower-case subject token (node, service, user names)."""
    if not _TOKEN.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-63 of [a-z0-9_-], starting and ending alphanumeric"
        )
    return value


def check_trust_domain(value: str) -> str:
    """Return `value` if it is a valid SPIFFE trust domain."""
    if not _TRUST_DOMAIN.match(value):
        raise ValueError(f"invalid trust domain {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed SPIFFE ID of the fabric."""

    trust_domain: str
    kind: Kind
    name: str  # service name, or user name
    node: str | None = None  # only for kind "node"

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        check_token(self.name, "name")
        if (self.kind == "node") != (self.node is not None):
            raise ValueError("a node identity, and only it, names a node")
        if self.node is not None:
            check_token(self.node, "node")

    @classmethod
    def service(cls, trust_domain: str, service: str) -> SpiffeId:
        return cls(trust_domain, "service", service)

    @classmethod
    def node_agent(cls, trust_domain: str, node: str, service: str) -> SpiffeId:
        return cls(trust_domain, "node", service, node)

    @classmethod
    def user(cls, trust_domain: str, name: str) -> SpiffeId:
        return cls(trust_domain, "user", name)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse `spiffe://td/...`; raise ValueError for anything that is not a fabric identity."""
        prefix = "spiffe://"
        if not uri.startswith(prefix):
            raise ValueError(f"not a SPIFFE ID: {uri!r}")
        td, _, path = uri[len(prefix) :].partition("/")
        parts = path.split("/")
        match parts:
            case ["service", name]:
                return cls(td, "service", name)
            case ["node", node, name]:
                return cls(td, "node", name, node)
            case ["user", name]:
                return cls(td, "user", name)
        raise ValueError(f"not a qnf identity: {uri!r}")

    @property
    def uri(self) -> str:
        if self.kind == "node":
            return f"spiffe://{self.trust_domain}/node/{self.node}/{self.name}"
        return f"spiffe://{self.trust_domain}/{self.kind}/{self.name}"

    @property
    def slug(self) -> str:
        """A filesystem- and subject-safe name, unique within the trust domain."""
        if self.kind == "node":
            return f"node-{self.node}-{self.name}"
        return f"{self.kind}-{self.name}"

    def __str__(self) -> str:
        return self.uri


def cmd_subject(service: str, verb: str) -> str:
    """Cluster command subject, served by a queue group of `service`."""
    return f"{SUBJECT_ROOT}.cmd.{service}.{verb}"


def node_subject(node: str, service: str, verb: str) -> str:
    """Node-local command subject, served by the agent of `service` on `node`."""
    return f"{SUBJECT_ROOT}.node.{node}.{service}.{verb}"


def event_subject(service: str, what: str) -> str:
    """Event subject, retained in the QNF_EVENTS stream."""
    return f"{SUBJECT_ROOT}.evt.{service}.{what}"


def inbox_prefix(identity: SpiffeId) -> str:
    """The reply-inbox prefix of an identity; the server lets only that identity subscribe to it."""
    return f"_INBOX_{identity.slug}"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: `*` is one token, a trailing `>` one or more."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, p in enumerate(p_tokens):
        if p == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens) or (p != "*" and p != s_tokens[i]):
            return False
    return len(p_tokens) == len(s_tokens)


def endpoint_id(container_id: str, ifname: str) -> str:
    """The id of a container interface: stable across retries, unique per (container, ifname)."""
    return hashlib.sha256("\x00".join(("endpoint", container_id, ifname)).encode()).hexdigest()[:24]
