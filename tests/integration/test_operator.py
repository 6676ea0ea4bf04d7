"""The real operator, end to end, against the in-process API server over HTTP: the example fleet, scaling,
rolling changes, node loss, cordons, deletion, restarts, discovery, leadership, and bad input."""

from __future__ import annotations

import socket
from collections import Counter
from functools import partial
from typing import Any

import aiohttp

from gpufabric.controller.reconciler import LoopSettings
from support.harness import AW, CN, Cluster, agent_workload, eventually


def placements(cluster: Cluster, name: str, namespace: str = "agents") -> dict[int, list[str]]:
    status = cluster.workload(namespace, name).get("status", {})
    return {p["replica"]: p["nodes"] for p in status.get("placements", [])}


async def small_fleet(cluster: Cluster, count: int = 3, devices: int = 8) -> None:
    await cluster.namespace("agents")
    for i in range(count):
        await cluster.gpu_node(f"gpu-{i}", devices=devices)


def chat(name: str = "chat", replicas: int = 2, devices: int = 4, **spec: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "replicas": replicas,
        "devicesPerReplica": devices,
        "runtimes": {"nvidia": {"image": "vllm:v1"}},
    }
    return agent_workload(name, defaults | spec)


async def test_the_example_fleet_end_to_end(cluster: Cluster) -> None:
    workloads = await cluster.load_examples()
    operator = cluster.start_operator()
    for item in workloads:
        name = item["metadata"]["name"]
        await eventually(partial(cluster.ready, "agents", name), timeout=30, message=f"{name} ready")
    cluster.invariants()
    pods = cluster.pods()
    placed = [p for w in workloads for p in cluster.workload("agents", w["metadata"]["name"])["status"]["placements"]]
    assert len(pods) == sum(len(p["nodes"]) for p in placed)
    # support-agent has a 20,000 tokens/s target: the autoscaler sized it from the B200 prior (9,969 each).
    support = cluster.workload("agents", "support-agent")
    assert support["spec"]["replicas"] == 3
    assert support["metadata"]["annotations"]["gpufabric.io/scaled-to"] == "3"
    frontier = cluster.workload("agents", "frontier-405b")["status"]
    (gang,) = frontier["placements"]
    assert (gang["devicesPerNode"], len(gang["nodes"])) == (8, 2)
    assert cluster.api.get_object("v1/services", "frontier-405b-0", "agents") is not None
    assert cluster.api.get_object("v1/services", "reasoning-70b", "agents") is not None
    node = cluster.api.get_object(CN, gang["nodes"][0])
    assert node is not None
    assert (node["status"]["allocatedDevices"], node["status"]["freeDevices"]) == (8, 0)
    # kopf stores nothing on our objects: no finalizers, no progress annotations.
    for item in cluster.api.live_objects(AW):
        assert not item["metadata"].get("finalizers")
        assert not any(k.startswith("kopf.") for k in item["metadata"].get("annotations", {}))
    writes = Counter(r.resource.plural if r.resource else "?" for r in cluster.api.writes())
    assert writes["pods"] == len(pods), "one create per pod, no retries needed"
    passes = operator.metrics.registry.get_sample_value("gpufabric_reconcile_passes_total")
    assert passes is not None
    assert passes >= 1


async def test_scaling_up_and_down(cluster: Cluster) -> None:
    await small_fleet(cluster)
    cluster.start_operator()
    await cluster.apply(chat(replicas=2))
    await eventually(lambda: cluster.ready("agents", "chat"))
    await cluster.api.h_patch(AW, "chat", {"spec": {"replicas": 5}}, namespace="agents")
    await eventually(lambda: cluster.ready("agents", "chat"))
    assert sorted(placements(cluster, "chat")) == [0, 1, 2, 3, 4]
    await cluster.api.h_patch(AW, "chat", {"spec": {"replicas": 2}}, namespace="agents")
    await eventually(lambda: cluster.ready("agents", "chat") and len(cluster.pods("chat")) == 2)
    assert sorted(placements(cluster, "chat")) == [0, 1], "the highest replicas go first"
    cluster.invariants()


async def test_a_rolling_change_replaces_every_replica(cluster: Cluster) -> None:
    await small_fleet(cluster)
    cluster.start_operator()
    await cluster.apply(chat(replicas=3, devices=2))
    await eventually(lambda: cluster.ready("agents", "chat"))
    await cluster.api.h_patch(AW, "chat", {"spec": {"runtimes": {"nvidia": {"image": "vllm:v2"}}}}, namespace="agents")

    def rolled() -> bool:
        pods = cluster.pods("chat")
        return (
            cluster.ready("agents", "chat")
            and len(pods) == 3
            and all(p["spec"]["containers"][0]["image"] == "vllm:v2" for p in pods)
        )

    await eventually(rolled, timeout=30)
    cluster.invariants()


