"""API writes the operator makes per placed pod: the example fleet through the real operator and the
in-process API server (tests/support), counted at the server. A program, not a test.

    .venv/bin/python benchmarks/operator_writes.py [--scale N]

`--scale N` multiplies every example workload's replicas (capacity permitting). The table splits writes by
resource and verb, for the whole run until every workload is ready and the operator has gone quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import kmock

from gpufabric.sandbox.emulator import FabricEmulator
from gpufabric.sandbox.kubelet import SimulatedKubelet
from support.harness import Cluster, eventually


async def measure(scale: int) -> tuple[Counter[str], int, int]:
    async with FabricEmulator() as api, kmock.Server(api):
        kubelet = SimulatedKubelet(api, interval=0.02, ready_after=0.05, terminate_after=0.05)
        kubelet.start()
        cluster = Cluster(api, kubelet)
        workloads = await cluster.load_examples()
        if scale > 1:
            for item in workloads:
                name = item["metadata"]["name"]
                await api.h_patch(
                    "gpufabric.io/v1alpha1/agentworkloads",
                    name,
                    {"spec": {"replicas": item["spec"].get("replicas", 1) * scale}},
                    namespace="agents",
                )
        operator = cluster.start_operator()

        def settled() -> bool:
            return all(
                (cluster.condition("agents", w["metadata"]["name"], "Placed") or {}).get("status") is not None
                and cluster.workload("agents", w["metadata"]["name"]).get("status", {}).get("readyReplicas")
                == len(cluster.workload("agents", w["metadata"]["name"]).get("status", {}).get("placements", []))
                for w in workloads
            )

        await eventually(settled, timeout=120, message="every workload settled")
        quiet_since = len(api.writes())
        await asyncio.sleep(2.0)  # a few more passes: a settled fleet must cost no writes
        extra = len(api.writes()) - quiet_since
        writes = Counter(
            f"{r.method.value} {r.resource.plural if r.resource else r.url.path}"
            + (f"/{r.subresource}" if r.subresource else "")
            for r in api.writes()
        )
        pods = len(cluster.pods())
        await cluster.stop_operator(operator)
        await kubelet.stop()
        return writes, pods, extra


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args(argv)
    writes, pods, extra = asyncio.run(measure(args.scale))
    total = sum(writes.values())
    width = max(len(k) for k in writes)
    print(f"{'write':<{width}}  {'count':>6}  {'per pod':>7}")
    for kind, count in sorted(writes.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<{width}}  {count:>6}  {count / pods:>7.2f}")
    print(f"{'total':<{width}}  {total:>6}  {total / pods:>7.2f}")
    print(
        f"SUMMARY: {pods} pods placed with {total} API writes ({total / pods:.2f} per pod); "
        f"{extra} writes in the 2 s after settling"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
