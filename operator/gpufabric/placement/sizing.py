"""How many devices one replica needs: model weights plus KV-cache and runtime headroom, per accelerator.

    need_gib    = weights + kv_cache                                  (per replica)
    weights     = parametersBillions × 1e9 × bytes_per_parameter(precision) / 2^30
    kv_cache    = kv_bytes_per_token × contextLength × KV_SEQUENCES / 2^30
    usable_gib  = memoryGiB × GPU_MEMORY_UTILIZATION − RUNTIME_OVERHEAD_GIB   (per device)
    devices     = smallest power of two ≥ need_gib / usable_gib           (a valid tensor-parallel size)

KV bytes per token is vLLM's formula, 2 (K and V) × layers × kv_heads × head_dim × bytes per element
(vllm-project/vllm vllm/v1/kv_cache_interface.py, AttentionSpec.page_size_bytes), when the workload states
its architecture. Otherwise it is estimated from the parameter count (see `estimated_kv_bytes_per_token`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpufabric.api.agentworkload import ModelSpec
from gpufabric.vendors import BYTES_PER_PARAMETER, Precision

GIB = 2**30
# vLLM's default --gpu-memory-utilization (vllm/config/cache.py: "If unspecified, will use the default value
# of 0.9"); what the engine leaves unused for other processes and fragmentation.
GPU_MEMORY_UTILIZATION = 0.9
# ESTIMATE: per-device memory outside weights and KV cache — CUDA/CANN/MUSA context, activation peak, CUDA
# graphs — which vLLM profiles at start-up; 2 GiB covers the 7B-70B models we have seen profiled.
RUNTIME_OVERHEAD_GIB = 2.0
# How many full-context sequences the KV cache must hold at once. vLLM refuses to start unless one fits;
# agents run several long sessions concurrently, so we reserve room for a few.
KV_SEQUENCES = 4
# KV cache elements are kept at 16 bits (vLLM's kv_cache_dtype "auto" follows the model's activation dtype,
# BF16/FP16, also for FP8 and INT8 weight checkpoints).
KV_BYTES_PER_ELEMENT = 2
# ESTIMATE for models without a stated architecture: KV bytes per token ≈ 57,000 × P^0.4 (P in billions) fits
# the grouped-query-attention Llama-3 family (8B: 131,072; 70B: 327,680; 405B: 516,096 bytes at 16 bits,
# from their published configs: layers × 8 KV heads × head_dim 128) within +22 % / -5 %, erring large.
KV_ESTIMATE_COEFFICIENT = 57_000.0
KV_ESTIMATE_EXPONENT = 0.4
MAX_TENSOR_PARALLEL = 1024


@dataclass(frozen=True)
class Sizing:
    """Devices a replica takes on one accelerator model at one precision."""

    devices_per_node: int
    nodes: int
    need_gib: float

    @property
    def devices(self) -> int:
        return self.devices_per_node * self.nodes


def estimated_kv_bytes_per_token(parameters_billions: float) -> float:
    return float(KV_ESTIMATE_COEFFICIENT * parameters_billions**KV_ESTIMATE_EXPONENT)


def kv_bytes_per_token(model: ModelSpec) -> float:
    if model.architecture is not None:
        arch = model.architecture
        return 2.0 * arch.layers * arch.kv_heads * arch.head_dim * KV_BYTES_PER_ELEMENT
    return estimated_kv_bytes_per_token(model.parameters_billions)


def memory_needed_gib(model: ModelSpec, precision: Precision) -> float:
    weights = model.parameters_billions * 1e9 * BYTES_PER_PARAMETER[precision]
    kv_cache = kv_bytes_per_token(model) * model.context_length * KV_SEQUENCES
    return (weights + kv_cache) / GIB


def usable_gib_per_device(memory_gib: float) -> float:
    return memory_gib * GPU_MEMORY_UTILIZATION - RUNTIME_OVERHEAD_GIB


def next_power_of_two(value: int) -> int:
    return 1 if value <= 1 else 1 << (value - 1).bit_length()


def size_replica(
    model: ModelSpec,
    precision: Precision,
    *,
    memory_gib: float,
    node_devices: int,
    nodes_per_replica: int,
    explicit_devices: int | None,
) -> Sizing | None:
    """Devices per node for one replica, or None when it cannot fit on nodes of `node_devices` devices.

    An explicit `devicesPerReplica` is trusted (the user may know their quantisation better than our
    arithmetic) and only split across the nodes; `auto` is sized from memory."""
    need = memory_needed_gib(model, precision)
    if explicit_devices is not None:
        per_node = explicit_devices // nodes_per_replica
    else:
        usable = usable_gib_per_device(memory_gib)
        if usable <= 0:
            return None
        total = max(1, math.ceil(need / usable - 1e-9))
        if total > MAX_TENSOR_PARALLEL * nodes_per_replica:
            return None
        per_node = next_power_of_two(math.ceil(total / nodes_per_replica))
    if per_node < 1 or per_node > node_devices:
        return None
    return Sizing(devices_per_node=per_node, nodes=nodes_per_replica, need_gib=need)


def smallest_fit_devices(model: ModelSpec, precision: Precision, memory_gib: float, nodes_per_replica: int) -> int:
    """Devices per node `auto` sizing asks for, regardless of how many a node has (for explanations)."""
    usable = usable_gib_per_device(memory_gib)
    if usable <= 0:
        return MAX_TENSOR_PARALLEL
    total = max(1, math.ceil(memory_needed_gib(model, precision) / usable - 1e-9))
    return next_power_of_two(math.ceil(total / nodes_per_replica))
