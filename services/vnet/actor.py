"""The vnet actor: networks (cluster-wide) and endpoints (on this node), and the reconciler.

Handler table (see `endpoints()`):

    qnf.v1.cmd.vnet.network.create|get|list|update|delete     any replica (queue group "vnet")
    qnf.v1.node.<node>.vnet.endpoint.add|remove|get|list      this node's agent

Endpoint handlers are keyed by (container, ifname): ADD and DEL of one container never overlap,
different containers proceed in parallel. Network handlers share one key: network changes are
serial per replica, and CAS on KV keeps replicas honest with each other.

ADD is a transaction: every step that changed something pushes its undo before the next step
runs, and any failure unwinds them in reverse. DEL treats everything already gone as success.
Its last step is the start gate: the node's firewall agent must confirm that the endpoint's rules
are in the kernel (`firewall.endpoint.enforce`) before ADD returns, so a workload never runs
inside a default-allow window; no confirmation in time unwinds the ADD.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import AsyncExitStack
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from libs.common.bus import Endpoint as BusEndpoint
from libs.common.bus import KeyedLocks, live_instances, validation_summary
from libs.common.errors import Conflict, Exhausted, InvalidRequest, NotFound, QnfError, Unavailable
from libs.common.ids import node_subject
from libs.common.messages import (
    Empty,
    Endpoint,
    EndpointAdd,
    EndpointEnforce,
    EndpointFilter,
    EndpointLabels,
    EndpointList,
    EndpointRef,
    EndpointRemove,
    Enforced,
    Lease,
    Message,
    Network,
    NetworkDelete,
    NetworkList,
    NetworkRef,
    NetworkSpec,
    NetworkUpdate,
    PortPublish,
    PublishedPort,
    Removed,
)
from libs.common.metrics import LATENCY_BUCKETS
from libs.common.service import Context
from services.vnet.adapters.cnisocket import CniSocket
from services.vnet.adapters.netlink import Dataplane
from services.vnet.adapters.store import AddressBook, Stores
from services.vnet.core import ipam
from services.vnet.core.names import (
    bridge_name,
    default_endpoint_name,
    endpoint_id,
    endpoint_mac,
    handoff_veth_name,
    host_veth_name,
)
from services.vnet.core.networks import apply_update, build_network, same_spec
from services.vnet.core.plan import bridge_plan, veth_plan

log = logging.getLogger("qnf.vnet")

RECONCILE_INTERVAL_S = 30.0
LEASE_GRACE_MS = 120_000  # a lease without an endpoint younger than this may be an ADD in flight
FIREWALL_GATE_S = 5.0  # how long ADD waits for the firewall to enforce a new endpoint


class ReconcileFix(Message):
    """Event `qnf.v1.evt.vnet.reconcile.fixed`: one thing the reconciler repaired."""

    node: str
    kind: str
    name: str


class EndpointEvent(Message):
    """Events `qnf.v1.evt.vnet.endpoint.added|removed`."""

    endpoint: Endpoint


class NetworkEvent(Message):
    """Events `qnf.v1.evt.vnet.network.created|updated|deleted`."""

    network: Network


class VnetMetrics:
    def __init__(self, ctx: Context) -> None:
        r = ctx.registry
        self.add_seconds = Histogram(
            "qnf_vnet_endpoint_add_seconds", "Endpoint ADD latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.remove_seconds = Histogram(
            "qnf_vnet_endpoint_remove_seconds", "Endpoint DEL latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.phase_seconds = Histogram(
            "qnf_vnet_endpoint_add_phase_seconds",
            "Endpoint ADD latency by phase",
            ["phase"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.allocated = Gauge("qnf_vnet_addresses_allocated", "Leased addresses", ["network"], registry=r)
        self.free = Gauge("qnf_vnet_addresses_free", "Addresses left to lease", ["network"], registry=r)
        self.fixes = Counter(
            "qnf_vnet_reconcile_fixes_total", "Repairs made by reconcile", ["kind"], registry=r
        )


class VnetActor:
    """Owns this node's view of networks, endpoints and leases."""

    def __init__(
        self, ctx: Context, stores: Stores, dataplane: Dataplane, *, cni_socket: bool = True
    ) -> None:
        self._bus = ctx.bus
        self._node = ctx.settings.node
        self._td = ctx.settings.trust_domain
        self._stores = stores
        self._dp = dataplane
        self._book = AddressBook(stores.leases)
        self._metrics = VnetMetrics(ctx)
        self._reconciler: asyncio.Task[None] | None = None
        self._instance = ctx.instance
        self._dns_domain = ctx.settings.dns_domain
        self._locks = KeyedLocks()
        run_dir = ctx.settings.state_dir / "run"
        self._pending_dir = run_dir / "cni-pending"
        self._cni = CniSocket(run_dir / "cni.sock", self.handle_cni) if cni_socket else None

    def endpoints(self) -> list[BusEndpoint[Any, Any]]:
        def network_key(_: Message) -> str:
            return "networks"

        def endpoint_key(req: EndpointAdd | EndpointRemove | EndpointRef) -> str:
            return endpoint_id(req.container_id, req.ifname)

        return [
            BusEndpoint("network.create", NetworkSpec, Network, self.create_network, key=network_key),
            BusEndpoint("network.get", NetworkRef, Network, self.get_network, key=lambda r: "read"),
            BusEndpoint("network.list", Empty, NetworkList, self.list_networks, key=lambda r: "read"),
            BusEndpoint("network.update", NetworkUpdate, Network, self.update_network, key=network_key),
            BusEndpoint("network.delete", NetworkDelete, Removed, self.delete_network, key=network_key),
            BusEndpoint(
                "endpoint.add", EndpointAdd, Endpoint, self.add_endpoint, scope="node", key=endpoint_key
            ),
            BusEndpoint(
                "endpoint.remove",
                EndpointRemove,
                Removed,
                self.remove_endpoint,
                scope="node",
                key=endpoint_key,
            ),
            BusEndpoint(
                "endpoint.labels", EndpointLabels, Endpoint, self.set_labels, scope="node", key=endpoint_key
            ),
            BusEndpoint(
                "endpoint.get", EndpointRef, Endpoint, self.get_endpoint, scope="node", key=lambda r: "read"
            ),
            BusEndpoint(
                "endpoint.list",
                EndpointFilter,
                EndpointList,
                self.list_endpoints,
                scope="node",
                key=lambda r: "read",
            ),
        ]

    async def start(self) -> None:
        await self._book.load()
        await self.reconcile_once()
        self._reconciler = asyncio.create_task(self._reconcile_loop())
        if self._cni is not None:
            await self._cni.start()

    async def stop(self) -> None:
        if self._cni is not None:
            await self._cni.stop()
        if self._reconciler is not None:
            self._reconciler.cancel()
        await self._dp.close()

    # ------------------------------------------------------------------ networks

    async def _network(self, name: str) -> Network:
        record = await self._stores.networks.get(name)
        if record is None:
            raise NotFound(f"network {name} does not exist")
        return record.value.model_copy(update={"revision": record.revision})

    async def create_network(self, spec: NetworkSpec) -> Network:
        current = await self._stores.networks.get(spec.name)
        if current is not None:
            if same_spec(current.value, spec):
                return current.value.model_copy(update={"revision": current.revision})  # a retried create
            raise Conflict(f"network {spec.name} exists with a different spec")
        existing = [r.value for r in await self._stores.networks.items()]
        network = build_network(spec, existing, now_ms=_now_ms())
        revision = await self._stores.networks.create(spec.name, network)
        # Two replicas may both have passed the overlap check; the later one backs out.
        for other in await self._stores.networks.items():
            if other.key != spec.name and other.revision < revision and _overlaps(other.value, network):
                await self._stores.networks.delete(spec.name, revision)
                raise Conflict(f"subnet overlaps network {other.key}, created concurrently")
        self._update_gauges(network)
        self._bus.emit("network.created", NetworkEvent(network=network))
        return network.model_copy(update={"revision": revision})

    async def get_network(self, ref: NetworkRef) -> Network:
        return await self._network(ref.name)

    async def list_networks(self, _: Empty) -> NetworkList:
        records = await self._stores.networks.items()
        return NetworkList(networks=[r.value.model_copy(update={"revision": r.revision}) for r in records])

    async def update_network(self, update: NetworkUpdate) -> Network:
        record = await self._stores.networks.get(update.name)
        if record is None:
            raise NotFound(f"network {update.name} does not exist")
        if update.revision is not None and update.revision != record.revision:
            raise Conflict(f"network {update.name} is at revision {record.revision}, not {update.revision}")
        network = apply_update(record.value, update)
        revision = await self._stores.networks.update(update.name, network, record.revision)
        self._bus.emit("network.updated", NetworkEvent(network=network))
        return network.model_copy(update={"revision": revision})

    async def delete_network(self, req: NetworkDelete) -> Removed:
        record = await self._stores.networks.get(req.name)
        if record is None:
            return Removed(existed=False)
        attached = [e.value for e in await self._stores.endpoints.items() if e.value.network == req.name]
        if attached and not req.force:
            raise Conflict(f"network {req.name} has {len(attached)} attached endpoints; delete them or force")
        for endpoint in attached:
            if endpoint.node == self._node:
                await self._detach(endpoint)
            else:
                await self._bus.request(
                    f"qnf.v1.node.{endpoint.node}.vnet.endpoint.remove",
                    EndpointRemove(container_id=endpoint.container_id, ifname=endpoint.ifname),
                    Removed,
                )
        for address, owner in list(self._book.used.get(req.name, {}).items()):
            await self._book.release(req.name, address, owner)
        await self._stores.networks.delete(req.name)
        self._book.forget_network(req.name)
        await self._dp.remove_bridge(record.value.bridge)
        self._forget_gauges(req.name)
        self._bus.emit("network.deleted", NetworkEvent(network=record.value))
        return Removed(existed=True)

    # ------------------------------------------------------------------ endpoints

    async def add_endpoint(self, req: EndpointAdd) -> Endpoint:
        async with self._locks.hold(endpoint_id(req.container_id, req.ifname)):
            endpoint = await self._add_endpoint(req)
        # Ports are published for every caller (CNI portMappings, the API) but a runtime that
        # moves the container end itself: Docker publishes at ProgramExternalConnectivity.
        if not req.handoff:
            await self._publish_ports(req, endpoint)
        return endpoint

    async def _add_endpoint(self, req: EndpointAdd) -> Endpoint:
        started = time.perf_counter()
        eid = endpoint_id(req.container_id, req.ifname)
        existing = await self._stores.endpoints.get(eid)
        if existing is not None:
            if existing.value.request_id == req.request_id:
                return existing.value  # the retry of a request that already succeeded
            raise Conflict(f"container {req.container_id} already has interface {req.ifname} attached")
        if not req.handoff and not os.path.exists(req.netns):
            raise InvalidRequest(f"network namespace {req.netns} does not exist")
        network = await self._network(req.network)
        requested = {a.version: a for a in req.ips}
        if len(requested) != len(req.ips):
            raise InvalidRequest("at most one requested address per family")
        if 6 in requested and network.subnet6 is None:
            raise InvalidRequest(f"network {network.name} has no IPv6 subnet")

        name = req.name or default_endpoint_name(req.container_id)
        async with AsyncExitStack() as undo:
            phase = time.perf_counter()
            addresses, gateways = [], []
            families: list[tuple[ipam.Subnet, ipam.Address]] = [(network.subnet, network.gateway)]
            if network.subnet6 is not None and network.gateway6 is not None:
                families.append((network.subnet6, network.gateway6))
            for subnet, gateway in families:
                address = await self._allocate(
                    network.name, subnet, gateway, eid, requested.get(subnet.version)
                )
                undo.push_async_callback(self._book.release, network.name, address, eid)
                addresses.append(ipam.interface(address, subnet))
                gateways.append(gateway)
            self._observe_phase("ipam", phase)

            endpoint = Endpoint(
                endpoint_id=eid,
                request_id=req.request_id,
                container_id=req.container_id,
                ifname=req.ifname,
                netns=req.netns,
                node=self._node,
                network=network.name,
                name=name,
                labels=req.labels,
                identity=f"spiffe://{self._td}/network/{network.name}/endpoint/{name}",
                mac=req.mac or endpoint_mac(eid),
                mtu=network.mtu,
                host_ifname=host_veth_name(eid),
                addresses=addresses,
                gateways=gateways,
                port_mappings=req.port_mappings,
                named_ports=req.named_ports,
                created_ms=_now_ms(),
                handoff_ifname=handoff_veth_name(eid) if req.handoff else None,
            )
            phase = time.perf_counter()
            await self._dp.ensure_bridge(bridge_plan(network))
            undo.push_async_callback(self._dp.remove_veth, endpoint.host_ifname)
            await self._dp.add_veth(veth_plan(network, endpoint))
            self._observe_phase("links", phase)

            phase = time.perf_counter()
            revision = await self._stores.endpoints.create(eid, endpoint)
            undo.push_async_callback(self._stores.endpoints.delete, eid)
            self._observe_phase("record", phase)

            phase = time.perf_counter()
            await self._firewall_gate(endpoint, revision)
            self._observe_phase("firewall", phase)
            undo.pop_all()  # committed: nothing to unwind from here on
        self._update_gauges(network)
        self._metrics.add_seconds.observe(time.perf_counter() - started)
        self._bus.emit("endpoint.added", EndpointEvent(endpoint=endpoint))
        return endpoint

    async def _firewall_gate(self, endpoint: Endpoint, revision: int) -> None:
        """Return once this node's firewall enforces `endpoint`; Unavailable if it does not in time."""
        try:
            await self._bus.request(
                node_subject(self._node, "firewall", "endpoint.enforce"),
                EndpointEnforce(
                    endpoint_id=endpoint.endpoint_id, revision=revision, timeout_s=FIREWALL_GATE_S
                ),
                Enforced,
                timeout=FIREWALL_GATE_S + 1.0,
                expect=lambda who: who.name == "firewall" and who.node == self._node,
            )
        except QnfError as exc:
            raise Unavailable(
                f"the firewall of node {self._node} did not confirm enforcing endpoint "
                f"{endpoint.endpoint_id} within {FIREWALL_GATE_S:g} s ({exc}); the add was undone"
            ) from exc

    async def _allocate(
        self,
        network: str,
        subnet: ipam.Subnet,
        gateway: ipam.Address,
        owner: str,
        requested: ipam.Address | None,
    ) -> ipam.Address:
        def lease(address: ipam.Address) -> Lease:
            return Lease(
                network=network,
                address=address,
                owner=owner,
                node=self._node,
                agent=self._instance,
                ts_ms=_now_ms(),
            )

        if requested is not None:
            ipam.check_static(subnet, gateway, requested, self._book.used[network])
            if not await self._book.claim(lease(requested)):
                raise Conflict(f"requested address {requested} is already allocated")
            return requested
        for attempt in range(2):
            used = self._book.used[network]
            last = self._book.last.get((network, subnet.version))
            for candidate in ipam.candidates(subnet, gateway, used, last):
                if await self._book.claim(lease(candidate)):
                    return candidate
            if attempt == 0:
                await self._book.load()  # another replica may have released addresses since
        raise Exhausted(f"no free address left in {subnet} of network {network}")

    async def remove_endpoint(self, req: EndpointRemove) -> Removed:
        async with self._locks.hold(endpoint_id(req.container_id, req.ifname)):
            return await self._remove_endpoint(req)

    async def _remove_endpoint(self, req: EndpointRemove) -> Removed:
        started = time.perf_counter()
        eid = endpoint_id(req.container_id, req.ifname)
        record = await self._stores.endpoints.get(eid)
        if record is None:
            # Nothing recorded, but an interrupted ADD may have left a veth or leases behind.
            await self._dp.remove_veth(host_veth_name(eid))
            for network, address in self._book.owned_by(eid):
                await self._book.release(network, address, eid)
            return Removed(existed=False)
        await self._detach(record.value, revision=record.revision)
        self._metrics.remove_seconds.observe(time.perf_counter() - started)
        return Removed(existed=True)

    async def _detach(self, endpoint: Endpoint, revision: int | None = None) -> None:
        await self._dp.remove_veth(endpoint.host_ifname)
        for address in endpoint.addresses:
            await self._book.release(endpoint.network, address.ip, endpoint.endpoint_id)
        await self._stores.endpoints.delete(endpoint.endpoint_id, revision)
        try:
            self._update_gauges(await self._network(endpoint.network))
        except NotFound:
            pass
        self._bus.emit("endpoint.removed", EndpointEvent(endpoint=endpoint))

    async def set_labels(self, req: EndpointLabels) -> Endpoint:
        """Relabel an endpoint (compare-and-set on its record); the firewall and DNS follow the record."""
        async with self._locks.hold(endpoint_id(req.container_id, req.ifname)):
            record = await self._stores.endpoints.get(endpoint_id(req.container_id, req.ifname))
            if record is None:
                raise NotFound(f"no endpoint {req.ifname} for container {req.container_id}")
            endpoint = record.value.model_copy(update={"labels": req.labels})
            await self._stores.endpoints.update(endpoint.endpoint_id, endpoint, record.revision)
        self._bus.emit("endpoint.updated", EndpointEvent(endpoint=endpoint))
        return endpoint

    async def get_endpoint(self, ref: EndpointRef) -> Endpoint:
        record = await self._stores.endpoints.get(endpoint_id(ref.container_id, ref.ifname))
        if record is None:
            raise NotFound(f"no endpoint {ref.ifname} for container {ref.container_id}")
        return record.value

    async def list_endpoints(self, flt: EndpointFilter) -> EndpointList:
        records = await self._stores.endpoints.items()
        return EndpointList(
            endpoints=[
                r.value
                for r in records
                if (flt.network is None or r.value.network == flt.network)
                and (flt.node is None or r.value.node == flt.node)
            ]
        )

    async def check_endpoint(self, ref: EndpointRef) -> Endpoint:
        """CNI CHECK: the record exists and the kernel still matches it."""
        endpoint = await self.get_endpoint(ref)
        plan = veth_plan(await self._network(endpoint.network), endpoint)
        if not await self._dp.veth_healthy(plan):
            raise InvalidRequest(f"host interface {endpoint.host_ifname} is missing or detached")
        if not await self._dp.container_healthy(plan):
            raise InvalidRequest(
                f"{endpoint.ifname} in {endpoint.netns} does not match the recorded endpoint"
            )
        return endpoint

    async def collect_garbage(self, network: str, valid: set[tuple[str, str]]) -> list[str]:
        """CNI GC: detach this node's endpoints of `network` that the runtime no longer knows."""
        removed = []
        for record in await self._stores.endpoints.items():
            e = record.value
            if e.node == self._node and e.network == network and (e.container_id, e.ifname) not in valid:
                await self.remove_endpoint(EndpointRemove(container_id=e.container_id, ifname=e.ifname))
                removed.append(e.endpoint_id)
        return removed

    # ------------------------------------------------------------------ the CNI socket

    async def handle_cni(self, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request from the CNI shim: the same handlers as the bus, the same error codes."""
        try:
            if verb == "add":
                endpoint = await self.add_endpoint(EndpointAdd.model_validate(body))
                return {"ok": await self._cni_view(endpoint)}
            if verb == "del":
                removed = await self.remove_endpoint(EndpointRemove.model_validate(body))
                return {"ok": removed.model_dump()}
            if verb == "check":
                endpoint = await self.check_endpoint(EndpointRef.model_validate(body))
                return {"ok": await self._cni_view(endpoint)}
            if verb == "gc":
                valid = {(str(a["container_id"]), str(a["ifname"])) for a in body.get("valid", [])}
                return {"ok": {"removed": await self.collect_garbage(str(body.get("network", "")), valid)}}
            if verb == "status":
                if not self._bus.nc.is_connected:
                    raise Unavailable("the agent is not connected to the bus")
                await self._network(str(body.get("network", "")))
                return {"ok": {"ready": True}}
            raise InvalidRequest(f"unknown verb {verb!r}")
        except ValidationError as exc:
            return {"error": {"code": "invalid", "message": validation_summary(exc)}}
        except QnfError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        except Exception:
            log.exception("CNI %s failed", verb)
            return {"error": {"code": "internal", "message": "internal error"}}

    async def _publish_ports(self, request: EndpointAdd, endpoint: Endpoint) -> None:
        """Publish the endpoint's port mappings through the node's NAT agent; a refusal undoes the ADD.

        The NAT agent owns published ports, so CNI and API mappings meet one conflict rule.
        """
        subject = node_subject(self._node, "nat", "port.publish")
        try:
            for mapping in endpoint.port_mappings:
                publish = PortPublish(
                    **mapping.model_dump(), container_id=endpoint.container_id, ifname=endpoint.ifname
                )
                await self._bus.request(subject, publish, PublishedPort)
        except QnfError:
            await self.remove_endpoint(
                EndpointRemove(container_id=request.container_id, ifname=request.ifname, netns=request.netns)
            )
            raise

    async def _cni_view(self, endpoint: Endpoint) -> dict[str, Any]:
        view: dict[str, Any] = endpoint.model_dump(mode="json")
        view.update(bridge=bridge_name(endpoint.network), dns_domain=self._dns_domain)
        return view

    async def _drain_pending_deletes(self) -> int:
        """Finish DELs the shim recorded while this agent was unreachable."""
        done = 0
        for path in sorted(self._pending_dir.glob("*.json")) if self._pending_dir.is_dir() else []:
            try:
                request = EndpointRemove.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                log.warning("dropping unreadable pending delete %s: %s", path.name, exc)
                path.unlink(missing_ok=True)
                continue
            await self.remove_endpoint(request)
            path.unlink(missing_ok=True)
            done += 1
        return done

    # ------------------------------------------------------------------ reconcile

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL_S)
            try:
                await self.reconcile_once()
            except QnfError as exc:
                log.warning("reconcile failed: %s", exc)
            except Exception:
                log.exception("reconcile failed")

    async def reconcile_once(self) -> list[tuple[str, str]]:
        """Make the kernel and the leases match KV; return the fixes made as (kind, name)."""
        fixes: list[tuple[str, str]] = []
        if drained := await self._drain_pending_deletes():
            fixes.append(("pending_delete", str(drained)))
        networks = {r.key: r.value for r in await self._stores.networks.items()}
        mine = [r for r in await self._stores.endpoints.items() if r.value.node == self._node]
        links = await self._dp.owned_links()

        for record in mine:
            endpoint = record.value
            network = networks.get(endpoint.network)
            # A handed-off container end lives where only the runtime knows: the pair is stale
            # once its host end is gone, and cannot be rebuilt from here.
            handed_off = endpoint.handoff_ifname is not None
            if handed_off:
                gone = endpoint.host_ifname not in links.veths
            else:
                gone = not os.path.exists(endpoint.netns)
            if network is None or gone:
                await self._detach(endpoint, record.revision)
                fixes.append(("stale_endpoint", endpoint.endpoint_id))
                continue
            if handed_off:
                continue
            plan = veth_plan(network, endpoint)
            if not await self._dp.veth_healthy(plan):
                await self._dp.ensure_bridge(bridge_plan(network))
                await self._dp.remove_veth(endpoint.host_ifname)
                await self._dp.add_veth(plan)
                fixes.append(("recreated_veth", endpoint.host_ifname))

        wanted_veths = {r.value.host_ifname for r in mine if r.value.network in networks}
        for veth in sorted(links.veths - wanted_veths):
            await self._dp.remove_veth(veth)
            fixes.append(("leaked_veth", veth))
        wanted_bridges = {n.bridge for n in networks.values()}
        for bridge in sorted(links.bridges - wanted_bridges):
            await self._dp.remove_bridge(bridge)
            fixes.append(("leaked_bridge", bridge))

        # Leases of this node that no endpoint holds: an ADD that died between claim and record.
        # A lease claimed by a live agent may be an ADD in flight: it gets a grace period.
        await self._book.load()
        holders = {r.value.endpoint_id for r in await self._stores.endpoints.items()}
        live = await live_instances(self._bus, "vnet") | {self._instance}
        horizon = _now_ms() - LEASE_GRACE_MS
        for lease_record in await self._stores.leases.items():
            lease = lease_record.value
            if lease.node != self._node or lease.owner in holders:
                continue
            if lease.agent not in live or lease.ts_ms < horizon or lease.network not in networks:
                await self._book.release(lease.network, lease.address, lease.owner)
                fixes.append(("leaked_lease", f"{lease.network}/{lease.address}"))

        for kind, name in fixes:
            self._metrics.fixes.labels(kind).inc()
            log.info("reconcile fixed %s %s", kind, name)
            self._bus.emit("reconcile.fixed", ReconcileFix(node=self._node, kind=kind, name=name))
        for network in networks.values():
            self._update_gauges(network)
        return fixes

    # ------------------------------------------------------------------ helpers

    def _observe_phase(self, phase: str, since: float) -> None:
        self._metrics.phase_seconds.labels(phase).observe(time.perf_counter() - since)

    def _update_gauges(self, network: Network) -> None:
        used = sum(1 for a in self._book.used.get(network.name, {}) if a.version == 4)
        self._metrics.allocated.labels(network.name).set(used)
        self._metrics.free.labels(network.name).set(ipam.free_count(network.subnet, network.gateway, used))

    def _forget_gauges(self, network: str) -> None:
        for gauge in (self._metrics.allocated, self._metrics.free):
            try:
                gauge.remove(network)
            except KeyError:
                pass


def _overlaps(a: Network, b: Network) -> bool:
    if a.subnet.overlaps(b.subnet):
        return True
    return a.subnet6 is not None and b.subnet6 is not None and a.subnet6.overlaps(b.subnet6)


def _now_ms() -> int:
    return int(time.time() * 1000)
