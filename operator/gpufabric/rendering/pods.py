"""One Pod per rank of a placed replica, correct for its vendor and its place in the RoCE fabric.

What a pod gets, and why:
- required node affinity on `kubernetes.io/hostname` (not spec.nodeName), so kube-scheduler still checks
  resources and taints and the device plugin still allocates;
- the vendor's device resource × devices, tolerations for the vendor's taints;
- the runtime's image, command, args and env, plus env telling the server what it got (model, precision,
  parallelism; for gangs its rank and rank 0's address) — set only where the user did not set it;
- for multi-node replicas on RoCE: the RDMA resource and Multus network the node declares, IPC_LOCK (RDMA
  pins memory), and the collective library's settings from the node's NICs;
- a memory-backed /dev/shm (tensor-parallel workers exchange through shared memory), probes on the
  serving port (rank 0 only: other ranks of a gang run workers without an HTTP server), Prometheus
  scrape annotations, and a container security context as tight as serving images allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpufabric import engines, vendors
from gpufabric.api import labels
from gpufabric.api.agentworkload import AgentWorkload, ReplicaPlacement, Runtime
from gpufabric.api.computenode import ComputeNodeSpec
from gpufabric.engines import Engine, Launch, Rendered
from gpufabric.rendering.names import (
    engine_config_name,
    leader_address,
    owner_reference,
    pod_name,
    replica_service_name,
    selector_labels,
)
from gpufabric.rendering.template import template_hash

# Multus reads the networks a pod attaches from this annotation (k8snetworkplumbingwg/multus-cni
# docs/how-to-use.md).
MULTUS_NETWORKS = "k8s.v1.cni.cncf.io/networks"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# torch.distributed's conventional rendezvous port (MASTER_PORT), exposed on rank 0 of a gang.
RENDEZVOUS_PORT = 29500
SHM_SIZE = "16Gi"
# Model loading takes minutes for large models: allow up to 30 minutes before readiness counts.
STARTUP_PROBE_PERIOD_SECONDS = 10
STARTUP_PROBE_FAILURES = 180
TERMINATION_GRACE_SECONDS = 30


def render_replica_pods(
    workload: AgentWorkload, placement: ReplicaPlacement, nodes: Mapping[str, ComputeNodeSpec]
) -> list[dict[str, Any]]:
    return [render_pod(workload, placement, rank, nodes) for rank in range(len(placement.nodes))]


def render_pod(
    workload: AgentWorkload, placement: ReplicaPlacement, rank: int, nodes: Mapping[str, ComputeNodeSpec]
) -> dict[str, Any]:
    runtime = workload.spec.runtimes[placement.vendor]
    node = nodes[placement.nodes[rank]]
    name = pod_name(workload.name, placement.replica, rank)
    rendered = engine_command(workload, placement, rank)
    pod_labels = {
        **selector_labels(workload.name),
        labels.NAME: workload.name,
        labels.INSTANCE: workload.name,
        labels.COMPONENT: "inference-server",
        labels.REPLICA: str(placement.replica),
        labels.RANK: str(rank),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": workload.namespace,
            "labels": pod_labels,
            "annotations": _annotations(workload, placement, rank, node, rendered),
            "ownerReferences": [owner_reference(workload)],
        },
        "spec": _pod_spec(workload, placement, rank, node, runtime=runtime, rendered=rendered),
    }


def _annotations(
    workload: AgentWorkload, placement: ReplicaPlacement, rank: int, node: ComputeNodeSpec, rendered: Rendered | None
) -> dict[str, str]:
    """The allocation record the ledger is rebuilt from, and what scrapers and Multus read."""
    spec = workload.spec
    runtime = spec.runtimes[placement.vendor]
    metrics = spec.metrics_for(placement.vendor)
    annotations = {
        labels.COMPUTE_NODE: placement.nodes[rank],
        labels.DEVICES: str(placement.devices_per_node),
        labels.REPLICA_NODES: ",".join(placement.nodes),
        labels.VENDOR: placement.vendor.value,
        labels.ACCELERATOR: placement.accelerator,
        labels.PRECISION: placement.precision.value,
        labels.TEMPLATE_HASH: template_hash(spec, placement.vendor),
    }
    if rank == 0:
        annotations |= {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(metrics.port),
            "prometheus.io/path": metrics.path,
        }
    if len(placement.nodes) > 1 and node.network_attachment:
        annotations[MULTUS_NETWORKS] = node.network_attachment
    if runtime.engine is not Engine.CUSTOM:
        annotations[labels.ENGINE] = runtime.engine.value
    if rendered is not None and rendered.files:
        annotations[labels.ENGINE_CONFIG] = engine_config_name(workload.name, placement.replica)
    return annotations


def _volumes(workload: AgentWorkload, placement: ReplicaPlacement, rendered: Rendered | None) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}]
    if rendered is not None and rendered.files:
        volumes.append(
            {
                "name": "engine-config",
                "configMap": {
                    "name": engine_config_name(workload.name, placement.replica),
                    "items": [{"key": _file_key(path), "path": _file_key(path)} for path in sorted(rendered.files)],
                    # MindIE refuses a config.json readable by others (mode 640, its docs).
                    "defaultMode": 0o640,
                },
            }
        )
    return volumes


def _pod_spec(
    workload: AgentWorkload,
    placement: ReplicaPlacement,
    rank: int,
    node: ComputeNodeSpec,
    *,
    runtime: Runtime,
    rendered: Rendered | None,
) -> dict[str, Any]:
    metrics_port = workload.spec.metrics_for(placement.vendor).port
    pin = {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node.node_name]}]}
    pod_spec: dict[str, Any] = {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [pin]}}},
        "tolerations": [
            {"key": key, "operator": "Exists", "effect": "NoSchedule"}
            for key in vendors.facts(placement.vendor).taint_keys
        ],
        "containers": [
            _container(workload, placement, rank, node, runtime=runtime, metrics_port=metrics_port, rendered=rendered)
        ],
        "volumes": _volumes(workload, placement, rendered),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "enableServiceLinks": False,
    }
    if len(placement.nodes) > 1:
        # Pods resolve as <hostname>.<subdomain>.<namespace>.svc through the replica's headless Service.
        pod_spec["hostname"] = pod_name(workload.name, placement.replica, rank)
        pod_spec["subdomain"] = replica_service_name(workload.name, placement.replica)
    return pod_spec


def _container(
    workload: AgentWorkload,
    placement: ReplicaPlacement,
    rank: int,
    node: ComputeNodeSpec,
    *,
    runtime: Runtime,
    metrics_port: int,
    rendered: Rendered | None,
) -> dict[str, Any]:
    gang = len(placement.nodes) > 1
    ports = [{"name": "http", "containerPort": runtime.port, "protocol": "TCP"}]
    if metrics_port != runtime.port:
        ports.append({"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"})
    if gang and rank == 0:
        ports.append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"})
    for name, port in rendered.extra_ports if rendered else ():
        ports.append({"name": name, "containerPort": port, "protocol": "TCP"})

    capabilities: dict[str, list[str]] = {"drop": ["ALL"]}
    if gang:
        capabilities["add"] = ["IPC_LOCK"]  # RDMA registers (pins) memory

    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    for path in sorted(rendered.files if rendered else ()):
        mounts.append({"name": "engine-config", "mountPath": path, "subPath": _file_key(path), "readOnly": True})
    container: dict[str, Any] = {
        "name": "server",
        "image": runtime.image,
        "env": _env(workload, placement, rank, node, runtime=runtime, rendered=rendered),
        "ports": ports,
        "resources": _resources(placement, node, runtime),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": capabilities},
    }
    command, args = (rendered.command, rendered.args) if rendered else (runtime.command, runtime.args)
    if command:
        container["command"] = list(command)
    if args:
        container["args"] = list(args)
    if runtime.image_pull_policy:
        container["imagePullPolicy"] = runtime.image_pull_policy.value
    if rank == 0:
        probe = {"httpGet": {"path": runtime.health_path, "port": "http"}}
        container["readinessProbe"] = {**probe, "periodSeconds": 10, "failureThreshold": 3}
        container["startupProbe"] = {
            **probe,
            "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
            "failureThreshold": STARTUP_PROBE_FAILURES,
        }
    return container


def _env(
    workload: AgentWorkload,
    placement: ReplicaPlacement,
    rank: int,
    node: ComputeNodeSpec,
    *,
    runtime: Runtime,
    rendered: Rendered | None,
) -> list[dict[str, Any]]:
    spec = workload.spec
    nodes = len(placement.nodes)
    ours: list[dict[str, Any]] = [
        {"name": "GPUFABRIC_MODEL", "value": spec.model.name},
        {"name": "GPUFABRIC_SERVED_MODEL_NAME", "value": spec.model.served_name or spec.model.name},
        {"name": "GPUFABRIC_PRECISION", "value": placement.precision.value},
        {"name": "GPUFABRIC_TENSOR_PARALLEL_SIZE", "value": str(placement.devices_per_node)},
        {"name": "GPUFABRIC_NODES", "value": str(nodes)},
        {"name": "GPUFABRIC_DEVICES", "value": str(placement.devices_per_node * nodes)},
        {"name": "GPUFABRIC_REPLICA", "value": str(placement.replica)},
        {"name": "GPUFABRIC_PORT", "value": str(runtime.port)},
    ]
    if nodes > 1:
        leader = leader_address(workload, placement.replica)
        ours += [
            {"name": "GPUFABRIC_NODE_RANK", "value": str(rank)},
            {"name": "GPUFABRIC_LEADER_ADDRESS", "value": leader},
            {"name": "GPUFABRIC_LEADER_PORT", "value": str(RENDEZVOUS_PORT)},
            # torch.distributed's names for the same two facts.
            {"name": "MASTER_ADDR", "value": leader},
            {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
            *_collective_env(placement, node),
        ]
    if rendered is not None:
        ours += [{"name": name, "value": value} for name, value in rendered.env]
        ours += [
            {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in rendered.env_from_fields
        ]
    user = [env.wire() for env in runtime.env]
    taken = {env["name"] for env in user}
    # The user's settings win (they may know their NICs better); ours fill the gaps.
    return user + [env for env in ours if env["name"] not in taken]


def engine_command(workload: AgentWorkload, placement: ReplicaPlacement, rank: int) -> Rendered | None:
    """The engine's command line (and files) for this rank of the replica; None for `custom` engines."""
    spec = workload.spec
    runtime = spec.runtimes[placement.vendor]
    launch = Launch(
        model=runtime.weights_for(spec.model, placement.precision),
        from_checkpoint=placement.precision in runtime.checkpoints,
        served_name=spec.model.served_name or spec.model.name,
        port=runtime.port,
        vendor=placement.vendor,
        precision=placement.precision,
        devices_per_node=placement.devices_per_node,
        nodes=len(placement.nodes),
        rank=rank,
        leader=leader_address(workload, placement.replica),
        context_length=spec.model.context_length,
        engine_version=engines.image_version(runtime.image),
    )
    return engines.render(runtime.engine, launch, tuple(runtime.args))


