"""`gpufabric sandbox`: the real operator over a simulated fabric, for a while, shown live.

Order of work: every input is read and checked before anything starts (fleet, workloads, scenario and the
files it applies, the metrics port); then the in-process API server, the simulated kubelets (loopback pod
addresses) and engines, the objects, and the operator — `gpufabric.controller.run.Operator`, as
`gpufabric operator` runs it, in a thread with its own event loop. A loop of about twice a second plays the
scenario's events when they are due, sets every engine's rates from the traffic model, and shows a
snapshot. At the end (the duration, or Ctrl-C) everything stops in reverse order and the summary is printed.

With `--real-engine` one more workload's one replica runs vLLM's CPU build for real (`real_replica`): its pod's
engine is started by the simulated kubelet, its load comes from real clients, and the summary sets what the
operator measured of it beside what the clients counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import re
import socket
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes

from gpufabric.api import labels
from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.computenode import ComputeNode
from gpufabric.api.reasons import ConditionReason, EventReason
from gpufabric.controller.kube import COMPONENT
from gpufabric.controller.reconciler import LoopSettings
from gpufabric.controller.run import Operator, OperatorOptions
from gpufabric.controller.scraper import ScrapeSettings
from gpufabric.manifests import Fleet, ManifestError, load
from gpufabric.sandbox import real_engine, real_replica
from gpufabric.sandbox import scenario as scenarios
from gpufabric.sandbox.cluster import (
    AGENT_WORKLOADS,
    COMPUTE_NODES,
    EVENTS_KIND,
    NAMESPACES_KIND,
    NODES_KIND,
    PODS_KIND,
    Cluster,
    ConflictError,
    emulated,
    real,
)
from gpufabric.sandbox.controlplane import free_port
from gpufabric.sandbox.emulator import JsonDict
from gpufabric.sandbox.engines import Counters, Endpoint, EngineFarm
from gpufabric.sandbox.kubelet import node_ready
from gpufabric.sandbox.operator_thread import OperatorThread
from gpufabric.sandbox.real_engine import EngineUnavailableError, RealEngines
from gpufabric.sandbox.snapshot import (
    ForeignJobReport,
    LogLine,
    NodeRow,
    RealEngineReport,
    Recovery,
    Scaling,
    Snapshot,
    Summary,
    WorkloadRow,
)
from gpufabric.sandbox.traffic import DEFAULT_UTILISATION, Hardware, Surge, demand_at, serve
from gpufabric.sandbox.view import Display
from gpufabric.vendors import Precision, Vendor

OPERATOR_NAMESPACE = "gpufabric-system"
# Loopback: every simulated engine listens at its pod's own address (127.100/16 is the e2e suite's kubelet's).
POD_NETWORK = "127.101.0.0/16"
TICK_SECONDS = 0.5
REQUEST_LOG = 16  # requests the API server remembers: none are read back, and kmock scans them all per request
# Log lines each snapshot carries: the live view shows the last few, the plain one every line not yet printed,
# so this must exceed what one tick can add (the first placements add one line per replica at once).
LOG_WINDOW = 500
# The operator's settings in the sandbox, chosen so a 75-second scenario shows each loop turn at least once
# (production defaults in brackets): a lost node's replicas move after 10 s [30], engines are scraped every
# 2 s [15], rates average over 10 s [60], and the autoscaler scales down after 30 s of lower demand [300].
NODE_GRACE_SECONDS = 10.0
SCRAPE_INTERVAL_SECONDS = 2.0
TOKENS_WINDOW_SECONDS = 10.0
AUTOSCALE_STABILISATION_SECONDS = 30.0
# The simulated kubelet: a container starts serving 2 s after it is bound, a deleted one is gone after 1 s.
POD_READY_AFTER_SECONDS = 2.0
POD_TERMINATE_AFTER_SECONDS = 1.0
# kopf says it ignores OS signals when it runs outside the main thread: in the sandbox, by design (Ctrl-C
# is the sandbox's), so it is not news to the user.
EXPECTED_WARNINGS = ("OS signals are ignored",)
AUTOSCALED = re.compile(r"^(\d+) -> (\d+) replicas: (.*)$")


class SandboxError(Exception):
    """Bad input or an unusable machine: one line per problem, each naming the file or port."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass
class SandboxOptions:
    fleet: list[Path]
    workloads: list[Path]
    scenario: Path
    duration: float | None = None  # None: the scenario's
    metrics_port: int | None = None
    kubeconfig_out: Path | None = None
    seed: int = 0
    control_plane: str = "emulator"  # or "real": kube-apiserver, kube-scheduler, kube-controller-manager
    real_engine: bool = False  # one replica of one more workload runs vLLM's CPU build (real_replica)


@dataclass(frozen=True)
class Inputs:
    fleet: Fleet
    scenario: scenarios.Scenario
    applied: Mapping[int, Fleet]  # apply events' files, by event index
    duration: float
    notices: tuple[str, ...] = ()  # said on stderr before the start


