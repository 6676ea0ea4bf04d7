"""Placement engine benchmark: speed, latency, memory and decision quality, with first fit (full scan, no
index) measured in the same run as the baseline. A program, not a test; run it with `make bench`.

    .venv/bin/python benchmarks/placement.py [--quick] [--sizes 100,1000,5000,10000] [--seed N]

Speed: for each fleet size and queue kind, one placement pass over the whole queue (decisions/s; the
snapshot is built before the clock starts and its time is its own column), and single-replica passes on
the same fleet for per-decision latency (p50/p99, including each pass's set-up: the first pass of a
workload with a nodeSelector builds that selector's index, which is what p99 shows).
First fit runs on a prefix of the same queue on an identical fresh fleet; the speed-up is the ratio of
the two rates over that prefix, and "value" compares what both placed on it.
Quality: on small random instances the exact optimum (HiGHS) bounds what any placer could reach.
The last line printed is a one-line summary.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gpufabric.api import AgentWorkload, ComputeNode
from gpufabric.placement import ExistingReplica, PlacementResult, Snapshot, place
from gpufabric.placement.requests import ReplicaRequest
from support.firstfit import first_fit
from support.fleet import PRIOR, random_fleet, random_workloads, requests, snapshot, workload
from support.optimum import optimum

ALL_VENDORS = ("nvidia", "ascend", "mthreads")
TARGET_SINGLE_PER_S = 5000
TARGET_GANG_PER_S = 500
TARGET_QUALITY = 0.98
TARGET_SIZE = 5000


def single_device_queue(rng: random.Random, replicas: int) -> list[AgentWorkload]:
    per_workload = 50
    pool_p1: dict[str, Any] = {"nodeSelector": {"matchLabels": {"pool": "p1"}}}
    return [
        workload(
            f"small-{i:03d}",
            params=rng.choice((1.5, 3, 7.6)),
            replicas=per_workload,
            runtimes=rng.choice((ALL_VENDORS, ("nvidia",), ("ascend", "mthreads"))),
            precisions=rng.choice((("FP8", "INT8", "BF16"), ("BF16",))),
            devicesPerReplica=1,
            **(pool_p1 if i % 5 == 0 else {}),
        )
        for i in range(max(1, replicas // per_workload))
    ]


def multi_device_queue(rng: random.Random, replicas: int) -> list[AgentWorkload]:
    per_workload = 25
    return [
        workload(
            f"mid-{i:03d}",
            params=rng.choice((32, 70.6)),
            replicas=per_workload,
            runtimes=ALL_VENDORS,
            precisions=rng.choice((("FP8", "BF16"), ("BF16",))),
            context=rng.choice((8192, 32768)),
        )
        for i in range(max(1, replicas // per_workload))
    ]


def gang_queue(rng: random.Random, replicas: int) -> list[AgentWorkload]:
    per_workload = 10
    return [
        workload(
            f"gang-{i:03d}",
            params=rng.choice((405, 236)),
            replicas=per_workload,
            runtimes=("nvidia", "ascend"),
            precisions=("FP8", "INT8", "BF16"),
            nodesPerReplica=2,
            devicesPerReplica=rng.choice((8, 16)),
        )
        for i in range(max(1, replicas // per_workload))
    ]


QUEUES: dict[str, Callable[[random.Random, int], list[AgentWorkload]]] = {
    "single-device": single_device_queue,
    "multi-device": multi_device_queue,
    "2-node gang": gang_queue,
}


@dataclass
class Row:
    nodes: int
    queue: str
    replicas: int
    placed: int
    snapshot_ms: float
    engine_rate: float
    p50_ms: float
    p99_ms: float
    peak_mib: float
    baseline_rate: float
    speedup: float
    value_ratio: float


def busy(rng: random.Random, fleet: list[ComputeNode], occupancy: float) -> list[ExistingReplica]:
    """Replicas already running on about `occupancy` of the devices, scattered as a live cluster's are."""
    running = []
    for index, item in enumerate(fleet):
        used = sum(rng.random() < occupancy for _ in range(item.spec.devices))
        if used:
            running.append(ExistingReplica("tenants/running", index, (item.name,), used))
    return running