def render_engine_config(workload: AgentWorkload, placement: ReplicaPlacement) -> dict[str, Any] | None:
    """The ConfigMap of files the replica's engine reads (same for every rank), or None if it reads none."""
    rendered = engine_command(workload, placement, 0)
    if rendered is None or not rendered.files:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": engine_config_name(workload.name, placement.replica),
            "namespace": workload.namespace,
            "labels": {**selector_labels(workload.name), labels.REPLICA: str(placement.replica)},
            "ownerReferences": [owner_reference(workload)],
        },
        "data": {_file_key(path): content for path, content in sorted(rendered.files.items())},
    }


def _file_key(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _collective_env(placement: ReplicaPlacement, node: ComputeNodeSpec) -> list[dict[str, Any]]:
    """Point the vendor's collective library (NCCL, MCCL, HCCL) at the node's RoCE NICs."""
    library = vendors.facts(placement.vendor).collective
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in library.fixed_env.items()]
    if node.nics:
        env.append({"name": library.socket_interface_env, "value": ",".join(n.interface for n in node.nics)})
        if library.rdma_devices_env:
            # A leading '=' makes NCCL match the names exactly, not as prefixes (mlx5_1 vs mlx5_10).
            env.append({"name": library.rdma_devices_env, "value": "=" + ",".join(n.rdma_device for n in node.nics)})
        if library.gid_index_env:
            env.append({"name": library.gid_index_env, "value": str(node.nics[0].gid_index)})
    if library.interface_ip_env:
        env.append({"name": library.interface_ip_env, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    return env


def _resources(placement: ReplicaPlacement, node: ComputeNodeSpec, runtime: Runtime) -> dict[str, Any]:
    requests: dict[str, str] = dict(runtime.resources.requests) if runtime.resources else {}
    limits: dict[str, str] = dict(runtime.resources.limits) if runtime.resources else {}
    # Extended resources are requested through limits (requests default to them); the operator's numbers
    # win over anything the runtime says, or the ledger and the device plugin would disagree.
    device = node.device_resource_name
    requests.pop(device, None)
    limits[device] = str(placement.devices_per_node)
    if len(placement.nodes) > 1 and node.rdma_resource:
        requests.pop(node.rdma_resource, None)
        limits[node.rdma_resource] = "1"
    resources: dict[str, Any] = {"limits": limits}
    if requests:
        resources["requests"] = requests
    return resources
