"""The shell's own logic without a server: expectations over lagging indexes, how a pass's writes are
carried out when some fail, and status/event de-duplication."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from gpufabric.controller.expectations import Expectations
from gpufabric.controller.kube import WriteFailedError
from gpufabric.controller.reconciler import LoopSettings, Reconciler
from gpufabric.reconcile import ClusterState, CreatePod, DeletePod, Event, PatchStatus, PodRecord
from gpufabric.vendors import Precision, Vendor


def record(name: str, *, terminating: bool = False) -> PodRecord:
    return PodRecord(
        namespace="ns",
        name=name,
        workload="w",
        replica=0,
        rank=0,
        compute_node="n1",
        devices=1,
        replica_nodes=("n1",),
        vendor=Vendor.NVIDIA,
        accelerator="H20",
        precision=Precision.BF16,
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
        expectations.expect_deleted("ns", "w-0-0")
        (pod,) = expectations.overlay([record("w-0-0")])
        assert pod.terminating
        assert expectations.overlay([]) == ()
        assert expectations.deleted == {}

    def test_expectations_expire(self) -> None:
        expectations = Expectations(ttl=0.0)
        expectations.expect_created(record("w-0-0"))
        assert expectations.overlay([]) == ()


class FakeKube:
    """Records writes; fails the ones `failing` names."""

    def __init__(self, failing: Callable[[str], Exception | None] = lambda _: None) -> None:
        self.done: list[str] = []
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

    async def patch_status(self, kind: str, namespace: str | None, name: str, status: dict[str, Any]) -> None:
        await self._write(f"status {name}")

    async def event(self, **kwargs: Any) -> None:
        await self._write(f"event {kwargs['reason']}")


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


async def test_one_failing_write_does_not_stop_the_others() -> None:
    kube = FakeKube(lambda what: RuntimeError("boom") if what == "create w-0-0" else None)
    target = reconciler(kube)
    failed = await target.execute(
        (
            CreatePod(pod("w-0-0")),
            CreatePod(pod("w-1-0")),
            DeletePod("ns", "old-0-0", force=False, reason="ScaledDown"),
        ),
        EMPTY,
    )
    assert failed
    assert sorted(kube.done) == ["create w-1-0", "delete old-0-0"]
    assert target.metrics.errors.labels(action="create-pod")._value.get() == 1


async def test_a_failed_write_waits_out_its_backoff_instead_of_hammering() -> None:
    calls: list[str] = []

    def failing(what: str) -> Exception | None:
        calls.append(what)
        return WriteFailedError(what, 503, "unavailable")

    target = reconciler(FakeKube(failing))
    await target.execute((CreatePod(pod("w-0-0")),), EMPTY)
    await target.execute((CreatePod(pod("w-0-0")),), EMPTY)
    assert calls == ["create w-0-0"], "the second pass did not retry within the backoff"


async def test_an_unchanged_status_patch_is_not_resent_while_the_watch_catches_up() -> None:
    kube = FakeKube()
    target = reconciler(kube)
    patch = PatchStatus("AgentWorkload", "ns", "w", {"replicas": 1})
    await target.execute((patch,), EMPTY)
    await target.execute((patch,), EMPTY)
    assert kube.done == ["status w"]


async def test_identical_events_are_sent_once_a_minute() -> None:
    kube = FakeKube()
    target = reconciler(kube)
    event = Event("AgentWorkload", "ns", "w", None, "Warning", "Unschedulable", "0/1 nodes: ...")
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
