"""A simulated kubelet (and the slice of kube-scheduler the operator relies on) for `FabricEmulator`: the
sandbox's nodes, and the integration tests'.

`SimulatedKubelet` is an asyncio task that, every `interval` seconds, walks the pods and nodes and does
what kube-scheduler and the kubelets would, in the simplest form that still exercises an operator:

* A pod pinned to a node — `spec.nodeName`, `spec.nodeSelector["kubernetes.io/hostname"]`, or a required
  node affinity term `kubernetes.io/hostname In [names]` — whose Node exists and is Ready gets bound
  (`spec.nodeName`), then `phase: Running`, a stable `podIP` from `pod_network` (10.x.y.z by default; the
  sandbox uses loopback addresses, 127.100.x.y, so its engines can listen there), the node's `hostIP`, and
  after `ready_after` seconds the Ready and ContainersReady conditions and ready containerStatuses.
* Extended resources (any `resources.limits`/`requests` key with a "/", e.g. `nvidia.com/gpu`) are
  counted against the node's `status.allocatable`, less what admitted (Running) pods there hold. A pod
  placed through the scheduler (hostname selector or affinity) that does not fit stays `Pending` with
  `PodScheduled=False, reason Unschedulable` and is retried every pass, as kube-scheduler does; a pod the
  operator bound itself (`spec.nodeName` at creation) is rejected by kubelet admission as the real
  kubelet's predicate admission words it (kubernetes pkg/kubelet/lifecycle/predicate.go): `phase: Failed,
  reason OutOf<resource>, message "Pod was rejected: Node didn't have enough resource: ..."`. Whose pod
  it is does not matter: the operator's and anyone else's (a pod not labelled as the operator's, bound
  with `spec.nodeName`) are admitted, run and counted alike.
* `finish_pod` ends a running pod as a finished Job's: its containers exit 0, `phase: Succeeded`, and
  what it requested is free again.
* A terminating pod (deletionTimestamp set) on a Ready node is removed `terminate_after` seconds later by
  a force delete (grace 0), as the kubelet confirms termination; on a NotReady or missing node it stays
  Terminating, as it does in a cluster until someone force-deletes it.
* Pods whose node is missing or NotReady make no progress at all.

* With `real_engines` (`gpufabric sandbox --real-engine`), the pods of the workloads it names run a real
  engine instead (real_engine.py: the rendered command line, at the pod's address), as the stand-in kubelet
  runs them: Running at once, Ready only once the engine's /health answers (the rendered readiness probe),
  not after `ready_after`. On a failed node the engine stops (the machine is gone); if the node comes back
  with the pod still there, it starts again, not Ready until it answers; a deleted pod's engine stops.

Not simulated: CPU/memory/pod-count fit, taints and tolerations, other affinity kinds, node lifecycle
taints and evictions, pod GC of orphans, restarts, probes, init containers, containers exiting on their own
(only `finish_pod`).

Reads are in-process (`FabricEmulator.live_objects`: instant, and no noise in the request log); writes go
over HTTP with `X-Harness: 1`, so they take the same code paths as any client's, are never hit by
injected faults, and are not counted by `FabricEmulator.writes()`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import re
from collections.abc import Mapping
from types import SimpleNamespace, TracebackType
from typing import Any, Final, Self

from gpufabric.api import labels
from gpufabric.api.reasons import KUBE_SCHEDULER_UNSCHEDULABLE, POD_PHASE_PENDING
from gpufabric.sandbox.emulator import NODES, PODS, FabricEmulator, HarnessError, JsonDict, now_rfc3339
from gpufabric.sandbox.real_engine import RealEngines

HOSTNAME_LABEL: Final = "kubernetes.io/hostname"
DEFAULT_ALLOCATABLE: Final = {"cpu": "64", "memory": "512Gi", "pods": "110"}
_SUFFIXES: Final = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: Any) -> float:
    """A Kubernetes resource quantity ("8", "500m", "16Gi") as a number."""
    m = re.fullmatch(r"\s*([+-]?[0-9.]+)([A-Za-z]*)\s*", str(value))
    if m is None or m[2] not in _SUFFIXES:
        raise ValueError(f"not a quantity: {value!r}")
    return float(m[1]) * _SUFFIXES[m[2]]


Amounts = collections.defaultdict[str, float]


def _add(total: Amounts, more: Mapping[str, float]) -> None:
    for key, amount in more.items():
        total[key] += amount


def extended_requests(pod: Mapping[str, Any]) -> Amounts:
    """Extended resources (names with a "/") a pod needs: per container, limits over requests (for
    extended resources Kubernetes requires them equal, and either implies the other)."""
    total: Amounts = collections.defaultdict(float)
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}
        for name, quantity in wanted.items():
            if "/" in name:
                total[name] += parse_quantity(quantity)
    return total


def pinned_nodes(pod: Mapping[str, Any]) -> list[str]:
    """Nodes the pod may run on, by hostname, in preference order; empty if it names none."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return [spec["nodeName"]]
    if hostname := (spec.get("nodeSelector") or {}).get(HOSTNAME_LABEL):
        return [hostname]
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("key") == HOSTNAME_LABEL and expression.get("operator") == "In":
                return list(expression.get("values") or [])
    return []