def fresh(fleet: list[ComputeNode], running: list[ExistingReplica]) -> Snapshot:
    return Snapshot([(n, True) for n in fleet], running)


def timed(
    placer: Callable[..., PlacementResult],
    fleet: list[ComputeNode],
    running: list[ExistingReplica],
    queue: list[ReplicaRequest],
) -> tuple[PlacementResult, float]:
    """One pass of `placer` over `queue` on a fresh snapshot of the busy fleet; the snapshot is built before
    the clock starts (its cost is reported on its own)."""
    state = fresh(fleet, running)
    start = time.perf_counter()
    result = placer(state, queue, PRIOR)
    return result, time.perf_counter() - start


def latencies(
    fleet: list[ComputeNode], running: list[ExistingReplica], queue: list[ReplicaRequest], samples: int
) -> list[float]:
    """Seconds per single-replica pass, on one snapshot that fills as the passes go."""
    state = fresh(fleet, running)
    found = []
    for request in queue[:samples]:
        start = time.perf_counter()
        place(state, [request], PRIOR)
        found.append(time.perf_counter() - start)
    return found


def peak_memory_mib(fleet: list[ComputeNode], running: list[ExistingReplica], queue: list[ReplicaRequest]) -> float:
    """Peak Python allocation while building the snapshot and placing the queue."""
    tracemalloc.start()
    state = fresh(fleet, running)
    place(state, queue, PRIOR)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def measure(size: int, kind: str, *, replicas: int, prefix: int, samples: int, seed: int, occupancy: float) -> Row:
    rng = random.Random(seed + size)
    fleet = random_fleet(rng, size, max(2, size // 250))
    running = busy(rng, fleet, occupancy)
    queue = requests(QUEUES[kind](rng, replicas))
    start = time.perf_counter()
    fresh(fleet, running)
    build_ms = 1000 * (time.perf_counter() - start)
    result, seconds = timed(place, fleet, running, queue)
    decisions = len(queue)
    head = queue[:prefix]
    engine_head, engine_seconds = timed(place, fleet, running, head)
    baseline_head, baseline_seconds = timed(first_fit, fleet, running, head)
    per_decision = sorted(latencies(fleet, running, queue, samples))
    return Row(
        nodes=size,
        queue=kind,
        replicas=decisions,
        placed=len(result.decisions),
        snapshot_ms=build_ms,
        engine_rate=decisions / seconds,
        p50_ms=1000 * statistics.median(per_decision),
        p99_ms=1000 * per_decision[min(len(per_decision) - 1, int(0.99 * len(per_decision)))],
        peak_mib=peak_memory_mib(fleet, running, queue),
        baseline_rate=len(head) / baseline_seconds,
        speedup=baseline_seconds / engine_seconds,
        value_ratio=engine_head.value / baseline_head.value if baseline_head.value else float("nan"),
    )


@dataclass
class Quality:
    instances: int
    engine: float
    engine_min: float
    ordered_reference: float
    first_fit: float
    wins: int
    proven: int


def quality(instances: int, seed: int, nodes: tuple[int, int], workloads: tuple[int, int]) -> Quality:
    engine, ordered, baseline = [], [], []
    wins = proven = 0
    for index in range(instances):
        rng = random.Random(seed * 100_003 + index)
        fleet = random_fleet(rng, rng.randint(*nodes), rng.randint(1, 3))
        queue = requests(random_workloads(rng, rng.randint(*workloads)))
        value = place(snapshot(fleet), queue, PRIOR).value
        base = first_fit(snapshot(fleet), queue, PRIOR).value
        best = optimum(snapshot(fleet), queue, PRIOR, respect_order=False, time_limit=10)
        in_order = optimum(snapshot(fleet), queue, PRIOR, respect_order=True, time_limit=10)
        proven += best.proven and in_order.proven
        engine.append(value / best.value if best.value else 1.0)
        ordered.append(value / in_order.value if in_order.value else 1.0)
        baseline.append(base / best.value if best.value else 1.0)
        wins += value >= base - 1e-6
    return Quality(
        instances,
        statistics.mean(engine),
        min(engine),
        statistics.mean(ordered),
        statistics.mean(baseline),
        wins,
        proven,
    )


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller queues and fewer instances (< 1 minute)")
    parser.add_argument("--sizes", default="100,1000,5000,10000", help="fleet sizes (ComputeNodes)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--occupancy",
        type=float,
        default=0.7,
        help="share of devices already running other replicas before the queue (default 0.7)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    quick = args.quick
    started = time.perf_counter()

    rows: list[Row] = []
    for size in sizes:
        for kind in QUEUES:
            replicas = {"single-device": 2000, "multi-device": 1000, "2-node gang": 400}[kind]
            if quick:
                replicas //= 4
            replicas = min(replicas, {"single-device": 6 * size, "multi-device": size, "2-node gang": size // 4}[kind])
            prefix = min(replicas, 100 if quick else 300)
            rows.append(
                measure(
                    size,
                    kind,
                    replicas=replicas,
                    prefix=prefix,
                    samples=50 if quick else 200,
                    seed=args.seed,
                    occupancy=args.occupancy,
                )
            )

    print(
        f"Placement engine vs first fit on fleets {100 * args.occupancy:.0f}% busy (one core; rates are this run's, "
        "speed-up and value are same-run ratios)"
    )
    print_table(
        [
            "nodes",
            "queue",
            "replicas",
            "placed",
            "snapshot ms",
            "decisions/s",
            "p50 ms",
            "p99 ms",
            "peak MiB",
            "first-fit/s",
            "speed-up",
            "value/FF",
        ],
        [
            [
                f"{r.nodes:,}",
                r.queue,
                f"{r.replicas:,}",
                f"{r.placed:,}",
                f"{r.snapshot_ms:.0f}",
                f"{r.engine_rate:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.peak_mib:.1f}",
                f"{r.baseline_rate:,.0f}",
                f"{r.speedup:.1f}x",
                "n/a" if math.isnan(r.value_ratio) else f"{r.value_ratio:.2f}x",
            ]
            for r in rows
        ],
    )
    print()
    small = quality(40 if quick else 200, args.seed, (4, 10), (2, 6))
    medium = quality(5 if quick else 20, args.seed + 1, (20, 40), (6, 12))
    print("Decision quality: fleet value (tokens/s weighed by preference) as a share of the exact optimum (HiGHS)")
    print_table(
        ["instances", "nodes", "engine", "engine min", "vs order-respecting", "first fit", "engine>=FF", "proven"],
        [
            [
                str(q.instances),
                span,
                f"{100 * q.engine:.1f}%",
                f"{100 * q.engine_min:.1f}%",
                f"{100 * q.ordered_reference:.1f}%",
                f"{100 * q.first_fit:.1f}%",
                f"{q.wins}/{q.instances}",
                f"{q.proven}/{q.instances}",
            ]
            for q, span in ((small, "4-10"), (medium, "20-40"))
        ],
    )

    at_target = {r.queue: r for r in rows if r.nodes == TARGET_SIZE}
    verdict: list[str] = []
    if at_target:
        single, gang = at_target["single-device"], at_target["2-node gang"]
        verdict.append(
            f"{TARGET_SIZE:,} nodes: single-device {single.engine_rate:,.0f}/s "
            f"({'met' if single.engine_rate >= TARGET_SINGLE_PER_S else 'MISSED'} >= {TARGET_SINGLE_PER_S:,}), "
            f"gang {gang.engine_rate:,.0f}/s "
            f"({'met' if gang.engine_rate >= TARGET_GANG_PER_S else 'MISSED'} >= {TARGET_GANG_PER_S})"
        )
    overall = statistics.mean([small.engine, medium.engine])
    verdict.append(
        f"quality {100 * overall:.1f}% of optimum ({'met' if overall >= TARGET_QUALITY else 'MISSED'} "
        f">= {100 * TARGET_QUALITY:.0f}%), first fit {100 * statistics.mean([small.first_fit, medium.first_fit]):.1f}%"
    )
    print()
    print(f"SUMMARY ({time.perf_counter() - started:.0f}s): " + "; ".join(verdict))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
