"""The policy model: which flows each endpoint may send and receive, as a flat list of grants.

This is the single source of truth for both the nftables compiler and `explain`, so what the
kernel enforces and what an operator is told can never disagree.

Semantics (DESIGN §5, Kubernetes NetworkPolicy where it speaks):
- A normal-tier policy selects endpoints of its own network. Its types are `policyTypes`, or
  Ingress plus Egress when it has egress rules (Kubernetes' default).
- Zero trust is per direction: in a zero-trust network an endpoint's ingress and egress are each
  denied unless a grant allows them. In a default-allow network a direction is open until some
  policy selecting the endpoint has that type (Kubernetes, exactly).
- Allow rules union. An empty peer list is every peer: in a zero-trust network that means the
  own network and the world outside the fabric, never another fabric network (those must be
  named); in a default-allow network, everything. An empty port list is every protocol and port.
- endpointSelector alone: endpoints of the policy's network. networkSelector alone: every address
  of the matching networks. Both in one peer: AND. Two peers: OR.
- Admin tier: ordered by priority, then rule order; Allow and Deny decide, Pass falls through to
  the normal tier.

Pure: no I/O; endpoints, networks and policies come in as values.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, collapse_addresses, ip_network
from typing import Final, Literal

from libs.common.messages import Endpoint, LabelSelector, Network, Peer, Policy, PolicyPort, PolicyRule
from libs.common.selectors import matches, network_labels

Address = IPv4Address | IPv6Address
Net = IPv4Network | IPv6Network
Direction = Literal["ingress", "egress"]

PROTOCOLS: Final = {"TCP": 6, "UDP": 17, "SCTP": 132}
ICMP4: Final = 1
ICMP6: Final = 58
ALL_PORTS: Final = (0, 65535)
WORLD: Final[tuple[Net, ...]] = (ip_network("0.0.0.0/0"), ip_network("::/0"))


@dataclass(frozen=True, order=True)
class Grant:
    """Members of `group` may exchange `proto`/`ports` traffic with addresses in `peer`.

    A normal-tier `group` is an identity group: the local endpoints that share network, labels
    and named ports, and so every policy decision. An admin-tier grant's `group` is its rule's
    key (`policy/rule`); `Model.admin_subjects` says which local addresses that rule applies to.
    proto None: every protocol (ports None). ports None with a proto: every port (or ICMP).
    """

    direction: Direction
    group: str
    peer: Net
    proto: int | None
    ports: tuple[int, int] | None
    policy: str
    rule: str
    tier: Literal["admin", "normal"] = "normal"
    action: Literal["Allow", "Deny", "Pass"] = "Allow"
    order: tuple[int, str, int] = (0, "", 0)


@dataclass(frozen=True, order=True)
class AdminRule:
    """One rule of an admin-tier policy: its datapath slot exists whether or not it selects anyone."""

    order: tuple[int, str, int]
    direction: Direction
    policy: str
    rule: str
    action: Literal["Allow", "Deny", "Pass"]

    @property
    def key(self) -> str:
        return f"{self.policy}/{self.rule}"


@dataclass(frozen=True)
class Model:
    """Everything the compiler and explain need for one node."""

    grants: tuple[Grant, ...]
    admin_rules: tuple[AdminRule, ...]
    open_ingress: frozenset[Address]  # local addresses whose ingress is not isolated
    open_egress: frozenset[Address]
    local: frozenset[Address]  # addresses of endpoints on this node
    gateways: frozenset[Address]  # the fabric resolvers (DNS always passes)
    groups: dict[str, frozenset[Address]] = field(default_factory=dict)  # identity group -> members
    group_of: dict[Address, str] = field(default_factory=dict)
    admin_subjects: dict[str, frozenset[Address]] = field(default_factory=dict)  # admin rule key -> members
    by_address: dict[Address, Endpoint] = field(default_factory=dict)

    def grants_of(self, local: Address, direction: Direction) -> list[Grant]:
        """The grants that decide `direction` for `local`, admin tier (in order) first."""
        group = self.group_of.get(local)
        admin = [
            g
            for g in self.grants
            if g.tier == "admin"
            and g.direction == direction
            and local in self.admin_subjects.get(g.group, frozenset())
        ]
        normal = [
            g for g in self.grants if g.tier == "normal" and g.direction == direction and g.group == group
        ]
        return admin + normal


def group_id(endpoint: Endpoint) -> str:
    """Endpoints with the same network, labels and named ports get every policy decision alike."""
    return _group_id(
        endpoint.network,
        tuple(sorted(endpoint.labels.items())),
        tuple(sorted((k, v.port, v.protocol) for k, v in endpoint.named_ports.items())),
    )


@functools.lru_cache(maxsize=65536)
def _group_id(
    network: str, labels: tuple[tuple[str, str], ...], ports: tuple[tuple[str, int, str], ...]
) -> str:
    key = json.dumps([network, labels, ports])
    return "g" + hashlib.sha256(key.encode()).hexdigest()[:10]


def policy_types(policy: Policy) -> set[str]:
    if policy.policy_types is not None:
        return set(policy.policy_types)
    return {"Ingress", "Egress"} if policy.egress else {"Ingress"}


def _addresses(endpoint: Endpoint) -> list[Address]:
    return [a.ip for a in endpoint.addresses]


def _host(address: Address) -> Net:
    return ip_network(address)


def _subnets(network: Network) -> list[Net]:
    out: list[Net] = [network.subnet]
    if network.subnet6 is not None:
        out.append(network.subnet6)
    return out


def _outside(networks: Iterable[Network], keep: Network | None) -> list[Net]:
    """The world minus every fabric subnet except `keep`'s (the zero-trust meaning of 'anyone')."""
    fabric = [s for n in networks if keep is None or n.name != keep.name for s in _subnets(n)]
    out: list[Net] = []
    for world in WORLD:
        parts: list[Net] = [world]
        for sub in (s for s in fabric if s.version == world.version):
            parts = _exclude(parts, sub)
        out.extend(collapse_addresses(parts))  # type: ignore[type-var]
    if keep is not None:
        out.extend(_subnets(keep))
    return out


