"""Reconcile passes, without a server: each test builds a small cluster, runs passes the way the operator
does, and checks what a user would see — pods, Services, status, events."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from datetime import timedelta

from gpufabric.api.refs import Kind
from gpufabric.reconcile import CreatePod, DeletePod, Event, PatchStatus, Settings, reconcile
from gpufabric.reconcile.ledger import replicas_of
from gpufabric.reconcile.passes import find_losses
from support.fakecluster import FakeCluster
from support.fleet import node, workload

H100, ASCEND = "H100-SXM5-80GB", "Ascend-910B3"


def fleet(*names: str, accelerator: str = H100, domain: str = "a") -> FakeCluster:
    return FakeCluster().fleet(node(n, accelerator, domain=domain) for n in names)


def placements(cluster: FakeCluster, key: str) -> dict[int, list[str]]:
    return {p["replica"]: p["nodes"] for p in cluster.status(key).get("placements", [])}


def reasons(cluster: FakeCluster) -> Counter[str]:
    return Counter(e.reason for e in cluster.events)


class TestPlacingAndStatus:
    def test_a_new_workload_gets_pods_a_service_and_an_honest_status(self) -> None:
        cluster = fleet("h1", "h2")
        key = cluster.add_workload(workload("chat", replicas=2, devicesPerReplica=2, runtimes=("nvidia",)))
        cluster.settle()
        assert sorted(p.split("/")[1] for p in cluster.pods_of(key)) == ["chat-0-0", "chat-1-0"]
        assert "default/chat" in cluster.services
        status = cluster.status(key)
        assert (status["replicas"], status["readyReplicas"], status["observedGeneration"]) == (2, 2, 1)
        assert status["selector"] == "app.kubernetes.io/managed-by=gpu-fabric-operator,gpufabric.io/workload=chat"
        assert status["vendors"] == "nvidia"
        assert cluster.condition(key, "Placed")["status"] == "True"
        assert cluster.condition(key, "Ready")["reason"] == "AllReplicasReady"
        assert cluster.condition(key, "Degraded")["status"] == "False"
        # one Placed event per workload per pass, naming each replica
        (placed,) = [e for e in cluster.events if e.reason == "Placed"]
        assert re.fullmatch(r"replica 0 placed on nvidia .*; replica 1 placed on nvidia .*", placed.message)
        node_status = cluster.compute_nodes["h1"]["status"]
        assert (node_status["allocatedDevices"], node_status["freeDevices"]) == (2, 6)
        assert node_status["workloads"] == [{"namespace": "default", "name": "chat", "devices": 2}]

    def test_a_settled_cluster_gets_no_writes(self) -> None:
        cluster = fleet("h1")
        cluster.add_workload(workload("chat", runtimes=("nvidia",)))
        cluster.settle()
        outcome = cluster.step()
        assert outcome.actions == ()

    def test_a_restarted_operator_rebuilds_the_ledger_from_pods_and_double_books_nothing(self) -> None:
        cluster = fleet("h1")
        first = cluster.add_workload(workload("first", devicesPerReplica=6, runtimes=("nvidia",)))
        cluster.settle()
        # A fresh operator sees only objects: the second workload must not get the first one's devices.
        second = cluster.add_workload(workload("second", devicesPerReplica=4, runtimes=("nvidia",)))
        cluster.settle()
        assert len(cluster.pods_of(first)) == 1
        assert cluster.pods_of(second) == {}
        assert cluster.condition(second, "Placed")["message"] == "0/1 nodes: 1 insufficient free devices (need 4)"

    def test_unschedulable_is_reported_once_not_on_every_pass(self) -> None:
        cluster = fleet("a1", accelerator=ASCEND)
        key = cluster.add_workload(workload("chat", runtimes=("nvidia",)))
        for _ in range(3):
            cluster.step()
        assert cluster.condition(key, "Placed") | {"lastTransitionTime": None} == {
            "type": "Placed",
            "status": "False",
            "observedGeneration": 1,
            "lastTransitionTime": None,
            "reason": "Unschedulable",
            "message": "0/1 nodes: 1 no runtime for vendor ascend",
        }
        assert cluster.status(key)["unschedulableReason"] == "0/1 nodes: 1 no runtime for vendor ascend"
        assert reasons(cluster)["Unschedulable"] == 1

    def test_transition_time_moves_only_when_the_status_changes(self) -> None:
        cluster = fleet("h1")
        key = cluster.add_workload(workload("chat", runtimes=("nvidia",)))
        cluster.step(kubelet=False)
        not_ready_since = cluster.condition(key, "Ready")["lastTransitionTime"]
        cluster.advance(5)
        cluster.step(kubelet=False)
        assert cluster.condition(key, "Ready")["lastTransitionTime"] == not_ready_since
        cluster.kubelet()
        cluster.advance(5)
        cluster.step()
        assert cluster.condition(key, "Ready")["lastTransitionTime"] != not_ready_since

    def test_an_invalid_workload_gets_a_condition_and_no_pods(self) -> None:
        cluster = fleet("h1")
        key = cluster.add_workload(workload("chat", runtimes=("nvidia",)))
        cluster.workloads[key]["spec"]["replicas"] = "three"
        cluster.settle()
        assert cluster.pods_of(key) == {}
        condition = cluster.condition(key, "Placed")
        assert condition["reason"] == "InvalidSpec"
        assert "spec.replicas: Input should be a valid integer" in condition["message"]
        cluster.step()
        assert reasons(cluster)["InvalidSpec"] == 1

    def test_compute_node_health_reports_a_device_plugin_that_advertises_fewer_devices(self) -> None:
        cluster = fleet("h1")
        cluster.nodes["h1"]["status"]["allocatable"] = {"nvidia.com/gpu": "4"}
        cluster.step()
        healthy = next(c for c in cluster.compute_nodes["h1"]["status"]["conditions"] if c["type"] == "Healthy")
        assert (healthy["status"], healthy["reason"]) == ("False", "FewerDevicesAdvertised")


class TestScaling:
    def test_scale_down_removes_the_highest_replicas_first(self) -> None:
        cluster = fleet("h1", "h2")
        key = cluster.add_workload(workload("chat", replicas=4, runtimes=("nvidia",)))
        cluster.settle()
        cluster.edit_workload(key, {"replicas": 2})
        cluster.settle()
        assert sorted(placements(cluster, key)) == [0, 1]
        assert reasons(cluster)["ScaledDown"] == 2
        assert reasons(cluster)["Scaled"] == 1

    def test_scale_up_fills_the_lowest_free_indexes(self) -> None:
        cluster = fleet("h1", "h2")
        key = cluster.add_workload(workload("chat", replicas=1, runtimes=("nvidia",)))
        cluster.settle()
        cluster.edit_workload(key, {"replicas": 3})
        cluster.settle()
        assert sorted(placements(cluster, key)) == [0, 1, 2]

    def test_pending_replicas_are_placed_when_capacity_frees(self) -> None:
        cluster = fleet("h1")
        big = cluster.add_workload(workload("big", devicesPerReplica=8, runtimes=("nvidia",)))
        cluster.settle()
        waiting = cluster.add_workload(workload("waiting", devicesPerReplica=4, runtimes=("nvidia",)))
        cluster.settle()
        assert cluster.pods_of(waiting) == {}
        cluster.edit_workload(big, {"replicas": 0})
        cluster.settle()
        assert len(cluster.pods_of(waiting)) == 1
        assert cluster.condition(waiting, "Placed")["status"] == "True"


class TestRollingUpdate:
    def test_an_image_change_rolls_one_replica_at_a_time_with_a_surge(self) -> None:
        cluster = fleet("h1", "h2")
        key = cluster.add_workload(workload("chat", replicas=2, devicesPerReplica=2, runtimes=("nvidia",)))
        cluster.settle()
        cluster.edit_workload(key, {"runtimes": {"nvidia": {"image": "vllm:v2"}}})
        live_counts = []
        for _ in range(12):
            cluster.step()
            live = [p for p in cluster.pods_of(key).values() if not p["metadata"].get("deletionTimestamp")]
            live_counts.append(len(live))
        images = {p["spec"]["containers"][0]["image"] for p in cluster.pods_of(key).values()}
        assert images == {"vllm:v2"}
        assert max(live_counts) == 3, "one surge replica at a time"
        assert min(live_counts) >= 2, "never below the desired count while capacity allows a surge"

    def test_without_room_for_a_surge_a_replica_is_replaced_in_place(self) -> None:
        cluster = fleet("h1")
        key = cluster.add_workload(workload("chat", replicas=2, devicesPerReplica=4, runtimes=("nvidia",)))
        cluster.settle()
        cluster.edit_workload(key, {"runtimes": {"nvidia": {"image": "vllm:v2"}}})
        cluster.settle()
        images = {p["spec"]["containers"][0]["image"] for p in cluster.pods_of(key).values()}
        assert images == {"vllm:v2"}
        assert len(cluster.pods_of(key)) == 2
        assert any("replacing replica" in e.message for e in cluster.events)

    def test_dropping_the_running_precision_rolls_the_replica(self) -> None:
        cluster = fleet("h1", "h2")
        key = cluster.add_workload(workload("chat", precisions=("FP8", "BF16"), runtimes=("nvidia",)))
        cluster.settle()
        assert cluster.status(key)["placements"][0]["precision"] == "FP8"
        cluster.edit_workload(key, {"precisions": ["BF16"]})
        cluster.settle()
        assert [p["precision"] for p in cluster.status(key)["placements"]] == ["BF16"]


class TestNodeLoss:
    def test_a_not_ready_node_is_given_its_grace_then_its_replicas_move(self) -> None:
        cluster = fleet("h1", "h2")
        key = cluster.add_workload(workload("chat", devicesPerReplica=8, runtimes=("nvidia",)))
        cluster.settle()
        (before,) = placements(cluster, key).values()
        cluster.set_ready(before[0], False)
        cluster.advance(10)
        outcome = cluster.step()
        assert not [a for a in outcome.actions if isinstance(a, DeletePod)], "still within the grace period"
        assert outcome.wake_at == cluster.now + timedelta(seconds=20)
        cluster.advance(21)
        outcome = cluster.step()
        deletes = [a for a in outcome.actions if isinstance(a, DeletePod)]
        assert deletes
        assert all(d.force for d in deletes), "a NotReady node's kubelet will never confirm"
        cluster.settle()
        (after,) = placements(cluster, key).values()
        assert after != before
        assert reasons(cluster)["Rescheduled"] == 1

    def test_replicas_a_not_ready_node_no_longer_serves_are_replaced_within_the_grace(self) -> None:
        cluster = fleet("h1", "h2", "h3")
        key = cluster.add_workload(workload("chat", replicas=2, devicesPerReplica=8, runtimes=("nvidia",)))
        cluster.settle()
        before = placements(cluster, key)
        dead = before[0][0]
        cluster.set_ready(dead, False)
        for pod in cluster.pods.values():  # node lifecycle marks the pods of a NotReady node not Ready
            if (
                pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                    "nodeSelectorTerms"
                ][0]["matchExpressions"][0]["values"][0]
                == dead
            ):
                pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}
        cluster.advance(2)
        outcome = cluster.step(kubelet=False)
        created = [a for a in outcome.actions if isinstance(a, CreatePod)]
        assert len(created) == 1, "the replica that serves nothing is replaced at once"
        assert not [a for a in outcome.actions if isinstance(a, DeletePod)], "its pods stay until the grace ends"
        assert outcome.wake_at == cluster.now + timedelta(seconds=28)
        (draining,) = [e for e in cluster.events if e.reason == "Draining"]
        assert draining.type.value == "Warning"
        assert f"replica 0 on {dead}" in draining.message
        assert "not Ready since 2026-11-25T12:00:00Z" in draining.message
        # the same words on every pass of the grace, so the controller's de-duplication holds if the
        # replacement cannot be placed and the step repeats
        state = cluster.state()
        ledger = replicas_of(state.pods)
        later = replace(state, now=state.now + timedelta(seconds=10))
        assert find_losses(state, ledger, timedelta(seconds=30)).lost[dead].message == (
            find_losses(later, ledger, timedelta(seconds=30)).lost[dead].message
        )
        cluster.step()  # the replacement runs; the replica it replaces is let go (gracefully: still in grace)
        cluster.step()
        deleted = [a for a in cluster.applied if isinstance(a, DeletePod)]
        assert [d.target.name for d in deleted] == ["chat-0-0"], "the replaced replica is let go"
        assert not deleted[0].force, "gracefully: its node is still in its grace"
        cluster.advance(30)
        cluster.settle()
        after = placements(cluster, key)
        assert len(after) == 2
        assert all(dead not in nodes for nodes in after.values())
        assert (len(cluster.pods_of(key))) == 2

    def test_a_gang_moves_together_when_one_of_its_nodes_is_lost(self) -> None:
        cluster = FakeCluster().fleet(node(f"h{i}", H100, domain="a") for i in range(4))
        key = cluster.add_workload(
            workload(
                "big", params=405, precisions=("FP8",), nodesPerReplica=2, devicesPerReplica=16, runtimes=("nvidia",)
            )
        )
        cluster.settle()
        (gang,) = placements(cluster, key).values()
        del cluster.nodes[gang[1]]  # the Node object is gone
        cluster.settle()
        (moved,) = placements(cluster, key).values()
        assert set(moved).isdisjoint({gang[1]})
        assert len(cluster.pods_of(key)) == 2

    def test_cordoning_drains_a_replica_replacement_first(self) -> None:
        cluster = fleet("h1", "h2")
        key = cluster.add_workload(workload("chat", devicesPerReplica=8, runtimes=("nvidia",)))
        cluster.settle()
        (before,) = placements(cluster, key).values()
        cluster.edit_compute_node(before[0], {"unschedulable": True})
        outcome = cluster.step()
        assert not [a for a in outcome.actions if isinstance(a, DeletePod)], "the old replica serves meanwhile"
        assert len([a for a in outcome.actions if isinstance(a, CreatePod)]) == 1
        outcome = cluster.step()
        deletes = [a for a in outcome.actions if isinstance(a, DeletePod)]
        assert len(deletes) == 1
        assert not deletes[0].force, "a cordoned node's kubelet stops the pod gracefully"
        cluster.settle()
        assert list(placements(cluster, key).values()) != [before]
        assert reasons(cluster)["Draining"] == 1

    def test_deleting_a_compute_node_moves_its_replicas(self) -> None:
        cluster = fleet("h1", "h2")
        key = cluster.add_workload(workload("chat", devicesPerReplica=8, runtimes=("nvidia",)))
        cluster.settle()
        (before,) = placements(cluster, key).values()
        del cluster.compute_nodes[before[0]]
        cluster.settle()
        (after,) = placements(cluster, key).values()
        assert after != before


class TestRecovery:
    def test_a_half_created_gang_is_completed_on_its_own_nodes(self) -> None:
        cluster = FakeCluster().fleet(node(f"h{i}", H100) for i in range(2))
        key = cluster.add_workload(
            workload(
                "big", params=405, precisions=("FP8",), nodesPerReplica=2, devicesPerReplica=16, runtimes=("nvidia",)
            )
        )
        outcome = reconcile(cluster.state())
        creates = [a for a in outcome.actions if isinstance(a, CreatePod)]
        # The operator dies after creating rank 0 only.
        cluster.apply(type(outcome)((creates[0],), None, outcome.placed, 0))
        cluster.settle()
        assert sorted(p.split("/")[1] for p in cluster.pods_of(key)) == ["big-0-0", "big-0-1"]

    def test_pods_with_disagreeing_records_are_replaced(self) -> None:
        cluster = fleet("h1", "h2")
        key = cluster.add_workload(workload("chat", runtimes=("nvidia",)))
        cluster.settle()
        (pod,) = cluster.pods_of(key).values()
        pod["metadata"]["annotations"]["gpufabric.io/replica-nodes"] = "h1,h2"
        cluster.settle()
        (pod,) = cluster.pods_of(key).values()
        assert pod["metadata"]["annotations"]["gpufabric.io/replica-nodes"] in ("h1", "h2")


def test_status_patches_carry_only_what_changed() -> None:
    cluster = fleet("h1")
    key = cluster.add_workload(workload("chat", runtimes=("nvidia",)))
    cluster.settle()
    cluster.workloads[key]["status"]["tokensPerSecond"] = {"prompt": 10.0, "generation": 20.0}
    cluster.edit_workload(key, {"priority": 5})
    outcome = cluster.step()
    (patch,) = [a for a in outcome.actions if isinstance(a, PatchStatus) and a.target.kind is Kind.AGENT_WORKLOAD]
    assert set(patch.status) == {"observedGeneration", "conditions"}
    assert cluster.status(key)["tokensPerSecond"] == {"prompt": 10.0, "generation": 20.0}


def test_settings_set_the_grace_period() -> None:
    cluster = fleet("h1", "h2")
    key = cluster.add_workload(workload("chat", devicesPerReplica=8, runtimes=("nvidia",)))
    cluster.settle()
    (before,) = placements(cluster, key).values()
    cluster.set_ready(before[0], False)
    cluster.advance(3)
    outcome = cluster.step(Settings(node_grace=timedelta(seconds=2)))
    assert any(isinstance(a, DeletePod) for a in outcome.actions)
    assert any(isinstance(a, Event) and a.reason == "Rescheduled" for a in outcome.actions)


class TestEngines:
    def test_a_mindie_replica_gets_its_config_and_loses_it_with_the_replica(self) -> None:
        cluster = fleet("a1", "a2", accelerator=ASCEND, domain="b")
        chat = workload("chat", replicas=2, devicesPerReplica=2, runtimes=("ascend",))
        spec = chat.wire()["spec"]
        spec["runtimes"]["ascend"] |= {"engine": "mindie", "checkpoints": {"BF16": "/models/chat"}}
        key = cluster.add_workload(type(chat).model_validate({**chat.wire(), "spec": spec}))
        cluster.settle()
        assert sorted(cluster.config_maps) == ["default/chat-0-engine", "default/chat-1-engine"]
        config = json.loads(cluster.config_maps["default/chat-0-engine"]["data"]["config.json"])
        assert config["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]["modelWeightPath"] == "/models/chat"
        pod = cluster.pods["default/chat-0-0"]
        assert pod["metadata"]["annotations"]["gpufabric.io/engine-config"] == "chat-0-engine"
        cluster.edit_workload(key, {"replicas": 1})
        cluster.settle()
        assert sorted(cluster.config_maps) == ["default/chat-0-engine"], "the scaled-down replica's config goes too"

    def test_a_restarted_rank_restarts_the_whole_gang(self) -> None:
        cluster = fleet("h1", "h2")
        key = cluster.add_workload(
            workload("big", devicesPerReplica=16, nodesPerReplica=2, runtimes=("nvidia",), precisions=("FP8",))
        )
        cluster.settle()
        rank1 = cluster.pods["default/big-0-1"]
        rank1["status"]["containerStatuses"] = [{"name": "server", "restartCount": 1, "ready": True}]
        cluster.applied.clear()
        cluster.settle()
        deleted = sorted(a.target.name for a in cluster.applied if isinstance(a, DeletePod))
        assert deleted == ["big-0-0", "big-0-1"], "both ranks go, not only the one that restarted"
        recreated = sorted(a.target.name for a in cluster.applied if isinstance(a, CreatePod))
        assert recreated == ["big-0-0", "big-0-1"]
        assert all(not p["status"].get("containerStatuses") for p in cluster.pods_of(key).values())
        assert any(e.reason == "GangRestarted" and "rank 1 restarted" in e.message for e in cluster.events)
        assert cluster.condition(key, "Ready")["status"] == "True"

    def test_a_custom_command_line_that_contradicts_the_placement_degrades_the_workload(self) -> None:
        cluster = fleet("h1")
        chat = workload("chat", devicesPerReplica=2, runtimes=("nvidia",))
        spec = chat.wire()["spec"]
        spec["runtimes"]["nvidia"]["args"] = ["--tensor-parallel-size", "4"]
        key = cluster.add_workload(type(chat).model_validate({**chat.wire(), "spec": spec}))
        cluster.settle()
        degraded = cluster.condition(key, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "ArgsConflict")
        assert (
            degraded["message"]
            == "nvidia: args ask for 4 devices (tensor x pipeline parallel) but the replica was given 2"
        )

    def test_a_precision_the_engine_cannot_serve_without_weights_is_refused_with_the_reason(self) -> None:
        cluster = fleet("a1", "a2", accelerator=ASCEND, domain="b")
        chat = workload("chat", runtimes=("ascend",), precisions=("INT8",))
        spec = chat.wire()["spec"]
        spec["runtimes"]["ascend"]["engine"] = "vllm"
        key = cluster.add_workload(type(chat).model_validate({**chat.wire(), "spec": spec}))
        cluster.settle()
        placed = cluster.condition(key, "Placed")
        assert placed["reason"] == "Unschedulable"
        assert placed["message"] == (
            "0/2 nodes: 2 engine vllm on ascend serves INT8 only from a quantized checkpoint: "
            "set spec.runtimes.ascend.checkpoints.INT8"
        )
