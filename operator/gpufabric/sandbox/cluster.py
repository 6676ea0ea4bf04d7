"""Where the sandbox's Kubernetes runs: the in-process emulator (default), or a real control plane.

`Cluster` is what the sandbox's orchestrator needs of either: read and write objects, register a Node for a
ComputeNode, fail it, bring it back, and end a pod as a finished job's. `EmulatedCluster` is kmock's emulator
extended (`emulator/`) with the simulated kubelets (`kubelet`); `RealCluster` is kube-apiserver, kube-scheduler
and kube-controller-manager (`controlplane`: etcd and the binaries found as the e2e suite finds them) with the
stand-in kubelets (`standin_kubelet`), reached through the official client. Objects are plain dicts either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import kmock
import kopf
import kubernetes

from gpufabric.api import crdgen
from gpufabric.api.computenode import ComputeNode
from gpufabric.controller.run import login_from
from gpufabric.sandbox.emulator import FabricEmulator, HarnessError, JsonDict
from gpufabric.sandbox.kubelet import SimulatedKubelet
from gpufabric.sandbox.nodes import device_plugin_resources, node_labels
from gpufabric.sandbox.real_engine import RealEngines


@dataclass(frozen=True)
class Kind:
    """A resource as both clients name it."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def ref(self) -> str:
        """The emulator's reference: `group/version/plural`, or `version/plural` for the core group."""
        return f"{self.api_version}/{self.plural}"


COMPUTE_NODES = Kind("gpufabric.io/v1alpha1", "ComputeNode", "computenodes", namespaced=False)
AGENT_WORKLOADS = Kind("gpufabric.io/v1alpha1", "AgentWorkload", "agentworkloads", namespaced=True)
PODS_KIND = Kind("v1", "Pod", "pods", namespaced=True)
NODES_KIND = Kind("v1", "Node", "nodes", namespaced=False)
EVENTS_KIND = Kind("v1", "Event", "events", namespaced=True)
NAMESPACES_KIND = Kind("v1", "Namespace", "namespaces", namespaced=False)


class ConflictError(Exception):
    """The object exists already (409)."""


class Cluster(Protocol):
    server: str  # the API server's URL, for the operator and for --kubeconfig-out
    description: str  # what serves the API, for the view

    def operator_configuration(self) -> kubernetes.client.Configuration: ...
    def login(self, **_: Any) -> kopf.ConnectionInfo: ...
    def kubeconfig(self) -> str: ...
    async def list(self, kind: Kind) -> list[JsonDict]: ...
    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> JsonDict | None: ...
    async def create(self, kind: Kind, body: Mapping[str, Any], namespace: str | None = None) -> None: ...
    async def patch(self, kind: Kind, name: str, patch: Mapping[str, Any], namespace: str | None = None) -> None: ...
    async def add_node(self, compute_node: ComputeNode) -> None: ...
    async def fail_node(self, name: str) -> None: ...
    async def recover_node(self, name: str) -> None: ...
    async def finish_pod(self, name: str, namespace: str) -> None: ...


def kubeconfig_text(server: str, *, token: str = "sandbox", ca_file: Path | None = None) -> str:
    cluster = f"    server: {server}\n" + (f"    certificate-authority: {ca_file}\n" if ca_file else "")
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: gpufabric-sandbox\n  cluster:\n{cluster}"
        f"users:\n- name: sandbox\n  user:\n    token: {token}\n"
        "contexts:\n- name: gpufabric-sandbox\n  context:\n    cluster: gpufabric-sandbox\n    user: sandbox\n"
        "current-context: gpufabric-sandbox\n"
    )


# --- the emulator ------------------------------------------------------------------------------------------


