"""Capacity as the cluster reports it, on the real control plane: kube-scheduler binds, the namespace
controller deletes, and DRA allocates; the operator (`gpufabric operator`, as the chart's ServiceAccount)
must agree with them. In order, on one fleet of this module's own (removed at the end):

1. three 8-GPU H100 nodes — someone else's training job holds all 8 of the first, the second's device
   plugin advertises 7, the third is healthy — and two 8-GPU replicas: one runs on the third at once, the
   other is refused with the reason and no pod waits; the job ends → it runs on the first; the GPU comes
   back → the second says 8 free;
2. the bind race: kube-scheduler frozen while a replica's pod waits, someone else's pod takes the node →
   the scheduler refuses ours → moved within the grace, to the node added meanwhile;
3. DRA: a DeviceClass, a node's ResourceSlice, someone else's claim allocated by kube-scheduler → the
   node's free count drops by its devices; the operator's own pods there get their devices through the
   class's extended resource, and count as ours;
4. a namespace deleted under a running workload: no write refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from gpufabric.sandbox.controlplane import ControlPlane, free_port
from gpufabric.sandbox.standin_kubelet import NODE_ALLOCATABLE, StandInKubelet
from support.realcluster import (
    GROUP,
    OPERATOR_USER,
    VERSION,
    OperatorProcess,
    Reader,
    pod_is_ready,
    stand_in_kubelet,
    wait_for,
)

NS = "capacity"
OTHERS = "training"
GPU = "nvidia.com/gpu"
DRIVER = "gpu.nvidia.com"
GRACE = 10.0  # --unschedulable-grace
NODES = ("cap-a", "cap-b", "cap-c")
LATE_NODE = "cap-d"
DRA_NODE = "cap-dra"


@dataclass
class Fleet:
    plane: ControlPlane
    kubelet: StandInKubelet
    reader: Reader
    operator: OperatorProcess

    def apply(self, *documents: dict[str, Any]) -> None:
        path = self.plane.directory / f"capacity-{time.monotonic_ns()}.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)}))
        self.plane.kubectl("apply", "--server-side", "-f", str(path))

    def compute_node(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.reader.custom.get_cluster_custom_object(GROUP, VERSION, "computenodes", name)
        return found

    def devices(self, name: str) -> tuple[Any, ...]:
        status = self.compute_node(name).get("status") or {}
        keys = ("offeredDevices", "allocatedDevices", "heldByOthers", "freeDevices")
        return tuple(status.get(key) for key in keys)

    def our_pods(self, workload: str) -> list[Any]:
        return [
            p for p in self.reader.pods(NS, f"gpufabric.io/workload={workload}") if not p.metadata.deletion_timestamp
        ]


def compute_node(name: str, devices: int = 8) -> dict[str, Any]:
    spec = {"nodeName": name, "vendor": "nvidia", "accelerator": "H100-SXM5-80GB", "devices": devices}
    spec |= {"fabric": {"roceDomain": "cap"}, "nics": [{"interface": "eth1", "rdmaDevice": "mlx5_0"}]}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ComputeNode", "metadata": {"name": name}, "spec": spec}


def workload(
    name: str, replicas: int, devices: int = 8, *, pool: str = "capacity-test", namespace: str = NS
) -> dict[str, Any]:
    """On the ComputeNodes labelled `pool` (this module's), whatever else the control plane holds."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentWorkload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "m", "parametersBillions": 8},
            "replicas": replicas,
            "devicesPerReplica": devices,
            "runtimes": {"nvidia": {"image": "vllm/vllm-openai:v0.11.0"}},
            "placement": {"nodeSelector": {"matchLabels": {pool: "yes"}}},
        },
    }


def training_job(name: str, node: str, gpus: int = 8, *, bound: bool = False) -> dict[str, Any]:
    """Someone else's pod holding `gpus` GPUs on `node`: placed by kube-scheduler (a hostname selector), or
    `bound` by hand (spec.nodeName: no scheduler involved, as some controllers do)."""
    pin = {"nodeName": node} if bound else {"nodeSelector": {"kubernetes.io/hostname": node}}
    container = {"name": "train", "image": "trainer:v1", "resources": {"limits": {GPU: str(gpus)}}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": OTHERS, "labels": {"app": "trainer"}},
        "spec": {**pin, "containers": [container], "terminationGracePeriodSeconds": 0},
    }