def _exclude(parts: list[Net], hole: Net) -> list[Net]:
    """`parts` minus `hole` (all of one IP version), as a list of networks."""
    out: list[Net] = []
    for part in parts:
        if part.version != hole.version:
            out.append(part)
        elif hole.subnet_of(part):  # type: ignore[arg-type]
            out.extend(part.address_exclude(hole))  # type: ignore[arg-type]
        elif not part.subnet_of(hole):  # type: ignore[arg-type]
            out.append(part)
    return out


class _World:
    """Lookups over one snapshot of networks and endpoints."""

    def __init__(
        self,
        networks: Sequence[Network],
        endpoints: Sequence[Endpoint],
        by_group: dict[str, list[Endpoint]] | None = None,
    ) -> None:
        self.networks = {n.name: n for n in networks}
        self.endpoints = list(endpoints)
        self.net_labels = {n.name: network_labels(n.name, n.labels) for n in networks}
        # Selectors are judged once per identity group (same network and labels), not once per
        # endpoint: ten thousand endpoints of fifty label sets cost fifty matches per selector.
        # An incremental caller that keeps the grouping up to date passes it in.
        if by_group is None:
            by_group = {}
            for e in self.endpoints:
                by_group.setdefault(group_id(e), []).append(e)
        self.by_group = by_group
        # A rule's peers depend on the rule and its home network only, not on the endpoint it is
        # compiled for: resolve each once, or building costs endpoints x peers per rule.
        self._peers: dict[tuple[int, str | None], list[Net]] = {}
        self._named: dict[tuple[int, str | None], list[Endpoint]] = {}

    def cached_peers(self, rule: PolicyRule, home: Network | None) -> list[Net]:
        key = (id(rule), home.name if home else None)
        if key not in self._peers:
            self._peers[key] = self.rule_peers(rule, home)
        return self._peers[key]

    def cached_named(self, rule: PolicyRule, home: Network | None) -> list[Endpoint]:
        key = (id(rule), home.name if home else None)
        if key not in self._named:
            self._named[key] = self.named_port_endpoints(rule, home)
        return self._named[key]

    def networks_matching(self, selector: LabelSelector) -> list[Network]:
        return [n for n in self.networks.values() if matches(selector, self.net_labels[n.name])]

    def peer_nets(self, peer: Peer, home: Network | None) -> list[Net]:
        """Addresses a peer stands for (hosts for selected endpoints, whole subnets for networks)."""
        if peer.ip_block is not None:
            parts: list[Net] = [peer.ip_block.cidr]
            for ex in peer.ip_block.except_:
                parts = _exclude(parts, ex)
            return parts
        if peer.identity is not None:
            return [
                _host(a)
                for e in self.endpoints
                if fnmatch.fnmatchcase(e.identity, peer.identity)
                for a in _addresses(e)
            ]
        if peer.network_selector is not None:
            nets = self.networks_matching(peer.network_selector)
            if peer.endpoint_selector is None:
                return [s for n in nets for s in _subnets(n)]
            names = {n.name for n in nets}
            return [
                _host(a) for e in self.peer_endpoints(peer.endpoint_selector, names) for a in _addresses(e)
            ]
        assert peer.endpoint_selector is not None
        scope = {home.name} if home is not None else set(self.networks)
        return [_host(a) for e in self.peer_endpoints(peer.endpoint_selector, scope) for a in _addresses(e)]

    def peer_endpoints(self, selector: LabelSelector, networks: set[str]) -> list[Endpoint]:
        return [
            e
            for members in self.by_group.values()
            if members[0].network in networks and matches(selector, members[0].labels)
            for e in members
        ]

    def rule_peers(self, rule: PolicyRule, home: Network | None) -> list[Net]:
        if not rule.peers:
            if home is not None and home.isolation == "zero-trust":
                return _outside(self.networks.values(), home)
            return list(WORLD)
        return [net for peer in rule.peers for net in self.peer_nets(peer, home)]

    def named_port_endpoints(self, rule: PolicyRule, home: Network | None) -> list[Endpoint]:
        """Endpoints among a rule's peers (where an egress named port can be resolved)."""
        if not rule.peers:
            return [
                e
                for e in self.endpoints
                if home is None or e.network == home.name or home.isolation == "default-allow"
            ]
        out: list[Endpoint] = []
        for peer in rule.peers:
            if peer.ip_block is not None:
                continue
            if peer.identity is not None:
                out += [e for e in self.endpoints if fnmatch.fnmatchcase(e.identity, peer.identity)]
                continue
            names = (
                {n.name for n in self.networks_matching(peer.network_selector)}
                if peer.network_selector is not None
                else ({home.name} if home else set(self.networks))
            )
            out += self.peer_endpoints(peer.endpoint_selector or LabelSelector(), names)
        return out


