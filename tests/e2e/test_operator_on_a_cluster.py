"""The shipped operator on the real control plane, started as a user starts it: the `gpufabric operator`
console script with a kubeconfig, as the ServiceAccount `helm install` of the chart created, bound to the
chart's ClusterRole and Role (whose rules are `gpufabric.rbac`'s: tests/chart).

The tests in this module are the steps of one story on one fleet (the examples, with a Node per
ComputeNode run by the stand-in kubelet), in order: refused starts, placement, scaling through the scale
subresource, a cordon, a Node gone silent, discovery, tokens/s, a killed operator, leader takeover,
deletion, the log, and last the proof from the API server's audit log that the RBAC is exactly what the
operator uses. Each measured time goes into the end-of-run table.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from gpufabric import rbac
from gpufabric.controller.run import LEASE_NAME
from gpufabric.sandbox.controlplane import ROOT, ControlPlane, free_port
from gpufabric.sandbox.standin_kubelet import StandInKubelet, TokenRate
from gpufabric.throughput.learning import MIN_SAMPLES, STORE_CONFIG_MAP
from support import helm, prometheus
from support.prometheus import without_final_comparison
from support.realcluster import (
    CONSOLE_SCRIPT,
    GROUP,
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    OPERATOR_USER,
    VERSION,
    OperatorProcess,
    PodTimeline,
    Reader,
    add_nodes_for,
    example_documents,
    pod_is_ready,
    run_operator,
    wait_for,
)

NS = "agents"
DASHBOARD = ROOT / "charts" / "gpu-fabric-operator" / "dashboards" / "gpu-fabric-operator.json"
NODE_GRACE = 10.0
# Engines scraped every 3 s (the default is 15): a saturated replica teaches placement after MIN_SAMPLES
# scrapes, so what is learned shows up within the story's minutes.
SCRAPE_INTERVAL = 3.0
LEASE_SECONDS = 15.0  # the operator's Lease duration; a standby checks every 5 s
RENEW_EVERY = 5.0
# Per pod of each workload: what its engine serves. agent-small's requests queue, so the operator learns
# from it (and saves what it learned to its ConfigMap).
RATES = {
    "code-agent": TokenRate(prompt=300.0, generation=100.0),
    "agent-small": TokenRate(prompt=200.0, generation=400.0, waiting=2.0),
    "reasoning-70b": TokenRate(prompt=500.0, generation=250.0),
    "support-agent": TokenRate(prompt=100.0, generation=50.0),
    "frontier-405b": TokenRate(prompt=50.0, generation=20.0),
}
WORKLOADS = tuple(RATES)


@dataclass
class Story:
    plane: ControlPlane
    kubelet: StandInKubelet
    reader: Reader
    kubeconfig: Path
    operators: dict[str, OperatorProcess] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    health_ports: dict[str, int] = field(default_factory=dict)

    def start_operator(self, name: str, *, kubeconfig_from_environment: bool = False) -> OperatorProcess:
        """As users start it: with --kubeconfig, or (kubectl's way) with KUBECONFIG set and no flag."""
        self.metrics_ports[name], self.health_ports[name] = free_port(), free_port()
        args = ["--discover-nodes", "--node-grace", str(NODE_GRACE), "--scrape-interval", str(SCRAPE_INTERVAL)]
        args += ["--metrics-port", str(self.metrics_ports[name]), "--health-port", str(self.health_ports[name])]
        env = {"KUBECONFIG": str(self.kubeconfig)} if kubeconfig_from_environment else {}
        if not kubeconfig_from_environment:
            args += ["--kubeconfig", str(self.kubeconfig)]
        process = OperatorProcess(args, self.plane.directory / f"operator-{name}.log", env).start()
        self.operators[name] = process
        return process

    def metrics(self, name: str) -> str:
        return _get(f"http://127.0.0.1:{self.metrics_ports[name]}/metrics")

    def health(self, name: str) -> str:
        return _get(f"http://127.0.0.1:{self.health_ports[name]}/healthz")

    def pods(self) -> list[Any]:
        return self.reader.pods(NS)

    def all_ready(self) -> bool:
        return all(self.reader.workload_ready(NS, name) for name in self.workload_names())

    def workload_names(self) -> list[str]:
        return [w["metadata"]["name"] for w in self.reader.workloads(NS)]

    def pod_identities(self) -> dict[str, str]:
        """pod name -> uid, for pods not terminating."""
        return {p.metadata.name: p.metadata.uid for p in self.pods() if p.metadata.deletion_timestamp is None}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


@pytest.fixture(scope="module")
def story(plane: ControlPlane, kubelet: StandInKubelet, reader: Reader, operator_kubeconfig: Path) -> Iterator[Story]:
    documents = example_documents()
    for name, rate in RATES.items():
        kubelet.set_rate(NS, name, rate)
    add_nodes_for(kubelet, documents)
    the_story = Story(plane, kubelet, reader, operator_kubeconfig)
    try:
        yield the_story
    finally:
        for process in the_story.operators.values():
            process.kill()


# --- 1. refused starts ------------------------------------------------------------------------------------


def test_a_start_without_credentials_is_one_line_and_exit_3(story: Story, tmp_path: Path) -> None:
    result = run_operator(["--kubeconfig", str(tmp_path / "missing")], tmp_path / "log")
    assert result.returncode == 3, result
    assert result.stderr.strip().splitlines() == [
        f"gpufabric operator: no credentials: not running in a pod, and no kubeconfig at {tmp_path / 'missing'} "
        "(pass --kubeconfig or set KUBECONFIG)"
    ]


def test_a_refused_token_is_one_line_and_exit_3(story: Story, tmp_path: Path) -> None:
    wrong = story.plane.kubeconfig_for_token("not-a-token", name="wrong")
    result = run_operator(["--kubeconfig", str(wrong)], tmp_path / "log")
    assert result.returncode == 3, result
    assert result.stderr.strip().splitlines() == [
        f"gpufabric operator: the API server at {story.plane.url} refused the credentials from kubeconfig {wrong} "
        "(401 Unauthorized)"
    ]


def test_a_missing_operator_namespace_is_named(story: Story, tmp_path: Path) -> None:
    """As a cluster admin runs it from a laptop, before creating its namespace."""
    admin = str(story.plane.admin_kubeconfig)
    result = run_operator(["--kubeconfig", admin, "--operator-namespace", "nowhere"], tmp_path / "log")
    assert result.returncode == 3, result
    assert result.stderr.strip().splitlines() == [
        "gpufabric operator: namespace nowhere does not exist: create it (kubectl create namespace nowhere) "
        "or pass --operator-namespace"
    ]


def test_a_forbidden_call_is_named(story: Story, tmp_path: Path) -> None:
    """A ServiceAccount without the operator's rules: the first call it may not make is named."""
    story.plane.kubectl("create", "serviceaccount", "no-rights", "-n", OPERATOR_NAMESPACE)
    token = story.plane.kubectl("create", "token", "no-rights", "-n", OPERATOR_NAMESPACE).strip()
    result = run_operator(
        ["--kubeconfig", str(story.plane.kubeconfig_for_token(token, name="no-rights"))], tmp_path / "log"
    )
    assert result.returncode == 3, result
    assert result.stderr.strip().splitlines() == [
        f"gpufabric operator: forbidden: system:serviceaccount:{OPERATOR_NAMESPACE}:no-rights may not create "
        f"configmaps in namespace {OPERATOR_NAMESPACE} (ConfigMap {OPERATOR_NAMESPACE}/{STORE_CONFIG_MAP}); "
        "grant the operator's RBAC (see the README's permissions)"
    ]


# --- 2. the fleet -----------------------------------------------------------------------------------------


def test_the_example_fleet_is_placed_bound_and_running(story: Story, report: Any) -> None:
    started = time.monotonic()
    story.start_operator("a")
    story.plane.kubectl("apply", "--server-side", "-R", "-f", str(ROOT / "examples"))
    wait_for("every example workload Ready", story.all_ready, timeout=120)
    report("example fleet applied -> every workload Ready (operator start included)", time.monotonic() - started)
    pods = story.pods()
    assert len(pods) >= 23
    for pod in pods:
        scheduled = {c.type: c.status for c in pod.status.conditions or []}
        assert scheduled.get("PodScheduled") == "True", f"{pod.metadata.name}: not bound by kube-scheduler"
        assert pod_is_ready(pod), pod.metadata.name
        pinned = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        assert pod.spec.node_name in pinned.node_selector_terms[0].match_expressions[0].values
        assert re.fullmatch(r"127\.100\.\d+\.\d+", pod.status.pod_ip), pod.status.pod_ip
    for workload in story.reader.workloads(NS):
        placed = story.reader.condition(workload, "Placed")
        assert placed["status"] == "True", (workload["metadata"]["name"], placed)
    check_no_device_promised_twice_and_node_status(story)
    assert '"leading": true' in story.health("a"), story.health("a")


def check_no_device_promised_twice_and_node_status(story: Story) -> None:
    """Per ComputeNode: the devices its live pods hold never exceed what it declares, and its status says
    exactly what they hold."""
    held: collections.Counter[str] = collections.Counter()
    for pod in story.pods():
        if pod.metadata.deletion_timestamp is None:
            held[pod.metadata.annotations["gpufabric.io/compute-node"]] += int(
                pod.metadata.annotations["gpufabric.io/devices"]
            )

    def statuses_match() -> bool:
        for node in story.reader.compute_nodes():
            status = node.get("status") or {}
            name, devices = node["metadata"]["name"], node["spec"]["devices"]
            assert held[name] <= devices, f"{name}: {held[name]} of {devices} devices promised"
            if (status.get("allocatedDevices"), status.get("freeDevices")) != (held[name], devices - held[name]):
                return False
        return True

    wait_for("ComputeNode status matches the pods", statuses_match, timeout=20)


# --- 3. changes -------------------------------------------------------------------------------------------


def test_kubectl_scale_goes_through_the_scale_subresource(story: Story, report: Any) -> None:
    started = time.monotonic()
    story.plane.kubectl("scale", "aw/code-agent", "-n", NS, "--replicas=3")
    wait_for(
        "code-agent at 3 replicas",
        lambda: (
            story.reader.workload_ready(NS, "code-agent")
            and len(story.reader.pods(NS, "gpufabric.io/workload=code-agent")) == 3
        ),
        timeout=60,
    )
    report("kubectl scale aw/code-agent 8 -> 3: settled", time.monotonic() - started)
    shown = story.plane.kubectl("get", "aw/code-agent", "-n", NS, "-o", "jsonpath={.spec.replicas}")
    assert shown == "3"


def test_a_changed_image_rolls_one_replica_at_a_time_replacement_first(story: Story, report: Any) -> None:
    old = {p.metadata.name: p.metadata.uid for p in story.reader.pods(NS, "gpufabric.io/workload=code-agent")}
    started = time.monotonic()
    with PodTimeline(story.reader.api, NS) as timeline:
        patch = '{"spec":{"runtimes":{"mthreads":{"image":"registry.mthreads.com/mcconline/vllm-musa:v2"}}}}'
        story.plane.kubectl("patch", "aw/code-agent", "-n", NS, "--type=merge", "-p", patch)

        def rolled() -> bool:
            pods = story.reader.pods(NS, "gpufabric.io/workload=code-agent")
            return (
                story.reader.workload_ready(NS, "code-agent")
                and len(pods) == len(old)
                and all(p.spec.containers[0].image.endswith(":v2") for p in pods)
            )

        wait_for("code-agent rolled to the new image", rolled, timeout=90)
    report(f"image changed -> {len(old)} replicas of code-agent rolled", time.monotonic() - started)
    first_new_ready = timeline.first(lambda e: e.uid not in old.values() and e.ready)
    first_old_leaving = timeline.first(lambda e: e.uid in old.values() and (e.terminating or e.kind == "DELETED"))
    assert first_new_ready is not None, timeline.events
    assert first_old_leaving is not None, timeline.events
    assert first_new_ready < first_old_leaving, "an old replica left before a new one was Ready"


def test_a_cordoned_compute_node_is_drained_replacement_first(story: Story, report: Any) -> None:
    victim = next(
        p for p in story.reader.pods(NS, "gpufabric.io/workload=agent-small") if p.metadata.deletion_timestamp is None
    )
    node = victim.metadata.annotations["gpufabric.io/compute-node"]
    started = time.monotonic()
    with PodTimeline(story.reader.api, NS) as timeline:
        story.plane.kubectl("patch", "cn", node, "--type=merge", "-p", '{"spec":{"unschedulable":true}}')

        def moved() -> bool:
            agent = story.reader.pods(NS, "gpufabric.io/workload=agent-small")
            return story.reader.workload_ready(NS, "agent-small") and not any(
                p.metadata.annotations["gpufabric.io/compute-node"] == node for p in agent
            )

        wait_for(f"agent-small off cordoned {node}", moved, timeout=60)
    report(f"cordon {node}: agent-small's replicas moved off", time.monotonic() - started)
    old_terminating = timeline.first(
        lambda e: e.name == victim.metadata.name and (e.terminating or e.kind == "DELETED")
    )
    replacement_ready = timeline.first(
        lambda e: e.name.startswith("agent-small-") and e.uid != victim.metadata.uid and e.ready and e.node != node
    )
    assert replacement_ready is not None, timeline.events
    assert old_terminating is not None, timeline.events
    assert replacement_ready < old_terminating, "the old replica began terminating before its replacement was Ready"
    condition = story.reader.condition(
        story.reader.custom.get_cluster_custom_object(GROUP, VERSION, "computenodes", node), "Healthy"
    )
    assert condition.get("reason") == "Cordoned", condition


def test_a_node_gone_silent_has_its_replicas_running_elsewhere(story: Story, report: Any) -> None:
    pods = story.reader.pods(NS, "gpufabric.io/workload=reasoning-70b")
    node = pods[0].spec.node_name
    wanted: int = story.reader.workload(NS, "reasoning-70b")["spec"]["replicas"]
    story.kubelet.fail(node)

    def running_elsewhere() -> bool:
        current = story.reader.pods(NS, "gpufabric.io/workload=reasoning-70b")
        return len([p for p in current if pod_is_ready(p) and p.spec.node_name != node]) == wanted

    _, took = wait_for(f"reasoning-70b's replicas off silent {node}", running_elsewhere, timeout=NODE_GRACE + 30)
    report(f"Node {node} Ready=Unknown -> its replicas Running elsewhere (--node-grace {NODE_GRACE:.0f})", took)
    assert took <= NODE_GRACE + 8, f"{took:.1f} s after the Node went silent"
    wait_for("reasoning-70b Ready", lambda: story.reader.workload_ready(NS, "reasoning-70b"), timeout=30)
    check_no_device_promised_twice_and_node_status(story)


def test_a_labelled_node_is_discovered_as_a_compute_node(story: Story, report: Any) -> None:
    started = time.monotonic()
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "gpufabric.io/roce-domain": "a",
    }
    story.kubelet.add_node(
        "gpu-a-h100-09", {"nvidia.com/gpu": "8", "cpu": "64", "memory": "512Gi", "pods": "110"}, labels
    )

    def discovered() -> dict[str, Any] | None:
        found = [n for n in story.reader.compute_nodes() if n["spec"]["nodeName"] == "gpu-a-h100-09"]
        return found[0] if found else None

    node, _ = wait_for("a ComputeNode for gpu-a-h100-09", discovered, timeout=30)
    report("labelled Node -> ComputeNode discovered", time.monotonic() - started)
    assert node["spec"]["devices"] == 8
    story.plane.kubectl("label", "node", "gpu-a-h100-09", "gpufabric.io/roce-domain=b", "--overwrite")
    wait_for(
        "the discovered ComputeNode follows its Node",
        lambda: (discovered() or {}).get("spec", {}).get("fabric", {}).get("roceDomain") == "b",
        timeout=30,
    )