def read_inputs(options: SandboxOptions) -> Inputs:
    """Everything the sandbox will read, checked before anything starts; every problem at once."""
    problems: list[str] = []
    notices: list[str] = []
    try:
        fleet = load([*options.fleet, *options.workloads])
    except ManifestError as error:
        problems += error.problems
        fleet = Fleet((), ())
    try:
        scenario = scenarios.load_scenario(options.scenario)
        if options.duration is not None:
            # A shorter run on the command line plays the events that fit (said on stderr); in the file,
            # an event after its own duration stays an error.
            scenario = scenario.with_duration(options.duration)
            late = [e for e in scenario.events if e.at >= options.duration]
            if late:
                scenario = scenario.model_copy(
                    update={"events": [e for e in scenario.events if e.at < options.duration]}
                )
                notices.append(
                    f"--duration {options.duration:g}: {len(late)} of the scenario's events come later and are "
                    f"left out ({', '.join(f'{e.action_key} at {e.at:g}s' for e in late)})"
                )
    except scenarios.ScenarioError as error:
        raise SandboxError([*problems, *error.problems]) from error
    applied: dict[int, Fleet] = {}
    for index, event in enumerate(scenario.events):
        if isinstance(event.action, scenarios.Apply):
            try:
                applied[index] = load([event.action.resolved(options.scenario)])
            except ManifestError as error:
                problems += error.problems
    if options.real_engine:
        fleet, scenario, more, said = _with_real_engine(options, fleet, scenario, applied.values())
        problems += more
        notices += said
    known_nodes = {n.name for n in fleet.nodes} | {n.name for f in applied.values() for n in f.nodes}
    known_workloads = {w.key for w in fleet.workloads} | {w.key for f in applied.values() for w in f.workloads}
    problems += scenarios.check_references(
        scenario, nodes=known_nodes, workloads=known_workloads, where=str(options.scenario)
    )
    problems += _machine_problems(options)
    if problems:
        raise SandboxError(problems)
    return Inputs(fleet, scenario, applied, scenario.duration, tuple(notices))


def _machine_problems(options: SandboxOptions) -> list[str]:
    """What this machine lacks for the options: a free metrics port, the control plane's binaries."""
    problems = []
    if options.metrics_port is not None and (busy := _port_in_use(options.metrics_port)):
        problems.append(f"--metrics-port {options.metrics_port}: {busy}")
    if options.control_plane == "real":
        from gpufabric.sandbox.controlplane import ControlPlaneUnavailableError, find_binaries  # noqa: PLC0415

        try:
            find_binaries()
        except ControlPlaneUnavailableError as error:
            problems.append(f"--control-plane real: {error}")
    return problems


def _with_real_engine(
    options: SandboxOptions, fleet: Fleet, scenario: scenarios.Scenario, applied: Iterable[Fleet]
) -> tuple[Fleet, scenarios.Scenario, list[str], list[str]]:
    """--real-engine: (the fleet with the real engine's workload, the scenario, problems, notices). The tools must
    be there (`make tools`) and an NVIDIA node for its replica; without --duration the run lasts long enough for
    the model to load and the replica to serve a while."""
    try:
        # The module's TOOLS read now, not the default bound when tools() was defined: tests point it elsewhere.
        model = real_engine.tiny_model(real_engine.TOOLS)
    except EngineUnavailableError as error:
        return fleet, scenario, [f"--real-engine: {error}"], []
    problems, notices = [], []
    nodes = [*fleet.nodes, *(node for more in applied for node in more.nodes)]
    if not any(node.spec.vendor == Vendor.NVIDIA for node in nodes):
        problems.append("--real-engine: no NVIDIA ComputeNode in the fleet for the real engine's replica (vLLM)")
    minimum = real_replica.MIN_DURATION_SECONDS
    if options.duration is None and scenario.duration < minimum:
        notices.append(
            f"--real-engine: running for {minimum:g}s, not the scenario's {scenario.duration:g}s, as vLLM takes "
            "40-75 s to load the model on two cores (--duration sets another length)"
        )
        scenario = scenario.with_duration(minimum)
    workload = real_replica.real_workload(model, free_port())  # the engine's port: free now, on no fixed number
    return real_replica.with_workload(fleet, workload), scenario, problems, notices


def _port_in_use(port: int) -> str | None:
    """Why the operator could not serve metrics on `port` (it binds every address), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return "already in use by another program (choose another port, or leave the flag out)"
            return f"cannot listen there: {error.strerror}"
    return None


@dataclass
class Replica:
    """A replica the scenario's node failure took down, until it is Ready elsewhere."""

    workload: str
    replica: int
    node: str
    failed_at: float
    ready_before: int  # Ready replicas of the workload when the node failed
    recovered_after: float | None = None


