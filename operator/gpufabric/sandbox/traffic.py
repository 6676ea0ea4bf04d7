"""The simulated agent traffic and what each replica's engine serves of it: pure functions, no I/O.

Demand is generation tokens/s the clients of a workload ask for; a load balancer spreads it evenly over the
workload's Ready replicas. A replica serves its share up to its capacity; the rest queues (the engine's
waiting-requests gauge goes above zero, which is how the operator tells a saturated replica). Capacity is
the throughput model's figure for the replica's accelerator, precision, devices and model size (the same
`replica_tokens_per_second` placement uses) times a hidden per-accelerator factor: real hardware never does
exactly what the prior says, so the operator's learning loop has something to learn.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpufabric.placement.estimates import PriorThroughput, replica_tokens_per_second
from gpufabric.vendors import ACCELERATORS, Precision

# Agents send long prompts (tool results, retrieved documents, the conversation so far) and get short
# answers: about four prompt tokens per generated one.
PROMPT_TOKENS_PER_GENERATED = 4.0
# Requests in flight per replica at saturation; the excess share queues as this many requests per unit of
# capacity (only the sign matters to the operator, the number is for people reading /metrics).
BATCH_REQUESTS = 32
# How far the simulated hardware may be from the prior: each accelerator's factor is drawn once per run.
TRUTH_SPREAD = 0.2
# A workload the scenario gives no demand asks for this share of what its replicas can serve.
DEFAULT_UTILISATION = 0.6


@dataclass(frozen=True)
class Served:
    """What one replica's engine does per second, now."""

    generation: float
    prompt: float
    waiting: float  # requests queued


@dataclass(frozen=True)
class Surge:
    start: float
    end: float
    factor: float


def demand_at(elapsed: float, baseline: float, surges: Sequence[Surge]) -> float:
    """The workload's demand at `elapsed` seconds: the baseline times every surge in force (they multiply)."""
    factor = math.prod(s.factor for s in surges if s.start <= elapsed < s.end)
    return baseline * factor


@dataclass(frozen=True)
class Hardware:
    """How the simulated accelerators really perform, relative to the throughput model's prior."""

    factors: Mapping[str, float]

    @classmethod
    def drawn(cls, rng: random.Random) -> Hardware:
        return cls({name: 1.0 + rng.uniform(-TRUTH_SPREAD, TRUTH_SPREAD) for name in sorted(ACCELERATORS)})

    def replica_capacity(
        self,
        *,
        accelerator: str,
        precision: Precision,
        parameters_billions: float,
        devices_per_node: int,
        nodes: int,
    ) -> float:
        facts = ACCELERATORS.get(accelerator)
        predicted = replica_tokens_per_second(
            PriorThroughput(dict(ACCELERATORS)),
            accelerator=accelerator,
            memory_gib=facts.memory_gib if facts else 32.0,
            precision=precision,
            parameters_billions=parameters_billions,
            devices_per_node=devices_per_node,
            nodes=nodes,
        )
        return predicted * self.factors.get(accelerator, 1.0)


def serve(demand: float, capacities: Sequence[float], noise: float, rng: random.Random) -> list[Served]:
    """Each Ready replica's engine: an even share of the demand, served up to its capacity (with noise on
    what it does), the excess queued."""
    if not capacities:
        return []
    share = max(demand, 0.0) / len(capacities)
    result = []
    for capacity in capacities:
        jitter = 1.0 + rng.uniform(-noise, noise) if noise > 0 else 1.0
        generation = min(share, capacity) * jitter
        excess = share - capacity
        waiting = math.ceil(BATCH_REQUESTS * excess / capacity) if excess > 0 and capacity > 0 else 0
        result.append(Served(generation, generation * PROMPT_TOKENS_PER_GENERATED, float(waiting)))
    return result
