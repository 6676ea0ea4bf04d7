"""The operator at scale, on the real control plane: N ComputeNodes and N single-replica AgentWorkloads (the
examples cloned: NVIDIA, Ascend and Moore Threads, with the 405B gang among them). A program, not a test.

    .venv/bin/python benchmarks/operator_scale.py [--quick] [--sizes 100,1000,5000]

For each size: a fresh control plane (etcd, kube-apiserver, kube-scheduler, kube-controller-manager; the
sandbox's), the stand-in kubelets, the CRDs, then `gpufabric operator` started as users start it (its own
process, a ServiceAccount token in a kubeconfig, default settings), then the workloads created at once.
Measured: creation -> every placeable workload `Placed` (and p50/p99 per workload), the operator's API
requests from the API server's audit log over the whole run, node loss included (reads, writes, status
patches; writes per pod placed before the loss), its CPU seconds and peak RSS (/proc) at the end, and a node
failure -> its replica Ready elsewhere at the default `--node-grace 30`.
Baseline in the same run: the pure placement engine deciding the same workloads on the same fleet; the ratio
is the operator's time to `Placed` over the engine's. Not measured yet: the scrape cycle (the stand-in
kubelets' token servers are one thread per port, too many at 5,000 pods).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from gpufabric.api import AgentWorkload, ComputeNode
from gpufabric.placement import PriorThroughput, Snapshot, WorkloadRequest, pending_replicas, place
from gpufabric.sandbox.cluster import install_crds
from gpufabric.sandbox.controlplane import ControlPlane, find_binaries, free_port
from gpufabric.sandbox.standin_kubelet import StandInKubelet, node_for
from gpufabric.vendors import ACCELERATORS

ROOT = Path(__file__).resolve().parents[1]
GPUFABRIC = Path(sys.executable).with_name("gpufabric")
NAMESPACE = "agents"
OPERATOR_NAMESPACE = "gpufabric-system"
ACCOUNT = "bench-operator"
USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{ACCOUNT}"
COPIES_PER_DOMAIN = 16
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def examples(folder: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted((ROOT / "examples" / folder).glob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d and d.get("kind")]
    return found


def fleet(size: int) -> list[dict[str, Any]]:
    """`size` ComputeNodes: copies of the example fleet, 16 copies to a RoCE domain."""
    templates = [d for d in examples("fleet") if d["kind"] == "ComputeNode"]
    nodes = []
    for index in range(size):
        template = templates[index % len(templates)]
        copy_number = index // len(templates)
        node = copy.deepcopy(template)
        name = f"{template['metadata']['name']}-c{copy_number}"
        node["metadata"] = {"name": name}
        node["spec"]["nodeName"] = name
        if fabric := node["spec"].get("fabric"):
            fabric["roceDomain"] = f"{fabric['roceDomain']}{copy_number // COPIES_PER_DOMAIN}"
        nodes.append(node)
    return nodes


def workloads(size: int) -> list[dict[str, Any]]:
    """`size` one-replica AgentWorkloads cloned from the examples, without throughput targets (no autoscaler)."""
    templates = [d for d in examples("workloads") if d["kind"] == "AgentWorkload"]
    found = []
    for index in range(size):
        template = templates[index % len(templates)]
        workload = copy.deepcopy(template)
        workload["metadata"] = {"name": f"{template['metadata']['name']}-{index}", "namespace": NAMESPACE}
        workload["spec"]["replicas"] = 1
        workload["spec"].pop("throughput", None)
        found.append(workload)
    return found


def placeable(nodes: list[dict[str, Any]], bodies: list[dict[str, Any]]) -> tuple[set[str], float]:
    """The workloads the placement engine places on the empty fleet, and its seconds for deciding all."""
    fleet_models = [ComputeNode.model_validate(n) for n in nodes]
    models = [AgentWorkload.model_validate(b) for b in bodies]
    queue = pending_replicas([WorkloadRequest.of(w) for w in models])
    started = time.perf_counter()
    result = place(Snapshot([(n, True) for n in fleet_models]), queue, PriorThroughput(dict(ACCELERATORS)))
    seconds = time.perf_counter() - started
    return {d.workload for d in result.decisions}, seconds


def operator_identity(plane: ControlPlane) -> Path:
    """A ServiceAccount bound to cluster-admin (the chart's exact rules are the e2e suite's business; here its
    requests are what is counted), and a kubeconfig with its token."""
    plane.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    plane.kubectl("create", "serviceaccount", ACCOUNT, "-n", OPERATOR_NAMESPACE)
    plane.kubectl(
        "create",
        "clusterrolebinding",
        ACCOUNT,
        "--clusterrole=cluster-admin",
        f"--serviceaccount={OPERATOR_NAMESPACE}:{ACCOUNT}",
    )
    token = plane.kubectl("create", "token", ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=2h").strip()
    return plane.kubeconfig_for_token(token, name="bench-operator")


def process_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(peak.split()[1]) / 1024


@dataclass
class Row:
    size: int
    placeable: int
    placed: int
    all_placed_s: float
    p50_s: float
    p99_s: float
    engine_s: float
    reads: int
    writes: int
    status_patches: int
    pods: int
    cpu_s: float
    rss_mb: float
    node_loss_s: float | None
    # writes by resource ("pods", "agentworkloads/status", "events", ...)
    writes_by_resource: dict[str, int]


def placed_times(custom: Any) -> dict[str, float]:
    items = custom.list_namespaced_custom_object("gpufabric.io", "v1alpha1", NAMESPACE, "agentworkloads")["items"]
    found = {}
    for item in items:
        for condition in (item.get("status") or {}).get("conditions") or []:
            if condition["type"] == "Placed" and condition["status"] == "True":
                found[item["metadata"]["name"]] = time.monotonic()
    return found


def start_profiler(pid: int, folder: Path | None, size: int) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the operator into collapsed stacks (`--profile DIR`), or nothing."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / f"operator-{size}.txt"
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [
        str(py_spy),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "50",
        "--gil",
        "--output",
        str(output),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        profiler.wait(timeout=60)


def measure(size: int, timeout: float, profile: Path | None = None) -> Row:
    nodes, bodies = fleet(size), workloads(size)
    wanted, engine_seconds = placeable(nodes, bodies)
    with ControlPlane(find_binaries(), audited_users=(USER,)) as plane:
        admin = kubernetes.config.new_client_from_config(str(plane.admin_kubeconfig))  # type: ignore[no-untyped-call]
        install_crds(admin)
        kubelet = StandInKubelet(admin, serve_tokens=False)
        kubelet.start()
        core: Any = kubernetes.client.CoreV1Api(admin)
        custom: Any = kubernetes.client.CustomObjectsApi(admin)
        try:
            for node in nodes:
                name, allocatable = node_for(ComputeNode.model_validate(node))
                kubelet.add_node(name, allocatable)
                custom.create_cluster_custom_object("gpufabric.io", "v1alpha1", "computenodes", node)
            core.create_namespace({"metadata": {"name": NAMESPACE}})
            kubeconfig = operator_identity(plane)
            log = open(plane.directory / "operator.log", "w")  # noqa: SIM115 - closed below
            operator = subprocess.Popen(
                [str(GPUFABRIC), "operator", "--kubeconfig", str(kubeconfig), "--metrics-port", str(free_port())],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "POD_NAMESPACE": OPERATOR_NAMESPACE},
            )
            profiler = start_profiler(operator.pid, profile, size)
            try:
                time.sleep(3)  # logged in and leading before the workloads arrive
                created: dict[str, float] = {}
                started = time.monotonic()
                for body in bodies:
                    custom.create_namespaced_custom_object(
                        "gpufabric.io", "v1alpha1", NAMESPACE, "agentworkloads", body
                    )
                    created[body["metadata"]["name"]] = time.monotonic()
                first_placed: dict[str, float] = {}
                while time.monotonic() - started < timeout:
                    for name, at in placed_times(custom).items():
                        first_placed.setdefault(name, at)
                    if wanted <= {f"{NAMESPACE}/{n}" for n in first_placed}:
                        break
                    time.sleep(0.5)
                all_placed = max(first_placed.values(), default=started) - started
                latencies = sorted(first_placed[n] - created[n] for n in first_placed)
                pods = core.list_namespaced_pod(NAMESPACE).items
                node_loss = lose_a_node(kubelet, core, pods)
                cpu, rss = process_usage(operator.pid)
            finally:
                stop_profiler(profiler)
                operator.terminate()
                operator.wait(timeout=30)
                log.close()
            verbs = Counter[tuple[str, bool]]()
            by_resource = Counter[str]()
            for event in plane.audit_events():
                if event["user"]["username"] == USER:
                    ref = event.get("objectRef") or {}
                    verbs[(event["verb"], ref.get("subresource") == "status")] += 1
                    if event["verb"] in WRITE_VERBS:
                        resource = ref.get("resource", "?") + (
                            f"/{ref['subresource']}" if ref.get("subresource") else ""
                        )
                        by_resource[resource] += 1
        finally:
            kubelet.stop()
            admin.close()
    writes = sum(n for (verb, _), n in verbs.items() if verb in WRITE_VERBS)
    return Row(
        size=size,
        placeable=len(wanted),
        placed=len(first_placed),
        all_placed_s=all_placed,
        p50_s=statistics.median(latencies) if latencies else float("nan"),
        p99_s=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
        engine_s=engine_seconds,
        reads=sum(n for (verb, _), n in verbs.items() if verb not in WRITE_VERBS),
        writes=writes,
        status_patches=sum(n for (verb, status), n in verbs.items() if status and verb == "patch"),
        pods=len(pods),
        cpu_s=cpu,
        rss_mb=rss,
        node_loss_s=node_loss,
        writes_by_resource=dict(by_resource),
    )


def lose_a_node(kubelet: StandInKubelet, core: Any, pods: list[Any], timeout: float = 120) -> float | None:
    """A node holding a single-node replica fails: seconds until that replica is Ready on another node."""
    victim = next((p for p in pods if "frontier" not in p.metadata.name and p.spec.node_name), None)
    if victim is None:
        return None
    node, workload = victim.spec.node_name, victim.metadata.labels["gpufabric.io/workload"]
    started = time.monotonic()
    kubelet.fail(node)
    while time.monotonic() - started < timeout:
        for pod in core.list_namespaced_pod(NAMESPACE, label_selector=f"gpufabric.io/workload={workload}").items:
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            if ready and pod.spec.node_name != node and pod.metadata.deletion_timestamp is None:
                return time.monotonic() - started
        time.sleep(0.5)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 nodes and 100 workloads only")
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every placement")
    parser.add_argument("--profile", type=Path, help="write py-spy collapsed stacks of the operator into DIR")
    args = parser.parse_args()
    sizes = [100] if args.quick else [int(s) for s in args.sizes.split(",")]
    rows = [measure(size, args.timeout, args.profile) for size in sizes]
    header = (
        f"{'size':>6} {'placed':>11} {'all placed s':>12} {'p50 s':>6} {'p99 s':>6} {'engine s':>8} {'ratio':>7} "
        f"{'reads':>6} {'writes':>6} {'status':>6} {'writes/pod':>10} {'cpu s':>6} {'rss MB':>7} {'node loss s':>11}"
    )
    print(header)
    for r in rows:
        loss = f"{r.node_loss_s:.1f}" if r.node_loss_s is not None else "-"
        print(
            f"{r.size:>6} {r.placed:>5}/{r.placeable:<5} {r.all_placed_s:>12.1f} {r.p50_s:>6.2f} {r.p99_s:>6.2f} "
            f"{r.engine_s:>8.3f} {r.all_placed_s / max(r.engine_s, 1e-9):>6.0f}x {r.reads:>6} {r.writes:>6} "
            f"{r.status_patches:>6} {r.writes / max(r.pods, 1):>10.2f} {r.cpu_s:>6.1f} {r.rss_mb:>7.0f} {loss:>11}"
        )
    print("\nwrites per placed pod, by resource")
    resources = sorted({resource for r in rows for resource in r.writes_by_resource})
    print(f"{'size':>6} " + " ".join(f"{resource:>22}" for resource in resources))
    for r in rows:
        shares = (r.writes_by_resource.get(resource, 0) / max(r.pods, 1) for resource in resources)
        print(f"{r.size:>6} " + " ".join(f"{share:>22.2f}" for share in shares))
    last = rows[-1]
    print(
        json.dumps(
            {
                "size": last.size,
                "all_placed_s": round(last.all_placed_s, 1),
                "writes_per_pod": round(last.writes / max(last.pods, 1), 2),
                "rss_mb": round(last.rss_mb),
            },
        )
    )


if __name__ == "__main__":
    main()
