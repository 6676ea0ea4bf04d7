"""On a real API server: the generated CRDs install, every example is accepted (server-side dry run), and
every manifest in tests/invalid/ is refused with the field path and message its header states."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpufabric.manifests import manifest_files

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "gpufabric.io", "v1alpha1"
PLURALS = {"ComputeNode": "computenodes", "AgentWorkload": "agentworkloads"}


def dry_run_create(objects: Any, document: dict[str, Any]) -> None:
    plural = PLURALS[document["kind"]]
    if document["kind"] == "AgentWorkload":
        namespace = document["metadata"].get("namespace", "default")
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, document, dry_run="All")
    else:
        objects.create_cluster_custom_object(GROUP, VERSION, plural, document, dry_run="All")


def ensure_namespace(kube: Any, name: str) -> None:
    try:
        client.CoreV1Api(kube).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except ApiException as error:
        if error.status != 409:
            raise


def test_examples_are_accepted(kube: Any, crds_installed: Any) -> None:
    ensure_namespace(kube, "agents")
    for path in manifest_files([ROOT / "examples"]):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document["apiVersion"].startswith(GROUP):
                dry_run_create(crds_installed, document)


@pytest.mark.parametrize("path", sorted((ROOT / "tests" / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_manifest_is_refused_with_its_field_path(kube: Any, crds_installed: Any, path: Path) -> None:
    ensure_namespace(kube, "agents")
    expected = [
        line.removeprefix("# apiserver: ")
        for line in path.read_text().splitlines()
        if line.startswith("# apiserver: ") and not line.startswith("# apiserver: <root>")
    ]
    with pytest.raises(ApiException) as caught:
        dry_run_create(crds_installed, yaml.safe_load(path.read_text()))
    assert caught.value.status == 422
    message = json.loads(caught.value.body or "{}")["message"]
    for line in expected:
        field, _, text = line.partition(": ")
        assert field in message, f"{path.name}: the API server did not name {field}: {message}"
        if not _is_jsonschema_wording(text):
            # Our own CEL messages must arrive verbatim; schema wording is the API server's own.
            assert text in message, f"{path.name}: expected {text!r} in {message!r}"


def _is_jsonschema_wording(text: str) -> bool:
    return any(
        marker in text
        for marker in (
            "is not of type",
            "is not one of",
            "does not match",
            "is less than",
            "is a required property",
            "should be non-empty",
            "Duplicate value",
            "Additional properties",
        )
    )
