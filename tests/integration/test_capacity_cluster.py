"""`gpufabric capacity --kubeconfig` against the in-process API server: devices counted as the operator counts
them — what each Node offers (allocatable, or DRA's ResourceSlices) less what pods and ResourceClaims of others
hold — and, where the credentials may not list DRA's objects, a report that says so instead of failing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gpufabric.api import labels
from gpufabric.capacityreport import CapacityReport, DeviceRow, capacity_from_cluster
from gpufabric.cli import main
from gpufabric.sandbox.cluster import kubeconfig_text
from support.harness import Cluster, eventually

DRA = "/apis/resource.k8s.io/v1"


def pod(name: str, node: str | None, gpus: int, *, namespace: str = "training", **meta: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "trainer:v1", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
    spec: dict[str, Any] = {"containers": [container]}
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": spec,
    }


def our_replica_pod(node: str, devices: int) -> dict[str, Any]:
    """A pod of the operator's, as its labels and annotations record the allocation (the ledger reads them)."""
    notes = {
        labels.COMPUTE_NODE: node,
        labels.VENDOR: "nvidia",
        labels.ACCELERATOR: "B200",
        labels.PRECISION: "FP8",
        labels.DEVICES: str(devices),
        labels.REPLICA_NODES: node,
    }
    pod_labels = {labels.MANAGED_BY: labels.MANAGER, labels.WORKLOAD: "chat", labels.REPLICA: "0", labels.RANK: "0"}
    return pod("chat-0-0", node, devices, namespace="agents", labels=pod_labels, annotations=notes)


async def fleet(cluster: Cluster) -> None:
    """b200-0: others' training job holds 3 (a finished job's 4 and an unbound pod's 8 count for nothing), our
    replica 1; b200-1: its device plugin advertises 6 of 8; h100-0: others hold all 8."""
    for namespace in ("agents", "training"):
        await cluster.namespace(namespace)
    await cluster.gpu_node("b200-0", accelerator="B200")
    await cluster.gpu_node("b200-1", accelerator="B200")
    await cluster.gpu_node("h100-0")
    await cluster.api.h_patch(
        "v1/nodes", "b200-1", {"status": {"allocatable": {"nvidia.com/gpu": "6"}}}, subresource="status"
    )
    await cluster.api.h_create("v1/pods", pod("train-0", "b200-0", 3), namespace="training")
    await cluster.api.h_create("v1/pods", pod("unbound", None, 8), namespace="training")
    await cluster.api.h_create("v1/pods", pod("train-1", "h100-0", 8), namespace="training")
    await cluster.api.h_create("v1/pods", our_replica_pod("b200-0", 1), namespace="agents")

    def phase(name: str, namespace: str = "training") -> str | None:
        found = cluster.api.get_object("v1/pods", name, namespace)
        return None if found is None else (found.get("status") or {}).get("phase")

    await eventually(lambda: phase("train-0") == phase("train-1") == phase("chat-0-0", "agents") == "Running")
    # A job that ran there and finished: what it asked for is free again.
    await cluster.api.h_create("v1/pods", pod("finished-0", "b200-0", 4), namespace="training")
    await eventually(lambda: phase("finished-0") == "Running")
    await cluster.kubelet.finish_pod("finished-0", "training")


def kubeconfig(cluster: Cluster, tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text(str(cluster.api.url).rstrip("/")))
    return str(path)


async def report_of(cluster: Cluster, tmp_path: Path) -> CapacityReport:
    # The client blocks, and the API server runs in this event loop: the command runs in a thread.
    return await asyncio.to_thread(capacity_from_cluster, kubeconfig(cluster, tmp_path), 8, None)


def by_accelerator(report: CapacityReport) -> dict[str, DeviceRow]:
    return {row.accelerator: row for row in report.devices}


