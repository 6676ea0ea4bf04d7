"""The one reconcile loop: waits for a trigger, builds the pass's state from the indexes, runs the pure pass
in a worker thread, and carries out its actions.

Passes never overlap (one task runs them), so two workloads never race for devices. The first pass waits
until kopf has filled every index (the first resource handler calls `indexes_ready`), so a restarted
operator sees every pod it owns before it places anything. Triggers arriving during a pass coalesce into
one next pass; a slow periodic pass (`resync`) is the safety net; a node's grace deadline wakes it too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from functools import partial
from typing import Any

from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.computenode import ComputeNode
from gpufabric.api.reasons import EventReason, EventType
from gpufabric.api.refs import Kind, ObjectRef
from gpufabric.controller.clusterwatch import Others
from gpufabric.controller.expectations import Expectations
from gpufabric.controller.kube import Kube, NamespaceTerminatingError, WriteFailedError
from gpufabric.controller.leader import Leadership
from gpufabric.exporter import FleetView, OperatorMetrics
from gpufabric.reconcile import (
    Action,
    ApplyConfigMap,
    ClusterState,
    CreatePod,
    CreateService,
    DeleteConfigMap,
    DeletePod,
    DeleteService,
    Event,
    InvalidWorkload,
    NodeHealth,
    Outcome,
    OwnedService,
    PatchStatus,
    PodRecord,
    ScaleWorkload,
    Settings,
    reconcile,
)
from gpufabric.reconcile.actions import RetryKey, retry_key
from gpufabric.reconcile.observe import pod_record
from gpufabric.reconcile.passes import Avoided
from gpufabric.reconcile.state import DraInventory
from gpufabric.throughput import TokenTracker

log = logging.getLogger(__name__)

# The index names the handlers register (kopf passes each index to handlers under its function's name).
POD_INDEX = "gf_pods"
NODE_INDEX = "gf_nodes"
COMPUTE_NODE_INDEX = "gf_compute_nodes"
WORKLOAD_INDEX = "gf_workloads"
SERVICE_INDEX = "gf_services"
NAMESPACE_INDEX = "gf_terminating_namespaces"
INDEX_NAMES = (POD_INDEX, NODE_INDEX, COMPUTE_NODE_INDEX, WORKLOAD_INDEX, SERVICE_INDEX, NAMESPACE_INDEX)
# The first pass waits at most this long for others' pods and DRA objects to be listed.
OTHERS_FIRST_LIST = 30.0


class Batch(Enum):
    """The order a pass's writes run in: deletes free devices before creates take them; then, per object,
    its creates, its status, its events."""

    DELETES = 1
    CREATES = 2
    STATUSES = 3
    EVENTS = 4


CHAINED = (Batch.CREATES, Batch.STATUSES, Batch.EVENTS)


@dataclass
class LoopSettings:
    debounce: float = 0.2
    resync: float = 60.0
    concurrency: int = 16
    first_backoff: float = 1.0
    max_backoff: float = 60.0
    # an action that failed is not retried by later passes until this long has passed (it doubles)
    action_backoff: float = 2.0
    # tokensPerSecond is refreshed at least this often (if it changed at all), more often if it moved a lot
    tokens_min_interval: float = 60.0


@dataclass
class Reconciler:
    kube: Kube
    settings: Settings = field(default_factory=Settings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    leadership: Leadership = field(default_factory=Leadership.always)
    expectations: Expectations = field(default_factory=Expectations)
    indexes: Mapping[str, Any] = field(default_factory=dict)
    tokens: TokenTracker | None = None
    # others' pods and DRA objects (None: nobody else holds devices, as in unit tests)
    others: Others | None = None

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._failures = 0
        # retry key -> (failures, monotonic time before which it is not retried)
        self._held: dict[RetryKey, tuple[int, float]] = {}
        self._sent_status: dict[ObjectRef, tuple[Any, Any]] = {}
        self._recent_events: dict[tuple[ObjectRef, EventReason, str], float] = {}
        self._events_pruned = 0.0
        self._tokens_written: dict[ObjectRef, float] = {}
        self._applied_config_maps: dict[ObjectRef, dict[str, str]] = {}
        self.last_outcome: Outcome | None = None
        self.last_state: ClusterState | None = None
        # what the exporter shows (read from prometheus-client's thread): replaced whole, never changed
        self.published = FleetView()
        self.last_error: str | None = None
        self.passes = 0
        # nodes kube-scheduler refused workloads' replicas on, from the last pass
        self._avoided: Avoided = {}

    # --- signals from handlers --------------------------------------------------------------------------

    def bind(self, indexes: Mapping[str, Any]) -> None:
        self.indexes = indexes

    def indexes_ready(self) -> None:
        self._ready.set()

    def trigger(self) -> None:
        self._wake.set()

    # --- the loop -----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await _until(self._ready.wait(), stop)
        if self.others is not None:
            await _until(self.others.first_outcome(OTHERS_FIRST_LIST), stop)
        wake_at: datetime | None = None
        while not stop.is_set():
            timeout = self.loop.resync
            if wake_at is not None:
                timeout = min(timeout, max(0.0, (wake_at - datetime.now(UTC)).total_seconds()))
            if self._failures:
                timeout = min(timeout, self.loop.first_backoff * 2 ** (self._failures - 1), self.loop.max_backoff)
            await _until(self._wake.wait(), stop, timeout)
            if stop.is_set():
                break
            await asyncio.sleep(self.loop.debounce)  # let a burst of events land in the indexes
            self._wake.clear()
            self.metrics.leader.set(1 if self.leadership.leading else 0)
            if not self.leadership.leading:
                # A standby (or a leader that lost the Lease) exports no fleet: its last view would be
                # counted beside the leader's and go stale.
                self.published = FleetView()
                continue
            try:
                outcome = await self.run_pass()
                wake_at = outcome.wake_at
            except Exception as error:  # a pass must never kill the loop
                log.exception("reconcile pass failed")
                self.last_error = repr(error)
                self._failures += 1
                self.metrics.errors.labels(action="pass").inc()

    async def run_pass(self) -> Outcome:
        state = self.state()
        # The pass runs in a worker thread while the scraper keeps learning on the loop: it gets a copy of the
        # learned table that nothing changes (same input, same output).
        settings = replace(self.settings, source=self.tokens.learned.snapshot()) if self.tokens else self.settings
        self.last_state = state
        self.published = FleetView(state, self.tokens.view() if self.tokens else None)
        started = time.perf_counter()
        outcome = await asyncio.to_thread(reconcile, state, settings)
        self.metrics.placement_seconds.observe(time.perf_counter() - started)
        self.metrics.passes.inc()
        self.metrics.replicas_placed.inc(len(outcome.placed))
        failed = await self.execute(outcome.actions, state)
        self._failures = self._failures + 1 if failed else 0
        self.last_outcome = outcome
        self._avoided = outcome.avoided
        self.passes += 1
        return outcome

    # --- state ----------------------------------------------------------------------------------------------

    def _values(self, name: str) -> list[Any]:
        index = self.indexes.get(name)
        if index is None:
            return []
        return [value for store in index.values() for value in store]

    def _keyed(self, name: str) -> dict[str, Any]:
        """An index whose keys are object names (one value each) as a plain mapping."""
        return {key: value for key, store in (self.indexes.get(name) or {}).items() for value in store}

    def state(self, *, with_tokens: bool = True) -> ClusterState:
        compute_nodes = {v.name: v for v in self._values(COMPUTE_NODE_INDEX) if isinstance(v, ComputeNode)}
        workloads: dict[str, AgentWorkload] = {}
        invalid: dict[str, InvalidWorkload] = {}
        for value in self._values(WORKLOAD_INDEX):
            if isinstance(value, AgentWorkload):
                workloads[value.key] = value
            elif isinstance(value, InvalidWorkload):
                invalid[value.key] = value
        nodes: dict[str, NodeHealth] = self._keyed(NODE_INDEX)
        services: dict[str, OwnedService] = self._keyed(SERVICE_INDEX)
        pods = self.expectations.overlay(v for v in self._values(POD_INDEX) if isinstance(v, PodRecord))
        now = time.monotonic()
        report = self.tokens.report(workloads, now) if self.tokens is not None and with_tokens else None
        targets = [w.ref for w in workloads.values()] + [n.ref for n in compute_nodes.values()]
        stale = frozenset(t for t in targets if now - self._tokens_written.get(t, 0.0) >= self.loop.tokens_min_interval)
        foreign: dict[str, dict[str, int]] = {}
        foreign_known, dra = True, DraInventory()
        if self.others is not None:
            self.others.look_for(n.spec.device_resource_name for n in compute_nodes.values())
            foreign, foreign_known = self.others.foreign()
            dra = self.others.dra()
        return ClusterState(
            compute_nodes=compute_nodes,
            nodes=nodes,
            workloads=workloads,
            pods=pods,
            services=services,
            now=datetime.now(UTC),
            invalid_workloads=invalid,
            tokens=report,
            tokens_stale=stale,
            foreign=foreign,
            foreign_known=foreign_known,
            dra=dra,
            terminating_namespaces=frozenset(self._keyed(NAMESPACE_INDEX)),
            avoided=self._avoided,
        )

    # --- actions ----------------------------------------------------------------------------------------------

    async def execute(self, actions: tuple[Action, ...], state: ClusterState) -> bool:
        """Deletes first (they free devices). Then, for each object the pass acts for (workloads first, in
        the pass's order), its creates and scaling, then its status, then its events: a workload reads
        `Placed` as soon as its own pods exist, not once every pod of a pass of hundreds does. Returns
        whether any write failed for good."""
        writes = asyncio.Semaphore(self.loop.concurrency)
        deletes: list[Callable[[], Awaitable[bool]]] = []
        chains: dict[ObjectRef, dict[Batch, list[Callable[[], Awaitable[bool]]]]] = {}
        for action in actions:
            planned = self._plan(action, state)
            if planned is None:
                continue
            batch, write, on_success = planned
            guarded = partial(self._guarded, writes, action, write, on_success)
            if batch is Batch.DELETES:
                deletes.append(guarded)
            else:
                chains.setdefault(action.about, {step: [] for step in CHAINED})[batch].append(guarded)
        failed = not all(await asyncio.gather(*(delete() for delete in deletes)))
        # As many objects at a time as writes: each one's steps follow one another.
        objects = asyncio.Semaphore(self.loop.concurrency)

        async def chain(steps: dict[Batch, list[Callable[[], Awaitable[bool]]]]) -> bool:
            async with objects:
                done = True
                for step in CHAINED:
                    done &= all(await asyncio.gather(*(write() for write in steps[step])))
                return done

        ordered = sorted(chains.items(), key=lambda item: item[0].kind is not Kind.AGENT_WORKLOAD)  # stable
        return not all(await asyncio.gather(*(chain(steps) for _, steps in ordered))) or failed

    def _plan(
        self, action: Action, state: ClusterState
    ) -> tuple[Batch, Callable[[], Awaitable[None]], Callable[[], None]] | None:
        """Which batch an action runs in, its write, and what to remember once it succeeded; None to skip it."""
        match action:
            case DeletePod(target=pod, force=force):
                write = partial(self.kube.delete_pod, pod.namespace or "", pod.name, force=force)
                return Batch.DELETES, write, partial(self.expectations.expect_deleted, pod)
            case DeleteService(target=service):
                return Batch.DELETES, partial(self.kube.delete_service, service.namespace or "", service.name), _nothing
            case CreatePod(manifest=manifest):
                done = partial(self.expectations.expect_created, pod_record(manifest))
                return Batch.CREATES, partial(self.kube.create_pod, manifest), done
            case CreateService(manifest=manifest):
                return Batch.CREATES, partial(self.kube.create_service, manifest), _nothing
            case ApplyConfigMap() | DeleteConfigMap():
                return self._plan_config_map(action)
            case ScaleWorkload(target=workload, replicas=replicas):
                write = partial(self.kube.scale_workload, workload.namespace or "", workload.name, replicas)
                return Batch.CREATES, write, _nothing
            case PatchStatus(target=target, status=status):
                if self._status_already_sent(target, status, state):
                    return None
                write = partial(self.kube.patch_status, target, status)
                return Batch.STATUSES, write, partial(self._remember_status, target, status, state)
            case Event():
                if self._recently_sent(action):
                    return None
                # What the operator did, in the words its events use: the log a person reads.
                level = logging.WARNING if action.type is EventType.WARNING else logging.INFO
                log.log(level, "%s: %s: %s", action.about, action.reason.value, action.message)
                write = partial(self.kube.event, action.about, action.uid, action.type, action.reason, action.message)
                return Batch.EVENTS, write, _nothing

    def _plan_config_map(
        self, action: ApplyConfigMap | DeleteConfigMap
    ) -> tuple[Batch, Callable[[], Awaitable[None]], Callable[[], None]] | None:
        if isinstance(action, DeleteConfigMap):
            write = partial(self.kube.delete_config_map, action.target.namespace or "", action.target.name)
            return Batch.DELETES, write, partial(self._remember_config_map, action.target, None)
        # Once per content per operator run: a restarted operator re-applies each once (a patch with the same
        # data), and a replica index reused by a replica with other settings gets its new data.
        data = action.manifest["data"]
        if self._applied_config_maps.get(action.target) == data:
            return None
        done = partial(self._remember_config_map, action.target, data)
        return Batch.CREATES, partial(self.kube.apply_config_map, action.manifest, create_first=action.new), done

    def _remember_config_map(self, target: ObjectRef, data: dict[str, str] | None) -> None:
        if data is None:
            self._applied_config_maps.pop(target, None)
        else:
            self._applied_config_maps[target] = data

    async def _guarded(
        self,
        gate: asyncio.Semaphore,
        action: Action,
        write: Callable[[], Awaitable[None]],
        on_success: Callable[[], None],
    ) -> bool:
        """One write, unless its retry key is still backing off; a failure is counted, logged, backed off
        and (when the API server refused it as invalid) reported — never raised. Returns success."""
        key = retry_key(action)
        held = self._held.get(key)
        if held and held[1] > time.monotonic():
            return False
        async with gate:
            try:
                await write()
            except NamespaceTerminatingError:
                # The namespace went between the pass and the write: not a failure (the next pass sees it
                # terminating and writes nothing there).
                log.debug("%s %s: its namespace is being deleted", action.verb, describe(action))
                return True
            except Exception as error:  # one failed write must not stop the others
                if not isinstance(error, WriteFailedError):
                    log.exception("%s %s failed", action.verb, describe(action))
                    error = WriteFailedError(f"{action.verb} {describe(action)}", None, repr(error))
                count = (held[0] if held else 0) + 1
                self._held[key] = (count, time.monotonic() + self.loop.action_backoff * 2 ** (count - 1))
                self.metrics.errors.labels(action=action.verb).inc()
                log.warning("%s", error)
                self.last_error = str(error)
                if error.status == 422:
                    await self._report_refused(action, error)
                return False
        self._held.pop(key, None)
        on_success()
        return True

    def _observed_status(self, target: ObjectRef, state: ClusterState) -> Any:
        found = (
            state.workloads.get(target.key)
            if target.kind is Kind.AGENT_WORKLOAD
            else state.compute_nodes.get(target.key)
        )
        return found.status.wire() if found is not None and found.status is not None else None

    def _status_already_sent(self, target: ObjectRef, status: dict[str, Any], state: ClusterState) -> bool:
        """The same patch was sent while the indexed status has not moved since: the watch has not caught up."""
        sent = self._sent_status.get(target)
        return sent is not None and sent[0] == status and sent[1] == self._observed_status(target, state)

    def _remember_status(self, target: ObjectRef, status: dict[str, Any], state: ClusterState) -> None:
        self._sent_status[target] = (status, self._observed_status(target, state))
        if "tokensPerSecond" in status:
            self._tokens_written[target] = time.monotonic()

    def _recently_sent(self, event: Event, window: float = 60.0) -> bool:
        """The same event (object, reason, message) was sent within `window` seconds. An unschedulable
        workload's reason counts nodes ("0/1000 nodes: 999 …, 1 not Ready"): it changes with every node that
        comes or goes, so it is said once per UNSCHEDULABLE_EVERY per workload whatever the message (as
        kube-scheduler's events are rate-limited per object); its status's unschedulableReason always has
        the current count."""
        aggregated = event.reason in EVENTS_BY_REASON
        key = (event.about, event.reason, "" if aggregated else event.message)
        now = time.monotonic()
        if now >= self._events_pruned + window:
            self._recent_events = {k: t for k, t in self._recent_events.items() if t > now}
            self._events_pruned = now
        if self._recent_events.get(key, 0.0) > now:
            return True
        self._recent_events[key] = now + (UNSCHEDULABLE_EVERY if aggregated else window)
        return False

    async def _report_refused(self, action: Action, error: WriteFailedError) -> None:
        """The API server refused what we rendered as invalid (422): say so on the object the write was
        for — the AgentWorkload whose pod, Service, status or scale it was, or the ComputeNode."""
        if isinstance(action, Event):
            return  # an Event about a refused Event would be refused the same way
        reason = REFUSED_REASONS[action.verb]
        try:
            await self.kube.event(action.about, None, EventType.WARNING, reason, f"{error.what}: {error.reason}")
        except WriteFailedError:
            log.warning("could not report %s", error)


# Events said at most once per UNSCHEDULABLE_EVERY seconds per object and reason, whatever their message.
EVENTS_BY_REASON = frozenset({EventReason.UNSCHEDULABLE})
UNSCHEDULABLE_EVERY = 600.0

# The event that says a write was refused as invalid, by the write.
REFUSED_REASONS = {
    CreatePod.verb: EventReason.CREATE_FAILED,
    CreateService.verb: EventReason.CREATE_FAILED,
    ApplyConfigMap.verb: EventReason.CREATE_FAILED,
    DeleteConfigMap.verb: EventReason.DELETE_FAILED,
    DeletePod.verb: EventReason.DELETE_FAILED,
    DeleteService.verb: EventReason.DELETE_FAILED,
    PatchStatus.verb: EventReason.UPDATE_FAILED,
    ScaleWorkload.verb: EventReason.UPDATE_FAILED,
}


def describe(action: Action) -> ObjectRef:
    return action.about if isinstance(action, Event) else action.target


def _nothing() -> None:
    return None


async def _until(waiter: Awaitable[Any], stop: asyncio.Event, timeout: float | None = None) -> None:
    """Wait for `waiter`, `stop`, or `timeout`, whichever comes first."""
    first = asyncio.ensure_future(waiter)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({first, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (first, stopped):
            task.cancel()
