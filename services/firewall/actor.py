"""The firewall actor: policy CRUD and explain on the bus, and the node's nftables reconciler.

Handler table (see `endpoints()`), all cluster commands (queue group "firewall"):

    qnf.v1.cmd.firewall.policy.create|get|list|update|delete|import|explain|wait
    qnf.v1.node.<node>.firewall.status|endpoint.enforce|policy.enforced

Acks are node replies, not events: `endpoint.enforce` (vnet's start gate) and `policy.enforced`
answer once this node's kernel enforces the asked revision, so a waiter learns it from the one
agent it asks without scanning a stream. `policy.wait` asks the agent of every node that hosts
endpoints (those must enforce every policy) and names those that did not answer in time. Each
change also starts a tracker that does the same and records the change-to-last-ack time.

Intent and realisation are apart: watchers keep the desired state (networks, endpoints,
policies from KV) and bump a revision; one reconciler task compiles the latest revision and
applies it, as element deltas when the structure is unchanged, as one full transaction
otherwise. A failed transaction leaves the previous ruleset in force and is retried with capped
backoff; a periodic check re-applies everything if the kernel drifted.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import yaml
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from libs.common.bus import Endpoint as BusEndpoint
from libs.common.errors import Conflict, InvalidRequest, NotFound, PolicyRejected, QnfError, Unavailable
from libs.common.ids import node_subject
from libs.common.kv import Change, TypedKV
from libs.common.messages import (
    ConnectionsCut,
    Empty,
    Endpoint,
    EndpointEnforce,
    Enforced,
    FlowDenied,
    FlowQuery,
    Message,
    Network,
    Policy,
    PolicyFilter,
    PolicyList,
    PolicyRef,
    PolicyRemoved,
    PolicySpec,
    PolicyWait,
    PolicyWaitResult,
    PolicyYaml,
    Reach,
    Reachable,
    Verdict,
)
from libs.common.metrics import LATENCY_BUCKETS
from libs.common.reconcile import reconcile_forever
from libs.common.service import Context
from services.firewall.adapters.conntrack import ConntrackTable
from services.firewall.adapters.nflog import Logged, NflogReader
from services.firewall.adapters.nft import Nft
from services.firewall.core import k8s
from services.firewall.core.compiler import (
    LOG_PREFIX,
    Compiled,
)
from services.firewall.core.compiler import delta as _delta
from services.firewall.core.explain import explain, reaches
from services.firewall.core.incremental import Incremental
from services.firewall.core.keys import policy_key, ref_key
from services.firewall.core.model import Model, build
from services.firewall.core.revoke import PROTOCOL_NAMES, flows_to_cut
from services.firewall.core.validate import validate

log = logging.getLogger("qnf.firewall")

CONVERGENCE_TRACK_S = 60.0  # a change not acked everywhere by then counts as incomplete
CUT_EVENTS_MAX = 100  # per change: every cut is counted, the first ones are also events


class SyncStatus(Message):
    """Node command `firewall.status`: what this node's firewall knows and whether it is applied."""

    node: str
    policies: int
    endpoints: int
    networks: int
    in_sync: bool


class PolicyEvent(Message):
    """Events `qnf.v1.evt.firewall.policy.created|updated|deleted`."""

    policy: Policy