def condition(kind: str, status: bool, *, reason: str | None = None, message: str | None = None) -> JsonDict:
    result: JsonDict = {"type": kind, "status": "True" if status else "False", "lastTransitionTime": now_rfc3339()}
    if reason is not None:
        result["reason"] = reason
    if message is not None:
        result["message"] = message
    return result


def node_ready(node: Mapping[str, Any] | None) -> bool:
    if node is None:
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _meta(obj: Mapping[str, Any]) -> JsonDict:
    meta: JsonDict = obj.get("metadata") or {}
    return meta


def _pod_ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def workload_key(pod: Mapping[str, Any]) -> str:
    """`namespace/workload` of one of the operator's pods, as RealEngines names the workloads it runs."""
    meta = _meta(pod)
    return f"{meta.get('namespace')}/{(meta.get('labels') or {}).get(labels.WORKLOAD, meta.get('name'))}"


def client_pod(pod: Mapping[str, Any]) -> Any:
    """The fields of a pod RealEngines reads, under the official client's attribute names: it was written for the
    stand-in kubelet's pods (the client's objects); the emulator's are plain dicts."""
    meta = _meta(pod)
    containers = [
        SimpleNamespace(
            command=container.get("command"),
            args=container.get("args"),
            ports=[
                SimpleNamespace(name=port.get("name"), container_port=port.get("containerPort"))
                for port in container.get("ports") or []
            ],
        )
        for container in (pod.get("spec") or {}).get("containers") or []
    ]
    return SimpleNamespace(
        metadata=SimpleNamespace(uid=meta.get("uid"), name=meta.get("name"), namespace=meta.get("namespace")),
        spec=SimpleNamespace(containers=containers),
    )


