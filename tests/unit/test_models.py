"""The API models: defaults from the vendor table, selectors, preference order, wire round trips."""

from __future__ import annotations

from typing import Any

import pytest

from gpufabric.api import AgentWorkload, ComputeNode, crdgen
from gpufabric.api.common import PATTERN_MEANINGS, LabelSelector
from gpufabric.api.objects import InvalidObjectError, parse
from gpufabric.vendors import Precision, Vendor


def node(**spec: Any) -> ComputeNode:
    base = {"nodeName": "n1", "vendor": "nvidia", "accelerator": "H100-SXM5-80GB", "devices": 8}
    return ComputeNode.model_validate(
        {
            "apiVersion": "gpufabric.io/v1alpha1",
            "kind": "ComputeNode",
            "metadata": {"name": "n1"},
            "spec": {**base, **spec},
        }
    )


def workload(**spec: Any) -> AgentWorkload:
    base = {"model": {"name": "m", "parametersBillions": 8}, "runtimes": {"nvidia": {"image": "vllm"}}}
    return AgentWorkload.model_validate(
        {
            "apiVersion": "gpufabric.io/v1alpha1",
            "kind": "AgentWorkload",
            "metadata": {"name": "w"},
            "spec": {**base, **spec},
        }
    )


def test_known_accelerator_takes_memory_and_precisions_from_the_table() -> None:
    spec = node().spec
    assert spec.memory_per_device_gib == 80
    assert spec.supported_precisions == {Precision.FP8, Precision.INT8, Precision.BF16, Precision.FP16}
    assert spec.device_resource_name == "nvidia.com/gpu"


def test_declared_values_override_the_table() -> None:
    spec = node(memoryGiB=94, precisions=["BF16"], resourceName="nvidia.com/gpu-h100").spec
    assert spec.memory_per_device_gib == 94
    assert spec.supported_precisions == {Precision.BF16}
    assert spec.device_resource_name == "nvidia.com/gpu-h100"


def test_unknown_accelerator_is_accepted_with_its_facts_declared() -> None:
    spec = node(accelerator="RTX-6000-Ada", memoryGiB=48, precisions=["FP8", "BF16"]).spec
    assert spec.memory_per_device_gib == 48


@pytest.mark.parametrize(
    ("vendor", "accelerator", "resource"),
    [
        ("nvidia", "H20", "nvidia.com/gpu"),
        ("mthreads", "MTT-S4000", "mthreads.com/gpu"),
        ("ascend", "Ascend-910B3", "huawei.com/Ascend910"),
    ],
)
def test_resource_name_defaults_per_vendor(vendor: str, accelerator: str, resource: str) -> None:
    assert node(vendor=vendor, accelerator=accelerator).spec.device_resource_name == resource


