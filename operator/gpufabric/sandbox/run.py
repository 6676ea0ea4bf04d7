"""`gpufabric sandbox`: the real operator over a simulated fabric, for a while, shown live.

Order of work: every input is read and checked before anything starts (fleet, workloads, scenario and the
files it applies, the metrics port); then the in-process API server, the simulated kubelets (loopback pod
addresses) and engines, the objects, and the operator — `gpufabric.controller.run.Operator`, as
`gpufabric operator` runs it, in a thread with its own event loop. A loop of about twice a second plays the
scenario's events when they are due, sets every engine's rates from the traffic model, and shows a
snapshot. At the end (the duration, or Ctrl-C) everything stops in reverse order and the summary is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import re
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import kubernetes

from gpufabric.api import labels
from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.computenode import ComputeNode
from gpufabric.api.reasons import ConditionReason, EventReason
from gpufabric.controller.reconciler import LoopSettings
from gpufabric.controller.run import Operator, OperatorOptions
from gpufabric.controller.scraper import ScrapeSettings
from gpufabric.manifests import Fleet, ManifestError, load
from gpufabric.sandbox import scenario as scenarios
from gpufabric.sandbox.emulator import NODES, PODS, FabricEmulator, JsonDict
from gpufabric.sandbox.engines import Counters, Endpoint, EngineFarm
from gpufabric.sandbox.kubelet import SimulatedKubelet, node_ready
from gpufabric.sandbox.nodes import device_plugin_resources, node_labels
from gpufabric.sandbox.operator_thread import OperatorThread
from gpufabric.sandbox.snapshot import LogLine, NodeRow, Recovery, Scaling, Snapshot, Summary, WorkloadRow
from gpufabric.sandbox.traffic import DEFAULT_UTILISATION, Hardware, Surge, demand_at, serve
from gpufabric.sandbox.view import Display
from gpufabric.vendors import Precision

CN = "gpufabric.io/v1alpha1/computenodes"
AW = "gpufabric.io/v1alpha1/agentworkloads"
EVENTS = "v1/events"
NAMESPACES = "v1/namespaces"
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
    known_nodes = {n.name for n in fleet.nodes} | {n.name for f in applied.values() for n in f.nodes}
    known_workloads = {w.key for w in fleet.workloads} | {w.key for f in applied.values() for w in f.workloads}
    problems += scenarios.check_references(
        scenario, nodes=known_nodes, workloads=known_workloads, where=str(options.scenario)
    )
    duration = scenario.duration
    if options.metrics_port is not None and (busy := _port_in_use(options.metrics_port)):
        problems.append(f"--metrics-port {options.metrics_port}: {busy}")
    if problems:
        raise SandboxError(problems)
    return Inputs(fleet, scenario, applied, duration, tuple(notices))


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
class Books:
    """What the run noted for the summary."""

    recoveries: list[Replica] = field(default_factory=list)
    scalings: list[Scaling] = field(default_factory=list)
    log: list[LogLine] = field(default_factory=list)
    seen_events: set[str] = field(default_factory=set)


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
        self.api_url = ""
        self.api: FabricEmulator | None = None
        self.kubelet: SimulatedKubelet | None = None
        self.engines = EngineFarm()
        self.operator: OperatorThread | None = None
        self.next_event = 0
        self.added_nodes: dict[str, int] = defaultdict(int)
        self.interrupted = False
        self.unservable: set[str] = set()  # pods whose engine could not listen

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # --- the run ----------------------------------------------------------------------------------------------

    async def run(self) -> Summary:
        async with (
            FabricEmulator(name_seed=self.options.seed, request_log_limit=REQUEST_LOG) as api,
            kmock.Server(api) as server,
        ):
            self.api = api
            self.api_url = str(server.url).rstrip("/")
            self.kubelet = SimulatedKubelet(
                api,
                interval=0.2,
                ready_after=POD_READY_AFTER_SECONDS,
                terminate_after=POD_TERMINATE_AFTER_SECONDS,
                pod_network=POD_NETWORK,
            )
            self.kubelet.start()
            await self.engines.start()
            try:
                self.started = time.monotonic()
                await self._create_objects()
                if self.options.kubeconfig_out is not None:
                    write_kubeconfig(self.options.kubeconfig_out, self.api_url)
                self.operator = OperatorThread(self._operator())
                with self.display, _logged_to(self):
                    try:
                        await self._play()
                    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels the main task
                        self.interrupted = True
                        self.log_line("interrupted (Ctrl-C): stopping", "scenario")
                        self.display.show(self.snapshot())
                return self.summary()
            finally:
                if self.operator is not None:
                    await self.operator.finish(kill=False)
                await self.engines.close()
                await self.kubelet.stop()

    def _operator(self) -> Operator:
        configuration = kubernetes.client.Configuration(host=self.api_url)
        configuration.connection_pool_maxsize = 32
        api_client = kubernetes.client.ApiClient(configuration)
        url = self.api_url

        def login(**_: Any) -> Any:
            import kopf  # noqa: PLC0415 - only the operator thread needs it, and only here

            return kopf.ConnectionInfo(server=url, insecure=True, token="sandbox")

        options = OperatorOptions(
            metrics_port=self.options.metrics_port,
            node_grace_seconds=NODE_GRACE_SECONDS,
            operator_namespace=OPERATOR_NAMESPACE,
            scrape=ScrapeSettings(interval=SCRAPE_INTERVAL_SECONDS),
            tokens_window=TOKENS_WINDOW_SECONDS,
            autoscale_stabilisation=AUTOSCALE_STABILISATION_SECONDS,
            loop=LoopSettings(),
        )
        return Operator(options, api_client, login=login)

    async def _play(self) -> None:
        while self.elapsed < self.inputs.duration:
            if self.operator is not None and not self.operator.thread.is_alive():
                raise RuntimeError("the operator inside the sandbox stopped") from self.operator.error
            await self._due_events()
            await self._sync_engines()
            self._note_operator_events()
            self._note_recoveries()
            self.display.show(self.snapshot())
            await asyncio.sleep(TICK_SECONDS)

    # --- objects -----------------------------------------------------------------------------------------------

    async def _create_objects(self) -> None:
        api = self._api()
        namespaces = {OPERATOR_NAMESPACE} | {w.namespace for w in self._all_workloads()}
        for namespace in sorted(namespaces):
            await api.h_create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for node in self.inputs.fleet.nodes:
            await self._add_node(node)
        for workload in self.inputs.fleet.workloads:
            await self._add_workload(workload)

    def _all_workloads(self) -> Iterable[AgentWorkload]:
        yield from self.inputs.fleet.workloads
        for applied in self.inputs.applied.values():
            yield from applied.workloads

    async def _add_node(self, node: ComputeNode) -> None:
        assert self.kubelet is not None
        await self.kubelet.add_node(node.spec.node_name, device_plugin_resources(node), labels=node_labels(node))
        await self._api().h_create(
            CN, node.model_dump(mode="json", by_alias=True, exclude={"status"}, exclude_none=True)
        )

    async def _add_workload(self, workload: AgentWorkload) -> None:
        body = workload.model_dump(mode="json", by_alias=True, exclude={"status"}, exclude_none=True)
        await self._api().h_create(AW, body, namespace=workload.namespace)

    def _api(self) -> FabricEmulator:
        assert self.api is not None, "run() first"
        return self.api

    # --- the scenario ------------------------------------------------------------------------------------------

    async def _due_events(self) -> None:
        events = self.inputs.scenario.events
        while self.next_event < len(events) and events[self.next_event].at <= self.elapsed:
            index = self.next_event
            self.next_event += 1
            await self._play_event(index, events[index])

    async def _play_event(self, index: int, event: scenarios.Event) -> None:
        action = event.action
        api = self._api()
        assert self.kubelet is not None
        if isinstance(action, scenarios.Surge):
            start = self.elapsed
            self.surges[action.workload].append(Surge(start, start + action.for_seconds, action.factor))
            self.log_line(f"traffic x{action.factor:g} on {action.workload} for {action.for_seconds:g}s", "scenario")
        elif isinstance(action, scenarios.FailNode):
            await self._fail_node(action.node)
        elif isinstance(action, scenarios.RecoverNode):
            self.failed.discard(action.node)
            await self.kubelet.set_ready(action.node, True)
            self.log_line(f"node {action.node} is back (Ready)", "scenario")
        elif isinstance(action, scenarios.AddNodes):
            await self._add_like(action.like, action.count)
        elif isinstance(action, scenarios.Scale):
            namespace, name = action.workload.split("/", 1)
            await api.h_patch(AW, name, {"spec": {"replicas": action.replicas}}, namespace=namespace)
            self.log_line(f"kubectl scale {action.workload} --replicas={action.replicas}", "scenario")
        elif isinstance(action, scenarios.Apply):
            applied = self.inputs.applied[index]
            for node in applied.nodes:
                if api.get_object(CN, node.name) is None:
                    await self._add_node(node)
                else:  # as kubectl apply: the spec of one that exists is updated
                    await api.h_patch(CN, node.name, {"spec": node.spec.model_dump(mode="json", by_alias=True)})
            for workload in applied.workloads:
                if api.get_object(AW, workload.name, workload.namespace) is None:
                    await self._add_workload(workload)
                else:
                    spec = workload.spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
                    await api.h_patch(AW, workload.name, {"spec": spec}, namespace=workload.namespace)
            self.log_line(
                f"applied {action.file}: {len(applied.nodes)} nodes, {len(applied.workloads)} workloads", "scenario"
            )

    async def _fail_node(self, name: str) -> None:
        """The machine stops: its Node goes NotReady, its engines stop answering, and the replicas with a pod
        there are noted, with how many Ready replicas their workload had, to time how long until it has as
        many again without that node (the operator may give a moved replica a new index)."""
        assert self.kubelet is not None
        self.failed.add(name)
        await self.kubelet.set_ready(name, False)
        lost: set[tuple[str, int]] = set()
        for pod in self._api().live_objects(PODS):
            if (pod.get("spec") or {}).get("nodeName") == name and not pod["metadata"].get("deletionTimestamp"):
                lost.add(_replica_of(pod))
        ready = Counter(workload for workload, _, _ in self._ready_replicas())
        for workload, replica in sorted(lost):
            self.books.recoveries.append(Replica(workload, replica, name, self.elapsed, ready[workload]))
        self.log_line(f"node {name} failed (NotReady): {len(lost)} replicas lost", "scenario")

    async def _add_like(self, like: str, count: int) -> None:
        template = self._api().get_object(CN, like)
        assert template is not None, f"{like}: checked before the start"
        for _ in range(count):
            self.added_nodes[like] += 1
            name = f"{like}-new-{self.added_nodes[like]}"
            spec = {**template["spec"], "nodeName": name}
            node = ComputeNode.model_validate({"metadata": {"name": name}, "spec": spec})
            await self._add_node(node)
        self.log_line(f"{count} new nodes like {like} joined", "scenario")

    # --- engines -----------------------------------------------------------------------------------------------

    async def _sync_engines(self) -> None:
        api = self._api()
        nodes = {n["metadata"]["name"]: node_ready(n) for n in api.live_objects(NODES)}
        workloads = self._workloads()
        serving: dict[str, list[tuple[str, float]]] = defaultdict(list)  # workload -> (pod uid, capacity)
        wanted: dict[str, tuple[Endpoint, Counters]] = {}
        for pod in api.live_objects(PODS):
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
        self, pod: JsonDict, workloads: Mapping[str, JsonDict], nodes: Mapping[str, bool]
    ) -> tuple[str, str, Endpoint, Counters, float, bool] | None:
        """The engine a pod runs, if it runs one now: rank 0 of a replica, Running with an address, on a live
        node."""
        meta, status = pod["metadata"], pod.get("status") or {}
        pod_labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        key = f"{meta.get('namespace')}/{pod_labels.get(labels.WORKLOAD)}"
        body = workloads.get(key)
        if (
            body is None
            or pod_labels.get(labels.RANK) != "0"
            or status.get("phase") != "Running"
            or not status.get("podIP")
            or meta.get("deletionTimestamp")
            or not nodes.get((pod.get("spec") or {}).get("nodeName", ""), False)
        ):
            return None
        workload = AgentWorkload.model_validate(body)
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

    def _note_operator_events(self) -> None:
        for event in sorted(self._api().live_objects(EVENTS), key=_written_order):
            uid = event["metadata"]["uid"]
            if uid in self.books.seen_events:
                continue
            self.books.seen_events.add(uid)
            about = event.get("involvedObject") or {}
            name = "/".join(p for p in (about.get("namespace"), about.get("name")) if p)
            reason, message = event.get("reason", ""), event.get("message", "")
            self.log_line(f"{reason} {name}: {message}", "operator")
            if reason == EventReason.AUTOSCALED.value and (m := AUTOSCALED.match(message)):
                self.books.scalings.append(Scaling(round(self.elapsed, 1), name, int(m[1]), int(m[2]), m[3]))

    def _note_recoveries(self) -> None:
        pending = [r for r in self.books.recoveries if r.recovered_after is None]
        if not pending:
            return
        ready = self._ready_replicas()
        workloads = self._workloads()
        for lost in pending:
            elsewhere = sum(1 for workload, _, nodes in ready if workload == lost.workload and lost.node not in nodes)
            wanted = (workloads.get(lost.workload, {}).get("spec") or {}).get("replicas", 0)
            if elsewhere >= min(lost.ready_before, wanted):
                lost.recovered_after = round(self.elapsed - lost.failed_at, 1)

    def _ready_replicas(self) -> list[tuple[str, int, tuple[str, ...]]]:
        """(workload, replica, its nodes) of every replica whose rank-0 pod is Ready."""
        found = []
        for pod in self._api().live_objects(PODS):
            meta = pod["metadata"]
            if _pod_ready(pod) and (meta.get("labels") or {}).get(labels.RANK) == "0":
                workload, replica = _replica_of(pod)
                nodes = str((meta.get("annotations") or {}).get(labels.REPLICA_NODES, "")).split(",")
                found.append((workload, replica, tuple(nodes)))
        return found

    def _workloads(self) -> dict[str, JsonDict]:
        return {f"{w['metadata']['namespace']}/{w['metadata']['name']}": w for w in self._api().live_objects(AW)}

    # --- views -------------------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        api = self._api()
        ready = {n["metadata"]["name"]: node_ready(n) for n in api.live_objects(NODES)}
        nodes = tuple(
            NodeRow(
                name=cn["metadata"]["name"],
                vendor=cn["spec"]["vendor"],
                accelerator=cn["spec"]["accelerator"],
                domain=(cn["spec"].get("fabric") or {}).get("roceDomain"),
                devices=cn["spec"]["devices"],
                used=(cn.get("status") or {}).get("allocatedDevices", 0),
                ready=ready.get(cn["spec"]["nodeName"], False),
            )
            for cn in api.live_objects(CN)
        )
        return Snapshot(
            elapsed=self.elapsed,
            duration=self.inputs.duration,
            nodes=nodes,
            workloads=tuple(self._workload_row(w) for w in api.live_objects(AW)),
            log=tuple(self.books.log[-LOG_WINDOW:]),
        )

    def _workload_row(self, body: JsonDict) -> WorkloadRow:
        meta, spec, status = body["metadata"], body["spec"], body.get("status") or {}
        key = f"{meta['namespace']}/{meta['name']}"
        kinds = Counter(f"{p['vendor']}/{p['accelerator']}/{p['precision']}" for p in status.get("placements") or [])
        ready_condition: JsonDict = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        tokens = status.get("tokensPerSecond") or {}
        return WorkloadRow(
            namespace=meta["namespace"],
            name=meta["name"],
            replicas=spec.get("replicas", 1),
            ready=status.get("readyReplicas", 0),
            placements=tuple(f"{kind} x{count}" for kind, count in sorted(kinds.items())),
            tokens_per_second=tokens.get("generation"),
            target=(spec.get("throughput") or {}).get("targetTokensPerSecond"),
            demand=self._current_demand(key),
            phase=ready_condition.get("reason", ConditionReason.PENDING.value),
        )

    def _current_demand(self, key: str) -> float:
        baseline = self.baselines.get(key)
        return demand_at(self.elapsed, baseline, self.surges.get(key, [])) if baseline is not None else 0.0

    def summary(self) -> Summary:
        api = self._api()
        per_vendor: Counter[str] = Counter()  # Ready replicas: their rank-0 pods Ready, by the pod's vendor
        for pod in api.live_objects(PODS):
            meta, status = pod["metadata"], pod.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            if ready and (meta.get("labels") or {}).get(labels.RANK) == "0" and not meta.get("deletionTimestamp"):
                per_vendor[(meta.get("annotations") or {}).get(labels.VENDOR, "?")] += 1
        rows = tuple(self._workload_row(w) for w in api.live_objects(AW))
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
        )

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


def write_kubeconfig(path: Path, server: str) -> None:
    """A kubeconfig for kubectl against the sandbox's API (plain HTTP on loopback, any token)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: gpufabric-sandbox\n  cluster:\n    server: {server}\n"
        "users:\n- name: sandbox\n  user:\n    token: sandbox\n"
        "contexts:\n- name: gpufabric-sandbox\n  context:\n    cluster: gpufabric-sandbox\n    user: sandbox\n"
        "current-context: gpufabric-sandbox\n",
        encoding="utf-8",
    )


def run_sandbox(options: SandboxOptions, inputs: Inputs, display: Display) -> Summary:
    """Run on inputs `read_inputs` checked, and return the summary. Ctrl-C ends the run early, still with a
    summary (the first Ctrl-C cancels the play loop, which the run takes as the end; a second one interrupts
    the shutdown too)."""
    return asyncio.run(Sandbox(options, inputs, display).run())
