"""Incremental compilation of endpoint changes: only the affected elements and groups.

The full compile (`model.build` then `compiler.compile_model`) is the reference; it costs
hundreds of milliseconds at ten thousand endpoints. An endpoint that comes, goes or changes
labels touches far less:
- its own elements: verdict maps, local and open sets, anti-spoofing, admin subject sets;
- its identity group: created when it is the first member, removed with the last;
- the peer sets of the groups (and admin rules) whose rules can resolve to it as a peer.
`Incremental` keeps the grouping and the last output, recomputes just those parts with the same
functions the full compile uses, and says which sets changed, so the delta is one small batch.
A normal-tier policy change recomputes only the local groups it selects (before or after).
Networks and admin-tier policies go through the full compile (they reshape the base).

Pure: endpoints, networks and policies come in as values. Unit tests hold it equal to the full
compile after every change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from libs.common.messages import Endpoint, Network, Policy
from libs.common.selectors import matches
from services.firewall.core.compiler import (
    BRIDGE_FAMILY,
    FAMILY,
    Compiled,
    admin_elements,
    admin_name,
    compile_model,
    endpoint_elements,
    group_counter_info,
    group_counters,
    group_elements,
    group_objects,
    group_sets,
)
from services.firewall.core.model import (
    Model,
    _World,
    admin_grants,
    admin_selects,
    build,
    grants_of_group,
    group_id,
    policy_types,
    rule_involves,
)

Key = tuple[str, str]
_PER_ENDPOINT = {"in", "eg", "local", "in_open", "eg_open"}  # the sets endpoint_elements() fills


class Incremental:
    """The compiled ruleset of one node, kept current through endpoint changes."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.compiled: Compiled | None = None
        self.model: Model | None = None  # of the last full compile
        self._networks: list[Network] = []
        self._policies: list[Policy] = []
        self._endpoints: dict[str, Endpoint] = {}
        self._by_group: dict[str, list[Endpoint]] = {}  # every endpoint, for peer resolution
        self._local: dict[str, dict[str, Endpoint]] = {}  # local groups: gid -> members
        self._group_of: dict[str, str] = {}  # local endpoint id -> gid
        self._opened: dict[str, set[str]] = {}  # local gid -> open directions
        self._positions: dict[Key, tuple[list[Any], dict[Any, int]]] = {}  # see change().edit

    def full(
        self, networks: Sequence[Network], endpoints: Iterable[Endpoint], policies: Sequence[Policy]
    ) -> Compiled:
        """The reference: build and compile everything; remember what changes need."""
        self._networks, self._policies = list(networks), list(policies)
        self._endpoints = {e.endpoint_id: e for e in endpoints}
        model = build(self._networks, list(self._endpoints.values()), self._policies, node=self.node)
        self.model = model
        local = [e for e in self._endpoints.values() if self._is_local(e)]
        self.compiled = compile_model(model, local)
        self._by_group, self._local, self._group_of, self._opened = {}, {}, {}, {}
        for e in self._endpoints.values():
            self._by_group.setdefault(group_id(e), []).append(e)
        for e in local:
            gid = group_id(e)
            self._local.setdefault(gid, {})[e.endpoint_id] = e
            self._group_of[e.endpoint_id] = gid
        # Index the per-endpoint sets now: the first change must not pay for it.
        self._positions = {
            key: (elems, {_ident(x): i for i, x in enumerate(elems)})
            for key, elems in self.compiled.elements.items()
            if key[0] == BRIDGE_FAMILY or key[1].rstrip("46") in _PER_ENDPOINT
        }
        for gid, members in self._local.items():
            addresses = [a.ip for e in members.values() for a in e.addresses]
            self._opened[gid] = {
                d
                for d, opened in (("ingress", model.open_ingress), ("egress", model.open_egress))
                if addresses and addresses[0] in opened
            }
        return self.compiled

    def _is_local(self, e: Endpoint) -> bool:
        return e.node == self.node and any(n.name == e.network for n in self._networks)

    def change(
        self, old: Endpoint | None, new: Endpoint | None
    ) -> tuple[Compiled, set[Key], dict[Key, tuple[list[Any], list[Any]]]]:
        """Apply one endpoint change (add: old None; remove: new None). Returns the new output,
        the element keys whose lists changed, and for the big per-endpoint sets the exact
        (removed, added) elements, so the delta need not compare ten thousand elements."""
        assert self.compiled is not None, "full() first"
        prev = self.compiled
        elements = dict(prev.elements)
        groups = dict(prev.groups)
        counters = dict(prev.counters)

        # The world after the change.
        if old is not None:
            self._endpoints.pop(old.endpoint_id, None)
            members = [e for e in self._by_group.get(group_id(old), []) if e.endpoint_id != old.endpoint_id]
            if members:
                self._by_group[group_id(old)] = members
            else:
                self._by_group.pop(group_id(old), None)
        if new is not None:
            self._endpoints[new.endpoint_id] = new
            self._by_group.setdefault(group_id(new), []).append(new)
        world = _World(self._networks, list(self._endpoints.values()), self._by_group)
        normal = [p for p in self._policies if p.tier == "normal"]
        admin = sorted((p for p in self._policies if p.tier == "admin"), key=lambda p: (p.priority, p.name))
        touched = [e for e in (old, new) if e is not None]

        batch = _Batch(elements, self._positions)
        set_elements, edit = batch.set_elements, batch.edit
        changed, edits = batch.changed, batch.edits

        # The endpoint's own elements out, its group membership updated.
        affected: set[str] = set()
        if old is not None and old.endpoint_id in self._group_of:
            gid = self._group_of.pop(old.endpoint_id)
            for key, elems in endpoint_elements({old.endpoint_id: gid}, old, self._opened[gid]).items():
                edit(key, elems, [])
            del self._local[gid][old.endpoint_id]
            if not self._local[gid]:
                del self._local[gid], self._opened[gid], groups[gid]
                for name in group_sets(gid):
                    elements.pop((FAMILY, name), None)
                    changed.add((FAMILY, name))
                for name in group_counters(gid):
                    counters.pop(name, None)
            else:
                affected.add(gid)
        if new is not None and self._is_local(new):
            gid = group_id(new)
            if gid not in self._local:
                self._local[gid] = {}
                grants, opened = grants_of_group(world, gid, new, normal)
                self._opened[gid] = opened
                groups[gid] = group_objects(gid)
                counters.update(group_counter_info(gid, new.network))
                for key, elems in group_elements(gid, grants).items():
                    elements[key] = elems
                    changed.add(key)
            self._local[gid][new.endpoint_id] = new
            self._group_of[new.endpoint_id] = gid
            for key, elems in endpoint_elements(self._group_of, new, self._opened[gid]).items():
                edit(key, [], elems)

        # Groups whose peers may include the endpoint (before or after): recompute their sets.
        involved = [
            p
            for p in normal
            if any(
                rule_involves(world, rule, world.networks.get(p.network or ""), e)
                for direction, type_name in (("ingress", "Ingress"), ("egress", "Egress"))
                if type_name in policy_types(p)
                for rule in getattr(p, direction)
                for e in touched
            )
        ]
        if involved:
            for gid, local_members in self._local.items():
                rep = next(iter(local_members.values()))
                if any(
                    p.network == rep.network and matches(p.endpoint_selector, rep.labels) for p in involved
                ):
                    affected.add(gid)
        for gid in affected:
            if gid in self._local:
                rep = next(iter(self._local[gid].values()))
                grants, _ = grants_of_group(world, gid, rep, normal)
                for key, elems in group_elements(gid, grants).items():
                    set_elements(key, elems)

        # Admin tier: subjects of the touched endpoints, peers of the rules that may name them.
        for p in admin:
            rules = admin_grants(world, p)
            before = old is not None and self._is_local(old) and admin_selects(world, p, old)
            after = new is not None and self._is_local(new) and admin_selects(world, p, new)
            if before or after:
                for admin_rule, _ in rules:
                    name = admin_name(admin_rule)
                    for version in (4, 6):
                        edit(
                            (FAMILY, f"{name}_s{version}"),
                            _addresses(old, version) if before and old else [],
                            _addresses(new, version) if after and new else [],
                        )
            for admin_rule, grants in rules:
                rule = getattr(p, admin_rule.direction)[admin_rule.order[2]]
                if any(rule_involves(world, rule, None, e) for e in touched):
                    for key, elems in admin_elements(admin_rule, grants).items():
                        set_elements(key, elems)

        self.compiled = replace(prev, groups=groups, elements=elements, counters=counters)
        return self.compiled, changed, edits

    def policies_changed(
        self, policies: Sequence[Policy], touched: Iterable[Policy]
    ) -> tuple[Compiled, set[Key], dict[Key, tuple[list[Any], list[Any]]]] | None:
        """Apply a change of normal-tier policies: `policies` is the whole new list, `touched`
        the changed ones as they were and as they are. Only the local groups either version
        selects are recomputed (their grants, and their members' open-set membership when
        isolation changed). None when the admin tier is involved: that is the full compile's."""
        assert self.compiled is not None, "full() first"
        touched = list(touched)
        if any(p.tier != "normal" for p in touched):
            return None
        prev = self.compiled
        self._policies = list(policies)
        world = _World(self._networks, list(self._endpoints.values()), self._by_group)
        normal = [p for p in self._policies if p.tier == "normal"]
        batch = _Batch(dict(prev.elements), self._positions)
        for gid, members in self._local.items():
            rep = next(iter(members.values()))
            if not any(
                p.network == rep.network and matches(p.endpoint_selector, rep.labels) for p in touched
            ):
                continue
            grants, opened = grants_of_group(world, gid, rep, normal)
            for key, elems in group_elements(gid, grants).items():
                batch.set_elements(key, elems)
            if opened != self._opened[gid]:
                for e in members.values():
                    before = endpoint_elements(self._group_of, e, self._opened[gid])
                    after = endpoint_elements(self._group_of, e, opened)
                    for key in before.keys() | after.keys():
                        drop = [x for x in before.get(key, []) if x not in after.get(key, [])]
                        add = [x for x in after.get(key, []) if x not in before.get(key, [])]
                        if drop or add:
                            batch.edit(key, drop, add)
                self._opened[gid] = opened
        self.compiled = replace(prev, elements=batch.elements)
        return self.compiled, batch.changed, batch.edits