async def test_others_pods_and_a_short_node_are_counted(cluster: Cluster, tmp_path: Path) -> None:
    await fleet(cluster)
    report = await report_of(cluster, tmp_path)
    assert report.observed
    assert report.unknown == ()  # the emulator serves no DRA (404): nothing published, nothing unknown
    b200, h100 = by_accelerator(report)["B200"], by_accelerator(report)["H100-SXM5-80GB"]
    assert (b200.declared, b200.not_offered, b200.held_by_others, b200.allocated, b200.free) == (16, 2, 3, 1, 10)
    assert (h100.declared, h100.not_offered, h100.held_by_others, h100.allocated, h100.free) == (8, 0, 8, 0, 0)
    assert set(by_accelerator(report)) == {"B200", "H100-SXM5-80GB"}
    # Free capacity is what placement would find: 4 B200 on b200-0 and 6 on b200-1, one device per 8B replica;
    # nothing on the H100 node others hold whole.
    fp8 = [row for row in report.rows if row.accelerator == "B200" and row.precision.value == "FP8"]
    assert [(row.replicas, row.devices_per_replica) for row in fp8] == [(10, 1)]
    assert not [row for row in report.rows if row.accelerator == "H100-SXM5-80GB"]


async def test_dra_slices_and_claims_count_as_the_operator_counts_them(cluster: Cluster, tmp_path: Path) -> None:
    """A DRA node: its Node advertises no nvidia.com/gpu, its ResourceSlices publish 4 GPUs, a claim of
    others holds one; a claim for our own pod is the ledger's, not others'."""
    await cluster.namespace("agents")
    await cluster.add_node("dra-0", {})
    spec = {"nodeName": "dra-0", "vendor": "nvidia", "accelerator": "H100-SXM5-80GB", "devices": 8}
    await cluster.apply(
        {"apiVersion": "gpufabric.io/v1alpha1", "kind": "ComputeNode", "metadata": {"name": "dra-0"}, "spec": spec}
    )
    devices = [{"name": f"gpu-{i}"} for i in range(4)]
    pool = {"name": "dra-0", "generation": 1, "resourceSliceCount": 1}
    published = {"driver": "gpu.nvidia.com", "pool": pool, "nodeName": "dra-0", "devices": devices}
    slices = [{"metadata": {"name": "dra-0-gpu"}, "spec": published}]
    claims = [
        claim("training", "theirs", "gpu-0", "trainer-0"),
        claim("agents", "ours", "gpu-1", "chat-0-0"),
    ]
    cluster.api[f"get {DRA}/resourceslices"] << {"kind": "ResourceSliceList", "metadata": {}, "items": slices}
    cluster.api[f"get {DRA}/resourceclaims"] << {"kind": "ResourceClaimList", "metadata": {}, "items": claims}
    await cluster.api.h_create("v1/pods", our_replica_pod("dra-0", 1), namespace="agents")

    report = await report_of(cluster, tmp_path)
    assert report.unknown == ()
    [row] = report.devices
    assert (row.declared, row.not_offered, row.held_by_others, row.allocated, row.free) == (8, 4, 1, 1, 2)


def claim(namespace: str, name: str, device: str, for_pod: str) -> dict[str, Any]:
    result = {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "dra-0", "device": device}
    return {
        "metadata": {"name": name, "namespace": namespace},
        "status": {
            "allocation": {"devices": {"results": [result]}},
            "reservedFor": [{"resource": "pods", "name": for_pod, "uid": "u"}],
        },
    }


async def test_what_may_not_be_listed_is_said_not_failed(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fleet(cluster)
    cluster.api[f"get {DRA}/resourceslices"] << 403
    cluster.api[f"get {DRA}/resourceclaims"] << 403
    path = kubeconfig(cluster, tmp_path)

    code = await asyncio.to_thread(main, ["capacity", "--kubeconfig", path, "--model-params", "8"])
    out = capsys.readouterr().out
    assert code == 0
    assert "NOT KNOWN: cannot list DRA ResourceSlices (403 Forbidden): nodes whose devices only DRA publishes" in out
    assert "NOT KNOWN: cannot list DRA ResourceClaims (403 Forbidden): the devices they hold are counted as free" in out
    assert (
        "TOTAL: 24 declared, 2 not offered by their Nodes, 11 held by others, 1 allocated to replicas, "
        "10 free, 0 unavailable" in out
    )

    code = await asyncio.to_thread(main, ["capacity", "--kubeconfig", path, "--model-params", "8", "-o", "json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert document["devicesObserved"] is True
    assert len(document["notKnown"]) == 2
    b200 = next(d for d in document["devices"] if d["accelerator"] == "B200")
    counts = [b200[key] for key in ("declared", "notOffered", "heldByOthers", "allocated", "free", "unavailable")]
    assert counts == [16, 2, 3, 1, 10, 0]
