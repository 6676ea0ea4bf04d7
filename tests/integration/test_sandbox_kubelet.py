"""The simulated kubelet with pods of others: it runs a pod the operator did not create like any other, counts
what it holds against the Node's status.allocatable, rejects a pod bound to a node without room as the real
kubelet's admission does, and frees the devices when the job finishes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import pytest

from gpufabric.sandbox.emulator import FabricEmulator, JsonDict
from gpufabric.sandbox.kubelet import SimulatedKubelet
from gpufabric.sandbox.run import foreign_job_pod

PODS = "v1/pods"


@pytest.fixture
async def kubelet() -> AsyncIterator[SimulatedKubelet]:
    async with FabricEmulator() as emulator, kmock.Server(emulator):
        async with SimulatedKubelet(emulator, interval=0.02, ready_after=0.05, terminate_after=0.05) as kubelet:
            yield kubelet
            assert kubelet.errors == []
        assert emulator.errors == []


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def status(kubelet: SimulatedKubelet, name: str, namespace: str = "batch") -> JsonDict:
    found = kubelet.emulator.get_object(PODS, name, namespace)
    return {} if found is None else dict(found.get("status") or {})


def replica_pod(name: str, node: str, gpus: int, *, bound: bool) -> dict[str, Any]:
    """A pod as the operator's: pinned by node affinity (kube-scheduler binds it), or bound directly."""
    container = {"name": "server", "image": "vllm", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
    spec: dict[str, Any] = {"containers": [container]}
    if bound:
        spec["nodeName"] = node
    else:
        expression = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
        required = {"nodeSelectorTerms": [{"matchExpressions": [expression]}]}
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    labels = {"app.kubernetes.io/managed-by": "gpu-fabric-operator"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}


async def test_a_foreign_job_runs_holds_its_devices_and_frees_them_when_it_finishes(
    kubelet: SimulatedKubelet,
) -> None:
    emulator = kubelet.emulator
    await kubelet.add_node("gpu-0", {"nvidia.com/gpu": "8"})
    await emulator.h_create(PODS, foreign_job_pod("training", "gpu-0", "nvidia.com/gpu", 8), namespace="batch")
    await eventually(lambda: status(kubelet, "training").get("phase") == "Running")

    # A pod bound to the full node is refused by admission, in the real kubelet's words; one the scheduler
    # would place there waits, Pending.
    await emulator.h_create(PODS, replica_pod("bound", "gpu-0", 2, bound=True), namespace="agents")
    await emulator.h_create(PODS, replica_pod("waiting", "gpu-0", 2, bound=False), namespace="agents")
    await eventually(lambda: status(kubelet, "bound", "agents").get("phase") == "Failed")
    refused = status(kubelet, "bound", "agents")
    assert refused["reason"] == "OutOfnvidia.com/gpu"
    assert refused["message"] == (
        "Pod was rejected: Node didn't have enough resource: nvidia.com/gpu, requested: 2, used: 8, capacity: 8"
    )
    assert status(kubelet, "waiting", "agents")["phase"] == "Pending"

    finished = await kubelet.finish_pod("training", "batch")
    assert finished["status"]["phase"] == "Succeeded"
    [container] = finished["status"]["containerStatuses"]
    assert container["state"]["terminated"]["reason"] == "Completed"
    assert container["state"]["terminated"]["exitCode"] == 0
    assert not any(c["type"] == "Ready" and c["status"] == "True" for c in finished["status"]["conditions"])
    await eventually(lambda: status(kubelet, "waiting", "agents").get("phase") == "Running")
    await asyncio.sleep(0.1)  # several passes: a finished pod is not started again
    assert status(kubelet, "training")["phase"] == "Succeeded"


async def test_what_a_node_advertises_bounds_what_runs_there(kubelet: SimulatedKubelet) -> None:
    """The Node's status.allocatable, read each pass: a device plugin advertising fewer admits fewer."""
    emulator = kubelet.emulator
    await kubelet.add_node("gpu-1", {"nvidia.com/gpu": "8"})
    await emulator.h_patch(
        "v1/nodes", "gpu-1", {"status": {"allocatable": {"nvidia.com/gpu": "6"}}}, subresource="status"
    )
    await emulator.h_create(PODS, foreign_job_pod("six", "gpu-1", "nvidia.com/gpu", 6), namespace="batch")
    await eventually(lambda: status(kubelet, "six").get("phase") == "Running")
    await emulator.h_create(PODS, replica_pod("one-more", "gpu-1", 1, bound=True), namespace="agents")
    await eventually(lambda: status(kubelet, "one-more", "agents").get("phase") == "Failed")
    assert status(kubelet, "one-more", "agents")["message"].endswith("requested: 1, used: 6, capacity: 6")


async def test_finishing_a_pod_that_is_gone_says_which(kubelet: SimulatedKubelet) -> None:
    with pytest.raises(LookupError, match="no pod batch/nothing"):
        await kubelet.finish_pod("nothing", "batch")
