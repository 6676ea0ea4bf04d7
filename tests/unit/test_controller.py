"""The shell's own logic without a server: expectations over lagging indexes, how a pass's writes are
carried out when some fail, and status/event de-duplication."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from gpufabric.api.reasons import EventReason, EventType
from gpufabric.api.refs import Allocation, Kind, ObjectRef, workload_ref
from gpufabric.controller.expectations import Expectations
from gpufabric.controller.kube import WriteFailedError
from gpufabric.controller.reconciler import LoopSettings, Reconciler
from gpufabric.controller.run import Operator, OperatorOptions
from gpufabric.exporter import FleetView
from gpufabric.placement import PriorThroughput
from gpufabric.reconcile import (
    Action,
    ClusterState,
    CreatePod,
    CreateService,
    DeletePod,
    DeleteService,
    Event,
    PatchStatus,
    PodRecord,
    ScaleWorkload,
)
from gpufabric.reconcile.passes import Outcome, Settings
from gpufabric.throughput import LearnedThroughput, TokenTracker
from gpufabric.vendors import ACCELERATORS, Precision, Vendor

WORKLOAD = workload_ref("ns", "w")
NODE = ObjectRef(Kind.COMPUTE_NODE, None, "n1")


def pod_ref(name: str) -> ObjectRef:
    return ObjectRef(Kind.POD, "ns", name)


def record(name: str, *, terminating: bool = False) -> PodRecord:
    return PodRecord(
        ref=pod_ref(name),
        workload=WORKLOAD,
        replica=0,
        rank=0,
        compute_node="n1",
        allocation=Allocation(Vendor.NVIDIA, "H20", Precision.BF16, 1, ("n1",)),
        template_hash="h",
        terminating=terminating,
    )


class TestExpectations:
    def test_a_created_pod_counts_until_the_watch_shows_it(self) -> None:
        expectations = Expectations()
        expectations.expect_created(record("w-0-0"))
        assert [p.name for p in expectations.overlay([])] == ["w-0-0"]
        assert [p.name for p in expectations.overlay([record("w-0-0")])] == ["w-0-0"]
        assert expectations.created == {}, "seen: forgotten"

    def test_a_deleted_pod_holds_its_devices_as_terminating_until_gone(self) -> None:
        expectations = Expectations()
        expectations.expect_deleted(pod_ref("w-0-0"))
        (pod,) = expectations.overlay([record("w-0-0")])
        assert pod.terminating
        assert expectations.overlay([]) == ()
        assert expectations.deleted == {}

    def test_expectations_expire(self) -> None:
        expectations = Expectations(ttl=0.0)
        expectations.expect_created(record("w-0-0"))
        assert expectations.overlay([]) == ()


class FakeKube:
    """Records writes and the events sent; fails the writes `failing` names."""

    def __init__(self, failing: Callable[[str], Exception | None] = lambda _: None) -> None:
        self.done: list[str] = []
        self.events: list[tuple[ObjectRef, EventType, EventReason, str]] = []
        self.failing = failing

    async def _write(self, what: str) -> None:
        await asyncio.sleep(0)
        error = self.failing(what)
        if error is not None:
            raise error
        self.done.append(what)

    async def create_pod(self, manifest: dict[str, Any]) -> None:
        await self._write(f"create {manifest['metadata']['name']}")

    async def delete_pod(self, namespace: str, name: str, *, force: bool) -> None:
        await self._write(f"delete {name}")

    async def create_service(self, manifest: dict[str, Any]) -> None:
        await self._write(f"create service {manifest['metadata']['name']}")

    async def delete_service(self, namespace: str, name: str) -> None:
        await self._write(f"delete service {name}")

    async def patch_status(self, target: ObjectRef, status: dict[str, Any]) -> None:
        await self._write(f"status {target.name}")

    async def scale_workload(self, namespace: str, name: str, replicas: int) -> None:
        await self._write(f"scale {name}")

    async def event(
        self, about: ObjectRef, uid: str | None, type_: EventType, reason: EventReason, message: str
    ) -> None:
        await self._write(f"event {reason.value}")
        self.events.append((about, type_, reason, message))


def pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {"gpufabric.io/workload": "w", "gpufabric.io/replica": "0", "gpufabric.io/rank": "0"},
            "annotations": {
                "gpufabric.io/compute-node": "n1",
                "gpufabric.io/devices": "1",
                "gpufabric.io/replica-nodes": "n1",
                "gpufabric.io/vendor": "nvidia",
                "gpufabric.io/accelerator": "H20",
                "gpufabric.io/precision": "BF16",
            },
        }
    }


EMPTY = ClusterState(compute_nodes={}, nodes={}, workloads={}, pods=(), services={}, now=datetime.now(UTC))


def reconciler(kube: FakeKube) -> Reconciler:
    return Reconciler(kube=kube, loop=LoopSettings(action_backoff=60.0))  # type: ignore[arg-type]


def errors(target: Reconciler, action: str) -> float:
    """gpufabric_reconcile_errors_total{action=...}, read as Prometheus would."""
    value = target.metrics.registry.get_sample_value("gpufabric_reconcile_errors_total", {"action": action})
    return value or 0.0


def service(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns"}}


INVALID = WriteFailedError("the write", 422, "Unprocessable Entity: spec.x: Invalid value")

# Every kind of write, the API server refusing it as invalid, and where the warning must land: the
# AgentWorkload it was for (or the ComputeNode whose status it was) — never an object named after a part
# of the write's key.
REFUSED_WRITES: dict[str, tuple[Action, str, ObjectRef, EventReason]] = {
    "create-pod": (CreatePod(pod("chat-3-0"), WORKLOAD), "create chat-3-0", WORKLOAD, EventReason.CREATE_FAILED),
    "delete-pod": (
        DeletePod(pod_ref("chat-3-0"), WORKLOAD, force=True),
        "delete chat-3-0",
        WORKLOAD,
        EventReason.DELETE_FAILED,
    ),
    "create-service": (
        CreateService(service("chat-3"), WORKLOAD),
        "create service chat-3",
        WORKLOAD,
        EventReason.CREATE_FAILED,
    ),
    "delete-service": (
        DeleteService(ObjectRef(Kind.SERVICE, "ns", "chat-3"), WORKLOAD),
        "delete service chat-3",
        WORKLOAD,
        EventReason.DELETE_FAILED,
    ),
    "workload-status": (PatchStatus(WORKLOAD, {"replicas": 1}), "status w", WORKLOAD, EventReason.UPDATE_FAILED),
    "node-status": (PatchStatus(NODE, {"freeDevices": 1}), "status n1", NODE, EventReason.UPDATE_FAILED),
    "scale": (ScaleWorkload(WORKLOAD, 4), "scale w", WORKLOAD, EventReason.UPDATE_FAILED),
}


@pytest.mark.parametrize("name", sorted(REFUSED_WRITES))
async def test_a_write_refused_as_invalid_is_reported_on_the_object_it_was_for(name: str) -> None:
    action, write, about, reason = REFUSED_WRITES[name]
    kube = FakeKube(lambda what: INVALID if what == write else None)
    target = reconciler(kube)
    assert await target.execute((action,), EMPTY)
    assert kube.done == [f"event {reason.value}"]
    ((reported_on, kind, said, message),) = kube.events
    assert reported_on == about
    assert kind is EventType.WARNING
    assert said is reason
    assert message == "the write: Unprocessable Entity: spec.x: Invalid value"
    assert errors(target, action.verb) == 1


async def test_a_refused_event_is_not_reported_with_another_event() -> None:
    event = Event(WORKLOAD, None, EventType.NORMAL, EventReason.PLACED, "x" * 2000)
    kube = FakeKube(lambda what: INVALID if what == "event Placed" else None)
    target = reconciler(kube)
    assert await target.execute((event,), EMPTY)
    assert kube.events == []
    assert errors(target, "event") == 1


async def test_one_failing_write_does_not_stop_the_others() -> None:
    kube = FakeKube(lambda what: RuntimeError("boom") if what == "create w-0-0" else None)
    target = reconciler(kube)
    failed = await target.execute(
        (
            CreatePod(pod("w-0-0"), WORKLOAD),
            CreatePod(pod("w-1-0"), WORKLOAD),
            DeletePod(pod_ref("old-0-0"), WORKLOAD, force=False),
        ),
        EMPTY,
    )
    assert failed
    assert sorted(kube.done) == ["create w-1-0", "delete old-0-0"]
    assert errors(target, "create-pod") == 1


async def test_a_failed_write_waits_out_its_backoff_instead_of_hammering() -> None:
    calls: list[str] = []

    def failing(what: str) -> Exception | None:
        calls.append(what)
        return WriteFailedError(what, 503, "unavailable")

    target = reconciler(FakeKube(failing))
    await target.execute((CreatePod(pod("w-0-0"), WORKLOAD),), EMPTY)
    await target.execute((CreatePod(pod("w-0-0"), WORKLOAD),), EMPTY)
    assert calls == ["create w-0-0"], "the second pass did not retry within the backoff"


async def test_an_unchanged_status_patch_is_not_resent_while_the_watch_catches_up() -> None:
    kube = FakeKube()
    target = reconciler(kube)
    patch = PatchStatus(WORKLOAD, {"replicas": 1})
    await target.execute((patch,), EMPTY)
    await target.execute((patch,), EMPTY)
    assert kube.done == ["status w"]


async def test_identical_events_are_sent_once_a_minute() -> None:
    kube = FakeKube()
    target = reconciler(kube)
    event = Event(WORKLOAD, None, EventType.WARNING, EventReason.UNSCHEDULABLE, "0/1 nodes: ...")
    await target.execute((event,), EMPTY)
    await target.execute((event,), EMPTY)
    assert kube.done == ["event Unschedulable"]


@pytest.mark.parametrize("trigger_first", [True, False])
async def test_no_pass_runs_before_the_indexes_are_complete(trigger_first: bool) -> None:
    target = reconciler(FakeKube())
    target.loop = LoopSettings(debounce=0.0, resync=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(target.run(stop))
    if trigger_first:
        target.trigger()
    await asyncio.sleep(0.2)
    assert target.passes == 0, "waits for kopf to fill the indexes"
    target.indexes_ready()
    target.trigger()
    await asyncio.sleep(0.2)
    stop.set()
    await task
    assert target.passes >= 1


async def test_a_pass_reads_a_snapshot_of_learned_throughput_not_the_live_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pass runs in a worker thread while the scraper keeps learning on the loop: it must be handed a
    copy nobody changes, and the exporter a view published whole."""
    tracker = TokenTracker(prior=PriorThroughput(dict(ACCELERATORS)))
    tracker.learned.observe("H20", Precision.BF16, 8.0, 1, 1000.0)
    target = Reconciler(kube=FakeKube(), tokens=tracker)  # type: ignore[arg-type]
    seen: list[Any] = []

    def capture(state: ClusterState, settings: Settings) -> Outcome:
        seen.append(settings.source)
        tracker.learned.observe("H20", Precision.BF16, 8.0, 1, 5000.0)  # the scraper learns meanwhile
        return Outcome((), None, (), 0)

    monkeypatch.setattr("gpufabric.controller.reconciler.reconcile", capture)
    await target.run_pass()
    (source,) = seen
    assert source is not tracker.learned
    assert isinstance(source, LearnedThroughput)
    assert source.entries[("8B", "H20", "BF16")].samples == 1, "the pass's copy did not move"
    assert tracker.learned.entries[("8B", "H20", "BF16")].samples == 2
    view = target.published
    assert view.tokens is not None
    assert view.tokens.learned.entries[("8B", "H20", "BF16")].samples == 1, "the published view did not move"