async def test_a_not_ready_node_loses_its_replicas_after_the_grace_period(cluster: Cluster) -> None:
    await small_fleet(cluster)
    cluster.start_operator(node_grace_seconds=1.0)
    await cluster.apply(chat(replicas=1, devices=8))
    await eventually(lambda: cluster.ready("agents", "chat"))
    ((before,),) = placements(cluster, "chat").values()
    await cluster.kubelet.set_ready(before, False)
    await eventually(
        lambda: cluster.ready("agents", "chat") and list(placements(cluster, "chat").values()) != [[before]],
        timeout=20,
        message="replica moved off the NotReady node",
    )

    # Replaced at once (drained: a replacement first); what is left there is force-deleted once the grace ends.
    def rescheduled() -> list[dict[str, Any]]:
        return [e for e in cluster.api.live_objects("v1/events", "agents") if e["reason"] == "Rescheduled"]

    await eventually(lambda: bool(rescheduled()), message="the pods left on the node force-deleted after the grace")
    assert "not Ready" in rescheduled()[0]["message"]
    cluster.invariants()


async def test_cordoning_moves_replicas_and_keeps_new_ones_away(cluster: Cluster) -> None:
    await small_fleet(cluster, count=2)
    cluster.start_operator()
    await cluster.apply(chat(replicas=1, devices=8))
    await eventually(lambda: cluster.ready("agents", "chat"))
    ((before,),) = placements(cluster, "chat").values()
    await cluster.api.h_patch(CN, before, {"spec": {"unschedulable": True}})
    await eventually(
        lambda: (
            cluster.ready("agents", "chat")
            and list(placements(cluster, "chat").values()) != [[before]]
            and len(cluster.pods("chat")) == 1
        )
    )
    cluster.invariants()


async def test_deleting_a_workload_takes_its_pods_and_services_and_frees_devices(cluster: Cluster) -> None:
    await small_fleet(cluster, count=1)
    cluster.start_operator()
    await cluster.apply(chat(replicas=2, devices=4))
    await eventually(lambda: cluster.ready("agents", "chat"))
    await cluster.api.h_delete(AW, "chat", namespace="agents")
    assert cluster.api.get_object(AW, "chat", "agents") is None, "no finalizer holds the delete"
    await eventually(lambda: not cluster.pods("chat") and not cluster.api.live_objects("v1/services", "agents"))

    def freed() -> bool:
        node = cluster.api.get_object(CN, "gpu-0")
        return bool(node and node.get("status", {}).get("freeDevices") == 8)

    await eventually(freed)


async def test_pending_replicas_take_capacity_as_soon_as_it_frees(cluster: Cluster) -> None:
    await small_fleet(cluster, count=1)
    cluster.start_operator(
        loop=LoopSettings(debounce=0.05, resync=3600.0, first_backoff=0.1, max_backoff=1.0, action_backoff=0.1)
    )
    await cluster.apply(chat("first", replicas=1, devices=8))
    await eventually(lambda: cluster.ready("agents", "first"))
    await cluster.apply(chat("second", replicas=1, devices=8))
    await eventually(lambda: (cluster.condition("agents", "second", "Placed") or {}).get("reason") == "Unschedulable")
    await cluster.api.h_delete(AW, "first", namespace="agents")
    # No periodic pass will come (resync is an hour): the freed pod's events alone must place it.
    await eventually(lambda: cluster.ready("agents", "second"), timeout=10)


async def test_a_restarted_operator_neither_duplicates_nor_double_books(cluster: Cluster) -> None:
    await small_fleet(cluster, count=2)
    operator = cluster.start_operator()
    await cluster.apply(chat("a", replicas=2, devices=4))
    await eventually(lambda: len(cluster.pods("a")) >= 1, timeout=10)
    await cluster.stop_operator(operator, kill=True)
    await cluster.apply(chat("b", replicas=2, devices=4))
    cluster.start_operator()
    await eventually(lambda: cluster.ready("agents", "a") and cluster.ready("agents", "b"), timeout=20)
    cluster.invariants()
    assert len(cluster.pods()) == 4


