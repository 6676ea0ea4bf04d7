"""Everything measured about tokens, kept between scrapes: per-pod counter series, fleet totals that only
ever grow (for gpufabric_tokens_total), scrape failures, the learned throughput table, and one autoscaler
per workload. Pure state: the caller supplies readings and the time."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gpufabric.api.agentworkload import AgentWorkload, ReplicaPlacement
from gpufabric.api.refs import Allocation, ObjectRef
from gpufabric.api.tokens import TokensPerSecond
from gpufabric.placement.estimates import ThroughputSource, replica_tokens_per_second
from gpufabric.throughput.autoscale import Autoscaler, Inputs, Recommendation
from gpufabric.throughput.exposition import INVALID_VALUE, MISSING_GAUGE, Reading, ScrapeProblem, SeriesKey
from gpufabric.throughput.learning import LearnedThroughput
from gpufabric.throughput.rates import CounterSeries

KINDS = ("prompt", "generation")


@dataclass(frozen=True)
class ScrapeTarget:
    """Rank 0 of a ready replica: where its serving engine reports tokens."""

    pod: ObjectRef
    workload: ObjectRef
    replica: int
    allocation: Allocation
    parameters_billions: float
    prompt_counter: str
    generation_counter: str
    waiting_gauge: str | None
    pod_ip: str
    port: int
    path: str


@dataclass
class PodSeries:
    """What one pod's engine has reported: a counter series per label set of each token counter."""

    target: ScrapeTarget
    prompt: dict[SeriesKey, CounterSeries] = field(default_factory=dict)
    generation: dict[SeriesKey, CounterSeries] = field(default_factory=dict)
    waiting: float | None = None
    scrapes: int = 0

    def rate(self, kind: str) -> float:
        """Sum of the per-series rates (PromQL: sum(rate(counter[window])))."""
        return sum(series.rate() for series in (self.prompt if kind == "prompt" else self.generation).values())


@dataclass(frozen=True)
class TokenReport:
    """The measured picture a reconcile pass writes into status."""

    replicas: Mapping[tuple[str, int], TokensPerSecond]
    workloads: Mapping[str, TokensPerSecond]
    nodes: Mapping[str, TokensPerSecond]
    recommendations: Mapping[str, Recommendation]
    # workload -> predicted capacity (tokens/s) of its current replicas, for ThroughputBelowTarget
    capacity: Mapping[str, float]


@dataclass(frozen=True)
class TokenView:
    """What the exporter shows of the tracker, copied on the event loop: prometheus-client collects from its
    HTTP server's thread, which must never iterate the tracker's dictionaries while a scrape changes them."""

    totals: tuple[tuple[tuple[str, str, str, str, str, str], float], ...]
    failures: Mapping[str, int]
    per_device: Mapping[tuple[str, str, str], float]
    learned: LearnedThroughput  # a snapshot: see LearnedThroughput.snapshot