def _port_specs(port: PolicyPort, named_owner: Endpoint | None) -> list[tuple[int, tuple[int, int] | None]]:
    """(proto, port range) pairs for one port entry; a named port resolves against `named_owner`."""
    if port.protocol == "ICMP":
        return [(ICMP4, None)]
    proto = PROTOCOLS[port.protocol]
    if port.port is None:
        return [(proto, ALL_PORTS)]
    if isinstance(port.port, str):
        if named_owner is None:
            return []
        named = named_owner.named_ports.get(port.port)
        if named is None or named.protocol != port.protocol:
            return []
        return [(proto, (named.port, named.port))]
    return [(proto, (port.port, port.end_port or port.port))]


def _icmp_for(proto: int, peer: Net) -> int:
    return ICMP6 if proto == ICMP4 and peer.version == 6 else proto


def _grants_for_rule(
    world: _World,
    policy: Policy,
    rule: PolicyRule,
    where: str,
    direction: Direction,
    selected: Endpoint | None,
    group: str,
    home: Network | None,
    tier: Literal["admin", "normal"],
    order: tuple[int, str, int],
) -> list[Grant]:
    """The grants of one rule for one group (`selected` is a member, for ingress named ports)."""
    out: list[Grant] = []
    peers = world.cached_peers(rule, home)

    def add(peer: Net, proto: int | None, ports: tuple[int, int] | None) -> None:
        out.append(
            Grant(
                direction,
                group,
                peer,
                None if proto is None else _icmp_for(proto, peer),
                ports,
                policy.name,
                where,
                tier,
                rule.action,
                order,
            )
        )

    if not rule.ports:
        for peer in peers:
            add(peer, None, None)
        return out
    for port in rule.ports:
        if isinstance(port.port, str) and direction == "egress":
            # The name is the destination's: resolve it per peer endpoint.
            for peer_ep in world.cached_named(rule, home):
                for proto, rng in _port_specs(port, peer_ep):
                    for addr in _addresses(peer_ep):
                        if any(addr in p for p in peers):
                            add(_host(addr), proto, rng)
            continue
        for proto, rng in _port_specs(port, selected):
            for peer in peers:
                add(peer, proto, rng)
    return out