# --- 4. tokens --------------------------------------------------------------------------------------------


def test_each_engines_token_counters_reach_status_and_the_exporter(story: Story, report: Any) -> None:
    """Every example engine serves its own metric names (vLLM on MUSA: code-agent; MindIE on Ascend:
    agent-small; SGLang on NVIDIA: support-agent; vLLM on NVIDIA: reasoning-70b): the operator scrapes each
    under its profile's names, and status and the exporter agree with the rates the pods serve. agent-small's
    requests queue, so the operator learns its throughput and saves it to its ConfigMap."""
    for name in ("code-agent", "agent-small", "support-agent", "reasoning-70b"):

        def generation(name: str = name) -> float | None:
            body = story.reader.workload(NS, name)
            status = body.get("status") or {}
            expected = RATES[name].generation * status.get("readyReplicas", 0)
            value = (status.get("tokensPerSecond") or {}).get("generation")
            return value if expected and value and abs(value - expected) <= 0.1 * expected else None

        value, _ = wait_for(f"{name}'s tokens/s in status", generation, timeout=90)
        replicas = story.reader.workload(NS, name)["status"]["readyReplicas"]
        report(f"{name}: generation tokens/s in status ({replicas} pods x {RATES[name].generation:g})", value, "tok/s")
    per_device = exported(story.metrics("a"), "gpufabric_tokens_per_device_second")
    # code-agent: 100 tok/s per replica of 2 MTT S4000 cards; agent-small: 400 per Ascend 910B3 at INT8.
    assert per_device.get(("mthreads", "MTT-S4000", "BF16")) == pytest.approx(50.0, rel=0.1), per_device
    assert per_device.get(("ascend", "Ascend-910B3", "INT8")) == pytest.approx(400.0, rel=0.1), per_device
    core: Any = client.CoreV1Api(story.reader.api)
    saved, took = wait_for(
        "the learned-throughput ConfigMap",
        lambda: core.read_namespaced_config_map(STORE_CONFIG_MAP, OPERATOR_NAMESPACE).data,
        timeout=120,
    )
    assert saved, saved
    report("learned throughput saved to its ConfigMap (waited)", took)