@dataclass
class TokenTracker:
    prior: ThroughputSource
    window: float = 60.0
    stabilisation: float = 300.0
    series: dict[ObjectRef, PodSeries] = field(default_factory=dict)
    # (namespace, workload, vendor, accelerator, precision, kind) -> tokens counted so far
    totals: dict[tuple[str, str, str, str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    failures: Counter[str] = field(default_factory=Counter)
    autoscalers: dict[str, Autoscaler] = field(default_factory=dict)
    learned: LearnedThroughput = field(init=False)

    def __post_init__(self) -> None:
        self.learned = LearnedThroughput(self.prior)

    # --- scrapes ---------------------------------------------------------------------------------------

    def observe(self, target: ScrapeTarget, outcome: Reading | ScrapeProblem, at: float) -> None:
        if isinstance(outcome, ScrapeProblem):
            self.failures[outcome.reason] += 1
            return
        current = self.series.get(target.pod)
        if current is None or current.target != target:
            # A new pod, or the same name now describing another replica: new series (totals keep counting).
            current = PodSeries(target)
            self.series[target.pod] = current
        where = target.allocation
        refused = False
        for kind, values, kept in (
            ("prompt", outcome.prompt, current.prompt),
            ("generation", outcome.generation, current.generation),
        ):
            key = (
                target.workload.namespace or "",
                target.workload.name,
                where.vendor.value,
                where.accelerator,
                where.precision.value,
                kind,
            )
            for gone in [series for series in kept if series not in values]:
                del kept[gone]  # an engine (a label set) stopped reporting: it contributes nothing more
            for series, value in values.items():
                grown = kept.setdefault(series, CounterSeries(self.window)).add(at, value)
                if grown is None:
                    refused = True
                else:
                    self.totals[key] += grown
        if refused:
            self.failures[INVALID_VALUE] += 1
        if outcome.gauge_missing:
            self.failures[MISSING_GAUGE] += 1
        current.waiting = outcome.waiting
        current.scrapes += 1
        rate = current.rate("generation")
        if outcome.waiting is not None and outcome.waiting > 0 and rate > 0 and current.scrapes >= 3:
            self.learned.observe(where.accelerator, where.precision, target.parameters_billions, where.devices, rate)

    def forget_missing(self, live: Iterable[ObjectRef]) -> None:
        """Drop series of pods that are no longer scraped (their counted tokens stay in the totals)."""
        keep = set(live)
        for pod in [p for p in self.series if p not in keep]:
            del self.series[pod]

    # --- reading -----------------------------------------------------------------------------------------

    def rates(self) -> dict[tuple[str, int], tuple[ScrapeTarget, TokensPerSecond, bool]]:
        """Per replica: its rank-0 pod's rates, and whether requests are queueing."""
        found = {}
        for series in self.series.values():
            target = series.target
            found[(target.workload.key, target.replica)] = (
                target,
                TokensPerSecond(prompt=round(series.rate("prompt"), 1), generation=round(series.rate("generation"), 1)),
                bool(series.waiting),
            )
        return found

    def report(self, workloads: Mapping[str, AgentWorkload], now: float) -> TokenReport:
        rates = self.rates()
        per_workload: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        per_node: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        saturated: set[str] = set()
        for (workload_key, _), (target, tps, queueing) in rates.items():
            per_workload[workload_key][0] += tps.prompt
            per_workload[workload_key][1] += tps.generation
            nodes = target.allocation.nodes
            for node in nodes:  # a gang's tokens are shared evenly by its nodes
                per_node[node][0] += tps.prompt / len(nodes)
                per_node[node][1] += tps.generation / len(nodes)
            if queueing:
                saturated.add(workload_key)
        recommendations: dict[str, Recommendation] = {}
        capacity: dict[str, float] = {}
        for key, workload in workloads.items():
            placements = workload.status.placements if workload.status else []
            per_replica = [self.replica_capacity(workload, p) for p in placements]
            capacity[key] = sum(per_replica)
            throughput = workload.spec.throughput
            if throughput is None or throughput.target_tokens_per_second is None or not per_replica:
                continue
            inputs = Inputs(
                target=throughput.target_tokens_per_second,
                demand=per_workload[key][1] if key in per_workload else 0.0,
                capacity_per_replica=sum(per_replica) / len(per_replica),
                saturated=key in saturated,
                current=workload.spec.replicas,
                minimum=throughput.min_replicas,
                maximum=throughput.max_replicas or workload.spec.replicas,
            )
            scaler = self.autoscalers.setdefault(key, Autoscaler(self.stabilisation))
            recommendations[key] = scaler.recommend(now, inputs)
        return TokenReport(
            replicas={k: v[1] for k, v in rates.items()},
            workloads={k: _tps(v) for k, v in per_workload.items()},
            nodes={k: _tps(v) for k, v in per_node.items()},
            recommendations=recommendations,
            capacity=capacity,
        )

    def replica_capacity(self, workload: AgentWorkload, placement: ReplicaPlacement) -> float:
        value = replica_tokens_per_second(
            self.learned,
            accelerator=placement.accelerator,
            memory_gib=0.0,
            precision=placement.precision,
            parameters_billions=workload.spec.model.parameters_billions,
            devices_per_node=placement.devices_per_node,
            nodes=len(placement.nodes),
        )
        return value if math.isfinite(value) else 0.0

    def view(self) -> TokenView:
        return TokenView(
            totals=tuple(sorted(self.totals.items())),
            failures=dict(self.failures),
            per_device=self.per_device(),
            learned=self.learned.snapshot(),
        )

    def per_device(self) -> dict[tuple[str, str, str], float]:
        """Measured generation tokens/s per device now, by (vendor, accelerator, precision)."""
        tokens: dict[tuple[str, str, str], float] = defaultdict(float)
        devices: dict[tuple[str, str, str], int] = defaultdict(int)
        for target, tps, _ in self.rates().values():
            where = target.allocation
            key = (where.vendor.value, where.accelerator, where.precision.value)
            tokens[key] += tps.generation
            devices[key] += where.devices
        return {key: tokens[key] / devices[key] for key in tokens if devices[key]}


def _tps(values: list[float]) -> TokensPerSecond:
    return TokensPerSecond(prompt=round(values[0], 1), generation=round(values[1], 1))
