"""The operator at scale, on the real control plane: N ComputeNodes and N single-replica AgentWorkloads (the
examples cloned: NVIDIA, Ascend and Moore Threads, with the 405B gang among them). A program, not a test.

    .venv/bin/python benchmarks/operator_scale.py [--quick] [--sizes 100,1000,5000] [--unrelated-pods N]
                                                  [--baseline-operator DIR] [--no-scrape] [--profile DIR] [--logs DIR]

For each size: a fresh control plane (etcd, kube-apiserver, kube-scheduler, kube-controller-manager; the
sandbox's), the stand-in kubelets, the CRDs, then `gpufabric operator` started as users start it (its own
process, a ServiceAccount token in a kubeconfig, default settings), then the workloads created at once.
Measured:
- creation -> every placeable workload `Placed`, and p50/p99 per workload;
- every pod Ready, or refused by kube-scheduler for 10 s (its reason printed): "settled";
- the operator's requests from the API server's audit log, from its start until settled (reads, writes,
  status patches, writes per pod and by resource), and its writes during the node loss apart;
- its CPU seconds when the workloads are created (3 s after its start: logins, first lists) and when
  settled, and its peak RSS (VmHWM) at the end;
- a node failure -> its replica Ready elsewhere, at the default `--node-grace 30`;
- one scrape cycle over as many Ready pods (scrape_cycle.py: the operator's scraper, after the control plane
  is gone, so nothing else competes for the CPU).
Baselines in the same run: the pure placement engine deciding the same workloads on the same fleet (the
ratio is the operator's time to `Placed` over the engine's); a bare HTTP fetch of the same pages (the
scrape's ratio); with `--baseline-operator DIR`, every case run first with an earlier build of the operator
(its package folder, ahead of the installed one on PYTHONPATH), and the operator's CPU seconds and peak RSS
given as ratios to that row.

`--unrelated-pods N`: the first size again among N pods of someone else's, as a shared cluster has them
(issue 20's question: what watching others' pods costs): in 20 namespaces, bound by kube-scheduler and
Running (the stand-in kubelet runs them) before the operator starts, and one in ten asking for one device
of the vendor's resource (`nvidia.com/gpu`, ...) on a ComputeNode. Those take whole ComputeNodes that the
placement engine leaves unused on the empty fleet, the same share of each vendor's spare nodes, so that an
operator that does not see them (the baseline) places the same replicas and the rows do the same work.
Checked: every ComputeNode's `status.heldByOthers` against the devices the unrelated pods ask for there.
The case's rows are the operator before (`--baseline-operator`, e.g. a checkout of 851948b, before its
watch of others' pods) and now, among the same pods. The row "without the label selector" (the current
build with its kopf selector emptied, standing in for the operator before that selector) is gone: the
question now is the cost of the second watch, which that row neither removed nor isolated; the baseline
build is the operator as it really was.
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
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import kubernetes
import yaml

from gpufabric.api import AgentWorkload, ComputeNode
from gpufabric.placement import PriorThroughput, Snapshot, WorkloadRequest, pending_replicas, place
from gpufabric.placement.snapshot import ObservedDevices
from gpufabric.sandbox.cluster import install_crds
from gpufabric.sandbox.controlplane import ControlPlane, find_binaries, free_port
from gpufabric.sandbox.standin_kubelet import HOSTNAME_LABEL, StandInKubelet, node_for
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
# The unrelated pods: spread over this many namespaces, one in ACCELERATOR_SHARE asks for a device.
OTHERS_NAMESPACES = 20
ACCELERATOR_SHARE = 10
OTHERS_LABELS = {"app.kubernetes.io/part-of": "someone-else"}
OTHERS_SELECTOR = ",".join(f"{key}={value}" for key, value in OTHERS_LABELS.items())


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


def placeable(
    nodes: list[dict[str, Any]], bodies: list[dict[str, Any]], held: Mapping[str, int] | None = None
) -> tuple[set[str], set[str], float]:
    """The workloads the placement engine places on the fleet (others holding `held` devices by ComputeNode;
    none: the empty fleet), the ComputeNodes it uses, and its seconds for deciding all."""
    fleet_models = [ComputeNode.model_validate(n) for n in nodes]
    observed = {
        n.name: ObservedDevices(offered=n.spec.devices, held_by_others=held[n.name])
        for n in fleet_models
        if held and n.name in held
    }
    models = [AgentWorkload.model_validate(b) for b in bodies]
    queue = pending_replicas([WorkloadRequest.of(w) for w in models])
    started = time.perf_counter()
    snapshot = Snapshot([(n, True) for n in fleet_models], observed=observed)
    result = place(snapshot, queue, PriorThroughput(dict(ACCELERATORS)))
    seconds = time.perf_counter() - started
    used = {name for d in result.decisions for name in d.allocation.nodes}
    return {d.workload for d in result.decisions}, used, seconds


@dataclass(frozen=True)
class Unrelated:
    """A case's pods of someone else's: how many, and where those that ask for a device go."""

    count: int
    # (Node, the vendor's resource) for each pod that asks for one device, in creation order
    slots: list[tuple[str, str]] = field(default_factory=list)
    # devices they ask for, by ComputeNode: what its status.heldByOthers must say
    held: dict[str, int] = field(default_factory=dict)


def unrelated(nodes: list[dict[str, Any]], used: set[str], count: int) -> Unrelated:
    """`count` unrelated pods, one in ACCELERATOR_SHARE asking for a device: on whole ComputeNodes the engine
    leaves unused (`used`: the ones it takes on the empty fleet), the last by name first (best fit breaks
    ties by name, so the operator fills the first ones), the same share of each vendor's spare devices, so
    that an operator that does not see them still has room where it looks first."""
    spare: dict[str, list[ComputeNode]] = {}
    for node in sorted((ComputeNode.model_validate(n) for n in nodes), key=lambda n: n.name, reverse=True):
        if node.name not in used:
            spare.setdefault(node.spec.device_resource_name, []).append(node)
    capacity = sum(n.spec.devices for group in spare.values() for n in group)
    wanted = min(count // ACCELERATOR_SHARE, capacity)
    left = wanted
    slots: list[tuple[str, str]] = []
    held: dict[str, int] = {}
    for resource, group in spare.items():
        quota = min(left, -(-wanted * sum(n.spec.devices for n in group) // capacity))  # rounded up
        left -= quota
        for node in group:
            take = min(quota, node.spec.devices)
            if take:
                held[node.name] = take
                slots += [(node.spec.node_name, resource)] * take
            quota -= take
    return Unrelated(count, slots, held)


def unrelated_pod(index: int, slot: tuple[str, str] | None) -> dict[str, Any]:
    """Someone else's pod as workloads have them (requests, an env, a few labels); with a `slot`, bound by
    kube-scheduler to that Node (a hostname selector, so it still counts the device against allocatable)
    and asking for one device of its resource.

    No memory request: the example fleet packs eight reasoning-70b replicas (256Gi each) on a Node of 2Ti,
    and the operator counts only others' accelerators (issue 20), so any memory others hold there has
    kube-scheduler refuse one of ours (`Insufficient memory`), before and now alike: not what this measures."""
    resources: dict[str, dict[str, str]] = {"requests": {"cpu": "100m"}, "limits": {}}
    spec: dict[str, Any] = {}
    if slot is not None:
        node, resource = slot
        resources["requests"][resource] = resources["limits"][resource] = "1"
        spec["nodeSelector"] = {HOSTNAME_LABEL: node}
    container = {
        "name": "main",
        "image": "registry.example/team/batch:1.4",
        "args": ["--shard", str(index)],
        "env": [{"name": "SHARD", "value": str(index)}],
        "resources": resources,
    }
    return {
        "metadata": {
            "name": f"job-{index}",
            "namespace": f"team-{index % OTHERS_NAMESPACES:02d}",
            "labels": {**OTHERS_LABELS, "app": "batch", "shard": str(index)},
        },
        "spec": {**spec, "containers": [container]},
    }


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


def refusal(pod: Any) -> tuple[str, datetime] | None:
    """Why kube-scheduler said it cannot bind the pod (PodScheduled=False), and since when; or None."""
    conditions = pod.status.conditions if pod.status else None
    found = next((c for c in conditions or [] if c.type == "PodScheduled" and c.status == "False"), None)
    if found is None:
        return None
    return f"{pod.metadata.name}: {found.message or found.reason}", found.last_transition_time or datetime.now(UTC)


def refused(pod: Any, for_seconds: float = 0.0) -> bool:
    found = refusal(pod)
    return found is not None and (datetime.now(UTC) - found[1]).total_seconds() >= for_seconds


def process_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(peak.split()[1]) / 1024


@dataclass(frozen=True)
class HeldCheck:
    """Devices held by others: what the unrelated pods ask for on ComputeNodes, and what their status says."""

    asked: int
    nodes: int  # ComputeNodes the unrelated pods' devices are on
    seen: int | None  # the sum of status.heldByOthers; None: no ComputeNode says (an operator before issue 20)
    differ: list[str]  # "ComputeNode seen/asked" where they differ


@dataclass
class Row:
    label: str
    size: int
    unrelated_pods: int
    baseline: bool  # the baseline operator's row, which the others of its size and unrelated pods compare to
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
    # pods of ours kube-scheduler refused to bind when settled (on devices others hold, say), and why
    refused_pods: int
    refusals: list[str]
    # the operator's CPU seconds when the workloads are created: start-up, logins, the first lists and watches
    cpu_start_s: float
    cpu_placing_s: float
    # kube-apiserver + etcd CPU seconds from their start until settled (the unrelated pods' creation included)
    server_cpu_s: float
    cpu_s: float
    rss_mb: float
    node_loss_s: float | None
    node_loss_writes: int
    # writes by resource ("pods", "agentworkloads/status", "events", ...)
    writes_by_resource: dict[str, int]
    held: HeldCheck | None = None
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
    # pods of someone else's, Running on the fleet's Nodes before the operator starts
    unrelated_pods: int = 0
    # another build of the operator (its package folder, e.g. a checkout of an earlier commit's `operator`)
    # run in the operator's place: the baseline of a before/after in one run
    baseline: Path | None = None

    @property
    def label(self) -> str:
        label = str(self.size) if not self.unrelated_pods else f"{self.size}+{self.unrelated_pods}u"
        return label + (" before" if self.baseline else "")


class PodsThatChange:
    """The stand-in kubelet's CoreV1Api with its list of every pod (each tick) narrowed to the pods that still
    need a kubelet: ours (to start, or their deletion confirmed) and the unrelated ones not yet started. Every
    pod each tick is, among 5,000 unrelated pods, 8-9 CPU-seconds of this process (the official client's
    models): one core of two taken from the operator measured, and our pods started a tick or two late. The
    unrelated pods are never deleted, and a failed Node's pods are listed by node (passed through)."""

    def __init__(self, core: Any) -> None:
        self._core = core

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)

    def list_pod_for_all_namespaces(self, **options: Any) -> Any:
        if options:
            return self._core.list_pod_for_all_namespaces(**options)
        ours = self._core.list_namespaced_pod(NAMESPACE)
        waiting = self._core.list_pod_for_all_namespaces(
            label_selector=OTHERS_SELECTOR, field_selector="status.phase=Pending"
        )
        ours.items += waiting.items
        return ours


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

    def add_unrelated_pods(self, others: Unrelated, timeout: float = 600) -> None:
        """Someone else's pods (no managed-by label), created, bound by kube-scheduler and Running (the stand-in
        kubelet runs them) before the operator starts: a shared cluster's steady state."""
        if not others.count:
            return
        namespaces = [f"team-{index:02d}" for index in range(min(others.count, OTHERS_NAMESPACES))]
        for namespace in namespaces:
            self.core.create_namespace({"metadata": {"name": namespace}})

        # ServiceAccount admission refuses pods until the namespace's `default` account exists
        def accounts() -> bool:
            found = self.core.list_service_account_for_all_namespaces(field_selector="metadata.name=default")
            return set(namespaces) <= {a.metadata.namespace for a in found.items}

        self.wait(accounts, timeout, "the namespaces' default ServiceAccounts")
        # one in ACCELERATOR_SHARE asks for a device, spread through the namespaces
        slots = iter(others.slots)
        bodies = [
            unrelated_pod(index, next(slots, None) if index % ACCELERATOR_SHARE == 0 else None)
            for index in range(others.count)
        ]

        def create(body: dict[str, Any]) -> None:
            self.core.create_namespaced_pod(body["metadata"]["namespace"], body)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, bodies))

        def running() -> bool:
            waiting = self.core.list_pod_for_all_namespaces(
                label_selector=OTHERS_SELECTOR, field_selector="status.phase!=Running", limit=1
            )
            return not waiting.items

        self.wait(running, timeout, "the unrelated pods Running")

    @staticmethod
    def wait(check: Callable[[], bool], timeout: float, what: str = "") -> None:
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"not within {timeout:.0f}s: {what or check}")
            time.sleep(1.0)

    def start_operator(self, baseline: Path | None = None) -> subprocess.Popen[bytes]:
        kubeconfig = operator_identity(self.plane)
        command = [str(GPUFABRIC), "operator", "--kubeconfig", str(kubeconfig), "--metrics-port", str(free_port())]
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
        # Settled: every pod Ready (their Ready status patches belong to placing), or refused by kube-scheduler
        # (an operator that does not see others' devices may place on them: it waits forever), then a quiet
        # second.
        while time.monotonic() - started < timeout and not self.settled():
            time.sleep(2.0)
        time.sleep(1.0)
        return Placing(all_placed, latencies, len(first_placed))

    def settled(self) -> bool:
        pods = self.core.list_namespaced_pod(NAMESPACE).items
        # a fresh refusal may be kube-scheduler waiting for a replaced pod to go: it retries on its deletion
        return all(pod_is_ready(p) or refused(p, for_seconds=10.0) for p in pods)

    def held_check(self, others: Unrelated, timeout: float) -> HeldCheck:
        """The ComputeNodes' status.heldByOthers against what the unrelated pods ask for on each, once they
        agree or after `timeout` (no wait where no ComputeNode says: an operator that does not count them)."""
        started = time.monotonic()
        while True:
            items = self.custom.list_cluster_custom_object("gpufabric.io", "v1alpha1", "computenodes")["items"]
            said = {i["metadata"]["name"]: (i.get("status") or {}).get("heldByOthers") for i in items}
            differ = [f"{n} {v}/{others.held.get(n, 0)}" for n, v in sorted(said.items()) if v != others.held.get(n, 0)]
            known = [v for v in said.values() if v is not None]
            if not differ or not known or time.monotonic() - started > timeout:
                break
            time.sleep(1.0)
        asked = sum(others.held.values())
        return HeldCheck(asked, len(others.held), sum(known) if known else None, differ if known else [])

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


