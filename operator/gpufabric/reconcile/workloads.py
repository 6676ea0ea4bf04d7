"""One workload's next step: how many replicas to add or remove, and the rolling update.

- Fewer live replicas than `spec.replicas`: ask for the missing ones, at the lowest free indexes.
- More: remove outdated ones first, then not-ready ones, then the highest indexes.
- Exactly as many, some outdated (model, image, env, precision no longer accepted…, or on a cordoned or
  undescribed node), all ready and nothing
  terminating: ask for one surge replica with the new template. Once it is ready there is one replica too
  many and an outdated one goes; if the surge cannot be placed, an outdated replica goes first and its
  replacement is placed in its room (delete, then create). One step at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gpufabric.api.agentworkload import AUTO, AgentWorkload
from gpufabric.api.reasons import EventReason
from gpufabric.reconcile.ledger import LedgerReplica
from gpufabric.rendering.template import template_hash


@dataclass(frozen=True)
class WorkloadStep:
    # replica indexes to place now
    new: tuple[int, ...]
    # the index in `new` (if any) that is a rolling-update surge
    surge: int | None
    # replicas to remove, with why (RollingUpdate or ScaledDown)
    remove: tuple[tuple[LedgerReplica, EventReason], ...]
    # outdated replica to remove if the surge cannot be placed
    fallback: LedgerReplica | None
    # replicas that serve nothing on a node being left (NotReady within its grace): `new` replaces them
    replacing: tuple[LedgerReplica, ...] = ()


def outdated(workload: AgentWorkload, replica: LedgerReplica) -> bool:
    spec = workload.spec
    where = replica.allocation
    if where.vendor not in spec.runtimes or where.precision not in spec.precisions:
        return True
    if len(where.nodes) != spec.nodes_per_replica:
        return True
    if spec.devices_per_replica not in (AUTO, where.devices):
        return True
    return replica.template_hash != template_hash(spec, where.vendor)


def lowest_free(taken: Iterable[int], count: int) -> tuple[int, ...]:
    used = set(taken)
    found: list[int] = []
    index = 0
    while len(found) < count:
        if index not in used:
            found.append(index)
        index += 1
    return tuple(found)


def step(
    workload: AgentWorkload,
    live: Sequence[LedgerReplica],
    taken: Iterable[int],
    settling: bool,
    *,
    draining: frozenset[int] | set[int] = frozenset(),
    never_bound: frozenset[int] | set[int] = frozenset(),
) -> WorkloadStep:
    """`live`: the workload's replicas that are staying (complete or being completed, not terminating, not
    being moved). `taken`: every index in use by any pod (terminating ones included: names are stable).
    `settling`: some replica of the workload is terminating or being moved — no rollout step meanwhile.
    `draining`: replicas on cordoned or undescribed nodes, replaced like outdated ones. `never_bound`: those
    of them kube-scheduler will not bind where they are: they go as soon as their replacement exists."""
    wanted = workload.spec.replicas
    old = [r for r in live if r.replica in draining or outdated(workload, r)]
    fresh = [r for r in live if r not in old]
    taken = set(taken)

    if len(live) > wanted:
        excess = len(live) - wanted
        if any(r.replica not in never_bound for r in old) and any(not r.ready for r in fresh):
            # A rollout step is in flight: keep one old replica serving until the new one is ready (one that
            # was never bound serves nothing, and never will where it is).
            excess -= 1
        order = sorted(old, key=lambda r: (r.replica not in never_bound, -r.replica))
        order += sorted(fresh, key=lambda r: (r.ready, -r.replica))
        reasons = [EventReason.ROLLING_UPDATE if r in old else EventReason.SCALED_DOWN for r in order]
        return WorkloadStep((), None, tuple(zip(order[:excess], reasons[:excess], strict=True)), None)

    if len(live) < wanted:
        return WorkloadStep(lowest_free(taken, wanted - len(live)), None, (), None)

    # Replicas on a node being left that serve nothing (its Node went NotReady): replaced at once, all of
    # them, not one surge at a time — nothing is served by waiting, and the replacements start loading
    # while the node has its grace. The replaced ones go once the replacements push the count over.
    unserving = tuple(r for r in old if r.replica in draining and not r.ready)
    if unserving and not settling:
        return WorkloadStep(lowest_free(taken, len(unserving)), None, (), None, unserving)

    if old and not settling and all(r.ready for r in live):
        (surge,) = lowest_free(taken, 1)
        return WorkloadStep((surge,), surge, (), max(old, key=lambda r: r.replica))
    return WorkloadStep((), None, (), None)
