"""The operator's Prometheus metrics (`gpufabric_*`), on a registry of its own.

Counters of what happened (passes, errors, writes, placements, tokens, scrape failures) and gauges built
fresh at every scrape from the operator's last view of the fleet (devices, replicas, unschedulable
workloads, measured tokens per device, free capacity in tokens/s). Names follow Prometheus conventions:
counters end in `_total`, durations are `_seconds` histograms, labels are small closed sets or names of
the user's own workloads and accelerators — never pods or UIDs. Every metric is listed in the README.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.reasons import ConditionReason, ConditionType
from gpufabric.placement.snapshot import NodeState, ObservedDevices, Snapshot
from gpufabric.reconcile import ClusterState
from gpufabric.reconcile.actions import ACTION_KINDS
from gpufabric.reconcile.devices import observed_in
from gpufabric.reconcile.ledger import fleet_snapshot, replicas_of
from gpufabric.throughput import TokenView, best_total, free_capacity
from gpufabric.throughput.exposition import REASONS
from gpufabric.throughput.learning import MIN_SAMPLES, SIZE_CLASSES, representative_size

# `_created` series double the counters' series for a timestamp nobody reads here.
disable_created_metrics()  # type: ignore[no-untyped-call]

PLACEMENT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.passes = Counter("gpufabric_reconcile_passes_total", "Reconcile passes run by the leader.", registry=r)
        self.errors = Counter(
            "gpufabric_reconcile_errors_total",
            "Writes that failed after retries, and passes that failed, by kind of action.",
            ["action"],
            registry=r,
        )
        self.writes = Counter(
            "gpufabric_api_writes_total",
            "Write requests sent to the Kubernetes API, retries included.",
            ["verb", "resource"],
            registry=r,
        )
        self.placement_seconds = Histogram(
            "gpufabric_placement_decision_duration_seconds",
            "Time to decide one reconcile pass (snapshot, placement, rendering, status).",
            buckets=PLACEMENT_BUCKETS,
            registry=r,
        )
        self.replicas_placed = Counter(
            "gpufabric_replicas_placed_total", "Replicas placed (new, scaled up, moved, rolled).", registry=r
        )
        self.leader = Gauge("gpufabric_leader", "1 while this instance holds the Lease and reconciles.", registry=r)
        # Every action's error series exists from the start at 0, so rate() and alerts see a counter that
        # has not moved rather than no series at all.
        for action in (*(kind.verb for kind in ACTION_KINDS), "pass"):
            self.errors.labels(action=action)

    def watch(self, published: Callable[[], FleetView]) -> None:
        """Add the gauges and token counters built at each scrape from the view the loop last published."""
        self.registry.register(FleetCollector(published))


@dataclass(frozen=True)
class FleetView:
    """What the event loop last published for the exporter: immutable, so prometheus-client's HTTP thread
    can read it while the loop goes on (swapping the reference is atomic)."""

    state: ClusterState | None = None
    tokens: TokenView | None = None


class FleetCollector(Collector):
    def __init__(self, published: Callable[[], FleetView]) -> None:
        self.published = published

    def describe(self) -> list[object]:
        return []  # families depend on the fleet; collected fresh each time

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        view = self.published()
        yield from self._tokens(view.tokens)
        if view.state is not None:
            yield from self._inventory(view.state, view.tokens)

    def _tokens(self, view: TokenView | None) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        tokens = CounterMetricFamily(
            "gpufabric_tokens",
            "Tokens served, summed from the serving engines' counters (resets handled).",
            labels=["namespace", "workload", "vendor", "accelerator", "precision", "kind"],
        )
        failures = CounterMetricFamily(
            "gpufabric_scrape_failures",
            "Scrapes of serving engines that yielded nothing, by reason.",
            labels=["reason"],
        )
        per_device = GaugeMetricFamily(
            "gpufabric_tokens_per_device_second",
            "Measured generation tokens per second per device, now, over ready replicas.",
            labels=["vendor", "accelerator", "precision"],
        )
        learned = GaugeMetricFamily(
            "gpufabric_learned_tokens_per_device_second",
            "Learned saturated generation tokens/s per device at the size class's largest model, where placement "
            "uses it instead of the prior.",
            labels=["size_class", "accelerator", "precision"],
        )
        if view is not None:
            for key, value in view.totals:
                tokens.add_metric(list(key), value)
            for reason in REASONS:
                failures.add_metric([reason], view.failures.get(reason, 0))
            for (vendor, accelerator, precision), value in sorted(view.per_device.items()):
                per_device.add_metric([vendor, accelerator, precision], value)
            for (size, accelerator, precision), entry in sorted(view.learned.entries.items()):
                if entry.samples >= MIN_SAMPLES:
                    learned.add_metric([size, accelerator, precision], entry.normalised / representative_size(size))
        yield from (tokens, failures, per_device, learned)

    def _inventory(self, state: ClusterState, view: TokenView | None) -> Iterator[GaugeMetricFamily]:
        # The numbers placement decides with: what each Node offers and what others hold there.
        observed = observed_in(state)
        snapshot = fleet_snapshot(state.compute_nodes.values(), state.nodes, replicas_of(state.pods), observed)
        yield _devices(snapshot)
        yield from _compute_nodes(state, observed)

        replicas = GaugeMetricFamily(
            "gpufabric_replicas",
            "Replicas by state: desired, placed, ready.",
            labels=["namespace", "workload", "state"],
        )
        targets = GaugeMetricFamily(
            "gpufabric_throughput_target_tokens_per_second",
            "spec.throughput.targetTokensPerSecond of AgentWorkloads that set one (generation tokens/s).",
            labels=["namespace", "workload"],
        )
        unschedulable_workload = GaugeMetricFamily(
            "gpufabric_workload_unschedulable",
            "1 while an AgentWorkload has replicas no node can take (Placed=False, Unschedulable), else 0.",
            labels=["namespace", "workload"],
        )
        unschedulable = 0
        for _, workload in sorted(state.workloads.items()):
            namespace, name = workload.namespace, workload.name
            status = workload.status
            replicas.add_metric([namespace, name, "desired"], workload.spec.replicas)
            replicas.add_metric([namespace, name, "placed"], len(status.placements) if status else 0)
            replicas.add_metric([namespace, name, "ready"], status.ready_replicas if status else 0)
            refused = _unschedulable(workload)
            unschedulable_workload.add_metric([namespace, name], refused)
            unschedulable += refused
            throughput = workload.spec.throughput
            if throughput is not None and throughput.target_tokens_per_second is not None:
                targets.add_metric([namespace, name], throughput.target_tokens_per_second)
        yield replicas
        yield targets
        yield unschedulable_workload
        yield GaugeMetricFamily(
            "gpufabric_unschedulable_workloads",
            "AgentWorkloads with replicas no node can take (Placed=False, Unschedulable).",
            value=unschedulable,
        )

        capacity = GaugeMetricFamily(
            "gpufabric_free_capacity_tokens_per_second",
            "Generation tokens/s the free devices could serve for one more model of the size class "
            "(single-node replicas, best precision per accelerator, learned or prior per-device throughput).",
            labels=["size_class"],
        )
        if view is not None:
            for size in SIZE_CLASSES:
                rows = free_capacity(snapshot, representative_size(size), view.learned)
                capacity.add_metric([size], best_total(rows))
        yield capacity


def _devices(snapshot: Snapshot) -> GaugeMetricFamily:
    """Each node's declared devices by state (`device_states`), summed per accelerator and RoCE domain."""
    devices = GaugeMetricFamily(
        "gpufabric_devices",
        "Accelerators ComputeNodes declare, by state (per node they sum to spec.devices): allocated (to the "
        "operator's replicas), free (on Ready, uncordoned nodes), unavailable (free, but on nodes that are not "
        "Ready or cordoned), held_by_others (pods or DRA claims the operator does not manage), not_offered "
        "(the Node advertises fewer than declared, or is missing); per RoCE domain (empty outside the fabric).",
        labels=["vendor", "accelerator", "roce_domain", "state"],
    )
    counts: dict[tuple[str, str, str], Tally[str]] = {}
    for node in snapshot.nodes.values():
        labels = (node.node_class.vendor.value, node.node_class.accelerator, node.domain or "")
        counts.setdefault(labels, Tally()).update(device_states(node))
    for labels, by_state in sorted(counts.items()):
        # Every state of every accelerator and domain, 0 included: a state's series does not come and go.
        for state_name in DEVICE_STATES:
            devices.add_metric([*labels, state_name], by_state[state_name])
    return devices


