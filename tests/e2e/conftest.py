"""End-to-end tests against a real cluster: they run only when KUBECONFIG names one, and skip cleanly
otherwise (these machines have no cluster; CI elsewhere does)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

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