def exported(
    text: str, family: str, keys: tuple[str, ...] = ("vendor", "accelerator", "precision")
) -> dict[tuple[str, ...], float]:
    """A gauge family from the operator's /metrics: the values of the labels `keys` -> value."""
    found = {}
    for found_family in text_string_to_metric_families(text):
        for sample in found_family.samples:
            if sample.name == family:
                found[tuple(sample.labels[key] for key in keys)] = sample.value
    return found


# --- 5. the operator dies -----------------------------------------------------------------------------------


def test_a_standby_takes_over_within_the_lease_time_and_changes_nothing(story: Story, report: Any) -> None:
    before = story.pod_identities()
    standby = story.start_operator("b")
    wait_for("the standby watching", lambda: "gpufabric_leader 0.0" in story.metrics("b"), timeout=30)
    assert "leading:" not in standby.log()
    story.operators["a"].kill()
    killed = time.monotonic()
    wait_for("the standby leading", lambda: "leading:" in standby.log(), timeout=LEASE_SECONDS + RENEW_EVERY + 10)
    took = time.monotonic() - killed
    report("leader SIGKILLed -> standby leads", took)
    assert took <= LEASE_SECONDS + RENEW_EVERY + 2
    time.sleep(3)  # passes run by the new leader
    wait_for("every workload Ready under the new leader", story.all_ready, timeout=30)
    assert story.pod_identities() == before, "the takeover created or deleted pods"
    lease: Any = client.CoordinationV1Api(story.reader.api).read_namespaced_lease(LEASE_NAME, OPERATOR_NAMESPACE)
    assert lease.spec.lease_duration_seconds == LEASE_SECONDS  # the bound asserted above is the real one


