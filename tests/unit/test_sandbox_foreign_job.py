"""The sandbox's foreign job: a pod the operator does not manage, as the operator's own watch and parser see it."""

from __future__ import annotations

import io
from pathlib import Path

from gpufabric.api import labels
from gpufabric.controller.clusterwatch import OTHERS_PODS
from gpufabric.reconcile.observe import foreign_pod, is_managed
from gpufabric.reconcile.state import ForeignPod
from gpufabric.sandbox.emulator import JsonDict
from gpufabric.sandbox.emulator.selectors import POD_FIELDS, parse_field_selector, parse_label_selector
from gpufabric.sandbox.run import ForeignJob, Sandbox, SandboxOptions, World, foreign_job_pod, read_inputs
from gpufabric.sandbox.scenario import DEFAULT_SCENARIO, FOREIGN_NAMESPACE
from gpufabric.sandbox.view import Display

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_a_foreign_job_is_someone_elses_pod_holding_every_device_it_asks_for() -> None:
    body = foreign_job_pod("nightly-training", "gpu-a-h100-03", "nvidia.com/gpu", 8)
    assert not is_managed(body)
    assert body["metadata"]["namespace"] == FOREIGN_NAMESPACE
    assert body["spec"]["nodeName"] == "gpu-a-h100-03"
    # The operator's watch selects it (bound, not finished, not the operator's) and keeps what it holds.
    labels = parse_label_selector(OTHERS_PODS["labelSelector"])
    fields = parse_field_selector(OTHERS_PODS["fieldSelector"], POD_FIELDS)
    assert labels(body["metadata"]["labels"])
    assert fields(body)
    assert foreign_pod(body, frozenset({"nvidia.com/gpu", "huawei.com/Ascend910"})) == ForeignPod(
        f"{FOREIGN_NAMESPACE}/nightly-training", "gpu-a-h100-03", (("nvidia.com/gpu", 8),)
    )
    # Finished, it holds nothing: the watch's field selector drops it.
    assert not fields({**body, "status": {"phase": "Succeeded"}})


def our_pod(uid: str, nodes: str, *, terminating: bool = False) -> JsonDict:
    meta: JsonDict = {
        "uid": uid,
        "name": f"chat-{uid}-0",
        "namespace": "agents",
        "labels": {labels.MANAGED_BY: labels.MANAGER, labels.RANK: "0"},
        "annotations": {labels.REPLICA_NODES: nodes},
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-12-07T23:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": nodes.split(",", maxsplit=1)[0]}}


def compute_node(name: str, held: int | None) -> JsonDict:
    status = {} if held is None else {"heldByOthers": held}
    return {"metadata": {"name": name}, "spec": {"nodeName": name}, "status": status}


def world(pods: list[JsonDict], compute_nodes: list[JsonDict]) -> World:
    return World(pods=pods, nodes=[], compute_nodes=compute_nodes, workloads=[], events=[])


def sandbox() -> Sandbox:
    options = SandboxOptions(fleet=[EXAMPLES / "fleet"], workloads=[EXAMPLES / "workloads"], scenario=DEFAULT_SCENARIO)
    return Sandbox(options, read_inputs(options), Display(io.StringIO()))


def test_the_run_notes_what_the_operator_counted_and_placed_while_the_job_ran() -> None:
    run = sandbox()
    job = ForeignJob("training", "gpu-3", "nvidia.com/gpu", 8, 20.0, frozenset({"old"}))
    run.books.foreign_jobs["training"] = job
    pending = {"metadata": {"name": "training", "namespace": FOREIGN_NAMESPACE}, "status": {"phase": "Pending"}}
    running = {**pending, "status": {"phase": "Running"}}
    run._note_foreign_jobs(world([pending, our_pod("old", "gpu-1")], [compute_node("gpu-3", None)]))
    assert (job.held_seen, job.placed) == (0, {})  # the operator has not counted it yet
    later = [
        running,
        our_pod("old", "gpu-1"),
        our_pod("new", "gpu-4,gpu-5"),
        our_pod("gone", "gpu-3", terminating=True),
    ]
    run._note_foreign_jobs(world(later, [compute_node("gpu-3", 8)]))
    run._note_foreign_jobs(world([running], [compute_node("gpu-3", 3)]))  # the most it counted stays
    job.ended_at = 55.0
    run._note_foreign_jobs(world([running, our_pod("after", "gpu-3")], [compute_node("gpu-3", 8)]))
    report = job.report()
    assert (report.held_seen, report.placed, report.placed_on_node, report.rejected) == (8, 1, 0, None)
    assert (report.pod, report.started_at, report.ended_at) == (f"{FOREIGN_NAMESPACE}/training", 20.0, 55.0)


def test_a_job_the_kubelet_rejects_is_said_and_no_longer_watched() -> None:
    run = sandbox()
    job = ForeignJob("late", "gpu-1", "nvidia.com/gpu", 8, 40.0, frozenset())
    run.books.foreign_jobs["late"] = job
    refused = {
        "metadata": {"name": "late", "namespace": FOREIGN_NAMESPACE},
        "status": {"phase": "Failed", "reason": "OutOfnvidia.com/gpu", "message": "Pod was rejected: ..."},
    }
    run._note_foreign_jobs(world([refused, our_pod("new", "gpu-1")], [compute_node("gpu-1", 0)]))
    assert job.rejected == "OutOfnvidia.com/gpu: Pod was rejected: ..."
    assert not job.watched
    assert job.placed == {}
    assert [line.text for line in run.books.log] == [
        f"warning: the kubelet rejected foreign job {FOREIGN_NAMESPACE}/late: "
        "OutOfnvidia.com/gpu: Pod was rejected: ..."
    ]
    assert [line.source for line in run.books.log] == ["log"]