class EmulatedCluster:
    description = "in-process emulator"

    def __init__(self, api: FabricEmulator, server: str, kubelet: SimulatedKubelet) -> None:
        self.api = api
        self.server = server
        self.kubelet = kubelet

    def operator_configuration(self) -> kubernetes.client.Configuration:
        return kubernetes.client.Configuration(host=self.server)

    def login(self, **_: Any) -> kopf.ConnectionInfo:
        """kopf's login: plain HTTP on loopback, any token (the emulator has no authentication)."""
        return kopf.ConnectionInfo(server=self.server, insecure=True, token="sandbox")

    def kubeconfig(self) -> str:
        return kubeconfig_text(self.server)

    async def list(self, kind: Kind) -> list[JsonDict]:
        return self.api.live_objects(kind.ref)  # in-process: no request, nothing in the request log

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> JsonDict | None:
        return self.api.get_object(kind.ref, name, namespace)

    async def create(self, kind: Kind, body: Mapping[str, Any], namespace: str | None = None) -> None:
        try:
            await self.api.h_create(kind.ref, body, namespace=namespace)
        except HarnessError as error:
            if error.status == 409:
                raise ConflictError(str(error)) from error
            raise

    async def patch(self, kind: Kind, name: str, patch: Mapping[str, Any], namespace: str | None = None) -> None:
        await self.api.h_patch(kind.ref, name, patch, namespace=namespace)

    async def add_node(self, compute_node: ComputeNode) -> None:
        spec = compute_node.spec
        await self.kubelet.add_node(
            spec.node_name, device_plugin_resources(compute_node), labels=node_labels(compute_node)
        )

    async def fail_node(self, name: str) -> None:
        await self.kubelet.set_ready(name, False)

    async def recover_node(self, name: str) -> None:
        await self.kubelet.set_ready(name, True)

    async def finish_pod(self, name: str, namespace: str) -> None:
        await self.kubelet.finish_pod(name, namespace)


@contextlib.asynccontextmanager
async def emulated(
    *,
    seed: int,
    request_log: int,
    pod_network: str,
    ready_after: float,
    terminate_after: float,
    real_engines: RealEngines | None = None,
) -> AsyncIterator[EmulatedCluster]:
    async with FabricEmulator(name_seed=seed, request_log_limit=request_log) as api, kmock.Server(api) as server:
        kubelet = SimulatedKubelet(
            api,
            interval=0.2,
            ready_after=ready_after,
            terminate_after=terminate_after,
            pod_network=pod_network,
            real_engines=real_engines,
        )
        kubelet.start()
        try:
            yield EmulatedCluster(api, str(server.url).rstrip("/"), kubelet)
        finally:
            await kubelet.stop()


# --- a real control plane ----------------------------------------------------------------------------------


