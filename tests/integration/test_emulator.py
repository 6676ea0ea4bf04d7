"""FabricEmulator and SimulatedKubelet through real HTTP: the official kubernetes client (the operator's
writer) for the API semantics, the harness client for set-up, and a real kopf operator at the end."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import kmock
import kopf
import kubernetes
import pytest
from kubernetes.client import ApiException

from gpufabric.sandbox.emulator import FabricEmulator, FaultPlan, HarnessError, JsonDict, parse_label_selector
from gpufabric.sandbox.kubelet import SimulatedKubelet

CN = "gpufabric.io/v1alpha1/computenodes"
AW = "gpufabric.io/v1alpha1/agentworkloads"
GROUP, VERSION = "gpufabric.io", "v1alpha1"
RFC3339_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture
async def emulator() -> AsyncIterator[FabricEmulator]:
    async with FabricEmulator() as emulator, kmock.Server(emulator):
        yield emulator
        # Only unexpected exceptions land here, never the API errors the tests provoke on purpose.
        assert emulator.errors == []


@pytest.fixture
def api(emulator: FabricEmulator) -> Iterator[Any]:
    """The kubernetes client pointed at the emulator. Typed Any: we pass plain dicts as bodies, which the
    client serialises as they are, while its annotations ask for its generated models."""
    configuration = kubernetes.client.Configuration(host=str(emulator.url).rstrip("/"))
    with kubernetes.client.ApiClient(configuration) as client:
        yield client


@pytest.fixture
def core(api: Any) -> Any:
    return kubernetes.client.CoreV1Api(api)


@pytest.fixture
def custom(api: Any) -> Any:
    return kubernetes.client.CustomObjectsApi(api)


@pytest.fixture
async def kubelet(emulator: FabricEmulator) -> AsyncIterator[SimulatedKubelet]:
    async with SimulatedKubelet(emulator, interval=0.02, ready_after=0.05, terminate_after=0.05) as kubelet:
        yield kubelet
        assert kubelet.errors == []


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The kubernetes client blocks; the operator calls it from threads, and so do we."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def refused(awaitable: Awaitable[Any]) -> tuple[int, JsonDict]:
    """The status code and Status body of a request the server refuses."""
    try:
        await awaitable
    except ApiException as error:
        return int(error.status), json.loads(error.body or "{}")
    raise AssertionError("the request succeeded")


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def watch(emulator: FabricEmulator, resource: str, **params: str) -> list[JsonDict]:
    """All events of a harness watch that the server ends after timeoutSeconds (default 0.2)."""
    params.setdefault("timeoutSeconds", "0.2")
    return [event async for event in emulator.h_watch(resource, params=params)]


def node(name: str) -> JsonDict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ComputeNode",
        "metadata": {"name": name},
        "spec": {"nodeName": name},
    }


def pod(name: str, *, labels: dict[str, str] | None = None, node_name: str | None = None, **extra: Any) -> JsonDict:
    body: JsonDict = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, **extra.pop("metadata", {})},
        "spec": {"containers": [{"name": "server", "image": "vllm"}]},
    }
    if node_name is not None:
        body["spec"]["nodeName"] = node_name
    body["spec"].update(extra)
    return body


def gpu_pod(name: str, gpus: int, *, hostname: str, pin: str = "affinity") -> JsonDict:
    """A pod asking for GPUs on one node, pinned the way the operator pins (affinity) or bound directly."""
    body = pod(name)
    body["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if pin == "affinity":
        expression = {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}
        term = {"matchExpressions": [expression]}
        body["spec"]["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    else:
        body["spec"]["nodeName"] = hostname
    return body


def owner(obj: JsonDict) -> JsonDict:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
    }


# ---- discovery -----------------------------------------------------------------------------------------


async def test_discovery_serves_the_crds_and_the_builtins_kopf_needs(emulator: FabricEmulator, api: Any) -> None:
    fabric = {r["name"]: r for r in (await emulator.h_request("GET", "/apis/gpufabric.io/v1alpha1"))["resources"]}
    assert fabric["computenodes"]["kind"] == "ComputeNode"
    assert fabric["computenodes"]["namespaced"] is False
    assert fabric["agentworkloads"]["namespaced"] is True
    assert {"computenodes/status", "agentworkloads/status", "agentworkloads/scale"} <= set(fabric)
    assert {"list", "watch", "get", "create", "patch", "update", "delete"} <= set(fabric["computenodes"]["verbs"])

    core_resources = await call(kubernetes.client.CoreV1Api(api).get_api_resources)
    # "v1", as kube-apiserver says: with kmock's "/v1" kubectl loses the core group (get pods -> PodMetrics)
    assert core_resources.group_version == "v1"
    assert (await emulator.h_request("GET", "/apis/gpufabric.io/v1alpha1"))["groupVersion"] == "gpufabric.io/v1alpha1"
    verbs = {r.name: set(r.verbs) for r in core_resources.resources}
    for plural in ("namespaces", "nodes", "pods", "services", "events", "configmaps"):
        assert {"list", "watch", "get", "create", "patch", "update", "delete"} <= verbs[plural]
    groups = {g.name for g in (await call(kubernetes.client.ApisApi(api).get_api_versions)).groups}
    assert {"gpufabric.io", "apiextensions.k8s.io", "events.k8s.io", "coordination.k8s.io"} <= groups

    crds = await call(kubernetes.client.ApiextensionsV1Api(api).list_custom_resource_definition)
    assert sorted(c.metadata.name for c in crds.items) == ["agentworkloads.gpufabric.io", "computenodes.gpufabric.io"]
    assert all(any(c.type == "Established" and c.status == "True" for c in crd.status.conditions) for crd in crds.items)


# ---- writes: create ------------------------------------------------------------------------------------


async def test_create_assigns_server_owned_metadata(emulator: FabricEmulator, core: Any, custom: Any) -> None:
    body = node("n1") | {"status": {"freeDevices": 8}}
    created = await call(custom.create_cluster_custom_object, GROUP, VERSION, "computenodes", body)
    meta = created["metadata"]
    assert uuid.UUID(meta["uid"]).version == 4
    assert RFC3339_Z.fullmatch(meta["creationTimestamp"])
    assert meta["resourceVersion"].isdigit()
    assert meta["generation"] == 1
    assert "status" not in created  # the CRD strategy drops status on create when it is a subresource

    running = pod("p") | {"status": {"phase": "Running"}}
    assert (await call(core.create_namespaced_pod, "agents", running)).status.phase == "Pending"


async def test_generate_name_and_already_exists(emulator: FabricEmulator, core: Any) -> None:
    generated = await call(core.create_namespaced_pod, "agents", pod("", metadata={"generateName": "web-"}))
    assert re.fullmatch(r"web-[a-z0-9]{5}", generated.metadata.name)

    await call(core.create_namespaced_pod, "agents", pod("fixed"))
    status, body = await refused(call(core.create_namespaced_pod, "agents", pod("fixed")))
    assert (status, body["code"], body["reason"], body["kind"]) == (409, 409, "AlreadyExists", "Status")

    await call(core.delete_namespaced_pod, "fixed", "agents")  # unscheduled: removed at once
    again = await call(core.create_namespaced_pod, "agents", pod("fixed"))
    assert again.metadata.uid != generated.metadata.uid


async def test_the_namespace_comes_from_the_url(emulator: FabricEmulator, custom: Any) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AgentWorkload", "metadata": {"name": "chat"}, "spec": {}}
    created = await call(custom.create_namespaced_custom_object, GROUP, VERSION, "agents", "agentworkloads", body)
    assert created["metadata"]["namespace"] == "agents"
    assert emulator.get_object(AW, "chat", "agents") is not None

    elsewhere = body | {"metadata": {"name": "other", "namespace": "elsewhere"}}
    status, _ = await refused(
        call(custom.create_namespaced_custom_object, GROUP, VERSION, "agents", "agentworkloads", elsewhere)
    )
    assert status == 400


# ---- store and writes: resourceVersion, optimistic concurrency, generation -----------------------------


async def test_resource_version_is_one_global_increasing_counter(
    emulator: FabricEmulator, core: Any, custom: Any
) -> None:
    listed_before = await call(custom.list_cluster_custom_object, GROUP, VERSION, "computenodes")
    versions = [int(listed_before["metadata"]["resourceVersion"])]
    versions.append(
        int(
            (await call(custom.create_cluster_custom_object, GROUP, VERSION, "computenodes", node("a")))["metadata"][
                "resourceVersion"
            ]
        )
    )
    versions.append(int((await call(core.create_namespaced_pod, "agents", pod("p"))).metadata.resource_version))
    patched = await call(
        custom.patch_cluster_custom_object, GROUP, VERSION, "computenodes", "a", {"spec": {"devices": 8}}
    )
    versions.append(int(patched["metadata"]["resourceVersion"]))
    assert versions == sorted(set(versions))  # strictly increasing across resources

    listed = await call(custom.list_cluster_custom_object, GROUP, VERSION, "computenodes")
    assert listed["metadata"]["resourceVersion"] == emulator.resource_version == str(versions[-1])

    await call(core.delete_namespaced_pod, "p", "agents")
    events = await watch(emulator, "v1/pods", resourceVersion=str(versions[-1]))
    assert [e["type"] for e in events] == ["DELETED"]
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) == int(emulator.resource_version) > versions[-1]


async def test_a_stale_resource_version_is_a_conflict(emulator: FabricEmulator, custom: Any) -> None:
    created = await call(custom.create_cluster_custom_object, GROUP, VERSION, "computenodes", node("a"))
    stale = created["metadata"]["resourceVersion"]
    fresh = await call(
        custom.patch_cluster_custom_object, GROUP, VERSION, "computenodes", "a", {"spec": {"devices": 4}}
    )

    patch = {"metadata": {"resourceVersion": stale}, "spec": {"devices": 8}}
    status, body = await refused(call(custom.patch_cluster_custom_object, GROUP, VERSION, "computenodes", "a", patch))
    assert (status, body["reason"]) == (409, "Conflict")
    assert emulator.get_object(CN, "a") == fresh  # nothing applied

    patch["metadata"]["resourceVersion"] = fresh["metadata"]["resourceVersion"]
    assert (await call(custom.patch_cluster_custom_object, GROUP, VERSION, "computenodes", "a", patch))["spec"][
        "devices"
    ] == 8

    # kopf's JSON patches start with `test /metadata/resourceVersion`; the API server answers a failed test 422.
    test_op = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": stale},
        {"op": "add", "path": "/spec/x", "value": 1},
    ]
    with pytest.raises(HarnessError) as failed:
        await emulator.h_patch(CN, "a", test_op)
    assert failed.value.status == 422


async def test_no_op_writes_commit_nothing(emulator: FabricEmulator, custom: Any) -> None:
    created = await call(custom.create_cluster_custom_object, GROUP, VERSION, "computenodes", node("a"))
    same = await call(
        custom.patch_cluster_custom_object, GROUP, VERSION, "computenodes", "a", {"spec": {"nodeName": "a"}}
    )
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"] == emulator.resource_version


async def test_generation_follows_everything_but_metadata_and_status(emulator: FabricEmulator, custom: Any) -> None:
    await call(custom.create_cluster_custom_object, GROUP, VERSION, "computenodes", node("a"))

    async def patched(patch: JsonDict, subresource: str = "") -> int:
        fn = custom.patch_cluster_custom_object_status if subresource else custom.patch_cluster_custom_object
        return int((await call(fn, GROUP, VERSION, "computenodes", "a", patch))["metadata"]["generation"])

    assert await patched({"metadata": {"labels": {"rack": "r1"}, "annotations": {"a": "b"}}}) == 1
    assert await patched({"status": {"freeDevices": 3}}, "status") == 1
    assert await patched({"spec": {"devices": 8}}) == 2
    assert await patched({"spec": {"unschedulable": True}}) == 3


# ---- writes: status subresource; what is not emulated --------------------------------------------------


async def test_status_subresource_separates_status_from_the_rest(
    emulator: FabricEmulator, core: Any, custom: Any
) -> None:
    await call(custom.create_cluster_custom_object, GROUP, VERSION, "computenodes", node("a"))

    both = {"spec": {"devices": 99}, "status": {"freeDevices": 4}}
    after_status = await call(custom.patch_cluster_custom_object_status, GROUP, VERSION, "computenodes", "a", both)
    assert after_status["status"] == {"freeDevices": 4}
    assert "devices" not in after_status["spec"]  # only status changes through /status

    after_main = await call(
        custom.patch_cluster_custom_object,
        GROUP,
        VERSION,
        "computenodes",
        "a",
        {"spec": {"devices": 2}, "status": {"freeDevices": 0}},
    )
    assert after_main["spec"]["devices"] == 2
    assert after_main["status"] == {"freeDevices": 4}  # the main resource ignores status

    await call(core.create_namespaced_pod, "agents", pod("p"))
    patched_pod = await call(
        core.patch_namespaced_pod_status, "p", "agents", {"status": {"phase": "Running", "podIP": "10.0.0.9"}}
    )
    assert (patched_pod.status.phase, patched_pod.status.pod_ip) == ("Running", "10.0.0.9")
    ignored = await call(core.patch_namespaced_pod, "p", "agents", {"status": {"phase": "Failed"}})
    assert ignored.status.phase == "Running"

    await call(core.create_namespaced_config_map, "agents", {"metadata": {"name": "cm"}, "data": {}})
    with pytest.raises(HarnessError) as missing:  # config maps have no status subresource
        await emulator.h_patch("v1/configmaps", "cm", {"status": {}}, namespace="agents", subresource="status")
    assert missing.value.status == 404


async def test_what_is_not_emulated_is_refused(emulator: FabricEmulator, core: Any, custom: Any) -> None:
    """PUT, field selectors on fields the API server does not index, initial streaming, Orphan propagation,
    the scale subresource: nothing the operator or kopf sends against the emulator uses them, so it refuses
    them rather than answer with semantics it lacks."""
    created = await call(custom.create_cluster_custom_object, GROUP, VERSION, "computenodes", node("a"))
    status, body = await refused(
        call(custom.replace_cluster_custom_object, GROUP, VERSION, "computenodes", "a", created)
    )
    assert (status, body["reason"]) == (405, "MethodNotAllowed")
    with pytest.raises(HarnessError) as spelled:  # the API server would watch; kmock would list
        await emulator.h_request("GET", "/api/v1/pods?watch=1")
    assert spelled.value.status == 400
    status, body = await refused(call(core.list_namespaced_pod, "agents", field_selector="spec.containers=x"))
    assert (status, body["message"]) == (400, 'field label not supported: "spec.containers"')
    status, _ = await refused(
        call(custom.list_cluster_custom_object, GROUP, VERSION, "computenodes", field_selector="spec.nodeName=n")
    )
    assert status == 400  # only pods have selectable fields beyond metadata's
    with pytest.raises(HarnessError) as streaming:  # kopf's opt-in initial streaming
        await watch(emulator, CN, sendInitialEvents="true", resourceVersionMatch="NotOlderThan")
    assert streaming.value.status == 400
    orphan = kubernetes.client.V1DeleteOptions(propagation_policy="Orphan")
    status, _ = await refused(
        call(custom.delete_cluster_custom_object, GROUP, VERSION, "computenodes", "a", body=orphan)
    )
    assert status == 400
    assert emulator.get_object(CN, "a") == created  # nothing applied

    await emulator.h_create(AW, {"metadata": {"name": "chat", "namespace": "agents"}, "spec": {"replicas": 2}})
    scale = (GROUP, VERSION, "agents", "agentworkloads", "chat")
    status, _ = await refused(call(custom.get_namespaced_custom_object_scale, *scale))
    assert status == 404
    status, _ = await refused(call(custom.patch_namespaced_custom_object_scale, *scale, {"spec": {"replicas": 5}}))
    assert status == 404


# ---- selectors -----------------------------------------------------------------------------------------

LABELS = {"a": {"app": "chat", "tier": "gpu"}, "b": {"app": "code", "tier": "gpu"}, "c": {"app": "chat"}, "d": {}}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", "abcd"),
        ("app=chat", "ac"),
        ("app==chat", "ac"),
        ("app!=chat", "bd"),
        ("tier", "ab"),
        ("!tier", "cd"),
        ("app in (chat, code)", "abc"),
        ("app notin (chat)", "bd"),
        ("app in (chat,code),tier", "ab"),
        ("app=chat,!tier", "c"),
    ],
)
def test_label_selector_syntax(selector: str, expected: str) -> None:
    matches = parse_label_selector(selector)
    assert "".join(name for name, labels in LABELS.items() if matches(labels)) == expected


@pytest.mark.parametrize("selector", ["app in ()", "app in chat", "=chat", "app=chat,,x", "a>b"])
def test_malformed_label_selectors_are_refused(selector: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_label_selector(selector)


async def test_list_and_watch_filter_by_label_selector(emulator: FabricEmulator, core: Any) -> None:
    for name, labels in LABELS.items():
        await call(core.create_namespaced_pod, "agents", pod(name, labels=labels))
    listed = await call(core.list_namespaced_pod, "agents", label_selector="app in (chat,code),tier")
    assert [p.metadata.name for p in listed.items] == ["a", "b"]
    everywhere = await call(core.list_pod_for_all_namespaces, label_selector="app notin (chat)")
    assert [p.metadata.name for p in everywhere.items] == ["b", "d"]
    status, _ = await refused(call(core.list_namespaced_pod, "agents", label_selector="app in chat"))
    assert status == 400

    # A selector watch sees objects enter (ADDED) and leave (DELETED) the selection, as the API server's does.
    since = emulator.resource_version
    await call(core.patch_namespaced_pod, "d", "agents", {"metadata": {"labels": {"app": "chat"}}})
    await call(core.patch_namespaced_pod, "a", "agents", {"metadata": {"labels": {"app": "other"}}})
    await call(core.patch_namespaced_pod, "c", "agents", {"metadata": {"labels": {"seen": "yes"}}})
    events = await watch(emulator, "v1/pods", labelSelector="app=chat", resourceVersion=since)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "d"),
        ("DELETED", "a"),
        ("MODIFIED", "c"),
    ]


async def test_list_and_watch_filter_by_field_selector(emulator: FabricEmulator, core: Any) -> None:
    """The operator's watch of others' pods: bound (`spec.nodeName!=`) and not terminal. A pod that leaves the
    selection (it finished) is DELETED for the watch, one that enters it (it was bound) ADDED."""
    selector = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
    await call(core.create_namespaced_pod, "agents", pod("bound", node_name="n1"))
    await call(core.create_namespaced_pod, "agents", pod("pending"))
    await call(core.create_namespaced_pod, "agents", pod("done", node_name="n1"))
    await emulator.h_patch(
        "v1/pods", "done", {"status": {"phase": "Succeeded"}}, namespace="agents", subresource="status"
    )
    listed = await call(core.list_pod_for_all_namespaces, field_selector=selector)
    assert [p.metadata.name for p in listed.items] == ["bound"]
    named = await call(core.list_namespaced_pod, "agents", field_selector="metadata.name=pending")
    assert [p.metadata.name for p in named.items] == ["pending"]

    since = emulator.resource_version
    await emulator.h_patch(
        "v1/pods", "bound", {"status": {"phase": "Failed"}}, namespace="agents", subresource="status"
    )
    await call(core.patch_namespaced_pod, "pending", "agents", {"spec": {"nodeName": "n2"}})
    events = await watch(emulator, "v1/pods", fieldSelector=selector, resourceVersion=since)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("DELETED", "bound"),
        ("ADDED", "pending"),
    ]


# ---- watch ---------------------------------------------------------------------------------------------


async def test_watch_lists_then_streams_or_resumes_from_a_resource_version(emulator: FabricEmulator) -> None:
    await emulator.h_create(CN, node("a"))
    since = emulator.resource_version
    await emulator.h_create(CN, node("b"))

    fresh = await watch(emulator, CN)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in fresh] == [("ADDED", "a"), ("ADDED", "b")]
    resumed = await watch(emulator, CN, resourceVersion=since)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed] == [("ADDED", "b")]

    async def live() -> list[JsonDict]:
        return await watch(emulator, CN, timeoutSeconds="0.3")

    streaming = asyncio.create_task(live())
    await asyncio.sleep(0.1)
    await emulator.h_patch(CN, "a", {"spec": {"devices": 1}})
    events = await streaming
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "MODIFIED"]
    assert events[-1]["object"]["metadata"]["resourceVersion"] == emulator.resource_version


async def test_a_compacted_resource_version_is_410_expired() -> None:
    async with FabricEmulator(history_limit=2) as emulator, kmock.Server(emulator):
        for name in "abc":
            await emulator.h_create(CN, node(name))
        events = await watch(emulator, CN, resourceVersion="1")
        assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [("ERROR", 410, "Expired")]


# ---- deletion: graceful pods, finalizers, garbage collection -------------------------------------------


async def test_pods_on_a_node_terminate_gracefully(emulator: FabricEmulator, core: Any) -> None:
    await call(core.create_namespaced_pod, "agents", pod("bound", node_name="n1"))
    deleted = await call(core.delete_namespaced_pod, "bound", "agents")
    assert deleted.metadata.deletion_timestamp is not None
    stored = emulator.get_object("v1/pods", "bound", "agents")
    assert stored is not None
    assert stored["metadata"]["deletionGracePeriodSeconds"] == 30
    assert RFC3339_Z.fullmatch(stored["metadata"]["deletionTimestamp"])

    again = await call(core.delete_namespaced_pod, "bound", "agents")  # a second polite delete changes nothing
    assert again.metadata.resource_version == stored["metadata"]["resourceVersion"]
    options = kubernetes.client.V1DeleteOptions(grace_period_seconds=0)
    await call(core.delete_namespaced_pod, "bound", "agents", body=options)  # force, as the kubelet confirms
    assert emulator.get_object("v1/pods", "bound", "agents") is None

    await call(core.create_namespaced_pod, "agents", pod("unscheduled"))
    await call(core.delete_namespaced_pod, "unscheduled", "agents")  # never scheduled: nothing to wait for
    assert emulator.get_object("v1/pods", "unscheduled", "agents") is None
    await call(core.create_namespaced_pod, "agents", pod("forced", node_name="n1"))
    await call(core.delete_namespaced_pod, "forced", "agents", grace_period_seconds=0)
    assert emulator.get_object("v1/pods", "forced", "agents") is None


async def test_finalizers_hold_deletion_until_removed(emulator: FabricEmulator, custom: Any) -> None:
    await call(
        custom.create_cluster_custom_object,
        GROUP,
        VERSION,
        "computenodes",
        node("a") | {"metadata": {"name": "a", "finalizers": ["x/y"]}},
    )
    since = emulator.resource_version
    await call(custom.delete_cluster_custom_object, GROUP, VERSION, "computenodes", "a")
    marked = emulator.get_object(CN, "a")
    assert marked is not None
    assert marked["metadata"]["deletionTimestamp"]

    with pytest.raises(HarnessError) as forbidden:  # no new finalizers on a terminating object
        await emulator.h_patch(CN, "a", {"metadata": {"finalizers": ["x/y", "x/z"]}})
    assert forbidden.value.status == 422
    await emulator.h_patch(CN, "a", {"metadata": {"finalizers": None}})
    assert emulator.get_object(CN, "a") is None
    events = await watch(emulator, CN, resourceVersion=since)
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]  # the release is one DELETED


async def test_garbage_collection_follows_owner_references(emulator: FabricEmulator, core: Any, custom: Any) -> None:
    workload = await emulator.h_create(AW, {"metadata": {"name": "chat", "namespace": "agents"}, "spec": {}})
    other_owner = await emulator.h_create(CN, node("keeper"))

    def owned(name: str, *owners: JsonDict, **extra: Any) -> JsonDict:
        return {"metadata": {"name": name, "ownerReferences": [owner(o) for o in owners]}, **extra}

    await call(core.create_namespaced_config_map, "agents", owned("config", workload))
    await call(core.create_namespaced_config_map, "agents", owned("shared", workload, other_owner))
    replica = await emulator.h_create(
        "v1/pods", owned("replica", workload, spec={"nodeName": "n1", "containers": []}), namespace="agents"
    )
    await call(core.create_namespaced_config_map, "agents", owned("per-pod", replica))

    await call(custom.delete_namespaced_custom_object, GROUP, VERSION, "agents", "agentworkloads", "chat")
    assert emulator.get_object("v1/configmaps", "config", "agents") is None
    shared = emulator.get_object("v1/configmaps", "shared", "agents")
    assert shared is not None
    assert [ref["name"] for ref in shared["metadata"]["ownerReferences"]] == ["keeper"]  # only the dangling ref goes
    terminating = emulator.get_object("v1/pods", "replica", "agents")
    assert terminating is not None
    assert terminating["metadata"]["deletionTimestamp"]  # a scheduled pod: graceful, the kubelet finishes it
    assert emulator.get_object("v1/configmaps", "per-pod", "agents") is not None

    await emulator.h_delete("v1/pods", "replica", namespace="agents", grace_period_seconds=0)
    assert emulator.get_object("v1/configmaps", "per-pod", "agents") is None  # the cascade goes on


# ---- faults and write accounting -----------------------------------------------------------------------


async def test_injected_conflicts_and_server_errors_spare_the_harness(emulator: FabricEmulator, core: Any) -> None:
    emulator.faults = FaultPlan(seed=7, conflict_rate=1.0)
    status, body = await refused(call(core.create_namespaced_pod, "agents", pod("p")))
    assert (status, body["reason"]) == (409, "Conflict")
    assert (await call(core.list_namespaced_pod, "agents")).items == []  # reads are not conflicts
    await emulator.h_create("v1/pods", pod("p"), namespace="agents")  # the harness is never hit
    assert emulator.injected == {"conflict": 1}

    emulator.faults = FaultPlan(seed=7, server_error_rate=1.0)
    status, _ = await refused(call(core.list_namespaced_pod, "agents"))
    assert status in (500, 503, 504)
    assert (await emulator.h_request("GET", emulator.api_path("v1/pods", namespace="agents")))["items"]
    assert emulator.injected["server_error"] == 1

    emulator.faults = None
    assert (await call(core.list_namespaced_pod, "agents")).items


async def test_faults_repeat_with_their_seed(emulator: FabricEmulator) -> None:
    async def statuses() -> list[int]:
        emulator.faults = FaultPlan(seed=3, server_error_rate=0.5)
        answers = []
        for _ in range(20):
            async with emulator.get(emulator.api_path("v1/pods", namespace="agents")) as response:
                answers.append(response.status)
        return answers

    first, second = await statuses(), await statuses()
    assert first == second
    assert 200 in first
    assert set(first) - {200}


async def test_dropped_watches_end_cleanly(emulator: FabricEmulator) -> None:
    emulator.faults = FaultPlan(seed=1, watch_drop_after=(0.05, 0.1))
    started = time.monotonic()
    events = [e async for e in emulator.h_watch(CN, harness=False)]  # no timeoutSeconds: only the drop ends it
    assert events == []
    assert time.monotonic() - started < 1.0
    assert emulator.injected["watch_drop"] == 1

    await watch(emulator, CN, timeoutSeconds="0.2")  # the harness's watch is not dropped
    assert emulator.injected["watch_drop"] == 1


async def test_writes_count_the_operators_requests_only(emulator: FabricEmulator, core: Any) -> None:
    await emulator.h_create("v1/pods", pod("harness"), namespace="agents")
    await call(core.create_namespaced_pod, "agents", pod("p", node_name="n1"))
    await call(core.patch_namespaced_pod, "p", "agents", {"metadata": {"labels": {"a": "b"}}})
    await call(core.delete_namespaced_pod, "p", "agents")
    emulator.faults = FaultPlan(conflict_rate=1.0)
    await refused(call(core.create_namespaced_pod, "agents", pod("q")))

    assert [r.method.value for r in emulator.writes("pods")] == ["POST", "PATCH", "DELETE", "POST"]
    assert [r.method.value for r in emulator.writes("pods", ok_only=True)] == ["POST", "PATCH", "DELETE"]
    assert emulator.writes("computenodes") == []


# ---- the simulated kubelet -----------------------------------------------------------------------------


def pod_status(emulator: FabricEmulator, name: str) -> JsonDict:
    obj = emulator.get_object("v1/pods", name, "agents")
    return {} if obj is None else dict(obj.get("status") or {})


def is_ready(emulator: FabricEmulator, name: str) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod_status(emulator, name).get("conditions", []))


async def test_kubelet_runs_pods_pinned_to_ready_nodes(emulator: FabricEmulator, kubelet: SimulatedKubelet) -> None:
    await kubelet.add_node("n1", {"nvidia.com/gpu": "8"})
    await emulator.h_create("v1/pods", gpu_pod("replica", 4, hostname="n1"), namespace="agents")
    await eventually(lambda: pod_status(emulator, "replica").get("phase") == "Running")
    running = emulator.get_object("v1/pods", "replica", "agents")
    assert running is not None
    assert running["spec"]["nodeName"] == "n1"
    assert re.fullmatch(r"10\.\d+\.\d+\.\d+", running["status"]["podIP"])
    assert running["status"]["hostIP"].startswith("192.168.")

    await eventually(lambda: is_ready(emulator, "replica"))
    status = pod_status(emulator, "replica")
    assert all(c["ready"] for c in status["containerStatuses"])
    assert status["podIP"] == running["status"]["podIP"]  # stable


async def test_kubelet_leaves_pods_of_unready_or_missing_nodes_alone(
    emulator: FabricEmulator, kubelet: SimulatedKubelet
) -> None:
    created = await kubelet.add_node("n2", {"nvidia.com/gpu": "8"}, ready=False)
    await emulator.h_create("v1/pods", gpu_pod("waiting", 1, hostname="n2"), namespace="agents")
    await emulator.h_create("v1/pods", gpu_pod("lost", 1, hostname="ghost"), namespace="agents")
    await asyncio.sleep(0.15)
    assert pod_status(emulator, "waiting") == {"phase": "Pending"}
    assert pod_status(emulator, "lost") == {"phase": "Pending"}

    became_ready = await kubelet.set_ready("n2", True)
    [ready] = [c for c in became_ready["status"]["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "True"
    assert ready["reason"] == "KubeletReady"
    assert created["status"]["conditions"][0]["status"] == "False"
    await eventually(lambda: is_ready(emulator, "waiting"))
    assert pod_status(emulator, "lost") == {"phase": "Pending"}


async def test_kubelet_refuses_to_overcommit_extended_resources(
    emulator: FabricEmulator, kubelet: SimulatedKubelet
) -> None:
    await kubelet.add_node("n1", {"nvidia.com/gpu": "8"})
    await emulator.h_create("v1/pods", gpu_pod("big", 6, hostname="n1"), namespace="agents")
    await eventually(lambda: pod_status(emulator, "big").get("phase") == "Running")
    await emulator.h_create("v1/pods", gpu_pod("scheduled", 4, hostname="n1"), namespace="agents")
    await emulator.h_create("v1/pods", gpu_pod("bound", 4, hostname="n1", pin="nodeName"), namespace="agents")

    def unschedulable() -> bool:
        conditions = pod_status(emulator, "scheduled").get("conditions", [])
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)

    await eventually(unschedulable)
    assert pod_status(emulator, "scheduled")["phase"] == "Pending"
    await eventually(lambda: pod_status(emulator, "bound").get("phase") == "Failed")
    assert pod_status(emulator, "bound")["reason"] == "OutOfnvidia.com/gpu"

    await emulator.h_delete("v1/pods", "big", namespace="agents")  # graceful; the kubelet finishes it
    await eventually(lambda: is_ready(emulator, "scheduled"))  # the scheduler retried


async def test_kubelet_finishes_graceful_deletion_only_on_ready_nodes(
    emulator: FabricEmulator, kubelet: SimulatedKubelet
) -> None:
    workload = await emulator.h_create(AW, {"metadata": {"name": "chat", "namespace": "agents"}, "spec": {}})
    for name in ("n1", "n2"):
        await kubelet.add_node(name, {"nvidia.com/gpu": "8"})
    for name, hostname in (("on-n1", "n1"), ("on-n2", "n2")):
        body = gpu_pod(name, 1, hostname=hostname)
        body["metadata"]["ownerReferences"] = [owner(workload)]
        await emulator.h_create("v1/pods", body, namespace="agents")
    await eventually(lambda: is_ready(emulator, "on-n1") and is_ready(emulator, "on-n2"))

    await kubelet.set_ready("n2", False)
    await emulator.h_delete(AW, "chat", namespace="agents")  # the garbage collector deletes both gracefully
    await eventually(lambda: emulator.get_object("v1/pods", "on-n1", "agents") is None)
    await asyncio.sleep(0.2)  # several terminate_after periods
    stuck = emulator.get_object("v1/pods", "on-n2", "agents")
    assert stuck is not None
    assert stuck["metadata"]["deletionTimestamp"]
    await kubelet.remove_node("n2")
    await asyncio.sleep(0.1)
    assert emulator.get_object("v1/pods", "on-n2", "agents") is not None  # Terminating until force-deleted


# ---- kopf against the emulator -------------------------------------------------------------------------


def kopf_registry(emulator: FabricEmulator, seen: list[tuple[str | None, str]]) -> kopf.OperatorRegistry:
    """A fresh registry: a login pointing at the emulator, fast retries, and two ComputeNode handlers: an
    event handler that records what kopf sees, and a create handler whose result kopf writes through the
    status subresource (and whose bookkeeping goes through merge and JSON patches)."""
    registry = kopf.OperatorRegistry()
    server = str(emulator.url).rstrip("/")

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server, insecure=True, token="test")

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.networking.error_backoffs = [0.05, 0.1]
        settings.watching.reconnect_backoff = 0.05
        settings.posting.enabled = False

    @kopf.on.event(GROUP, VERSION, "computenodes", registry=registry)
    def record(event: kopf.RawEvent, **_: Any) -> None:
        seen.append((event["type"], event["object"]["metadata"]["name"]))

    @kopf.on.create(GROUP, VERSION, "computenodes", id="greet", registry=registry)
    def greet(name: str, **_: Any) -> JsonDict:
        return {"greeted": name}

    return registry


async def run_kopf(emulator: FabricEmulator, check: Callable[[list[tuple[str | None, str]]], Awaitable[None]]) -> float:
    """Run a kopf operator in this event loop against the emulator while `check` runs, then stop it;
    returns how long stopping took."""
    seen: list[tuple[str | None, str]] = []
    stop, ready = asyncio.Event(), asyncio.Event()
    registry = kopf_registry(emulator, seen)
    operator = asyncio.create_task(
        kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=stop, ready_flag=ready)
    )
    try:
        await asyncio.wait_for(ready.wait(), timeout=5)
        await check(seen)
    finally:
        stop.set()
        stopping = time.monotonic()
        await asyncio.wait_for(operator, timeout=10)
    return time.monotonic() - stopping


def greeted(emulator: FabricEmulator, name: str) -> bool:
    obj = emulator.get_object(CN, name)
    return obj is not None and (obj.get("status") or {}).get("greet") == {"greeted": name}


async def test_kopf_operator_runs_against_the_emulator(emulator: FabricEmulator, custom: Any) -> None:
    await emulator.h_create(CN, node("early"))

    async def check(seen: list[tuple[str | None, str]]) -> None:
        await eventually(lambda: greeted(emulator, "early"))
        # Written with the kubernetes client from a thread, as the operator writes.
        await call(custom.create_cluster_custom_object, GROUP, VERSION, "computenodes", node("late"))
        await eventually(lambda: greeted(emulator, "late"))
        assert (None, "early") in seen  # from kopf's initial LIST
        assert ("ADDED", "late") in seen  # from its watch

    # kopf's shutdown waits 5 s for every task created after it started, and the server side of a kept-alive
    # connection of the kubernetes client is one; the emulator closes connections so that there are none.
    assert await run_kopf(emulator, check) < 1
    # kopf wrote its bookkeeping to the main resource and the handler result through /status, no refusals.
    patches = {r.url.path for r in emulator.writes("computenodes") if r.method.value == "PATCH"}
    assert patches == {
        f"/apis/{GROUP}/{VERSION}/computenodes/{n}{s}" for n in ("early", "late") for s in ("", "/status")
    }
    assert emulator.writes("computenodes") == emulator.writes("computenodes", ok_only=True)


async def test_kopf_survives_dropped_watch_streams(emulator: FabricEmulator) -> None:
    emulator.faults = FaultPlan(seed=5, watch_drop_after=(0.05, 0.1))

    async def check(seen: list[tuple[str | None, str]]) -> None:
        await eventually(lambda: emulator.injected["watch_drop"] >= 4)  # both of kopf's watches dropped, twice
        await emulator.h_create(CN, node("after-drops"))
        await eventually(lambda: greeted(emulator, "after-drops"))
        assert ("ADDED", "after-drops") in seen

    assert await run_kopf(emulator, check) < 1


# ---- a bounded request log (the sandbox's) -----------------------------------------------------------------


async def test_a_bounded_request_log_keeps_the_last_requests_and_still_answers_everything(core: Any) -> None:
    """kmock matches each request by scanning the log; the sandbox keeps only a few. Every request is still
    matched and answered (a refused one reported as refused), and ids keep counting."""
    async with FabricEmulator(request_log_limit=4) as bounded, kmock.Server(bounded) as server:
        configuration = kubernetes.client.Configuration(host=str(server.url).rstrip("/"))
        with kubernetes.client.ApiClient(configuration) as client:
            pods = kubernetes.client.CoreV1Api(client)
            for index in range(12):
                await call(pods.create_namespaced_pod, "agents", pod(f"p{index}"))
            status, _ = await refused(call(pods.create_namespaced_pod, "agents", pod("p0")))
            listed = await call(pods.list_namespaced_pod, "agents")
    assert status == 409
    assert len(listed.items) == 12
    kept = list(bounded)
    assert len(kept) == 4
    assert [r.id for r in kept] == [10, 11, 12, 13]
    assert bounded.refused(kept[-2])
    assert not bounded.refused(kept[-1])