class SimulatedKubelet:
    """The kubelets and the hostname-pinning scheduler of a fake cluster, as one asyncio task.

    Use as `async with SimulatedKubelet(emulator) as kubelet:` or `start()`/`await stop()`; `await
    tick()` runs one pass by hand. Errors other than benign races (404/409 on an object that changed
    meanwhile) are kept in `errors` and do not stop the loop; tests should assert it is empty.

    Start it before a kopf operator running in the same event loop: kopf's shutdown waits 5 s for, then
    cancels, every task created after the operator started.
    """

    def __init__(
        self,
        emulator: FabricEmulator,
        *,
        interval: float = 0.05,
        ready_after: float = 0.1,
        terminate_after: float = 0.1,
        pod_network: str = "10.0.0.0/8",
        real_engines: RealEngines | None = None,
    ) -> None:
        self.emulator = emulator
        # Only this kubelet's task starts and stops them; others (the sandbox) read them by single lookups.
        self.real_engines = real_engines
        self._probes: dict[str, asyncio.Task[bool]] = {}  # pod uid -> the /health probe in flight or answered
        self.interval = interval
        self.ready_after = ready_after
        self.terminate_after = terminate_after
        self.errors: list[BaseException] = []
        self._task: asyncio.Task[None] | None = None
        self._started: dict[str, float] = {}  # pod uid -> when it started running
        self._terminating: dict[str, float] = {}  # pod uid -> when seen terminating on a Ready node
        self._force_deleted: set[str] = set()
        self._pod_ips: dict[str, str] = {}
        self._pod_network = ipaddress.IPv4Network(pod_network)
        self._node_count = 0

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="simulated-kubelet")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for probe in self._probes.values():
            probe.cancel()
        self._probes.clear()
        if self.real_engines is not None:
            # In a thread: each engine gets up to 20 s to stop (its process group, SIGKILL after), and the loop
            # serves the API meanwhile.
            await asyncio.to_thread(self.real_engines.stop_all)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as error:  # keep simulating; the test decides whether this matters
                self.errors.append(error)
            await asyncio.sleep(self.interval)

    # ---- nodes -------------------------------------------------------------------------------------------

    async def add_node(
        self, name: str, allocatable: Mapping[str, str], labels: Mapping[str, str] | None = None, ready: bool = True
    ) -> JsonDict:
        """Register a v1 Node as a kubelet does: labels (hostname, os), capacity = allocatable (with
        cpu/memory/pods defaults), an InternalIP, and the Ready condition."""
        self._node_count += 1
        resources = {**DEFAULT_ALLOCATABLE, **allocatable}
        body: JsonDict = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {HOSTNAME_LABEL: name, "kubernetes.io/os": "linux", **(labels or {})}},
            "spec": {},
            "status": {
                "capacity": dict(resources),
                "allocatable": dict(resources),
                "conditions": [self._ready_condition(ready)],
                "addresses": [
                    {
                        "type": "InternalIP",
                        "address": f"192.168.{self._node_count // 250}.{self._node_count % 250 + 1}",
                    },
                    {"type": "Hostname", "address": name},
                ],
            },
        }
        return await self.emulator.h_create(NODES, body)

    async def set_ready(self, name: str, ready: bool) -> JsonDict:
        """Flip the node's Ready condition (lastTransitionTime moves only when the status changes)."""
        node = self.emulator.get_object(NODES, name)
        if node is None:
            raise LookupError(f"no node {name!r}")
        conditions = [c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") != "Ready"]
        old = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
        new = self._ready_condition(ready)
        if old is not None and old.get("status") == new["status"]:
            new["lastTransitionTime"] = old.get("lastTransitionTime", new["lastTransitionTime"])
        patch = {"status": {"conditions": [*conditions, new]}}
        return await self.emulator.h_patch(NODES, name, patch, subresource="status")

    async def remove_node(self, name: str) -> None:
        await self.emulator.h_delete(NODES, name)

    @staticmethod
    def _ready_condition(ready: bool) -> JsonDict:
        result = condition(
            "Ready",
            ready,
            reason="KubeletReady" if ready else "KubeletNotReady",
            message="kubelet is posting ready status" if ready else "simulated: node is not ready",
        )
        result["lastHeartbeatTime"] = result["lastTransitionTime"]
        return result

    # ---- pods ----------------------------------------------------------------------------------------------

    async def finish_pod(self, name: str, namespace: str) -> JsonDict:
        """The pod's containers exit 0 (a Job's pod, restartPolicy Never): `phase: Succeeded`, not Ready, each
        container terminated `Completed`. What it requested no longer counts against its node."""
        pod = self.emulator.get_object(PODS, name, namespace)
        if pod is None:
            raise LookupError(f"no pod {namespace}/{name}")
        finished_at = now_rfc3339()
        started_at = (pod.get("status") or {}).get("startTime") or finished_at
        kept = [
            c
            for c in (pod.get("status") or {}).get("conditions") or []
            if c.get("type") not in ("Ready", "ContainersReady")
        ]
        terminated = {"exitCode": 0, "reason": "Completed", "startedAt": started_at, "finishedAt": finished_at}
        statuses = [
            {**container, "ready": False, "started": False, "state": {"terminated": terminated}}
            for container in self._container_statuses(pod, ready=False, started_at=started_at)
        ]
        status = {
            "phase": "Succeeded",
            "conditions": [*kept, condition("ContainersReady", False), condition("Ready", False)],
            "containerStatuses": statuses,
        }
        self._started.pop(_meta(pod)["uid"], None)
        return await self.emulator.h_patch(PODS, name, {"status": status}, namespace=namespace, subresource="status")

    # ---- one pass ----------------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass over all pods, oldest first (so capacity goes first come, first served)."""
        now = asyncio.get_running_loop().time()
        nodes = {_meta(node)["name"]: node for node in self.emulator.live_objects(NODES)}
        pods = sorted(
            self.emulator.live_objects(PODS),
            key=lambda p: (_meta(p).get("creationTimestamp", ""), _meta(p).get("namespace", ""), _meta(p)["name"]),
        )
        used: dict[str, Amounts] = collections.defaultdict(lambda: collections.defaultdict(float))
        for pod in pods:
            if (pod.get("status") or {}).get("phase") == "Running":
                _add(used[(pod.get("spec") or {}).get("nodeName", "")], extended_requests(pod))
        for pod in pods:
            try:
                await self._sync_pod(pod, nodes, used, now)
            except HarnessError as error:
                if error.status not in (404, 409):  # the pod changed or vanished meanwhile: next pass
                    raise
        if self.real_engines is not None:
            live = {_meta(pod)["uid"] for pod in pods}
            for uid in [uid for uid in self.real_engines.running if uid not in live]:
                await self._stop_real(uid)  # its pod is gone, however it went

    async def _sync_pod(
        self, pod: JsonDict, nodes: Mapping[str, JsonDict], used: dict[str, Amounts], now: float
    ) -> None:
        meta, spec, status = _meta(pod), pod.get("spec") or {}, pod.get("status") or {}
        uid, name, namespace = meta["uid"], meta["name"], meta.get("namespace")
        candidates = pinned_nodes(pod)
        if not candidates:
            return  # nothing pins it: no scheduler is emulated beyond hostname pinning
        if spec.get("nodeName") and not node_ready(nodes.get(spec["nodeName"])):
            await self._stop_real(uid)  # the machine is gone, and a real engine on it with it
        if meta.get("deletionTimestamp"):
            bound = spec.get("nodeName")
            if bound and node_ready(nodes.get(bound)) and uid not in self._force_deleted:
                since = self._terminating.setdefault(uid, now)
                if now - since >= self.terminate_after:
                    self._force_deleted.add(uid)
                    await self._stop_real(uid)
                    await self.emulator.h_delete(PODS, name, namespace=namespace, grace_period_seconds=0)
            return
        if status.get("phase") in ("Succeeded", "Failed"):
            return
        if status.get("phase") == "Running":
            if node_ready(nodes.get(spec.get("nodeName", ""))):
                await (self._progress_real(pod) if self._real(pod) else self._progress(pod, now))
            return
        ready_nodes = [n for n in candidates if node_ready(nodes.get(n))]
        if not ready_nodes:
            return  # missing or NotReady: left alone
        wanted = extended_requests(pod)
        fitting = [n for n in ready_nodes if self._fits(wanted, nodes[n], used[n])]
        if not fitting:
            await self._refuse(
                pod, wanted, nodes[ready_nodes[0]], used[ready_nodes[0]], bound=bool(spec.get("nodeName"))
            )
            return
        node_name = fitting[0]
        _add(used[node_name], wanted)
        if not spec.get("nodeName"):
            await self.emulator.h_patch(PODS, name, {"spec": {"nodeName": node_name}}, namespace=namespace)
        await self._start(pod, nodes[node_name], now)

    @staticmethod
    def _fits(wanted: Amounts, node: JsonDict, used: Amounts) -> bool:
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        return all(used[key] + amount <= parse_quantity(allocatable.get(key, 0)) for key, amount in wanted.items())

    async def _refuse(
        self,
        pod: JsonDict,
        wanted: Amounts,
        node: JsonDict,
        used: Amounts,
        *,
        bound: bool,
    ) -> None:
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        short = next(k for k, v in sorted(wanted.items()) if used[k] + v > parse_quantity(allocatable.get(k, 0)))
        meta, status = _meta(pod), pod.get("status") or {}
        if bound:  # kubelet admission rejects a pod bound to a node that cannot hold it
            new_status: JsonDict = {
                "phase": "Failed",
                "reason": f"OutOf{short}",
                "message": f"Pod was rejected: Node didn't have enough resource: {short}, "
                f"requested: {wanted[short]:g}, used: {used[short]:g}, "
                f"capacity: {parse_quantity(allocatable.get(short, 0)):g}",
            }
        else:  # kube-scheduler leaves it Pending and retries
            message = f"0/1 nodes are available: 1 Insufficient {short}."
            conditions = status.get("conditions") or []
            scheduled: JsonDict = next((c for c in conditions if c.get("type") == "PodScheduled"), {})
            if status.get("phase") == POD_PHASE_PENDING and scheduled.get("message") == message:
                return  # already says so: write nothing
            new_status = {
                "phase": POD_PHASE_PENDING,
                "conditions": [condition("PodScheduled", False, reason=KUBE_SCHEDULER_UNSCHEDULABLE, message=message)],
            }
        await self.emulator.h_patch(
            PODS, meta["name"], {"status": new_status}, namespace=meta.get("namespace"), subresource="status"
        )

    async def _start(self, pod: JsonDict, node: JsonDict, now: float) -> None:
        meta = _meta(pod)
        uid = meta["uid"]
        self._started[uid] = now
        addresses = (node.get("status") or {}).get("addresses") or []
        host_ip = next((a["address"] for a in addresses if a.get("type") == "InternalIP"), "")
        pod_ip = self._pod_ip(uid)
        started_at = now_rfc3339()
        status = {
            "phase": "Running",
            "hostIP": host_ip,
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": started_at,
            "conditions": [
                condition("PodScheduled", True),
                condition("Initialized", True),
                condition("ContainersReady", False),
                condition("Ready", False),
            ],
            "containerStatuses": self._container_statuses(pod, ready=False, started_at=started_at),
        }
        await self.emulator.h_patch(
            PODS, meta["name"], {"status": status}, namespace=meta.get("namespace"), subresource="status"
        )
        if self.real_engines is not None:
            # Here, in the loop's own thread: an engine dies with the thread that started it (PR_SET_PDEATHSIG),
            # so never from a worker thread.
            self.real_engines.start(client_pod(pod), workload_key(pod), pod_ip)

    # ---- real engines ----------------------------------------------------------------------------------------

    def _real(self, pod: JsonDict) -> bool:
        return self.real_engines is not None and workload_key(pod) in self.real_engines.workloads

    async def _progress_real(self, pod: JsonDict) -> None:
        """A real engine's Running pod: Ready once the engine's /health answers; its engine started again (not
        Ready until it answers) when it is not running, as after its node came back."""
        assert self.real_engines is not None
        meta, status = _meta(pod), pod.get("status") or {}
        uid = meta["uid"]
        if uid not in self.real_engines.running:
            self.real_engines.start(client_pod(pod), workload_key(pod), status.get("podIP") or self._pod_ip(uid))
            if _pod_ready(status):
                await self._set_ready(pod, ready=False)
            return
        if self.real_engines.warming(uid) and self._answered(uid):
            await self._set_ready(pod, ready=True)
            self.real_engines.ready(uid)

    def _answered(self, uid: str) -> bool:
        """Whether the engine's /health has answered, never waiting for it: each probe runs in a thread (it may
        take its 2 s timeout) while the ticks go on, and its answer is read on a later tick."""
        assert self.real_engines is not None
        probe = self._probes.get(uid)
        if probe is not None and not probe.done():
            return False
        if probe is not None and probe.exception() is None and probe.result():
            del self._probes[uid]
            return True
        self._probes[uid] = asyncio.create_task(asyncio.to_thread(self.real_engines.healthy, uid))
        return False

    async def _stop_real(self, uid: str) -> None:
        """Stop the pod's real engine, if it runs one: in a thread, as it may take seconds (SIGTERM to its
        process group, SIGKILL if slow), while the loop serves the API."""
        if self.real_engines is None or uid not in self.real_engines.running:
            return
        probe = self._probes.pop(uid, None)
        if probe is not None:
            probe.cancel()
        await asyncio.to_thread(self.real_engines.stop, uid)

    async def _set_ready(self, pod: JsonDict, *, ready: bool) -> None:
        meta, status = _meta(pod), pod.get("status") or {}
        kept = [c for c in status.get("conditions") or [] if c.get("type") not in ("Ready", "ContainersReady")]
        started_at = status.get("startTime") or now_rfc3339()
        patch = {
            "status": {
                "conditions": [*kept, condition("ContainersReady", ready), condition("Ready", ready)],
                "containerStatuses": self._container_statuses(pod, ready=ready, started_at=started_at),
            }
        }
        await self.emulator.h_patch(PODS, meta["name"], patch, namespace=meta.get("namespace"), subresource="status")

    async def _progress(self, pod: JsonDict, now: float) -> None:
        """A Running pod becomes Ready `ready_after` seconds after it started."""
        meta, status = _meta(pod), pod.get("status") or {}
        started = self._started.setdefault(meta["uid"], now)  # also adopts pods started before a restart
        conditions = status.get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            return
        if now - started < self.ready_after:
            return
        await self._set_ready(pod, ready=True)

    @staticmethod
    def _container_statuses(pod: JsonDict, *, ready: bool, started_at: str) -> list[JsonDict]:
        return [
            {
                "name": container.get("name", ""),
                "image": container.get("image", ""),
                "imageID": "",
                "ready": ready,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": started_at}},
            }
            for container in (pod.get("spec") or {}).get("containers") or []
        ]

    def _pod_ip(self, uid: str) -> str:
        """One address of `pod_network` per pod for the kubelet's life, never one ending in .0 or .255."""
        if uid not in self._pod_ips:
            index = len(self._pod_ips)
            block, host = divmod(index, 254)
            offset = (block * 256 + host + 1) % self._pod_network.num_addresses
            self._pod_ips[uid] = str(self._pod_network.network_address + offset)
        return self._pod_ips[uid]
