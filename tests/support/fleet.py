"""Builders for ComputeNodes and AgentWorkloads in tests and benchmarks: short calls, valid objects.

node("h1", "H100-SXM5-80GB", domain="a")
workload("chat", params=8, replicas=2, runtimes=("nvidia",), precisions=("FP8", "BF16"))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpufabric.api import AgentWorkload, ComputeNode
from gpufabric.placement import PriorThroughput, Snapshot, WorkloadRequest, pending_replicas
from gpufabric.placement.requests import ReplicaRequest
from gpufabric.vendors import ACCELERATORS

PRIOR = PriorThroughput(dict(ACCELERATORS))


def node(
    name: str,
    accelerator: str = "H100-SXM5-80GB",
    *,
    devices: int = 8,
    domain: str | None = "a",
    nics: int = 1,
    labels: dict[str, str] | None = None,
    cordoned: bool = False,
    **spec: Any,
) -> ComputeNode:
    body: dict[str, Any] = {
        "nodeName": name,
        "vendor": ACCELERATORS[accelerator].vendor.value if accelerator in ACCELERATORS else spec.pop("vendor"),
        "accelerator": accelerator,
        "devices": devices,
        "unschedulable": cordoned,
        "labels": labels or {},
        **spec,
    }
    if domain is not None:
        body["fabric"] = {"roceDomain": domain}
    body["nics"] = [{"interface": f"eth{i}", "rdmaDevice": f"mlx5_{i}"} for i in range(nics)]
    return ComputeNode.model_validate({"metadata": {"name": name}, "spec": body})


def workload(
    name: str,
    *,
    params: float = 8,
    replicas: int = 1,
    runtimes: Sequence[str] = ("nvidia", "ascend", "mthreads"),
    precisions: Sequence[str] = ("BF16",),
    namespace: str = "default",
    context: int = 8192,
    **spec: Any,
) -> AgentWorkload:
    placement = {k: spec.pop(k) for k in ("nodeSelector", "roceDomains", "spread") if k in spec}
    body: dict[str, Any] = {
        "model": {"name": name, "parametersBillions": params, "contextLength": context},
        "replicas": replicas,
        "precisions": list(precisions),
        "runtimes": {vendor: {"image": f"{vendor}-server"} for vendor in runtimes},
        **spec,
    }
    if placement:
        body["placement"] = placement
    return AgentWorkload.model_validate({"metadata": {"name": name, "namespace": namespace}, "spec": body})


def snapshot(nodes: Sequence[ComputeNode], not_ready: Sequence[str] = ()) -> Snapshot:
    return Snapshot([(n, n.name not in not_ready) for n in nodes])


def requests(workloads: Sequence[AgentWorkload]) -> list[ReplicaRequest]:
    return pending_replicas([WorkloadRequest.of(w) for w in workloads])


# --- random instances (property tests, quality tests, benchmarks) ------------------------------

PALETTE = ("H100-SXM5-80GB", "H20", "B200", "A100-80GB", "L40S", "MTT-S4000", "Ascend-910B3", "Ascend-910B4")
MODEL_SIZES = (1.5, 7.6, 14, 32, 70, 120)
PRECISION_ORDERS = (("FP8", "INT8", "BF16"), ("BF16",), ("FP8",), ("INT8", "BF16"), ("FP4", "FP8", "BF16"))
VENDOR_SETS = (("nvidia",), ("ascend",), ("mthreads",), ("nvidia", "ascend"), ("nvidia", "ascend", "mthreads"))


def random_fleet(rng: Any, nodes: int, domains: int, palette: Sequence[str] = PALETTE) -> list[ComputeNode]:
    """`nodes` ComputeNodes spread over `domains` RoCE domains; each domain holds a few accelerator models."""
    fleet = []
    for i in range(nodes):
        domain = f"d{i % domains}"
        accelerator = palette[(i // domains + rng.randrange(2)) % len(palette)]
        fleet.append(
            node(
                f"n{i:05d}",
                accelerator,
                devices=rng.choice((8, 8, 8, 4)),
                domain=domain,
                nics=rng.choice((0, 1, 2, 2)),
                labels={"pool": rng.choice(("p0", "p1", "p2"))},
            )
        )
    return fleet


def random_workloads(rng: Any, count: int, *, gangs: bool = True, max_replicas: int = 4) -> list[AgentWorkload]:
    found = []
    for i in range(count):
        extra: dict[str, Any] = {}
        runtimes = rng.choice(VENDOR_SETS)
        if len(runtimes) > 1 and rng.random() < 0.5:
            extra["vendorPreference"] = list(rng.sample(runtimes, len(runtimes)))
        if gangs and rng.random() < 0.2:
            extra["nodesPerReplica"] = 2
        if rng.random() < 0.15:
            extra["nodeSelector"] = {"matchLabels": {"pool": rng.choice(("p0", "p1", "p2"))}}
        if rng.random() < 0.3:
            extra["spread"] = rng.choice(("Node", "RoceDomain", "None"))
        found.append(
            workload(
                f"w{i:04d}",
                params=rng.choice(MODEL_SIZES),
                replicas=rng.randint(1, max_replicas),
                runtimes=runtimes,
                precisions=rng.choice(PRECISION_ORDERS),
                context=rng.choice((4096, 8192, 32768)),
                **extra,
            )
        )
    return found
