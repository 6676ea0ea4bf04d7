"""Predicted tokens/s of a replica: the number placement maximises.

Per-device throughput comes from a `ThroughputSource`. `PriorThroughput` reads the vendor table's priors
(published or estimated figures); the metrics layer supplies measured ones through the same protocol once
it has enough samples, and placement then maximises measured throughput without knowing the difference.
"""

from __future__ import annotations

import math
from typing import Protocol

from gpufabric.vendors import PRECISION_SPEEDUP, AcceleratorFacts, Precision

# ESTIMATE: tensor parallelism loses throughput to all-reduce; published vLLM/TensorRT-LLM TP sweeps lose
# roughly 5-15 % per doubling on NVLink systems. We take 10 % per doubling.
TENSOR_PARALLEL_EFFICIENCY_PER_DOUBLING = 0.9
# ESTIMATE: a replica split across nodes pays RoCE latency on every pipeline/tensor exchange.
CROSS_NODE_EFFICIENCY = 0.8


class ThroughputSource(Protocol):
    """Generation tokens/s one device of `accelerator` sustains for a dense model of `parameters_billions`
    at `precision`, or None when the source knows nothing about it."""

    def per_device(self, accelerator: str, precision: Precision, parameters_billions: float) -> float | None: ...


class PriorThroughput:
    """Scales the vendor table's prior to the model: decode throughput is roughly inverse to parameter count
    (weights read per token) and grows with cheaper formats by PRECISION_SPEEDUP."""

    def __init__(self, accelerators: dict[str, AcceleratorFacts]) -> None:
        self._accelerators = accelerators

    def per_device(self, accelerator: str, precision: Precision, parameters_billions: float) -> float | None:
        facts = self._accelerators.get(accelerator)
        if facts is None:
            return None
        prior = facts.prior
        scale = prior.parameters_billions / parameters_billions
        return prior.tokens_per_second * scale * PRECISION_SPEEDUP[precision] / PRECISION_SPEEDUP[prior.precision]


# What a device of an accelerator the table does not know is assumed to do, relative to its memory: the
# table's least efficient known part, ESTIMATE, so unknown hardware is never preferred by accident.
UNKNOWN_ACCELERATOR_TOKENS_PER_GIB = 10.0


def replica_tokens_per_second(
    source: ThroughputSource,
    *,
    accelerator: str,
    memory_gib: float,
    precision: Precision,
    parameters_billions: float,
    devices_per_node: int,
    nodes: int,
) -> float:
    per_device = source.per_device(accelerator, precision, parameters_billions)
    if per_device is None:
        per_device = UNKNOWN_ACCELERATOR_TOKENS_PER_GIB * memory_gib * 8.0 / parameters_billions
    devices = devices_per_node * nodes
    efficiency = TENSOR_PARALLEL_EFFICIENCY_PER_DOUBLING ** math.log2(devices) if devices > 1 else 1.0
    if nodes > 1:
        efficiency *= CROSS_NODE_EFFICIENCY
    return per_device * devices * efficiency