DEVICE_STATES = ("allocated", "free", "unavailable", "held_by_others", "not_offered")


def device_states(node: NodeState) -> dict[str, int]:
    """A node's declared devices split by state; the counts sum to its spec.devices. Of the declared devices
    its Node does not offer some (`not_offered`); of those offered, others hold some (at most all offered);
    what is left is the operator's capacity there, split into its replicas' and the rest. Replicas holding
    more than that capacity (the spec shrank, or others took devices the ledger still counts as ours) show
    as all of it allocated: the ComputeNode's Healthy condition says Overcommitted."""
    declared = node.node_class.devices
    offered = min(node.offered, declared)
    held = min(node.held_by_others, offered)
    free = min(node.free, node.capacity)
    return {
        "allocated": node.capacity - free,
        "free" if node.schedulable else "unavailable": free,
        "held_by_others": held,
        "not_offered": declared - offered,
    }


def _compute_nodes(state: ClusterState, observed: Mapping[str, ObservedDevices]) -> Iterator[GaugeMetricFamily]:
    """ComputeNodes by state, and the devices their Nodes do not offer (counts per accelerator, not per node:
    an alert says how many, `kubectl get cn` says which)."""
    nodes = GaugeMetricFamily(
        "gpufabric_compute_nodes",
        "ComputeNodes by state: ready, not_ready (its Node is NotReady or missing), cordoned (spec.unschedulable).",
        labels=["vendor", "accelerator", "state"],
    )
    missing = GaugeMetricFamily(
        "gpufabric_devices_not_advertised",
        "Devices ComputeNodes declare that their Nodes do not offer: fewer in status.allocatable (device "
        "plugins) or in the DRA driver's ResourceSlices. A missing Node counts under gpufabric_compute_nodes "
        "instead.",
        labels=["vendor", "accelerator"],
    )
    by_state: Tally[tuple[str, str, str]] = Tally()
    shortfall: Tally[tuple[str, str]] = Tally()
    for compute_node in state.compute_nodes.values():
        spec = compute_node.spec
        vendor, accelerator = spec.vendor.value, spec.accelerator
        health = state.nodes.get(spec.node_name)
        ready = health is not None and health.ready
        node_state = "cordoned" if spec.unschedulable and ready else ("ready" if ready else "not_ready")
        by_state[(vendor, accelerator, node_state)] += 1
        seen = observed.get(compute_node.name)
        offered = min(seen.offered, spec.devices) if seen is not None else spec.devices
        shortfall[(vendor, accelerator)] += spec.devices - offered if health is not None else 0
    for labels in sorted(by_state):
        nodes.add_metric(list(labels), by_state[labels])
    for pair in sorted(shortfall):
        missing.add_metric(list(pair), shortfall[pair])
    yield nodes
    yield missing


def _unschedulable(workload: AgentWorkload) -> int:
    if workload.status is None:
        return 0
    return int(
        any(
            c.type == ConditionType.PLACED and c.reason == ConditionReason.UNSCHEDULABLE
            for c in workload.status.conditions
        )
    )
