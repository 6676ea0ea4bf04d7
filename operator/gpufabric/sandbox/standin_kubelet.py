"""A stand-in for the kubelets (and for node lifecycle) against a real API server: the e2e suite's, and
`gpufabric sandbox --control-plane real`'s.

`kubelet.py` plays this part on the in-process emulator; this one talks to a real
kube-apiserver through the official client, so everything it does goes through admission, RBAC,
resourceVersions and the real scheduler's bindings. It runs in a thread and, every `interval` seconds:

* posts each live Node's status (heartbeat): `lastHeartbeatTime` moves, `lastTransitionTime` stays while
  Ready does not change — as real kubelets do, so an operator that reacts to every Node update shows up;
* takes each pod kube-scheduler bound to a live Node (`spec.nodeName`) to Running and Ready, with a
  loopback address of its own (127.100.x.y by default) as `podIP`, and (unless `serve_tokens` is off: the
  sandbox runs its own engines) starts an HTTP server there on every container port serving the serving
  engine's token counters (the engine's names) at a rate the test sets;
* confirms deletions: a terminating pod on a live Node is stopped and removed (grace 0, uid precondition);
* with `real_engines`, runs the pods of the workloads it names with a real engine instead of counters
  (real_engine.py: the rendered command line, at the pod's address): Running at once, Ready once the
  engine's /health answers, as the rendered readiness probe would.

`recover(node)` brings a failed Node back: Ready again, the taint lifted, heartbeats and pods resumed.
`fail(node)` makes a Node silent — nothing posted for it, none of its pods started, stopped or confirmed —
and, as node lifecycle does once a kubelet stops posting, sets its Ready condition to Unknown
(`NodeStatusUnknown`) once and marks its pods not Ready. Its token servers stop (the machine is gone).

Not simulated: probes, restarts, container exit, image pulls, volumes, node lifecycle's taints and
eviction (the suite finishes long before the default 300 s toleration would evict).
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpufabric.api.computenode import ComputeNode
from gpufabric.api.reasons import NODE_LIFECYCLE_NODE_NOT_READY, POD_PHASE_PENDING
from gpufabric.engines import VLLM, Engine, MetricNames, profile
from gpufabric.sandbox.nodes import device_plugin_resources
from gpufabric.sandbox.real_engine import RealEngines

HOSTNAME_LABEL: Final = "kubernetes.io/hostname"
NODE_ALLOCATABLE: Final = {"cpu": "256", "memory": "2Ti", "pods": "110", "ephemeral-storage": "4Ti"}
UNREACHABLE: Final = "node.kubernetes.io/unreachable"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TokenRate:
    """What a pod's serving engine produces, per second, and its queue length."""

    prompt: float = 0.0
    generation: float = 0.0
    waiting: float = 0.0


@dataclass
class TokenServer:
    """One pod's engine: counters that grow at the workload's rate from the moment the pod started, under the
    names its engine uses (the pod's gpufabric.io/engine annotation; vLLM's for custom runtimes)."""

    address: str
    ports: list[int]
    rate: TokenRate
    model: str
    names: MetricNames = VLLM.metrics
    started: float = field(default_factory=time.monotonic)
    servers: list[ThreadingHTTPServer] = field(default_factory=list)

    def page(self) -> bytes:
        elapsed = time.monotonic() - self.started
        labels = f'model_name="{self.model}"'
        names = self.names
        return (
            f"# TYPE {names.prompt_counter} counter\n"
            f"{names.prompt_counter}{{{labels}}} {self.rate.prompt * elapsed:.1f}\n"
            f"# TYPE {names.generation_counter} counter\n"
            f"{names.generation_counter}{{{labels}}} {self.rate.generation * elapsed:.1f}\n"
            f"# TYPE {names.waiting_gauge} gauge\n"
            f"{names.waiting_gauge}{{{labels}}} {self.rate.waiting}\n"
        ).encode()

    def start(self) -> None:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = engine.page() if self.path.split("?")[0].endswith("metrics") else b"ok\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                return None

        for port in self.ports:
            server = ThreadingHTTPServer((self.address, port), Handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name=f"engine-{self.address}:{port}", daemon=True).start()
            self.servers.append(server)

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.servers.clear()


