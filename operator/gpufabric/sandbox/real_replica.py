"""`gpufabric sandbox --real-engine`: one replica of one workload served by a real engine, the rest simulated.

The workload (`real_workload`) is small on purpose: its model is the tiny random Llama `make tools` made, its
runtime vLLM on NVIDIA, one device, one replica. The operator places, renders, scrapes and reports it like any
other; the simulated kubelet runs its pod with the real `vllm serve` (the rendered command line, real_engine.py)
and marks it Ready once /health answers. `LoadClient` is its traffic: a few concurrent completions, counting
the tokens each response says were generated. `RealReplica` follows it through the run and, at the end, sets
the operator's measurement beside the clients' own count (`RealEngineReport`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from gpufabric.api import labels
from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.manifests import Fleet
from gpufabric.sandbox.emulator import JsonDict
from gpufabric.sandbox.real_engine import RealEngines
from gpufabric.sandbox.snapshot import RealEngineReport

NAMESPACE: Final = "agents"
NAME: Final = "tiny-real"
KEY: Final = f"{NAMESPACE}/{NAME}"
IMAGE: Final = "vllm/vllm-openai:v0.32.0"  # the release `make tools` builds: the operator renders its flags
MAX_NUM_SEQS: Final = 4
# As many clients as the engine runs sequences at once: it serves at full speed and queues nothing, so the
# operator sees a busy replica, not a saturated one (whose scrapes would teach placement a CPU's throughput).
CONCURRENCY: Final = MAX_NUM_SEQS
TOKENS_PER_REQUEST: Final = 32
PROMPT: Final = "An agent calls a tool"
REQUEST_TIMEOUT_SECONDS: Final = 60.0
ERROR_PAUSE_SECONDS: Final = 0.5  # after a failed request: an engine that is gone is not hammered
DRAIN_SECONDS: Final = 30.0  # at the end, requests in flight finish (a 32-token completion takes well under 1 s)
# vLLM loads the tiny model in 40-75 s on two cores: without --duration a run with the real engine lasts at
# least this long, so the replica serves for a minute or more after it is Ready.
MIN_DURATION_SECONDS: Final = 180.0
# The engine's CPU priority. On a small machine (2 cores here) vLLM's compile workers and its busy OpenMP thread
# would take the cycles of the one process that runs everything simulated — the API server, the kubelets, the
# simulated engines whose counters the scrapes time, and the operator. At nice 10 the engine still gets every
# cycle the simulation leaves (it needs about a fifth of one core).
NICENESS: Final = 10


def real_workload(model: Path, port: int) -> AgentWorkload:
    """The workload whose one replica runs the real engine: the tiny model, on one NVIDIA device at BF16 (what
    the CPU build runs), with a KV cache a CPU can hold, serving on `port` (chosen free at the start)."""
    runtime = {
        "engine": "vllm",
        "image": IMAGE,
        "port": port,
        "args": ["--kv-cache-memory-bytes", "1G", "--max-num-seqs", str(MAX_NUM_SEQS)],
    }
    return AgentWorkload.model_validate(
        {
            "apiVersion": "gpufabric.io/v1alpha1",
            "kind": "AgentWorkload",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {
                "model": {"name": str(model), "servedName": NAME, "parametersBillions": 0.1, "contextLength": 1024},
                "replicas": 1,
                "devicesPerReplica": 1,
                "precisions": ["BF16"],
                "runtimes": {"nvidia": runtime},
            },
        }
    )


class NicedEngines(RealEngines):
    """RealEngines whose engines run at NICENESS: set on the process just started, before vLLM starts its
    engine core and compile workers, which inherit it."""

    def start(self, pod: Any, workload: str, address: str) -> bool:
        new = pod.metadata.uid not in self.running
        started = super().start(pod, workload, address)
        engine = self.running.get(pod.metadata.uid)
        if started and new and engine is not None and engine.process is not None:
            with contextlib.suppress(OSError):  # already gone: nothing to lower
                os.setpriority(os.PRIO_PROCESS, engine.process.pid, NICENESS)
        return started


def with_workload(fleet: Fleet, workload: AgentWorkload) -> Fleet:
    """The fleet with `workload` added, or in place of the one of the same namespace and name."""
    kept = tuple(w for w in fleet.workloads if w.key != workload.key)
    return Fleet(fleet.nodes, (*kept, workload), fleet.skipped)


@dataclass
class LoadClient:
    """`concurrency` clients sending completions to one engine until stopped: every response's generated tokens,
    with the time (the run's clock) it arrived."""

    url: str  # http://address:port
    model: str  # the served name
    clock: Callable[[], float]
    concurrency: int = CONCURRENCY
    done: list[tuple[float, int]] = field(default_factory=list)
    errors: int = 0
    last_error: str | None = None
    started_at: float | None = None
    stopped_at: float | None = None  # when it stopped sending
    _session: aiohttp.ClientSession | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS))
        self.started_at = self.clock()
        self._tasks = [
            asyncio.create_task(self._loop(self._session), name=f"real-engine-client-{n}")
            for n in range(self.concurrency)
        ]

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        # ignore_eos: every completion is max_tokens long, so the load does not depend on what the random
        # model happens to say.
        body = {"model": self.model, "prompt": PROMPT, "max_tokens": TOKENS_PER_REQUEST, "ignore_eos": True}
        while not self._stopping.is_set():
            try:
                async with session.post(f"{self.url}/v1/completions", json=body) as response:
                    response.raise_for_status()
                    tokens = int((await response.json(content_type=None))["usage"]["completion_tokens"])
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as error:
                self.errors += 1
                self.last_error = f"{type(error).__name__}: {error}"[:200]
                await asyncio.sleep(ERROR_PAUSE_SECONDS)
                continue
            self.done.append((self.clock(), tokens))

    async def stop(self, timeout: float = DRAIN_SECONDS) -> None:
        """No new requests; those in flight finish (up to `timeout`, then they are cancelled), so every token the
        engine generated for the clients is in their count. Safe to call twice, or before `start`."""
        if self.stopped_at is None and self.started_at is not None:
            self.stopped_at = self.clock()
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def tokens(self, since: float = float("-inf"), until: float = float("inf")) -> int:
        return sum(n for at, n in self.done if since <= at < until)

    def rate(self, since: float, until: float) -> float | None:
        """Generated tokens/s over [since, until), from the clients' start at the earliest; None over no time."""
        since = max(since, self.started_at if self.started_at is not None else since)
        return self.tokens(since, until) / (until - since) if until > since else None


