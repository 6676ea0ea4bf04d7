"""On the real API server: the generated CRDs install with server-side apply and upgrade in place, every
example passes a server-side dry run, and every manifest in tests/invalid/ is refused with exactly the
answer its header states (strict field validation, as kubectl asks for it)."""

from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpufabric.api import AgentWorkload, crdgen
from gpufabric.api.objects import parse
from gpufabric.sandbox.controlplane import ROOT, ControlPlane
from gpufabric.vendors import Vendor
from support.realcluster import GROUP, VERSION, Reader

INVALID = sorted((ROOT / "tests" / "invalid").glob("*.yaml"))
PLURALS = {"ComputeNode": "computenodes", "AgentWorkload": "agentworkloads"}


def ensure_namespace(plane: ControlPlane, name: str) -> None:
    plane.kubectl("create", "namespace", name, check=False)


def test_crds_upgrade_in_place_with_server_side_apply(plane: ControlPlane, crds: None, reader: Reader) -> None:
    """A CRD changed by an upgrade (here: an extra printer column and a new description) is applied over
    the installed one; objects stored before stay readable, and applying today's CRDs again restores
    them without a conflict."""
    node = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ComputeNode",
        "metadata": {"name": "upgrade-probe"},
        "spec": {"nodeName": "upgrade-probe", "vendor": "nvidia", "accelerator": "H100-SXM5-80GB", "devices": 8},
    }
    reader.custom.create_cluster_custom_object(GROUP, VERSION, "computenodes", node)
    try:
        generated = crdgen.all_definitions()["gpufabric.io_computenodes.yaml"]
        upgraded = copy.deepcopy(generated)
        version = upgraded["spec"]["versions"][0]
        version["schema"]["openAPIV3Schema"]["description"] = "An upgraded description."
        version["additionalPrinterColumns"].append({"name": "Rack", "type": "string", "jsonPath": ".spec.fabric.rack"})
        path = plane.directory / "upgraded-crd.json"
        path.write_text(json.dumps(upgraded))
        plane.kubectl("apply", "--server-side", "-f", str(path))
        table = plane.kubectl("get", "cn", "upgrade-probe")
        assert "RACK" in table, table
        plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        table = plane.kubectl("get", "cn", "upgrade-probe")
        assert "RACK" not in table, table
        assert "upgrade-probe" in table, table
        stored = reader.custom.get_cluster_custom_object(GROUP, VERSION, "computenodes", "upgrade-probe")
        assert stored["spec"]["devices"] == 8
        before = reader.custom_resource_definition_generation("computenodes.gpufabric.io")
        plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        assert reader.custom_resource_definition_generation("computenodes.gpufabric.io") == before, (
            "applying the same CRDs again changed them"
        )
    finally:
        reader.custom.delete_cluster_custom_object(GROUP, VERSION, "computenodes", "upgrade-probe")


def test_examples_pass_a_server_side_dry_run(plane: ControlPlane, crds: None) -> None:
    ensure_namespace(plane, "agents")
    output = plane.kubectl("apply", "--server-side", "--dry-run=server", "-R", "-f", str(ROOT / "examples"))
    applied = [line for line in output.splitlines() if "serverside-applied (server dry run)" in line]
    documents = [d for p in sorted((ROOT / "examples").rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert len(applied) == len(documents), output


def causes(error: ApiException) -> list[str]:
    """The API server's answer as the invalid files state it: `field: message` per cause of a 422, or the
    one line of a 400."""
    body = json.loads(error.body or "{}")
    found = (body.get("details") or {}).get("causes") or []
    if found:
        return [f"{cause.get('field', '<nil>')}: {cause['message']}" for cause in found]
    return [f"<request>: {body['message']}"]


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_refused_as_its_header_states(
    plane: ControlPlane, crds: None, admin: client.ApiClient, path: Path
) -> None:
    ensure_namespace(plane, "agents")
    expected = [
        line.removeprefix("# apiserver: ") for line in path.read_text().splitlines() if line.startswith("# apiserver: ")
    ]
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    custom: Any = client.CustomObjectsApi(admin)
    plural = PLURALS[document["kind"]]
    strict = {"dry_run": "All", "field_validation": "Strict"}
    create = (
        partial(custom.create_namespaced_custom_object, GROUP, VERSION, document["metadata"].get("namespace"))
        if document["kind"] == "AgentWorkload"
        else partial(custom.create_cluster_custom_object, GROUP, VERSION)
    )
    with pytest.raises(ApiException) as caught:
        create(plural, document, **strict)
    assert caught.value.status == (400 if expected[0].startswith("<request>") else 422)
    assert causes(caught.value) == expected


def test_a_null_the_schema_does_not_allow_is_pruned_as_the_models_prune_it(
    plane: ControlPlane, crds: None, admin: client.ApiClient
) -> None:
    """`replicas: null` means the default and `labels: {a: null}` drops the label, on the server as in
    `gpufabric validate`; a null the schema allows (nullable) stays null."""
    ensure_namespace(plane, "agents")
    document: dict[str, Any] = {
        "apiVersion": "gpufabric.io/v1alpha1",
        "kind": "AgentWorkload",
        "metadata": {"name": "nulls", "namespace": "agents"},
        "spec": {
            "model": {"name": "m", "parametersBillions": 8, "contextLength": None},
            "replicas": None,
            "vendorPreference": None,
            "runtimes": {"nvidia": {"image": "vllm/vllm-openai:v0.11.0", "port": None}},
            "placement": {"nodeSelector": {"matchLabels": {"pool": None, "zone": "a"}}},
        },
    }
    custom: Any = client.CustomObjectsApi(admin)
    stored = custom.create_namespaced_custom_object(
        GROUP, VERSION, "agents", "agentworkloads", copy.deepcopy(document), dry_run="All", field_validation="Strict"
    )
    parsed = parse(document)
    assert isinstance(parsed, AgentWorkload)
    assert stored["spec"]["replicas"] == parsed.spec.replicas == 1
    assert stored["spec"]["model"]["contextLength"] == parsed.spec.model.context_length
    assert stored["spec"]["runtimes"]["nvidia"]["port"] == parsed.spec.runtimes[Vendor.NVIDIA].port
    assert stored["spec"]["placement"]["nodeSelector"]["matchLabels"] == {"zone": "a"}
    assert parsed.spec.placement is not None
    assert parsed.spec.placement.node_selector is not None
    assert parsed.spec.placement.node_selector.match_labels == {"zone": "a"}
    assert stored["spec"]["vendorPreference"] is None
    assert parsed.spec.vendor_preference is None
