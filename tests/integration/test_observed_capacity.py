"""Capacity as the cluster reports it, with the real operator against the in-process API server: devices
held by pods the operator does not manage, a Node advertising fewer than declared, replicas kube-scheduler
will not bind moved elsewhere, and a namespace being deleted left alone."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest

from gpufabric.controller.clusterwatch import OTHERS_PODS
from integration.test_operator import chat, placements
from support.harness import CN, Cluster, eventually


def foreign_job(name: str, node: str, gpus: int, namespace: str = "training") -> dict[str, Any]:
    """Someone else's training pod, bound to `node` (as kube-scheduler would), holding `gpus` GPUs."""
    container = {"name": "train", "image": "trainer:v1", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "trainer"}},
        "spec": {"nodeName": node, "containers": [container]},
    }


def node_status(cluster: Cluster, name: str) -> dict[str, Any]:
    found = cluster.api.get_object(CN, name)
    assert found is not None
    return dict(found.get("status") or {})


def healthy(cluster: Cluster, name: str) -> dict[str, Any]:
    return next(c for c in node_status(cluster, name).get("conditions", []) if c["type"] == "Healthy")


async def three_nodes(cluster: Cluster) -> None:
    """gpu-0: a training job of others holds all 8; gpu-1: the device plugin advertises 7 of 8; gpu-2 healthy."""
    await cluster.namespace("agents")
    await cluster.namespace("training")
    for name in ("gpu-0", "gpu-1", "gpu-2"):
        await cluster.gpu_node(name, devices=8)
    await cluster.api.h_patch(
        "v1/nodes", "gpu-1", {"status": {"allocatable": {"nvidia.com/gpu": "7"}}}, subresource="status"
    )
    await cluster.api.h_create("v1/pods", foreign_job("trainer-0", "gpu-0", 8), namespace="training")


async def test_replicas_go_where_the_devices_really_are(cluster: Cluster) -> None:
    await three_nodes(cluster)
    cluster.start_operator()
    await cluster.apply(chat(replicas=2, devices=8))

    def one_placed_one_refused() -> bool:
        status = cluster.workload("agents", "chat").get("status", {})
        return len(status.get("placements", [])) == 1 and bool(status.get("unschedulableReason"))

    await eventually(one_placed_one_refused, message="one replica on gpu-2, the other refused")
    assert list(placements(cluster, "chat").values()) == [["gpu-2"]]
    status = cluster.workload("agents", "chat")["status"]
    assert status["unschedulableReason"] == (
        "0/3 nodes: 1 devices held by other pods (8/8), 1 insufficient free devices (need 8), 1 offers 7 of 8 devices"
    )
    placed = next(c for c in status["conditions"] if c["type"] == "Placed")
    assert (placed["status"], placed["reason"]) == ("False", "Unschedulable")
    # No pod of ours waits for a bind that cannot happen: the one there is runs.
    await eventually(lambda: cluster.workload("agents", "chat")["status"].get("readyReplicas") == 1)
    assert [p["spec"].get("nodeName") for p in cluster.pods("chat")] == ["gpu-2"]
    cluster.invariants()

    await eventually(lambda: node_status(cluster, "gpu-0").get("heldByOthers") == 8, message="gpu-0's status")
    held = node_status(cluster, "gpu-0")
    assert (held["offeredDevices"], held["allocatedDevices"], held["freeDevices"]) == (8, 0, 0)
    assert held["deviceSource"] == "DevicePlugin"
    short = node_status(cluster, "gpu-1")
    assert (short["offeredDevices"], short["heldByOthers"], short["freeDevices"]) == (7, 0, 7)
    assert (healthy(cluster, "gpu-1")["status"], healthy(cluster, "gpu-1")["reason"]) == (
        "False",
        "FewerDevicesAdvertised",
    )

    # The training job ends: the second replica goes where it was.
    await cluster.api.h_patch(
        "v1/pods", "trainer-0", {"status": {"phase": "Succeeded"}}, namespace="training", subresource="status"
    )
    await eventually(partial(cluster.ready, "agents", "chat"), message="both replicas ready once gpu-0 is free")
    assert sorted(n for nodes in placements(cluster, "chat").values() for n in nodes) == ["gpu-0", "gpu-2"]
    assert node_status(cluster, "gpu-0")["heldByOthers"] == 0

    # The lost GPU comes back: the node offers 8 again, and says so.
    await cluster.api.h_patch(
        "v1/nodes", "gpu-1", {"status": {"allocatable": {"nvidia.com/gpu": "8"}}}, subresource="status"
    )
    await eventually(lambda: node_status(cluster, "gpu-1").get("offeredDevices") == 8, message="gpu-1 offers 8")
    assert node_status(cluster, "gpu-1")["freeDevices"] == 8
    assert healthy(cluster, "gpu-1")["reason"] == "AsDeclared"
    cluster.invariants()


