"""Every example is accepted by the CRDs (schema and CEL) and by the models, and describes the fleet the
README promises."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufabric.api import AgentWorkloadSpec, ComputeNodeSpec, crdgen
from gpufabric.manifests import load, manifest_files
from support.apiserver import SchemaValidator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VALIDATORS = {crd["spec"]["names"]["kind"]: SchemaValidator(crd) for crd in crdgen.all_definitions().values()}


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in manifest_files([EXAMPLES]):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document and document.get("apiVersion", "").startswith("gpufabric.io/"):
                documents.append((f"{path.relative_to(EXAMPLES)}#{index}", document))
    return documents


@pytest.mark.parametrize(("where", "document"), example_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_example_is_accepted_by_the_crd(where: str, document: dict[str, Any]) -> None:
    assert VALIDATORS[document["kind"]].validate(document) == []


def test_examples_load_as_models() -> None:
    fleet = load([EXAMPLES])
    by_domain = Counter((n.spec.roce_domain, n.spec.accelerator) for n in fleet.nodes)
    assert by_domain == {
        ("a", "H100-SXM5-80GB"): 8,
        ("a", "B200"): 4,
        ("b", "Ascend-910B3"): 4,
        ("c", "MTT-S4000"): 4,
    }
    workloads = {w.name: w.spec for w in fleet.workloads}
    assert set(workloads) == {"agent-small", "reasoning-70b", "frontier-405b", "support-agent", "code-agent"}
    assert len(workloads["agent-small"].runtimes) == 3
    assert workloads["reasoning-70b"].precisions[0].value == "FP8"
    assert workloads["frontier-405b"].nodes_per_replica == 2
    assert workloads["support-agent"].throughput is not None
    assert workloads["support-agent"].throughput.target_tokens_per_second == 20000


def test_readme_documents_every_spec_field() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    missing = [
        f"{model.__name__}.{field.alias}"
        for model in (ComputeNodeSpec, AgentWorkloadSpec)
        for field in model.model_fields.values()
        if f"`spec.{field.alias}`" not in readme
    ]
    assert not missing, f"README's API reference lacks {missing}"