async def test_an_instance_that_stops_leading_stops_exporting_the_fleet() -> None:
    """A former leader's last view would be summed with the new leader's and go stale: it is dropped."""
    target = reconciler(FakeKube())
    target.loop = LoopSettings(debounce=0.0, resync=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(target.run(stop))
    target.indexes_ready()
    target.trigger()
    await asyncio.sleep(0.2)
    assert target.published.state is not None, "the leader publishes what it saw"
    target.leadership.leading = False
    target.trigger()
    await asyncio.sleep(0.2)
    stop.set()
    await task
    assert target.published == FleetView()


def test_no_handler_reads_kopfs_last_handled_state() -> None:
    """UnusedDiffBase skips kopf's per-event deep copy of each body; that is right only while no handler
    reacts to changes (on.create/update/resume/field, daemons, timers). Adding one must fail here first."""
    operator = Operator(OperatorOptions(discover_nodes=True), client.ApiClient())
    registry = operator.registry
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    assert list(registry._indexing.get_all_handlers())  # the indexes are there: the registry is the real one
    operator.kube.close()


async def test_an_unschedulable_workload_is_said_once_in_ten_minutes_whatever_its_count_of_nodes() -> None:
    kube = FakeKube()
    target = reconciler(kube)
    first = Event(WORKLOAD, None, EventType.WARNING, EventReason.UNSCHEDULABLE, "0/10 nodes: 10 not Ready")
    recount = Event(WORKLOAD, None, EventType.WARNING, EventReason.UNSCHEDULABLE, "0/10 nodes: 9 not Ready, 1 …")
    placed = Event(WORKLOAD, None, EventType.NORMAL, EventReason.PLACED, "replica 0 placed")
    placed_again = Event(WORKLOAD, None, EventType.NORMAL, EventReason.PLACED, "replica 1 placed")
    await target.execute((first, placed), EMPTY)
    await target.execute((recount, placed_again), EMPTY)
    assert [(reason, message) for _, _, reason, message in kube.events] == [
        (EventReason.UNSCHEDULABLE, first.message),
        (EventReason.PLACED, placed.message),
        (EventReason.PLACED, placed_again.message),  # other reasons: a new message is a new event
    ]


async def test_each_workload_reads_placed_once_its_own_pods_exist_not_once_every_pod_does() -> None:
    kube = FakeKube()
    target = Reconciler(kube=kube, loop=LoopSettings(concurrency=1))  # type: ignore[arg-type]
    other = workload_ref("ns", "v")
    node_ref = ObjectRef(Kind.COMPUTE_NODE, None, "n1")
    actions = (
        PatchStatus(node_ref, {"freeDevices": 6}),
        CreatePod(pod("w-0-0"), WORKLOAD),
        CreatePod(pod("v-0-0"), other),
        PatchStatus(WORKLOAD, {"replicas": 1}),
        PatchStatus(other, {"replicas": 1}),
        Event(WORKLOAD, None, EventType.NORMAL, EventReason.PLACED, "w placed"),
        Event(other, None, EventType.NORMAL, EventReason.PLACED, "v placed"),
        DeletePod(pod_ref("v-9-0"), other, force=False),
    )
    assert not await target.execute(actions, EMPTY)
    assert kube.done == [
        "delete v-9-0",  # deletes first: they free devices
        "create w-0-0",
        "status w",
        "event Placed",
        "create v-0-0",
        "status v",
        "event Placed",
        "status n1",  # ComputeNodes after the workloads
    ]
