"""One reconcile pass over the whole fleet: state in, actions out. Pure; the controller runs it, one pass at
a time, and carries out the actions.

The pass reads top to bottom as its steps, each a small function from what the steps before it found to a
small frozen result (and the writes and events it asks for):

0. `active`: workloads being deleted, and those in namespaces being deleted, are left out: they get no new
   pods, Services, ConfigMaps, statuses or events (their pods keep their devices until they are gone).
   `observed_in` (devices.py): what each node offers and what others hold there.
1. `find_losses`: which ComputeNodes' replicas must move now (deleted or cordoned ComputeNode, Node deleted
   or NotReady past the grace period), and when the next grace period ends.
2. `triage`: each replica in the pod ledger is kept, moved off a lost node (its pods force-deleted), marked
   for draining (cordoned, or NotReady within its grace: replaced first), replaced (inconsistent pods, or
   pods kube-scheduler would not bind within the grace: binding.py) or completed (missing ranks).
3. `step_workloads`: each workload's next step (workloads.py): replicas to add, to remove, a rolling-update
   surge.
4. `place_pending`: every pending replica of every workload in one engine pass (priority, then age), against
   a snapshot whose allocations are the ledger's — so two workloads never get the same devices; pods for
   what was placed; refused surges fall back to replace-in-place; refusals are reported.
5. `services`: the client Service of each workload and a headless Service per gang replica.
6. `workload_statuses`: each AgentWorkload's status (patched only where it changed) and its tokens/s
   autoscaler; then `invalid_workload_statuses` and `compute_node_statuses`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from gpufabric.api import labels
from gpufabric.api.agentworkload import AgentWorkload, ReplicaPlacement
from gpufabric.api.reasons import EventReason, EventType
from gpufabric.api.refs import Kind, ObjectRef
from gpufabric.api.tokens import TokensPerSecond
from gpufabric.engines import Engine, custom_conflicts
from gpufabric.placement import PriorThroughput, ThroughputSource, Weights, place
from gpufabric.placement.engine import Decision
from gpufabric.placement.requests import ReplicaRequest, WorkloadRequest
from gpufabric.placement.snapshot import ObservedDevices
from gpufabric.reconcile import binding
from gpufabric.reconcile.actions import (
    Action,
    ApplyConfigMap,
    CreatePod,
    CreateService,
    DeleteConfigMap,
    DeletePod,
    DeleteService,
    Event,
    PatchStatus,
    ScaleWorkload,
)
from gpufabric.reconcile.conditions import same
from gpufabric.reconcile.devices import observed_in
from gpufabric.reconcile.ledger import LedgerReplica, fleet_snapshot, replicas_of
from gpufabric.reconcile.state import Avoidance, ClusterState, OwnedService, PodRecord
from gpufabric.reconcile.status import (
    Holding,
    TargetReport,
    WorkloadReport,
    compute_node_status,
    invalid_workload_conditions,
    status_patch,
    tokens_to_write,
    workload_status,
)
from gpufabric.reconcile.workloads import step
from gpufabric.rendering import (
    client_service_name,
    render_client_service,
    render_engine_config,
    render_replica_pods,
    render_replica_service,
    replica_service_name,
)
from gpufabric.throughput.tracker import TokenReport
from gpufabric.vendors import ACCELERATORS

DEFAULT_NODE_GRACE = timedelta(seconds=30)
# How long kube-scheduler may refuse to bind a pod of ours before its replica is placed elsewhere: long enough
# for the scheduler's own retries after a transient refusal (a pod of ours still terminating), short next to
# the minutes a model takes to load.
DEFAULT_UNSCHEDULABLE_GRACE = timedelta(seconds=30)

# workload key -> ComputeNode -> why not there
Avoided = Mapping[str, Mapping[str, Avoidance]]

# Replicas of each workload, by workload key: the ones that stay, as the steps narrow them down.
Live = Mapping[str, tuple[LedgerReplica, ...]]


@dataclass(frozen=True)
class Settings:
    node_grace: timedelta = DEFAULT_NODE_GRACE
    unschedulable_grace: timedelta = DEFAULT_UNSCHEDULABLE_GRACE
    weights: Weights = field(default_factory=Weights)
    source: ThroughputSource = field(default_factory=lambda: PriorThroughput(dict(ACCELERATORS)))


@dataclass(frozen=True)
class Outcome:
    actions: tuple[Action, ...]
    # when the pass must run again even if nothing happens (a NotReady node's grace period ends)
    wake_at: datetime | None
    placed: tuple[Decision, ...]
    refused: int
    # nodes not to choose again per workload, for the next pass's state
    avoided: Avoided = field(default_factory=dict)
    # what each ComputeNode offered and others held in this pass
    observed: Mapping[str, ObservedDevices] = field(default_factory=dict)


@dataclass(frozen=True)
class Changes:
    """What a step asks for: writes, and events saying what happened and why."""

    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()

    def __add__(self, other: Changes) -> Changes:
        return Changes(self.actions + other.actions, self.events + other.events)


def reconcile(state: ClusterState, settings: Settings | None = None) -> Outcome:
    settings = settings or Settings()
    state = active(state)
    ledger = replicas_of(state.pods)
    observed = observed_in(state)
    losses = find_losses(state, ledger, settings.node_grace)
    triaged = triage(state, ledger, losses.lost, Binding(settings.unschedulable_grace, observed))
    stepped = step_workloads(state, triaged)
    placed = place_pending(state, ledger, stepped, settings, observed)
    changes = (
        triaged.changes
        + stepped.changes
        + placed.changes
        + services(state, placed.live, placed.placements)
        + engine_configs(state, placed.live, placed.placements)
        + workload_statuses(state, placed)
        + invalid_workload_statuses(state)
        + compute_node_statuses(state, ledger, placed.decisions, observed)
    )
    wake_at = min((t for t in (losses.wake_at, triaged.wake_at) if t is not None), default=None)
    return Outcome(
        changes.actions + changes.events, wake_at, placed.decisions, placed.refused, triaged.avoided, observed
    )


def active(state: ClusterState) -> ClusterState:
    """The state without workloads that are being deleted or whose namespace is: writing for them would
    fight the deletion (the namespace controller refuses creates in a terminating namespace)."""

    def going(namespace: str | None, deleted: bool) -> bool:
        return deleted or namespace in state.terminating_namespaces

    workloads = {
        k: w for k, w in state.workloads.items() if not going(w.namespace, w.metadata.deletion_timestamp is not None)
    }
    invalid = {k: w for k, w in state.invalid_workloads.items() if not going(w.ref.namespace, False)}
    if len(workloads) == len(state.workloads) and len(invalid) == len(state.invalid_workloads):
        return state
    return replace(state, workloads=workloads, invalid_workloads=invalid)


# --- 1. lost nodes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loss:
    message: str
    # the node is gone or dead: its kubelet will not stop the pods, so they are force-deleted now
    force: bool


@dataclass(frozen=True)
class Losses:
    lost: Mapping[str, Loss]  # by ComputeNode name
    wake_at: datetime | None  # the earliest end of a grace period still running


def find_losses(state: ClusterState, ledger: Sequence[LedgerReplica], grace: timedelta) -> Losses:
    """ComputeNodes (by name) whose replicas must move now, and the earliest time another one will."""
    lost: dict[str, Loss] = {}
    wake_at: datetime | None = None
    for name in sorted({n for replica in ledger for n in replica.nodes}):
        compute_node = state.compute_nodes.get(name)
        if compute_node is None:
            lost[name] = Loss(f"ComputeNode {name} was deleted", force=False)
            continue
        if compute_node.spec.unschedulable:
            lost[name] = Loss(f"ComputeNode {name} is cordoned", force=False)
            continue
        health = state.nodes.get(compute_node.spec.node_name)
        if health is None:
            lost[name] = Loss(f"Node {compute_node.spec.node_name} no longer exists", force=True)
        elif not health.ready:
            since = health.since or state.now
            deadline = since + grace
            if state.now >= deadline:
                down = int((state.now - since).total_seconds())
                lost[name] = Loss(f"Node {compute_node.spec.node_name} not Ready for {down}s", force=True)
                continue
            # Within the grace its pods are not force-deleted (the node may come back), but its replicas
            # that no longer serve are replaced now, as on a cordoned node. The message names the moment,
            # not a count of seconds, so it is the same on every pass (an unplaceable replacement is not a
            # new event each pass).
            since_text = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            lost[name] = Loss(f"Node {compute_node.spec.node_name} not Ready since {since_text}", force=False)
            if wake_at is None or deadline < wake_at:
                wake_at = deadline
    return Losses(lost, wake_at)


# --- 2. triage ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """What triage needs to judge pods kube-scheduler will not bind."""

    grace: timedelta
    observed: Mapping[str, ObservedDevices]


@dataclass(frozen=True)
class Triage:
    live: Live
    # every index any pod of the workload uses (terminating ones included): new replicas take the lowest free
    taken: Mapping[str, frozenset[int]]
    # workloads with a replica terminating or being moved: no rollout step meanwhile
    settling: frozenset[str]
    # replicas on cordoned or undescribed nodes, with why: replaced first, like outdated ones
    draining: Mapping[str, Mapping[int, str]]
    changes: Changes
    # nodes not to place each workload on again (kube-scheduler refused it there)
    avoided: Avoided = field(default_factory=dict)
    # replicas (also draining) kube-scheduler has refused past the grace: replaced, then gone
    never_bound: Mapping[str, frozenset[int]] = field(default_factory=dict)
    # when a pod kube-scheduler refuses reaches the grace
    wake_at: datetime | None = None


@dataclass
class _Triaging:
    """What triage collects while it walks the ledger (one pass's scratch, frozen into a Triage at the end)."""

    avoided: dict[str, dict[str, Avoidance]]
    live: dict[str, list[LedgerReplica]] = field(default_factory=lambda: defaultdict(list))
    taken: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    settling: set[str] = field(default_factory=set)
    draining: dict[str, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    never_bound: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    waiting: list[PodRecord] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def replace(
        self, workload: AgentWorkload, replica: LedgerReplica, reason: EventReason, message: str, *, force: bool = False
    ) -> None:
        """Delete the replica now; the workload places it again once its pods are gone."""
        self.actions += _delete_replica(replica, force=force)
        self.events.append(_event(workload, EventType.WARNING, reason, message))
        self.settling.add(replica.workload_key)


def triage(
    state: ClusterState, ledger: Sequence[LedgerReplica], lost: Mapping[str, Loss], bind: Binding | None = None
) -> Triage:
    bind = bind or Binding(DEFAULT_UNSCHEDULABLE_GRACE, {})
    found = _Triaging(avoided=binding.still_avoided(state, bind.observed))
    specs = {name: node.spec for name, node in state.compute_nodes.items()}
    for replica in ledger:
        key = replica.workload_key
        found.taken[key].add(replica.replica)
        workload = state.workloads.get(key)
        if workload is None:
            continue  # its workload is gone (or invalid): ownerReferences let the garbage collector act
        losses = [lost[n] for n in replica.nodes if n in lost]
        why = "; ".join(loss.message for loss in losses)
        broken = _broken(replica)
        unbound = binding.unbound_pods(replica)
        refused = binding.given_up(unbound, state.now, bind.grace)
        if any(loss.force for loss in losses):
            moves = f"replica {replica.replica} moves off {', '.join(replica.nodes)}: {why}"
            found.replace(workload, replica, EventReason.RESCHEDULED, moves, force=True)
        elif broken is not None:
            # A rank that restarted has left its collective group: the gang starts again as one (a failed
            # pod — evicted, say — never comes back by itself).
            found.replace(workload, replica, EventReason.GANG_RESTARTED, broken)
        elif refused and not replica.terminating:
            _not_bound(found, workload, replica, refused, bind=bind, now=state.now)
        elif not replica.consistent:
            inconsistent = f"replica {replica.replica} is inconsistent (its pods disagree); replacing it"
            found.replace(workload, replica, EventReason.RESCHEDULED, inconsistent)
        elif replica.terminating:
            found.settling.add(key)
        else:
            if losses:
                # Cordoned or no longer described, but still running: drain it like a rolling update — a
                # replacement first, then this one goes once the replacement serves.
                found.draining[key][replica.replica] = why
            if replica.missing_ranks:
                pods = render_replica_pods(workload, _placement(replica.replica, replica), specs)
                found.actions += [CreatePod(pods[rank], workload.ref) for rank in replica.missing_ranks]
            found.waiting += unbound
            found.live[key].append(replica)
    return Triage(
        live={key: tuple(replicas) for key, replicas in found.live.items()},
        taken={key: frozenset(indexes) for key, indexes in found.taken.items()},
        settling=frozenset(found.settling),
        draining=found.draining,
        changes=Changes(tuple(found.actions), tuple(found.events)),
        avoided=found.avoided,
        never_bound={key: frozenset(indexes) for key, indexes in found.never_bound.items()},
        wake_at=binding.next_deadline(found.waiting, bind.grace),
    )


def _not_bound(
    found: _Triaging,
    workload: AgentWorkload,
    replica: LedgerReplica,
    refused: Sequence[PodRecord],
    *,
    bind: Binding,
    now: datetime,
) -> None:
    """kube-scheduler will not bind the replica where the operator put it: it is replaced first, like a
    cordoned replica, and goes once the replacement exists (a gang's ranks move together). The nodes refused
    are not chosen again for this workload until what they offer or others hold there changes (kept from the
    first refusal, so that the expiry runs from then). The Rescheduled event, once: which pods, for how long,
    and kube-scheduler's own words."""
    key = replica.workload_key
    avoiding = found.avoided.setdefault(key, {})
    first = any(pod.compute_node not in avoiding for pod in refused)
    for pod in refused:
        avoiding.setdefault(pod.compute_node, binding.avoidance(pod, bind.observed, now))
    seconds = int(bind.grace.total_seconds())
    pods = "; ".join(f"pod {pod.name} on {pod.compute_node}: kube-scheduler: {pod.unschedulable}" for pod in refused)
    moves = f"replica {replica.replica} moves: not bound within {seconds}s ({pods})"
    if first:
        found.events.append(_event(workload, EventType.WARNING, EventReason.RESCHEDULED, moves))
    found.draining[key][replica.replica] = moves
    found.never_bound[key].add(replica.replica)
    found.live[key].append(replica)


# --- 3. each workload's next step ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stepped:
    live: Live
    requests: tuple[ReplicaRequest, ...]
    # (workload key, surge index) -> the outdated replica to retire if the surge cannot be placed
    surges: Mapping[tuple[str, int], LedgerReplica]
    changes: Changes
    # (workload key, index) -> the replica kube-scheduler will not bind that it replaces: retired at once if
    # the replacement cannot be placed either (it serves nothing where it is)
    unbound: Mapping[tuple[str, int], LedgerReplica] = field(default_factory=dict)


def step_workloads(state: ClusterState, triaged: Triage) -> Stepped:
    live = dict(triaged.live)
    requests: list[ReplicaRequest] = []
    surges: dict[tuple[str, int], LedgerReplica] = {}
    unbound: dict[tuple[str, int], LedgerReplica] = {}
    actions: list[Action] = []
    events: list[Event] = []
    for key, workload in sorted(state.workloads.items()):
        draining = triaged.draining.get(key, {})
        never_bound = triaged.never_bound.get(key, frozenset())
        taken = triaged.taken.get(key, frozenset())
        plan = step(
            workload, live.get(key, ()), taken, key in triaged.settling, draining=set(draining), never_bound=never_bound
        )
        unbound |= {(key, i): r for i, r in zip(plan.new, plan.replacing, strict=False) if r.replica in never_bound}
        if plan.surge is not None and plan.fallback is not None and plan.fallback.replica in draining:
            replacing = (
                f"replacing replica {plan.fallback.replica} before it leaves "
                f"{', '.join(plan.fallback.nodes)}: {draining[plan.fallback.replica]}"
            )
            events.append(_event(workload, EventType.NORMAL, EventReason.DRAINING, replacing))
        serving_nothing = [r for r in plan.replacing if r.replica not in never_bound]  # Rescheduled said the rest
        if serving_nothing:
            replacing = "; ".join(f"replica {r.replica} on {', '.join(r.nodes)}" for r in serving_nothing)
            why = "; ".join(dict.fromkeys(draining[r.replica] for r in serving_nothing))
            message = f"replacing what serves nothing now ({replacing}): {why}"
            events.append(_event(workload, EventType.WARNING, EventReason.DRAINING, message))
        for replica, reason in plan.remove:
            actions += _delete_replica(replica, force=False)
            live[key] = tuple(r for r in live[key] if r is not replica)
            verb = "replaced by an up-to-date one" if reason is EventReason.ROLLING_UPDATE else "removed"
            events.append(_event(workload, EventType.NORMAL, reason, f"replica {replica.replica} {verb}"))
        avoid = {node: avoided.message for node, avoided in triaged.avoided.get(key, {}).items()}
        request = WorkloadRequest.of(workload, avoid)
        requests += [ReplicaRequest(request, index) for index in plan.new]
        if plan.surge is not None and plan.fallback is not None:
            surges[(key, plan.surge)] = plan.fallback
        if _scaled(workload):
            before = workload.status.replicas if workload.status else 0
            scaling = f"scaling from {before} to {workload.spec.replicas} replicas"
            events.append(_event(workload, EventType.NORMAL, EventReason.SCALED, scaling))
    return Stepped(live, tuple(requests), surges, Changes(tuple(actions), tuple(events)), unbound)


# --- 4. placement -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    live: Live  # less the outdated replicas retired because their surge had no room
    decisions: tuple[Decision, ...]
    placements: Mapping[str, tuple[ReplicaPlacement, ...]]  # the decisions, by workload key
    refusals: Mapping[str, str]  # workload key -> why its replicas could not be placed
    refused: int
    changes: Changes


def place_pending(
    state: ClusterState,
    ledger: Sequence[LedgerReplica],
    stepped: Stepped,
    settings: Settings,
    observed: Mapping[str, ObservedDevices] | None = None,
) -> Placed:
    snapshot = fleet_snapshot(state.compute_nodes.values(), state.nodes, ledger, observed)
    result = place(snapshot, stepped.requests, settings.source, settings.weights)
    specs = {name: node.spec for name, node in state.compute_nodes.items()}
    live = dict(stepped.live)
    placements: dict[str, list[ReplicaPlacement]] = defaultdict(list)
    actions: list[Action] = []
    events: list[Event] = []
    placed_messages: dict[str, list[str]] = defaultdict(list)
    for decision in result.decisions:
        workload = state.workloads[decision.workload]
        placement = _placement(decision.replica, decision)
        placements[decision.workload].append(placement)
        actions += [CreatePod(pod, workload.ref) for pod in render_replica_pods(workload, placement, specs)]
        placed_messages[decision.workload].append(_placed_message(decision, stepped))
    # One Placed event per workload per pass, naming every replica placed: a workload scaled to 30 is one
    # write, not 30 (the condition and status.placements carry the details anyway).
    for key, messages in placed_messages.items():
        events.append(_event(state.workloads[key], EventType.NORMAL, EventReason.PLACED, "; ".join(messages)))
    refusals: dict[str, str] = {}
    for refusal in result.refusals:
        fallback = stepped.surges.get((refusal.workload, refusal.replica))
        workload = state.workloads[refusal.workload]
        if (stranded := stepped.unbound.get((refusal.workload, refusal.replica))) is not None:
            # No room elsewhere for what kube-scheduler will not bind: it goes anyway, rather than wait
            # Pending for good; the workload says why it has a replica fewer.
            actions += _delete_replica(stranded, force=False)
            live[refusal.workload] = tuple(r for r in live[refusal.workload] if r is not stranded)
        if fallback is None:
            refusals[refusal.workload] = refusal.reason
            continue
        # No room to surge: retire one outdated replica first; its replacement takes its room next pass.
        actions += _delete_replica(fallback, force=False)
        live[refusal.workload] = tuple(r for r in live[refusal.workload] if r is not fallback)
        in_place = f"no room for a surge replica; replacing replica {fallback.replica} in place"
        events.append(_event(workload, EventType.NORMAL, EventReason.ROLLING_UPDATE, in_place))
    for key, reason in refusals.items():
        workload = state.workloads[key]
        if workload.status is None or workload.status.unschedulable_reason != reason:
            events.append(_event(workload, EventType.WARNING, EventReason.UNSCHEDULABLE, reason))
    return Placed(
        live=live,
        decisions=result.decisions,
        placements={key: tuple(found) for key, found in placements.items()},
        refusals=refusals,
        refused=len(result.refusals),
        changes=Changes(tuple(actions), tuple(events)),
    )


def _placed_message(decision: Decision, stepped: Stepped) -> str:
    where = decision.allocation
    surge = " (rolling update)" if (decision.workload, decision.replica) in stepped.surges else ""
    return (
        f"replica {decision.replica}{surge} placed on {where.vendor.value} {where.accelerator} "
        f"x{where.devices_per_node} at {where.precision.value} ({', '.join(where.nodes)}), "
        f"{decision.tokens_per_second:,.0f} tokens/s predicted"
    )


# --- 5. Services ----------------------------------------------------------------------------------------------


def services(state: ClusterState, live: Live, placements: Mapping[str, tuple[ReplicaPlacement, ...]]) -> Changes:
    """Each workload's client Service; a headless Service per gang replica (its ranks find rank 0 by it),
    removed once the replica is gone."""
    actions: list[Action] = []
    # Grouped by workload once: each workload then looks at its own pods and Services only.
    replicas_with_pods: dict[ObjectRef, set[int]] = defaultdict(set)
    for pod in state.pods:
        replicas_with_pods[pod.workload].add(pod.replica)
    replica_services: dict[ObjectRef, list[OwnedService]] = defaultdict(list)
    for _, owned in sorted(state.services.items()):
        if owned.replica is not None:
            replica_services[owned.workload].append(owned)
    for key, workload in sorted(state.workloads.items()):
        namespace, ref = workload.namespace, workload.ref
        if f"{namespace}/{client_service_name(workload.name)}" not in state.services:
            actions.append(CreateService(render_client_service(workload), ref))
        gangs = {r.replica for r in live.get(key, ()) if len(r.nodes) > 1}
        gangs |= {p.replica for p in placements.get(key, ()) if len(p.nodes) > 1}
        for replica in sorted(gangs):
            if f"{namespace}/{replica_service_name(workload.name, replica)}" not in state.services:
                actions.append(CreateService(render_replica_service(workload, replica), ref))
        pods_left = replicas_with_pods.get(ref, set())
        for owned in replica_services.get(ref, ()):
            if owned.replica not in gangs | pods_left:
                actions.append(DeleteService(owned.ref, ref))
    return Changes(tuple(actions))


def engine_configs(state: ClusterState, live: Live, placements: Mapping[str, tuple[ReplicaPlacement, ...]]) -> Changes:
    """The ConfigMap of engine files (MindIE's config.json) of every replica whose engine reads some,
    applied each pass; the controller sends it once per content, so this costs a write only when it changes
    or the operator restarts."""
    actions: list[Action] = []
    for key, workload in sorted(state.workloads.items()):
        running = [(_placement(r.replica, r), False) for r in live.get(key, ())]
        for placement, new in (*running, *((p, True) for p in placements.get(key, ()))):
            manifest = render_engine_config(workload, placement)
            if manifest is not None:
                actions.append(ApplyConfigMap(manifest, workload.ref, new=new))
    return Changes(tuple(actions))


# --- 6. status --------------------------------------------------------------------------------------------


def workload_statuses(state: ClusterState, placed: Placed) -> Changes:
    """Each AgentWorkload's status as it should read now (a patch only where it differs), and the tokens/s
    autoscaler's decision."""
    actions: list[Action] = []
    events: list[Event] = []
    tokens = state.tokens
    for key, workload in sorted(state.workloads.items()):
        live = placed.live.get(key, ())
        stale = workload.ref in state.tokens_stale
        old_tokens = {p.replica: p.tokens_per_second for p in (workload.status.placements if workload.status else [])}
        running = [
            _placement(
                r.replica,
                r,
                tokens_to_write(
                    old_tokens.get(r.replica), tokens.replicas.get((key, r.replica)) if tokens else None, stale
                ),
            )
            for r in live
        ]
        target, scale = _autoscale(workload, tokens, placed.refusals.get(key))
        if scale is not None:
            actions.append(scale[0])
            events.append(scale[1])
        placements = (*running, *placed.placements.get(key, ()))
        report = WorkloadReport(
            placements=placements,
            ready=sum(1 for r in live if r.ready),
            refusal=placed.refusals.get(key),
            unready_pods=tuple(f"{p.name}: {p.unschedulable}" for r in live for p in r.pods if p.unschedulable),
            unbound=sum(1 for r in live if binding.unbound_pods(r)),
            conflicts=_conflicts(workload, placements),
            tokens=tokens.workloads.get(key) if tokens else None,
            tokens_stale=stale,
            target=target,
        )
        patch = status_patch(workload.status, workload_status(workload, report, state.now))
        if patch:
            actions.append(PatchStatus(workload.ref, patch))
    return Changes(tuple(actions), tuple(events))


def invalid_workload_statuses(state: ClusterState) -> Changes:
    """AgentWorkloads the models refuse: `Placed=False InvalidSpec` with every problem, and an event."""
    actions: list[Action] = []
    events: list[Event] = []
    for invalid in state.invalid_workloads.values():
        conditions = invalid_workload_conditions(invalid.conditions, invalid.problems, invalid.generation, state.now)
        if same(conditions, invalid.conditions):
            continue
        status = {"observedGeneration": invalid.generation, "conditions": [c.wire() for c in conditions]}
        actions.append(PatchStatus(invalid.ref, status))
        events.append(
            Event(invalid.ref, invalid.uid, EventType.WARNING, EventReason.INVALID_SPEC, conditions[0].message)
        )
    return Changes(tuple(actions), tuple(events))


def compute_node_statuses(
    state: ClusterState,
    ledger: Sequence[LedgerReplica],
    decisions: Iterable[Decision],
    observed: Mapping[str, ObservedDevices] | None = None,
) -> Changes:
    """What each ComputeNode holds once this pass's pods exist. Deleted pods keep their devices until they
    are gone; the pass that sees them gone frees them."""
    holdings = [Holding(r.workload, r.allocation) for r in ledger]
    holdings += [Holding(state.workloads[d.workload].ref, d.allocation) for d in decisions]
    # Grouped by node once: each node then sees only its own holdings (linear, not nodes x replicas).
    by_node: dict[str, list[Holding]] = defaultdict(list)
    for holding in holdings:
        for name in dict.fromkeys(holding.allocation.nodes):
            by_node[name].append(holding)
    tokens = state.tokens
    actions: list[Action] = []
    for name, node in sorted(state.compute_nodes.items()):
        node_status = compute_node_status(
            node,
            state.nodes.get(node.spec.node_name),
            by_node.get(name, ()),
            state.now,
            tokens=tokens.nodes.get(name) if tokens else None,
            tokens_stale=node.ref in state.tokens_stale,
            observed=(observed or {}).get(name),
        )
        patch = status_patch(node.status, node_status)
        if patch:
            actions.append(PatchStatus(node.ref, patch))
    return Changes(tuple(actions))


def _autoscale(
    workload: AgentWorkload, tokens: TokenReport | None, refusal: str | None
) -> tuple[TargetReport | None, tuple[ScaleWorkload, Event] | None]:
    """The target's standing for status, and a scale action when the autoscaler owns the replica count."""
    throughput = workload.spec.throughput
    if throughput is None or throughput.target_tokens_per_second is None:
        return None, None
    recorded = workload.metadata.annotations.get(labels.SCALED_TO)
    external = recorded is not None and recorded != str(workload.spec.replicas)
    recommendation = tokens.recommendations.get(workload.key) if tokens else None
    target = TargetReport(
        target=throughput.target_tokens_per_second,
        capacity=tokens.capacity.get(workload.key, 0.0) if tokens else 0.0,
        needed_for_target=recommendation.needed_for_target if recommendation else None,
        maximum=throughput.max_replicas or workload.spec.replicas,
        external_scaler=external,
    )
    if external or recommendation is None or recommendation.desired == workload.spec.replicas:
        return target, None
    demand = tokens.workloads.get(workload.key) if tokens else None
    no_room = f"; no room for more: {refusal}" if refusal and recommendation.desired > workload.spec.replicas else ""
    why = (
        f"{workload.spec.replicas} -> {recommendation.desired} replicas: {recommendation.reason} "
        f"(measured {demand.generation if demand else 0:,.0f} generation tokens/s, "
        f"target {throughput.target_tokens_per_second:,.0f}){no_room}"
    )
    event = _event(workload, EventType.NORMAL, EventReason.AUTOSCALED, why)
    return target, (ScaleWorkload(workload.ref, recommendation.desired), event)


# --- helpers ------------------------------------------------------------------------------------------------


def _delete_replica(replica: LedgerReplica, *, force: bool) -> list[Action]:
    """The replica's pods, and the ConfigMap of its engine's files if it has one."""
    actions: list[Action] = [
        DeletePod(pod.ref, replica.workload, force=force) for pod in replica.pods if not pod.terminating or force
    ]
    namespace = replica.workload.namespace
    for name in sorted({pod.engine_config for pod in replica.pods if pod.engine_config}):
        actions.append(DeleteConfigMap(ObjectRef(Kind.CONFIG_MAP, namespace, name), replica.workload))
    return actions


def _broken(replica: LedgerReplica) -> str | None:
    """Why the replica must restart whole: a pod that failed for good, or a restarted rank of a gang."""
    for pod in replica.pods:
        if pod.failed:
            return f"replica {replica.replica}: pod {pod.name} failed; replacing the replica"
        if len(replica.nodes) > 1 and pod.restarts > 0:
            return f"replica {replica.replica}: rank {pod.rank} restarted; the gang restarts together"
    return None


def _placement(index: int, where: LedgerReplica | Decision, tokens: TokensPerSecond | None = None) -> ReplicaPlacement:
    """Where a replica runs, as status states it."""
    return ReplicaPlacement.of(index, where.allocation, tokens)


def _conflicts(workload: AgentWorkload, placements: Iterable[ReplicaPlacement]) -> tuple[str, ...]:
    """What custom runtimes' own flags contradict in the replicas' placements, once per vendor and message."""
    found: dict[str, None] = {}
    for placement in placements:
        runtime = workload.spec.runtimes.get(placement.vendor)
        if runtime is None or runtime.engine is not Engine.CUSTOM:
            continue
        where = placement.allocation
        for problem in custom_conflicts(runtime.args, where.devices, where.precision):
            found[f"{placement.vendor.value}: {problem}"] = None
    return tuple(found)


def _event(workload: AgentWorkload, kind: EventType, reason: EventReason, message: str) -> Event:
    return Event(workload.ref, workload.metadata.uid, kind, reason, message)


def _scaled(workload: AgentWorkload) -> bool:
    """The replica count changed since the status last observed the spec."""
    status = workload.status
    return (
        status is not None
        and status.observed_generation is not None
        and status.observed_generation != workload.metadata.generation
        and status.replicas != workload.spec.replicas
    )