def test_a_killed_and_restarted_operator_makes_no_duplicate_lost_or_orphaned_pod(story: Story, report: Any) -> None:
    before = story.pod_identities()
    story.operators["b"].kill()
    started = time.monotonic()
    restarted = story.start_operator("a-restarted", kubeconfig_from_environment=True)
    wait_for("the restarted operator leading", lambda: "leading:" in restarted.log(), timeout=LEASE_SECONDS + 15)
    wait_for(
        "a pass of the restarted operator",
        lambda: "gpufabric_reconcile_passes_total 0.0" not in story.metrics("a-restarted"),
        timeout=30,
    )
    report("operator SIGKILLed and restarted -> leading and reconciling", time.monotonic() - started)
    time.sleep(2)
    assert story.pod_identities() == before, "the restart created or deleted pods"
    workloads = set(story.workload_names())
    orphans = [p.metadata.name for p in story.pods() if p.metadata.labels["gpufabric.io/workload"] not in workloads]
    assert orphans == []
    check_no_device_promised_twice_and_node_status(story)


# --- 6. deletion, logs, permissions --------------------------------------------------------------------------


def test_a_workload_too_big_for_the_fleet_is_unschedulable_with_the_reason(story: Story) -> None:
    """Seven whole H100 servers asked for while the 405B gang holds two of the eight: six are placed, the
    seventh is refused with kube-scheduler-style counts, and waits."""
    hog = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentWorkload",
        "metadata": {"name": "h100-hog", "namespace": NS},
        "spec": {
            "model": {"name": "m", "parametersBillions": 70},
            "replicas": 7,
            "devicesPerReplica": 8,
            "precisions": ["FP8"],
            "runtimes": {"nvidia": {"image": "vllm/vllm-openai:v0.11.0"}},
            "placement": {"nodeSelector": {"matchLabels": {"gpufabric.io/pool": "h100"}}},
        },
    }
    story.reader.custom.create_namespaced_custom_object(GROUP, VERSION, NS, "agentworkloads", hog)

    def refused() -> dict[str, Any] | None:
        placed = story.reader.condition(story.reader.workload(NS, "h100-hog"), "Placed")
        return placed if placed.get("reason") == "Unschedulable" else None

    placed, _ = wait_for("h100-hog's seventh replica refused", refused, timeout=30)
    assert placed["status"] == "False"
    assert re.match(r"0/\d+ nodes: ", placed["message"]), placed["message"]
    assert "insufficient free devices" in placed["message"], placed["message"]
    assert len(story.reader.pods(NS, "gpufabric.io/workload=h100-hog")) == 6


