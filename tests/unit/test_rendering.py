"""Rendering: pods and Services, per concern, without a server. Every rendered object is also checked
against Kubernetes' own OpenAPI schema (kubernetes-validate)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from gpufabric.api import AgentWorkload, ComputeNode
from gpufabric.api.agentworkload import ReplicaPlacement
from gpufabric.api.computenode import ComputeNodeSpec
from gpufabric.rendering import (
    render_client_service,
    render_pod,
    render_replica_pods,
    render_replica_service,
    template_hash,
)
from support.fleet import node, workload

K8S_VERSION = "1.30"


def with_uid(item: AgentWorkload) -> AgentWorkload:
    meta = item.metadata.model_copy(update={"uid": "0b6f7c1e-uid", "namespace": "agents"})
    return item.model_copy(update={"metadata": meta})


def placement(
    vendor: str,
    accelerator: str,
    precision: str,
    devices: int,
    nodes: list[str],
    *,
    replica: int = 3,
) -> ReplicaPlacement:
    return ReplicaPlacement.model_validate(
        {
            "replica": replica,
            "vendor": vendor,
            "accelerator": accelerator,
            "precision": precision,
            "devicesPerNode": devices,
            "nodes": nodes,
        }
    )


def specs(*items: ComputeNode) -> dict[str, ComputeNodeSpec]:
    return {item.name: item.spec for item in items}


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


H100 = node(
    "cn-h100-1",
    "H100-SXM5-80GB",
    nics=2,
    nodeName="gpu-host-17",
    rdmaResource="rdma/rdma_shared_device_a",
    networkAttachment="fabric/roce-a",
)
H100_B = node(
    "cn-h100-2",
    "H100-SXM5-80GB",
    nics=2,
    nodeName="gpu-host-18",
    rdmaResource="rdma/rdma_shared_device_a",
    networkAttachment="fabric/roce-a",
)
ASCEND = node("cn-npu-1", "Ascend-910B3", nics=1, nodeName="npu-host-1")
ASCEND_B = node("cn-npu-2", "Ascend-910B3", nics=1, nodeName="npu-host-2")
MUSA = node("cn-mtt-1", "MTT-S4000", nics=1, nodeName="mtt-host-1")
MUSA_B = node("cn-mtt-2", "MTT-S4000", nics=1, nodeName="mtt-host-2")
CHAT = with_uid(workload("chat", params=8, precisions=("FP8", "BF16")))
SINGLE = placement("nvidia", "H100-SXM5-80GB", "FP8", 2, ["cn-h100-1"])
GANG = placement("nvidia", "H100-SXM5-80GB", "FP8", 8, ["cn-h100-1", "cn-h100-2"])


class TestKubernetesAcceptsWhatWeRender:
    @pytest.mark.parametrize(
        ("label", "pods"),
        [
            ("single", lambda: render_replica_pods(CHAT, SINGLE, specs(H100))),
            ("nvidia gang", lambda: render_replica_pods(CHAT, GANG, specs(H100, H100_B))),
            (
                "ascend gang",
                lambda: render_replica_pods(
                    CHAT,
                    placement("ascend", "Ascend-910B3", "INT8", 8, ["cn-npu-1", "cn-npu-2"]),
                    specs(ASCEND, ASCEND_B),
                ),
            ),
            (
                "musa gang",
                lambda: render_replica_pods(
                    CHAT, placement("mthreads", "MTT-S4000", "BF16", 4, ["cn-mtt-1", "cn-mtt-2"]), specs(MUSA, MUSA_B)
                ),
            ),
        ],
    )
    def test_pods_validate(self, label: str, pods: Any) -> None:
        for pod in pods():
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)

    def test_services_validate(self) -> None:
        kubernetes_validate.validate(render_client_service(CHAT), K8S_VERSION, strict=True)
        kubernetes_validate.validate(render_replica_service(CHAT, 3), K8S_VERSION, strict=True)


class TestPinning:
    def test_required_node_affinity_names_the_kubernetes_node_not_the_compute_node(self) -> None:
        pod = render_pod(CHAT, SINGLE, 0, specs(H100))
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms == {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-host-17"]}]}
            ]
        }
        assert "nodeName" not in pod["spec"]

    def test_each_rank_goes_to_its_own_node(self) -> None:
        pods = render_replica_pods(CHAT, GANG, specs(H100, H100_B))
        hosts = [
            p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"
            ][0]["matchExpressions"][0]["values"]
            for p in pods
        ]
        assert hosts == [["gpu-host-17"], ["gpu-host-18"]]
        assert [p["metadata"]["name"] for p in pods] == ["chat-3-0", "chat-3-1"]


class TestResourcesAndTolerations:
    @pytest.mark.parametrize(
        ("item", "vendor", "accelerator", "resource", "taints"),
        [
            (H100, "nvidia", "H100-SXM5-80GB", "nvidia.com/gpu", ["nvidia.com/gpu"]),
            (ASCEND, "ascend", "Ascend-910B3", "huawei.com/Ascend910", ["huawei.com/Ascend910", "huawei.com/npu"]),
            (MUSA, "mthreads", "MTT-S4000", "mthreads.com/gpu", ["mthreads.com/gpu"]),
        ],
    )
    def test_vendor_resource_and_taints(
        self, item: ComputeNode, vendor: str, accelerator: str, resource: str, taints: list[str]
    ) -> None:
        pod = render_pod(CHAT, placement(vendor, accelerator, "BF16", 4, [item.name]), 0, specs(item))
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {resource: "4"}
        assert [t["key"] for t in pod["spec"]["tolerations"]] == taints
        assert all(t["operator"] == "Exists" and t["effect"] == "NoSchedule" for t in pod["spec"]["tolerations"])

    def test_a_declared_resource_name_wins_over_the_vendor_default(self) -> None:
        hami = node("cn-h", "MTT-S4000", resourceName="mthreads.com/vgpu")
        pod = render_pod(CHAT, placement("mthreads", "MTT-S4000", "BF16", 2, ["cn-h"]), 0, specs(hami))
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {"mthreads.com/vgpu": "2"}

    def test_runtime_resources_merge_and_cannot_override_devices(self) -> None:
        body = CHAT.wire()
        body["spec"]["runtimes"]["nvidia"]["resources"] = {
            "requests": {"cpu": "8", "nvidia.com/gpu": "8"},
            "limits": {"memory": "64Gi", "nvidia.com/gpu": "8"},
        }
        pod = render_pod(AgentWorkload.model_validate(body), SINGLE, 0, specs(H100))
        resources = pod["spec"]["containers"][0]["resources"]
        assert resources == {"requests": {"cpu": "8"}, "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"}}

    def test_rdma_resource_only_for_multi_node_replicas(self) -> None:
        single = render_pod(CHAT, SINGLE, 0, specs(H100))
        gang = render_pod(CHAT, GANG, 1, specs(H100, H100_B))
        assert "rdma/rdma_shared_device_a" not in single["spec"]["containers"][0]["resources"]["limits"]
        assert gang["spec"]["containers"][0]["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"


class TestEnvironment:
    def test_the_server_is_told_what_it_got(self) -> None:
        env = env_of(render_pod(CHAT, SINGLE, 0, specs(H100)))
        assert env["GPUFABRIC_MODEL"] == "chat"
        assert env["GPUFABRIC_PRECISION"] == "FP8"
        assert env["GPUFABRIC_TENSOR_PARALLEL_SIZE"] == "2"
        assert env["GPUFABRIC_NODES"] == "1"
        assert "GPUFABRIC_NODE_RANK" not in env
        assert not any(name.startswith("NCCL_") for name in env), "single-node replicas need no RoCE settings"

    def test_gang_ranks_learn_their_rank_and_the_leader(self) -> None:
        env = env_of(render_pod(CHAT, GANG, 1, specs(H100, H100_B)))
        assert env["GPUFABRIC_NODE_RANK"] == "1"
        assert env["GPUFABRIC_NODES"] == "2"
        assert env["GPUFABRIC_DEVICES"] == "16"
        assert env["GPUFABRIC_LEADER_ADDRESS"] == "chat-3-0.chat-3.agents.svc"
        assert env["MASTER_ADDR"] == env["GPUFABRIC_LEADER_ADDRESS"]
        assert env["MASTER_PORT"] == "29500"

    def test_nccl_is_pointed_at_the_nodes_roce_nics(self) -> None:
        env = env_of(render_pod(CHAT, GANG, 1, specs(H100, H100_B)))
        assert env["NCCL_SOCKET_IFNAME"] == "eth0,eth1"
        assert env["NCCL_IB_HCA"] == "=mlx5_0,mlx5_1"
        assert env["NCCL_IB_GID_INDEX"] == "3"
        assert env["NCCL_IB_DISABLE"] == "0"

    def test_hccl_gets_its_interface_and_the_pod_ip(self) -> None:
        pod = render_pod(
            CHAT, placement("ascend", "Ascend-910B3", "INT8", 8, ["cn-npu-1", "cn-npu-2"]), 0, specs(ASCEND, ASCEND_B)
        )
        env = env_of(pod)
        assert env["HCCL_SOCKET_IFNAME"] == "eth0"
        assert env["HCCL_IF_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert not any(name.startswith("NCCL_") for name in env)

    def test_mccl_mirrors_nccl_for_moore_threads(self) -> None:
        env = env_of(
            render_pod(
                CHAT, placement("mthreads", "MTT-S4000", "BF16", 4, ["cn-mtt-1", "cn-mtt-2"]), 0, specs(MUSA, MUSA_B)
            )
        )
        assert env["MCCL_SOCKET_IFNAME"] == "eth0"
        assert env["MCCL_IB_HCA"] == "=mlx5_0"
        assert env["MCCL_IB_GID_INDEX"] == "3"

    def test_the_users_env_wins_and_keeps_its_order(self) -> None:
        body = CHAT.wire()
        body["spec"]["runtimes"]["nvidia"]["env"] = [
            {"name": "NCCL_IB_HCA", "value": "mlx5_2"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        ]
        pod = render_pod(AgentWorkload.model_validate(body), GANG, 0, specs(H100, H100_B))
        names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
        assert names[:2] == ["NCCL_IB_HCA", "HF_TOKEN"]
        assert names.count("NCCL_IB_HCA") == 1
        assert env_of(pod)["NCCL_IB_HCA"] == "mlx5_2"


class TestProbesSecurityNetworking:
    def test_only_rank_zero_is_probed_and_scraped(self) -> None:
        leader, worker = render_replica_pods(CHAT, GANG, specs(H100, H100_B))
        container = leader["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] == 1800
        assert leader["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert "readinessProbe" not in worker["spec"]["containers"][0]
        assert "prometheus.io/scrape" not in worker["metadata"]["annotations"]

    def test_security_context_is_tight_and_rdma_gets_only_ipc_lock(self) -> None:
        single = render_pod(CHAT, SINGLE, 0, specs(H100))["spec"]
        gang = render_pod(CHAT, GANG, 0, specs(H100, H100_B))["spec"]
        assert single["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
        assert single["containers"][0]["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
        assert gang["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}

    def test_shared_memory_is_memory_backed(self) -> None:
        pod = render_pod(CHAT, SINGLE, 0, specs(H100))
        assert pod["spec"]["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
        assert pod["spec"]["containers"][0]["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]

    def test_multus_attachment_and_dns_identity_only_for_gangs(self) -> None:
        single = render_pod(CHAT, SINGLE, 0, specs(H100))
        gang = render_pod(CHAT, GANG, 1, specs(H100, H100_B))
        assert "k8s.v1.cni.cncf.io/networks" not in single["metadata"]["annotations"]
        assert gang["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "fabric/roce-a"
        assert (gang["spec"]["hostname"], gang["spec"]["subdomain"]) == ("chat-3-1", "chat-3")
        assert "hostname" not in single["spec"]


class TestIdentityAndOwnership:
    def test_labels_and_annotations_let_the_ledger_rebuild_the_replica(self) -> None:
        pod = render_pod(CHAT, GANG, 1, specs(H100, H100_B))
        meta = pod["metadata"]
        assert meta["labels"]["gpufabric.io/workload"] == "chat"
        assert meta["labels"]["gpufabric.io/replica"] == "3"
        assert meta["labels"]["gpufabric.io/rank"] == "1"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "gpu-fabric-operator"
        assert meta["annotations"]["gpufabric.io/compute-node"] == "cn-h100-2"
        assert meta["annotations"]["gpufabric.io/replica-nodes"] == "cn-h100-1,cn-h100-2"
        assert meta["annotations"]["gpufabric.io/devices"] == "8"
        assert meta["annotations"]["gpufabric.io/precision"] == "FP8"

    def test_owned_by_the_workload_so_deletion_cascades(self) -> None:
        for item in (render_pod(CHAT, SINGLE, 0, specs(H100)), render_client_service(CHAT)):
            assert item["metadata"]["ownerReferences"] == [
                {
                    "apiVersion": "gpufabric.io/v1alpha1",
                    "kind": "AgentWorkload",
                    "name": "chat",
                    "uid": "0b6f7c1e-uid",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]


class TestServices:
    def test_client_service_targets_rank_zero_by_port_name(self) -> None:
        spec = render_client_service(CHAT)["spec"]
        assert spec["selector"]["gpufabric.io/rank"] == "0"
        assert spec["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]

    def test_replica_service_is_headless_and_publishes_starting_pods(self) -> None:
        service = render_replica_service(CHAT, 3)
        assert service["metadata"]["name"] == "chat-3"
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert service["spec"]["selector"]["gpufabric.io/replica"] == "3"


class TestTemplateHash:
    def test_changes_with_what_the_pod_runs(self) -> None:
        base = CHAT.wire()
        original = template_hash(CHAT.spec, SINGLE.vendor)
        for path, value in (
            (("runtimes", "nvidia", "image"), "vllm/vllm-openai:v0.12.0"),
            (("model", "name"), "other"),
            (("runtimes", "nvidia", "args"), ["--max-model-len", "4096"]),
        ):
            body = AgentWorkload.model_validate(base).wire()
            target = body["spec"]
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
            assert template_hash(AgentWorkload.model_validate(body).spec, SINGLE.vendor) != original, path

    def test_ignores_replicas_priority_and_other_vendors(self) -> None:
        body = CHAT.wire()
        body["spec"]["replicas"] = 9
        body["spec"]["priority"] = 5
        body["spec"]["runtimes"]["ascend"]["image"] = "another"
        assert template_hash(AgentWorkload.model_validate(body).spec, SINGLE.vendor) == template_hash(
            CHAT.spec, SINGLE.vendor
        )
