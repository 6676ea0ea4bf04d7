"""The sandbox's traffic model (pure) and its simulated engines (real HTTP on loopback addresses)."""

from __future__ import annotations

import asyncio
import random
import socket

import aiohttp
import pytest

from gpufabric.engines import SGLANG
from gpufabric.placement.estimates import PriorThroughput, replica_tokens_per_second
from gpufabric.sandbox.engines import Counters, Endpoint, EngineFarm
from gpufabric.sandbox.traffic import (
    BATCH_REQUESTS,
    PROMPT_TOKENS_PER_GENERATED,
    TRUTH_SPREAD,
    Hardware,
    Served,
    Surge,
    demand_at,
    serve,
)
from gpufabric.throughput.exposition import Reading, read
from gpufabric.vendors import ACCELERATORS, Precision


def test_demand_is_the_baseline_times_the_surges_in_force() -> None:
    surges = [Surge(10, 20, 3.0), Surge(15, 30, 0.5)]
    assert demand_at(5, 1000, surges) == 1000
    assert demand_at(10, 1000, surges) == 3000  # a surge starts at its start
    assert demand_at(16, 1000, surges) == 1500  # overlapping: they multiply
    assert demand_at(20, 1000, surges) == 500  # and ends at its end
    assert demand_at(30, 1000, surges) == 1000


def test_a_replica_serves_its_share_up_to_its_capacity_and_queues_the_rest() -> None:
    rng = random.Random(1)
    under = serve(900, [1000, 1000, 1000], noise=0.0, rng=rng)
    assert under == [Served(300, 300 * PROMPT_TOKENS_PER_GENERATED, 0)] * 3
    over = serve(3000, [500, 2000], noise=0.0, rng=rng)
    assert [s.generation for s in over] == [500, 1500]
    assert over[0].waiting == BATCH_REQUESTS * (1500 - 500) / 500  # the saturated one queues
    assert over[1].waiting == 0
    assert serve(1000, [], noise=0.0, rng=rng) == []
    assert serve(-5, [100], noise=0.0, rng=rng)[0].generation == 0


def test_noise_stays_within_its_bounds() -> None:
    rng = random.Random(7)
    values = [s.generation for s in serve(10_000, [1000] * 200, noise=0.05, rng=rng)]
    assert min(values) >= 50 * 0.95
    assert max(values) <= 50 * 1.05
    assert len(set(values)) > 100  # it is noise, not a constant


def test_the_hardware_is_the_prior_within_its_spread_and_the_seed_decides() -> None:
    first, again, other = (
        Hardware.drawn(random.Random(3)),
        Hardware.drawn(random.Random(3)),
        Hardware.drawn(random.Random(4)),
    )
    assert first == again
    assert first != other
    assert set(first.factors) == set(ACCELERATORS)
    assert all(1 - TRUTH_SPREAD <= f <= 1 + TRUTH_SPREAD for f in first.factors.values())
    predicted = replica_tokens_per_second(
        PriorThroughput(dict(ACCELERATORS)),
        accelerator="B200",
        memory_gib=ACCELERATORS["B200"].memory_gib,
        precision=Precision.FP8,
        parameters_billions=8,
        devices_per_node=1,
        nodes=1,
    )
    capacity = first.replica_capacity(
        accelerator="B200", precision=Precision.FP8, parameters_billions=8, devices_per_node=1, nodes=1
    )
    assert capacity == pytest.approx(predicted * first.factors["B200"])


# --- engines over HTTP ---------------------------------------------------------------------------------


def page(text: str) -> Reading:
    """The page as the operator's scraper reads it."""
    names = SGLANG.metrics
    reading = read(text, names.prompt_counter, names.generation_counter, names.waiting_gauge)
    assert isinstance(reading, Reading), reading
    return reading


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


async def test_an_engine_answers_at_its_pods_address_under_its_engines_names() -> None:
    address = "127.101.255.1"
    endpoint = Endpoint(address, free_port(address), "/metrics")
    names = SGLANG.metrics
    counters = Counters(names.prompt_counter, names.generation_counter, names.waiting_gauge, "m")
    farm = EngineFarm()
    await farm.start()
    try:
        assert await farm.start_engine("pod-1", endpoint, counters) is None
        counters.set_rates(Served(generation=1000, prompt=4000, waiting=3))
        async with aiohttp.ClientSession() as session:
            url = f"http://{address}:{endpoint.port}"
            first = page(await (await session.get(url + "/metrics")).text())
            await asyncio.sleep(0.3)
            second = page(await (await session.get(url + "/metrics")).text())
            assert (await session.get(url + "/other")).status == 404
        grew = sum(second.generation.values()) - sum(first.generation.values())
        assert 200 <= grew <= 700  # 1000/s over about 0.3 s
        assert second.waiting == 3
        # Another pod cannot take the same address and port: said, not raised.
        clash = await farm.start_engine("pod-2", endpoint, counters)
        assert clash is not None
        assert f"cannot listen on {address}:{endpoint.port}" in clash
        await farm.stop_engine("pod-1")
        assert farm.running == set()
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(f"http://{address}:{endpoint.port}/metrics")
    finally:
        await farm.close()
