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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.computenode import ComputeNode
from gpufabric.controller.expectations import Expectations
from gpufabric.controller.kube import Kube, WriteFailedError
from gpufabric.controller.leader import Leadership
from gpufabric.exporter import OperatorMetrics
from gpufabric.reconcile import (
    Action,
    ClusterState,
    CreatePod,
    CreateService,
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
from gpufabric.reconcile.observe import pod_record
from gpufabric.throughput import TokenTracker

log = logging.getLogger(__name__)
COMPONENT = "gpu-fabric-operator"

# The index names the handlers register (kopf passes each index to handlers under its function's name).
POD_INDEX = "gf_pods"
NODE_INDEX = "gf_nodes"
COMPUTE_NODE_INDEX = "gf_compute_nodes"
WORKLOAD_INDEX = "gf_workloads"
SERVICE_INDEX = "gf_services"
INDEX_NAMES = (POD_INDEX, NODE_INDEX, COMPUTE_NODE_INDEX, WORKLOAD_INDEX, SERVICE_INDEX)


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

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._failures = 0
        # action key -> (failures, monotonic time before which it is not retried)
        self._held: dict[str, tuple[int, float]] = {}
        self._sent_status: dict[str, tuple[Any, Any]] = {}
        self._recent_events: dict[tuple[str, str, str], float] = {}
        self._tokens_written: dict[str, float] = {}
        self.last_outcome: Outcome | None = None
        self.last_state: ClusterState | None = None
        self.last_error: str | None = None
        self.passes = 0

    # --- signals from handlers --------------------------------------------------------------------------

    def bind(self, indexes: Mapping[str, Any]) -> None:
        self.indexes = indexes

    def indexes_ready(self) -> None:
        self._ready.set()

    def trigger(self) -> None:
        self._wake.set()

    def tokens_changed(self) -> None:
        """A scrape round finished: status and the autoscaler may have news."""
        self._wake.set()

    # --- the loop -----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await _until(self._ready.wait(), stop)
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
        self.last_state = state
        started = time.perf_counter()
        outcome = await asyncio.to_thread(reconcile, state, self.settings)
        self.metrics.placement_seconds.observe(time.perf_counter() - started)
        self.metrics.passes.inc()
        self.metrics.replicas_placed.inc(len(outcome.placed))
        failed = await self.execute(outcome.actions, state)
        self._failures = self._failures + 1 if failed else 0
        self.last_outcome = outcome
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
        targets = [f"AgentWorkload:{k}" for k in workloads] + [f"ComputeNode:{n}" for n in compute_nodes]
        stale = frozenset(t for t in targets if now - self._tokens_written.get(t, 0.0) >= self.loop.tokens_min_interval)
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
        )

    # --- actions ----------------------------------------------------------------------------------------------

    async def execute(self, actions: tuple[Action, ...], state: ClusterState) -> bool:
        """Deletes first (they free devices), then creates, then statuses, then events. Returns whether any
        write failed for good."""
        gate = asyncio.Semaphore(self.loop.concurrency)
        failed = False

        async def guarded(key: str, write: Callable[[], Awaitable[None]], on_success: Callable[[], None]) -> None:
            nonlocal failed
            held = self._held.get(key)
            if held and held[1] > time.monotonic():
                failed = True
                return
            async with gate:
                try:
                    await write()
                except Exception as error:  # one failed write must not stop the others
                    if not isinstance(error, WriteFailedError):
                        log.exception("%s failed", key)
                        error = WriteFailedError(key, None, repr(error))
                    failed = True
                    count = (held[0] if held else 0) + 1
                    self._held[key] = (count, time.monotonic() + self.loop.action_backoff * 2 ** (count - 1))
                    self.metrics.errors.labels(action=key.split(":", 1)[0]).inc()
                    log.warning("%s", error)
                    self.last_error = str(error)
                    if error.status == 422:
                        await self._report_invalid(key, error)
                    return
            self._held.pop(key, None)
            on_success()

        deletes: list[Awaitable[None]] = []
        creates: list[Awaitable[None]] = []
        statuses: list[Awaitable[None]] = []
        events: list[Awaitable[None]] = []
        for action in actions:
            match action:
                case DeletePod(namespace=ns, name=name, force=force):
                    deletes.append(
                        guarded(
                            f"delete-pod:{ns}/{name}",
                            partial(self.kube.delete_pod, ns, name, force=force),
                            partial(self.expectations.expect_deleted, ns, name),
                        )
                    )
                case DeleteService(namespace=ns, name=name):
                    deletes.append(
                        guarded(f"delete-service:{ns}/{name}", partial(self.kube.delete_service, ns, name), _nothing)
                    )
                case CreatePod(manifest=manifest):
                    creates.append(
                        guarded(
                            f"create-pod:{action.key}",
                            partial(self.kube.create_pod, manifest),
                            partial(self.expectations.expect_created, pod_record(manifest)),
                        )
                    )
                case CreateService(manifest=manifest):
                    creates.append(
                        guarded(f"create-service:{action.key}", partial(self.kube.create_service, manifest), _nothing)
                    )
                case PatchStatus(kind=kind, namespace=ns, name=name, status=status):
                    target = f"{kind}:{ns or ''}/{name}"
                    if self._status_already_sent(target, status, state):
                        continue
                    statuses.append(
                        guarded(
                            f"patch-status:{target}",
                            partial(self.kube.patch_status, kind, ns, name, status),
                            partial(self._remember_status, target, status, state),
                        )
                    )
                case ScaleWorkload(namespace=ns, name=name, replicas=replicas):
                    creates.append(
                        guarded(f"scale:{ns}/{name}", partial(self.kube.scale_workload, ns, name, replicas), _nothing)
                    )
                case Event():
                    if self._recently_sent(action):
                        continue
                    # What the operator did, in the words its events use: the log a person reads.
                    log.log(
                        logging.WARNING if action.type == "Warning" else logging.INFO,
                        "%s %s/%s: %s: %s",
                        action.kind,
                        action.namespace,
                        action.name,
                        action.reason,
                        action.message,
                    )
                    events.append(
                        guarded(
                            f"event:{action.namespace}/{action.name}:{action.reason}",
                            partial(
                                self.kube.event,
                                kind=action.kind,
                                namespace=action.namespace,
                                name=action.name,
                                uid=action.uid,
                                type_=action.type,
                                reason=action.reason,
                                message=action.message,
                                component=COMPONENT,
                            ),
                            _nothing,
                        )
                    )
        for batch in (deletes, creates, statuses, events):
            await asyncio.gather(*batch)
        return failed

    def _observed_status(self, target: str, state: ClusterState) -> Any:
        kind, _, key = target.partition(":")
        if kind == "AgentWorkload":
            workload = state.workloads.get(key)
            return workload.status.wire() if workload and workload.status else None
        node = state.compute_nodes.get(key.lstrip("/"))
        return node.status.wire() if node and node.status else None

    def _status_already_sent(self, target: str, status: dict[str, Any], state: ClusterState) -> bool:
        """The same patch was sent while the indexed status has not moved since: the watch has not caught up."""
        sent = self._sent_status.get(target)
        return sent is not None and sent[0] == status and sent[1] == self._observed_status(target, state)

    def _remember_status(self, target: str, status: dict[str, Any], state: ClusterState) -> None:
        self._sent_status[target] = (status, self._observed_status(target, state))
        if "tokensPerSecond" in status:
            kind, _, key = target.partition(":")
            self._tokens_written[f"{kind}:{key.lstrip('/')}"] = time.monotonic()

    def _recently_sent(self, event: Event, window: float = 60.0) -> bool:
        key = (f"{event.namespace}/{event.name}", event.reason, event.message)
        now = time.monotonic()
        self._recent_events = {k: t for k, t in self._recent_events.items() if t > now}
        if key in self._recent_events:
            return True
        self._recent_events[key] = now + window
        return False

    async def _report_invalid(self, key: str, error: WriteFailedError) -> None:
        """The API server refused what we rendered (e.g. an env var it rejects): say so on the workload."""
        _, _, target = key.partition(":")
        namespace, _, name = target.partition("/")
        workload = name.rsplit("-", 2)[0] if key.startswith("create-pod:") else name
        try:
            await self.kube.event(
                kind="AgentWorkload",
                namespace=namespace,
                name=workload,
                uid=None,
                type_="Warning",
                reason="CreateFailed",
                message=f"{error.what}: {error.reason}",
                component=COMPONENT,
            )
        except WriteFailedError:
            log.warning("could not report %s", error)


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
