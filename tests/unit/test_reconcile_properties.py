"""Many passes under random churn (hypothesis drives a FakeCluster): workloads come, scale, change image,
and go; nodes fail, come back, get cordoned, vanish; the operator's passes sometimes die half way.
After every pass: no device promised twice, no duplicate pods; once things settle, every workload is
either fully placed or carries an honest reason."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufabric.reconcile import Event, Outcome, Settings, reconcile
from support.fakecluster import FakeCluster
from support.fleet import node, workload

GRACE = Settings(node_grace=timedelta(seconds=5))
NODES = [
    ("h0", "H100-SXM5-80GB", "a"),
    ("h1", "H100-SXM5-80GB", "a"),
    ("h2", "H100-SXM5-80GB", "b"),
    ("a0", "Ascend-910B3", "b"),
    ("a1", "Ascend-910B3", "b"),
]


def check_invariants(cluster: FakeCluster) -> None:
    used: Counter[str] = Counter()
    seen: set[tuple[str, str, int, int]] = set()
    for pod in cluster.pods.values():
        notes = pod["metadata"]["annotations"]
        labels = pod["metadata"]["labels"]
        used[notes["gpufabric.io/compute-node"]] += int(notes["gpufabric.io/devices"])
        identity = (
            pod["metadata"]["namespace"],
            labels["gpufabric.io/workload"],
            int(labels["gpufabric.io/replica"]),
            int(labels["gpufabric.io/rank"]),
        )
        assert identity not in seen, f"duplicate pod {identity}"
        seen.add(identity)
    for name, devices in used.items():
        body = cluster.compute_nodes.get(name)
        if body is not None:
            assert devices <= body["spec"]["devices"], (
                f"{name}: {devices} devices promised of {body['spec']['devices']}"
            )


# ("add", workload index, replicas, devices per replica, vendors with a runtime)
add_workload = st.tuples(
    st.just("add"),
    st.integers(0, 5),
    st.integers(1, 3),
    st.sampled_from([1, 2, 4, 8]),
    st.sampled_from([("nvidia",), ("ascend",), ("nvidia", "ascend")]),
)

operations = st.one_of(
    add_workload,
    st.tuples(st.just("scale"), st.integers(0, 5), st.integers(0, 4)),
    st.tuples(st.just("image"), st.integers(0, 5), st.integers(0, 9)),
    st.tuples(st.just("remove"), st.integers(0, 5)),
    st.tuples(st.just("down"), st.integers(0, 4)),
    st.tuples(st.just("up"), st.integers(0, 4)),
    st.tuples(st.just("cordon"), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("crash"), st.integers(0, 30)),
    st.tuples(st.just("wait"), st.integers(1, 10)),
)


def apply_operation(cluster: FakeCluster, operation: tuple[Any, ...]) -> None:
    kind = operation[0]
    if kind == "add":
        _, index, replicas, devices, runtimes = operation
        item = workload(f"w{index}", replicas=replicas, devicesPerReplica=devices, runtimes=runtimes)
        key = f"default/w{index}"
        if key not in cluster.workloads:
            cluster.add_workload(item)
    elif kind in ("scale", "image", "remove"):
        key = f"default/w{operation[1]}"
        if key not in cluster.workloads:
            return
        if kind == "scale":
            cluster.edit_workload(key, {"replicas": operation[2]})
        elif kind == "image":
            vendor = next(iter(cluster.workloads[key]["spec"]["runtimes"]))
            cluster.edit_workload(key, {"runtimes": {vendor: {"image": f"server:v{operation[2]}"}}})
        else:
            del cluster.workloads[key]
            for pod_key in list(cluster.pods_of(key)):  # the garbage collector, in effect
                cluster.pods[pod_key]["metadata"]["deletionTimestamp"] = cluster.now.isoformat()
    elif kind in ("down", "up"):
        name = NODES[operation[1]][0]
        cluster.set_ready(name, kind == "up")
    elif kind == "cordon":
        cluster.edit_compute_node(NODES[operation[1]][0], {"unschedulable": operation[2]})
    elif kind == "wait":
        cluster.advance(operation[1])


initial_workloads = st.lists(
    add_workload,
    min_size=2,
    max_size=5,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial_workloads, st.lists(operations, min_size=8, max_size=30))
def test_random_churn_never_double_books_and_settles_honestly(
    start: list[tuple[Any, ...]], history: list[tuple[Any, ...]]
) -> None:
    cluster = FakeCluster().fleet(node(name, accelerator, domain=domain) for name, accelerator, domain in NODES)
    for operation in start:
        apply_operation(cluster, operation)
    for operation in history:
        if operation[0] == "crash":
            # The operator dies part way through a pass: only some of its writes land.
            outcome = reconcile(cluster.state(), GRACE)
            cut = operation[1] % (len(outcome.actions) + 1)
            cluster.apply(Outcome(outcome.actions[:cut], outcome.wake_at, outcome.placed, outcome.refused))
        else:
            apply_operation(cluster, operation)
            cluster.step(GRACE)
        check_invariants(cluster)
    # Let it settle: bring everything back, wait out grace periods, run passes until quiet.
    for name, _, _ in NODES:
        cluster.set_ready(name, True)
        cluster.edit_compute_node(name, {"unschedulable": False})
    outcomes = cluster.settle(GRACE, passes=40)
    check_invariants(cluster)
    assert not [a for a in outcomes[-1].actions if not isinstance(a, Event)], "did not settle"
    for key, body in cluster.workloads.items():
        status = body.get("status", {})
        placed = next(c for c in status["conditions"] if c["type"] == "Placed")
        if placed["status"] == "True":
            assert status["readyReplicas"] == body["spec"]["replicas"], key
            assert len(cluster.pods_of(key)) == sum(len(p["nodes"]) for p in status["placements"])
        else:
            assert placed["reason"] == "Unschedulable", (key, placed)
            assert placed["message"].startswith("0/"), (key, placed)
