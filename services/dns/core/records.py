"""The record store: what each network's clients may resolve, as an immutable snapshot.

Names are normalised once, at the edge (lower case, trailing dot). A client asks through the
gateway of the network it is on and sees only that network's names:

    <endpoint>.<network>.<domain>.   A / AAAA of the endpoint's addresses
    <service>.<network>.<domain>.    A / AAAA of every endpoint the service selects
    _<port>._<proto>.<service>.<network>.<domain>.   SRV to each selected endpoint's name
    <reversed address>.in-addr.arpa. / ip6.arpa.   PTR to the endpoint's name (same network only)

Other names under <domain>. answer NXDOMAIN; everything else is not ours (forwarded). Lookups
never raise for a name that does not exist. Pure: built from values, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

from libs.common.messages import Endpoint, Network, Service
from libs.common.selectors import matches

A: Final = 1
PTR: Final = 12
AAAA: Final = 28
SRV_TYPE: Final = 33
TTL: Final = 5  # short: a moved or removed endpoint is seen within seconds


def normalise(name: str) -> str:
    """Lower case with one trailing dot: the only form names take inside the store."""
    name = name.lower()
    return name if name.endswith(".") else name + "."


def reverse_name(address: IPv4Address | IPv6Address) -> str:
    return address.reverse_pointer + "."


@dataclass(frozen=True)
class Zone:
    """One network's view: (name, rtype) → rdata strings, plus the names that exist at all."""

    network: str
    suffix: str  # "<network>.<domain>."
    records: Mapping[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    names: frozenset[str] = frozenset()

    def lookup(self, name: str, rtype: int) -> tuple[str, ...]:
        return self.records.get((name, rtype), ())

    def exists(self, name: str) -> bool:
        return name in self.names


@dataclass(frozen=True)
class RecordStore:
    """Every network's zone; `authority` says whether a name is the fabric's to answer."""

    domain: str  # normalised, e.g. "qnf.local."
    zones: Mapping[str, Zone]

    def zone(self, network: str) -> Zone | None:
        return self.zones.get(network)

    def authoritative(self, name: str) -> bool:
        """Names under the fabric domain, and reverse names of fabric addresses, are ours."""
        return name == self.domain or name.endswith("." + self.domain)


def build(
    networks: Iterable[Network], endpoints: Iterable[Endpoint], domain: str, services: Iterable[Service] = ()
) -> RecordStore:
    """A snapshot of every zone from the networks, endpoints and services in KV."""
    domain = normalise(domain)
    per_net: dict[str, dict[tuple[str, int], list[str]]] = {}
    suffixes = {n.name: f"{n.name}.{domain}" for n in networks}
    endpoints = list(endpoints)
    for svc in services:
        if svc.network not in suffixes:
            continue
        records = per_net.setdefault(svc.network, {})
        fqdn = f"{svc.name}.{suffixes[svc.network]}".lower()
        for ep in endpoints:
            if ep.network != svc.network or not matches(svc.endpoint_selector, ep.labels):
                continue
            target = f"{ep.name}.{suffixes[ep.network]}".lower()
            for iface in ep.addresses:
                records.setdefault((fqdn, A if iface.version == 4 else AAAA), []).append(str(iface.ip))
            for port in svc.ports:
                srv = f"_{port.name}._{port.protocol.lower()}.{fqdn}"
                records.setdefault((srv, SRV_TYPE), []).append(f"0 10 {port.port} {target}")
    for ep in endpoints:
        if ep.network not in suffixes:
            continue
        records = per_net.setdefault(ep.network, {})
        fqdn = f"{ep.name}.{suffixes[ep.network]}".lower()
        for iface in ep.addresses:
            rtype = A if iface.version == 4 else AAAA
            records.setdefault((fqdn, rtype), []).append(str(iface.ip))
            records.setdefault((reverse_name(iface.ip), PTR), []).append(fqdn)
    zones = {}
    for name, suffix in suffixes.items():
        zone_records = {k: tuple(sorted(set(v), key=_sort_key)) for k, v in per_net.get(name, {}).items()}
        zones[name] = Zone(name, suffix, zone_records, frozenset(k[0] for k in zone_records))
    return RecordStore(domain, zones)


def _sort_key(value: str) -> tuple[int, str]:
    try:
        return (int(ip_address(value)), value)
    except ValueError:
        return (0, value)


NOERROR: Final = 0
NXDOMAIN: Final = 3
REFUSED: Final = 5


@dataclass(frozen=True)
class Answer:
    """What the store says about one question: rcode and (name, rtype, rdata) records.

    `forward` is True when the name is not the fabric's: the upstream resolvers answer it.
    """

    rcode: int
    records: tuple[tuple[str, int, str], ...] = ()
    forward: bool = False


def resolve(
    store: RecordStore, network: str, name: str, rtype: int, visible: frozenset[str] | None = None
) -> Answer:
    """Answer `name`/`rtype` for a client on `network`; never raises for unknown names.

    With `visible` (policy-scoped networks: the addresses the client may reach), records that
    lead to other addresses are left out, and a name left with none does not exist for it.
    """
    name = normalise(name)
    reverse = name.endswith(".in-addr.arpa.") or name.endswith(".ip6.arpa.")
    zone = store.zone(network)
    if zone is None:
        return Answer(REFUSED)
    if not store.authoritative(name) and not (reverse and zone.exists(name)):
        if reverse and _fabric_reverse(store, name):
            return Answer(NXDOMAIN)  # another network's address: not this client's to see
        return Answer(NOERROR, forward=True)
    if not zone.exists(name):
        return Answer(NXDOMAIN)
    if visible is not None and not any(
        _shown(zone, t, r, visible) for t in _TYPES for r in zone.lookup(name, t)
    ):
        return Answer(NXDOMAIN)
    types = (A, AAAA) if rtype == 255 else (rtype,)  # ANY: the addresses, as RFC 8482 allows
    return Answer(
        NOERROR,
        tuple(
            (name, t, r)
            for t in types
            for r in zone.lookup(name, t)
            if visible is None or _shown(zone, t, r, visible)
        ),
    )


_TYPES: Final = (A, AAAA, PTR, SRV_TYPE)


def _shown(zone: Zone, rtype: int, rdata: str, visible: frozenset[str]) -> bool:
    """Whether a record leads only where the client may go: an address it may reach, or a name
    (PTR, SRV target) with such an address."""
    if rtype in (A, AAAA):
        return rdata in visible
    target = rdata if rtype == PTR else rdata.rsplit(" ", 1)[-1]
    return any(a in visible for t in (A, AAAA) for a in zone.lookup(target, t))


def _fabric_reverse(store: RecordStore, name: str) -> bool:
    return any(z.exists(name) for z in store.zones.values())
