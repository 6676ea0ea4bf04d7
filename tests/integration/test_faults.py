"""Randomised fault injection: 409s, 5xx bursts, dropped watch streams, and the operator killed at random
points, while workloads scale and roll and nodes fail. After every step: no device promised twice, no
duplicate pod, nothing kube-scheduler had to refuse; once faults stop: every workload placed as asked, or
carrying an honest reason, with status matching its pods.

GPUFABRIC_FAULT_SEEDS sets how many seeds run (default 12; the closing note reports a larger run)."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from gpufabric.sandbox.emulator import FaultPlan
from support.harness import AW, CN, Cluster, agent_workload, eventually

SEEDS = int(os.environ.get("GPUFABRIC_FAULT_SEEDS", "12"))


async def build(cluster: Cluster, rng: random.Random) -> list[str]:
    await cluster.namespace("agents")
    for i in range(4):
        await cluster.gpu_node(f"gpu-{i}")
    for i in range(2):
        await cluster.gpu_node(
            f"npu-{i}", vendor="ascend", accelerator="Ascend-910B3", resource="huawei.com/Ascend910", domain=None
        )
    names = []
    shapes: list[dict[str, Any]] = [
        {"replicas": rng.randint(1, 3), "devicesPerReplica": rng.choice([1, 2, 4])},
        {"replicas": rng.randint(1, 3), "devicesPerReplica": rng.choice([2, 4])},
        {"replicas": 1, "nodesPerReplica": 2, "devicesPerReplica": 8, "runtimes": {"nvidia": {"image": "v1"}}},
    ]
    for index, shape in enumerate(shapes):
        name = f"w{index}"
        names.append(name)
        spec: dict[str, Any] = {
            "model": {"name": name, "parametersBillions": 8},
            "runtimes": {"nvidia": {"image": "v1"}, "ascend": {"image": "v1"}},
            **shape,
        }
        await cluster.apply(agent_workload(name, spec))
    return names


def settled(cluster: Cluster, names: list[str]) -> bool:
    for name in names:
        body = cluster.workload("agents", name)
        status = body.get("status", {})
        if status.get("observedGeneration") != body["metadata"]["generation"]:
            return False
        placed = cluster.condition("agents", name, "Placed") or {}
        pods = [p for p in cluster.pods(name) if not p["metadata"].get("deletionTimestamp")]
        if placed.get("status") == "True":
            if status.get("readyReplicas") != body["spec"]["replicas"]:
                return False
            if len(pods) != sum(len(p["nodes"]) for p in status.get("placements", [])):
                return False
        elif not (placed.get("reason") == "Unschedulable" and str(placed.get("message", "")).startswith("0/")):
            return False
    return True


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_faults_never_double_book_and_everything_settles(cluster: Cluster, seed: int) -> None:
    rng = random.Random(seed)
    names = await build(cluster, rng)
    cluster.api.faults = FaultPlan(seed=seed, conflict_rate=0.15, server_error_rate=0.15, watch_drop_after=(0.3, 1.5))
    operator = cluster.start_operator(node_grace_seconds=0.5)
    down: set[str] = set()
    for _ in range(rng.randint(5, 9)):
        await asyncio.sleep(rng.uniform(0.05, 0.6))
        cluster.invariants()
        move = rng.choice(["scale", "image", "node-down", "node-up", "kill", "cordon", "wait"])
        name = rng.choice(names)
        if move == "scale":
            await cluster.api.h_patch(AW, name, {"spec": {"replicas": rng.randint(0, 3)}}, namespace="agents")
        elif move == "image":
            await cluster.api.h_patch(
                AW, name, {"spec": {"runtimes": {"nvidia": {"image": f"v{rng.randint(2, 9)}"}}}}, namespace="agents"
            )
        elif move == "node-down":
            node = rng.choice([f"gpu-{i}" for i in range(4)])
            down.add(node)
            await cluster.kubelet.set_ready(node, False)
        elif move == "node-up" and down:
            node = down.pop()
            await cluster.kubelet.set_ready(node, True)
        elif move == "cordon":
            await cluster.api.h_patch(CN, rng.choice(["gpu-0", "gpu-1", "npu-0"]), {"spec": {"unschedulable": True}})
        elif move == "kill":
            await cluster.stop_operator(operator, kill=True)
            operator = cluster.start_operator(node_grace_seconds=0.5)
    cluster.invariants()
    # Heal: faults off, nodes back, cordons lifted; the operator must converge on its own.
    cluster.api.faults = None
    for node in down:
        await cluster.kubelet.set_ready(node, True)
    for item in cluster.api.live_objects(CN):
        if item["spec"].get("unschedulable"):
            await cluster.api.h_patch(CN, item["metadata"]["name"], {"spec": {"unschedulable": False}})
    await eventually(lambda: settled(cluster, names), timeout=60, message=f"seed {seed} settles")
    cluster.invariants()
    print(f"seed {seed}: injected {dict(cluster.api.injected)}")
    assert sum(cluster.api.injected.values()) > 0, "the run injected no fault"
