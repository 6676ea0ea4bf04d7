"""Harness for running the real operator (kopf + reconciler + kubernetes client) against the in-process API
server over HTTP.

`cluster` gives a FabricEmulator with a SimulatedKubelet already running (it must start before any
operator: kopf claims tasks created after it starts); `start_operator()` runs an operator instance in the
test's loop and stops it at teardown. Helpers load the examples and check the invariants every test
cares about.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import yaml

from gpufabric.api.computenode import ComputeNode
from gpufabric.controller.reconciler import LoopSettings
from gpufabric.controller.run import Operator, OperatorOptions
from gpufabric.sandbox.emulator import FabricEmulator, JsonDict
from gpufabric.sandbox.kubelet import SimulatedKubelet
from gpufabric.sandbox.nodes import device_plugin_resources
from gpufabric.sandbox.operator_thread import OperatorThread

ROOT = Path(__file__).resolve().parents[2]
CN = "gpufabric.io/v1alpha1/computenodes"
AW = "gpufabric.io/v1alpha1/agentworkloads"
FAST = LoopSettings(debounce=0.05, resync=1.0, first_backoff=0.1, max_backoff=1.0, action_backoff=0.1)


def agent_workload(name: str, spec: JsonDict, namespace: str = "agents") -> JsonDict:
    """An AgentWorkload document for `Cluster.apply`: an 8B model unless `spec` names one, the rest as given."""
    return {
        "apiVersion": "gpufabric.io/v1alpha1",
        "kind": "AgentWorkload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": {"name": "m", "parametersBillions": 8}, **spec},
    }


@dataclass
class Cluster:
    api: FabricEmulator
    kubelet: SimulatedKubelet
    operators: list[OperatorThread] = field(default_factory=list)

    # --- operators ----------------------------------------------------------------------------------------

    def start_operator(self, **options: Any) -> Operator:
        url = str(self.api.url).rstrip("/")
        configuration = kubernetes.client.Configuration(host=url)
        configuration.connection_pool_maxsize = 32
        api_client = kubernetes.client.ApiClient(configuration)

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, token="test-token")

        settings = {"leader_election": False, "node_grace_seconds": 1.0, "loop": FAST, **options}
        operator = Operator(OperatorOptions(**settings), api_client, login=login)
        self.operators.append(OperatorThread(operator))
        return operator

    async def stop_operator(self, operator: Operator, *, kill: bool = False) -> None:
        for running in list(self.operators):
            if running.operator is operator:
                self.operators.remove(running)
                await running.finish(kill=kill)

    # --- objects --------------------------------------------------------------------------------------------

    async def add_node(self, name: str, allocatable: dict[str, str], labels: dict[str, str] | None = None) -> None:
        await self.kubelet.add_node(name, allocatable, labels=labels)

    async def apply(self, document: JsonDict) -> JsonDict:
        kind = document["kind"]
        resource = {"ComputeNode": CN, "AgentWorkload": AW, "Namespace": "v1/namespaces"}[kind]
        namespace = document["metadata"].get("namespace") if kind == "AgentWorkload" else None
        created: JsonDict = await self.api.h_create(resource, document, namespace=namespace)
        return created

    async def namespace(self, name: str) -> None:
        await self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    async def gpu_node(
        self,
        name: str,
        *,
        vendor: str = "nvidia",
        accelerator: str = "H100-SXM5-80GB",
        resource: str = "nvidia.com/gpu",
        devices: int = 8,
        domain: str | None = "a",
    ) -> None:
        """A Node advertising `devices` of `resource`, and the ComputeNode describing it (RDMA NIC included
        when it sits in a RoCE domain)."""
        await self.add_node(name, {resource: str(devices)})
        spec: JsonDict = {"nodeName": name, "vendor": vendor, "accelerator": accelerator, "devices": devices}
        if domain is not None:
            spec |= {"fabric": {"roceDomain": domain}, "nics": [{"interface": "eth1", "rdmaDevice": "mlx5_0"}]}
        await self.apply(
            {"apiVersion": "gpufabric.io/v1alpha1", "kind": "ComputeNode", "metadata": {"name": name}, "spec": spec}
        )

    async def load_examples(self) -> list[JsonDict]:
        """The example fleet with a Node per ComputeNode (capacity as declared), and the example workloads."""
        documents = [
            d for p in sorted((ROOT / "examples").rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
        ]
        for document in documents:
            if document["kind"] == "ComputeNode":
                compute_node = ComputeNode.model_validate(document)
                await self.add_node(compute_node.spec.node_name, device_plugin_resources(compute_node))
        for kind in ("Namespace", "ComputeNode", "AgentWorkload"):
            for document in documents:
                if document["kind"] == kind:
                    await self.apply(document)
        return [d for d in documents if d["kind"] == "AgentWorkload"]

    # --- reading --------------------------------------------------------------------------------------------

    def pods(self, workload: str | None = None) -> list[JsonDict]:
        pods = self.api.live_objects("v1/pods")
        return [
            p
            for p in pods
            if workload is None or p["metadata"].get("labels", {}).get("gpufabric.io/workload") == workload
        ]

    def workload(self, namespace: str, name: str) -> JsonDict:
        found = self.api.get_object(AW, name, namespace)
        assert found is not None, f"AgentWorkload {namespace}/{name} is gone"
        return found

    def condition(self, namespace: str, name: str, kind: str) -> JsonDict | None:
        for condition in self.workload(namespace, name).get("status", {}).get("conditions", []):
            if condition["type"] == kind:
                return dict(condition)
        return None

    def ready(self, namespace: str, name: str) -> bool:
        body = self.workload(namespace, name)
        status = body.get("status", {})
        wanted = body["spec"].get("replicas", 1)
        return bool(
            status.get("readyReplicas") == wanted
            and (self.condition(namespace, name, "Ready") or {}).get("status") == "True"
            and status.get("observedGeneration") == body["metadata"]["generation"]
        )

    def invariants(self) -> None:
        """No device promised twice, no duplicate pod, nothing kube-scheduler had to refuse."""
        used: Counter[str] = Counter()
        identities: Counter[tuple[str, str, str, str]] = Counter()
        for pod in self.pods():
            meta = pod["metadata"]
            if meta.get("labels", {}).get("app.kubernetes.io/managed-by") != "gpu-fabric-operator":
                continue
            notes, labels = meta["annotations"], meta["labels"]
            used[notes["gpufabric.io/compute-node"]] += int(notes["gpufabric.io/devices"])
            identities[
                (
                    meta["namespace"],
                    labels["gpufabric.io/workload"],
                    labels["gpufabric.io/replica"],
                    labels["gpufabric.io/rank"],
                )
            ] += 1
            scheduled = [c for c in pod.get("status", {}).get("conditions", []) if c["type"] == "PodScheduled"]
            assert not any(c["status"] == "False" for c in scheduled), f"{meta['name']} refused by the scheduler"
        assert not [k for k, n in identities.items() if n > 1], "duplicate pods"
        for name, devices in used.items():
            node = self.api.get_object(CN, name)
            if node is not None:
                assert devices <= node["spec"]["devices"], f"{name}: {devices} of {node['spec']['devices']} devices"


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if isinstance(outcome, Awaitable):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message or check}")
        await asyncio.sleep(0.05)