@dataclass
class ForeignJob:
    """A job the scenario started for someone else, and what the run saw while it ran."""

    name: str  # its pod's, in scenario.FOREIGN_NAMESPACE
    node: str  # the ComputeNode
    resource: str
    devices: int
    started_at: float
    ours_before: frozenset[str]  # the operator's replicas (rank-0 pod uids) when it started
    ended_at: float | None = None
    rejected: str | None = None  # the kubelet's reason and message, when admission refused the pod
    held_seen: int = 0
    placed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # replicas placed meanwhile: uid -> nodes

    @property
    def pod(self) -> str:
        return f"{scenarios.FOREIGN_NAMESPACE}/{self.name}"

    @property
    def watched(self) -> bool:
        """Still holding its node: started, neither ended nor refused."""
        return self.ended_at is None and self.rejected is None

    def report(self) -> ForeignJobReport:
        return ForeignJobReport(
            pod=self.pod,
            node=self.node,
            devices=self.devices,
            resource=self.resource,
            started_at=self.started_at,
            ended_at=self.ended_at,
            rejected=self.rejected,
            held_seen=self.held_seen,
            placed=len(self.placed),
            placed_on_node=sum(1 for nodes in self.placed.values() if self.node in nodes),
        )


def foreign_job_pod(name: str, node_name: str, resource: str, devices: int) -> JsonDict:
    """Another team's training pod: not labelled as the operator's, bound to the Node directly (as kube-scheduler
    binds, or as a person pins it), asking for `devices` of `resource` (requests equal to limits, as extended
    resources must be)."""
    container = {
        "name": "train",
        "image": "registry.example/batch/trainer:latest",
        "resources": {"limits": {resource: str(devices)}, "requests": {resource: str(devices)}},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": scenarios.FOREIGN_NAMESPACE,
            "labels": {"app.kubernetes.io/name": "trainer", "batch.kubernetes.io/job-name": name},
        },
        "spec": {"nodeName": node_name, "restartPolicy": "Never", "containers": [container]},
    }


@dataclass
class Books:
    """What the run noted for the summary."""

    recoveries: list[Replica] = field(default_factory=list)
    foreign_jobs: dict[str, ForeignJob] = field(default_factory=dict)
    scalings: list[Scaling] = field(default_factory=list)
    log: list[LogLine] = field(default_factory=list)
    seen_events: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class World:
    """The objects, read once per tick."""

    pods: list[JsonDict]
    nodes: list[JsonDict]
    compute_nodes: list[JsonDict]
    workloads: list[JsonDict]
    events: list[JsonDict]

    def workload_map(self) -> dict[str, JsonDict]:
        return {f"{w['metadata']['namespace']}/{w['metadata']['name']}": w for w in self.workloads}

    def our_replicas(self) -> dict[str, tuple[str, ...]]:
        """The operator's replicas, by their rank-0 pod's uid: the ComputeNodes each holds (terminating ones left
        out)."""
        found = {}
        for pod in self.pods:
            meta = pod["metadata"]
            pod_labels = meta.get("labels") or {}
            if _managed(pod) and pod_labels.get(labels.RANK) == "0" and not meta.get("deletionTimestamp"):
                nodes = str((meta.get("annotations") or {}).get(labels.REPLICA_NODES, ""))
                found[meta["uid"]] = tuple(n for n in nodes.split(",") if n)
        return found

    def ready_replicas(self) -> list[tuple[str, int, tuple[str, ...]]]:
        """(workload, replica, its nodes) of every replica whose rank-0 pod is Ready."""
        found = []
        for pod in self.pods:
            meta = pod["metadata"]
            if _pod_ready(pod) and (meta.get("labels") or {}).get(labels.RANK) == "0":
                workload, replica = _replica_of(pod)
                nodes = str((meta.get("annotations") or {}).get(labels.REPLICA_NODES, "")).split(",")
                found.append((workload, replica, tuple(nodes)))
        return found


