"""Replicas kube-scheduler will not bind, and the nodes not to choose again for them.

The operator decides a replica's node, but kube-scheduler binds the pod — and it sees what the operator may
not have yet: a pod of someone else's that took the devices between the pass and the bind, a taint, a
device that fell off the bus. A pod of ours that it reports `PodScheduled=False` (`Unschedulable`) for longer
than the grace is given up on: its replica is deleted and placed again, and the node it was refused on is
avoided for that workload while what the node offers and what others hold there stay as they were (a change
is what could make the scheduler say yes; nothing else the operator can see would). What the operator
cannot see (a taint, a pod of its own still terminating) can change too, so an avoidance also ends after
`AVOIDANCE_EXPIRY`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from gpufabric.placement.snapshot import ObservedDevices
from gpufabric.reconcile.ledger import LedgerReplica
from gpufabric.reconcile.state import Avoidance, ClusterState, PodRecord

# kube-scheduler's FitError: "0/23 nodes are available: 1 Insufficient nvidia.com/gpu, 22 node(s) didn't match
# Pod's node affinity/selector. preemption: 0/23 nodes are available: ..." (kubernetes pkg/scheduler/framework
# types.go, FitError.Error). Our pods are pinned to one node, so every other node fails the affinity.
_FIT_ERROR = re.compile(r"^\d+/\d+ nodes are available: (?P<reasons>.*)$")
_COUNTED = re.compile(r"^\d+ (?P<reason>.*)$")
_PINNED_ELSEWHERE = "didn't match Pod's node affinity/selector"
MAX_REASON_LENGTH = 200
# The longest a node stays avoided with nothing observed changing: long next to kube-scheduler's own retry
# back-off (at most 10 s by default), short enough that a cause the operator cannot see does not strand a node.
AVOIDANCE_EXPIRY = timedelta(minutes=5)


def scheduler_reason(message: str) -> str:
    """What kube-scheduler said about the one node a pod of ours is pinned to: `Insufficient nvidia.com/gpu`
    from its whole FitError message (the other nodes' "didn't match Pod's node affinity" and the preemption
    part left out)."""
    first = message.split(" preemption:", maxsplit=1)[0].strip().rstrip(".")
    match = _FIT_ERROR.match(first)
    if match is None:
        return first[:MAX_REASON_LENGTH]
    reasons = []
    for part in match["reasons"].split(", "):
        counted = _COUNTED.match(part.strip())
        reason = counted["reason"] if counted else part.strip()
        if _PINNED_ELSEWHERE not in reason:
            reasons.append(reason)
    return (", ".join(reasons) or first)[:MAX_REASON_LENGTH]


def unbound_pods(replica: LedgerReplica) -> list[PodRecord]:
    return [pod for pod in replica.pods if pod.unschedulable is not None]


def given_up(pods: Sequence[PodRecord], now: datetime, grace: timedelta) -> list[PodRecord]:
    """The pods kube-scheduler has refused for at least `grace`."""
    return [pod for pod in pods if pod.unschedulable_since is None or now - pod.unschedulable_since >= grace]


def next_deadline(pods: Sequence[PodRecord], grace: timedelta) -> datetime | None:
    deadlines = [pod.unschedulable_since + grace for pod in pods if pod.unschedulable_since is not None]
    return min(deadlines) if deadlines else None


def avoidance(pod: PodRecord, observed: Mapping[str, ObservedDevices], now: datetime) -> Avoidance:
    seen = observed.get(pod.compute_node)
    return Avoidance(
        message=scheduler_reason(pod.unschedulable or ""),
        offered=seen.offered if seen else 0,
        held_by_others=seen.held_by_others if seen else 0,
        since=now,
    )


def still_avoided(state: ClusterState, observed: Mapping[str, ObservedDevices]) -> dict[str, dict[str, Avoidance]]:
    """The avoidances carried from earlier passes that still hold: the workload and node exist and the node
    offers and others hold what they did when kube-scheduler refused, for less than `AVOIDANCE_EXPIRY`."""
    kept: dict[str, dict[str, Avoidance]] = {}
    for key, nodes in state.avoided.items():
        if key not in state.workloads:
            continue
        for name, avoided in nodes.items():
            seen = observed.get(name)
            unchanged = seen is not None and (seen.offered, seen.held_by_others) == (
                avoided.offered,
                avoided.held_by_others,
            )
            if unchanged and state.now - avoided.since < AVOIDANCE_EXPIRY:
                kept.setdefault(key, {})[name] = avoided
    return kept