@dataclass(frozen=True)
class Options:
    timeout: float
    profile: Path | None = None
    logs: Path | None = None


@dataclass(frozen=True)
class Operated:
    """What one run of the operator did, until it was stopped."""

    placing: Placing
    pods: list[Any]
    cpu_start_s: float
    cpu_placing_s: float
    server_cpu_s: float
    loss_started: datetime
    node_loss_s: float | None
    cpu_s: float
    rss_mb: float
    held: HeldCheck | None


def operate(
    bench: Bench, case: Case, *, bodies: list[dict[str, Any]], wanted: set[str], others: Unrelated, options: Options
) -> Operated:
    """The operator started, the workloads created and placed, others' devices checked, a node lost."""
    operator = bench.start_operator(case.baseline)
    name = case.label.replace(" ", "-")
    profiler = start_profiler(operator.pid, options.profile, name)
    try:
        time.sleep(3)  # logged in and leading before the workloads arrive
        cpu_start, _ = process_usage(operator.pid)
        placing = bench.create_and_wait(bodies, wanted, options.timeout)
        pods = bench.core.list_namespaced_pod(NAMESPACE).items
        cpu_placing, _ = process_usage(operator.pid)
        # what the API server and etcd spent meanwhile (the fleet's creation included): on two shared
        # cores their write throughput is what bounds the time to Placed
        components = bench.plane.process_ids()
        server_cpu = sum(process_usage(components[c])[0] for c in ("kube-apiserver", "etcd"))
        held = bench.held_check(others, timeout=30) if others.count else None
        loss_started = datetime.now(UTC)
        node_loss = lose_a_node(bench.kubelet, bench.core, pods)
        cpu, rss = process_usage(operator.pid)
    finally:
        stop_profiler(profiler)
        operator.terminate()
        operator.wait(timeout=30)
        # the operator's log beside its profile, or in the folder given for logs
        for folder in {options.profile, options.logs} - {None}:
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(bench.plane.directory / "operator.log", folder / f"operator-{name}.log")
    return Operated(placing, pods, cpu_start, cpu_placing, server_cpu, loss_started, node_loss, cpu, rss, held)


