"""A real engine on the real control plane: an AgentWorkload whose model is the tiny generated Llama and whose
runtime is `engine: vllm` is placed by the operator (`gpufabric operator`, as the chart's ServiceAccount);
the stand-in kubelet runs its pod with the real `vllm serve` (vLLM's CPU build from `make tools`) — exactly
the command line the operator rendered, the executable resolved and the host set to the pod's address —
and a client sends completions. What the operator measures must be what the client counted:
`gpufabric_tokens_total` and `status.tokensPerSecond` within 3 %; with more clients than `--max-num-seqs`
the engine's queue gauge is read and the replica counts as saturated (learned throughput). Skipped, with the
line saying why, where `make tools` could not make the engine."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpufabric.sandbox.controlplane import ControlPlane, free_port
from gpufabric.sandbox.real_engine import EngineUnavailableError, RealEngines, tiny_model, tools
from gpufabric.sandbox.standin_kubelet import NODE_ALLOCATABLE
from gpufabric.throughput import exposition
from support.realcluster import GROUP, VERSION, OperatorProcess, Reader, pod_is_ready, stand_in_kubelet, wait_for

NS = "real-engine"
NODE = "vllm-cpu-0"
WORKLOAD = "tiny"
SCRAPE, WINDOW = 2.0, 20.0  # --scrape-interval, --tokens-window
MAX_NUM_SEQS = 4
TOKENS_PER_REQUEST = 32


@dataclass
class Engine:
    plane: ControlPlane
    reader: Reader
    engines: RealEngines
    operator: OperatorProcess
    metrics_port: int
    port: int
    pod: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.pod.status.pod_ip}:{self.port}"


@dataclass
class Client:
    """Completions from `threads` threads until stopped: every response's generated tokens, with its time."""

    url: str
    threads: int
    done: list[tuple[float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _loop(self) -> None:
        body = {"model": WORKLOAD, "prompt": "An agent calls a tool", "max_tokens": TOKENS_PER_REQUEST}
        data = json.dumps(body | {"ignore_eos": True}).encode()
        while not self.stopping.is_set():
            request = urllib.request.Request(f"{self.url}/v1/completions", data, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    tokens = int(json.loads(response.read())["usage"]["completion_tokens"])
            except (OSError, ValueError, KeyError) as error:
                self.errors.append(repr(error))
                continue
            with self._lock:
                self.done.append((time.monotonic(), tokens))

    def run(self, seconds: float) -> None:
        """For `seconds`, or until `stopping` is set."""
        workers = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.threads)]
        for worker in workers:
            worker.start()
        self.stopping.wait(seconds)
        self.stopping.set()
        for worker in workers:
            worker.join(timeout=90)

    def tokens(self, since: float = 0.0, until: float = float("inf")) -> int:
        with self._lock:
            return sum(n for at, n in self.done if since <= at < until)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
        return text


def generation_total(engine: Engine) -> float | None:
    """The operator's gpufabric_tokens_total{kind="generation"} for the workload; None before its first scrape
    of the engine (tokens before it are not the operator's to count: its rates start at its first sample)."""
    page = get(f"http://127.0.0.1:{engine.metrics_port}/metrics")
    found = [
        sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == "gpufabric_tokens_total"
        and sample.labels.get("workload") == WORKLOAD
        and sample.labels.get("kind") == "generation"
    ]
    return sum(found) if found else None


def status_tokens(engine: Engine) -> float | None:
    status = engine.reader.workload(NS, WORKLOAD).get("status") or {}
    value = (status.get("tokensPerSecond") or {}).get("generation")
    return float(value) if value is not None else None


@pytest.fixture(scope="module")
def engine(plane: ControlPlane, reader: Reader, operator_kubeconfig: Path) -> Iterator[Engine]:
    try:
        model = tiny_model()
        engines = RealEngines(frozenset({f"{NS}/{WORKLOAD}"}), plane.directory / "engines", tools() / "venv")
    except EngineUnavailableError as error:
        pytest.skip(str(error))
    metrics_port, port = free_port(), free_port()
    operator = OperatorProcess(
        [
            *("--kubeconfig", str(operator_kubeconfig), "--no-leader-election", "--metrics-port", str(metrics_port)),
            *("--scrape-interval", str(SCRAPE), "--tokens-window", str(WINDOW)),
        ],
        plane.directory / "operator-real-engine.log",
    )
    with stand_in_kubelet(plane, real_engines=engines) as kubelet:
        kubelet.add_node(NODE, {**NODE_ALLOCATABLE, "nvidia.com/gpu": "1"})
        spec = {"nodeName": NODE, "vendor": "nvidia", "accelerator": "H100-SXM5-80GB", "devices": 1}
        meta = {"name": NODE, "labels": {"real-engine": "yes"}}
        node = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ComputeNode", "metadata": meta, "spec": spec}
        runtime = {
            "engine": "vllm",
            "image": "vllm/vllm-openai:v0.32.0",
            "port": port,
            "args": ["--kv-cache-memory-bytes", "1G", "--max-num-seqs", str(MAX_NUM_SEQS)],
        }
        workload = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AgentWorkload",
            "metadata": {"name": WORKLOAD, "namespace": NS},
            "spec": {
                "model": {"name": str(model), "servedName": WORKLOAD, "parametersBillions": 0.1, "contextLength": 1024},
                "replicas": 1,
                "devicesPerReplica": 1,
                "precisions": ["BF16"],
                "runtimes": {"nvidia": runtime},
                "placement": {"nodeSelector": {"matchLabels": {"real-engine": "yes"}}},
            },
        }
        path = plane.directory / "real-engine.json"
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [namespace, node, workload]}))
        the_engine = Engine(plane, reader, engines, operator.start(), metrics_port, port)
        try:
            plane.kubectl("apply", "--server-side", "-f", str(path))
            yield the_engine
        finally:
            operator.stop()
            plane.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=60s", check=False)
            plane.kubectl("delete", "computenode", NODE, "--ignore-not-found", check=False)
            engines.stop_all()
    plane.kubectl("delete", "node", NODE, "--ignore-not-found", check=False)


