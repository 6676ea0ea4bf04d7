"""End-to-end tests against a real cluster: they run only when KUBECONFIG names one, and skip cleanly
otherwise (these machines have no cluster; CI elsewhere does)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def kube() -> Iterator[Any]:
    """An API client for the cluster in KUBECONFIG, or a clean skip."""
    path = os.environ.get("KUBECONFIG")
    if not path or not all(Path(p).is_file() for p in path.split(os.pathsep)):
        pytest.skip("no cluster: set KUBECONFIG to run the e2e tests")
    config.load_kube_config()  # type: ignore[no-untyped-call]
    api: Any = client.ApiClient()
    try:
        client.VersionApi(api).get_code()
    except Exception as error:  # the cluster named is unreachable: say so, do not fail every test
        pytest.skip(f"KUBECONFIG is set but the cluster does not answer: {error}")
    yield api
    api.close()


@pytest.fixture(scope="session")
def crds_installed(kube: Any) -> Any:
    """The generated CRDs, created or replaced on the cluster and Established; returns a custom-objects API."""
    extensions: Any = client.ApiextensionsV1Api(kube)
    names = []
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        names.append(crd["metadata"]["name"])
        try:
            extensions.create_custom_resource_definition(crd)
        except ApiException as error:
            if error.status != 409:
                raise
            current = extensions.read_custom_resource_definition(crd["metadata"]["name"])
            crd["metadata"]["resourceVersion"] = current.metadata.resource_version
            extensions.replace_custom_resource_definition(crd["metadata"]["name"], crd)
    deadline = time.monotonic() + 60
    for name in names:
        while True:
            status = extensions.read_custom_resource_definition(name).status
            conditions = (status.conditions if status else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"{name} never became Established"
            time.sleep(1)
    return client.CustomObjectsApi(kube)
