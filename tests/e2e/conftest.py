"""The suite on a real Kubernetes v1.36 control plane (tests/support/controlplane.py): etcd, kube-apiserver,
kube-scheduler and kube-controller-manager on loopback, started once for the session and always stopped.

It runs in every `make test` when the binaries can be found ($KUBEBUILDER_ASSETS, .tools/,
../shared/kube/); otherwise its tests are left out (deselected) and one line at the end of the run names
what is missing. `make e2e` runs it alone. Each check that measures something records it with `report`;
the measurements are printed at the end of the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gpufabric.sandbox.controlplane import (
    ROOT,
    ControlPlane,
    ControlPlaneUnavailableError,
    find_binaries,
    interrupted_by_sigterm,
)
from gpufabric.sandbox.standin_kubelet import StandInKubelet
from support import helm
from support.realcluster import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, OPERATOR_USER, Reader, api_client

MEASURED: list[tuple[str, float, str]] = []
UNAVAILABLE: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks the suite's tests e2e; without the binaries, leaves them out and says why in one line."""
    ours = [item for item in items if Path(str(item.fspath)).is_relative_to(Path(__file__).parent)]
    for item in ours:
        item.add_marker(pytest.mark.e2e)
    if not ours:
        return
    try:
        find_binaries()
    except ControlPlaneUnavailableError as error:
        UNAVAILABLE.append(f"{len(ours)} tests on the real control plane not run: {error}")
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in UNAVAILABLE:
        terminalreporter.write_line(line, yellow=True, bold=True)
    if MEASURED:
        terminalreporter.section("measured on the real control plane")
        for what, value, unit in MEASURED:
            terminalreporter.write_line(f"{value:9.1f} {unit:<6} {what}")


@pytest.fixture(scope="session")
def report() -> Any:
    """`report(what, value, unit="s")` records a measurement for the end-of-run table."""

    def record(what: str, value: float, unit: str = "s") -> None:
        MEASURED.append((what, value, unit))
        print(f"{what}: {value:.1f} {unit}")

    return record


@pytest.fixture(scope="session")
def plane(report: Any) -> Iterator[ControlPlane]:
    binaries = find_binaries()  # collection left the suite out if they cannot be found
    started = time.monotonic()
    with interrupted_by_sigterm(), ControlPlane(binaries, audited_users=(OPERATOR_USER,)) as control_plane:
        report("control plane up (etcd, API server, scheduler, controller manager)", time.monotonic() - started)
        yield control_plane


@pytest.fixture(scope="session")
def admin(plane: ControlPlane) -> Iterator[client.ApiClient]:
    api = api_client(plane.admin_kubeconfig)
    yield api
    api.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def reader(admin: client.ApiClient) -> Reader:
    return Reader(admin)


@pytest.fixture(scope="session")
def crds(plane: ControlPlane) -> None:
    """The generated CRDs, applied as a user applies them (server-side) and Established."""
    plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/computenodes.gpufabric.io",
        "crd/agentworkloads.gpufabric.io",
    )


@pytest.fixture(scope="session")
def kubelet(plane: ControlPlane) -> Iterator[StandInKubelet]:
    stand_in = StandInKubelet(api_client(plane.admin_kubeconfig))
    stand_in.start()
    yield stand_in
    stand_in.stop()
    assert stand_in.errors == [], stand_in.errors


@pytest.fixture(scope="session")
def operator_kubeconfig(plane: ControlPlane, crds: None) -> Path:
    """The operator's own identity, installed the way users install it: `helm install` of the chart into a
    namespace that enforces the restricted Pod Security Standard (no operator pod: replicaCount 0, since the
    suite runs the operator itself; CRDs applied by `crds`). So the ServiceAccount and the RBAC that the
    story proves necessary and sufficient are the chart's. Logged in with a token from the TokenRequest API
    (`kubectl create token`), as the pod's projected token would be."""
    plane.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    plane.kubectl("label", "namespace", OPERATOR_NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    values = {"replicaCount": 0, "crds": {"install": False}, "operator": {"discoverNodes": True}}
    helm.on_cluster(
        plane.admin_kubeconfig,
        "install",
        OPERATOR_ACCOUNT,  # release name = the chart's full name = the ServiceAccount's name
        str(helm.CHART),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--wait",
        "--timeout=60s",
        values=values,
        tmp=plane.directory,
    )
    token = plane.kubectl("create", "token", OPERATOR_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=2h").strip()
    return plane.kubeconfig_for_token(token, name="operator")


def apply_documents(plane: ControlPlane, documents: list[dict[str, Any]]) -> None:
    path = plane.directory / f"apply-{time.monotonic_ns()}.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}))
    plane.kubectl("apply", "--server-side", "-f", str(path))