def build(
    networks: Sequence[Network],
    endpoints: Sequence[Endpoint],
    policies: Sequence[Policy],
    *,
    node: str | None = None,
) -> Model:
    """The grants and open directions of every endpoint on `node` (None: every endpoint).

    Work is per identity group, not per endpoint: ten thousand endpoints of a few label sets
    cost a few groups' worth of grants.
    """
    world = _World(networks, endpoints)
    local_eps = [e for e in endpoints if (node is None or e.node == node) and e.network in world.networks]
    members: dict[str, list[Endpoint]] = {}
    for ep in local_eps:
        members.setdefault(group_id(ep), []).append(ep)
    grants: list[Grant] = []
    open_in: set[Address] = set()
    open_eg: set[Address] = set()
    normal = [p for p in policies if p.tier == "normal"]
    admin = sorted((p for p in policies if p.tier == "admin"), key=lambda p: (p.priority, p.name))
    for gid, eps in members.items():
        group_grants, opened = grants_of_group(world, gid, eps[0], normal)
        grants += group_grants
        for direction, into in (("ingress", open_in), ("egress", open_eg)):
            if direction in opened:
                into.update(a for e in eps for a in _addresses(e))
    admin_rules: list[AdminRule] = []
    subjects: dict[str, frozenset[Address]] = {}
    for p in admin:
        chosen = frozenset(a for e in local_eps if admin_selects(world, p, e) for a in _addresses(e))
        for admin_rule, rule_grants in admin_grants(world, p):
            admin_rules.append(admin_rule)
            subjects[admin_rule.key] = chosen
            grants += rule_grants
    gateways = {n.gateway for n in networks} | {n.gateway6 for n in networks if n.gateway6 is not None}
    return Model(
        grants=tuple(sorted(set(grants), key=_grant_key)),
        admin_rules=tuple(sorted(admin_rules)),
        open_ingress=frozenset(open_in),
        open_egress=frozenset(open_eg),
        local=frozenset(a for e in local_eps for a in _addresses(e)),
        gateways=frozenset(gateways),
        groups={
            gid: frozenset(a for e in eps for a in _addresses(e)) for gid, eps in sorted(members.items())
        },
        group_of={a: gid for gid, eps in members.items() for e in eps for a in _addresses(e)},
        admin_subjects=subjects,
        by_address={a: e for e in endpoints for a in _addresses(e)},
    )


