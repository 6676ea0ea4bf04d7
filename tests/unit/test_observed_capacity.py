"""Capacity as the cluster reports it, without a server: what each node offers and what others hold there
(device plugin and DRA), how placement and status use it, and replicas kube-scheduler will not bind."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufabric.api.computenode import DeviceSource
from gpufabric.placement import place
from gpufabric.placement.snapshot import ObservedDevices
from gpufabric.reconcile import CreatePod, DeletePod, PatchStatus, Settings, reconcile
from gpufabric.reconcile.binding import AVOIDANCE_EXPIRY, scheduler_reason
from gpufabric.reconcile.devices import observe_devices
from gpufabric.reconcile.ledger import fleet_snapshot
from gpufabric.reconcile.observe import foreign_pod, namespace_terminating, resource_claim, resource_slice
from gpufabric.reconcile.state import (
    DraInventory,
    NodeHealth,
    ResourceClaimRecord,
    ResourceSliceRecord,
)
from support.fakecluster import FakeCluster
from support.fleet import PRIOR, node, requests, workload

GPU = "nvidia.com/gpu"
DRIVER = "gpu.nvidia.com"


def health(**allocatable: int) -> NodeHealth:
    """`nvidia_com_gpu=8` for nvidia.com/gpu."""
    names = {k: k.replace("_com_", ".com/") for k in allocatable}
    return NodeHealth(ready=True, allocatable={names[k]: v for k, v in allocatable.items()})


def gpu_slice(
    node_name: str,
    count: int,
    *,
    pool: str | None = None,
    generation: int = 1,
    slices: int = 1,
    name: str | None = None,
    driver: str = DRIVER,
) -> ResourceSliceRecord:
    return ResourceSliceRecord(
        name=name or f"{node_name}-{driver}-{generation}",
        driver=driver,
        pool=pool or node_name,
        generation=generation,
        slice_count=slices,
        node=node_name,
        devices=tuple(f"gpu-{i}" for i in range(count)),
    )


def claim(key: str, node_name: str, *devices: int, pods: tuple[str, ...] = ()) -> ResourceClaimRecord:
    return ResourceClaimRecord(key, tuple((DRIVER, node_name, f"gpu-{d}") for d in devices), pods)


# --- what a node offers and others hold: one row per situation ------------------------------------------

H1 = node("h1", devices=8)
HAMI = node("h1", devices=8, resourceName="nvidia.com/vgpu")
OWN_DRIVER = node("h1", devices=8, draDriver="gpu.example.com")
NONE: dict[str, dict[str, int]] = {}
NO_DRA = DraInventory()

SCENARIOS: list[tuple[str, Any, dict[str, NodeHealth], dict[str, dict[str, int]], DraInventory, ObservedDevices]] = [
    ("as declared", H1, {"h1": health(nvidia_com_gpu=8)}, NONE, NO_DRA, ObservedDevices(8, 0)),
    (
        "the device plugin advertises fewer",
        H1,
        {"h1": health(nvidia_com_gpu=7)},
        NONE,
        NO_DRA,
        ObservedDevices(7, 0, DeviceSource.DEVICE_PLUGIN, f"advertises 7 {GPU} of 8 declared"),
    ),
    (
        "more than declared: the declaration bounds it",
        H1,
        {"h1": health(nvidia_com_gpu=10)},
        NONE,
        NO_DRA,
        ObservedDevices(8, 0),
    ),
    ("no Node", H1, {}, NONE, NO_DRA, ObservedDevices(0, 0, DeviceSource.NONE, "Node h1 missing")),
    (
        "no such resource",
        H1,
        {"h1": health()},
        NONE,
        NO_DRA,
        ObservedDevices(0, 0, DeviceSource.NONE, f"advertises no {GPU}"),
    ),
    ("a training job holds 3", H1, {"h1": health(nvidia_com_gpu=8)}, {"h1": {GPU: 3}}, NO_DRA, ObservedDevices(8, 3)),
    (
        "others' pods of another resource do not count",
        H1,
        {"h1": health(nvidia_com_gpu=8)},
        {"h1": {"huawei.com/Ascend910": 4}, "h2": {GPU: 8}},
        NO_DRA,
        ObservedDevices(8, 0),
    ),
    (
        "HAMi's resource name counts",
        HAMI,
        {"h1": health(nvidia_com_gpu=8, nvidia_com_vgpu=8)},
        {"h1": {"nvidia.com/vgpu": 2, GPU: 5}},
        NO_DRA,
        ObservedDevices(8, 2),
    ),
    (
        "DRA: the slices' devices, others' claims",
        H1,
        {"h1": health()},
        {"h1": {GPU: 8}},  # pods' requests do not count where claims do
        DraInventory((gpu_slice("h1", 8),), (claim("training/job", "h1", 0, 1, pods=("training/job-0",)),)),
        ObservedDevices(8, 2, DeviceSource.DRA),
    ),
    (
        "DRA: kube-scheduler's claim for a pod of ours is the ledger's",
        H1,
        {"h1": health()},
        NONE,
        DraInventory(
            (gpu_slice("h1", 8),), (claim("agents/chat-0-0-gpu", "h1", 0, 1, 2, 3, pods=("agents/chat-0-0",)),)
        ),
        ObservedDevices(8, 0, DeviceSource.DRA),
    ),
    (
        "DRA: fewer devices published",
        H1,
        {"h1": health(nvidia_com_gpu=8)},
        NONE,
        DraInventory((gpu_slice("h1", 6),)),
        ObservedDevices(6, 0, DeviceSource.DRA, f"publishes 6 devices of {DRIVER} of 8 declared"),
    ),
    (
        "DRA: only the newest generation of a pool counts",
        H1,
        {"h1": health()},
        NONE,
        DraInventory((gpu_slice("h1", 8, generation=1), gpu_slice("h1", 4, generation=2))),
        ObservedDevices(4, 0, DeviceSource.DRA, f"publishes 4 devices of {DRIVER} of 8 declared"),
    ),
    (
        "DRA: a pool being updated offers nothing",
        H1,
        {"h1": health()},
        NONE,
        DraInventory((gpu_slice("h1", 4, slices=2),)),
        ObservedDevices(0, 0, DeviceSource.NONE, f"DRA pool h1 of {DRIVER} is being updated (1 of 2 slices)"),
    ),
    (
        "DRA: another driver's slices leave the device plugin in charge",
        H1,
        {"h1": health(nvidia_com_gpu=8)},
        {"h1": {GPU: 1}},
        DraInventory((gpu_slice("h1", 8, driver="nic.example.com"),)),
        ObservedDevices(8, 1),
    ),
    (
        "DRA: spec.draDriver names the driver",
        OWN_DRIVER,
        {"h1": health()},
        NONE,
        DraInventory((gpu_slice("h1", 8, driver="gpu.example.com"),)),
        ObservedDevices(8, 0, DeviceSource.DRA),
    ),
]


@pytest.mark.parametrize(
    ("compute_node", "nodes", "foreign", "dra", "expected"),
    [row[1:] for row in SCENARIOS],
    ids=[row[0] for row in SCENARIOS],
)
def test_what_a_node_offers_and_others_hold(
    compute_node: Any,
    nodes: dict[str, NodeHealth],
    foreign: dict[str, dict[str, int]],
    dra: DraInventory,
    expected: ObservedDevices,
) -> None:
    (observed,) = observe_devices([compute_node], nodes, foreign, dra, our_pods={"agents/chat-0-0"}).values()
    assert observed == expected


def test_free_is_offered_less_others_less_ours() -> None:
    """The ledger's replicas on top: a node offering 7 with 3 held by others and 2 ours has 2 free."""
    cluster = FakeCluster().fleet([node("h1", devices=8)])
    cluster.nodes["h1"]["status"]["allocatable"] = {GPU: "7"}
    cluster.foreign = {"h1": {GPU: 3}}
    key = cluster.add_workload(workload("chat", devicesPerReplica=2, runtimes=("nvidia",)))
    cluster.settle()
    status = cluster.compute_nodes["h1"]["status"]
    assert (status["offeredDevices"], status["heldByOthers"], status["allocatedDevices"], status["freeDevices"]) == (
        7,
        3,
        2,
        2,
    )
    assert len(cluster.pods_of(key)) == 1
    healthy = next(c for c in status["conditions"] if c["type"] == "Healthy")
    assert (healthy["reason"], healthy["message"]) == (
        "FewerDevicesAdvertised",
        f"offers 7 of 8 devices: Node h1 advertises 7 {GPU} of 8 declared; placement uses what is offered",
    )