class _Batch:
    """The element lists of one change being edited, and what the delta needs to know of it."""

    def __init__(
        self, elements: dict[Key, list[Any]], positions: dict[Key, tuple[list[Any], dict[Any, int]]]
    ):
        self.elements = elements
        self.positions = positions
        self.changed: set[Key] = set()
        self.edits: dict[Key, tuple[list[Any], list[Any]]] = {}

    def set_elements(self, key: Key, elems: list[Any]) -> None:
        if self.elements.get(key) != elems:
            self.elements[key] = elems
            self.changed.add(key)

    def edit(self, key: Key, drop: list[Any], add: list[Any]) -> None:
        # Sets have no order: remove by swapping in the last element, found through an index
        # of positions kept beside the list (a scan of ten thousand elements costs ~1 ms).
        current = self.elements.get(key, [])
        pos = self.positions.get(key)
        if pos is None or pos[0] is not current:
            pos = (current, {_ident(x): i for i, x in enumerate(current)})
        index = pos[1]
        elems = list(current)
        for x in drop:
            i = index.pop(_ident(x))
            last = elems.pop()
            if i < len(elems):
                elems[i] = last
                index[_ident(last)] = i
        for x in add:
            index[_ident(x)] = len(elems)
            elems.append(x)
        self.positions[key] = (elems, index)
        self.elements[key] = elems
        self.changed.add(key)
        gone, came = self.edits.get(key, ([], []))
        self.edits[key] = (gone + drop, came + add)


def _ident(element: Any) -> Any:
    """The identity of a per-endpoint element: an address or name, a map's key, a concatenation."""
    if isinstance(element, str):
        return element
    if isinstance(element, list):
        return element[0]
    return tuple(element["concat"])


def _addresses(endpoint: Endpoint, version: int) -> list[str]:
    return [str(a) for a in sorted(i.ip for i in endpoint.addresses if i.version == version)]


def canonical(compiled: Compiled) -> tuple[Any, Any, Any, Any]:
    """A compiled ruleset with set elements as sorted lists: sets have no order."""
    return (
        compiled.structure,
        dict(sorted(compiled.groups.items())),
        {k: sorted(repr(e) for e in v) for k, v in sorted(compiled.elements.items()) if v},
        compiled.counters,
    )
