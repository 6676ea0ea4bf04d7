"""Sizing: devices per replica from model size, precision, context and device memory."""

from __future__ import annotations

import pytest

from gpufabric.api.agentworkload import ModelSpec
from gpufabric.placement.sizing import (
    estimated_kv_bytes_per_token,
    kv_bytes_per_token,
    memory_needed_gib,
    next_power_of_two,
    size_replica,
)
from gpufabric.vendors import Precision


def model(params: float, context: int = 32768, **arch: int) -> ModelSpec:
    body: dict[str, object] = {"name": "m", "parametersBillions": params, "contextLength": context}
    if arch:
        body["architecture"] = {"layers": arch["layers"], "kvHeads": arch["kv_heads"], "headDim": arch["head_dim"]}
    return ModelSpec.model_validate(body)


@pytest.mark.parametrize(
    ("case", "params", "precision", "memory", "devices", "expected"),
    [
        ("70B at FP8 fits two 80 GB devices", 70.6, Precision.FP8, 80, 8, 2),
        ("70B at BF16 needs four 80 GB devices", 70.6, Precision.BF16, 80, 8, 4),
        ("70B at FP8 fits one 180 GB B200", 70.6, Precision.FP8, 180, 8, 1),
        ("8B at BF16 fits one 48 GB MTT S4000", 8, Precision.BF16, 48, 8, 1),
        ("32B at BF16 on 64 GB Ascend needs two", 32.8, Precision.BF16, 64, 8, 2),
        ("70B at INT8 on 32 GB Ascend 910B4 needs four", 70.6, Precision.INT8, 32, 8, 4),
        ("120B at FP4 fits one B200", 120, Precision.FP4, 180, 8, 1),
        ("405B at BF16 does not fit one node of eight 80 GB devices", 405, Precision.BF16, 80, 8, None),
        ("a 4-device node cannot take a replica sized to 8", 70.6, Precision.BF16, 48, 4, None),
    ],
)
def test_auto_sizing(
    case: str, params: float, precision: Precision, memory: float, devices: int, *, expected: int | None
) -> None:
    sizing = size_replica(
        model(params), precision, memory_gib=memory, node_devices=devices, nodes_per_replica=1, explicit_devices=None
    )
    assert (sizing.devices_per_node if sizing else None) == expected, case


def test_gang_sizing_splits_evenly_across_nodes() -> None:
    # 405B at BF16 with 64k context: 754 GiB of weights + 154 GiB of KV cache = 13 devices of 70 usable GiB,
    # 7 per node, rounded to a tensor-parallel size of 8 per node.
    sizing = size_replica(
        model(405, 65536), Precision.BF16, memory_gib=80, node_devices=8, nodes_per_replica=2, explicit_devices=None
    )
    assert sizing is not None
    assert (sizing.devices_per_node, sizing.nodes, sizing.devices) == (8, 2, 16)
    # At FP8 the same model needs 8 devices in all: 4 per node.
    fp8 = size_replica(
        model(405, 65536), Precision.FP8, memory_gib=80, node_devices=8, nodes_per_replica=2, explicit_devices=None
    )
    assert fp8 is not None
    assert fp8.devices_per_node == 4


def test_explicit_devices_are_trusted_and_split() -> None:
    sizing = size_replica(
        model(405), Precision.BF16, memory_gib=80, node_devices=8, nodes_per_replica=2, explicit_devices=16
    )
    assert sizing is not None
    assert sizing.devices_per_node == 8
    too_many = size_replica(
        model(8), Precision.BF16, memory_gib=80, node_devices=8, nodes_per_replica=1, explicit_devices=16
    )
    assert too_many is None


def test_kv_cache_uses_the_stated_architecture() -> None:
    # Llama-3-70B: 80 layers, 8 KV heads, head_dim 128 -> 327,680 bytes per token at 16 bits (vLLM's formula).
    assert kv_bytes_per_token(model(70.6, layers=80, kv_heads=8, head_dim=128)) == 327_680


@pytest.mark.parametrize(("params", "published"), [(8, 131_072), (70, 327_680), (405, 516_096)])
def test_kv_estimate_tracks_the_llama3_family_within_its_documented_error(params: float, published: int) -> None:
    ratio = estimated_kv_bytes_per_token(params) / published
    assert 0.95 <= ratio <= 1.22


def test_memory_grows_with_context() -> None:
    assert memory_needed_gib(model(8, 131072), Precision.BF16) > memory_needed_gib(model(8, 4096), Precision.BF16)


@pytest.mark.parametrize(("value", "expected"), [(0, 1), (1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16)])
def test_tensor_parallel_sizes_are_powers_of_two(value: int, expected: int) -> None:
    assert next_power_of_two(value) == expected