def test_others_taking_devices_under_our_replicas_is_overcommitted_not_negative() -> None:
    cluster = FakeCluster().fleet([node("h1", devices=8)])
    cluster.add_workload(workload("chat", devicesPerReplica=6, runtimes=("nvidia",)))
    cluster.settle()
    cluster.foreign = {"h1": {GPU: 4}}  # bound past the operator (a pod with nodeName set by hand)
    cluster.settle()
    status = cluster.compute_nodes["h1"]["status"]
    assert (status["allocatedDevices"], status["heldByOthers"], status["freeDevices"]) == (6, 4, 0)
    healthy = next(c for c in status["conditions"] if c["type"] == "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "Overcommitted")
    assert healthy["message"] == "6 devices allocated to replicas and 4 held by other pods, of 8 offered"


def test_refusals_say_whose_doing_a_shortage_is() -> None:
    cluster = FakeCluster().fleet([node("h1"), node("h2"), node("h3"), node("h4")])
    cluster.nodes["h2"]["status"]["allocatable"] = {GPU: "7"}
    cluster.foreign = {"h1": {GPU: 8}}
    del cluster.nodes["h3"]
    keys = [cluster.add_workload(workload(name, devicesPerReplica=8, runtimes=("nvidia",))) for name in ("a", "b")]
    cluster.settle()
    (refused,) = [cluster.status(key) for key in keys if not cluster.status(key).get("placements")]  # one takes h4
    assert refused["unschedulableReason"] == (
        "0/4 nodes: 1 devices held by other pods (8/8), 1 insufficient free devices (need 8), "
        "1 not Ready, 1 offers 7 of 8 devices"
    )


def test_unknown_holdings_are_not_reported_as_none() -> None:
    """While others' pods cannot be listed, heldByOthers is absent, not 0."""
    (observed,) = observe_devices([H1], {"h1": health(nvidia_com_gpu=8)}, {}, NO_DRA, (), foreign_known=False).values()
    assert not observed.others_known
    state = replace(FakeCluster().fleet([H1]).state(), foreign_known=False)
    (patch,) = [a for a in reconcile(state).actions if isinstance(a, PatchStatus) and a.target.name == "h1"]
    assert "heldByOthers" not in patch.status
    assert patch.status["offeredDevices"] == 8


# --- placement never takes what others hold ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 8)),  # (advertised, held by others) per node
        min_size=1,
        max_size=6,
    ),
    st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=8),
)
def test_placement_never_uses_devices_held_by_others(nodes: list[tuple[int, int]], sizes: list[int]) -> None:
    fleet = [node(f"n{i}", devices=8) for i in range(len(nodes))]
    health_by_node = {f"n{i}": health(nvidia_com_gpu=advertised) for i, (advertised, _) in enumerate(nodes)}
    foreign = {f"n{i}": {GPU: held} for i, (_, held) in enumerate(nodes)}
    observed = observe_devices(fleet, health_by_node, foreign, NO_DRA, ())
    snapshot = fleet_snapshot(fleet, health_by_node, [], observed)
    for state in snapshot.nodes.values():
        assert 0 <= state.free <= state.offered <= 8
    loads = [workload(f"w{i}", devicesPerReplica=size, runtimes=("nvidia",)) for i, size in enumerate(sizes)]
    result = place(snapshot, requests(loads), PRIOR)
    used: Counter[str] = Counter()
    for decision in result.decisions:
        for name in decision.allocation.nodes:
            used[name] += decision.allocation.devices_per_node
    for i, (advertised, held) in enumerate(nodes):
        assert used[f"n{i}"] <= max(min(advertised, 8) - held, 0), "placed on devices others hold or not offered"
        state = snapshot.nodes[f"n{i}"]
        assert 0 <= state.free <= state.offered


