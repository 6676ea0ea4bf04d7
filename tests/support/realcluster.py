"""Helpers for the suite on the real control plane (tests/e2e): the operator started as a user starts it
(the `gpufabric` console script, a kubeconfig, nothing injected), the example fleet applied with kubectl,
a pod timeline recorded from a watch, and waiting with a measured time.

Everything here speaks to the API server over HTTPS with the client a user would use (kubectl, or the
official Python client for reads).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from gpufabric.api.computenode import ComputeNode
from gpufabric.sandbox.controlplane import ROOT, ControlPlane, die_with_parent
from gpufabric.sandbox.standin_kubelet import StandInKubelet, node_for

T = TypeVar("T")
GROUP: Final = "gpufabric.io"
VERSION: Final = "v1alpha1"
OPERATOR_NAMESPACE: Final = "gpufabric-system"
OPERATOR_ACCOUNT: Final = "gpu-fabric-operator"
OPERATOR_USER: Final = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
CONSOLE_SCRIPT: Final = Path(sys.executable).with_name("gpufabric")
MANAGED: Final = "app.kubernetes.io/managed-by=gpu-fabric-operator"


def api_client(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
    )
    return client.ApiClient(configuration)


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.2) -> tuple[T, float]:
    """Poll `check` until it returns something truthy; returns it and the seconds it took."""
    started = time.monotonic()
    last: Any = None
    while True:
        try:
            last = check()
        except ApiException as error:
            last = f"{error.status} {error.reason}"
        except OSError as error:  # an endpoint not listening yet
            last = repr(error)
        else:
            if last:
                return last, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r:.500})")
        time.sleep(interval)


# --- the operator as users run it -------------------------------------------------------------------------


@dataclass
class OperatorProcess:
    """`gpufabric operator ...` in a child process; its log is kept in `log_path`."""

    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "operator", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 -- no operator outlives the test run, however it ends
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release — a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


def run_operator(args: list[str], log_path: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`gpufabric operator ...` expected to exit by itself (a refused start)."""
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "operator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


# --- the fleet ------------------------------------------------------------------------------------------


def example_documents() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted((ROOT / "examples").rglob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def add_nodes_for(kubelet: StandInKubelet, documents: list[dict[str, Any]]) -> list[str]:
    """A Node per ComputeNode, advertising what its device plugins would."""
    names = []
    for document in documents:
        if document["kind"] == "ComputeNode":
            name, allocatable = node_for(ComputeNode.model_validate(document))
            kubelet.add_node(name, allocatable)
            names.append(name)
    return names


# --- reading ----------------------------------------------------------------------------------------------


@dataclass
class Reader:
    """Reads as the admin, through the official client."""

    api: client.ApiClient
    core: Any = field(init=False)
    custom: Any = field(init=False)

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def workload(self, namespace: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "agentworkloads", name
        )
        return found

    def workloads(self, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "agentworkloads"
        )["items"]
        return items

    def compute_nodes(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.custom.list_cluster_custom_object(GROUP, VERSION, "computenodes")["items"]
        return items

    def pods(self, namespace: str, selector: str = MANAGED) -> list[Any]:
        items: list[Any] = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return items

    def services(self, namespace: str, selector: str = MANAGED) -> list[Any]:
        items: list[Any] = self.core.list_namespaced_service(namespace, label_selector=selector).items
        return items

    def custom_resource_definition_generation(self, name: str) -> int:
        crd: Any = client.ApiextensionsV1Api(self.api).read_custom_resource_definition(name)
        return int(crd.metadata.generation)

    @staticmethod
    def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
        for condition in (body.get("status") or {}).get("conditions") or []:
            if condition["type"] == kind:
                return dict(condition)
        return {}

    def workload_ready(self, namespace: str, name: str) -> bool:
        body = self.workload(namespace, name)
        status = body.get("status") or {}
        return bool(
            status.get("observedGeneration") == body["metadata"]["generation"]
            and status.get("readyReplicas") == body["spec"]["replicas"]
            and len(status.get("placements") or []) == body["spec"]["replicas"]
            and self.condition(body, "Ready").get("status") == "True"
        )


def pod_is_ready(pod: Any) -> bool:
    return bool(
        pod.status
        and pod.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    )


# --- a watch that records the order of things -------------------------------------------------------------


@dataclass(frozen=True)
class PodEvent:
    kind: str  # ADDED, MODIFIED, DELETED
    name: str
    uid: str
    node: str | None
    ready: bool
    terminating: bool


class PodTimeline:
    """Every pod event in a namespace, in the API server's (etcd revision) order, from a watch thread.

    The order is exact where timestamps (second resolution) are not: it shows whether a replacement was
    Ready before the pod it replaces began terminating."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core: Any = client.CoreV1Api(api)
        self.namespace = namespace
        self.events: list[PodEvent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pod-timeline-{namespace}", daemon=True)

    def __enter__(self) -> PodTimeline:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        version = None
        while not self._stop.is_set():
            if version is None:
                version = self.core.list_namespaced_pod(self.namespace).metadata.resource_version
            stream: Any = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in stream.stream(
                    self.core.list_namespaced_pod, self.namespace, resource_version=version, timeout_seconds=2
                ):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self.events.append(
                        PodEvent(
                            event["type"],
                            pod.metadata.name,
                            pod.metadata.uid,
                            pod.spec.node_name,
                            pod_is_ready(pod),
                            pod.metadata.deletion_timestamp is not None,
                        )
                    )
                    if self._stop.is_set():
                        break
            except ApiException as error:
                if error.status in (410, 504):  # too old or too new: list again, as informers do
                    version = None
                else:
                    raise
            finally:
                stream.stop()

    def first(self, predicate: Callable[[PodEvent], bool]) -> int | None:
        return next((i for i, e in enumerate(list(self.events)) if predicate(e)), None)


@contextlib.contextmanager
def stand_in_kubelet(plane: ControlPlane, **options: Any) -> Iterator[StandInKubelet]:
    kubelet = StandInKubelet(api_client(plane.admin_kubeconfig), **options)
    kubelet.start()
    try:
        yield kubelet
    finally:
        kubelet.stop()
