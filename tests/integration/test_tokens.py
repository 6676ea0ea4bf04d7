"""Tokens as the KPI, end to end: the running operator scrapes real HTTP servers speaking vLLM's format
whose counters grow at known rates, writes tokens/s into status, exports it, learns from saturated
replicas (and keeps what it learned across a restart), autoscales on a load step, and shrugs off
endpoints that misbehave."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpufabric.controller.reconciler import LoopSettings
from gpufabric.controller.run import Operator
from gpufabric.controller.scraper import ScrapeSettings
from gpufabric.throughput import ScrapeTarget
from gpufabric.throughput.learning import MIN_SAMPLES, STORE_CONFIG_MAP
from gpufabric.vendors import Precision
from support.engines import Engines
from support.harness import AW, CN, Cluster, agent_workload, eventually

ROOT = Path(__file__).resolve().parents[2]
FAST_TOKENS = LoopSettings(
    debounce=0.05, resync=1.0, first_backoff=0.1, max_backoff=1.0, action_backoff=0.1, tokens_min_interval=0.5
)


@pytest.fixture
async def engines() -> AsyncIterator[Engines]:
    async with Engines() as running:
        yield running


def start(cluster: Cluster, engines: Engines, **options: Any) -> Operator:
    def url(target: ScrapeTarget) -> str:
        return f"{engines.url}/pods/{target.pod.key}/metrics"

    settings: dict[str, Any] = {
        "loop": FAST_TOKENS,
        "scrape": ScrapeSettings(interval=0.2, timeout=0.5),
        "tokens_window": 2.0,
        "autoscale_stabilisation": 2.0,
        "scrape_url": url,
        "learned_save_every": 0.5,
        "operator_namespace": "gpufabric-system",
        **options,
    }
    return cluster.start_operator(**settings)


async def fleet(cluster: Cluster, nodes: int = 2) -> None:
    for namespace in ("agents", "gpufabric-system"):
        await cluster.namespace(namespace)
    for i in range(nodes):
        await cluster.gpu_node(f"gpu-{i}", domain=None)


def workload(name: str, replicas: int = 2, **spec: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "replicas": replicas,
        "devicesPerReplica": 1,
        "precisions": ["BF16"],
        "runtimes": {"nvidia": {"image": "vllm"}},
    }
    return agent_workload(name, defaults | spec)


def tokens_of(cluster: Cluster, name: str) -> dict[str, float]:
    found: dict[str, float] = cluster.workload("agents", name).get("status", {}).get("tokensPerSecond") or {}
    return found


def near(value: float, expected: float, tolerance: float = 0.1) -> bool:
    return abs(value - expected) <= tolerance * expected


def exported(operator: Operator) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(operator.metrics.registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


async def test_measured_tokens_reach_status_and_the_exporter(cluster: Cluster, engines: Engines) -> None:
    await fleet(cluster)
    for replica in range(2):
        engines.engine(f"agents/chat-{replica}-0").set_rates(prompt=400.0, generation=1000.0)
    operator = start(cluster, engines)
    await cluster.apply(workload("chat"))
    await eventually(lambda: cluster.ready("agents", "chat"))
    await eventually(
        lambda: (
            near(tokens_of(cluster, "chat").get("generation", 0.0), 2000.0)
            and near(tokens_of(cluster, "chat").get("prompt", 0.0), 800.0)
        ),
        timeout=20,
        message="workload tokensPerSecond ≈ 2,000 generation / 800 prompt",
    )

    def per_replica() -> bool:
        placements = cluster.workload("agents", "chat")["status"]["placements"]
        return all(near((p.get("tokensPerSecond") or {}).get("generation", 0.0), 1000.0) for p in placements)

    await eventually(per_replica, timeout=10, message="each replica's tokensPerSecond ≈ 1,000")

    def per_node() -> bool:
        nodes = [n.get("status", {}).get("tokensPerSecond") or {} for n in cluster.api.live_objects(CN)]
        return near(sum(t.get("generation", 0.0) for t in nodes), 2000.0)

    await eventually(per_node, timeout=10, message="ComputeNodes' tokensPerSecond add up to ≈ 2,000")

    metrics = exported(operator)
    generation = [v for labels, v in metrics["gpufabric_tokens_total"] if labels["kind"] == "generation"]
    assert generation
    assert generation[0] > 0
    per_device = metrics["gpufabric_tokens_per_device_second"]
    assert near(per_device[0][1], 1000.0)

    # The exposition an operator serves passes promtool.
    promtool = ROOT / ".tools/prometheus/usr/bin/promtool"
    assert promtool.is_file(), "run `make tools`"
    check = subprocess.run(
        [str(promtool), "check", "metrics"],
        input=generate_latest(operator.metrics.registry),
        capture_output=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def test_status_is_not_rewritten_on_every_scrape(cluster: Cluster, engines: Engines) -> None:
    await fleet(cluster, nodes=1)
    engines.engine("agents/chat-0-0").set_rates(prompt=100.0, generation=500.0)
    start(cluster, engines, loop=LoopSettings(debounce=0.05, resync=1.0, tokens_min_interval=3600.0))
    await cluster.apply(workload("chat", replicas=1))
    await eventually(lambda: near(tokens_of(cluster, "chat").get("generation", 0.0), 500.0), timeout=20)
    before = len([r for r in cluster.api.writes("agentworkloads") if r.subresource == "status"])
    # Two more seconds of scrapes every 0.2 s at a steady rate: the value barely moves, so no new writes.
    await asyncio.sleep(2.0)
    after = len([r for r in cluster.api.writes("agentworkloads") if r.subresource == "status"])
    assert after - before <= 1


async def test_counter_resets_and_bad_endpoints_are_survived(cluster: Cluster, engines: Engines) -> None:
    await fleet(cluster)
    for replica, mode in enumerate(["", "garbage", "error", "hang", "missing", "truncated"]):
        engine = engines.engine(f"agents/chat-{replica}-0")
        engine.set_rates(prompt=100.0, generation=300.0)
        engine.misbehave = mode
    operator = start(cluster, engines)
    await cluster.apply(workload("chat", replicas=6))
    await eventually(lambda: cluster.ready("agents", "chat"))
    await eventually(
        lambda: near(tokens_of(cluster, "chat").get("generation", 0.0), 300.0),
        timeout=20,
        message="only the healthy engine counts",
    )
    engines.engine("agents/chat-0-0").reset()  # the engine restarts: its counter drops to zero
    await eventually(lambda: operator.scraper.rounds >= 25, timeout=20)
    assert near(tokens_of(cluster, "chat")["generation"], 300.0), "a reset is not a negative rate"
    failures = {labels["reason"]: value for labels, value in exported(operator)["gpufabric_scrape_failures_total"]}
    for reason in ("parse_error", "http_error", "timeout", "missing_counter"):
        assert failures[reason] > 0, reason
    assert operator.reconciler.last_error is None


async def test_the_autoscaler_follows_a_load_step(cluster: Cluster, engines: Engines) -> None:
    await fleet(cluster)
    # One replica serves 6,000 generation tokens/s at saturation (the H100 BF16 prior for an 8B model is
    # ~9,500; the engines below report what they do).
    start(cluster, engines)
    await cluster.apply(
        workload("agent", replicas=1, throughput={"targetTokensPerSecond": 5000.0, "minReplicas": 1, "maxReplicas": 4})
    )
    await eventually(lambda: cluster.ready("agents", "agent"))
    assert cluster.workload("agents", "agent")["spec"]["replicas"] == 1, "the target alone needs one replica"
    # Load step: requests queue on every replica and demand exceeds what one replica serves.
    for replica in range(4):
        engines.engine(f"agents/agent-{replica}-0").set_rates(prompt=1000.0, generation=9000.0, waiting=12.0)
    await eventually(
        lambda: cluster.workload("agents", "agent")["spec"]["replicas"] >= 2,
        timeout=20,
        message="scaled up on a saturated, queueing replica",
    )
    await eventually(
        lambda: cluster.workload("agents", "agent")["spec"]["replicas"] == 4,
        timeout=30,
        message="up to maxReplicas while it stays saturated",
    )
    below = cluster.condition("agents", "agent", "ThroughputBelowTarget")
    assert below is not None
    # Load gone: back down, but only after the stabilisation window.
    for replica in range(4):
        engines.engine(f"agents/agent-{replica}-0").set_rates(prompt=0.0, generation=0.0, waiting=0.0)
    await eventually(
        lambda: cluster.workload("agents", "agent")["spec"]["replicas"] == 1, timeout=30, message="scaled back down"
    )

    def autoscaled() -> list[str]:
        return [e["message"] for e in cluster.api.live_objects("v1/events", "agents") if e["reason"] == "Autoscaled"]

    await eventually(lambda: any("-> 1 replicas" in m for m in autoscaled()), message="the scale-down is explained")
    assert any("-> 4 replicas" in m for m in autoscaled())


async def test_an_external_scaler_takes_over_and_the_autoscaler_stands_down(cluster: Cluster, engines: Engines) -> None:
    await fleet(cluster)
    start(cluster, engines)
    await cluster.apply(
        workload("agent", replicas=1, throughput={"targetTokensPerSecond": 20000.0, "minReplicas": 1, "maxReplicas": 4})
    )
    await eventually(
        lambda: (
            cluster.workload("agents", "agent")["metadata"].get("annotations", {}).get("gpufabric.io/scaled-to")
            is not None
        ),
        timeout=20,
    )
    # An HPA (or kubectl scale) writes the scale subresource.
    await cluster.api.h_patch(AW, "agent", {"spec": {"replicas": 1}}, namespace="agents")
    await eventually(
        lambda: (cluster.condition("agents", "agent", "Autoscaling") or {}).get("reason") == "ExternalScaler",
        timeout=20,
    )
    await asyncio.sleep(1.0)
    assert cluster.workload("agents", "agent")["spec"]["replicas"] == 1, "no fight over the count"


async def test_learned_throughput_replaces_the_prior_and_survives_a_restart(cluster: Cluster, engines: Engines) -> None:
    await fleet(cluster)
    engines.engine("agents/busy-0-0").set_rates(prompt=500.0, generation=4000.0, waiting=5.0)
    operator = start(cluster, engines)
    await cluster.apply(workload("busy", replicas=1))
    await eventually(
        lambda: any(e.samples >= MIN_SAMPLES for e in operator.tokens.learned.entries.values()),
        timeout=30,
        message="enough saturated samples",
    )
    learned = operator.tokens.learned.per_device("H100-SXM5-80GB", Precision.BF16, 8.0)
    assert learned is not None
    assert near(learned, 4000.0)

    def saved() -> bool:
        stored = cluster.api.get_object("v1/configmaps", STORE_CONFIG_MAP, "gpufabric-system")
        return bool(stored and "H100-SXM5-80GB" in stored.get("data", {}).get("learned.json", ""))

    await eventually(saved, timeout=20, message="learned table saved to its ConfigMap")
    await cluster.stop_operator(operator)
    again = start(cluster, engines)
    await eventually(lambda: bool(again.tokens.learned.entries), timeout=20, message="reloaded after restart")
    samples = max(e.samples for e in again.tokens.learned.entries.values())
    assert samples >= MIN_SAMPLES