# --- kube-scheduler's words --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            "0/23 nodes are available: 1 Insufficient nvidia.com/gpu, 22 node(s) didn't match Pod's node "
            "affinity/selector. preemption: 0/23 nodes are available: 1 No preemption victims found for incoming "
            "pod, 22 Preemption is not helpful for scheduling.",
            "Insufficient nvidia.com/gpu",
        ),
        (
            "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: broken}, 2 node(s) didn't match "
            "Pod's node affinity/selector.",
            "node(s) had untolerated taint {gpu: broken}",
        ),
        ("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.", "Insufficient nvidia.com/gpu"),
        ("no nodes available to schedule pods", "no nodes available to schedule pods"),
    ],
)
def test_the_scheduler_reason_is_about_the_node_the_pod_was_pinned_to(message: str, reason: str) -> None:
    assert scheduler_reason(message) == reason


# --- never Pending forever ---------------------------------------------------------------------------------

REFUSED = "0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) didn't match Pod's node affinity/selector."


def blind_cluster() -> tuple[FakeCluster, str]:
    """Three nodes; the first is where the operator puts a replica, and kube-scheduler refuses there."""
    cluster = FakeCluster().fleet([node("h1"), node("h2"), node("h3")])
    key = cluster.add_workload(workload("chat", devicesPerReplica=8, runtimes=("nvidia",)))
    cluster.step()
    ((first,),) = [
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
            "matchExpressions"
        ][0]["values"]
        for p in cluster.pods_of(key).values()
    ]
    cluster.refusing[first] = REFUSED
    for pod in cluster.pods_of(key).values():
        pod["status"] = {}
    cluster.kubelet()
    return cluster, first