def test_a_real_prometheus_evaluates_every_dashboard_query_and_alert(story: Story, report: Any) -> None:
    """Prometheus (the real server) scrapes the leading operator while the fleet serves tokens and one
    workload waits unschedulable: every query of the Grafana dashboard and every alert of the chart
    evaluates without error and returns series — an alert whose condition does not hold right now
    returns its left-hand side's series instead (its thresholds are unit-tested by promtool)."""
    leader = "a-restarted"
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = dashboard_script().queries(board, rate_interval="1m")
    (rule,) = [
        d
        for d in helm.render({"prometheusRule": {"enabled": True}}, story.plane.directory)
        if d["kind"] == "PrometheusRule"
    ]
    alerts = [(r["alert"], r["expr"]) for group in rule["spec"]["groups"] for r in group["rules"]]
    # The learned-throughput panel has series once a saturated replica (agent-small's) was scraped
    # MIN_SAMPLES times: the precondition, stated rather than left to the story's timing.
    wait_for(
        "learned tokens/s per device exported by the leader",
        lambda: exported(
            story.metrics(leader), "gpufabric_learned_tokens_per_device_second", ("size_class", "accelerator")
        ),
        timeout=MIN_SAMPLES * SCRAPE_INTERVAL + 30,
    )
    started = time.monotonic()
    with prometheus.running([f"127.0.0.1:{story.metrics_ports[leader]}"]) as server:
        scraped = f'count_over_time(up{{job="{prometheus.JOB}"}}[1m]) >= 10'
        wait_for("ten scrapes of the operator", lambda: server.query(scraped), timeout=60)
        empty = []
        for what, expression in [*panels, *alerts]:
            if server.query(expression):
                continue
            left = without_final_comparison(expression) or absent_argument(expression)
            if left is None or not server.query(left):
                empty.append(f"{what}: {expression}")
        assert empty == [], "queries that return no series:\n" + "\n".join(empty)
    report(
        f"real Prometheus: {len(panels)} dashboard queries and {len(alerts)} alerts evaluated with series",
        time.monotonic() - started,
    )


