"""The operator against a real cluster from KUBECONFIG (skipped without one).

It installs the CRDs, runs the operator in this process, declares ComputeNodes for the cluster's nodes and
an AgentWorkload, and checks placement and status. Clusters without GPUs: set GPUFABRIC_E2E_FAKE_NODES=1 and
the test creates Node objects whose status advertises `nvidia.com/gpu` capacity (no kubelet runs them, so
their pods stay Pending — the test checks decisions and status, not serving). Everything it creates is
labelled `gpufabric.io/e2e=true` and removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpufabric.capacityreport import capacity_from_cluster
from gpufabric.controller.reconciler import LoopSettings
from gpufabric.controller.run import Operator, OperatorOptions

GROUP, VERSION = "gpufabric.io", "v1alpha1"
E2E = {"gpufabric.io/e2e": "true"}


def _ignore_404(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except ApiException as error:
        if error.status != 404:
            raise


@pytest.fixture
def installed(kube: Any, crds_installed: Any) -> Any:
    return kube


@pytest.fixture
def namespace(installed: Any) -> Iterator[str]:
    core: Any = client.CoreV1Api(installed)
    name = f"gpufabric-e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=E2E)))
    yield name
    _ignore_404(core.delete_namespace, name)


@pytest.fixture
def gpu_nodes(installed: Any) -> Iterator[list[str]]:
    """Names of Nodes advertising nvidia.com/gpu: fake ones on request, else the cluster's own."""
    core: Any = client.CoreV1Api(installed)
    created: list[str] = []
    if os.environ.get("GPUFABRIC_E2E_FAKE_NODES") == "1":
        for index in range(2):
            name = f"gpufabric-e2e-fake-{uuid.uuid4().hex[:6]}-{index}"
            core.create_node({"metadata": {"name": name, "labels": {**E2E, "kubernetes.io/hostname": name}}})
            status = {
                "capacity": {"nvidia.com/gpu": "8", "cpu": "64", "memory": "512Gi", "pods": "110"},
                "allocatable": {"nvidia.com/gpu": "8", "cpu": "64", "memory": "512Gi", "pods": "110"},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "E2EFake",
                        "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
            }
            core.patch_node_status(name, {"status": status})
            created.append(name)
        names = created
    else:
        names = [
            n.metadata.name
            for n in core.list_node().items
            if n.metadata
            and n.status
            and n.status.allocatable
            and int(n.status.allocatable.get("nvidia.com/gpu", "0")) > 0
        ]
    if not names:
        pytest.skip("no Node advertises nvidia.com/gpu; set GPUFABRIC_E2E_FAKE_NODES=1 to create fake ones")
    yield names
    for name in created:
        _ignore_404(core.delete_node, name)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _run_operator(api_client: Any, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> Operator:
    operator = Operator(OperatorOptions(leader_election=False, loop=LoopSettings(debounce=0.2, resync=5.0)), api_client)

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(operator.run(stop))

    threading.Thread(target=main, daemon=True).start()
    return operator


def test_a_workload_is_placed_on_the_clusters_gpu_nodes(installed: Any, namespace: str, gpu_nodes: list[str]) -> None:
    custom: Any = client.CustomObjectsApi(installed)
    compute_nodes = []
    for name in gpu_nodes:
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ComputeNode",
            "metadata": {"name": f"e2e-{name}"[:63], "labels": E2E},
            "spec": {"nodeName": name, "vendor": "nvidia", "accelerator": "H100-SXM5-80GB", "devices": 8},
        }
        custom.create_cluster_custom_object(GROUP, VERSION, "computenodes", body)
        compute_nodes.append(body["metadata"]["name"])
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    operator = _run_operator(installed, stop, loop)
    try:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "agentworkloads",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "AgentWorkload",
                "metadata": {"name": "e2e-chat", "namespace": namespace},
                "spec": {
                    "model": {"name": "m", "parametersBillions": 8},
                    "replicas": 2,
                    "devicesPerReplica": 2,
                    "runtimes": {"nvidia": {"image": "vllm/vllm-openai:v0.11.0"}},
                },
            },
        )
        deadline = time.monotonic() + 60
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "agentworkloads", "e2e-chat")
            status = body.get("status") or {}
            if len(status.get("placements", [])) == 2:
                break
            time.sleep(1)
        assert len(status.get("placements", [])) == 2, status
        placed = next(c for c in status["conditions"] if c["type"] == "Placed")
        assert placed["status"] == "True"
        pods = core_api(installed).list_namespaced_pod(namespace, label_selector="gpufabric.io/workload=e2e-chat")
        assert len(pods.items) == 2
        for pod in pods.items:
            assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
            terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
            assert terms.node_selector_terms[0].match_expressions[0].values[0] in gpu_nodes
        assert operator.reconciler.last_error is None
    finally:
        loop.call_soon_threadsafe(stop.set)
        for name in compute_nodes:
            _ignore_404(custom.delete_cluster_custom_object, GROUP, VERSION, "computenodes", name)


def core_api(kube: Any) -> Any:
    return client.CoreV1Api(kube)


def test_capacity_reads_the_live_cluster(installed: Any, gpu_nodes: list[str]) -> None:
    custom: Any = client.CustomObjectsApi(installed)
    name = f"e2e-capacity-{uuid.uuid4().hex[:6]}"
    custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        "computenodes",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ComputeNode",
            "metadata": {"name": name, "labels": E2E},
            "spec": {"nodeName": gpu_nodes[0], "vendor": "nvidia", "accelerator": "H100-SXM5-80GB", "devices": 8},
        },
    )
    try:
        report = capacity_from_cluster(os.environ.get("KUBECONFIG"), 8.0, None)
        assert any(row.accelerator == "H100-SXM5-80GB" and row.replicas >= 1 for row in report.rows)
        assert report.total > 0
    finally:
        _ignore_404(custom.delete_cluster_custom_object, GROUP, VERSION, "computenodes", name)