def test_a_refused_replica_waits_out_the_grace_then_moves_and_avoids_the_node() -> None:
    cluster, refused_on = blind_cluster()
    key = "default/chat"
    grace = Settings(unschedulable_grace=timedelta(seconds=30))
    outcome = cluster.step(grace)
    assert not [a for a in outcome.actions if isinstance(a, DeletePod)], "within the grace: kube-scheduler retries"
    assert outcome.wake_at == cluster.now + timedelta(seconds=30), "the pass wakes when the grace ends"
    placed = cluster.condition(key, "Placed")
    assert (placed["status"], placed["reason"]) == ("False", "Unschedulable")
    assert "kube-scheduler does not bind" in placed["message"]

    cluster.advance(30)
    outcome = cluster.step(grace)
    # Replacement first, as for a cordon: the new replica is created elsewhere, then the refused one goes.
    assert not [a for a in outcome.actions if isinstance(a, DeletePod)]
    (created,) = [a for a in outcome.actions if isinstance(a, CreatePod)]
    assert created.manifest["metadata"]["name"] == "chat-1-0"
    assert refused_on not in str(created.manifest["spec"]["affinity"])
    deleted = [a.target.name for a in cluster.step(grace).actions if isinstance(a, DeletePod)]
    assert deleted == ["chat-0-0"], "gone once its replacement exists, not once it is Ready"
    (moved,) = [e for e in cluster.events if e.reason == "Rescheduled"]
    assert moved.message == (
        f"replica 0 moves: not bound within 30s (pod chat-0-0 on {refused_on}: kube-scheduler: {REFUSED})"
    )
    assert outcome.avoided[key][refused_on].message == "Insufficient nvidia.com/gpu"
    cluster.settle(grace)
    (pod,) = cluster.pods_of(key).values()
    assert refused_on not in str(pod["spec"]["affinity"]), "placed elsewhere"
    assert pod["status"]["phase"] == "Running"
    assert cluster.condition(key, "Placed")["status"] == "True"