class RealCluster:
    """The real API server through the official client (its blocking calls in threads)."""

    description = "real kube-apiserver v1.36"

    def __init__(self, plane: Any, kubelet: Any) -> None:
        self.plane = plane
        self.kubelet = kubelet
        self.server = plane.url
        loaded = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(plane.admin_kubeconfig), client_configuration=loaded)  # type: ignore[no-untyped-call]
        self._configuration = loaded
        self._client = kubernetes.client.ApiClient(loaded)
        self._dynamic = kubernetes.dynamic.DynamicClient(self._client)  # type: ignore[no-untyped-call]
        self._login = login_from(str(plane.admin_kubeconfig), None)

    def operator_configuration(self) -> kubernetes.client.Configuration:
        loaded = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(self.plane.admin_kubeconfig), client_configuration=loaded)  # type: ignore[no-untyped-call]
        return loaded

    def login(self, **kwargs: Any) -> kopf.ConnectionInfo:
        """kopf's login: the admin kubeconfig's credentials, as `gpufabric operator --kubeconfig` reads them."""
        connection: kopf.ConnectionInfo = self._login(**kwargs)
        return connection

    def kubeconfig(self) -> str:
        return Path(self.plane.admin_kubeconfig).read_text(encoding="utf-8")

    def _resource(self, kind: Kind) -> Any:
        return self._dynamic.resources.get(api_version=kind.api_version, kind=kind.kind)

    async def list(self, kind: Kind) -> list[JsonDict]:
        found = await asyncio.to_thread(lambda: self._resource(kind).get().to_dict())
        return list(found.get("items") or [])

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> JsonDict | None:
        def read() -> JsonDict | None:
            try:
                result: JsonDict = self._resource(kind).get(name=name, namespace=namespace).to_dict()
            except kubernetes.dynamic.exceptions.NotFoundError:
                return None
            return result

        return await asyncio.to_thread(read)

    async def create(self, kind: Kind, body: Mapping[str, Any], namespace: str | None = None) -> None:
        def write() -> None:
            try:
                self._resource(kind).create(body=dict(body), namespace=namespace)
            except kubernetes.dynamic.exceptions.ConflictError as error:
                raise ConflictError(str(error)) from error

        await asyncio.to_thread(write)

    async def patch(self, kind: Kind, name: str, patch: Mapping[str, Any], namespace: str | None = None) -> None:
        await asyncio.to_thread(
            lambda: self._resource(kind).patch(
                name=name, namespace=namespace, body=dict(patch), content_type="application/merge-patch+json"
            )
        )

    async def add_node(self, compute_node: ComputeNode) -> None:
        resources = {**self.kubelet.node_allocatable, **device_plugin_resources(compute_node)}
        await asyncio.to_thread(
            self.kubelet.add_node, compute_node.spec.node_name, resources, node_labels(compute_node)
        )

    async def fail_node(self, name: str) -> None:
        await asyncio.to_thread(self.kubelet.fail, name)

    async def recover_node(self, name: str) -> None:
        await asyncio.to_thread(self.kubelet.recover, name)

    async def finish_pod(self, name: str, namespace: str) -> None:
        """Its containers exit 0, as the kubelet reports a finished Job's pod (the stand-in kubelet leaves a
        pod that is not Pending alone)."""
        finished = {
            "phase": "Succeeded",
            "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        }
        core = kubernetes.client.CoreV1Api(self._client)
        await asyncio.to_thread(core.patch_namespaced_pod_status, name, namespace, {"status": finished})

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def real(*, pod_network: str, real_engines: RealEngines | None = None) -> AsyncIterator[RealCluster]:
    """etcd, kube-apiserver, kube-scheduler and kube-controller-manager on loopback (about 10 s to start),
    and the stand-in kubelets (running `real_engines`' pods with real engines); all stopped on the way out,
    whatever happened."""
    # Imported here: only this mode needs them, and finding the binaries may fail with a clear message.
    from gpufabric.sandbox.controlplane import ControlPlane, find_binaries  # noqa: PLC0415
    from gpufabric.sandbox.standin_kubelet import StandInKubelet  # noqa: PLC0415

    # Started from this (the main) thread, not a worker: its children die with the thread that started them
    # (PR_SET_PDEATHSIG), so a pool thread's exit would take the control plane down. The loop waits meanwhile;
    # nothing else runs yet.
    plane = ControlPlane(find_binaries())
    try:
        plane.start()
        admin = kubernetes.config.new_client_from_config(str(plane.admin_kubeconfig))  # type: ignore[no-untyped-call]
        await asyncio.to_thread(install_crds, admin)
        kubelet = StandInKubelet(admin, serve_tokens=False, pod_network=pod_network, real_engines=real_engines)
        kubelet.start()
        cluster = RealCluster(plane, kubelet)
        try:
            yield cluster
        finally:
            await asyncio.to_thread(kubelet.stop)
            cluster.close()
            admin.close()
    finally:
        plane.stop()


def install_crds(api_client: kubernetes.client.ApiClient, timeout: float = 60.0) -> None:
    """The CRDs (generated from the models, as `gpufabric crds` writes them), and wait until each is
    Established: before that the API server does not serve their objects."""
    extensions = kubernetes.client.ApiextensionsV1Api(api_client)
    definitions = list(crdgen.all_definitions().values())
    for definition in definitions:
        extensions.create_custom_resource_definition(cast(Any, definition))
    deadline = time.monotonic() + timeout
    waiting = {str(definition["metadata"]["name"]) for definition in definitions}
    while waiting:
        for name in sorted(waiting):
            crd = extensions.read_custom_resource_definition(name)
            conditions = crd.status.conditions if crd.status is not None else None
            if any(c.type == "Established" and c.status == "True" for c in conditions or []):
                waiting.discard(name)
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not Established after {timeout:g}s: {', '.join(sorted(waiting))}")
        time.sleep(0.1)