def absent_argument(expression: str) -> str | None:
    """`absent(x == 1)` -> `x` (absent returns nothing exactly when its argument has series)."""
    text = expression.strip()
    if not (text.startswith("absent(") and text.endswith(")")):
        return None
    inner = text.removeprefix("absent(").removesuffix(")")
    return without_final_comparison(inner) or inner


def dashboard_script() -> Any:
    spec = importlib.util.spec_from_file_location("dashboard_script", ROOT / "scripts" / "dashboard.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dashboard_script"] = module
    spec.loader.exec_module(module)
    return module


def test_a_gang_scaled_to_zero_loses_its_pods_and_its_replica_service(story: Story, report: Any) -> None:
    """The operator deletes a gang replica's pods and the headless Service its ranks found rank 0 by; the
    workload's own Service stays for when it scales up again."""
    assert story.reader.services(NS, "gpufabric.io/workload=frontier-405b,gpufabric.io/replica=0")
    started = time.monotonic()
    story.plane.kubectl("scale", "aw/frontier-405b", "-n", NS, "--replicas=0")
    wait_for(
        "frontier-405b's pods and replica Service gone",
        lambda: (
            not story.reader.pods(NS, "gpufabric.io/workload=frontier-405b")
            and not story.reader.services(NS, "gpufabric.io/workload=frontier-405b,gpufabric.io/replica=0")
        ),
        timeout=60,
    )
    report("gang scaled to 0 -> its pods and replica Service deleted", time.monotonic() - started)
    assert [s.metadata.name for s in story.reader.services(NS, "gpufabric.io/workload=frontier-405b")] == [
        "frontier-405b"
    ]
    # The devices the gang freed go to the replica that was waiting for them, with no other trigger.
    _, took = wait_for("h100-hog Ready on the freed servers", lambda: story.reader.workload_ready(NS, "h100-hog"), 60)
    report("freed devices -> the waiting replica placed and Ready", took)