def grants_of_group(
    world: _World, gid: str, rep: Endpoint, normal: Sequence[Policy]
) -> tuple[list[Grant], set[str]]:
    """The normal-tier grants of one identity group (`rep` is a member), and which of its
    directions are open (not isolated)."""
    grants: list[Grant] = []
    opened: set[str] = set()
    net = world.networks[rep.network]
    selecting = [p for p in normal if p.network == rep.network and matches(p.endpoint_selector, rep.labels)]
    for direction, type_name in (("ingress", "Ingress"), ("egress", "Egress")):
        relevant = [p for p in selecting if type_name in policy_types(p)]
        if net.isolation == "default-allow" and not relevant:
            opened.add(direction)
        for p in relevant:
            for i, rule in enumerate(getattr(p, direction)):
                grants += _grants_for_rule(
                    world,
                    p,
                    rule,
                    f"{direction}[{i}]",
                    direction,  # type: ignore[arg-type]
                    rep,
                    gid,
                    net,
                    "normal",
                    (0, "", 0),
                )
    return grants, opened


def admin_selects(world: _World, policy: Policy, endpoint: Endpoint) -> bool:
    """Whether an admin-tier policy applies to `endpoint` (its subjects)."""
    if policy.network_selector is not None:
        if not matches(policy.network_selector, world.net_labels.get(endpoint.network, {})):
            return False
    elif endpoint.network not in world.networks:
        return False
    return matches(policy.endpoint_selector, endpoint.labels)


def admin_grants(world: _World, policy: Policy) -> list[tuple[AdminRule, list[Grant]]]:
    """Each rule of an admin-tier policy with its grants."""
    out = []
    for direction in ("ingress", "egress"):
        for i, rule in enumerate(getattr(policy, direction)):
            admin_rule = AdminRule(
                (policy.priority, policy.name, i),
                direction,
                policy.name,
                f"{direction}[{i}]",
                rule.action,
            )
            grants = _grants_for_rule(
                world,
                policy,
                rule,
                admin_rule.rule,
                direction,
                None,
                admin_rule.key,
                None,
                "admin",
                admin_rule.order,
            )
            out.append((admin_rule, grants))
    return out


def rule_involves(world: _World, rule: PolicyRule, home: Network | None, endpoint: Endpoint) -> bool:
    """Whether `endpoint` can be among the peers a rule resolves to (a superset is fine: it only
    costs recomputing a group whose grants come out the same)."""
    if any(isinstance(port.port, str) for port in rule.ports):
        return True  # named ports resolve against peer endpoints, even with no peers named
    for peer in rule.peers:
        if peer.ip_block is not None:
            continue
        if peer.identity is not None:
            if fnmatch.fnmatchcase(endpoint.identity, peer.identity):
                return True
            continue
        if peer.endpoint_selector is None:
            continue  # a network selector alone stands for whole subnets
        if peer.network_selector is not None:
            labels = world.net_labels.get(endpoint.network)
            in_scope = labels is not None and matches(peer.network_selector, labels)
        else:
            in_scope = (
                endpoint.network == home.name if home is not None else endpoint.network in world.networks
            )
        if in_scope and matches(peer.endpoint_selector, endpoint.labels):
            return True
    return False


def _grant_key(g: Grant) -> tuple[object, ...]:
    return (
        g.tier != "admin",
        g.order,
        g.direction,
        g.group,
        g.peer.version,
        int(g.peer.network_address),
        g.peer.prefixlen,
        g.proto or -1,
        g.ports or (-1, -1),
        g.policy,
        g.rule,
    )


def grant_matches(g: Grant, peer: Address, proto: int, port: int | None) -> bool:
    if peer not in g.peer:
        return False
    if g.proto is None:
        return True
    if g.proto != proto:
        return False
    if g.ports is None or port is None:
        return g.ports is None or g.ports == ALL_PORTS
    return g.ports[0] <= port <= g.ports[1]