def test_the_pod_runs_the_real_engine_with_the_rendered_command_line(engine: Engine, report: Any) -> None:
    started = time.monotonic()

    def ready() -> Any:
        pods = engine.reader.pods(NS, f"gpufabric.io/workload={WORKLOAD}")
        return next((p for p in pods if pod_is_ready(p)), None)

    try:
        engine.pod, _ = wait_for("the real engine's pod Ready (/health answers)", ready, 300)
    except AssertionError:
        tails = [e.tail() for e in engine.engines.running.values()]
        raise AssertionError(f"engine log: {tails}") from None
    report("real vLLM (CPU, tiny model): workload applied -> pod Ready", time.monotonic() - started)
    (running,) = engine.engines.running.values()
    container = engine.pod.spec.containers[0]
    rendered = [*container.command, *container.args]
    print("the pod's command line:", " ".join(rendered))
    print("what ran:              ", " ".join(running.command))
    # Exactly the rendered line: only the executable resolved and the host set to the pod's address.
    assert running.command[1:] == [engine.pod.status.pod_ip if w == "0.0.0.0" else w for w in rendered[1:]]
    assert running.command[0].endswith("/venv/bin/vllm")
    assert rendered[:2] == ["vllm", "serve"]
    assert "--kv-cache-memory-bytes" in rendered


def test_the_operator_counts_the_tokens_the_client_counted(engine: Engine, report: Any) -> None:
    """The counter: every token, within 3 %. The rate: status.tokensPerSecond is written when it moves by more
    than 10 % or is a minute old (the write economy of a large fleet), so the figure compared is one written
    while a whole window of the client's steady load lay behind it — against the client's own rate over that
    window."""
    ((before,), _) = wait_for(
        "the operator's first scrape of the engine",
        lambda: (total,) if (total := generation_total(engine)) is not None else None,
        30,
    )
    client = Client(engine.url, threads=MAX_NUM_SEQS)
    writes: list[tuple[float, float]] = []  # (when the status changed, to what)
    start = time.monotonic()

    def watch_status() -> None:
        last = status_tokens(engine)
        while not client.stopping.is_set():
            value = status_tokens(engine)
            if value != last and value is not None:
                writes.append((time.monotonic(), value))
                last = value
            if writes and writes[-1][0] - start > WINDOW + 2 * SCRAPE:
                client.stopping.set()  # written with a full window of load behind it
            time.sleep(0.5)

    watcher = threading.Thread(target=watch_status)
    watcher.start()
    client.run(WINDOW + 90)
    watcher.join()
    assert client.errors == [], client.errors[:3]
    counted = client.tokens()
    time.sleep(3 * SCRAPE)  # the operator's counter catches up at its next scrapes
    measured = (generation_total(engine) or 0) - before
    report("real vLLM: generated tokens the client counted", counted, "tok")
    report("real vLLM: gpufabric_tokens_total{kind=generation} grew by", measured, "tok")
    assert counted > 0
    assert abs(measured - counted) <= 0.03 * counted, (measured, counted)
    written_at, written = writes[-1]
    assert written_at - start > WINDOW + 2 * SCRAPE, f"no status write with a full window behind it: {writes}"
    # The operator's rate is over its scrapes in the window before its last scrape, written a pass later: a
    # span of WINDOW - SCRAPE to WINDOW seconds ending within a scrape interval (and a pass) of the write. The
    # client's rate over every such span bounds what the status may say.
    lowest, highest = client_rates(client, written_at)
    report("real vLLM: client's generation tokens/s over the operator's window (lowest)", lowest, "tok/s")
    report("real vLLM: client's generation tokens/s over the operator's window (highest)", highest, "tok/s")
    report("real vLLM: status.tokensPerSecond.generation written then", written, "tok/s")
    assert 0.97 * lowest <= written <= 1.03 * highest, (written, lowest, highest, writes)