async def test_others_pods_are_read_through_selectors_and_only_their_requests_kept(cluster: Cluster) -> None:
    """Every pods list and watch the operator makes is filtered by the API server: its own (managed-by), or
    bound, running pods of others; of those, only the ones asking for accelerators are kept."""
    await three_nodes(cluster)
    for index in range(3):  # pods of others that hold no accelerators
        cpu_only = {"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}
        await cluster.api.h_create(
            "v1/pods",
            {
                "metadata": {"name": f"web-{index}", "namespace": "training"},
                "spec": {"nodeName": "gpu-2", "containers": [cpu_only]},
            },
            namespace="training",
        )
    operator = cluster.start_operator()
    await cluster.apply(chat(replicas=1, devices=4))
    await eventually(partial(cluster.ready, "agents", "chat"))
    reads = [
        r
        for r in cluster.api
        if r.method.value == "GET"
        and r.resource is not None
        and r.resource.plural == "pods"
        and r.headers.get("X-Harness") != "1"
        and r.name is None
    ]
    selectors = {(r.params.get("labelSelector"), r.params.get("fieldSelector")) for r in reads}
    assert selectors == {
        ("app.kubernetes.io/managed-by=gpu-fabric-operator", None),
        (OTHERS_PODS["labelSelector"], OTHERS_PODS["fieldSelector"]),
    }
    others = operator.reconciler.others
    assert others is not None
    assert {key: (pod.node, pod.requests) for key, pod in others.pods.items.items()} == {
        "training/trainer-0": ("gpu-0", (("nvidia.com/gpu", 8),))
    }


async def test_a_replica_the_scheduler_will_not_bind_moves_within_the_grace(cluster: Cluster) -> None:
    """An operator that cannot see others' pods (as when it may not list them) places where others' jobs
    hold every GPU; the scheduler (here the simulated one) refuses to bind; after the grace each such replica
    moves — a Rescheduled event in kube-scheduler's words — and the nodes it was refused on are not chosen
    again while nothing there changes: never Pending for good."""
    await three_nodes(cluster)
    await cluster.api.h_patch(
        "v1/nodes", "gpu-1", {"status": {"allocatable": {"nvidia.com/gpu": "8"}}}, subresource="status"
    )
    await cluster.api.h_create("v1/pods", foreign_job("trainer-2", "gpu-2", 8), namespace="training")
    operator = cluster.start_operator(unschedulable_grace_seconds=1.0)
    operator.reconciler.others = None  # blind to others' pods
    await cluster.apply(chat(replicas=2, devices=8))

    def settled() -> bool:
        status = cluster.workload("agents", "chat").get("status", {})
        reason = status.get("unschedulableReason") or ""
        return status.get("readyReplicas") == 1 and reason.count("refused by kube-scheduler") == 1

    await eventually(settled, timeout=30, message="one replica ready on gpu-1, the other refused everywhere else")
    assert list(placements(cluster, "chat").values()) == [["gpu-1"]]
    reason = cluster.workload("agents", "chat")["status"]["unschedulableReason"]
    assert reason == (
        "0/3 nodes: 2 refused by kube-scheduler (Insufficient nvidia.com/gpu), 1 insufficient free devices (need 8)"
    )
    assert [p["spec"].get("nodeName") for p in cluster.pods("chat")] == ["gpu-1"], "nothing left Pending"
    moved = [e for e in cluster.api.live_objects("v1/events", "agents") if e["reason"] == "Rescheduled"]
    assert moved, "a Rescheduled event for each move"
    assert all("not bound within 1s" in e["message"] for e in moved)
    assert all("kube-scheduler: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu" in e["message"] for e in moved)


async def test_a_namespace_being_deleted_gets_no_writes(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """As the namespace controller removes a terminating namespace's pods, the operator creates nothing there
    (the API server would refuse it), writes no status, and logs no failure."""
    await cluster.namespace("agents")
    await cluster.gpu_node("gpu-0", devices=8)
    cluster.start_operator()
    await cluster.apply(chat(replicas=2, devices=4))
    await eventually(partial(cluster.ready, "agents", "chat"))
    writes_before = len(cluster.api.writes())
    await cluster.api.h_patch("v1/namespaces", "agents", {"status": {"phase": "Terminating"}}, subresource="status")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gpufabric"):
        for pod in cluster.pods("chat"):
            await cluster.api.h_delete("v1/pods", pod["metadata"]["name"], namespace="agents", grace_period_seconds=0)
        await eventually(lambda: not cluster.pods("chat"), message="the namespace controller's deletes")
        passes = cluster.operators[0].operator.reconciler.passes
        await eventually(lambda: cluster.operators[0].operator.reconciler.passes >= passes + 3, message="3 passes")
    # (ComputeNodes are not in the namespace: their statuses follow the devices the deleted pods freed.)
    after = [r for r in cluster.api.writes()[writes_before:] if r.namespace == "agents"]
    assert [f"{r.method.value} {r.resource.plural if r.resource else '?'}" for r in after] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