def measure(case: Case, options: Options) -> Row:
    nodes, bodies = fleet(case.size), workloads(case.size)
    _, used, _ = placeable(nodes, bodies)
    others = unrelated(nodes, used, case.unrelated_pods)
    wanted, _, engine_seconds = placeable(nodes, bodies, others.held)
    with ControlPlane(find_binaries(), audited_users=(USER,)) as plane:
        admin = kubernetes.config.new_client_from_config(str(plane.admin_kubeconfig))  # type: ignore[no-untyped-call]
        install_crds(admin)
        # Node status every 5 minutes, as kubelets post it once node leases carry the heartbeat ("the
        # default interval for .status updates to Nodes is 5 minutes": kubernetes.io/docs/concepts/
        # architecture/nodes/#heartbeats); the stand-in's 10 s default made 1,000 Nodes 100 writes a
        # second, which delayed its own pod starts by ~28 s and flooded the operator's Node watch.
        # Its pod loop lists every pod: once a second from 1,000 pods, so it does not load the API server.
        kubelet = StandInKubelet(admin, serve_tokens=False, heartbeat=300.0, interval=0.25 if case.size < 1000 else 1.0)
        kubelet.core = PodsThatChange(kubelet.core)
        kubelet.start()
        bench = Bench(plane, kubelet, kubernetes.client.CoreV1Api(admin), kubernetes.client.CustomObjectsApi(admin))
        try:
            bench.add_fleet(nodes)
            bench.add_unrelated_pods(others)
            run = operate(bench, case, bodies=bodies, wanted=wanted, others=others, options=options)
            verbs, by_resource, loss_writes = bench.operator_requests(run.loss_started)
        finally:
            kubelet.stop()
            admin.close()
    writes = sum(n for (verb, _), n in verbs.items() if verb in WRITE_VERBS)
    latencies = run.placing.latencies
    return Row(
        label=case.label,
        size=case.size,
        unrelated_pods=case.unrelated_pods,
        baseline=case.baseline is not None,
        placeable=len(wanted),
        placed=run.placing.placed,
        all_placed_s=run.placing.all_placed_s,
        p50_s=statistics.median(latencies) if latencies else float("nan"),
        p99_s=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
        engine_s=engine_seconds,
        reads=sum(n for (verb, _), n in verbs.items() if verb not in WRITE_VERBS),
        writes=writes,
        status_patches=sum(n for (verb, status), n in verbs.items() if status and verb == "patch"),
        pods=len(run.pods),
        ready_pods=sum(pod_is_ready(p) for p in run.pods),
        refused_pods=sum(refused(p) for p in run.pods),
        refusals=[found[0] for p in run.pods if (found := refusal(p)) is not None],
        cpu_start_s=run.cpu_start_s,
        cpu_placing_s=run.cpu_placing_s,
        server_cpu_s=run.server_cpu_s,
        cpu_s=run.cpu_s,
        rss_mb=run.rss_mb,
        node_loss_s=run.node_loss_s,
        node_loss_writes=loss_writes,
        writes_by_resource=dict(by_resource),
        held=run.held,
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
    """Each size, and the first among `unrelated` pods of someone else's; each after its baseline's row."""
    wanted = [(size, 0) for size in sizes] + ([(sizes[0], unrelated)] if unrelated else [])
    return [
        case
        for size, others in wanted
        for case in ([Case(size, others, baseline)] if baseline else []) + [Case(size, others)]
    ]


# Compared with the baseline's row of the same case: (heading, Row attribute)
RATIOS = (
    ("start cpu", "cpu_start_s"),
    ("cpu", "cpu_placing_s"),
    ("rss", "rss_mb"),
    ("cpu w/ loss", "cpu_s"),
    ("reads", "reads"),
    ("writes", "writes"),
    ("all placed", "all_placed_s"),
    ("api cpu", "server_cpu_s"),
)


def report(rows: list[Row]) -> None:
    print(
        f"{'case':>16} {'placed':>11} {'all placed s':>12} {'p50 s':>6} {'p99 s':>6} {'engine s':>8} {'ratio':>7} "
        f"{'ready':>9} {'reads':>6} {'writes':>6} {'status':>6} {'writes/pod':>10} {'start cpu s':>11} "
        f"{'cpu s':>6} {'api cpu s':>9} {'rss MB':>7} {'node loss s':>11} {'loss writes':>11}"
    )
    for r in rows:
        loss = f"{r.node_loss_s:.1f}" if r.node_loss_s is not None else "-"
        print(
            f"{r.label:>16} {r.placed:>5}/{r.placeable:<5} {r.all_placed_s:>12.1f} {r.p50_s:>6.2f} {r.p99_s:>6.2f} "
            f"{r.engine_s:>8.3f} {r.all_placed_s / max(r.engine_s, 1e-9):>6.0f}x {r.ready_pods:>4}/{r.pods:<4} "
            f"{r.reads:>6} {r.writes:>6} {r.status_patches:>6} {r.writes / max(r.pods, 1):>10.2f} "
            f"{r.cpu_start_s:>11.1f} {r.cpu_placing_s:>6.1f} {r.server_cpu_s:>9.1f} {r.rss_mb:>7.0f} "
            f"{loss:>11} {r.node_loss_writes:>11}"
        )
    for r in (r for r in rows if r.refusals):
        print(f"{r.label}: refused by kube-scheduler: " + "; ".join(r.refusals[:3]))
    report_ratios(rows)
    report_held(rows)
    print("\nwrites per placed pod until settled, by resource")
    resources = sorted({resource for r in rows for resource in r.writes_by_resource})
    print(f"{'case':>16} " + " ".join(f"{resource:>21}" for resource in resources))
    for r in rows:
        shares = (r.writes_by_resource.get(resource, 0) / max(r.pods, 1) for resource in resources)
        print(f"{r.label:>16} " + " ".join(f"{share:>21.2f}" for share in shares))
    scraped = [r.scrape for r in rows if r.scrape is not None]
    if scraped:
        print("\nscrape cycle over the Ready pods (benchmarks/scrape_cycle.py: the operator's scraper, 44 KiB pages)")
        print(scrape_table(scraped))


def baseline_of(rows: list[Row], row: Row) -> Row | None:
    return next((b for b in rows if b.baseline and (b.size, b.unrelated_pods) == (row.size, row.unrelated_pods)), None)


def report_ratios(rows: list[Row]) -> None:
    compared = [(r, b) for r in rows if not r.baseline and (b := baseline_of(rows, r)) is not None]
    if not compared:
        return
    print("\nagainst the baseline operator (--baseline-operator): this row over the before row of the same case")
    print(f"{'case':>16} " + " ".join(f"{heading:>11}" for heading, _ in RATIOS) + f" {'refused':>9}")
    for row, before in compared:
        ratios = (getattr(row, name) / max(getattr(before, name), 1e-9) for _, name in RATIOS)
        refusals = f"{before.refused_pods}->{row.refused_pods}"
        print(f"{row.label:>16} " + " ".join(f"{ratio:>10.2f}x" for ratio in ratios) + f" {refusals:>9}")
    print(
        "(start cpu: the operator's CPU seconds 3 s after its start, before the workloads; cpu: until settled, "
        "every pod of ours Ready or refused by kube-scheduler; rss: peak, at the end; refused: pods of ours "
        "kube-scheduler would not bind when settled, before -> now)"
    )


def report_held(rows: list[Row]) -> None:
    checked = [r for r in rows if r.held is not None]
    if not checked:
        return
    print("\ndevices held by others: what the unrelated pods ask for on ComputeNodes, and the sum of the")
    print("ComputeNodes' status.heldByOthers (the operator's count, through its watch of others' pods)")
    print(f"{'case':>16} {'asked':>6} {'on nodes':>8} {'heldByOthers':>12}  agree")
    for r in checked:
        held = r.held
        assert held is not None
        if held.seen is None:
            seen, agree = "-", "- (not reported by this operator)"
        else:
            seen = str(held.seen)
            agree = "yes, on every ComputeNode" if not held.differ else f"no, {len(held.differ)} differ (seen/asked):"
        print(f"{r.label:>16} {held.asked:>6} {held.nodes:>8} {seen:>12}  {agree} {' '.join(held.differ[:8])}")


def summary(rows: list[Row]) -> dict[str, Any]:
    last = next((r for r in reversed(rows) if r.label == str(r.size)), rows[-1])
    found: dict[str, Any] = {
        "size": last.size,
        "all_placed_s": round(last.all_placed_s, 1),
        "p99_s": round(last.p99_s, 2),
        "writes_per_pod": round(last.writes / max(last.pods, 1), 2),
        "rss_mb": round(last.rss_mb),
        "node_loss_s": round(last.node_loss_s, 1) if last.node_loss_s is not None else None,
        "scrape_core_share": round(last.scrape.core_share, 3) if last.scrape else None,
    }
    among = next((r for r in rows if r.unrelated_pods and not r.baseline), None)
    if among is not None:
        before = baseline_of(rows, among)
        found["unrelated"] = {
            "pods": among.unrelated_pods,
            "cpu_s": round(among.cpu_placing_s, 1),
            "rss_mb": round(among.rss_mb),
            "cpu_ratio": round(among.cpu_placing_s / before.cpu_placing_s, 2) if before else None,
            "rss_ratio": round(among.rss_mb / before.rss_mb, 2) if before else None,
            "held_asked": among.held.asked if among.held else None,
            "held_seen": among.held.seen if among.held else None,
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 nodes and 100 workloads only")
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--unrelated-pods", type=int, default=0, help="also run the first size among N unrelated pods")
    parser.add_argument("--no-scrape", action="store_true", help="skip the scrape cycle measurement")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every placement")
    parser.add_argument("--profile", type=Path, help="write py-spy collapsed stacks of the operator into DIR")
    parser.add_argument("--logs", type=Path, help="keep the operator's log of each case in DIR")
    parser.add_argument(
        "--baseline-operator",
        type=Path,
        metavar="DIR",
        help="also run each case with the operator package in DIR (e.g. an earlier commit's operator/): before/after",
    )
    args = parser.parse_args()
    sizes = [100] if args.quick else [int(s) for s in args.sizes.split(",")]
    options = Options(args.timeout, args.profile, args.logs)
    rows = []
    for case in cases(sizes, 0 if args.quick else args.unrelated_pods, args.baseline_operator):
        row = measure(case, options)
        if not args.no_scrape and case.unrelated_pods == 0 and case.baseline is None and row.ready_pods:
            row.scrape = measure_scrape(row.ready_pods)
        rows.append(row)
    report(rows)
    print(json.dumps(summary(rows)))


if __name__ == "__main__":
    main()