def test_selection_labels_lay_spec_labels_over_metadata_labels() -> None:
    cn = ComputeNode.model_validate(
        {
            "metadata": {"name": "n1", "labels": {"pool": "meta", "zone": "z1"}},
            "spec": {
                "nodeName": "n1",
                "vendor": "nvidia",
                "accelerator": "H20",
                "devices": 8,
                "labels": {"pool": "spec"},
            },
        }
    )
    assert cn.selection_labels == {"pool": "spec", "zone": "z1"}


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {}, True),
        ({"matchLabels": {"pool": "h100"}}, {"pool": "h100"}, True),
        ({"matchLabels": {"pool": "h100"}}, {"pool": "b200"}, False),
        ({"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a", "b"]}]}, {"pool": "b"}, True),
        ({"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}, {}, False),
        ({"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["a"]}]}, {"pool": "a"}, False),
        ({"matchExpressions": [{"key": "spot", "operator": "Exists"}]}, {"spot": ""}, True),
        ({"matchExpressions": [{"key": "spot", "operator": "DoesNotExist"}]}, {"spot": ""}, False),
    ],
)
def test_label_selector_has_kubernetes_semantics(
    selector: dict[str, Any], labels: dict[str, str], matches: bool
) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is matches


def test_vendor_order_puts_preferences_first_then_the_rest_in_table_order() -> None:
    spec = workload(
        runtimes={"nvidia": {"image": "a"}, "ascend": {"image": "b"}, "mthreads": {"image": "c"}},
        vendorPreference=["ascend"],
    ).spec
    assert spec.vendor_order == (Vendor.ASCEND, Vendor.NVIDIA, Vendor.MTHREADS)


def test_workload_defaults() -> None:
    spec = workload().spec
    assert spec.replicas == 1
    assert spec.devices_per_replica == "auto"
    assert spec.nodes_per_replica == 1
    assert spec.precisions == [Precision.BF16, Precision.FP16]
    assert spec.model.context_length == 8192
    (vendor,) = spec.runtimes
    assert spec.runtimes[vendor].engine == "custom", "manifests written before engines keep their command"
    assert spec.metrics_for(vendor).generation_tokens_counter == "vllm:generation_tokens_total"


@pytest.mark.parametrize(
    ("engine", "vendor", "counters"),
    [
        ("vllm", "ascend", ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_waiting")),
        ("sglang", "nvidia", ("sglang:prompt_tokens_total", "sglang:generation_tokens_total", "sglang:num_queue_reqs")),
        ("mindie", "ascend", ("prompt_tokens_total", "generation_tokens_total", "num_requests_waiting")),
    ],
)
def test_metric_names_come_from_the_engine_unless_overridden(
    engine: str, vendor: str, counters: tuple[str, ...]
) -> None:
    spec = workload(runtimes={vendor: {"image": "i", "engine": engine}}).spec
    resolved = spec.metrics_for(Vendor(vendor))
    assert (resolved.prompt_tokens_counter, resolved.generation_tokens_counter, resolved.waiting_requests_gauge) == (
        counters
    )
    assert (resolved.port, resolved.path) == (8000, "/metrics")
    overridden = workload(
        runtimes={vendor: {"image": "i", "engine": engine, "metrics": {"waitingRequestsGauge": "mine", "port": 9000}}},
        metrics={"waitingRequestsGauge": "everywhere", "path": "/stats"},
    ).spec.metrics_for(Vendor(vendor))
    assert (overridden.waiting_requests_gauge, overridden.port, overridden.path) == ("mine", 9000, "/stats")
    assert overridden.generation_tokens_counter == counters[1]


def test_wire_round_trip_keeps_every_field() -> None:
    original = workload(devicesPerReplica=16, nodesPerReplica=2, placement={"roceDomains": ["a"], "spread": "None"})
    again = AgentWorkload.model_validate(original.wire())
    assert again == original
    assert original.wire()["spec"]["devicesPerReplica"] == 16


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(InvalidObjectError) as caught:
        parse(workload().wire() | {"spec": {**workload().wire()["spec"], "devicesPerReplica": True}})
    assert caught.value.problems == ("spec.devicesPerReplica: must be 'auto' or an integer from 1 to 512",)


def test_wrong_api_version_and_kind_are_named() -> None:
    with pytest.raises(InvalidObjectError, match=r"apiVersion: Unsupported value: 'gpufabric.io/v1'"):
        parse({"apiVersion": "gpufabric.io/v1", "kind": "ComputeNode", "metadata": {"name": "x"}})
    with pytest.raises(InvalidObjectError, match=r"kind: Unsupported value: 'GpuNode'"):
        parse({"apiVersion": "gpufabric.io/v1alpha1", "kind": "GpuNode", "metadata": {"name": "x"}})


def test_every_problem_is_reported_at_once() -> None:
    document = workload().wire()
    document["spec"]["replicas"] = -1
    document["spec"]["nodesPerReplica"] = 0
    document["spec"]["model"]["parametersBillions"] = "big"
    with pytest.raises(InvalidObjectError) as caught:
        parse(document)
    paths = sorted(problem.split(":")[0] for problem in caught.value.problems)
    assert paths == ["spec.model.parametersBillions", "spec.nodesPerReplica", "spec.replicas"]


def _patterns(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return found + [p for child in node.values() for p in _patterns(child)]
    if isinstance(node, list):
        return [p for child in node for p in _patterns(child)]
    return []


def test_every_pattern_in_the_crds_is_explained_in_words() -> None:
    """A refused value is answered with what is allowed, never with a regular expression."""
    patterns = {p for crd in crdgen.all_definitions().values() for p in _patterns(crd)}
    assert patterns
    unexplained = sorted(patterns - set(PATTERN_MEANINGS))
    assert not unexplained, f"patterns without words in api/common.PATTERN_MEANINGS: {unexplained}"


def test_a_pattern_mismatch_says_what_is_allowed() -> None:
    with pytest.raises(InvalidObjectError) as caught:
        parse(
            {
                "apiVersion": "gpufabric.io/v1alpha1",
                "kind": "ComputeNode",
                "metadata": {"name": "n"},
                "spec": {"nodeName": "N_1", "vendor": "nvidia", "accelerator": "B200", "devices": 8},
            }
        )
    (problem,) = caught.value.problems
    assert problem.startswith("spec.nodeName: must be a DNS subdomain: lowercase letters")
    assert "^[" not in problem