class FirewallActor:
    """Owns the desired state of this node's firewall and the policy store."""

    def __init__(
        self,
        ctx: Context,
        *,
        policies: TypedKV[Policy],
        networks: TypedKV[Network],
        endpoints: TypedKV[Endpoint],
        nft: Nft,
        conntrack: ConntrackTable | None = None,
        denied_log: NflogReader | None = None,
    ) -> None:
        self._bus = ctx.bus
        self._node = ctx.settings.node
        self._drift_check_s = ctx.settings.drift_check_s
        self._policies_kv = policies
        self._networks_kv = networks
        self._endpoints_kv = endpoints
        self._nft = nft
        self._conntrack = conntrack
        self._denied_log = denied_log
        self._by_address: tuple[int, dict[Any, Endpoint]] = (-2, {})
        self._inc = Incremental(self._node)
        self._dirty_endpoints: dict[str, Endpoint | None] = {}
        self._dirty_policies: dict[str, Policy | None] = {}
        self._models: dict[str | None, tuple[int, Model]] = {}  # node -> (revision, model), see model()
        self._structural = True
        self.known_networks: dict[str, Network] = {}
        self.known_endpoints: dict[str, Endpoint] = {}
        self.known_policies: dict[str, Policy] = {}
        self._revision = 0
        self._applied_revision = -1
        self._applied: Compiled | None = None
        self._changed = asyncio.Event()
        # Revisions seen by the watches, and those the kernel enforces (set after each apply).
        self._policy_seen = 0
        self._endpoint_seen: dict[str, int] = {}
        self._policy_enforced = 0
        self._endpoint_enforced: dict[str, int] = {}
        self._applied_signal = asyncio.Event()
        self._synced: dict[str, asyncio.Event] = {b: asyncio.Event() for b in ("net", "ep", "pol")}
        self._tasks: list[asyncio.Task[None]] = []
        r = ctx.registry
        self._apply_seconds = Histogram(
            "qnf_firewall_apply_seconds",
            "Time to apply a compiled ruleset",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._elements = Gauge("qnf_firewall_set_elements", "Set elements in force", registry=r)
        self._rules = Gauge("qnf_firewall_rules", "Rules in force", registry=r)
        self._convergence = Histogram(
            "qnf_firewall_convergence_seconds",
            "Time from a policy change to the last ack of every node that must enforce it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._unconverged = Counter(
            "qnf_firewall_convergence_incomplete_total",
            f"Policy changes not acked by every node within {CONVERGENCE_TRACK_S:g} s",
            registry=r,
        )
        self._trackers: set[asyncio.Task[None]] = set()
        self._denied_events = Counter(
            "qnf_firewall_denied_flow_events_total",
            "Denied flows the kernel logged (rate-limited per endpoint) and this agent published",
            ["direction"],
            registry=r,
        )
        r.register(_KernelCounters(self))
        self._cuts = Counter(
            "qnf_firewall_connections_cut_total",
            "Established flows cut because a change denies them",
            registry=r,
        )

    def endpoints(self) -> list[BusEndpoint[Any, Any]]:
        def policy_key_of(_: Message) -> str:
            return "policies"

        return [
            BusEndpoint("policy.create", PolicySpec, Policy, self.create_policy, key=policy_key_of),
            BusEndpoint("policy.get", PolicyRef, Policy, self.get_policy, key=lambda r: "read"),
            BusEndpoint("policy.list", PolicyFilter, PolicyList, self.list_policies, key=lambda r: "read"),
            BusEndpoint("policy.update", PolicySpec, Policy, self.update_policy, key=policy_key_of),
            BusEndpoint("policy.delete", PolicyRef, PolicyRemoved, self.delete_policy, key=policy_key_of),
            BusEndpoint("policy.import", PolicyYaml, Policy, self.import_policy, key=policy_key_of),
            BusEndpoint("policy.explain", FlowQuery, Verdict, self.explain, key=lambda r: "read"),
            BusEndpoint("policy.reachable", Reach, Reachable, self.reachable, key=lambda r: "read"),
            BusEndpoint("policy.wait", PolicyWait, PolicyWaitResult, self.wait_policy, key=_unique()),
            BusEndpoint("status", Empty, SyncStatus, self.status, scope="node", key=lambda r: "read"),
            # Waiters must not queue behind each other: each gets a mailbox of its own.
            BusEndpoint(
                "endpoint.enforce",
                EndpointEnforce,
                Enforced,
                self.enforce_endpoint,
                scope="node",
                key=_unique(),
            ),
            BusEndpoint(
                "policy.enforced", PolicyWait, Enforced, self.policy_enforced, scope="node", key=_unique()
            ),
        ]

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow(self._networks_kv, self.known_networks, "net")),
            asyncio.create_task(self._follow(self._endpoints_kv, self.known_endpoints, "ep")),
            asyncio.create_task(self._follow(self._policies_kv, self.known_policies, "pol")),
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self._synced.values())), 30)
        await self.reconcile_once()
        reconciler = reconcile_forever(
            self._changed,
            self.reconcile_once,
            self._check_drift,
            drift_s=self._drift_check_s,
            failed=self._compile_everything_next,
            log=log,
            what="the firewall",
        )
        self._tasks.append(asyncio.create_task(reconciler))
        if self._denied_log is not None:
            loop = asyncio.get_running_loop()
            self._denied_log.start(lambda logged: loop.call_soon_threadsafe(self._on_denied, logged))

    async def stop(self) -> None:
        for task in [*self._tasks, *self._trackers]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._trackers, return_exceptions=True)
        if self._denied_log is not None:
            self._denied_log.close()
        await self._nft.close()
        if self._conntrack is not None:
            await self._conntrack.close()

    # ------------------------------------------------------------------ desired state

    def _follow(self, kv: TypedKV[Any], into: dict[str, Any], name: str) -> Coroutine[Any, Any, None]:
        async def changed(change: Change[Any]) -> None:
            # What the last compile saw of this endpoint or policy, for the incremental path.
            if name == "ep":
                self._dirty_endpoints.setdefault(change.key, into.get(change.key))
                self._endpoint_seen[change.key] = change.revision
            elif name == "pol":
                self._dirty_policies.setdefault(change.key, into.get(change.key))
                self._policy_seen = max(self._policy_seen, change.revision)
            else:
                self._structural = True
            if change.value is None:
                into.pop(change.key, None)
            else:
                into[change.key] = change.value
            self._revision += 1
            self._changed.set()

        return kv.follow(changed, self._synced[name], restarted=self._compile_everything_next)

    def model(self, *, node: str | None) -> Model:
        """The grant model of the desired state, built once per revision of it (explain,
        reachable and revocation ask often; at 10,000 endpoints a build costs ~0.2 s)."""
        cached = self._models.get(node)
        if cached is not None and cached[0] == self._revision:
            return cached[1]
        model = build(
            list(self.known_networks.values()),
            list(self.known_endpoints.values()),
            list(self.known_policies.values()),
            node=node,
        )
        self._models[node] = (self._revision, model)
        return model

    # ------------------------------------------------------------------ realisation

    def _compile_everything_next(self) -> None:
        # After a failed step (which may have left state half-updated) or a restarted watch (whose
        # replay is no change list), the incremental path cannot be trusted: compile it all.
        self._structural = True

    async def reconcile_once(self) -> bool:
        """Compile the latest desired state and apply it; False if it was already applied."""
        self._changed.clear()
        revision = self._revision
        if revision == self._applied_revision and self._applied is not None:
            self._enforced(self._policy_seen, dict(self._endpoint_seen))
            return False
        policy_seen, endpoint_seen = self._policy_seen, dict(self._endpoint_seen)
        dirty, structural = self._dirty_endpoints, self._structural
        dirty_policies = self._dirty_policies
        self._dirty_endpoints, self._dirty_policies, self._structural = {}, {}, False
        touched = [p for p in dirty_policies.values() if p is not None] + [
            self.known_policies[k] for k in dirty_policies if k in self.known_policies
        ]
        started = time.perf_counter()
        model: Model | None = None  # the full compile's, when it ran
        revoke = False
        previous = self._applied
        if (
            structural
            or previous is None
            or previous is not self._inc.compiled
            or any(p.tier != "normal" for p in touched)  # the admin tier is the base: compile it all
        ):
            # Networks or policies changed (or the kernel is not known to hold the last output):
            # the reference compile of everything, applied as a delta when the base is the same.
            compiled = self._inc.full(
                list(self.known_networks.values()),
                list(self.known_endpoints.values()),
                list(self.known_policies.values()),
            )
            model = self._inc.model
            revoke = True
            # The ruleset lives until the next full compile and holds no cycles: keep the
            # collector from walking its 10^5 objects in the middle of an endpoint change.
            gc.freeze()
            if previous is None or previous.structure_digest() != compiled.structure_digest():
                await self._nft.apply(compiled.full())
                kind = "full"
            else:
                commands = _delta(previous, compiled)
                if commands:
                    await self._nft.apply(commands)
                kind = "delta"
        else:
            # Only endpoints changed: recompute what they touch, apply one small batch.
            keys: set[tuple[str, str]] = set()
            edits: dict[tuple[str, str], tuple[list[Any], list[Any]]] = {}
            relabelled = False
            compiled = previous
            for eid, old in dirty.items():
                new = self.known_endpoints.get(eid)
                relabelled |= old is not None and new is not None and old.labels != new.labels
                compiled, changed, edited = self._inc.change(old, new)
                keys |= changed
                for key, (gone, came) in edited.items():
                    before = edits.get(key, ([], []))
                    edits[key] = (before[0] + gone, before[1] + came)
            if touched:
                # Normal-tier policies: only the local groups they select are recomputed.
                changed_policies = self._inc.policies_changed(list(self.known_policies.values()), touched)
                assert changed_policies is not None  # admin-tier changes took the full path above
                compiled, changed, edited = changed_policies
                keys |= changed
                for key, (gone, came) in edited.items():
                    before = edits.get(key, ([], []))
                    edits[key] = (before[0] + gone, before[1] + came)
            commands = _delta(previous, compiled, keys, edits)
            if commands:
                await self._nft.apply(commands)
            kind = "policy" if touched else "endpoint"
            if relabelled or touched:  # flows may be denied now: judge the established ones
                revoke = True
        self._apply_seconds.labels(kind).observe(time.perf_counter() - started)
        self._applied = compiled
        self._applied_revision = revision
        # New flows are enforced from here: ack first, then cut what the change denies of the
        # established ones (conntrack would let them pass), which takes a model of the world.
        self._enforced(policy_seen, endpoint_seen)
        if revoke:
            await asyncio.sleep(0)  # let the acks go out before the revocation's work
            await self._revoke(model, policy_seen)
        self._elements.set(sum(len(v) for v in compiled.elements.values()))
        self._rules.set(sum(1 for c in compiled.structure if "rule" in c.get("add", {})))
        return True

    async def _revoke(self, model: Model | None, policy_revision: int) -> None:
        """Cut the established flows the new ruleset denies (conntrack would let them pass).

        `model`: the full compile's if it ran; else one is built, only if any flow is tracked."""
        if self._conntrack is None:
            return
        try:
            tracked = await self._conntrack.flows()
            # Only flows with a fabric endpoint of this node at one end are the firewall's (not,
            # e.g., the node's own loopback connections): without any, no model is needed.
            local = {a.ip for e in self.known_endpoints.values() if e.node == self._node for a in e.addresses}
            tracked = [(f, h) for f, h in tracked if f.source in local or f.destination in local]
            if not tracked:
                return
            if model is None:
                model = self.model(node=self._node)
            doomed = set(flows_to_cut(model, list(self.known_policies.values()), (f for f, _ in tracked)))
            if not doomed:
                return
            cut = await self._conntrack.delete([h for f, h in tracked if f in doomed])
        except QnfError as exc:
            log.error("revoking established flows failed: %s", exc)
            return
        self._cuts.inc(cut)
        now = int(time.time() * 1000)
        for flow in sorted(doomed)[:CUT_EVENTS_MAX]:
            event = ConnectionsCut(
                node=self._node,
                source=flow.source,
                destination=flow.destination,
                protocol=PROTOCOL_NAMES.get(flow.proto, str(flow.proto)),
                port=flow.port,
                policy_revision=policy_revision,
                ts_ms=now,
            )
            self._bus.emit("connection.cut", event)

    def _on_denied(self, logged: Logged) -> None:
        """A denied packet the kernel logged: publish it, named by the rule that dropped it."""
        if self._applied is None or not logged.prefix.startswith(LOG_PREFIX):
            return
        info = self._applied.counters.get(logged.prefix[len(LOG_PREFIX) :].strip())
        if info is None:
            return
        if self._by_address[0] != self._applied_revision:
            self._by_address = (
                self._applied_revision,
                {a.ip: e for e in self.known_endpoints.values() for a in e.addresses},
            )
        by_address = self._by_address[1]
        src, dst = by_address.get(logged.source), by_address.get(logged.destination)
        local = dst if info.direction == "ingress" else src
        event = FlowDenied(
            node=self._node,
            source=logged.source,
            destination=logged.destination,
            source_identity=src.identity if src else None,
            destination_identity=dst.identity if dst else None,
            network=info.network or (local.network if local else None),
            protocol=PROTOCOL_NAMES.get(logged.proto, str(logged.proto)),
            port=logged.port,
            direction=info.direction if info.direction in ("ingress", "egress") else None,
            policy=info.policy,
            rule=f"{info.policy}/{info.rule}" if info.rule else info.policy,
            ts_ms=int(time.time() * 1000),
        )
        self._denied_events.labels(info.direction).inc()
        self._bus.emit("flow.denied", event)

    def _enforced(self, policy_revision: int, endpoints: dict[str, int]) -> None:
        """The kernel now enforces these revisions: wake every waiter to look again."""
        self._policy_enforced = max(self._policy_enforced, policy_revision)
        self._endpoint_enforced = endpoints
        self._applied_signal.set()
        self._applied_signal = asyncio.Event()

    async def _until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until `done()` holds after some apply, at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._applied_signal.wait(), left)
            except TimeoutError:
                return done()
        return True

    async def _check_drift(self) -> None:
        if self._applied is None:
            return
        if await self._nft.unchanged():
            return  # nobody committed to nf_tables here since our last apply: nothing drifted
        applied = self._applied
        counts = await self._nft.element_counts()
        if applied is not self._applied:
            return  # we applied meanwhile (the listing runs beside applies): look again next time
        want = {k: len(v) for k, v in applied.elements.items()}
        if counts is None or any(counts.get(k, -1) != n for k, n in want.items()):
            log.warning("the kernel drifted from the compiled firewall; re-applying it whole")
            self._applied = None
            self._changed.set()
        else:
            self._nft.checked()

    # ------------------------------------------------------------------ handlers

    def _check(self, spec: PolicySpec) -> None:
        validate(spec, set(self.known_networks))

    async def create_policy(self, spec: PolicySpec) -> Policy:
        self._check(spec)
        key = policy_key(spec)
        existing = await self._policies_kv.get(key)
        if existing is not None:
            if (
                PolicySpec.model_validate(existing.value.model_dump(exclude={"revision", "created_ms"}))
                == spec
            ):
                return existing.value.model_copy(update={"revision": existing.revision})
            raise Conflict(f"policy {spec.name} exists with a different spec")
        policy = Policy(**spec.model_dump(), created_ms=int(time.time() * 1000))
        revision = await self._policies_kv.create(key, policy)
        self._track(revision)
        stored = policy.model_copy(update={"revision": revision})
        self._bus.emit("policy.created", PolicyEvent(policy=stored))
        return stored

    async def update_policy(self, spec: PolicySpec) -> Policy:
        self._check(spec)
        key = policy_key(spec)
        existing = await self._policies_kv.get(key)
        if existing is None:
            raise NotFound(f"policy {spec.name} does not exist")
        policy = Policy(**spec.model_dump(), created_ms=existing.value.created_ms)
        revision = await self._policies_kv.update(key, policy, existing.revision)
        self._track(revision)
        stored = policy.model_copy(update={"revision": revision})
        self._bus.emit("policy.updated", PolicyEvent(policy=stored))
        return stored

    async def get_policy(self, ref: PolicyRef) -> Policy:
        record = await self._policies_kv.get(ref_key(ref.name, ref.network))
        if record is None:
            raise NotFound(f"policy {ref.name} does not exist")
        return record.value.model_copy(update={"revision": record.revision})

    async def list_policies(self, flt: PolicyFilter) -> PolicyList:
        records = await self._policies_kv.items()
        return PolicyList(
            policies=[
                r.value.model_copy(update={"revision": r.revision})
                for r in records
                if flt.network is None or r.value.network == flt.network
            ]
        )

    async def delete_policy(self, ref: PolicyRef) -> PolicyRemoved:
        key = ref_key(ref.name, ref.network)
        record = await self._policies_kv.get(key)
        if record is None:
            return PolicyRemoved(existed=False)
        await self._policies_kv.delete(key, record.revision)
        # The delete marker's own revision is not returned; the bucket's latest is at or after it.
        revision = await self._policies_kv.last_revision()
        self._track(revision)
        self._bus.emit("policy.deleted", PolicyEvent(policy=record.value))
        return PolicyRemoved(existed=True, revision=revision)

    async def import_policy(self, req: PolicyYaml) -> Policy:
        try:
            doc = yaml.safe_load(req.document)
        except yaml.YAMLError as exc:
            raise PolicyRejected(f"document: not valid YAML: {str(exc).splitlines()[0]}") from exc
        spec = k8s.translate(doc, default_network=req.network)
        if await self._policies_kv.get(policy_key(spec)) is not None:
            return await self.update_policy(spec)
        return await self.create_policy(spec)

    async def status(self, _: Empty) -> SyncStatus:
        return SyncStatus(
            node=self._node,
            policies=len(self.known_policies),
            endpoints=len(self.known_endpoints),
            networks=len(self.known_networks),
            in_sync=self._applied is not None and self._applied_revision == self._revision,
        )

    async def explain(self, query: FlowQuery) -> Verdict:
        return explain(self.model(node=None), query)

    async def reachable(self, query: Reach) -> Reachable:
        model = self.model(node=None)
        targets = [i.ip for e in self.known_endpoints.values() for i in e.addresses]
        return Reachable(
            source=query.source,
            destinations=sorted((t for t in targets if reaches(model, query.source, t)), key=str),
        )

    # ------------------------------------------------------------------ acks and convergence

    def _ack(self) -> Enforced:
        return Enforced(node=self._node, policy_revision=self._policy_enforced, ts_ms=int(time.time() * 1000))

    async def enforce_endpoint(self, req: EndpointEnforce) -> Enforced:
        """The start gate: reply once the endpoint's record at `revision` is in this kernel."""
        if not await self._until(
            lambda: self._endpoint_enforced.get(req.endpoint_id, 0) >= req.revision, req.timeout_s
        ):
            raise Unavailable(
                f"endpoint {req.endpoint_id} (revision {req.revision}) is not enforced on node "
                f"{self._node} after {req.timeout_s:g} s"
            )
        return self._ack()

    async def policy_enforced(self, req: PolicyWait) -> Enforced:
        """This node's ack of policy `revision`: the reply names what is enforced when it comes."""
        await self._until(lambda: self._policy_enforced >= req.revision, req.timeout_s)
        return self._ack()

    async def wait_policy(self, req: PolicyWait) -> PolicyWaitResult:
        latest = await self._policies_kv.last_revision()
        if req.revision > latest:
            raise InvalidRequest(
                f"revision: {req.revision} is not a policy revision (the latest is {latest})"
            )
        return await self._collect_acks(req.revision, req.timeout_s)

    def _must_enforce(self) -> list[str]:
        """Nodes whose agents must enforce every policy: this one and every node with endpoints."""
        return sorted({self._node} | {e.node for e in self.known_endpoints.values()})

    async def _collect_acks(self, revision: int, timeout: float) -> PolicyWaitResult:
        started = time.perf_counter()
        nodes = self._must_enforce()

        async def ask(node: str) -> bool:
            if node == self._node:
                return (
                    await self.policy_enforced(PolicyWait(revision=revision, timeout_s=timeout))
                ).policy_revision >= revision
            try:
                ack = await self._bus.request(
                    node_subject(node, "firewall", "policy.enforced"),
                    PolicyWait(revision=revision, timeout_s=timeout),
                    Enforced,
                    timeout=timeout + 1.0,
                    expect=lambda who: who.name == "firewall" and who.node == node,
                )
            except QnfError:
                return False  # stopped, unreachable or too slow: reported as pending
            return ack.policy_revision >= revision

        acked = await asyncio.gather(*(ask(n) for n in nodes))
        return PolicyWaitResult(
            revision=revision,
            complete=all(acked),
            acked=[n for n, ok in zip(nodes, acked, strict=True) if ok],
            pending=[n for n, ok in zip(nodes, acked, strict=True) if not ok],
            seconds=time.perf_counter() - started,
        )

    def _track(self, revision: int) -> None:
        """Record how long `revision` takes to be acked by every node (the convergence metric)."""

        async def track() -> None:
            result = await self._collect_acks(revision, CONVERGENCE_TRACK_S)
            if result.complete:
                self._convergence.observe(result.seconds)
            else:
                self._unconverged.inc()
                log.warning("policy revision %d not acked by %s", revision, ", ".join(result.pending))

        task = asyncio.create_task(track())
        self._trackers.add(task)
        task.add_done_callback(self._trackers.discard)