def test_deleting_a_workload_removes_its_pods_and_services_by_garbage_collection(story: Story, report: Any) -> None:
    assert story.reader.pods(NS, "gpufabric.io/workload=agent-small")
    assert story.reader.services(NS, "gpufabric.io/workload=agent-small")
    started = time.monotonic()
    story.plane.kubectl("delete", "aw/agent-small", "-n", NS, "--wait=false")
    wait_for(
        "agent-small's pods and Services gone",
        lambda: (
            not story.reader.pods(NS, "gpufabric.io/workload=agent-small")
            and not story.reader.services(NS, "gpufabric.io/workload=agent-small")
        ),
        timeout=60,
    )
    report("AgentWorkload deleted -> its pods and Services gone (garbage collector)", time.monotonic() - started)


def test_the_log_tells_what_the_operator_did_without_per_event_chatter(story: Story) -> None:
    log = story.operators["a"].log()
    for said in (
        "logged in to",
        "leading:",
        ": Placed: replica",
        ": Draining: replacing replica",
        ": Rescheduled: replica",
    ):
        assert said in log, f"{said!r} not in the operator's log"
    assert "Handler " not in log, "kopf's per-event handler lines belong at DEBUG"
    assert "Traceback" not in log


def test_capacity_reads_the_live_cluster(story: Story) -> None:
    """`gpufabric capacity --kubeconfig`, as a user runs it: free B200 and H100 capacity, after what runs."""
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "capacity", "--kubeconfig", str(story.plane.admin_kubeconfig), "--model-params", "8"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "live cluster" in result.stdout
    assert re.search(r"^nvidia\s+B200\s+FP8\s+a\s+\d+", result.stdout, re.MULTILINE), result.stdout


