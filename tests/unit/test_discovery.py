"""Discovery: ComputeNodes from Nodes' vendor labels and capacity, never overwriting what a user set."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpufabric.api import ComputeNode
from gpufabric.reconcile.discovery import DISCOVERED, create_body, discover, update_patch


def node(name: str, labels: dict[str, str], capacity: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "status": {"capacity": capacity}}


@pytest.mark.parametrize(
    ("labels", "capacity", "spec"),
    [
        (
            {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "gpufabric.io/roce-domain": "a",
            },
            {"nvidia.com/gpu": "8"},
            {
                "nodeName": "n1",
                "vendor": "nvidia",
                "devices": 8,
                "accelerator": "H100-SXM5-80GB",
                "fabric": {"roceDomain": "a"},
            },
        ),
        (
            {"accelerator": "huawei-Ascend910", "node.kubernetes.io/npu.chip.name": "910B3"},
            {"huawei.com/Ascend910": "8"},
            {"nodeName": "n1", "vendor": "ascend", "devices": 8, "accelerator": "Ascend-910B3"},
        ),
        (
            {"mthreads.com/gpu-node": "true", "gpufabric.io/accelerator": "MTT-S4000"},
            {"mthreads.com/gpu": "8"},
            {"nodeName": "n1", "vendor": "mthreads", "devices": 8, "accelerator": "MTT-S4000"},
        ),
        (
            {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": "NVIDIA-RTX-PRO-6000",
                "nvidia.com/gpu.memory": "97887",
            },
            {"nvidia.com/gpu": "4"},
            {
                "nodeName": "n1",
                "vendor": "nvidia",
                "devices": 4,
                "accelerator": "NVIDIA-RTX-PRO-6000",
                "memoryGiB": 95.6,
                "precisions": ["BF16", "FP16"],
            },
        ),
    ],
    ids=["nvidia via GFD", "ascend via the device plugin", "moore threads with our label", "unknown model"],
)
def test_vendor_labels_become_a_valid_compute_node(
    labels: dict[str, str], capacity: dict[str, str], spec: dict[str, Any]
) -> None:
    found = discover(node("n1", labels, capacity))
    assert found is not None
    assert found.problem is None
    assert found.spec == spec
    ComputeNode.model_validate(create_body("n1", found))  # valid as created


def test_nodes_without_a_known_vendor_are_ignored() -> None:
    assert discover(node("cpu-1", {"kubernetes.io/os": "linux"}, {"cpu": "64"})) is None


@pytest.mark.parametrize(
    ("labels", "capacity", "problem"),
    [
        (
            {"mthreads.com/gpu-node": "true"},
            {"mthreads.com/gpu": "8"},
            "Node n1: no label names its Moore Threads accelerator; label it gpufabric.io/accelerator=<model>",
        ),
        (
            {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "H100"},
            {},
            "Node n1 advertises no nvidia.com/gpu",
        ),
    ],
)
def test_what_discovery_cannot_describe_is_said_not_guessed(
    labels: dict[str, str], capacity: dict[str, str], problem: str
) -> None:
    found = discover(node("n1", labels, capacity))
    assert found is not None
    assert found.problem == problem


def test_updates_leave_fields_the_user_set_alone() -> None:
    labels = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H20"}
    first = discover(node("n1", labels, {"nvidia.com/gpu": "8"}))
    assert first is not None
    current = create_body("n1", first)
    current["spec"]["devices"] = 6  # the user holds two GPUs back
    current["spec"]["fabric"] = {"roceDomain": "b"}  # and places the node in the fabric
    later = discover(node("n1", {**labels, "gpufabric.io/roce-domain": "z"}, {"nvidia.com/gpu": "16"}))
    assert later is not None
    assert update_patch(current, later) is None


def test_updates_follow_the_node_where_discovery_owns_the_field() -> None:
    labels = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H20"}
    first = discover(node("n1", labels, {"nvidia.com/gpu": "8"}))
    assert first is not None
    current = create_body("n1", first)
    later = discover(node("n1", labels, {"nvidia.com/gpu": "4"}))
    assert later is not None
    patch = update_patch(current, later)
    assert patch is not None
    assert patch["spec"] == {"devices": 4}
    assert json.loads(patch["metadata"]["annotations"][DISCOVERED])["devices"] == 4