def replica_pod(pods: Sequence[JsonDict], key: str = KEY) -> JsonDict | None:
    """The rank-0 pod of the workload's replica that is not being deleted (the newest, after a move)."""
    found = [
        pod
        for pod in pods
        if f"{pod['metadata'].get('namespace')}/{(pod['metadata'].get('labels') or {}).get(labels.WORKLOAD)}" == key
        and (pod["metadata"].get("labels") or {}).get(labels.RANK) == "0"
        and not pod["metadata"].get("deletionTimestamp")
    ]
    return max(found, key=lambda p: str(p["metadata"].get("creationTimestamp", "")), default=None)


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class RealReplica:
    """The real engine's replica through the run: its pod's progress, the clients (started after the operator's
    first scrape of the engine, so that both count the same tokens), and each tokens/s the operator wrote."""

    def __init__(
        self,
        engines: RealEngines,
        *,
        clock: Callable[[], float],
        say: Callable[[str], None],
        counted: Callable[[], float | None],
        window: float,
        scrape_interval: float,
    ) -> None:
        self.engines = engines
        self.clock = clock
        self.say = say  # a line in the view's log
        self.counted = counted  # the operator's gpufabric_tokens_total{kind=generation} of the workload
        self.window = window
        self.scrape_interval = scrape_interval
        self.pod: JsonDict | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.exited: str | None = None
        self.log: Path | None = None  # the engine's output
        self.client: LoadClient | None = None
        self.before: float | None = None  # the operator's count when the clients started
        self.writes: list[tuple[float, float]] = []  # (seen at, status.tokensPerSecond.generation)

    @property
    def address(self) -> str | None:
        status = (self.pod or {}).get("status") or {}
        engine = self.engines.running.get((self.pod or {}).get("metadata", {}).get("uid", ""))
        return f"{status['podIP']}:{engine.port}" if status.get("podIP") and engine is not None else None

    @property
    def node(self) -> str | None:
        notes = ((self.pod or {}).get("metadata") or {}).get("annotations") or {}
        return notes.get(labels.COMPUTE_NODE)

    def tend(self, pods: Sequence[JsonDict], workload: JsonDict | None) -> None:
        """One tick: note the pod's progress and the operator's status; start the clients once it can count."""
        now = self.clock()
        pod = replica_pod(pods)
        if pod is not None and (pod.get("status") or {}).get("phase") == "Running":
            if self.pod is None or self.pod["metadata"]["uid"] != pod["metadata"]["uid"]:
                self.started_at, self.ready_at = now, None
                engine = self.engines.running.get(pod["metadata"]["uid"])
                self.log = engine.log if engine is not None else self.log
                where = f"; its log: {engine.log}" if engine is not None else ""
                self.say(f"the real engine starts: vllm serve for {KEY} on {self._node_of(pod)}{where}")
            self.pod = pod
            if self.ready_at is None and _ready(pod):
                self.ready_at = now
                self.say(f"the real engine answers /health {now - (self.started_at or now):.1f}s after it started")
            self._check_exit()
        tokens = ((workload or {}).get("status") or {}).get("tokensPerSecond") or {}
        value = tokens.get("generation")
        if value is not None and (not self.writes or self.writes[-1][1] != value):
            self.writes.append((now, float(value)))
        if self.client is None and self.ready_at is not None and self.address is not None:
            self._start_clients()

    @staticmethod
    def _node_of(pod: JsonDict) -> str:
        return str((pod["metadata"].get("annotations") or {}).get(labels.COMPUTE_NODE, "?"))

    def _check_exit(self) -> None:
        engine = self.engines.running.get((self.pod or {}).get("metadata", {}).get("uid", ""))
        if self.exited is None and engine is not None and engine.process is not None:
            code = engine.process.poll()
            if code is not None:
                last = engine.tail(1)
                self.exited = f"exited with code {code}" + (f": {last.strip()[:200]}" if last.strip() else "")
                self.say(f"warning: the real engine {self.exited} (its log: {engine.log})")

    def _start_clients(self) -> None:
        """Once the operator has scraped the engine (its count exists): tokens before its first sample are not
        its to count, so the clients start after it."""
        before = self.counted()
        if before is None:
            return
        self.before = before
        self.client = LoadClient(f"http://{self.address}", NAME, self.clock)
        self.client.start()
        self.say(f"the operator scraped the real engine: {CONCURRENCY} clients start sending completions")

    def demand(self) -> float:
        """What the clients got over the operator's window, for the view's DEMAND column: up to now, or to when
        they stopped (the summary's rows are made after the wait for the operator's last scrape)."""
        if self.client is None:
            return 0.0
        end = self.client.stopped_at if self.client.stopped_at is not None else self.clock()
        return self.client.rate(end - self.window, end) or 0.0

    def status_text(self) -> str:
        """Where the real engine is, for the view's header."""
        if self.exited is not None:
            return self.exited
        if self.pod is None or self.started_at is None:
            return "waiting for its replica to be placed"
        if self.ready_at is None:
            return f"loading the model ({self.clock() - self.started_at:.0f}s)"
        if self.client is None:
            return "Ready; waiting for the operator's first scrape"
        return f"Ready, {CONCURRENCY} clients: {self.demand():,.0f} tok/s counted"

    async def finish(self) -> None:
        """The clients stop (those in flight finish); then the run waits for a scrape that began after their
        last response, and the pass that publishes it, so the operator's count covers every token the clients
        counted. A change seen sooner may be a scrape taken while the last requests were still in flight."""
        if self.client is None:
            return
        await self.client.stop()
        await asyncio.sleep(2 * self.scrape_interval + 1)

    async def close(self) -> None:
        """On the way out, whatever happened: the clients stop (the engine itself stops with the kubelet)."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.stop(timeout=5)

    def report(self, phase: str, logs: Path) -> RealEngineReport:
        """What the summary says of it; `logs` is where the engines' logs go, named when its own is unknown."""
        client = self.client
        measured_at, measured = self._measurement()
        rate = None
        if client is not None and measured_at is not None:
            rate = client.rate(measured_at - self.window - self.scrape_interval, measured_at - self.scrape_interval)
        counted = self.counted()
        load = 0.0
        if client is not None and client.started_at is not None:
            load = (client.stopped_at if client.stopped_at is not None else self.clock()) - client.started_at
        return RealEngineReport(
            workload=KEY,
            phase=phase,
            log=str(self.log or logs),
            node=self.node,
            address=self.address,
            started_at=self.started_at,
            ready_at=self.ready_at,
            exited=self.exited,
            load_started_at=client.started_at if client else None,
            load_seconds=load,
            concurrency=client.concurrency if client else 0,
            requests=len(client.done) if client else 0,
            errors=client.errors if client else 0,
            last_error=client.last_error if client else None,
            client_tokens=client.tokens() if client else 0,
            operator_tokens=counted - self.before if counted is not None and self.before is not None else None,
            measured=measured,
            measured_at=measured_at,
            measured_settled=measured_at is not None and self._settled(measured_at),
            client_rate=rate,
        )

    def _settled(self, at: float) -> bool:
        """Whether a status written at `at` had a whole window of the clients' load behind it."""
        started = self.client.started_at if self.client is not None else None
        return started is not None and at - started >= self.window + self.scrape_interval

    def _measurement(self) -> tuple[float | None, float | None]:
        """The operator's tokens/s to show: the last it wrote while the clients ran with a whole window of their
        load behind it, else the last it wrote while they ran (its status moves only on a 10 % change or after a
        minute, so the last write can be a while ago)."""
        client = self.client
        if client is None or client.started_at is None:
            return None, None
        end = client.stopped_at if client.stopped_at is not None else self.clock()
        during = [(at, value) for at, value in self.writes if client.started_at < at <= end]
        full = [(at, value) for at, value in during if self._settled(at)]
        if not (full or during):
            return None, None
        at, value = (full or during)[-1]
        return at, value