def granted_by_the_chart(admin: client.ApiClient) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, where) of every rule the installed chart binds to the operator: `cluster`
    for its ClusterRole, the namespace for its Roles."""
    rbac_api: Any = client.RbacAuthorizationV1Api(admin)
    where: list[tuple[str, Any]] = [("cluster", rbac_api.read_cluster_role(OPERATOR_ACCOUNT))]
    where += [(OPERATOR_NAMESPACE, rbac_api.read_namespaced_role(OPERATOR_ACCOUNT, OPERATOR_NAMESPACE))]
    return {
        (group, resource, verb, scope)
        for scope, role in where
        for rule in role.rules
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
    }


def test_the_rbac_is_exactly_what_the_operator_uses(story: Story, admin: client.ApiClient, report: Any) -> None:
    """From the API server's audit log of the operator's ServiceAccount over the whole story: nothing it
    asked for was forbidden (no rule missing), and every verb of every rule the chart installed was used
    and allowed at least once (no rule unused: removing any one would forbid a request the operator made).
    The chart's rules are gpufabric.rbac's (tests/chart); here they are read back from the cluster."""
    for process in story.operators.values():
        process.stop()
    granted = granted_by_the_chart(admin)
    expected = {
        (g, r, v, "cluster" if s is not rbac.Scope.OPERATOR_NAMESPACE else OPERATOR_NAMESPACE)
        for g, r, v, s in rbac.grants()
    }
    assert granted == expected, "the installed chart binds other rules than gpufabric.rbac"
    # Requests every authenticated user may make (the pre-flight "who am I"), not granted by our rules.
    everyone = {("authentication.k8s.io", "selfsubjectreviews", "create")}
    used: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
    forbidden, unexplained = [], []
    for event in story.plane.audit_events():
        if event["user"]["username"] != OPERATOR_USER or "objectRef" not in event:
            continue
        ref = event["objectRef"]
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        what = (ref.get("apiGroup", ""), resource, event["verb"])
        if event["annotations"].get("authorization.k8s.io/decision") != "allow":
            forbidden.append(f"{event['verb']} {resource} in {ref.get('namespace', '(cluster)')}")
            continue
        # Every grant that allows the request counts as used: cluster-wide, the ClusterRole's rules and the
        # operator namespace's Role overlap there (the learned-throughput ConfigMap).
        allowing = [
            scope for scope in ("cluster", ref.get("namespace")) if scope is not None and (*what, scope) in granted
        ]
        for scope in allowing:
            used[(*what, scope)] += 1
        if not allowing and what not in everyone:
            unexplained.append(what)
    assert forbidden == [], f"the operator was refused: {forbidden}"
    assert unexplained == [], f"allowed by something other than our rules: {sorted(set(unexplained))}"
    unused = sorted(granted - set(used))
    assert unused == [], f"rules the operator never used: {unused}"
    report(
        f"API requests by the operator's ServiceAccount ({len(granted)} grants, all used)", sum(used.values()), "req"
    )
