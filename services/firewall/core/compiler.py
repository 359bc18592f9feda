"""The policy compiler: a Model becomes libnftables JSON for the fabric's own two tables.

    table inet qnf        stateful policy (conntrack): forward, input (to gateways), output
    table bridge qnf      stateless anti-spoofing on the fabric's veths (no conntrack there)

Per-packet cost is independent of the number of endpoints and policies: a packet from (to) a
local endpoint takes one verdict-map lookup from its address to its identity group's chain, and
there one lookup in a concatenated interval set keyed by (peer . protocol [. port]) that holds
the union of everything the group may do. Endpoints that share network, labels and named ports
share a group, its chain and its sets, so the elements grow with groups x peers, not with
endpoints x peers. Only admin-tier rules, which are few and ordered, are rules of their own.

The output is split into the *base* (tables, base chains, admin tier), one block of *group*
objects (two chains, eight sets, four named counters) per identity group, and the *elements* of
every set.

Attribution: every rule that accepts a new flow or drops one counts into a named counter whose
name says which rule it is (`Compiled.counters` maps it to direction, network, policy and rule),
and every drop is first offered to NFLOG with that name as the log prefix, through a per-endpoint
`limit` kept in a dynamic set, so the kernel itself drops excess log messages under a flood while
the counter stays exact. An
endpoint or label change adds or removes groups and set elements in one transaction; only a
change of the base (the admin tier) reloads the tables. Output is canonically ordered: the same
inputs give byte-identical JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, Final

from libs.common.messages import Endpoint
from services.firewall.core.model import ALL_PORTS, AdminRule, Grant, Model

TABLE: Final = "qnf"
FAMILY: Final = "inet"
BRIDGE_FAMILY: Final = "bridge"
PORT_PROTOS: Final = (6, 17, 132)  # protocols with ports: TCP, UDP, SCTP
NFLOG_GROUP: Final = 27  # the NFLOG group the agent reads denied packets from
LOG_PREFIX: Final = "qnf:"
LOG_RATE: Final = 10  # denied-packet log messages per second per local endpoint ...
LOG_BURST: Final = 20  # ... after a burst of this many

Json = dict[str, Any]


@dataclass(frozen=True)
class CounterInfo:
    """What one named counter counts: the verdict of one rule for one direction."""

    verdict: str  # "accept" or "drop"
    direction: str  # "ingress", "egress" or "" (anti-spoofing)
    network: str  # the network of the group, or "" for rules across networks (admin tier)
    policy: str  # the deciding policy, or "default-deny" / "anti-spoofing"
    rule: str  # the rule within it, e.g. "egress[0]"


@dataclass(frozen=True)
class Compiled:
    """Base structure, per-group structure, and set elements keyed by (family, set name)."""

    structure: list[Json]
    groups: dict[str, list[Json]]
    elements: dict[tuple[str, str], list[Any]]
    counters: dict[str, CounterInfo] = field(default_factory=dict)  # named counter -> what it counts

    def full(self) -> list[Json]:
        """One transaction that replaces both tables (create-then-delete makes delete never fail)."""
        cmds: list[Json] = []
        for family in (FAMILY, BRIDGE_FAMILY):
            table = {"family": family, "name": TABLE}
            cmds += [{"add": {"table": table}}, {"delete": {"table": table}}]
        cmds += self.structure
        for gid in sorted(self.groups):
            cmds += self.groups[gid]
        for (family, name), elems in sorted(self.elements.items()):
            if elems:
                cmds.append(
                    {"add": {"element": {"family": family, "table": TABLE, "name": name, "elem": elems}}}
                )
        return cmds

    def structure_digest(self) -> str:
        """Digest of the base only: group objects come and go as deltas."""
        return hashlib.sha256(json.dumps(self.structure, sort_keys=True).encode()).hexdigest()


def group_sets(gid: str) -> list[str]:
    """The names of a group's eight sets."""
    return [f"{d}_{gid}_{v}{k}" for d in ("in", "eg") for v in ("4", "6") for k in ("p", "a")]