class _KernelCounters(Collector):
    """Per-policy and per-network packets and bytes, read from the kernel's named counters at
    scrape time. Labels are bounded by the policies and networks that exist."""

    def __init__(self, actor: FirewallActor) -> None:
        self._actor = actor

    def collect(self) -> Any:
        labels = ["verdict", "direction", "network", "policy"]
        packets = CounterMetricFamily(
            "qnf_firewall_packets", "New flows' packets by the rule that decided them", labels=labels
        )
        octets = CounterMetricFamily(
            "qnf_firewall_bytes", "New flows' bytes by the rule that decided them", labels=labels
        )
        applied = self._actor._applied
        if applied is None:
            return [packets, octets]
        sums: dict[tuple[str, str, str, str], list[int]] = {}
        for name, (n, size) in self._actor._nft.counters().items():
            info = applied.counters.get(name)
            if info is None:
                continue
            total = sums.setdefault((info.verdict, info.direction, info.network, info.policy), [0, 0])
            total[0] += n
            total[1] += size
        for key, (n, size) in sorted(sums.items()):
            packets.add_metric(list(key), n)
            octets.add_metric(list(key), size)
        return [packets, octets]


def _unique() -> Callable[[Message], str]:
    """A mailbox key per request, so that requests which wait never hold up one another."""
    counter = iter(range(1 << 62))
    return lambda _: f"w{next(counter)}"