def test_a_gangs_ranks_move_together() -> None:
    cluster = FakeCluster().fleet([node(f"h{i}", nics=1) for i in range(4)])
    key = cluster.add_workload(
        workload("big", params=405, precisions=("FP8",), nodesPerReplica=2, devicesPerReplica=16, runtimes=("nvidia",))
    )
    cluster.step()
    pods = cluster.pods_of(key)
    assert len(pods) == 2
    rank1 = next(p for p in pods.values() if p["metadata"]["labels"]["gpufabric.io/rank"] == "1")
    host = rank1["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]["values"][0]
    cluster.refusing[host] = REFUSED
    rank1["status"] = {}
    cluster.kubelet()
    cluster.advance(31)
    outcome = cluster.step()
    created = sorted(a.manifest["metadata"]["name"] for a in outcome.actions if isinstance(a, CreatePod))
    assert created == ["big-1-0", "big-1-1"], "the whole gang is replaced"
    outcome = cluster.step()
    assert sorted(a.target.name for a in outcome.actions if isinstance(a, DeletePod)) == ["big-0-0", "big-0-1"]


def test_an_avoided_node_comes_back_when_what_it_offers_changes_or_after_the_expiry() -> None:
    cluster, refused_on = blind_cluster()
    key = "default/chat"
    cluster.advance(31)
    cluster.step()
    assert refused_on in cluster.avoided[key]
    cluster.step()
    assert refused_on in cluster.avoided[key], "nothing changed: still avoided"
    cluster.foreign = {refused_on: {GPU: 1}}  # the node's holdings changed: worth asking again
    cluster.step()
    assert key not in cluster.avoided or refused_on not in cluster.avoided[key]

    cluster, refused_on = blind_cluster()
    cluster.advance(31)
    cluster.settle()  # replaced, and the refused replica gone
    assert refused_on in cluster.avoided[key]
    cluster.advance(AVOIDANCE_EXPIRY.total_seconds())
    cluster.step()
    assert refused_on not in cluster.avoided.get(key, {})


def test_a_replica_refused_everywhere_is_unplaceable_with_the_schedulers_reason() -> None:
    cluster = FakeCluster().fleet([node("h1")])
    cluster.refusing["h1"] = REFUSED
    key = cluster.add_workload(workload("chat", devicesPerReplica=8, runtimes=("nvidia",)))
    cluster.step()
    cluster.advance(31)
    cluster.settle()
    assert cluster.pods_of(key) == {}
    assert cluster.status(key)["unschedulableReason"] == (
        "0/1 nodes: 1 refused by kube-scheduler (Insufficient nvidia.com/gpu)"
    )


# --- namespaces and workloads being deleted -------------------------------------------------------------


def test_a_terminating_namespace_and_a_deleted_workload_get_no_writes() -> None:
    cluster = FakeCluster().fleet([node("h1")])
    doomed = cluster.add_workload(workload("chat", devicesPerReplica=2, runtimes=("nvidia",), namespace="doomed"))
    deleting = cluster.add_workload(workload("old", devicesPerReplica=2, runtimes=("nvidia",)))
    cluster.settle()
    cluster.terminating_namespaces.add("doomed")
    cluster.workloads[deleting]["metadata"]["deletionTimestamp"] = cluster.now.isoformat()
    for pod_key in [*cluster.pods_of(doomed), *cluster.pods_of(deleting)]:
        del cluster.pods[pod_key]  # as the namespace controller and the garbage collector remove them
    outcome = cluster.step()
    about = {getattr(a, "target", None) or getattr(a, "about", None) for a in outcome.actions}
    assert not [ref for ref in about if ref is not None and ref.namespace in ("doomed",)]
    assert not [ref for ref in about if ref is not None and ref.name in ("old",) and ref.namespace == "default"]
    assert not [a for a in outcome.actions if type(a).__name__ == "CreatePod"]


# --- reading others' objects -------------------------------------------------------------------------------


def pod_body(**spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {"phase": "Running"})
    return {"metadata": {"name": "job", "namespace": "training"}, "spec": {"nodeName": "h1", **spec}, "status": status}


def gpus(count: int, *, limits_only: bool = False) -> dict[str, Any]:
    if limits_only:
        return {"resources": {"limits": {GPU: str(count)}}}
    return {"resources": {"requests": {GPU: str(count)}, "limits": {GPU: str(count)}}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (pod_body(containers=[{"name": "a", **gpus(2)}, {"name": "b", **gpus(3, limits_only=True)}]), 5),
        # an init container needing more than the app containers sets the request
        (pod_body(initContainers=[{"name": "i", **gpus(6)}], containers=[{"name": "a", **gpus(2)}]), 6),
        # a sidecar (restartable init container) runs beside them: it adds
        (
            pod_body(
                initContainers=[{"name": "s", "restartPolicy": "Always", **gpus(1)}, {"name": "i", **gpus(2)}],
                containers=[{"name": "a", **gpus(2)}],
            ),
            3,
        ),
        (pod_body(containers=[{"name": "a", "resources": {"requests": {"cpu": "2"}}}]), None),
        (pod_body(containers=[{"name": "a", **gpus(2)}], status={"phase": "Succeeded"}), None),
        (pod_body(containers=[{"name": "a", **gpus(2)}], nodeName=""), None),
        (pod_body(containers=[{"name": "a", "resources": {"limits": {GPU: "two"}}}]), None),
    ],
    ids=["containers", "init", "sidecar", "no accelerator", "finished", "not bound", "garbage quantity"],
)
def test_a_foreign_pods_request_is_what_the_scheduler_counts(body: dict[str, Any], expected: int | None) -> None:
    found = foreign_pod(body, frozenset({GPU, "huawei.com/Ascend910"}))
    assert (found.requests if found else None) == (((GPU, expected),) if expected else None)
    if found:
        assert (found.key, found.node) == ("training/job", "h1")


