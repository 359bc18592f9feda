"""The NAT compiler: networks and published ports become libnftables JSON for `inet qnf_nat`.

    table inet qnf_nat
      sets  fabric4/6   every network's subnet (interval)      never masquerade towards these
            masq4/6     subnets of networks with nat on        masquerade when leaving the fabric
      maps  any4/6_addr, any4/6_port   proto . host port   : endpoint address, endpoint port
            at4/6_addr, at4/6_port     host address . proto . host port : the same
                                       (any: published on every node address; at: on one)
      chains prerouting, output (dnat), postrouting (masquerade)

Address and port come from two maps because libnftables 1.0.6's JSON parser cannot declare a
map with concatenated data (it silently makes a set, and the dnat rule then crashes it).
The rules are fixed; only set and map elements change, so a mapping costs one map lookup per
packet whatever the number of mappings, and a change is an element delta in one transaction.
Published ports answer on the node's own addresses (`fib daddr type local`) but never on a
fabric address, so a mapping cannot capture what containers send to their gateway (DNS).
Connections that were DNATed from inside the fabric (hairpin) are masqueraded, so replies go
back through the node, also when a container reaches its own published port.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final

from libs.common.messages import Endpoint, Network, PublishedPort

TABLE: Final = "qnf_nat"
FAMILY: Final = "inet"

Json = dict[str, Any]
Address = IPv4Address | IPv6Address

SETS: Final = ("fabric4", "fabric6", "masq4", "masq6")
MAPS: Final = tuple(f"{kind}{v}_{part}" for kind in ("any", "at") for v in "46" for part in ("addr", "port"))


@dataclass(frozen=True)
class Target:
    """One published port resolved to one address of its endpoint."""

    protocol: str
    host_port: int
    host_ip: Address | None
    address: Address
    container_port: int


def targets(ports: Iterable[PublishedPort], endpoints: Mapping[str, Endpoint]) -> list[Target]:
    """Every (mapping, endpoint address) pair of one family; mappings of unknown endpoints skip."""
    out = []
    for port in ports:
        endpoint = endpoints.get(port.endpoint_id)
        if endpoint is None:
            continue
        for iface in endpoint.addresses:
            if port.host_ip is not None and port.host_ip.version != iface.version:
                continue
            out.append(Target(port.protocol, port.host_port, port.host_ip, iface.ip, port.container_port))
    # Addresses of two families do not compare: sort by text, for a canonical output.
    return sorted(out, key=lambda t: (t.protocol, t.host_port, str(t.host_ip), str(t.address)))


@dataclass(frozen=True)
class Compiled:
    """Element lists of every set and map, keyed by name; the structure is the constant below."""

    elements: dict[str, list[Any]]

    def full(self) -> list[Json]:
        """One transaction that replaces the table (create-then-delete makes delete never fail)."""
        table = {"family": FAMILY, "name": TABLE}
        cmds: list[Json] = [{"add": {"table": table}}, {"delete": {"table": table}}]
        cmds += STRUCTURE
        for name in SETS + MAPS:
            if self.elements[name]:
                cmds.append({"add": {"element": _target(name) | {"elem": self.elements[name]}}})
        return cmds

    def mappings(self) -> int:
        return sum(len(self.elements[m]) for m in MAPS if m.endswith("_addr"))


def compile_nat(networks: Iterable[Network], published: Iterable[Target]) -> Compiled:
    elements: dict[str, list[Any]] = {name: [] for name in SETS + MAPS}
    for net in sorted(networks, key=lambda n: n.name):
        subnets = [(net.subnet, "4")] + ([(net.subnet6, "6")] if net.subnet6 is not None else [])
        for subnet, v in subnets:
            prefix = {"prefix": {"addr": str(subnet.network_address), "len": subnet.prefixlen}}
            elements[f"fabric{v}"].append(prefix)
            if net.nat:
                elements[f"masq{v}"].append(prefix)
    for name, elems in target_elements(published).items():
        elements[name] += elems
    return Compiled(elements)


def target_elements(published: Iterable[Target]) -> dict[str, list[Any]]:
    """The map elements of some published targets, by map name."""
    out: dict[str, list[Any]] = {}
    for t in published:
        v = str(t.address.version)
        if t.host_ip is None:
            kind, key = "any", {"concat": [t.protocol, t.host_port]}
        else:
            kind, key = "at", {"concat": [str(t.host_ip), t.protocol, t.host_port]}
        out.setdefault(f"{kind}{v}_addr", []).append([key, str(t.address)])
        out.setdefault(f"{kind}{v}_port", []).append([key, t.container_port])
    return out


def replace_targets(
    compiled: Compiled, gone: Iterable[Target], came: Iterable[Target]
) -> tuple[Compiled, list[Json]]:
    """Some published targets out and others in, without recompiling the rest: the new table and
    the batch that takes the kernel there (deletions first). The whole compile's result, in
    another element order (sets have none)."""
    removed, added = target_elements(gone), target_elements(came)
    for name in set(removed) & set(added):  # a target that stays: no change at all
        same = [e for e in removed[name] if e in added[name]]
        removed[name] = [e for e in removed[name] if e not in same]
        added[name] = [e for e in added[name] if e not in same]
    elements = dict(compiled.elements)
    cmds: list[Json] = []
    for name, elems in removed.items():
        if elems:
            elements[name] = [e for e in elements[name] if e not in elems]
            cmds.append({"delete": {"element": _target(name) | {"elem": [_key(e) for e in elems]}}})
    for name, elems in added.items():
        if elems:
            elements[name] = elements[name] + elems
            cmds.append({"add": {"element": _target(name) | {"elem": elems}}})
    cmds.sort(key=lambda c: "add" in c)
    return Compiled(elements), cmds


def delta(old: Compiled, new: Compiled) -> list[Json]:
    """Element deletions then additions taking the kernel from `old` to `new` in one batch."""
    deletes, adds = [], []
    for name in SETS + MAPS:
        before = {repr(_key(e)): e for e in old.elements[name]}
        after = {repr(_key(e)): e for e in new.elements[name]}
        # A map element whose data changed is deleted and added again.
        gone = [_key(e) for k, e in before.items() if k not in after or after[k] != e]
        came = [e for k, e in after.items() if k not in before or before[k] != e]
        if gone:
            deletes.append({"delete": {"element": _target(name) | {"elem": gone}}})
        if came:
            adds.append({"add": {"element": _target(name) | {"elem": came}}})
    return deletes + adds


def _key(element: Any) -> Any:
    return element[0] if isinstance(element, list) else element


def _target(name: str) -> Json:
    return {"family": FAMILY, "table": TABLE, "name": name}


# ---------------------------------------------------------------- the fixed structure


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


_L4: Final = [{"meta": {"key": "l4proto"}}, _payload("th", "dport")]
_LOCAL: Final = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")


def _rule(chain: str, *expr: Json) -> Json:
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": list(expr)}}}


def _chain(name: str, hook: str, prio: int) -> Json:
    return {
        "add": {
            "chain": {
                "family": FAMILY,
                "table": TABLE,
                "name": name,
                "type": "nat",
                "hook": hook,
                "prio": prio,
                "policy": "accept",
            }
        }
    }


def _structure() -> list[Json]:
    cmds: list[Json] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for v, addr in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
        for name in (f"fabric{v}", f"masq{v}"):
            cmds.append({"add": {"set": _target(name) | {"type": addr, "flags": ["interval"]}}})
        for kind, key in (
            ("any", ["inet_proto", "inet_service"]),
            ("at", [addr, "inet_proto", "inet_service"]),
        ):
            for part, data in (("addr", addr), ("port", "inet_service")):
                cmds.append({"add": {"map": _target(f"{kind}{v}_{part}") | {"type": key, "map": data}}})
    cmds += [_chain("prerouting", "prerouting", -100), _chain("output", "output", -100)]
    cmds.append(_chain("postrouting", "postrouting", 100))
    for v, ip, nfproto, loopback in (
        ("4", "ip", "ipv4", ("127.0.0.0", 8)),
        ("6", "ip6", "ipv6", ("::1", 128)),
    ):
        family = _match({"meta": {"key": "nfproto"}}, nfproto)
        not_fabric = _match(_payload(ip, "daddr"), f"@fabric{v}", "!=")
        for chain in ("prerouting", "output"):
            guard = [family, _LOCAL, not_fabric]
            if chain == "output":  # a DNAT of loopback traffic would leave with a martian source
                guard.append(
                    _match(_payload(ip, "daddr"), {"prefix": {"addr": loopback[0], "len": loopback[1]}}, "!=")
                )
            for kind, lookup in (("at", {"concat": [_payload(ip, "daddr"), *_L4]}), ("any", {"concat": _L4})):
                dnat = {
                    "family": ip,
                    "addr": {"map": {"key": lookup, "data": f"@{kind}{v}_addr"}},
                    "port": {"map": {"key": lookup, "data": f"@{kind}{v}_port"}},
                }
                cmds.append(_rule(chain, *guard, {"dnat": dnat}))
        from_fabric = _match(_payload(ip, "saddr"), f"@fabric{v}")
        cmds.append(
            _rule(
                "postrouting",
                family,
                _match({"ct": {"key": "status"}}, "dnat", "in"),
                from_fabric,
                {"masquerade": None},
            )
        )
        cmds.append(
            _rule(
                "postrouting",
                family,
                _match(_payload(ip, "saddr"), f"@masq{v}"),
                _match(_payload(ip, "daddr"), f"@fabric{v}", "!="),
                {"masquerade": None},
            )
        )
    return cmds


STRUCTURE: Final = _structure()