async def test_discovery_creates_compute_nodes_from_node_labels(cluster: Cluster) -> None:
    await cluster.add_node(
        "h20-1",
        {"nvidia.com/gpu": "8"},
        labels={
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-H20",
            "gpufabric.io/roce-domain": "x",
        },
    )
    await cluster.add_node(
        "npu-1",
        {"huawei.com/Ascend910": "8"},
        labels={"accelerator": "huawei-Ascend910", "node.kubernetes.io/npu.chip.name": "910B3"},
    )
    await cluster.add_node("cpu-1", {}, labels={"kubernetes.io/os": "linux"})
    cluster.start_operator(discover_nodes=True)
    await eventually(lambda: len(cluster.api.live_objects(CN)) == 2)
    h20 = cluster.api.get_object(CN, "h20-1")
    assert h20 is not None
    assert (h20["spec"]["accelerator"], h20["spec"]["devices"], h20["spec"]["fabric"]) == (
        "H20",
        8,
        {"roceDomain": "x"},
    )
    npu = cluster.api.get_object(CN, "npu-1")
    assert npu is not None
    assert (npu["spec"]["vendor"], npu["spec"]["accelerator"]) == ("ascend", "Ascend-910B3")


async def test_only_the_lease_holder_writes(cluster: Cluster) -> None:
    await cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpufabric-system"}})
    await small_fleet(cluster, count=2)
    first = cluster.start_operator(
        leader_election=True, operator_namespace="gpufabric-system", identity="first", lease_seconds=3
    )
    await eventually(lambda: first.leadership.leading, timeout=10)
    second = cluster.start_operator(
        leader_election=True, operator_namespace="gpufabric-system", identity="second", lease_seconds=3
    )
    await cluster.apply(chat(replicas=2, devices=4))
    await eventually(lambda: cluster.ready("agents", "chat"))
    assert not second.leadership.leading
    assert second.reconciler.passes == 0
    # The holder goes away: the other one takes over once the Lease expires, and carries on.
    await cluster.stop_operator(first, kill=True)
    await eventually(lambda: second.leadership.leading, timeout=40, message="takeover")
    await cluster.api.h_patch(AW, "chat", {"spec": {"replicas": 3}}, namespace="agents")
    await eventually(lambda: cluster.ready("agents", "chat"))
    cluster.invariants()


async def test_an_invalid_workload_gets_a_condition_and_an_event(cluster: Cluster) -> None:
    await small_fleet(cluster, count=1)
    cluster.start_operator()
    # The emulator does not run the CRD's schema (a real API server would refuse this at apply time).
    await cluster.apply(chat(replicas=-3))
    await eventually(lambda: (cluster.condition("agents", "chat", "Placed") or {}).get("reason") == "InvalidSpec")
    condition = cluster.condition("agents", "chat", "Placed")
    assert condition is not None
    assert "spec.replicas: Input should be greater than or equal to 0" in condition["message"]
    assert not cluster.pods("chat")
    await eventually(lambda: any(e["reason"] == "InvalidSpec" for e in cluster.api.live_objects("v1/events", "agents")))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_metrics_and_liveness_endpoints(cluster: Cluster) -> None:
    await small_fleet(cluster, count=1)
    metrics_port, health_port = free_port(), free_port()
    cluster.start_operator(metrics_port=metrics_port, health_port=health_port)
    await cluster.apply(chat(replicas=1))
    await eventually(lambda: cluster.ready("agents", "chat"))
    async with aiohttp.ClientSession() as session:

        async def scraped() -> bool:
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                text = await response.text()
            # The gauges describe the fleet as the last pass saw it: one pass behind status at most.
            return 'gpufabric_replicas{namespace="agents",state="ready",workload="chat"} 1.0' in text

        await eventually(scraped, message="the exporter shows the ready replica")
        async with session.get(f"http://127.0.0.1:{health_port}/healthz") as response:
            assert response.status == 200
            health = await response.json()
    assert health["reconciler"]["passes"] >= 1


async def test_only_our_pods_and_services_are_listed_and_watched(cluster: Cluster) -> None:
    """The API server filters them (labelSelector on every pods and Services list and watch): a cluster's other
    pods never stream through the operator's own watches (others' bound, running pods have a watch of their
    own: test_observed_capacity)."""
    await small_fleet(cluster)
    for index in range(3):
        other = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"other-{index}", "namespace": "agents"}}
        await cluster.api.h_create("v1/pods", other | {"spec": {"containers": [{"name": "c", "image": "i"}]}})
    await cluster.apply(chat(replicas=1))
    cluster.start_operator()
    await eventually(partial(cluster.ready, "agents", "chat"), timeout=20, message="chat ready")
    reads = [
        request
        for request in cluster.api
        if request.method.value == "GET"
        and request.resource is not None
        and request.resource.plural in ("pods", "services")
        and request.resource.group == ""
        and request.headers.get("X-Harness") != "1"
        and request.name is None  # collections: list and watch
    ]
    assert {r.resource.plural for r in reads if r.resource is not None} == {"pods", "services"}
    selectors = {r.params.get("labelSelector") for r in reads if "fieldSelector" not in r.params}
    assert selectors == {"app.kubernetes.io/managed-by=gpu-fabric-operator"}, selectors
