"""The operator at scale, on the real control plane: N ComputeNodes and N single-replica AgentWorkloads (the
examples cloned: NVIDIA, Ascend and Moore Threads, with the 405B gang among them). A program, not a test.

    .venv/bin/python benchmarks/operator_scale.py [--quick] [--sizes 100,1000,5000] [--unrelated-pods N]
                                                  [--no-scrape] [--profile DIR]

For each size: a fresh control plane (etcd, kube-apiserver, kube-scheduler, kube-controller-manager; the
sandbox's), the stand-in kubelets, the CRDs, then `gpufabric operator` started as users start it (its own
process, a ServiceAccount token in a kubeconfig, default settings), then the workloads created at once.
Measured:
- creation -> every placeable workload `Placed`, and p50/p99 per workload;
- the operator's requests from the API server's audit log, from its start until every pod is Ready (reads,
  writes, status patches, writes per pod and by resource), and its writes during the node loss apart;
- its CPU seconds until every pod is Ready, and its peak RSS (VmHWM) at the end;
- a node failure -> its replica Ready elsewhere, at the default `--node-grace 30`;
- one scrape cycle over as many Ready pods (scrape_cycle.py: the operator's scraper, after the control plane
  is gone, so nothing else competes for the CPU).
Baselines in the same run: the pure placement engine deciding the same workloads on the same fleet (the
ratio is the operator's time to `Placed` over the engine's); a bare HTTP fetch of the same pages (the
scrape's ratio); with `--unrelated-pods N`, the first size again among N pods of someone else's, with the
operator's label selector and without it (the operator as it was before).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import kubernetes
import yaml

from gpufabric.api import AgentWorkload, ComputeNode
from gpufabric.placement import PriorThroughput, Snapshot, WorkloadRequest, pending_replicas, place
from gpufabric.sandbox.cluster import install_crds
from gpufabric.sandbox.controlplane import ControlPlane, find_binaries, free_port
from gpufabric.sandbox.standin_kubelet import StandInKubelet, node_for
from gpufabric.vendors import ACCELERATORS
from scrape_cycle import Cycle
from scrape_cycle import measure as measure_scrape
from scrape_cycle import table as scrape_table
from support.realcluster import pod_is_ready

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
    label: str
    size: int
    placeable: int
    placed: int
    all_placed_s: float
    p50_s: float
    p99_s: float
    engine_s: float
    # the operator's requests from its start until every pod was Ready (node loss not included)
    reads: int
    writes: int
    status_patches: int
    pods: int
    ready_pods: int
    cpu_placing_s: float
    # kube-apiserver + etcd CPU seconds from their start until every pod was Ready
    server_cpu_s: float
    cpu_s: float
    rss_mb: float
    node_loss_s: float | None
    node_loss_writes: int
    # writes by resource ("pods", "agentworkloads/status", "events", ...)
    writes_by_resource: dict[str, int]
    scrape: Cycle | None = None


class PlacedWatch:
    """When each AgentWorkload was first seen `Placed`, from a watch (a list of every workload twice a second
    would load the API server the operator is measured against, and round the times to half seconds)."""

    def __init__(self, custom: Any) -> None:
        self.custom = custom
        self.first: dict[str, float] = {}
        self._watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stopped = threading.Event()

    def __enter__(self) -> PlacedWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._watch.stop()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        list_call = self.custom.list_namespaced_custom_object
        while not self._stopped.is_set():
            try:
                # a fresh list and watch each time: the API server ends watches (timeouts, load)
                for event in self._watch.stream(list_call, "gpufabric.io", "v1alpha1", NAMESPACE, "agentworkloads"):  # type: ignore[no-untyped-call]
                    item = event["object"]
                    for condition in (item.get("status") or {}).get("conditions") or []:
                        if condition["type"] == "Placed" and condition["status"] == "True":
                            self.first.setdefault(item["metadata"]["name"], time.monotonic())
            except Exception:  # a broken watch is started again until stopped
                time.sleep(0.2)


def start_profiler(pid: int, folder: Path | None, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the operator into collapsed stacks (`--profile DIR`), or nothing."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / f"operator-{name}.txt"
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


@dataclass(frozen=True)
class Case:
    size: int
    # bare pods of someone else's in another namespace, and whether the operator asks the API server to
    # filter its pod and Service watches by label (False: the operator as it was before, for the baseline)
    unrelated_pods: int = 0
    selector: bool = True
    # another build of the operator (its package folder, e.g. a checkout of an earlier commit's `operator`)
    # run in the operator's place: the baseline of a before/after in one run
    baseline: Path | None = None

    @property
    def label(self) -> str:
        label = str(self.size) if not self.unrelated_pods else f"{self.size}+{self.unrelated_pods}u"
        return label + ("" if self.selector else " nosel") + (" before" if self.baseline else "")


# The operator as it was before the label selector (benchmark only): the same CLI with SELECTED emptied.
WITHOUT_SELECTOR = (
    "import sys; import gpufabric.controller.handlers as handlers; handlers.SELECTED = (); "
    "from gpufabric.cli import main; sys.exit(main())"
)


@dataclass
class Bench:
    """One fresh control plane with the stand-in kubelets, and admin clients to it."""

    plane: ControlPlane
    kubelet: StandInKubelet
    core: Any
    custom: Any

    def add_fleet(self, nodes: list[dict[str, Any]]) -> None:
        for node in nodes:
            name, allocatable = node_for(ComputeNode.model_validate(node))
            self.kubelet.add_node(name, allocatable)
            self.custom.create_cluster_custom_object("gpufabric.io", "v1alpha1", "computenodes", node)
        self.core.create_namespace({"metadata": {"name": NAMESPACE}})

    def add_unrelated_pods(self, count: int) -> None:
        """Someone else's pods (no managed-by label), Pending on no node: they exist, so they are listed and
        watched by whoever does not filter."""
        if not count:
            return
        self.core.create_namespace({"metadata": {"name": "unrelated"}})
        spec = {"containers": [{"name": "c", "image": "busybox"}]}

        def create(index: int) -> None:
            pod = {"metadata": {"name": f"batch-{index}", "labels": {"app": "batch"}}, "spec": spec}
            self.core.create_namespaced_pod("unrelated", pod)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(count)))

    def start_operator(self, selector: bool, baseline: Path | None = None) -> subprocess.Popen[bytes]:
        kubeconfig = operator_identity(self.plane)
        flags = ["operator", "--kubeconfig", str(kubeconfig), "--metrics-port", str(free_port())]
        command = [str(GPUFABRIC), *flags] if selector else [sys.executable, "-c", WITHOUT_SELECTOR, *flags]
        env = {**os.environ, "POD_NAMESPACE": OPERATOR_NAMESPACE}
        if baseline is not None:
            env["PYTHONPATH"] = str(baseline)  # ahead of the installed package
        log = (self.plane.directory / "operator.log").open("wb")
        try:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()  # the child has its own descriptor

    def create_and_wait(self, bodies: list[dict[str, Any]], wanted: set[str], timeout: float) -> Placing:
        created: dict[str, float] = {}
        with PlacedWatch(self.custom) as placed:
            started = time.monotonic()
            for body in bodies:
                self.custom.create_namespaced_custom_object(
                    "gpufabric.io", "v1alpha1", NAMESPACE, "agentworkloads", body
                )
                created[body["metadata"]["name"]] = time.monotonic()
            while time.monotonic() - started < timeout:
                if wanted <= {f"{NAMESPACE}/{n}" for n in dict(placed.first)}:
                    break
                time.sleep(0.2)
            first_placed = dict(placed.first)
        all_placed = max(first_placed.values(), default=started) - started
        latencies = sorted(first_placed[n] - created[n] for n in first_placed)
        # Settled: every pod Ready (their Ready status patches belong to placing), then a quiet second.
        while time.monotonic() - started < timeout and not self.all_ready():
            time.sleep(2.0)
        time.sleep(1.0)
        return Placing(all_placed, latencies, len(first_placed))

    def all_ready(self) -> bool:
        pods = self.core.list_namespaced_pod(NAMESPACE).items
        return all(pod_is_ready(p) for p in pods)

    def operator_requests(self, loss_started: datetime | None) -> tuple[Counter[tuple[str, bool]], Counter[str], int]:
        """The operator's requests until the node loss: (verb, status?) counts, writes by resource; and its
        writes during the node loss."""
        verbs = Counter[tuple[str, bool]]()
        by_resource = Counter[str]()
        during_loss = 0
        for event in self.plane.audit_events():
            if event["user"]["username"] != USER:
                continue
            ref = event.get("objectRef") or {}
            at = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
            if loss_started is not None and at >= loss_started:
                during_loss += event["verb"] in WRITE_VERBS
                continue
            verbs[(event["verb"], ref.get("subresource") == "status")] += 1
            if event["verb"] in WRITE_VERBS:
                subresource = f"/{ref['subresource']}" if ref.get("subresource") else ""
                by_resource[ref.get("resource", "?") + subresource] += 1
        return verbs, by_resource, during_loss


@dataclass(frozen=True)
class Placing:
    all_placed_s: float
    latencies: list[float]
    placed: int


def measure(case: Case, timeout: float, profile: Path | None = None) -> Row:
    nodes, bodies = fleet(case.size), workloads(case.size)
    wanted, engine_seconds = placeable(nodes, bodies)
    with ControlPlane(find_binaries(), audited_users=(USER,)) as plane:
        admin = kubernetes.config.new_client_from_config(str(plane.admin_kubeconfig))  # type: ignore[no-untyped-call]
        install_crds(admin)
        # Node status every 5 minutes, as kubelets post it once node leases carry the heartbeat ("the
        # default interval for .status updates to Nodes is 5 minutes": kubernetes.io/docs/concepts/
        # architecture/nodes/#heartbeats); the stand-in's 10 s default made 1,000 Nodes 100 writes a
        # second, which delayed its own pod starts by ~28 s and flooded the operator's Node watch.
        # Its pod loop lists every pod: once a second from 1,000 pods, so it does not load the API server.
        kubelet = StandInKubelet(admin, serve_tokens=False, heartbeat=300.0, interval=0.25 if case.size < 1000 else 1.0)
        kubelet.start()
        bench = Bench(plane, kubelet, kubernetes.client.CoreV1Api(admin), kubernetes.client.CustomObjectsApi(admin))
        try:
            bench.add_fleet(nodes)
            bench.add_unrelated_pods(case.unrelated_pods)
            operator = bench.start_operator(case.selector, case.baseline)
            profiler = start_profiler(operator.pid, profile, case.label.replace(" ", "-"))
            try:
                time.sleep(3)  # logged in and leading before the workloads arrive
                placing = bench.create_and_wait(bodies, wanted, timeout)
                pods = bench.core.list_namespaced_pod(NAMESPACE).items
                ready = sum(pod_is_ready(p) for p in pods)
                cpu_placing, _ = process_usage(operator.pid)
                # what the API server and etcd spent meanwhile (the fleet's creation included): on two shared
                # cores their write throughput is what bounds the time to Placed
                components = plane.process_ids()
                server_cpu = sum(process_usage(components[name])[0] for name in ("kube-apiserver", "etcd"))
                loss_started = datetime.now(UTC)
                node_loss = lose_a_node(kubelet, bench.core, pods)
                cpu, rss = process_usage(operator.pid)
            finally:
                stop_profiler(profiler)
                operator.terminate()
                operator.wait(timeout=30)
                if profile is not None:  # the operator's log beside its profile
                    shutil.copy(
                        plane.directory / "operator.log", profile / f"operator-{case.label.replace(' ', '-')}.log"
                    )
            verbs, by_resource, loss_writes = bench.operator_requests(loss_started)
        finally:
            kubelet.stop()
            admin.close()
    writes = sum(n for (verb, _), n in verbs.items() if verb in WRITE_VERBS)
    latencies = placing.latencies
    return Row(
        label=case.label,
        size=case.size,
        placeable=len(wanted),
        placed=placing.placed,
        all_placed_s=placing.all_placed_s,
        p50_s=statistics.median(latencies) if latencies else float("nan"),
        p99_s=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
        engine_s=engine_seconds,
        reads=sum(n for (verb, _), n in verbs.items() if verb not in WRITE_VERBS),
        writes=writes,
        status_patches=sum(n for (verb, status), n in verbs.items() if status and verb == "patch"),
        pods=len(pods),
        ready_pods=ready,
        cpu_placing_s=cpu_placing,
        server_cpu_s=server_cpu,
        cpu_s=cpu,
        rss_mb=rss,
        node_loss_s=node_loss,
        node_loss_writes=loss_writes,
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
            if pod_is_ready(pod) and pod.spec.node_name != node and pod.metadata.deletion_timestamp is None:
                return time.monotonic() - started
        time.sleep(0.5)
    return None


def cases(sizes: list[int], unrelated: int, baseline: Path | None = None) -> list[Case]:
    found = [case for size in sizes for case in ([Case(size, baseline=baseline)] if baseline else []) + [Case(size)]]
    if unrelated:
        # The label selector's effect: the smallest fleet among many unrelated pods, filtered and not.
        found += [Case(sizes[0], unrelated, selector=True), Case(sizes[0], unrelated, selector=False)]
    return found


def report(rows: list[Row]) -> None:
    print(
        f"{'case':>14} {'placed':>11} {'all placed s':>12} {'p50 s':>6} {'p99 s':>6} {'engine s':>8} {'ratio':>7} "
        f"{'reads':>6} {'writes':>6} {'status':>6} {'writes/pod':>10} {'cpu s':>6} {'api cpu s':>9} {'rss MB':>7} "
        f"{'node loss s':>11} {'loss writes':>11}"
    )
    for r in rows:
        loss = f"{r.node_loss_s:.1f}" if r.node_loss_s is not None else "-"
        print(
            f"{r.label:>14} {r.placed:>5}/{r.placeable:<5} {r.all_placed_s:>12.1f} {r.p50_s:>6.2f} {r.p99_s:>6.2f} "
            f"{r.engine_s:>8.3f} {r.all_placed_s / max(r.engine_s, 1e-9):>6.0f}x {r.reads:>6} {r.writes:>6} "
            f"{r.status_patches:>6} {r.writes / max(r.pods, 1):>10.2f} {r.cpu_placing_s:>6.1f} {r.server_cpu_s:>9.1f} "
            f"{r.rss_mb:>7.0f} "
            f"{loss:>11} {r.node_loss_writes:>11}"
        )
    print("\nwrites per placed pod until every pod was Ready, by resource")
    resources = sorted({resource for r in rows for resource in r.writes_by_resource})
    print(f"{'case':>14} " + " ".join(f"{resource:>21}" for resource in resources))
    for r in rows:
        shares = (r.writes_by_resource.get(resource, 0) / max(r.pods, 1) for resource in resources)
        print(f"{r.label:>14} " + " ".join(f"{share:>21.2f}" for share in shares))
    scraped = [r.scrape for r in rows if r.scrape is not None]
    if scraped:
        print("\nscrape cycle over the Ready pods (benchmarks/scrape_cycle.py: the operator's scraper, 44 KiB pages)")
        print(scrape_table(scraped))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 nodes and 100 workloads only")
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--unrelated-pods", type=int, default=0, help="also run the first size among N unrelated pods")
    parser.add_argument("--no-scrape", action="store_true", help="skip the scrape cycle measurement")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every placement")
    parser.add_argument("--profile", type=Path, help="write py-spy collapsed stacks of the operator into DIR")
    parser.add_argument(
        "--baseline-operator",
        type=Path,
        metavar="DIR",
        help="also run each size with the operator package in DIR (e.g. an earlier commit's operator/): before/after",
    )
    args = parser.parse_args()
    sizes = [100] if args.quick else [int(s) for s in args.sizes.split(",")]
    rows = []
    for case in cases(sizes, 0 if args.quick else args.unrelated_pods, args.baseline_operator):
        row = measure(case, args.timeout, args.profile)
        if not args.no_scrape and case.unrelated_pods == 0 and case.baseline is None and row.ready_pods:
            row.scrape = measure_scrape(row.ready_pods)
        rows.append(row)
    report(rows)
    last = next(r for r in reversed(rows) if r.label == str(r.size))
    summary = {
        "size": last.size,
        "all_placed_s": round(last.all_placed_s, 1),
        "p99_s": round(last.p99_s, 2),
        "writes_per_pod": round(last.writes / max(last.pods, 1), 2),
        "rss_mb": round(last.rss_mb),
        "node_loss_s": round(last.node_loss_s, 1) if last.node_loss_s is not None else None,
        "scrape_core_share": round(last.scrape.core_share, 3) if last.scrape else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