def test_slices_claims_and_namespaces_are_read_from_their_wire_form() -> None:
    body = {
        "metadata": {"name": "h1-gpu"},
        "spec": {
            "driver": DRIVER,
            "nodeName": "h1",
            "pool": {"name": "h1", "generation": 3, "resourceSliceCount": 1},
            "devices": [
                {"name": "gpu-0", "attributes": {"type": {"string": "gpu"}}},
                {"name": "gpu-0-mig-1g", "attributes": {f"{DRIVER}/type": {"string": "mig"}}},
                {"name": "gpu-1"},
            ],
        },
    }
    assert resource_slice(body) == ResourceSliceRecord("h1-gpu", DRIVER, "h1", 3, 1, "h1", ("gpu-0", "gpu-1"))
    assert resource_slice({"metadata": {"name": "x"}, "spec": {}}) is None
    allocated = {
        "metadata": {
            "name": "job-gpu",
            "namespace": "training",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "job-0", "uid": "u"}],
        },
        "status": {
            "allocation": {
                "devices": {"results": [{"request": "r", "driver": DRIVER, "pool": "h1", "device": "gpu-1"}]}
            },
            "reservedFor": [{"resource": "pods", "name": "job-1", "uid": "v"}],
        },
    }
    assert resource_claim(allocated) == ResourceClaimRecord(
        "training/job-gpu", ((DRIVER, "h1", "gpu-1"),), ("training/job-0", "training/job-1")
    )
    assert resource_claim({"metadata": {"name": "pending", "namespace": "t"}, "status": {}}) is None
    assert namespace_terminating({"status": {"phase": "Terminating"}})
    assert not namespace_terminating({"status": {"phase": "Active"}})
