"""One reconcile pass (the pure core: `reconcile(state)`) over a settled fleet of N ComputeNodes and N
one-replica AgentWorkloads, as operator_scale.py builds them. A program, not a test.

    .venv/bin/python benchmarks/reconcile_pass.py [--sizes 100,1000,5000]

The fleet is settled first (passes until one changes nothing, with every pod Running and Ready), then timed:
the pass that finds nothing to do (what the operator runs on every watch event of a quiet fleet), and the
pass after one more workload arrives. Baseline in the same run: the placement engine alone (its snapshot of
the fleet built, then the decision) for that one workload, so a pass's overhead beyond placement is a
ratio; and each size's quiet pass per workload over the first size's says whether the pass grows linearly
(1.0) or worse.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpufabric.api import AgentWorkload, ComputeNode
from gpufabric.placement import WorkloadRequest, pending_replicas, place
from gpufabric.reconcile import ApplyConfigMap, Settings, reconcile
from gpufabric.reconcile.ledger import fleet_snapshot, replicas_of
from operator_scale import fleet, workloads
from support.fakecluster import FakeCluster


def settled(size: int) -> tuple[FakeCluster, AgentWorkload]:
    cluster = FakeCluster()
    for body in fleet(size):
        cluster.add_compute_node(ComputeNode.model_validate(body))
    bodies = workloads(size + 1)
    for body in bodies[:-1]:
        cluster.add_workload(AgentWorkload.model_validate(body))
    cluster.settle(passes=10)
    return cluster, AgentWorkload.model_validate(bodies[-1])


def timed(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(size: int, repeat: int) -> tuple[int, float, float, float, int]:
    cluster, extra = settled(size)
    settings = Settings()
    state = cluster.state()
    quiet = timed(lambda: reconcile(state, settings), repeat)
    # ConfigMaps are asked for every pass (the controller sends each content once): nothing else may be
    left = [a for a in reconcile(state, settings).actions if not isinstance(a, ApplyConfigMap)]
    assert not left, f"the fleet did not settle: {left[:3]}"
    cluster.add_workload(extra)
    state = cluster.state()
    one_more = timed(lambda: reconcile(state, settings), repeat)
    ledger = replicas_of(state.pods)
    queue = pending_replicas([WorkloadRequest.of(extra)])
    # the snapshot is built each time, as the pass builds it (placing changes it)
    engine = timed(
        lambda: place(fleet_snapshot(state.compute_nodes.values(), state.nodes, ledger), queue, settings.source),
        repeat,
    )
    return size, quiet, one_more, engine, len(cluster.pods)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = [measure(int(size), args.repeat) for size in args.sizes.split(",")]
    first_size, first_quiet = rows[0][0], rows[0][1]
    print(
        f"{'size':>6} {'pods':>6} {'quiet pass s':>12} {'+1 workload s':>13} {'engine alone s':>14} "
        f"{'pass/engine':>11} {'per workload vs first':>21}"
    )
    for size, quiet, one_more, engine, pods in rows:
        growth = (quiet / size) / (first_quiet / first_size)
        print(
            f"{size:>6} {pods:>6} {quiet:>12.3f} {one_more:>13.3f} {engine:>14.4f} "
            f"{one_more / max(engine, 1e-9):>10.0f}x {growth:>20.2f}x"
        )


if __name__ == "__main__":
    main()