def client_rates(client: Client, written_at: float) -> tuple[float, float]:
    """The client's rate over every span the operator's window can have covered when it wrote at `written_at`."""
    rates = []
    for end_step in range(int((2 * SCRAPE + 1) / 0.25) + 1):
        end = written_at - end_step * 0.25
        for length_step in range(int(SCRAPE / 0.5) + 1):
            length = WINDOW - length_step * 0.5
            rates.append(client.tokens(end - length, end) / length)
    return min(rates), max(rates)


def test_a_queue_makes_the_replica_saturated_and_learned(engine: Engine, report: Any) -> None:
    """More clients than --max-num-seqs: vLLM queues the rest (vllm:num_requests_waiting); saturated scrapes
    teach placement what the accelerator serves (gpufabric_learned_tokens_per_device_second)."""
    client = Client(engine.url, threads=MAX_NUM_SEQS * 4)
    waiting: list[float] = []

    def learned() -> float | None:
        page = get(f"{engine.url}/metrics")
        reading = exposition.read(
            page, "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_waiting"
        )
        if isinstance(reading, exposition.Reading) and reading.waiting is not None:
            waiting.append(reading.waiting)
        operator = get(f"http://127.0.0.1:{engine.metrics_port}/metrics")
        return next(
            (
                sample.value
                for family in text_string_to_metric_families(operator)
                for sample in family.samples
                if sample.name == "gpufabric_learned_tokens_per_device_second"
                and sample.labels.get("accelerator") == "H100-SXM5-80GB"
            ),
            None,
        )

    worker = threading.Thread(target=client.run, args=(300.0,))  # until learned (stopping), at most 300 s
    started = time.monotonic()
    worker.start()
    try:
        value, _ = wait_for("a learned figure for the tiny model on H100", learned, 280, interval=1.0)
    except AssertionError as error:
        client.stopping.set()
        worker.join()
        seen = f"queue seen {waiting[-5:]}, client {client.tokens()} tok, {client.errors[:2]}"
        raise AssertionError(f"{error}; {seen}") from None
    finally:
        client.stopping.set()
        worker.join()
    report(
        "real vLLM: queue seen -> learned tokens/s per device (after 10 saturated scrapes)", time.monotonic() - started
    )
    report("real vLLM: the engine's queue (vllm:num_requests_waiting), highest seen", max(waiting), "req")
    report("real vLLM: learned generation tokens/s per device (size class's largest model)", value, "tok/s")
    assert max(waiting) > 0


def test_our_reading_of_the_real_page_is_prometheus_clients(engine: Engine) -> None:
    """The counters and the gauge the operator reads, and the latency histograms (time to first token,
    inter-token), as prometheus-client reads the same real page (their percentiles are the goodput work's)."""
    page = get(f"{engine.url}/metrics")
    families = {family.name: family for family in text_string_to_metric_families(page)}

    def total(name: str, suffix: str = "") -> float:
        return sum(s.value for s in families[name].samples if s.name == name + suffix)

    ours = exposition.read(
        page, "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_waiting"
    )
    assert isinstance(ours, exposition.Reading), ours
    assert sum(ours.prompt.values()) == total("vllm:prompt_tokens", "_total")
    assert sum(ours.generation.values()) == total("vllm:generation_tokens", "_total")
    assert ours.waiting == total("vllm:num_requests_waiting")
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds"):
        assert families[histogram].type == "histogram"
        theirs: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
        for sample in families[histogram].samples:
            if sample.name == histogram + "_bucket":
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                theirs.setdefault(tuple(sorted(labels.items())), {})[float(sample.labels["le"])] = sample.value
        read = exposition.read_histogram(page, histogram)
        assert isinstance(read, exposition.Histogram), read
        assert read.buckets == theirs
        assert sum(read.count.values()) == total(histogram, "_count") > 0
        assert sum(read.total.values()) == pytest.approx(total(histogram, "_sum"))
    print(f"real vLLM page: {len(page)} bytes, {len(families)} families")