def group_chains(gid: str) -> list[str]:
    return [f"in_{gid}", f"eg_{gid}"]


def group_counters(gid: str) -> list[str]:
    """A group's named counters: accepted and dropped new flows, per direction."""
    return [f"{v}_{d}_{gid}" for d in ("in", "eg") for v in ("acc", "dn")]


def _counter(family: str, name: str) -> Json:
    return {"add": {"counter": {"family": family, "table": TABLE, "name": name}}}


def _log_drop(chain: str, local: str, name: str) -> list[Json]:
    """Offer a drop to NFLOG, at most LOG_RATE/s per local endpoint (the kernel drops the rest).

    The limit lives in a meter (a dynamic set owned by the rule, gone with it) keyed by the
    endpoint's address: one bucket per endpoint, so one flooding workload cannot silence the log
    of the others. libnftables' JSON cannot declare a named dynamic set, hence meters."""
    return [_rule(FAMILY, chain, _log_stmts(version, local, name)) for version in (4, 6)]


def _log_stmts(version: int, local: str, name: str) -> list[Json]:
    limit = {"limit": {"rate": LOG_RATE, "per": "second", "burst": LOG_BURST}}
    meter = {"name": f"m{_v(version)}_{name}", "key": _ip(version, local), "stmt": limit, "size": 65536}
    return [{"meter": meter}, {"log": {"prefix": f"{LOG_PREFIX}{name} ", "group": NFLOG_GROUP}}]


def comment(owner: str) -> str:
    """Ownership tag of a rule: `qnf:<hash of owner>` then the owner itself, for attribution."""
    return f"qnf:{hashlib.sha256(owner.encode()).hexdigest()[:8]} {owner}"[:128]


def _range(lo: int, hi: int) -> Any:
    return lo if lo == hi else {"range": [lo, hi]}


def _v(version: int) -> str:
    return "4" if version == 4 else "6"


def _sets(family: str, specs: Iterable[tuple[str, list[str], bool]]) -> list[Json]:
    out = []
    for name, types, interval in specs:
        body: Json = {
            "family": family,
            "table": TABLE,
            "name": name,
            "type": types if len(types) > 1 else types[0],
        }
        if interval:
            body["flags"] = ["interval"]
        out.append({"add": {"set": body}})
    return out


def _rule(family: str, chain: str, expr: list[Json], owner: str | None = None) -> Json:
    body: Json = {"family": family, "table": TABLE, "chain": chain, "expr": expr}
    if owner:
        body["comment"] = comment(owner)
    return {"add": {"rule": body}}


