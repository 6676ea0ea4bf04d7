"""A cluster as plain dicts for testing reconcile passes without a server: it applies the actions a pass
returns the way the API server and kubelets would (graceful deletes, status merge patches, pods turning
Ready on Ready nodes) and turns its objects back into ClusterState through the same observe functions the
operator uses."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gpufabric.api import AgentWorkload, ComputeNode
from gpufabric.api.refs import Kind
from gpufabric.reconcile import (
    Action,
    ApplyConfigMap,
    ClusterState,
    CreatePod,
    CreateService,
    DeleteConfigMap,
    DeletePod,
    DeleteService,
    Event,
    Outcome,
    PatchStatus,
    Settings,
    reconcile,
)
from gpufabric.reconcile.observe import agent_workload, compute_node, node_health, owned_service, pod_record
from gpufabric.reconcile.state import Avoidance
from gpufabric.vendors import ACCELERATORS

START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
_uids = itertools.count(1)


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeCluster:
    def __init__(self, now: datetime = START) -> None:
        self.now = now
        self.nodes: dict[str, dict[str, Any]] = {}
        self.compute_nodes: dict[str, dict[str, Any]] = {}
        self.workloads: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.config_maps: dict[str, dict[str, Any]] = {}
        self.events: list[Event] = []
        self.applied: list[Action] = []
        # others' pods' requests by Node and resource; namespaces being deleted
        self.foreign: dict[str, dict[str, int]] = {}
        self.terminating_namespaces: set[str] = set()
        # Nodes where kube-scheduler refuses to bind pods, with what it says (pods there stay Pending)
        self.refusing: dict[str, str] = {}
        # what the controller keeps from pass to pass
        self.avoided: Mapping[str, Mapping[str, Avoidance]] = {}

    # --- building the cluster ---------------------------------------------------------------------

    def add_node(self, name: str, *, ready: bool = True, allocatable: dict[str, str] | None = None) -> None:
        self.nodes[name] = {
            "metadata": {"name": name},
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "lastTransitionTime": self.now.isoformat(),
                    }
                ],
                "allocatable": allocatable or {},
            },
        }

    def set_ready(self, name: str, ready: bool) -> None:
        self.add_node(name, ready=ready, allocatable=self.nodes[name]["status"]["allocatable"])

    def add_compute_node(self, item: ComputeNode, *, with_node: bool = True) -> None:
        body = item.wire()
        body["metadata"].setdefault("generation", 1)
        self.compute_nodes[item.name] = body
        if with_node and item.spec.node_name not in self.nodes:
            facts = ACCELERATORS.get(item.spec.accelerator)
            resource = item.spec.device_resource_name
            self.add_node(item.spec.node_name, allocatable={resource: str(item.spec.devices)} if facts else {})

    def fleet(self, items: Iterable[ComputeNode]) -> FakeCluster:
        for item in items:
            self.add_compute_node(item)
        return self

    def add_workload(self, item: AgentWorkload) -> str:
        body = item.wire()
        body["metadata"].setdefault("uid", f"uid-{next(_uids)}")
        body["metadata"].setdefault("generation", 1)
        body["metadata"].setdefault("namespace", "default")
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        self.workloads[key] = body
        return key

    def edit_workload(self, key: str, spec_patch: dict[str, Any]) -> None:
        body = self.workloads[key]
        merge_patch(body["spec"], spec_patch)
        body["metadata"]["generation"] += 1

    def edit_compute_node(self, name: str, spec_patch: dict[str, Any]) -> None:
        body = self.compute_nodes[name]
        merge_patch(body["spec"], spec_patch)
        body["metadata"]["generation"] += 1

    # --- the pass -------------------------------------------------------------------------------------

    def state(self) -> ClusterState:
        workloads = {}
        invalid = {}
        for key, body in self.workloads.items():
            parsed = agent_workload(body)
            if isinstance(parsed, AgentWorkload):
                workloads[key] = parsed
            else:
                invalid[key] = parsed
        nodes = {}
        for name, body in self.compute_nodes.items():
            parsed_node = compute_node(body)
            if isinstance(parsed_node, ComputeNode):
                nodes[name] = parsed_node
        services = {}
        for key, body in self.services.items():
            owned = owned_service(body)
            if owned is not None:
                services[key] = owned
        return ClusterState(
            compute_nodes=nodes,
            nodes={name: node_health(body) for name, body in self.nodes.items()},
            workloads=workloads,
            pods=tuple(pod_record(body) for body in self.pods.values()),
            services=services,
            now=self.now,
            invalid_workloads=invalid,
            foreign=copy.deepcopy(self.foreign),
            terminating_namespaces=frozenset(self.terminating_namespaces),
            avoided=self.avoided,
        )

    def apply(self, outcome: Outcome) -> None:
        self.avoided = outcome.avoided
        for action in outcome.actions:
            self.applied.append(action)
            match action:
                case CreatePod(manifest=manifest):
                    key = f"{manifest['metadata']['namespace']}/{manifest['metadata']['name']}"
                    assert key not in self.pods, f"pod {key} created twice"
                    self.pods[key] = copy.deepcopy(manifest)
                case DeletePod(target=pod, force=force):
                    key = pod.key
                    if key in self.pods:
                        if force:
                            del self.pods[key]
                        else:
                            self.pods[key]["metadata"]["deletionTimestamp"] = self.now.isoformat()
                case CreateService(manifest=manifest):
                    key = f"{manifest['metadata']['namespace']}/{manifest['metadata']['name']}"
                    assert key not in self.services, f"service {key} created twice"
                    self.services[key] = copy.deepcopy(manifest)
                case DeleteService(target=service):
                    self.services.pop(service.key, None)
                case ApplyConfigMap(manifest=manifest, target=ref):
                    self.config_maps[ref.key] = copy.deepcopy(manifest)
                case DeleteConfigMap(target=ref):
                    self.config_maps.pop(ref.key, None)
                case PatchStatus(target=ref, status=status):
                    objects = self.workloads if ref.kind is Kind.AGENT_WORKLOAD else self.compute_nodes
                    target = objects[ref.key]
                    target.setdefault("status", {})
                    merge_patch(target["status"], status)
                case Event():
                    self.events.append(action)

    def kubelet(self) -> None:
        """Pods on Ready nodes run and turn Ready; terminating pods on Ready nodes go away."""
        for key, pod in list(self.pods.items()):
            host = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"
            ][0]["matchExpressions"][0]["values"][0]
            node = self.nodes.get(host)
            ready = node is not None and node["status"]["conditions"][0]["status"] == "True"
            if not ready:
                continue
            if pod["metadata"].get("deletionTimestamp"):
                del self.pods[key]
                continue
            if host in self.refusing and pod.get("status", {}).get("phase") != "Running":
                pod["status"] = {"phase": "Pending", "conditions": [self._refused(pod, self.refusing[host])]}
                continue
            pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}

    def _refused(self, pod: dict[str, Any], message: str) -> dict[str, Any]:
        """kube-scheduler's condition: the transition time stays that of the first refusal."""
        before: dict[str, Any] = next(
            (c for c in pod.get("status", {}).get("conditions", []) if c["type"] == "PodScheduled"), {}
        )
        since = before.get("lastTransitionTime", self.now.isoformat())
        return {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": since,
        }

    def step(self, settings: Settings | None = None, *, kubelet: bool = True) -> Outcome:
        outcome = reconcile(self.state(), settings)
        self.apply(outcome)
        if kubelet:
            self.kubelet()
        return outcome

    def settle(self, settings: Settings | None = None, passes: int = 20) -> list[Outcome]:
        """Passes until one changes nothing (or `passes` ran)."""
        outcomes = []
        for _ in range(passes):
            outcome = self.step(settings)
            outcomes.append(outcome)
            if not [a for a in outcome.actions if not isinstance(a, Event)]:
                break
        return outcomes

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    # --- reading ---------------------------------------------------------------------------------------

    def pods_of(self, workload: str) -> dict[str, dict[str, Any]]:
        namespace, name = workload.split("/")
        return {
            k: v
            for k, v in self.pods.items()
            if k.startswith(f"{namespace}/") and v["metadata"]["labels"]["gpufabric.io/workload"] == name
        }

    def status(self, workload: str) -> dict[str, Any]:
        status: dict[str, Any] = self.workloads[workload].get("status", {})
        return status

    def condition(self, workload: str, kind: str) -> dict[str, Any]:
        return next(c for c in self.status(workload)["conditions"] if c["type"] == kind)
