"""Decision quality against the exact optimum of the same objective (HiGHS), on small random instances.

The optimum without order is an upper bound no placer can beat; the engine must stay within 2 % of it on
average, and beat first fit. See tests/support/optimum.py for why the order-respecting optimum is
reported too, and benchmarks/placement.py for the same comparison at more sizes."""

from __future__ import annotations

import random

import pytest

from gpufabric.placement import place
from support.firstfit import first_fit
from support.fleet import PRIOR, random_fleet, random_workloads, requests, snapshot
from support.optimum import optimum

SEEDS = range(60)


def instance(seed: int) -> tuple[list, list]:  # type: ignore[type-arg]
    rng = random.Random(seed)
    nodes = random_fleet(rng, rng.randint(4, 10), rng.randint(1, 3))
    return nodes, requests(random_workloads(rng, rng.randint(2, 6)))


@pytest.fixture(scope="module")
def outcomes() -> list[tuple[float, float, float, bool]]:
    found = []
    for seed in SEEDS:
        nodes, queue = instance(seed)
        engine = place(snapshot(nodes), queue, PRIOR).value
        baseline = first_fit(snapshot(nodes), queue, PRIOR).value
        best = optimum(snapshot(nodes), queue, PRIOR, respect_order=False)
        found.append((engine, baseline, best.value, best.proven))
    return found


def test_the_optimum_is_proven_and_never_beaten(outcomes: list[tuple[float, float, float, bool]]) -> None:
    for seed, (engine, baseline, best, proven) in zip(SEEDS, outcomes, strict=True):
        assert proven, f"seed {seed}: HiGHS did not prove optimality"
        assert engine <= best * (1 + 1e-9) + 1e-6, f"seed {seed}: engine {engine} above the optimum {best}"
        assert baseline <= best * (1 + 1e-9) + 1e-6, f"seed {seed}: first fit {baseline} above the optimum {best}"


def test_engine_reaches_98_percent_of_the_optimum_on_average(outcomes: list[tuple[float, float, float, bool]]) -> None:
    ratios = [engine / best if best else 1.0 for engine, _, best, _ in outcomes]
    assert sum(ratios) / len(ratios) >= 0.98


def test_engine_beats_first_fit(outcomes: list[tuple[float, float, float, bool]]) -> None:
    engine_total = sum(engine for engine, _, _, _ in outcomes)
    baseline_total = sum(baseline for _, baseline, _, _ in outcomes)
    assert engine_total > baseline_total
    wins = sum(engine >= baseline - 1e-6 for engine, baseline, _, _ in outcomes)
    assert wins >= 0.9 * len(outcomes)