def _payload(proto: str, field: str) -> Json:
    return {"payload": {"protocol": proto, "field": field}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _match(left: Any, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _concat(*items: Json) -> Json:
    return {"concat": list(items)}


def _ip(version: int, which: str) -> Json:
    return _payload("ip" if version == 4 else "ip6", which)


def _lookup_rules(
    chain: str,
    version: int,
    peer: str,
    sets: str,
    verdict: Json | list[Json],
    owner: str | None,
    guard: Json | None = None,
    count: str | None = None,
) -> list[Json]:
    """Two rules: (peer . proto . port) for port protocols, (peer . proto) for the rest."""
    v = _v(version)
    first = [guard] if guard else []
    verdict_stmts = list(verdict) if isinstance(verdict, list) else [verdict]
    if count is not None:
        verdict_stmts.insert(0, {"counter": count})
    return [
        _rule(
            FAMILY,
            chain,
            first
            + [
                _match(_meta("l4proto"), {"set": list(PORT_PROTOS)}),
                _match(
                    _concat(_ip(version, peer), _meta("l4proto"), _payload("th", "dport")), f"@{sets}_{v}p"
                ),
                *verdict_stmts,
            ],
            owner,
        ),
        _rule(
            FAMILY,
            chain,
            first
            + [
                _match(_concat(_ip(version, peer), _meta("l4proto")), f"@{sets}_{v}a"),
                *verdict_stmts,
            ],
            owner,
        ),
    ]


Box = tuple[int, int, int, int]  # (peer address lo, hi, second dimension lo, hi), inclusive


def disjoint(boxes: Iterable[Box]) -> list[Box]:
    """The union of `boxes` as non-overlapping boxes (interval sets reject overlapping elements).

    Sweep the first dimension at every box edge; in each slice merge the second-dimension
    intervals of the boxes covering it; then join neighbouring slices that came out equal.
    """
    items = sorted(set(boxes))
    if not items:
        return []
    if all(a[1] < b[0] for a, b in zip(items, items[1:], strict=False)):
        # The common case (distinct peers): nothing overlaps; only join touching equal neighbours.
        out = [items[0]]
        for box in items[1:]:
            last = out[-1]
            if last[1] + 1 == box[0] and last[2:] == box[2:]:
                out[-1] = (last[0], box[1], last[2], last[3])
            else:
                out.append(box)
        return out
    edges = sorted({b[0] for b in items} | {b[1] + 1 for b in items})
    slices: list[tuple[int, int, list[tuple[int, int]]]] = []
    for lo, nxt in zip(edges, edges[1:], strict=False):
        covering = sorted((b[2], b[3]) for b in items if b[0] <= lo and b[1] >= nxt - 1)
        merged: list[tuple[int, int]] = []
        for a, z in covering:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], z))
            else:
                merged.append((a, z))
        if not merged:
            continue
        if slices and slices[-1][1] == lo - 1 and slices[-1][2] == merged:
            slices[-1] = (slices[-1][0], nxt - 1, merged)
        else:
            slices.append((lo, nxt - 1, merged))
    return [(lo, hi, a, z) for lo, hi, ranges in slices for a, z in ranges]


def _addr_range(version: int, lo: int, hi: int) -> Any:
    """An address interval in nft JSON: a single address, a prefix, or a range."""
    if lo == hi:
        return str(ip_address(lo) if version == 4 else IPv6Address(lo))
    size = hi - lo + 1
    bits = 32 if version == 4 else 128
    if size & (size - 1) == 0 and lo % size == 0:
        net = (
            ip_network((lo, bits - size.bit_length() + 1))
            if version == 4
            else IPv6Network((lo, bits - size.bit_length() + 1))
        )
        return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    start = ip_address(lo) if version == 4 else IPv6Address(lo)
    end = ip_address(hi) if version == 4 else IPv6Address(hi)
    return {"range": [str(start), str(end)]}


def _grant_elements(grants: Iterable[Grant]) -> dict[str, list[Any]]:
    """Elements of a group's (or admin rule's) sets, by suffix "4p", "4a", "6p", "6a"; disjoint."""
    ported: dict[tuple[int, int], list[Box]] = {}
    other: dict[int, list[Box]] = {}
    for g in grants:
        lo, hi = int(g.peer.network_address), int(g.peer.broadcast_address)
        if g.proto in PORT_PROTOS:
            plo, phi = g.ports or ALL_PORTS
            ported.setdefault((g.peer.version, g.proto), []).append((lo, hi, plo, phi))
        else:
            proto_lo, proto_hi = (0, 255) if g.proto is None else (g.proto, g.proto)
            other.setdefault(g.peer.version, []).append((lo, hi, proto_lo, proto_hi))
    out: dict[str, list[Any]] = {"4p": [], "4a": [], "6p": [], "6a": []}
    for (version, proto), boxes in sorted(ported.items()):
        for lo, hi, plo, phi in disjoint(boxes):
            out[f"{version}p"].append({"concat": [_addr_range(version, lo, hi), proto, _range(plo, phi)]})
    for version, boxes in sorted(other.items()):
        for lo, hi, a, z in disjoint(boxes):
            out[f"{version}a"].append({"concat": [_addr_range(version, lo, hi), _range(a, z)]})
    return out


def _admin_name(rule: AdminRule) -> str:
    return "adm_" + hashlib.sha256(f"{rule.policy}/{rule.rule}/{rule.order}".encode()).hexdigest()[:10]


