"""The exporter's output: every documented metric, bounded labels, and `promtool check metrics` clean."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpufabric.api.computenode import DeviceSource
from gpufabric.api.refs import Allocation, Kind, ObjectRef, workload_ref
from gpufabric.exporter import DEVICE_STATES, FleetView, OperatorMetrics
from gpufabric.placement import PriorThroughput
from gpufabric.reconcile import ClusterState
from gpufabric.reconcile.devices import observed_in
from gpufabric.reconcile.ledger import fleet_snapshot, replicas_of
from gpufabric.reconcile.state import DraInventory, PodRecord, ResourceClaimRecord, ResourceSliceRecord
from gpufabric.throughput import Reading, ScrapeProblem, ScrapeTarget, TokenTracker
from gpufabric.vendors import ACCELERATORS, Precision, Vendor
from support.fakecluster import FakeCluster
from support.fleet import node, workload

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = os.environ.get("PROMTOOL") or str(ROOT / ".tools/prometheus/usr/bin/promtool")


def target(pod: str, replica: int) -> ScrapeTarget:
    return ScrapeTarget(
        pod=ObjectRef(Kind.POD, "default", pod),
        workload=workload_ref("default", "chat"),
        replica=replica,
        allocation=Allocation(Vendor.NVIDIA, "H100-SXM5-80GB", Precision.BF16, 1, ("h1",)),
        parameters_billions=8.0,
        prompt_counter="p",
        generation_counter="g",
        waiting_gauge=None,
        pod_ip="10.0.0.1",
        port=8000,
        path="/metrics",
    )


@pytest.fixture
def exposition() -> str:
    cluster = FakeCluster().fleet([node("h1"), node("a1", "Ascend-910B3", domain="b")])
    cluster.add_workload(workload("chat", replicas=2, runtimes=("nvidia",)))
    cluster.add_workload(workload("nowhere", runtimes=("mthreads",)))
    cluster.add_workload(
        workload("targeted", runtimes=("ascend",), throughput={"targetTokensPerSecond": 500, "maxReplicas": 2})
    )
    cluster.settle()
    state = cluster.state()
    tokens = TokenTracker(prior=PriorThroughput(dict(ACCELERATORS)))
    for second in (0.0, 10.0, 20.0):
        tokens.observe(target("chat-0-0", 0), Reading.single(100.0 * second, 200.0 * second, 0.0), second)
        tokens.observe(target("chat-1-0", 1), Reading.single(50.0 * second, 100.0 * second, None), second)
    tokens.observe(target("chat-1-0", 1), ScrapeProblem("timeout", "slow"), 21.0)
    metrics = OperatorMetrics()
    view = FleetView(state, tokens.view())
    metrics.watch(lambda: view)
    metrics.passes.inc()
    metrics.placement_seconds.observe(0.003)
    metrics.writes.labels(verb="create", resource="pods").inc()
    return generate_latest(metrics.registry).decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_promtool_accepts_the_exposition(exposition: str) -> None:
    assert Path(PROMTOOL).is_file(), f"promtool not found at {PROMTOOL}: run `make tools`"
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_every_readme_metric_is_exported_and_documented(exposition: str) -> None:
    exported = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in text_string_to_metric_families(exposition)
    }
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(gpufabric_[a-z_]+)` \|", readme, flags=re.MULTILINE))
    assert documented, "README lists no metrics"
    assert exported == documented


def test_token_counters_sum_the_engines_counters(exposition: str) -> None:
    tokens = {
        (labels["kind"], labels["workload"]): value for labels, value in samples(exposition)["gpufabric_tokens_total"]
    }
    # chat-0-0 grew 2,000 prompt / 4,000 generation tokens, chat-1-0 1,000 / 2,000.
    assert tokens == {("prompt", "chat"): 3000.0, ("generation", "chat"): 6000.0}


def test_inventory_gauges(exposition: str) -> None:
    found = samples(exposition)
    devices = {
        (labels["accelerator"], labels["roce_domain"], labels["state"]): value
        for labels, value in found["gpufabric_devices"]
    }
    assert devices[("H100-SXM5-80GB", "a", "allocated")] == 2
    assert devices[("H100-SXM5-80GB", "a", "free")] == 6
    assert devices[("Ascend-910B3", "b", "allocated")] + devices[("Ascend-910B3", "b", "free")] == 8
    nodes = {(labels["accelerator"], labels["state"]): value for labels, value in found["gpufabric_compute_nodes"]}
    assert nodes == {("H100-SXM5-80GB", "ready"): 1, ("Ascend-910B3", "ready"): 1}
    assert {labels["accelerator"]: v for labels, v in found["gpufabric_devices_not_advertised"]} == {
        "H100-SXM5-80GB": 0,
        "Ascend-910B3": 0,
    }
    targets = found["gpufabric_throughput_target_tokens_per_second"]
    assert targets == [({"namespace": "default", "workload": "targeted"}, 500.0)]
    refused = {labels["workload"]: value for labels, value in found["gpufabric_workload_unschedulable"]}
    assert refused == {"chat": 0, "nowhere": 1, "targeted": 0}
    replicas = {(labels["workload"], labels["state"]): value for labels, value in found["gpufabric_replicas"]}
    assert replicas[("chat", "ready")] == 2
    assert found["gpufabric_unschedulable_workloads"] == [({}, 1.0)]
    failures = {labels["reason"]: value for labels, value in found["gpufabric_scrape_failures_total"]}
    assert failures["timeout"] == 1.0
    per_device = found["gpufabric_tokens_per_device_second"]
    assert per_device == [({"vendor": "nvidia", "accelerator": "H100-SXM5-80GB", "precision": "BF16"}, 150.0)]
    capacity = {labels["size_class"]: value for labels, value in found["gpufabric_free_capacity_tokens_per_second"]}
    assert capacity["8B"] > capacity["80B"] > 0


def test_no_label_names_a_pod_or_uid(exposition: str) -> None:
    for name, rows in samples(exposition).items():
        for labels, _ in rows:
            assert not {"pod", "uid", "instance_id"} & labels.keys(), name
            assert not any(re.search(r"-\d+-\d+$", v) for v in labels.values()), (name, labels)


def test_compute_nodes_by_state_and_devices_not_advertised() -> None:
    cluster = FakeCluster()
    cluster.add_compute_node(node("h1"))
    cluster.add_compute_node(node("h2"))
    cluster.add_compute_node(node("h3", cordoned=True))
    cluster.add_compute_node(node("h4"), with_node=False)
    cluster.add_node("h5", allocatable={"nvidia.com/gpu": "6"})
    cluster.add_compute_node(node("h5"), with_node=False)
    cluster.set_ready("h2", False)
    metrics = OperatorMetrics()
    view = FleetView(cluster.state(), None)
    metrics.watch(lambda: view)
    found = samples(generate_latest(metrics.registry).decode())
    nodes = {labels["state"]: value for labels, value in found["gpufabric_compute_nodes"]}
    assert nodes == {"ready": 2, "not_ready": 2, "cordoned": 1}
    assert found["gpufabric_devices_not_advertised"] == [({"vendor": "nvidia", "accelerator": "H100-SXM5-80GB"}, 2.0)]


# --- devices as placement counts them: offered by the Node, held by others ---------------------------------


def collected(state: ClusterState) -> dict[str, list[tuple[dict[str, str], float]]]:
    metrics = OperatorMetrics()
    view = FleetView(state, None)
    metrics.watch(lambda: view)
    return samples(generate_latest(metrics.registry).decode())


def device_counts(found: dict[str, list[tuple[dict[str, str], float]]]) -> dict[tuple[str, str], float]:
    """(roce_domain, state) -> devices; the tests below give each node a domain of its own."""
    return {(labels["roce_domain"], labels["state"]): value for labels, value in found["gpufabric_devices"]}


def our_pod(name: str, compute_node: str, devices: int, replica: int) -> PodRecord:
    return PodRecord(
        ref=ObjectRef(Kind.POD, "default", f"{name}-{replica}-0"),
        workload=workload_ref("default", name),
        replica=replica,
        rank=0,
        compute_node=compute_node,
        allocation=Allocation(Vendor.NVIDIA, "H100-SXM5-80GB", Precision.BF16, devices, (compute_node,)),
        template_hash="t",
    )


def test_devices_split_into_ours_others_and_not_offered() -> None:
    """One node each: others hold 3 (a pod of theirs), one Node advertises 6 of 8, one is a DRA node whose
    slices publish 5 devices of which a claim of others holds 1; the operator's replicas hold 2 on each."""
    cluster = FakeCluster()
    cluster.add_compute_node(node("shared", domain="s"))
    cluster.add_node("short", allocatable={"nvidia.com/gpu": "6"})
    cluster.add_compute_node(node("short", domain="p"), with_node=False)
    cluster.add_node("dra")  # no device plugin: DRA's slices are what it offers
    cluster.add_compute_node(node("dra", domain="d"), with_node=False)
    slices = (
        ResourceSliceRecord("dra-gpus", "gpu.nvidia.com", "dra", 1, 1, "dra", tuple(f"gpu-{i}" for i in range(5))),
    )
    claims = (ResourceClaimRecord("batch/train", (("gpu.nvidia.com", "dra", "gpu-0"),), ("batch/train-0",)),)
    state = replace(
        cluster.state(),
        pods=tuple(our_pod("chat", name, 2, replica) for replica, name in enumerate(("shared", "short", "dra"))),
        foreign={"shared": {"nvidia.com/gpu": 3}},
        dra=DraInventory(slices, claims),
    )
    found = collected(state)
    assert device_counts(found) == {
        ("s", "allocated"): 2,
        ("s", "free"): 3,
        ("s", "unavailable"): 0,
        ("s", "held_by_others"): 3,
        ("s", "not_offered"): 0,
        ("p", "allocated"): 2,
        ("p", "free"): 4,
        ("p", "unavailable"): 0,
        ("p", "held_by_others"): 0,
        ("p", "not_offered"): 2,
        ("d", "allocated"): 2,
        ("d", "free"): 2,
        ("d", "unavailable"): 0,
        ("d", "held_by_others"): 1,
        ("d", "not_offered"): 3,
    }
    # The same count of what Nodes do not offer, device plugin and DRA alike, as observed_in gives placement.
    observed = observed_in(state)
    assert observed["dra"].source is DeviceSource.DRA
    not_offered = sum(8 - seen.offered for seen in observed.values())
    assert found["gpufabric_devices_not_advertised"] == [
        ({"vendor": "nvidia", "accelerator": "H100-SXM5-80GB"}, float(not_offered))
    ]
    assert not_offered == 5