def label_nodes(fleet: Fleet, *names: str, pool: str = "capacity-test") -> None:
    for name in names:
        fleet.reader.custom.patch_cluster_custom_object(
            GROUP, VERSION, "computenodes", name, {"metadata": {"labels": {pool: "yes"}}}
        )


def set_allocatable(fleet: Fleet, node: str, gpus: int | None) -> None:
    allocatable = {**NODE_ALLOCATABLE, **({GPU: str(gpus)} if gpus is not None else {})}
    fleet.reader.core.patch_node_status(node, {"status": {"allocatable": allocatable, "capacity": allocatable}})


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


@pytest.fixture(scope="module")
def fleet(plane: ControlPlane, reader: Reader, operator_kubeconfig: Path) -> Iterator[Fleet]:
    """This module's nodes (its own stand-in kubelet), namespaces and operator; all of it removed after."""
    with stand_in_kubelet(plane) as kubelet:
        operator = OperatorProcess(
            [
                "--kubeconfig",
                str(operator_kubeconfig),
                "--no-leader-election",
                "--unschedulable-grace",
                str(GRACE),
                "--metrics-port",
                str(free_port()),
            ],
            plane.directory / "operator-capacity.log",
        )
        the_fleet = Fleet(plane, kubelet, reader, operator)
        try:
            yield the_fleet
        finally:
            operator.stop()
            cleanup(the_fleet)


def cleanup(fleet: Fleet) -> None:
    """Everything this module made, so the story on the same control plane sees none of it."""
    plane = fleet.plane
    for kind, name in [("namespace", NS), ("namespace", OTHERS), ("namespace", "doomed")]:
        plane.kubectl("delete", kind, name, "--ignore-not-found", "--wait=true", "--timeout=60s", check=False)
    for name in (*NODES, LATE_NODE, DRA_NODE):
        plane.kubectl("delete", "computenode", name, "--ignore-not-found", check=False)
    plane.kubectl("delete", "resourceslices", "--all", "--ignore-not-found", check=False)
    plane.kubectl("delete", "deviceclass", DRIVER, "--ignore-not-found", check=False)
    fleet.kubelet.stop()  # before its Nodes go: it would heartbeat them
    for name in (*NODES, LATE_NODE, DRA_NODE):
        plane.kubectl("delete", "node", name, "--ignore-not-found", check=False)


# --- 1. the three-node case -----------------------------------------------------------------------------