def _peer_sets(family: str, prefix: str) -> list[Json]:
    specs = []
    for v, addr in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
        specs += [
            (f"{prefix}_{v}p", [addr, "inet_proto", "inet_service"], True),
            (f"{prefix}_{v}a", [addr, "inet_proto"], True),
        ]
    return _sets(family, specs)


def _group_objects(gid: str) -> list[Json]:
    """A group's sets, counters and two chains, the same shape for every group."""
    out = _peer_sets(FAMILY, f"in_{gid}") + _peer_sets(FAMILY, f"eg_{gid}")
    out += [_counter(FAMILY, name) for name in group_counters(gid)]
    for chain, d, peer, local, allow in (
        (f"in_{gid}", "in", "saddr", "daddr", {"accept": None}),
        (f"eg_{gid}", "eg", "daddr", "saddr", {"return": None}),
    ):
        out.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": chain}}})
        for version in (4, 6):
            out += _lookup_rules(chain, version, peer, chain, allow, None, count=f"acc_{d}_{gid}")
        what = "ingress" if d == "in" else "egress"
        out += _log_drop(chain, local, f"dn_{d}_{gid}")
        out.append(
            _rule(FAMILY, chain, [{"counter": f"dn_{d}_{gid}"}, {"drop": None}], f"default deny {what} {gid}")
        )
    return out


def group_objects(gid: str) -> list[Json]:
    return _group_objects(gid)


def group_counter_info(gid: str, network: str) -> dict[str, CounterInfo]:
    out = {}
    for d, direction in (("in", "ingress"), ("eg", "egress")):
        out[f"acc_{d}_{gid}"] = CounterInfo("accept", direction, network, "", "")
        out[f"dn_{d}_{gid}"] = CounterInfo("drop", direction, network, "default-deny", direction)
    return out


def group_elements(gid: str, grants: Iterable[Grant]) -> dict[tuple[str, str], list[Any]]:
    """The elements of a group's eight sets from its normal-tier grants (both directions)."""
    by_direction: dict[str, list[Grant]] = {"ingress": [], "egress": []}
    for g in grants:
        by_direction[g.direction].append(g)
    out = {}
    for direction, prefix in (("ingress", "in"), ("egress", "eg")):
        for suffix, elems in _grant_elements(by_direction[direction]).items():
            out[(FAMILY, f"{prefix}_{gid}_{suffix}")] = elems
    return out


def admin_name(rule: AdminRule) -> str:
    return _admin_name(rule)


def admin_elements(rule: AdminRule, grants: Iterable[Grant]) -> dict[tuple[str, str], list[Any]]:
    """The elements of an admin rule's peer sets."""
    name = _admin_name(rule)
    return {(FAMILY, f"{name}_{suffix}"): elems for suffix, elems in _grant_elements(grants).items()}


def endpoint_elements(
    model_groups_of: dict[str, str], endpoint: Endpoint, opened: set[str]
) -> dict[tuple[str, str], list[Any]]:
    """The elements one local endpoint contributes outside its group's sets: verdict maps, the
    local and open sets, anti-spoofing. `model_groups_of` maps its endpoint id to its group."""
    gid = model_groups_of[endpoint.endpoint_id]
    out: dict[tuple[str, str], list[Any]] = {}

    def put(key: tuple[str, str], elem: Any) -> None:
        out.setdefault(key, []).append(elem)

    for a in sorted(
        (i.ip for i in endpoint.addresses), key=lambda a: (a.version, int(a))
    ):  # v4 and v6 do not compare
        v = _v(a.version)
        for direction in ("in", "eg"):
            put((FAMILY, f"{direction}{v}"), [str(a), {"goto": {"target": f"{direction}_{gid}"}}])
        put((FAMILY, f"local{v}"), str(a))
        for direction, name in (("ingress", "in_open"), ("egress", "eg_open")):
            if direction in opened:
                put((FAMILY, f"{name}{v}"), str(a))
    ifname, mac = endpoint.host_ifname, endpoint.mac
    put((BRIDGE_FAMILY, "ports"), ifname)
    put((BRIDGE_FAMILY, "portmac"), {"concat": [ifname, mac]})
    for i in endpoint.addresses:
        put((BRIDGE_FAMILY, "src4" if i.version == 4 else "src6"), {"concat": [ifname, mac, str(i.ip)]})
    return out