class Sandbox:
    def __init__(self, options: SandboxOptions, inputs: Inputs, display: Display) -> None:
        self.options = options
        self.inputs = inputs
        self.display = display
        self.rng = random.Random(options.seed)
        self.hardware = Hardware.drawn(self.rng)
        self.books = Books()
        self.surges: dict[str, list[Surge]] = defaultdict(list)
        self.baselines: dict[str, float] = dict(inputs.scenario.demand)
        self.declared_replicas = {w.key: w.spec.replicas for w in self._all_workloads()}
        self.failed: set[str] = set()
        self.started = 0.0
        self._cluster: Cluster | None = None
        self.engines = EngineFarm()
        self.operator: OperatorThread | None = None
        self.next_event = 0
        self.added_nodes: dict[str, int] = defaultdict(int)
        self.interrupted = False
        self.unservable: set[str] = set()  # pods whose engine could not listen
        self.real_engines: RealEngines | None = None
        self.real: real_replica.RealReplica | None = None
        if options.real_engine:
            # The engine's output is kept after the run, for whoever wants to read what vLLM said.
            logs = Path(tempfile.mkdtemp(prefix="gpufabric-sandbox-real-engine-"))
            venv = real_engine.tools(real_engine.TOOLS) / "venv"  # checked by read_inputs; TOOLS read now
            self.real_engines = real_replica.NicedEngines(frozenset({real_replica.KEY}), logs, venv)
            self.real = real_replica.RealReplica(
                self.real_engines,
                clock=lambda: self.elapsed,
                say=lambda text: self.log_line(text, "log" if text.startswith("warning") else "real"),
                counted=self._operator_count,
                window=TOKENS_WINDOW_SECONDS,
                scrape_interval=SCRAPE_INTERVAL_SECONDS,
            )

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # --- the run ----------------------------------------------------------------------------------------------

    async def run(self) -> Summary:
        where: contextlib.AbstractAsyncContextManager[Cluster]
        if self.options.control_plane == "real":
            where = real(pod_network=POD_NETWORK, real_engines=self.real_engines)
        else:
            where = emulated(
                seed=self.options.seed,
                request_log=REQUEST_LOG,
                pod_network=POD_NETWORK,
                ready_after=POD_READY_AFTER_SECONDS,
                terminate_after=POD_TERMINATE_AFTER_SECONDS,
                real_engines=self.real_engines,
            )
        async with where as cluster:
            self._cluster = cluster
            await self.engines.start()
            try:
                self.started = time.monotonic()
                await self._create_objects()
                if self.options.kubeconfig_out is not None:
                    self.options.kubeconfig_out.write_text(cluster.kubeconfig(), encoding="utf-8")
                self.operator = OperatorThread(self._operator())
                with self.display, _logged_to(self):
                    try:
                        await self._play()
                    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels the main task
                        self.interrupted = True
                        self.log_line("interrupted (Ctrl-C): stopping", "scenario")
                        self.display.show(self.snapshot(await self._observe()))
                world = await self._observe()
                if self.real is not None:
                    # The summary's rows are the world as the load ended; the counts once the operator has
                    # scraped the engine after the clients' last response.
                    await self.real.finish()
                return self.summary(world)
            finally:
                if self.real is not None:
                    await self.real.close()
                if self.operator is not None:
                    await self.operator.finish(kill=False)
                await self.engines.close()

    @property
    def cluster(self) -> Cluster:
        assert self._cluster is not None, "run() first"
        return self._cluster

    async def _observe(self) -> World:
        cluster = self.cluster
        pods, nodes, compute_nodes, workloads, events = await asyncio.gather(
            cluster.list(PODS_KIND),
            cluster.list(NODES_KIND),
            cluster.list(COMPUTE_NODES),
            cluster.list(AGENT_WORKLOADS),
            cluster.list(EVENTS_KIND),
        )
        return World(pods, nodes, compute_nodes, workloads, events)

    def _operator(self) -> Operator:
        configuration = self.cluster.operator_configuration()
        configuration.connection_pool_maxsize = 32
        api_client = kubernetes.client.ApiClient(configuration)
        options = OperatorOptions(
            metrics_port=self.options.metrics_port,
            node_grace_seconds=NODE_GRACE_SECONDS,
            operator_namespace=OPERATOR_NAMESPACE,
            scrape=ScrapeSettings(interval=SCRAPE_INTERVAL_SECONDS),
            tokens_window=TOKENS_WINDOW_SECONDS,
            autoscale_stabilisation=AUTOSCALE_STABILISATION_SECONDS,
            loop=LoopSettings(),
        )
        return Operator(options, api_client, login=self.cluster.login)

    async def _play(self) -> None:
        while self.elapsed < self.inputs.duration:
            if self.operator is not None and not self.operator.thread.is_alive():
                raise RuntimeError("the operator inside the sandbox stopped") from self.operator.error
            await self._due_events()
            world = await self._observe()
            await self._sync_engines(world)
            self._note_operator_events(world)
            self._note_recoveries(world)
            self._note_foreign_jobs(world)
            if self.real is not None:
                self.real.tend(world.pods, world.workload_map().get(real_replica.KEY))
            self.display.show(self.snapshot(world))
            await asyncio.sleep(TICK_SECONDS)

    def _operator_count(self) -> float | None:
        """The operator's own count of the real engine's generated tokens (gpufabric_tokens_total, as the loop
        last published it for its exporter: an immutable view, safe to read from this thread); None before its
        first scrape of the engine."""
        published = self.operator.operator.reconciler.published if self.operator is not None else None
        if published is None or published.tokens is None:
            return None
        found = [
            value
            for (namespace, name, _, _, _, kind), value in published.tokens.totals
            if f"{namespace}/{name}" == real_replica.KEY and kind == "generation"
        ]
        return sum(found) if found else None

    # --- objects -----------------------------------------------------------------------------------------------

    async def _create_objects(self) -> None:
        namespaces = {OPERATOR_NAMESPACE} | {w.namespace for w in self._all_workloads()}
        if any(isinstance(event.action, scenarios.StartForeignJob) for event in self.inputs.scenario.events):
            namespaces.add(scenarios.FOREIGN_NAMESPACE)
        for namespace in sorted(namespaces):
            with contextlib.suppress(ConflictError):  # a real API server has `default` already
                body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
                await self.cluster.create(NAMESPACES_KIND, body)
        for node in self.inputs.fleet.nodes:
            await self._add_node(node)
        for workload in self.inputs.fleet.workloads:
            await self._add_workload(workload)

    def _all_workloads(self) -> Iterable[AgentWorkload]:
        yield from self.inputs.fleet.workloads
        for applied in self.inputs.applied.values():
            yield from applied.workloads

    async def _add_node(self, node: ComputeNode) -> None:
        await self.cluster.add_node(node)
        body = node.model_dump(mode="json", by_alias=True, exclude={"status"}, exclude_none=True)
        await self.cluster.create(COMPUTE_NODES, body)

    async def _add_workload(self, workload: AgentWorkload) -> None:
        body = workload.model_dump(mode="json", by_alias=True, exclude={"status"}, exclude_none=True)
        await self.cluster.create(AGENT_WORKLOADS, body, namespace=workload.namespace)

    # --- the scenario ------------------------------------------------------------------------------------------

    async def _due_events(self) -> None:
        events = self.inputs.scenario.events
        while self.next_event < len(events) and events[self.next_event].at <= self.elapsed:
            index = self.next_event
            self.next_event += 1
            await self._play_event(index, events[index])

    async def _play_event(self, index: int, event: scenarios.Event) -> None:
        action = event.action
        cluster = self.cluster
        if isinstance(action, scenarios.Surge):
            start = self.elapsed
            self.surges[action.workload].append(Surge(start, start + action.for_seconds, action.factor))
            self.log_line(f"traffic x{action.factor:g} on {action.workload} for {action.for_seconds:g}s", "scenario")
        elif isinstance(action, scenarios.FailNode):
            await self._fail_node(action.node)
        elif isinstance(action, scenarios.RecoverNode):
            self.failed.discard(action.node)
            await cluster.recover_node(action.node)
            self.log_line(f"node {action.node} is back (Ready)", "scenario")
        elif isinstance(action, scenarios.AddNodes):
            await self._add_like(action.like, action.count)
        elif isinstance(action, scenarios.Scale):
            namespace, name = action.workload.split("/", 1)
            await cluster.patch(AGENT_WORKLOADS, name, {"spec": {"replicas": action.replicas}}, namespace=namespace)
            self.log_line(f"kubectl scale {action.workload} --replicas={action.replicas}", "scenario")
        elif isinstance(action, scenarios.StartForeignJob):
            await self._start_foreign_job(action)
        elif isinstance(action, scenarios.EndForeignJob):
            await self._end_foreign_job(action.name)
        elif isinstance(action, scenarios.Apply):
            await self._apply(index, action)

    async def _apply(self, index: int, action: scenarios.Apply) -> None:
        """As kubectl apply: objects that do not exist are created, the spec of those that do is updated."""
        cluster = self.cluster
        applied = self.inputs.applied[index]
        for node in applied.nodes:
            if await cluster.get(COMPUTE_NODES, node.name) is None:
                await self._add_node(node)
            else:
                spec = node.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
                await cluster.patch(COMPUTE_NODES, node.name, {"spec": spec})
        for workload in applied.workloads:
            if await cluster.get(AGENT_WORKLOADS, workload.name, workload.namespace) is None:
                await self._add_workload(workload)
            else:
                spec = workload.spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
                await cluster.patch(AGENT_WORKLOADS, workload.name, {"spec": spec}, namespace=workload.namespace)
        self.log_line(
            f"applied {action.file}: {len(applied.nodes)} nodes, {len(applied.workloads)} workloads", "scenario"
        )

    async def _fail_node(self, name: str) -> None:
        """The machine stops: its Node goes NotReady, its engines stop answering, and the replicas with a pod
        there are noted, with how many Ready replicas their workload had, to time how long until it has as
        many again without that node (the operator may give a moved replica a new index)."""
        world = await self._observe()  # before: a real node lifecycle marks its pods not Ready at once
        self.failed.add(name)
        await self.cluster.fail_node(name)
        lost: set[tuple[str, int]] = set()
        for pod in world.pods:
            on_node = (pod.get("spec") or {}).get("nodeName") == name
            if on_node and _managed(pod) and not pod["metadata"].get("deletionTimestamp"):
                lost.add(_replica_of(pod))
        ready = Counter(workload for workload, _, _ in world.ready_replicas())
        for workload, replica in sorted(lost):
            self.books.recoveries.append(Replica(workload, replica, name, self.elapsed, ready[workload]))
        self.log_line(f"node {name} failed (NotReady): {len(lost)} replicas lost", "scenario")

    async def _add_like(self, like: str, count: int) -> None:
        template = await self.cluster.get(COMPUTE_NODES, like)
        assert template is not None, f"{like}: checked before the start"
        for _ in range(count):
            self.added_nodes[like] += 1
            name = f"{like}-new-{self.added_nodes[like]}"
            spec = {**template["spec"], "nodeName": name}
            node = ComputeNode.model_validate({"metadata": {"name": name}, "spec": spec})
            await self._add_node(node)
        self.log_line(f"{count} new nodes like {like} joined", "scenario")

    async def _start_foreign_job(self, action: scenarios.StartForeignJob) -> None:
        """Someone else's pod, bound to the node's Node, asking for every device the node declares."""
        template = await self.cluster.get(COMPUTE_NODES, action.node)
        assert template is not None, f"{action.node}: checked before the start"
        spec = ComputeNode.model_validate({"metadata": {"name": action.node}, "spec": template["spec"]}).spec
        resource, devices = spec.device_resource_name, spec.devices
        world = await self._observe()  # before: the replicas placed from now on are placed around it
        body = foreign_job_pod(action.name, spec.node_name, resource, devices)
        await self.cluster.create(PODS_KIND, body, namespace=scenarios.FOREIGN_NAMESPACE)
        job = ForeignJob(action.name, action.node, resource, devices, self.elapsed, frozenset(world.our_replicas()))
        self.books.foreign_jobs[action.name] = job
        self.log_line(
            f"foreign job {job.pod} starts on {action.node}, asking for all {devices} {resource} (not the operator's)",
            "scenario",
        )

    async def _end_foreign_job(self, name: str) -> None:
        job = self.books.foreign_jobs[name]  # check_references: started before it ends
        was_rejected = job.rejected is not None
        job.ended_at = self.elapsed
        if was_rejected:
            self.log_line(f"foreign job {job.pod} ends (it never ran: the kubelet rejected it)", "scenario")
            return
        await self.cluster.finish_pod(name, scenarios.FOREIGN_NAMESPACE)
        self.log_line(
            f"foreign job {job.pod} finished (Succeeded): {job.devices} {job.resource} on {job.node} free again",
            "scenario",
        )

    # --- engines -----------------------------------------------------------------------------------------------

    async def _sync_engines(self, world: World) -> None:
        nodes = {n["metadata"]["name"]: node_ready(n) for n in world.nodes}
        # Parsed once a tick, not once per pod: a workload's replicas all read the same spec.
        workloads = {key: AgentWorkload.model_validate(body) for key, body in world.workload_map().items()}
        serving: dict[str, list[tuple[str, float]]] = defaultdict(list)  # workload -> (pod uid, capacity)
        wanted: dict[str, tuple[Endpoint, Counters]] = {}
        for pod in world.pods:
            found = self._engine_of(pod, workloads, nodes)
            if found is None:
                continue
            uid, key, endpoint, counters, capacity, ready = found
            wanted[uid] = (endpoint, counters)
            if ready:
                serving[key].append((uid, capacity))
        for uid in self.engines.running - wanted.keys():
            await self.engines.stop_engine(uid)
        for uid in wanted.keys() - self.engines.running - self.unservable:
            if problem := await self.engines.start_engine(uid, *wanted[uid]):
                # Another program holds the pod's address: its replica serves nothing (the operator sees an
                # unreachable engine), said once.
                self.unservable.add(uid)
                self.log_line(f"the engine of pod {uid[:8]} {problem}; its replica serves no tokens", "log")
        for key in workloads:
            replicas = serving.get(key, [])
            capacities = [capacity for _, capacity in replicas]
            demand = self.demand(key, capacities)
            served_by = serve(demand, capacities, self._noise(), self.rng)
            for (uid, _), served in zip(replicas, served_by, strict=True):
                engine = self.engines.counters(uid)
                if engine is not None:
                    engine.set_rates(served)

    def _noise(self) -> float:
        return self.inputs.scenario.noise

    def _engine_of(
        self, pod: JsonDict, workloads: Mapping[str, AgentWorkload], nodes: Mapping[str, bool]
    ) -> tuple[str, str, Endpoint, Counters, float, bool] | None:
        """The engine a pod runs, if it runs one now: rank 0 of a replica, Running with an address, on a live
        node."""
        meta, status = pod["metadata"], pod.get("status") or {}
        pod_labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        key = f"{meta.get('namespace')}/{pod_labels.get(labels.WORKLOAD)}"
        workload = workloads.get(key)
        if (
            workload is None
            or (self.real is not None and key == real_replica.KEY)  # a real engine listens there
            or pod_labels.get(labels.RANK) != "0"
            or status.get("phase") != "Running"
            or not status.get("podIP")
            or meta.get("deletionTimestamp")
            or not nodes.get((pod.get("spec") or {}).get("nodeName", ""), False)
        ):
            return None
        vendor = next((v for v in workload.spec.runtimes if v.value == notes.get(labels.VENDOR)), None)
        if vendor is None:
            return None
        metrics = workload.spec.metrics_for(vendor)
        existing = self.engines.counters(meta["uid"])
        counters = existing or Counters(
            metrics.prompt_tokens_counter,
            metrics.generation_tokens_counter,
            metrics.waiting_requests_gauge,
            workload.spec.model.name,
        )
        capacity = self.hardware.replica_capacity(
            accelerator=notes.get(labels.ACCELERATOR, ""),
            precision=Precision(notes.get(labels.PRECISION, "BF16")),
            parameters_billions=workload.spec.model.parameters_billions,
            devices_per_node=int(notes.get(labels.DEVICES, "1")),
            nodes=len(str(notes.get(labels.REPLICA_NODES, "")).split(",")),
        )
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        endpoint = Endpoint(status["podIP"], metrics.port, metrics.path)
        return meta["uid"], key, endpoint, counters, capacity, ready

    def demand(self, key: str, capacities: Sequence[float]) -> float:
        """The scenario's baseline for the workload, else DEFAULT_UTILISATION of what its declared replicas
        serve (the first Ready replica's capacity times spec.replicas as first applied: fixed, so what the
        autoscaler adds is spare capacity, and a surge is a surge); times the surges in force."""
        if key not in self.baselines and capacities:
            per_replica = sum(capacities) / len(capacities)
            self.baselines[key] = DEFAULT_UTILISATION * per_replica * self.declared_replicas.get(key, 1)
        return demand_at(self.elapsed, self.baselines.get(key, 0.0), self.surges.get(key, []))

    # --- what happened -----------------------------------------------------------------------------------------

    def log_line(self, text: str, source: str) -> None:
        self.books.log.append(LogLine(round(self.elapsed, 1), text, source))

    def _note_operator_events(self, world: World) -> None:
        for event in sorted(world.events, key=_written_order):
            uid = event["metadata"]["uid"]
            if uid in self.books.seen_events:
                continue
            self.books.seen_events.add(uid)
            # Ours only: a real cluster's controllers post their own (the EndpointSlice controller refuses
            # the simulated pods' loopback addresses, which is the simulation's doing, not news).
            reporter = event.get("reportingComponent") or (event.get("source") or {}).get("component")
            if reporter != COMPONENT:
                continue
            about = event.get("involvedObject") or {}
            name = "/".join(p for p in (about.get("namespace"), about.get("name")) if p)
            reason, message = event.get("reason", ""), event.get("message", "")
            self.log_line(f"{reason} {name}: {message}", "operator")
            if reason == EventReason.AUTOSCALED.value and (m := AUTOSCALED.match(message)):
                self.books.scalings.append(Scaling(round(self.elapsed, 1), name, int(m[1]), int(m[2]), m[3]))

    def _note_recoveries(self, world: World) -> None:
        pending = [r for r in self.books.recoveries if r.recovered_after is None]
        if not pending:
            return
        ready = world.ready_replicas()
        workloads = world.workload_map()
        for lost in pending:
            elsewhere = sum(1 for workload, _, nodes in ready if workload == lost.workload and lost.node not in nodes)
            wanted = (workloads.get(lost.workload, {}).get("spec") or {}).get("replicas", 0)
            if elsewhere >= min(lost.ready_before, wanted):
                lost.recovered_after = round(self.elapsed - lost.failed_at, 1)

    def _note_foreign_jobs(self, world: World) -> None:
        """For each foreign job still holding its node: whether the kubelet refused it, what the operator's
        status counts as held by others on that node, and the replicas the operator placed meanwhile."""
        watched = [job for job in self.books.foreign_jobs.values() if job.watched]
        if not watched:
            return
        pods = {(p["metadata"].get("namespace"), p["metadata"]["name"]): p for p in world.pods}
        held = {cn["metadata"]["name"]: (cn.get("status") or {}).get("heldByOthers") or 0 for cn in world.compute_nodes}
        ours = world.our_replicas()
        for job in watched:
            status = (pods.get((scenarios.FOREIGN_NAMESPACE, job.name)) or {}).get("status") or {}
            if status.get("phase") == "Failed":
                words = [str(part) for part in (status.get("reason"), status.get("message")) if part]
                job.rejected = ": ".join(words) or "Failed"
                self.log_line(f"warning: the kubelet rejected foreign job {job.pod}: {job.rejected}", "log")
                continue
            job.held_seen = max(job.held_seen, held.get(job.node, 0))
            job.placed.update((uid, nodes) for uid, nodes in ours.items() if uid not in job.ours_before)

    # --- views -------------------------------------------------------------------------------------------------

    def snapshot(self, world: World) -> Snapshot:
        ready = {n["metadata"]["name"]: node_ready(n) for n in world.nodes}
        real_node = self.real.node if self.real is not None and self.real.pod is not None else None
        nodes = tuple(
            NodeRow(
                name=cn["metadata"]["name"],
                vendor=cn["spec"]["vendor"],
                accelerator=cn["spec"]["accelerator"],
                domain=(cn["spec"].get("fabric") or {}).get("roceDomain"),
                devices=cn["spec"]["devices"],
                used=(cn.get("status") or {}).get("allocatedDevices", 0),
                ready=ready.get(cn["spec"]["nodeName"], False),
                others=(cn.get("status") or {}).get("heldByOthers") or 0,
                real=1 if cn["metadata"]["name"] == real_node else 0,  # its one device
            )
            for cn in world.compute_nodes
        )
        return Snapshot(
            elapsed=self.elapsed,
            duration=self.inputs.duration,
            nodes=nodes,
            workloads=tuple(self._workload_row(w) for w in world.workloads),
            log=tuple(self.books.log[-LOG_WINDOW:]),
            api=self.cluster.description,
            real_engine=self.real.status_text() if self.real is not None else None,
        )

    def _workload_row(self, body: JsonDict) -> WorkloadRow:
        meta, spec, status = body["metadata"], body["spec"], body.get("status") or {}
        key = f"{meta['namespace']}/{meta['name']}"
        kinds = Counter(f"{p['vendor']}/{p['accelerator']}/{p['precision']}" for p in status.get("placements") or [])
        ready_condition: JsonDict = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        tokens = status.get("tokensPerSecond") or {}
        real = self.real is not None and key == real_replica.KEY
        return WorkloadRow(
            namespace=meta["namespace"],
            name=meta["name"],
            replicas=spec.get("replicas", 1),
            ready=status.get("readyReplicas", 0),
            placements=tuple(f"{kind} x{count}" for kind, count in sorted(kinds.items())),
            tokens_per_second=tokens.get("generation"),
            target=(spec.get("throughput") or {}).get("targetTokensPerSecond"),
            # The real engine's demand is its clients': what they got over the operator's window.
            demand=self.real.demand() if self.real is not None and real else self._current_demand(key),
            phase=ready_condition.get("reason", ConditionReason.PENDING.value),
            real=real,
        )

    def _current_demand(self, key: str) -> float:
        baseline = self.baselines.get(key)
        return demand_at(self.elapsed, baseline, self.surges.get(key, [])) if baseline is not None else 0.0

    def summary(self, world: World) -> Summary:
        per_vendor: Counter[str] = Counter()  # Ready replicas: their rank-0 pods Ready, by the pod's vendor
        for pod in world.pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            if ready and (meta.get("labels") or {}).get(labels.RANK) == "0" and not meta.get("deletionTimestamp"):
                per_vendor[(meta.get("annotations") or {}).get(labels.VENDOR, "?")] += 1
        rows = tuple(self._workload_row(w) for w in world.workloads)
        unplaced = tuple(
            f"{r.namespace}/{r.name}: {r.phase}" for r in rows if r.ready < r.replicas and r.phase != "Ready"
        )
        return Summary(
            elapsed=self.elapsed,
            replicas_per_vendor=dict(per_vendor),
            tokens_per_vendor_precision=self._mean_tokens(),
            recoveries=tuple(
                Recovery(r.node, r.workload, r.replica, r.failed_at, r.recovered_after) for r in self.books.recoveries
            ),
            scalings=tuple(self.books.scalings),
            workloads=rows,
            unplaced=unplaced,
            foreign_jobs=tuple(job.report() for job in self.books.foreign_jobs.values()),
            real_engine=self._real_report(rows),
        )

    def _real_report(self, rows: Sequence[WorkloadRow]) -> RealEngineReport | None:
        if self.real is None or self.real_engines is None:
            return None
        phase = next((r.phase for r in rows if r.real), ConditionReason.PENDING.value)
        return self.real.report(phase, self.real_engines.logs)

    def _mean_tokens(self) -> dict[tuple[str, str], float]:
        """Generation tokens the operator counted (its own gpufabric_tokens_total) over the run, per second."""
        if self.operator is None:
            return {}
        totals: dict[tuple[str, str], float] = defaultdict(float)
        for family in self.operator.operator.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "gpufabric_tokens_total" and sample.labels.get("kind") == "generation":
                    totals[(sample.labels["vendor"], sample.labels["precision"])] += sample.value
        return {key: value / max(self.elapsed, 1e-9) for key, value in sorted(totals.items())}