def node_for(compute_node: ComputeNode) -> tuple[str, dict[str, str]]:
    """The Node a ComputeNode describes, as its kubelet and device plugins would advertise it."""
    return compute_node.spec.node_name, {**NODE_ALLOCATABLE, **device_plugin_resources(compute_node)}


class StandInKubelet:
    node_allocatable: Final = NODE_ALLOCATABLE

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        interval: float = 0.25,
        heartbeat: float = 10.0,
        serve_tokens: bool = True,
        pod_network: str = "127.100.0.0/16",
        real_engines: RealEngines | None = None,
    ) -> None:
        self.core: Any = client.CoreV1Api(api_client)
        self.serve_tokens = serve_tokens
        self.interval = interval
        self.heartbeat = heartbeat
        self.nodes: dict[str, float] = {}  # live node -> last heartbeat (monotonic)
        self.silent: set[str] = set()
        self.rates: dict[str, TokenRate] = {}  # "namespace/workload" -> rate of each of its pods
        self.engines: dict[str, TokenServer] = {}  # pod uid -> its engine
        self.real_engines = real_engines
        self.errors: list[str] = []
        self._addresses: dict[str, str] = {}
        self._next_address = ipaddress.IPv4Network(pod_network).network_address + 1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stand-in-kubelet", daemon=True)

    # --- the test's controls ------------------------------------------------------------------------------

    def add_node(self, name: str, allocatable: Mapping[str, str], labels: Mapping[str, str] | None = None) -> None:
        self.core.create_node(
            client.V1Node(metadata=client.V1ObjectMeta(name=name, labels={HOSTNAME_LABEL: name, **(labels or {})}))
        )
        status = {
            "capacity": dict(allocatable),
            "allocatable": dict(allocatable),
            "conditions": [self._ready_condition("True", "KubeletReady", "kubelet is posting ready status", now())],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        }
        self.core.patch_node_status(name, {"status": status})
        # The NodeTaint admission plugin taints every new Node `not-ready:NoSchedule`; node lifecycle lifts
        # it once the Node reports Ready. Node lifecycle is off here (no kubelets), so this plays its part.
        self.core.patch_node(name, {"spec": {"taints": None}})
        with self._lock:
            self.nodes[name] = time.monotonic()

    def fail(self, name: str) -> None:
        """The node's kubelet stops: silence, then node lifecycle's verdict (Ready Unknown), once."""
        with self._lock:
            self.silent.add(name)
            self.nodes.pop(name, None)
        unknown = self._ready_condition("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.", now())
        self.core.patch_node_status(name, {"status": {"conditions": [unknown]}})
        # As node lifecycle's taint-by-condition does; its NoExecute twin would evict only after the default
        # 300 s toleration, longer than any test here runs.
        self.core.patch_node(name, {"spec": {"taints": [{"key": UNREACHABLE, "effect": "NoSchedule"}]}})
        for pod in self._pods(name):
            self._stop_engine(pod.metadata.uid)
            conditions = [
                {
                    "type": "Ready",
                    "status": "False",
                    "lastTransitionTime": now(),
                    "reason": NODE_LIFECYCLE_NODE_NOT_READY,
                }
            ]
            with contextlib.suppress(ApiException):
                self.core.patch_namespaced_pod_status(
                    pod.metadata.name, pod.metadata.namespace, {"status": {"conditions": conditions}}
                )

    def recover(self, name: str) -> None:
        """The node's kubelet is back: Ready, untainted, posting again; its pods start anew on the next tick."""
        ready = self._ready_condition("True", "KubeletReady", "kubelet is posting ready status", now())
        self.core.patch_node_status(name, {"status": {"conditions": [ready]}})
        self.core.patch_node(name, {"spec": {"taints": None}})
        with self._lock:
            self.silent.discard(name)
            self.nodes[name] = time.monotonic()

    def set_rate(self, namespace: str, workload: str, rate: TokenRate) -> None:
        with self._lock:
            self.rates[f"{namespace}/{workload}"] = rate
            for engine in self.engines.values():
                if engine.model == f"{namespace}/{workload}":
                    engine.rate = rate

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for uid in list(self.engines):
            self._stop_engine(uid)
        if self.real_engines is not None:
            self.real_engines.stop_all()

    # --- the loop -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._heartbeats()
                self._pods_tick()
            except ApiException as error:
                if error.status not in (409, 429, 500, 503, 504):  # retried on the next tick
                    self.errors.append(f"{error.status} {error.reason}: {error.body!s:.300}")
            except Exception as error:
                self.errors.append(repr(error))

    def _heartbeats(self) -> None:
        with self._lock:
            due = [n for n, at in self.nodes.items() if time.monotonic() - at >= self.heartbeat]
        for name in due:
            node = self.core.read_node_status(name)
            ready = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
            since = (
                ready.last_transition_time.strftime("%Y-%m-%dT%H:%M:%SZ")
                if ready is not None and ready.status == "True" and ready.last_transition_time
                else now()
            )
            condition = self._ready_condition("True", "KubeletReady", "kubelet is posting ready status", since)
            self.core.patch_node_status(name, {"status": {"conditions": [condition]}})
            with self._lock:
                if name in self.nodes:
                    self.nodes[name] = time.monotonic()

    def _pods_tick(self) -> None:
        with self._lock:
            live = set(self.nodes)
        for pod in self.core.list_pod_for_all_namespaces().items:
            node = pod.spec.node_name
            if node not in live:
                continue
            if pod.metadata.deletion_timestamp is not None:
                self._stop_engine(pod.metadata.uid)
                if self.real_engines is not None:
                    self.real_engines.stop(pod.metadata.uid)
                with contextlib.suppress(ApiException):  # gone already
                    # With a body, the API server reads the options from it alone: the grace period goes there.
                    options = client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.metadata.uid)
                    )
                    self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, body=options)
            elif pod.status.phase == POD_PHASE_PENDING:
                self._start_pod(pod)
            elif self.real_engines is not None and self.real_engines.warming(pod.metadata.uid):
                self._ready_when_healthy(pod)

    def _start_pod(self, pod: Any) -> None:
        uid = pod.metadata.uid
        address = self._address(uid)
        workload = (pod.metadata.labels or {}).get("gpufabric.io/workload", pod.metadata.name)
        ports = sorted({p.container_port for c in pod.spec.containers for p in c.ports or []})
        key = f"{pod.metadata.namespace}/{workload}"
        # A real engine serves this pod: Running now, Ready once it answers (its model loaded).
        real = self.real_engines is not None and self.real_engines.start(pod, key, address)
        if not real and uid not in self.engines and self.serve_tokens:
            engine_name = (pod.metadata.annotations or {}).get("gpufabric.io/engine", Engine.CUSTOM.value)
            names = profile(Engine(engine_name)).metrics
            with self._lock:
                engine = TokenServer(address, ports, self.rates.get(key, TokenRate()), key, names)
            engine.start()
            self.engines[uid] = engine
        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": address,
            "podIPs": [{"ip": address}],
            "startTime": now(),
            **self._running(pod, ready=not real),
        }
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})

    def _ready_when_healthy(self, pod: Any) -> None:
        assert self.real_engines is not None
        if self.real_engines.healthy(pod.metadata.uid):
            patch = {"status": self._running(pod, ready=True)}
            self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, patch)
            self.real_engines.ready(pod.metadata.uid)

    @staticmethod
    def _running(pod: Any, *, ready: bool) -> dict[str, Any]:
        """Conditions and container statuses of a pod whose containers run, ready or not yet."""
        since = now()
        readiness = "True" if ready else "False"
        return {
            "conditions": [
                {
                    "type": kind,
                    "status": "True" if kind in ("PodReadyToStartContainers", "Initialized") else readiness,
                    "lastTransitionTime": since,
                }
                for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": ready,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": since}},
                }
                for container in pod.spec.containers
            ],
        }

    def _address(self, uid: str) -> str:
        if uid not in self._addresses:
            self._addresses[uid] = str(self._next_address)
            self._next_address += 1
        return self._addresses[uid]

    def _stop_engine(self, uid: str) -> None:
        engine = self.engines.pop(uid, None)
        if engine is not None:
            engine.stop()

    def _pods(self, node: str) -> list[Any]:
        items: list[Any] = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
        return items

    @staticmethod
    def _ready_condition(status: str, reason: str, message: str, since: str) -> dict[str, str]:
        return {
            "type": "Ready",
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now(),
            "lastTransitionTime": since,
        }
