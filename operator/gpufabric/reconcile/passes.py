"""One reconcile pass over the whole fleet: state in, actions out. Pure; the controller runs it, one pass at
a time, and carries out the actions.

1. Replicas on lost nodes are moved as whole replicas: ComputeNode deleted or cordoned (graceful delete),
   Node deleted or NotReady longer than the grace period (force delete — that kubelet will not answer).
   Inconsistent replicas are replaced; replicas missing a rank (a pass died half way) are completed.
2. Each workload takes its next step (workloads.py): scale up, scale down, or one rolling-update step.
3. All pending replicas of all workloads are placed in one engine pass (priority, then age), against a
   snapshot whose allocations are the ledger's — so two workloads never get the same devices.
4. Pods and Services are rendered for what was placed; statuses are recomputed and patched only where
   they changed; events say what happened and why.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gpufabric.api import labels
from gpufabric.api.agentworkload import AgentWorkload, ReplicaPlacement
from gpufabric.placement import PriorThroughput, ThroughputSource, Weights, place
from gpufabric.placement.engine import Decision
from gpufabric.placement.requests import ReplicaRequest, WorkloadRequest
from gpufabric.reconcile.actions import (
    Action,
    CreatePod,
    CreateService,
    DeletePod,
    DeleteService,
    Event,
    PatchStatus,
    ScaleWorkload,
)
from gpufabric.reconcile.conditions import same
from gpufabric.reconcile.ledger import LedgerReplica, fleet_snapshot, replicas_of
from gpufabric.reconcile.state import ClusterState
from gpufabric.reconcile.status import (
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
    render_replica_pods,
    render_replica_service,
    replica_service_name,
)
from gpufabric.throughput.tracker import TokenReport
from gpufabric.vendors import ACCELERATORS

DEFAULT_NODE_GRACE = timedelta(seconds=30)


@dataclass(frozen=True)
class Settings:
    node_grace: timedelta = DEFAULT_NODE_GRACE
    weights: Weights = field(default_factory=Weights)
    source: ThroughputSource = field(default_factory=lambda: PriorThroughput(dict(ACCELERATORS)))


@dataclass(frozen=True)
class Outcome:
    actions: tuple[Action, ...]
    # when the pass must run again even if nothing happens (a NotReady node's grace period ends)
    wake_at: datetime | None
    placed: tuple[Decision, ...]
    refused: int


@dataclass(frozen=True)
class Loss:
    reason: str
    message: str
    force: bool


def lost_nodes(
    state: ClusterState, nodes_in_use: Iterable[str], grace: timedelta
) -> tuple[dict[str, Loss], datetime | None]:
    """ComputeNodes (by name) whose replicas must move now, and the earliest time another one will."""
    lost: dict[str, Loss] = {}
    wake_at: datetime | None = None
    for name in sorted(set(nodes_in_use)):
        compute_node = state.compute_nodes.get(name)
        if compute_node is None:
            lost[name] = Loss("ComputeNodeDeleted", f"ComputeNode {name} was deleted", force=False)
            continue
        if compute_node.spec.unschedulable:
            lost[name] = Loss("Cordoned", f"ComputeNode {name} is cordoned", force=False)
            continue
        health = state.nodes.get(compute_node.spec.node_name)
        if health is None:
            lost[name] = Loss("NodeDeleted", f"Node {compute_node.spec.node_name} no longer exists", force=True)
        elif not health.ready:
            since = health.since or state.now
            deadline = since + grace
            if state.now >= deadline:
                down = int((state.now - since).total_seconds())
                lost[name] = Loss(
                    "NodeNotReady", f"Node {compute_node.spec.node_name} not Ready for {down}s", force=True
                )
            elif wake_at is None or deadline < wake_at:
                wake_at = deadline
    return lost, wake_at


def reconcile(state: ClusterState, settings: Settings | None = None) -> Outcome:
    settings = settings or Settings()
    now = state.now
    ledger = replicas_of(state.pods)
    lost, wake_at = lost_nodes(state, (n for r in ledger for n in r.nodes), settings.node_grace)
    actions: list[Action] = []
    events: list[Action] = []
    specs = {name: node.spec for name, node in state.compute_nodes.items()}

    # Every index any pod uses (terminating ones included): new replicas take the lowest free ones.
    taken: dict[str, set[int]] = defaultdict(set)
    for replica in ledger:
        taken[replica.workload_key].add(replica.replica)

    # 1. Move replicas off lost nodes; replace inconsistent ones; complete half-created ones.
    live: dict[str, list[LedgerReplica]] = defaultdict(list)
    settling: set[str] = set()
    draining: dict[str, dict[int, str]] = defaultdict(dict)
    for replica in ledger:
        workload = state.workloads.get(replica.workload_key)
        if workload is None:
            continue  # its workload is gone (or invalid): ownerReferences let the garbage collector act
        losses = [lost[n] for n in replica.nodes if n in lost]
        if any(loss.force for loss in losses):
            # The node is gone or dead: its kubelet will not stop the pods, so force them out now.
            actions += _delete_replica(replica, force=True, reason=losses[0].reason)
            events.append(
                _event(
                    workload,
                    "Warning",
                    "Rescheduled",
                    f"replica {replica.replica} moves off {', '.join(replica.nodes)}: "
                    + "; ".join(loss.message for loss in losses),
                )
            )
            settling.add(replica.workload_key)
            continue
        if losses:
            # Cordoned or no longer described, but still running: drain it like a rolling update —
            # a replacement first, then this one goes once the replacement serves.
            draining[replica.workload_key][replica.replica] = "; ".join(loss.message for loss in losses)
        if not replica.consistent:
            actions += _delete_replica(replica, force=False, reason="Inconsistent")
            events.append(
                _event(
                    workload,
                    "Warning",
                    "Rescheduled",
                    f"replica {replica.replica} is inconsistent (its pods disagree); replacing it",
                )
            )
            settling.add(replica.workload_key)
            continue
        if replica.terminating:
            settling.add(replica.workload_key)
            continue
        if replica.missing_ranks:
            placement = _placement_of(replica)
            pods = render_replica_pods(workload, placement, specs)
            actions += [CreatePod(pods[rank]) for rank in replica.missing_ranks]
        live[replica.workload_key].append(replica)

    # 2. Each workload's next step.
    requests: list[ReplicaRequest] = []
    surges: dict[tuple[str, int], LedgerReplica] = {}
    for key, workload in sorted(state.workloads.items()):
        plan = step(workload, live.get(key, []), taken[key], key in settling, set(draining.get(key, {})))
        if plan.surge is not None and plan.fallback is not None and plan.fallback.replica in draining.get(key, {}):
            events.append(
                _event(
                    workload,
                    "Normal",
                    "Draining",
                    f"replacing replica {plan.fallback.replica} before it leaves "
                    f"{', '.join(plan.fallback.nodes)}: {draining[key][plan.fallback.replica]}",
                )
            )
        for replica, reason in plan.remove:
            actions += _delete_replica(replica, force=False, reason=reason)
            live[key].remove(replica)
            verb = "replaced by an up-to-date one" if reason == "RollingUpdate" else "removed"
            events.append(
                _event(
                    workload,
                    "Normal",
                    "RollingUpdate" if reason == "RollingUpdate" else "ScaledDown",
                    f"replica {replica.replica} {verb}",
                )
            )
        request = WorkloadRequest.of(workload)
        for index in plan.new:
            requests.append(ReplicaRequest(request, index))
        if plan.surge is not None and plan.fallback is not None:
            surges[(key, plan.surge)] = plan.fallback
        if _scaled(workload):
            events.append(
                _event(
                    workload,
                    "Normal",
                    "Scaled",
                    f"scaling from {workload.status.replicas if workload.status else 0} "
                    f"to {workload.spec.replicas} replicas",
                )
            )

    # 3. One placement pass for everything pending.
    snapshot = fleet_snapshot(state.compute_nodes.values(), state.nodes, ledger)
    result = place(snapshot, requests, settings.source, settings.weights)
    placed: dict[str, list[ReplicaPlacement]] = defaultdict(list)
    for decision in result.decisions:
        workload = state.workloads[decision.workload]
        placement = _placement_of(decision)
        placed[decision.workload].append(placement)
        actions += [CreatePod(pod) for pod in render_replica_pods(workload, placement, specs)]
        surge = " (rolling update)" if (decision.workload, decision.replica) in surges else ""
        events.append(
            _event(
                workload,
                "Normal",
                "Placed",
                f"replica {decision.replica}{surge} placed on {decision.vendor.value} "
                f"{decision.accelerator} x{decision.devices_per_node} at {decision.precision.value} "
                f"({', '.join(decision.nodes)}), {decision.tokens_per_second:,.0f} tokens/s predicted",
            )
        )
    refusals: dict[str, str] = {}
    for refusal in result.refusals:
        fallback = surges.get((refusal.workload, refusal.replica))
        workload = state.workloads[refusal.workload]
        if fallback is not None:
            # No room to surge: retire one outdated replica first; its replacement takes its room next pass.
            actions += _delete_replica(fallback, force=False, reason="RollingUpdate")
            live[refusal.workload].remove(fallback)
            events.append(
                _event(
                    workload,
                    "Normal",
                    "RollingUpdate",
                    f"no room for a surge replica; replacing replica {fallback.replica} in place",
                )
            )
            continue
        refusals[refusal.workload] = refusal.reason
    for key, reason in refusals.items():
        workload = state.workloads[key]
        if workload.status is None or workload.status.unschedulable_reason != reason:
            events.append(_event(workload, "Warning", "Unschedulable", reason))

    # 4. Services, statuses, the tokens/s autoscaler.
    tokens = state.tokens
    for key, workload in sorted(state.workloads.items()):
        actions += _services(state, workload, live.get(key, []), placed.get(key, []))
        stale = f"AgentWorkload:{key}" in state.tokens_stale
        old_tokens = {p.replica: p.tokens_per_second for p in (workload.status.placements if workload.status else [])}
        running = [
            _placement_of(r).model_copy(
                update={
                    "tokens_per_second": tokens_to_write(
                        old_tokens.get(r.replica), tokens.replicas.get((key, r.replica)) if tokens else None, stale
                    )
                }
            )
            for r in live.get(key, [])
        ]
        target, scale = _autoscale(workload, tokens, refusals.get(key))
        if scale is not None:
            actions.append(scale[0])
            events.append(scale[1])
        report = WorkloadReport(
            placements=tuple(running + placed.get(key, [])),
            ready=sum(1 for r in live.get(key, []) if r.ready),
            refusal=refusals.get(key),
            unready_pods=tuple(
                f"{p.name}: {p.unschedulable}" for r in live.get(key, []) for p in r.pods if p.unschedulable
            ),
            tokens=tokens.workloads.get(key) if tokens else None,
            tokens_stale=stale,
            target=target,
        )
        new_status = workload_status(workload, report, now)
        patch = status_patch(workload.status, new_status)
        if patch:
            actions.append(PatchStatus("AgentWorkload", workload.namespace, workload.name, patch))
    for invalid in state.invalid_workloads.values():
        conditions = invalid_workload_conditions(invalid.conditions, invalid.problems, invalid.generation, now)
        if not same(conditions, invalid.conditions):
            actions.append(
                PatchStatus(
                    "AgentWorkload",
                    invalid.namespace,
                    invalid.name,
                    {
                        "observedGeneration": invalid.generation,
                        "conditions": [c.wire() for c in conditions],
                    },
                )
            )
            events.append(
                Event(
                    "AgentWorkload",
                    invalid.namespace,
                    invalid.name,
                    invalid.uid,
                    "Warning",
                    "InvalidSpec",
                    conditions[0].message,
                )
            )
    after = _ledger_after(ledger, result.decisions)
    for name, node in sorted(state.compute_nodes.items()):
        node_status = compute_node_status(
            node,
            state.nodes.get(node.spec.node_name),
            after,
            now,
            tokens=tokens.nodes.get(name) if tokens else None,
            tokens_stale=f"ComputeNode:{name}" in state.tokens_stale,
        )
        patch = status_patch(node.status, node_status)
        if patch:
            actions.append(PatchStatus("ComputeNode", None, name, patch))

    return Outcome(tuple(actions + events), wake_at, result.decisions, len(result.refusals))


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
    event = _event(
        workload,
        "Normal",
        "Autoscaled",
        f"{workload.spec.replicas} -> {recommendation.desired} replicas: {recommendation.reason} "
        f"(measured {demand.generation if demand else 0:,.0f} generation tokens/s, "
        f"target {throughput.target_tokens_per_second:,.0f})"
        + (f"; no room for more: {refusal}" if refusal and recommendation.desired > workload.spec.replicas else ""),
    )
    return target, (ScaleWorkload(workload.namespace, workload.name, recommendation.desired), event)


def _delete_replica(replica: LedgerReplica, *, force: bool, reason: str) -> list[Action]:
    return [
        DeletePod(pod.namespace, pod.name, force=force, reason=reason)
        for pod in replica.pods
        if not pod.terminating or force
    ]


def _placement_of(item: LedgerReplica | Decision) -> ReplicaPlacement:
    """Where a replica runs, as status states it, from the ledger or from a fresh decision (same fields)."""
    return ReplicaPlacement(
        replica=item.replica,
        vendor=item.vendor,
        accelerator=item.accelerator,
        precision=item.precision,
        devices_per_node=item.devices_per_node,
        nodes=list(item.nodes),
    )


def _event(workload: AgentWorkload, kind: str, reason: str, message: str) -> Event:
    return Event("AgentWorkload", workload.namespace, workload.name, workload.metadata.uid, kind, reason, message)


def _scaled(workload: AgentWorkload) -> bool:
    """The replica count changed since the status last observed the spec."""
    status = workload.status
    return (
        status is not None
        and status.observed_generation is not None
        and status.observed_generation != workload.metadata.generation
        and status.replicas != workload.spec.replicas
    )


def _services(
    state: ClusterState, workload: AgentWorkload, live: list[LedgerReplica], placed: list[ReplicaPlacement]
) -> list[Action]:
    actions: list[Action] = []
    namespace = workload.namespace
    if f"{namespace}/{client_service_name(workload.name)}" not in state.services:
        actions.append(CreateService(render_client_service(workload)))
    gangs = {r.replica for r in live if len(r.nodes) > 1} | {p.replica for p in placed if len(p.nodes) > 1}
    for replica in sorted(gangs):
        if f"{namespace}/{replica_service_name(workload.name, replica)}" not in state.services:
            actions.append(CreateService(render_replica_service(workload, replica)))
    # Headless Services of gang replicas that are gone (scaled down, moved to another index).
    pods_left = {p.replica for p in state.pods if p.workload_key == workload.key}
    for key, owned in sorted(state.services.items()):
        if (
            key.startswith(f"{namespace}/")
            and owned.workload == workload.name
            and owned.replica is not None
            and owned.replica not in gangs
            and owned.replica not in pods_left
        ):
            actions.append(DeleteService(namespace, key.split("/", 1)[1]))
    return actions


def _ledger_after(ledger: list[LedgerReplica], placed: Iterable[Decision]) -> list[LedgerReplica]:
    """What nodes hold once this pass's pods exist, for ComputeNode status. Deleted pods keep their devices
    until they are gone; the pass that sees them gone frees them."""
    extra = [
        LedgerReplica(
            namespace=d.workload.split("/", 1)[0],
            workload=d.workload.split("/", 1)[1],
            replica=d.replica,
            nodes=d.nodes,
            devices_per_node=d.devices_per_node,
            vendor=d.vendor,
            accelerator=d.accelerator,
            precision=d.precision,
            template_hash="",
            pods=(),
        )
        for d in placed
    ]
    return [*ledger, *extra]