def test_free_capacity_leaves_out_what_others_hold() -> None:
    cluster = FakeCluster().fleet([node("h1")])
    alone = cluster.state()
    shared = replace(alone, foreign={"h1": {"nvidia.com/gpu": 6}})
    tokens = TokenTracker(prior=PriorThroughput(dict(ACCELERATORS))).view()

    def capacity(state: ClusterState) -> float:
        metrics = OperatorMetrics()
        view = FleetView(state, tokens)
        metrics.watch(lambda: view)
        found = samples(generate_latest(metrics.registry).decode())
        return {labels["size_class"]: v for labels, v in found["gpufabric_free_capacity_tokens_per_second"]}["8B"]

    assert capacity(shared) == pytest.approx(capacity(alone) * 2 / 8)


# Per node: devices declared, what the Node advertises (None: nothing of the resource), what others' pods
# request there, the devices of each of our replicas, whether the Node exists, is Ready, and is cordoned.
node_facts = st.tuples(
    st.integers(1, 8),
    st.none() | st.integers(0, 10),
    st.integers(0, 10),
    st.lists(st.integers(1, 4), max_size=4),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(node_facts, min_size=1, max_size=6))
def test_device_states_partition_what_each_node_declares(facts: list[tuple[Any, ...]]) -> None:
    cluster = FakeCluster()
    pods: list[PodRecord] = []
    foreign: dict[str, dict[str, int]] = {}
    declared: dict[str, int] = {}
    for index, (devices, advertised, others, replicas, exists, ready, cordoned) in enumerate(facts):
        name = f"n{index}"
        declared[name] = devices
        if exists:
            cluster.add_node(
                name, ready=ready, allocatable={} if advertised is None else {"nvidia.com/gpu": str(advertised)}
            )
        cluster.add_compute_node(node(name, devices=devices, domain=name, cordoned=cordoned), with_node=False)
        foreign[name] = {"nvidia.com/gpu": others}
        pods += [our_pod(f"w{index}", name, size, replica) for replica, size in enumerate(replicas)]
    state = replace(cluster.state(), pods=tuple(pods), foreign=foreign)
    found = collected(state)
    counts = device_counts(found)
    snapshot = fleet_snapshot(state.compute_nodes.values(), state.nodes, replicas_of(state.pods), observed_in(state))
    for name, devices in declared.items():
        by_state = {state_name: counts[(name, state_name)] for state_name in DEVICE_STATES}
        assert sum(by_state.values()) == devices, (name, by_state)
        assert all(count >= 0 for count in by_state.values()), (name, by_state)
        seen = snapshot.nodes[name]
        # Placement's numbers: free is what a new replica could take, and ours never exceed the capacity.
        free = by_state["free"] + by_state["unavailable"]
        assert free == seen.free
        assert by_state["allocated"] == min(
            sum(p.allocation.devices_per_node for p in pods if p.compute_node == name), seen.capacity
        )
        assert by_state["allocated"] + free == seen.capacity
        assert by_state["not_offered"] == devices - seen.offered
    not_advertised = sum(
        declared[name] - snapshot.nodes[name].offered for name in declared if cluster.nodes.get(name) is not None
    )
    assert sum(v for _, v in found["gpufabric_devices_not_advertised"]) == not_advertised
