"""Who may send what: one table, enforced twice.

nats-server enforces it per connection (generated `permissions` per mapped certificate, see
`natsconf`), and every receiving service enforces it again per message (`may_publish`), so a
misconfigured server or a stolen connection still cannot command a service outside its role.

Patterns may contain `{node}`, replaced by the node of a node-scoped identity. An identity of
kind "service" (a cluster replica) has no node and gets no pattern that needs one.

Replies are not listed: a responder may publish only to the reply subject of a request it
received (nats-server `allow_responses`), and each identity may subscribe only to its own inbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from libs.common.ids import BUCKET_OWNERS, EVENTS_STREAM, SpiffeId, inbox_prefix, subject_matches

# What each role may publish (send), besides replies and the JetStream reads every role has.
ROLE_PUBLISH: Final[dict[str, tuple[str, ...]]] = {
    "vnet": (
        "qnf.v1.evt.vnet.>",
        "qnf.v1.node.*.vnet.>",  # a forced network delete detaches endpoints on every node
        "$SRV.PING.qnf-vnet",  # which replicas are alive: their leases are not orphans
        "qnf.v1.node.{node}.firewall.>",
        "qnf.v1.node.{node}.dns.>",
        "qnf.v1.node.{node}.nat.>",
    ),
    # policy.wait asks every node's agent whether it enforces a revision.
    "firewall": ("qnf.v1.evt.firewall.>", "qnf.v1.node.*.firewall.policy.enforced"),
    "dns": ("qnf.v1.evt.dns.>", "qnf.v1.cmd.firewall.policy.reachable"),  # policy-scoped answers
    "nat": ("qnf.v1.evt.nat.>",),
    "gateway": ("qnf.v1.cmd.>", "qnf.v1.node.*.>", "qnf.v1.evt.gateway.>"),
    # The CNI shim and the Docker driver talk only to their own node's agents (and vnet's networks).
    "cni": ("qnf.v1.node.{node}.vnet.>",),
    "docker": ("qnf.v1.node.{node}.vnet.>", "qnf.v1.cmd.vnet.>", "qnf.v1.node.{node}.nat.>"),
    "admin": (">",),
    "viewer": (),
}

# What each role may subscribe to, besides its inbox and the micro-service protocol.
ROLE_SUBSCRIBE: Final[dict[str, tuple[str, ...]]] = {
    "vnet": ("qnf.v1.cmd.vnet.>", "qnf.v1.node.{node}.vnet.>"),
    "firewall": ("qnf.v1.cmd.firewall.>", "qnf.v1.node.{node}.firewall.>"),
    "dns": ("qnf.v1.cmd.dns.>", "qnf.v1.node.{node}.dns.>"),
    "nat": ("qnf.v1.cmd.nat.>", "qnf.v1.node.{node}.nat.>"),
    "gateway": ("qnf.v1.cmd.gateway.>", "qnf.v1.evt.>"),
    "cni": (),
    "docker": (),
    "admin": (">",),
    "viewer": ("qnf.v1.evt.>",),
}

# Operators (kind "user") get a role by name; unknown users get none.
USER_ROLES: Final[dict[str, str]] = {"admin": "admin", "viewer": "viewer"}


def _stream_reads(stream: str) -> list[str]:
    """JetStream API subjects to read one stream: info, direct get, consumers (KV watch, events)."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
    ]


# JetStream reads every service needs: KV get and watch on every bucket, acks and flow control.
_JS_READ: Final = tuple(
    ["$JS.API.INFO", "$JS.ACK.>", "$JS.FC.>"]
    + [s for bucket in sorted(BUCKET_OWNERS) for s in _stream_reads(f"KV_{bucket}")]
)
_JS_EVENTS_READ: Final = tuple(_stream_reads(EVENTS_STREAM))


def role_of(identity: SpiffeId) -> str | None:
    """The role an identity acts in, or None if it has none."""
    if identity.kind == "user":
        return USER_ROLES.get(identity.name)
    return identity.name if identity.name in ROLE_PUBLISH else None


def _expand(patterns: tuple[str, ...], identity: SpiffeId) -> list[str]:
    out = []
    for p in patterns:
        if "{node}" in p:
            if identity.node is None:
                continue
            p = p.replace("{node}", identity.node)
        out.append(p)
    return out


def may_publish(identity: SpiffeId, subject: str) -> bool:
    """True if `identity`'s role lets it send on `subject`; the receiving side's check."""
    role = role_of(identity)
    if role is None:
        return False
    return any(subject_matches(p, subject) for p in _expand(ROLE_PUBLISH[role], identity))


def may_write_bucket(identity: SpiffeId, bucket: str) -> bool:
    """True if `identity` owns `bucket` (the only writer whose records readers accept)."""
    role = role_of(identity)
    return role == "admin" or (role is not None and BUCKET_OWNERS.get(bucket) == role)


@dataclass(frozen=True)
class Permissions:
    """nats-server permissions of one identity."""

    publish: list[str]
    subscribe: list[str]


def server_permissions(identity: SpiffeId) -> Permissions:
    """The publish/subscribe allow lists nats-server enforces for `identity`."""
    role = role_of(identity)
    if role is None:
        return Permissions(publish=[], subscribe=[])
    if role == "admin":
        return Permissions(publish=[">"], subscribe=[">"])
    publish = _expand(ROLE_PUBLISH[role], identity)
    publish += list(_JS_READ)
    publish += [f"$KV.{bucket}.>" for bucket, owner in sorted(BUCKET_OWNERS.items()) if owner == role]
    subscribe = _expand(ROLE_SUBSCRIBE[role], identity)
    subscribe += [f"{inbox_prefix(identity)}.>", "$SRV.>"]
    if role in ("gateway", "viewer"):
        publish += list(_JS_EVENTS_READ)
    if role == "viewer":
        publish.append("$SRV.>")  # `nats micro ls|info|stats`
    return Permissions(publish=publish, subscribe=subscribe)
