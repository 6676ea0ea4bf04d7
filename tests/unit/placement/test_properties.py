"""Invariants of placement over random fleets and workloads (hypothesis):

- no device is ever promised twice;
- every gang is inside one RoCE domain, one vendor, one accelerator, with RDMA on every node;
- every decision passes every filter of its workload;
- same snapshot and input, in any order, give the same output;
- refusal reasons count every node exactly once;
- a lone replica is refused only when nothing could hold it, and adding capacity never makes a
  placeable replica unplaceable.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufabric.api import AgentWorkload, ComputeNode
from gpufabric.placement import ExistingReplica, PlacementResult, Snapshot, place
from gpufabric.placement.candidates import candidates_for
from gpufabric.placement.weights import Weights
from support.fleet import PALETTE, PRECISION_ORDERS, PRIOR, VENDOR_SETS, node, requests, workload

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def fleets(draw: st.DrawFn, min_nodes: int = 1, max_nodes: int = 12) -> list[ComputeNode]:
    count = draw(st.integers(min_nodes, max_nodes))
    return [
        node(
            f"n{i:02d}",
            draw(st.sampled_from(PALETTE)),
            devices=draw(st.sampled_from((4, 8))),
            domain=draw(st.sampled_from(("a", "b", "c", None))),
            nics=draw(st.integers(0, 2)),
            labels={"pool": draw(st.sampled_from(("p0", "p1")))},
            cordoned=draw(st.booleans()) and draw(st.booleans()),
        )
        for i in range(count)
    ]


@st.composite
def workloads(draw: st.DrawFn, max_count: int = 4) -> list[AgentWorkload]:
    found = []
    for i in range(draw(st.integers(1, max_count))):
        extra: dict[str, Any] = {}
        runtimes = draw(st.sampled_from(VENDOR_SETS))
        if draw(st.booleans()):
            extra["vendorPreference"] = list(draw(st.permutations(runtimes)))
        nodes_per_replica = draw(st.sampled_from((1, 1, 2)))
        if nodes_per_replica > 1:
            extra["nodesPerReplica"] = nodes_per_replica
        if draw(st.booleans()):
            extra["devicesPerReplica"] = nodes_per_replica * draw(st.sampled_from((1, 2, 4)))
        if draw(st.integers(0, 4)) == 0:
            extra["nodeSelector"] = {"matchLabels": {"pool": draw(st.sampled_from(("p0", "p1")))}}
        if draw(st.integers(0, 4)) == 0:
            extra["roceDomains"] = draw(st.lists(st.sampled_from(("a", "b", "c")), min_size=1, max_size=2, unique=True))
        extra["spread"] = draw(st.sampled_from(("Node", "RoceDomain", "None")))
        found.append(
            workload(
                f"w{i}",
                params=draw(st.sampled_from((1.5, 7.6, 32, 70, 120, 405))),
                replicas=draw(st.integers(1, 4)),
                runtimes=runtimes,
                precisions=draw(st.sampled_from(PRECISION_ORDERS)),
                priority=draw(st.integers(-1, 1)),
                **extra,
            )
        )
    return found


def run(
    fleet: list[ComputeNode],
    work: list[AgentWorkload],
    not_ready: frozenset[str] = frozenset(),
    existing: tuple[ExistingReplica, ...] = (),
) -> tuple[Snapshot, PlacementResult]:
    snapshot = Snapshot([(n, n.name not in not_ready) for n in fleet], existing)
    return snapshot, place(snapshot, requests(work), PRIOR)


@SETTINGS
@given(fleets(), workloads(), st.data())
def test_no_device_is_promised_twice(fleet: list[ComputeNode], work: list[AgentWorkload], data: st.DataObject) -> None:
    not_ready = frozenset(data.draw(st.lists(st.sampled_from([n.name for n in fleet]), max_size=3)))
    before = Snapshot([(n, True) for n in fleet])
    _, result = run(fleet, work, not_ready)
    used: Counter[str] = Counter()
    for decision in result.decisions:
        for name in decision.allocation.nodes:
            used[name] += decision.allocation.devices_per_node
    for name, devices in used.items():
        assert devices <= before.nodes[name].free, f"{name}: {devices} devices promised of {before.nodes[name].free}"


@SETTINGS
@given(fleets(), workloads())
def test_every_decision_passes_every_filter(fleet: list[ComputeNode], work: list[AgentWorkload]) -> None:
    snapshot, result = run(fleet, work)
    specs = {w.key: w.spec for w in work}
    for decision in result.decisions:
        spec = specs[decision.workload]
        nodes = [snapshot.nodes[name] for name in decision.allocation.nodes]
        assert len(nodes) == spec.nodes_per_replica == len(set(decision.allocation.nodes))
        assert decision.allocation.vendor in spec.runtimes
        assert decision.allocation.precision in spec.precisions
        for state in nodes:
            assert state.schedulable
            assert state.node_class.vendor == decision.allocation.vendor
            assert state.node_class.accelerator == decision.allocation.accelerator
            assert decision.allocation.precision in state.node_class.precisions
            placement = spec.placement
            if placement and placement.node_selector:
                assert placement.node_selector.matches(dict(state.labels))
            if placement and placement.roce_domains:
                assert state.domain in placement.roce_domains
        if spec.nodes_per_replica > 1:
            assert len({state.domain for state in nodes}) == 1
            assert nodes[0].domain is not None
            assert len({state.node_class for state in nodes}) == 1
            assert all(state.node_class.rdma for state in nodes)
        if spec.devices_per_replica != "auto":
            assert decision.allocation.devices == spec.devices_per_replica


@SETTINGS
@given(fleets(), workloads(), st.randoms(use_true_random=False))
def test_same_input_same_output_in_any_order(fleet: list[ComputeNode], work: list[AgentWorkload], rng: Any) -> None:
    _, first = run(fleet, work)
    shuffled_fleet, shuffled_work = list(fleet), list(work)
    rng.shuffle(shuffled_fleet)
    rng.shuffle(shuffled_work)
    _, second = run(shuffled_fleet, shuffled_work)
    assert first == second


REASON = re.compile(r"^0/(\d+) nodes: (.*)$")


@SETTINGS
@given(fleets(), workloads())
def test_reason_counts_add_up_to_the_nodes(fleet: list[ComputeNode], work: list[AgentWorkload]) -> None:
    _, result = run(fleet, work)
    for refusal in result.refusals:
        match = REASON.match(refusal.reason)
        assert match, refusal.reason
        counts = [int(part.split(" ", 1)[0]) for part in re.split(r", (?=\d+ )", match.group(2))]
        assert sum(counts) == int(match.group(1)) == len(fleet)
        assert "internal inconsistency" not in refusal.reason


def _fits_somewhere(snapshot: Snapshot, item: AgentWorkload) -> bool:
    """Brute force: some candidate has enough eligible nodes with room in one domain."""
    spec = item.spec
    placement = spec.placement
    for candidate in candidates_for(spec, snapshot.classes, PRIOR, Weights()):
        per_domain: Counter[str | None] = Counter()
        for state in snapshot.nodes.values():
            if state.class_id != candidate.class_id or not state.schedulable:
                continue
            if state.free < candidate.devices_per_node:
                continue
            if placement and placement.node_selector and not placement.node_selector.matches(dict(state.labels)):
                continue
            if placement and placement.roce_domains and state.domain not in placement.roce_domains:
                continue
            per_domain[state.domain] += 1
        if any(count >= candidate.nodes for count in per_domain.values()):
            return True
    return False


@SETTINGS
@given(fleets(), workloads(max_count=1))
def test_a_lone_replica_is_refused_only_when_nothing_fits(fleet: list[ComputeNode], work: list[AgentWorkload]) -> None:
    single = workload_with_replicas(work[0], 1)
    snapshot = Snapshot([(n, True) for n in fleet])
    placeable = _fits_somewhere(snapshot, single)
    result = place(snapshot, requests([single]), PRIOR)
    assert bool(result.decisions) == placeable


@SETTINGS
@given(fleets(max_nodes=8), workloads(max_count=1), fleets(min_nodes=1, max_nodes=3), st.data())
def test_adding_capacity_never_makes_a_placeable_replica_unplaceable(
    fleet: list[ComputeNode], work: list[AgentWorkload], extra: list[ComputeNode], data: st.DataObject
) -> None:
    single = workload_with_replicas(work[0], 1)
    # Some of the fleet is busy; the bigger fleet frees some of it and adds nodes.
    busy = tuple(
        ExistingReplica("other/tenant", i, (n.name,), data.draw(st.integers(0, n.spec.devices)))
        for i, n in enumerate(fleet)
    )
    freed = tuple(
        ExistingReplica(b.workload, b.replica, b.nodes, data.draw(st.integers(0, b.devices_per_node))) for b in busy
    )
    renamed = [
        node(
            f"x{i}",
            n.spec.accelerator,
            devices=n.spec.devices,
            domain=n.spec.roce_domain,
            nics=len(n.spec.nics),
            labels=dict(n.spec.labels),
        )
        for i, n in enumerate(extra)
    ]
    small = place(Snapshot([(n, True) for n in fleet], busy), requests([single]), PRIOR)
    large = place(Snapshot([(n, True) for n in [*fleet, *renamed]], freed), requests([single]), PRIOR)
    if small.decisions:
        assert large.decisions, large.refusals


def workload_with_replicas(item: AgentWorkload, replicas: int) -> AgentWorkload:
    return item.model_copy(update={"spec": item.spec.model_copy(update={"replicas": replicas})})


def _state(snapshot: Snapshot) -> dict[str, Any]:
    """Everything a placement reads from a snapshot, with bucket contents as sets (order is arrival)."""
    views = {
        key: {bucket: [sorted(slot) for slot in slots] for bucket, slots in index.buckets.items() if any(slots)}
        for key, index in snapshot._views.items()
    }
    return {
        "free": {name: node.free for name, node in snapshot.nodes.items()},
        "replicas": {name: +node.replicas for name, node in snapshot.nodes.items()},
        "domain_free": dict(snapshot.domain_free),
        "domain_replicas": {domain: +counts for domain, counts in snapshot.domain_replicas.items()},
        "views": views,
    }


@SETTINGS
@given(fleets(), st.data())
def test_allocate_then_release_restores_the_snapshot_exactly(fleet: list[ComputeNode], data: st.DataObject) -> None:
    """`Snapshot.release` is the preemption seam: whatever was allocated, releasing it in any order leaves
    the snapshot as it was (free devices, replica counts, domain totals, every bucket index)."""
    snapshot = Snapshot([(n, True) for n in fleet])
    snapshot.view("gpus", lambda n: n.node_class.vendor.value == "nvidia")  # an index kept current too
    before = _state(snapshot)
    allocations = []
    for i in range(data.draw(st.integers(1, 6))):
        name = data.draw(st.sampled_from(sorted(snapshot.nodes)))
        if snapshot.nodes[name].free == 0:
            continue
        devices = data.draw(st.integers(1, snapshot.nodes[name].free))
        workload = f"ns/w{i % 2}"
        snapshot.allocate(workload, [name], devices)
        allocations.append((workload, name, devices))
    assert allocations == [] or _state(snapshot) != before
    for workload, name, devices in data.draw(st.permutations(allocations)):
        snapshot.release(workload, [name], devices)
    assert _state(snapshot) == before


def test_release_refuses_what_was_never_allocated() -> None:
    snapshot = Snapshot([(node("h1"), True)])
    with pytest.raises(ValueError, match="holds no replica of ns/w"):
        snapshot.release("ns/w", ["h1"], 1)
    snapshot.allocate("ns/w", ["h1"], 2)
    with pytest.raises(ValueError, match="more free devices than it has"):
        snapshot.release("ns/w", ["h1"], 9)