def compile_model(model: Model, endpoints: Iterable[Endpoint]) -> Compiled:
    """The fabric's nftables for this node: base, group objects and set elements."""
    structure: list[Json] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"table": {"family": BRIDGE_FAMILY, "name": TABLE}}},
    ]
    elements: dict[tuple[str, str], list[Any]] = {}
    counters: dict[str, CounterInfo] = {}

    def put(name: str, elems: Iterable[Any], family: str = FAMILY) -> None:
        elements.setdefault((family, name), []).extend(elems)

    for v, addr_type in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
        version = int(v)
        structure += _sets(
            FAMILY,
            [
                (f"local{v}", [addr_type], False),
                (f"gw{v}", [addr_type], False),
                (f"in_open{v}", [addr_type], False),
                (f"eg_open{v}", [addr_type], False),
            ],
        )
        for direction in ("in", "eg"):
            structure.append(
                {
                    "add": {
                        "map": {
                            "family": FAMILY,
                            "table": TABLE,
                            "name": f"{direction}{v}",
                            "type": addr_type,
                            "map": "verdict",
                        }
                    }
                }
            )
            put(
                f"{direction}{v}",
                [
                    [str(a), {"goto": {"target": f"{direction}_{gid}"}}]
                    for gid, members in model.groups.items()
                    for a in sorted(a for a in members if a.version == version)
                ],
            )
        for name, addrs in (
            ("local", model.local),
            ("gw", model.gateways),
            ("in_open", model.open_ingress),
            ("eg_open", model.open_egress),
        ):
            put(f"{name}{v}", [str(a) for a in sorted(a for a in addrs if a.version == version)])

    for name, hook in (("forward", "forward"), ("input", "input"), ("output", "output")):
        structure.append(
            {
                "add": {
                    "chain": {
                        "family": FAMILY,
                        "table": TABLE,
                        "name": name,
                        "type": "filter",
                        "hook": hook,
                        "prio": 0,
                        "policy": "accept",
                    }
                }
            }
        )
    for name in ("egress", "ingress", "egress_normal", "ingress_normal"):
        structure.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}})

    established = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    nd = _match(
        _payload("icmpv6", "type"),
        {"set": ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert"]},
    )
    for chain in ("forward", "input", "output"):
        structure.append(_rule(FAMILY, chain, [established, {"accept": None}]))
        structure.append(_rule(FAMILY, chain, [nd, {"accept": None}]))
    for version in (4, 6):
        v = _v(version)
        fabric_src = _match(_ip(version, "saddr"), f"@local{v}")
        fabric_dst = _match(_ip(version, "daddr"), f"@local{v}")
        invalid = _match({"ct": {"key": "state"}}, ["invalid"], "in")
        structure.append(_rule(FAMILY, "forward", [fabric_src, invalid, {"counter": None}, {"drop": None}]))
        structure.append(_rule(FAMILY, "forward", [fabric_src, {"jump": {"target": "egress"}}]))
        structure.append(_rule(FAMILY, "forward", [fabric_dst, {"jump": {"target": "ingress"}}]))
        dns = [
            fabric_src,
            _match(_ip(version, "daddr"), f"@gw{v}"),
            _match(_meta("l4proto"), {"set": [6, 17]}),
            _match(_payload("th", "dport"), 53),
            {"accept": None},
        ]
        structure.append(_rule(FAMILY, "input", dns, "dns to the fabric resolver"))
        structure.append(_rule(FAMILY, "input", [fabric_src, {"jump": {"target": "egress"}}]))
        structure.append(_rule(FAMILY, "output", [fabric_dst, {"jump": {"target": "ingress"}}]))

    # Admin tier first, in order: Allow/Deny decide, Pass skips to the normal tier. Each admin
    # rule has a set of the local addresses it applies to and sets of its peers, so endpoints
    # and labels coming and going change only elements, never the structure.
    admin_grants: dict[str, list[Grant]] = {}
    for g in model.grants:
        if g.tier == "admin":
            admin_grants.setdefault(g.group, []).append(g)
    for admin_rule in model.admin_rules:
        name = _admin_name(admin_rule)
        chain = admin_rule.direction
        if admin_rule.action == "Allow":
            verdict: Json = {"accept": None} if chain == "ingress" else {"return": None}
        elif admin_rule.action == "Deny":
            verdict = {"drop": None}
        else:
            verdict = {"goto": {"target": f"{chain}_normal"}}
        local, peer = ("daddr", "saddr") if chain == "ingress" else ("saddr", "daddr")
        structure += _sets(
            FAMILY, [(f"{name}_s4", ["ipv4_addr"], False), (f"{name}_s6", ["ipv6_addr"], False)]
        )
        structure += _peer_sets(FAMILY, name)
        count: str | None = None
        if admin_rule.action != "Pass":
            count = f"{'dn' if admin_rule.action == 'Deny' else 'acc'}_{name}"
            structure.append(_counter(FAMILY, count))
            counters[count] = CounterInfo(
                "drop" if admin_rule.action == "Deny" else "accept",
                chain,
                "",
                admin_rule.policy,
                admin_rule.rule,
            )
        deny: Json = {"goto": {"target": f"{name}_dn"}}
        if admin_rule.action == "Deny" and count is not None:
            # Its own chain: log (rate-limited, one meter per rule) and count, then drop.
            structure.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": f"{name}_dn"}}})
            structure += _log_drop(f"{name}_dn", local, count)
            structure.append(
                _rule(FAMILY, f"{name}_dn", [{"counter": count}, {"drop": None}], admin_rule.key)
            )
        subjects = model.admin_subjects.get(admin_rule.key, frozenset())
        for version in (4, 6):
            put(f"{name}_s{version}", [str(a) for a in sorted(a for a in subjects if a.version == version)])
            guard = _match(_ip(version, local), f"@{name}_s{version}")
            if admin_rule.action == "Deny":
                structure += _lookup_rules(chain, version, peer, name, deny, admin_rule.key, guard)
            else:
                structure += _lookup_rules(chain, version, peer, name, verdict, admin_rule.key, guard, count)
        for suffix, elems in _grant_elements(admin_grants.get(admin_rule.key, [])).items():
            put(f"{name}_{suffix}", elems)
    for chain in ("egress", "ingress"):
        structure.append(_rule(FAMILY, chain, [{"goto": {"target": f"{chain}_normal"}}]))

    for chain, local, prefix, allow in (
        ("egress_normal", "saddr", "eg", {"return": None}),
        ("ingress_normal", "daddr", "in", {"accept": None}),
    ):
        for version in (4, 6):
            v = _v(version)
            structure.append(_rule(FAMILY, chain, [_match(_ip(version, local), f"@{prefix}_open{v}"), allow]))
            structure.append(
                _rule(FAMILY, chain, [{"vmap": {"key": _ip(version, local), "data": f"@{prefix}{v}"}}])
            )
        direction = chain[: -len("_normal")]
        nogroup = f"dn_nogroup_{prefix}"
        structure.append(_counter(FAMILY, nogroup))
        counters[nogroup] = CounterInfo("drop", direction, "", "default-deny", "no identity group")
        structure.append(
            _rule(FAMILY, chain, [{"counter": nogroup}, {"drop": None}], f"no group {direction}")
        )

    # Identity groups: their objects, and the union of their grants as elements.
    groups: dict[str, list[Json]] = {}
    normal: dict[tuple[str, str], list[Grant]] = {}
    for g in model.grants:
        if g.tier == "normal":
            normal.setdefault((g.group, g.direction), []).append(g)
    for gid in sorted(model.groups):
        groups[gid] = _group_objects(gid)
        member = next(iter(model.groups[gid]), None)
        network = model.by_address[member].network if member in model.by_address else ""
        counters.update(group_counter_info(gid, network))
        grants = normal.get((gid, "ingress"), []) + normal.get((gid, "egress"), [])
        for key, elems in group_elements(gid, grants).items():
            put(key[1], elems)

    _anti_spoofing(structure, elements, endpoints)
    counters["dn_antispoof"] = CounterInfo("drop", "", "", "anti-spoofing", "")
    return Compiled(structure, groups, dict(sorted(elements.items())), dict(sorted(counters.items())))


def _anti_spoofing(
    structure: list[Json], elements: dict[tuple[str, str], list[Any]], endpoints: Iterable[Endpoint]
) -> None:
    """bridge qnf: a packet from a fabric veth must carry that endpoint's MAC and address."""
    structure += [
        {"add": {"set": {"family": BRIDGE_FAMILY, "table": TABLE, "name": "ports", "type": "ifname"}}},
        {
            "add": {
                "set": {
                    "family": BRIDGE_FAMILY,
                    "table": TABLE,
                    "name": "portmac",
                    "type": ["ifname", "ether_addr"],
                }
            }
        },
        {
            "add": {
                "set": {
                    "family": BRIDGE_FAMILY,
                    "table": TABLE,
                    "name": "src4",
                    "type": ["ifname", "ether_addr", "ipv4_addr"],
                }
            }
        },
        {
            "add": {
                "set": {
                    "family": BRIDGE_FAMILY,
                    "table": TABLE,
                    "name": "src6",
                    "type": ["ifname", "ether_addr", "ipv6_addr"],
                }
            }
        },
        {
            "add": {
                "chain": {
                    "family": BRIDGE_FAMILY,
                    "table": TABLE,
                    "name": "prerouting",
                    "type": "filter",
                    "hook": "prerouting",
                    "prio": -300,
                    "policy": "accept",
                }
            }
        },
        {"add": {"chain": {"family": BRIDGE_FAMILY, "table": TABLE, "name": "antispoof"}}},
        _counter(BRIDGE_FAMILY, "dn_antispoof"),
    ]
    iif = _meta("iifname")
    ether_src = _payload("ether", "saddr")

    def rule(expr: list[Json], owner: str | None = None) -> Json:
        body: Json = {"family": BRIDGE_FAMILY, "table": TABLE, "chain": "antispoof", "expr": expr}
        if owner:
            body["comment"] = comment(owner)
        return {"add": {"rule": body}}

    structure.append(
        {
            "add": {
                "rule": {
                    "family": BRIDGE_FAMILY,
                    "table": TABLE,
                    "chain": "prerouting",
                    "expr": [_match(iif, "@ports"), {"jump": {"target": "antispoof"}}],
                }
            }
        }
    )
    ether_type = _payload("ether", "type")
    structure += [
        rule(
            [
                _match(ether_type, "arp"),
                _match(_concat(iif, _payload("arp", "saddr ether")), "@portmac"),
                _match(_concat(iif, ether_src, _payload("arp", "saddr ip")), "@src4"),
                {"accept": None},
            ]
        ),
        rule(
            [
                _match(ether_type, "ip"),
                _match(_concat(iif, ether_src, _payload("ip", "saddr")), "@src4"),
                {"accept": None},
            ]
        ),
        rule(
            [
                _match(ether_type, "ip6"),
                _match(_concat(iif, ether_src, _payload("ip6", "saddr")), "@src6"),
                {"accept": None},
            ]
        ),
        # IPv6 link-local and duplicate address detection, from the port's own MAC only.
        rule(
            [
                _match(ether_type, "ip6"),
                _match(_concat(iif, ether_src), "@portmac"),
                _match(_payload("ip6", "saddr"), {"prefix": {"addr": "fe80::", "len": 10}}),
                {"accept": None},
            ]
        ),
        rule(
            [
                _match(ether_type, "ip6"),
                _match(_concat(iif, ether_src), "@portmac"),
                _match(_payload("ip6", "saddr"), "::"),
                {"accept": None},
            ]
        ),
        rule([{"counter": "dn_antispoof"}, {"drop": None}], "anti-spoofing"),
    ]
    ports: list[Any] = []
    portmac: list[Any] = []
    src4: list[Any] = []
    src6: list[Any] = []
    for e in sorted(endpoints, key=lambda e: e.host_ifname):
        ports.append(e.host_ifname)
        portmac.append({"concat": [e.host_ifname, e.mac]})
        for a in e.addresses:
            (src4 if a.version == 4 else src6).append({"concat": [e.host_ifname, e.mac, str(a.ip)]})
    elements[(BRIDGE_FAMILY, "ports")] = ports
    elements[(BRIDGE_FAMILY, "portmac")] = portmac
    elements[(BRIDGE_FAMILY, "src4")] = src4
    elements[(BRIDGE_FAMILY, "src6")] = src6


def delta(
    old: Compiled,
    new: Compiled,
    keys: Iterable[tuple[str, str]] | None = None,
    edits: Mapping[tuple[str, str], tuple[list[Any], list[Any]]] | None = None,
) -> list[Json]:
    """One batch from `old` to `new` with the same base: element deletions, the removal of groups
    that are gone, the objects of new groups, then element additions (each step only refers to
    what the steps before it left in place). `keys`: the only element sets that may differ (an
    incremental compile knows them), so ten thousand unchanged elements are not even compared;
    `edits`: for some of those, the exact (removed, added) elements, so not even those are."""
    removed = sorted(set(old.groups) - set(new.groups))
    added = sorted(set(new.groups) - set(old.groups))
    dying = {(FAMILY, name) for gid in removed for name in group_sets(gid)}
    deletes, adds = [], []
    for key in sorted(set(old.elements) | set(new.elements) if keys is None else set(keys)):
        if old.elements.get(key) == new.elements.get(key):
            continue  # the common case: compiled in the same order, so equal lists compare fast
        family, name = key
        if edits is not None and key in edits:
            gone_list, came_list = edits[key]
            before = {repr(e): e for e in gone_list}
            after = {repr(e): e for e in came_list}
            for both in set(before) & set(after):  # taken out and put back: nothing to do
                del before[both], after[both]
            target = {"family": family, "table": TABLE, "name": name}
            if before and key not in dying:
                keys_ = [e[0] if isinstance(e, list) else e for e in before.values()]
                deletes.append({"delete": {"element": {**target, "elem": keys_}}})
            if after:
                adds.append({"add": {"element": {**target, "elem": list(after.values())}}})
            continue
        # repr, not json.dumps: the compiler builds every element the same way each time, and
        # repr is several times cheaper on sets of ten thousand elements.
        before = {repr(e): e for e in old.elements.get(key, [])}
        after = {repr(e): e for e in new.elements.get(key, [])}
        target = {"family": family, "table": TABLE, "name": name}
        gone = [before[k] for k in sorted(set(before) - set(after))]
        if gone and key not in dying:
            # Map elements are deleted by key alone.
            keys = [e[0] if isinstance(e, list) else e for e in gone]
            deletes.append({"delete": {"element": {**target, "elem": keys}}})
        came = [after[k] for k in sorted(set(after) - set(before))]
        if came:
            adds.append({"add": {"element": {**target, "elem": came}}})
    teardown: list[dict[str, Any]] = []
    for gid in removed:
        for chain in group_chains(gid):
            teardown.append({"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": chain}}})
        for chain in group_chains(gid):
            teardown.append({"delete": {"chain": {"family": FAMILY, "table": TABLE, "name": chain}}})
        for name in group_sets(gid):
            teardown.append({"delete": {"set": {"family": FAMILY, "table": TABLE, "name": name}}})
        for name in group_counters(gid):
            teardown.append({"delete": {"counter": {"family": FAMILY, "table": TABLE, "name": name}}})
    build = [cmd for gid in added for cmd in new.groups[gid]]
    return deletes + teardown + build + adds