def test_replicas_run_where_the_devices_really_are(fleet: Fleet, report: Any) -> None:
    for name in NODES:
        fleet.kubelet.add_node(name, {**NODE_ALLOCATABLE, GPU: "8"})
    set_allocatable(fleet, "cap-b", 7)  # one GPU fell off the bus
    fleet.apply(namespace(NS), namespace(OTHERS), *(compute_node(n) for n in NODES))
    label_nodes(fleet, *NODES)
    fleet.apply(training_job("trainer-0", "cap-a"))
    wait_for(
        "the training job runs",
        lambda: pod_is_ready(fleet.reader.core.read_namespaced_pod("trainer-0", OTHERS)) or None,
        30,
    )
    fleet.operator.start()
    started = time.monotonic()
    fleet.apply(workload("chat", replicas=2))

    def one_runs() -> list[Any] | None:
        ready = [p for p in fleet.our_pods("chat") if pod_is_ready(p)]
        return ready or None

    (running,), _ = wait_for("one replica Running", one_runs, 60)
    report("observed capacity: 2x8-GPU workload -> one replica Running on the healthy node", time.monotonic() - started)
    assert running.spec.node_name == "cap-c"

    def refused() -> dict[str, Any] | None:
        placed = fleet.reader.condition(fleet.reader.workload(NS, "chat"), "Placed")
        return placed if placed.get("reason") == "Unschedulable" else None

    placed, _ = wait_for("the other replica refused", refused, 30)
    assert (placed["status"], placed["message"]) == (
        "False",
        "0/3 nodes: 1 devices held by other pods (8/8), 1 insufficient free devices (need 8), 1 offers 7 of 8 devices",
    )
    pending = [p.metadata.name for p in fleet.our_pods("chat") if p.status.phase == "Pending"]
    assert pending == [], "no pod waits for a bind that cannot happen"
    wait_for("cap-a's status", lambda: fleet.devices("cap-a") == (8, 0, 8, 0) or None, 30)
    wait_for("cap-b's status", lambda: fleet.devices("cap-b") == (7, 0, 0, 7) or None, 30)
    healthy = fleet.reader.condition(fleet.compute_node("cap-b"), "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "FewerDevicesAdvertised")
    assert fleet.devices("cap-c") == (8, 8, 0, 0)
    columns = fleet.plane.kubectl("get", "computenodes", *NODES)  # the printer columns, as users see them
    print(columns)
    assert columns.split("\n")[0].split()[:7] == [
        "NAME",
        "VENDOR",
        "ACCELERATOR",
        "DEVICES",
        "OFFERED",
        "OURS",
        "OTHERS",
    ]

    # The training job ends: the second replica goes where it ran.
    ended = time.monotonic()
    fleet.reader.core.delete_namespaced_pod("trainer-0", OTHERS, grace_period_seconds=0)
    wait_for(
        "both replicas Running", lambda: len([p for p in fleet.our_pods("chat") if pod_is_ready(p)]) == 2 or None, 60
    )
    report("observed capacity: training job ended -> second replica Running there", time.monotonic() - ended)
    assert sorted(p.spec.node_name for p in fleet.our_pods("chat")) == ["cap-a", "cap-c"]
    wait_for("cap-a's status", lambda: fleet.devices("cap-a") == (8, 8, 0, 0) or None, 30)

    # The lost GPU comes back.
    back = time.monotonic()
    set_allocatable(fleet, "cap-b", 8)
    wait_for("cap-b offers 8", lambda: fleet.devices("cap-b") == (8, 0, 0, 8) or None, 30)
    report("observed capacity: allocatable back to 8 -> freeDevices 8", time.monotonic() - back)
    assert fleet.reader.condition(fleet.compute_node("cap-b"), "Healthy")["reason"] == "AsDeclared"


# --- 2. the bind race -----------------------------------------------------------------------------------


def test_a_replica_refused_at_bind_moves_within_the_grace(fleet: Fleet, report: Any) -> None:
    """The pass chose cap-b; before kube-scheduler binds the pod there, someone else's pod takes all 8."""
    with fleet.plane.paused("kube-scheduler"):
        fleet.reader.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, "agentworkloads", "chat", {"spec": {"replicas": 3}}
        )
        (ours,), _ = wait_for(
            "the third replica's pod",
            lambda: [p for p in fleet.our_pods("chat") if p.spec.node_name is None] or None,
            30,
        )
        assert "cap-b" in json.dumps(ours.spec.affinity.to_dict())
        fleet.apply(training_job("sneaky", "cap-b", bound=True))
        fleet.kubelet.add_node(LATE_NODE, {**NODE_ALLOCATABLE, GPU: "8"})
        fleet.apply(compute_node(LATE_NODE))
        label_nodes(fleet, LATE_NODE)
        resumed = time.monotonic()

    def unschedulable() -> str | None:
        pod = fleet.reader.core.read_namespaced_pod(ours.metadata.name, NS)
        scheduled = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        return scheduled.message if scheduled is not None and scheduled.status == "False" else None

    message, _ = wait_for("kube-scheduler refuses our pod", unschedulable, 30)
    assert f"Insufficient {GPU}" in message

    def moved() -> Any:
        return next((p for p in fleet.our_pods("chat") if p.spec.node_name == LATE_NODE and pod_is_ready(p)), None)

    wait_for("the replica Running on the late node", moved, GRACE + 60)
    took = time.monotonic() - resumed
    report(f"bind race: refused by kube-scheduler -> Running elsewhere (grace {GRACE:.0f} s)", took)
    assert took < GRACE + 30
    events = fleet.reader.core.list_namespaced_event(NS, field_selector="reason=Rescheduled").items
    assert any("kube-scheduler: 0/" in e.message and f"Insufficient {GPU}" in e.message for e in events), [
        e.message for e in events
    ]
    fleet.reader.core.delete_namespaced_pod("sneaky", OTHERS, grace_period_seconds=0)


# --- 3. DRA ---------------------------------------------------------------------------------------------


