"""Each cross-field rule is written twice, as CEL for the API server and as Python for the models.
Over many generated objects, both must accept and reject the same ones with the same messages.

One difference is by design: pydantic validates inside out, so when a nested object (say `throughput`)
breaks a rule, the enclosing object's own rules are not evaluated, while the API server evaluates every
level. The models then report a subset of the API server's lines; fixing them reveals the rest."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpufabric.api import crdgen
from gpufabric.api.objects import InvalidObjectError, parse
from gpufabric.vendors import ACCELERATORS, Precision, Vendor
from support.apiserver import SchemaValidator

VALIDATORS = {crd["spec"]["names"]["kind"]: SchemaValidator(crd) for crd in crdgen.all_definitions().values()}
VENDORS = [v.value for v in Vendor]
PRECISIONS = [p.value for p in Precision]


def verdicts(document: dict[str, Any]) -> tuple[list[str], list[str]]:
    api = VALIDATORS[document["kind"]].problems(document)
    try:
        parse(document)
        model: list[str] = []
    except InvalidObjectError as error:
        model = list(error.problems)
    return sorted(api), sorted(model)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def compute_nodes(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": "n1",
        "vendor": draw(st.sampled_from(VENDORS)),
        "accelerator": draw(st.sampled_from([*ACCELERATORS, "MI300X", "Gaudi3"])),
        "devices": draw(st.integers(1, 16)),
    }
    extras = {
        "memoryGiB": draw(optional(st.sampled_from([24, 48.5, 96]))),
        "precisions": draw(optional(st.lists(st.sampled_from(PRECISIONS), min_size=1, max_size=3, unique=True))),
        "rdmaResource": draw(optional(st.just("rdma/rdma_shared_device_a"))),
        "nics": draw(
            optional(
                st.lists(
                    st.builds(lambda i: {"interface": f"eth{i}", "rdmaDevice": f"mlx5_{i}"}, st.integers(0, 3)),
                    max_size=2,
                    unique_by=lambda n: n["interface"],
                )
            )
        ),
    }
    spec.update({k: v for k, v in extras.items() if v is not None})
    return {"apiVersion": "gpufabric.io/v1alpha1", "kind": "ComputeNode", "metadata": {"name": "n1"}, "spec": spec}


@st.composite
def agent_workloads(draw: st.DrawFn) -> dict[str, Any]:
    runtimes = draw(st.lists(st.sampled_from(VENDORS), min_size=1, max_size=3, unique=True))
    spec: dict[str, Any] = {
        "model": {"name": "m", "parametersBillions": 8},
        "runtimes": {v: {"image": "img"} for v in runtimes},
    }
    extras = {
        "vendorPreference": draw(optional(st.lists(st.sampled_from(VENDORS), max_size=3, unique=True))),
        "devicesPerReplica": draw(optional(st.sampled_from(["auto", 1, 2, 3, 4, 8, 12, 16]))),
        "nodesPerReplica": draw(optional(st.integers(1, 4))),
        "throughput": draw(
            optional(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "targetTokensPerSecond": st.sampled_from([100.0, 5000.0]),
                        "minReplicas": st.integers(0, 6),
                        "maxReplicas": st.integers(1, 6),
                    },
                )
            )
        ),
    }
    spec.update({k: v for k, v in extras.items() if v is not None})
    return {
        "apiVersion": "gpufabric.io/v1alpha1",
        "kind": "AgentWorkload",
        "metadata": {"name": "w", "namespace": "ns"},
        "spec": spec,
    }


@settings(max_examples=300, deadline=None)
@given(compute_nodes())
def test_compute_node_rules_agree(document: dict[str, Any]) -> None:
    api, model = verdicts(document)
    # ComputeNodeSpec's rules all sit at one level, so the lists are identical.
    assert api == model


@settings(max_examples=300, deadline=None)
@given(agent_workloads())
def test_agent_workload_rules_agree(document: dict[str, Any]) -> None:
    api, model = verdicts(document)
    assert bool(api) == bool(model)
    nested_broken = any(line.startswith("spec.throughput.") for line in model)
    if nested_broken:
        assert set(model) <= set(api)
    else:
        assert api == model