def _written_order(obj: JsonDict) -> tuple[int, str]:
    """Objects in the order they were written: the API server's resourceVersion counts up (ours is a number)."""
    version = str(obj["metadata"].get("resourceVersion", ""))
    return (int(version) if version.isdigit() else 0, obj["metadata"].get("creationTimestamp", ""))


def _pod_ready(pod: JsonDict) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready and not pod["metadata"].get("deletionTimestamp")


def _managed(pod: JsonDict) -> bool:
    """The operator's own pod (foreign jobs' are not)."""
    return (pod["metadata"].get("labels") or {}).get(labels.MANAGED_BY) == labels.MANAGER


def _replica_of(pod: JsonDict) -> tuple[str, int]:
    meta = pod["metadata"]
    pod_labels = meta.get("labels") or {}
    return f"{meta['namespace']}/{pod_labels.get(labels.WORKLOAD, '?')}", int(pod_labels.get(labels.REPLICA, "0"))


class _LogLines(logging.Handler):
    """The operator's warnings and errors (a scrape that failed, a write refused) as log lines of the view,
    instead of text on stderr across a live screen."""

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(logging.WARNING)
        self.sandbox = sandbox

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(EXPECTED_WARNINGS):
            return
        # Called from the operator's thread too: list.append is atomic, and elapsed only reads a float.
        self.sandbox.log_line(f"{record.levelname.lower()}: {record.getMessage()}", "log")


@contextlib.contextmanager
def _logged_to(sandbox: Sandbox) -> Iterator[None]:
    handler = _LogLines(sandbox)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def run_sandbox(options: SandboxOptions, inputs: Inputs, display: Display) -> Summary:
    """Run on inputs `read_inputs` checked, and return the summary. Ctrl-C ends the run early, still with a
    summary (the first Ctrl-C cancels the play loop, which the run takes as the end; a second one interrupts
    the shutdown too)."""
    return asyncio.run(Sandbox(options, inputs, display).run())