def test_devices_published_through_dra_are_counted_from_slices_and_claims(fleet: Fleet, report: Any) -> None:
    fleet.kubelet.add_node(DRA_NODE, dict(NODE_ALLOCATABLE))  # no device plugin: DRA only
    device_class = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": DRIVER},
        # The class NVIDIA's driver installs; with an extended resource name, pods asking for nvidia.com/gpu
        # get their devices through it (KEP-5004, beta in 1.34+).
        "spec": {"selectors": [{"cel": {"expression": f"device.driver == '{DRIVER}'"}}], "extendedResourceName": GPU},
    }
    slice_ = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{DRA_NODE}-gpus"},
        "spec": {
            "driver": DRIVER,
            "nodeName": DRA_NODE,
            "pool": {"name": DRA_NODE, "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": f"gpu-{i}", "attributes": {"type": {"string": "gpu"}}} for i in range(8)],
        },
    }
    fleet.apply(device_class, slice_, compute_node(DRA_NODE))
    wait_for("the DRA node's status", lambda: fleet.devices(DRA_NODE) == (8, 0, 0, 8) or None, 30)
    assert fleet.compute_node(DRA_NODE)["status"]["deviceSource"] == "DynamicResourceAllocation"

    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "job-gpus", "namespace": OTHERS},
        "spec": {
            "devices": {
                "requests": [
                    {"name": "g", "exactly": {"deviceClassName": DRIVER, "allocationMode": "ExactCount", "count": 2}}
                ]
            }
        },
    }
    job = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dra-job", "namespace": OTHERS},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": DRA_NODE},
            "resourceClaims": [{"name": "g", "resourceClaimName": "job-gpus"}],
            "containers": [{"name": "c", "image": "trainer:v1", "resources": {"claims": [{"name": "g"}]}}],
            "terminationGracePeriodSeconds": 0,
        },
    }
    allocated = time.monotonic()
    fleet.apply(claim, job)
    wait_for("the claim's devices held by others", lambda: fleet.devices(DRA_NODE) == (8, 0, 2, 6) or None, 60)
    report("DRA: someone else's claim allocated -> the node's freeDevices drops by 2", time.monotonic() - allocated)

    # Ours, on the DRA node: kube-scheduler makes each pod a claim from the class's extended resource.
    label_nodes(fleet, DRA_NODE, pool="capacity-dra")
    fleet.apply(workload("dra-chat", replicas=1, devices=4, pool="capacity-dra"))
    wait_for(
        "our replica Running on the DRA node",
        lambda: any(pod_is_ready(p) for p in fleet.our_pods("dra-chat")) or None,
        60,
    )
    wait_for("ours count as ours", lambda: fleet.devices(DRA_NODE) == (8, 4, 2, 2) or None, 30)
    (pod,) = fleet.our_pods("dra-chat")
    assert pod.spec.node_name == DRA_NODE
    listed: dict[str, Any] = fleet.reader.custom.list_namespaced_custom_object(
        "resource.k8s.io", "v1", NS, "resourceclaims"
    )
    claims = listed["items"]
    assert [len(c["status"]["allocation"]["devices"]["results"]) for c in claims] == [4], "a claim of 4 for our pod"


# --- 4. a namespace deleted under a running workload ------------------------------------------------------


def test_a_namespace_being_deleted_is_not_fought(fleet: Fleet, report: Any) -> None:
    fleet.apply(namespace("doomed"))
    label_nodes(fleet, "cap-b", pool="capacity-doomed")  # free again since the race's pod of others went
    fleet.apply(workload("chat", replicas=2, devices=2, pool="capacity-doomed", namespace="doomed"))
    wait_for("the doomed workload ready", lambda: fleet.reader.workload_ready("doomed", "chat") or None, 60)
    audit_lines = len(fleet.plane.audit_events())
    started = time.monotonic()
    fleet.plane.kubectl("delete", "namespace", "doomed", "--wait=true", "--timeout=120s")
    report("namespace with a running workload deleted", time.monotonic() - started)
    time.sleep(2)  # passes after the namespace is gone
    ours = [
        e
        for e in fleet.plane.audit_events()[audit_lines:]
        if e["user"]["username"] == OPERATOR_USER and (e.get("objectRef") or {}).get("namespace") == "doomed"
    ]
    refused = [
        f"{e['verb']} {e['objectRef'].get('resource')}: {e['responseStatus'].get('code')}"
        for e in ours
        if e["responseStatus"].get("code", 200) >= 400
    ]
    writes = [e for e in ours if e["verb"] in ("create", "patch", "update", "delete")]
    report("namespace deletion: the operator's writes refused", len(refused), "writes")
    assert refused == []
    print(f"operator requests in the namespace while it was deleted: {len(ours)} ({len(writes)} writes)")
    log = fleet.operator.log()
    assert "being terminated" not in log
    assert "Traceback" not in log
    with pytest.raises(ApiException):
        fleet.reader.workload("doomed", "chat")
