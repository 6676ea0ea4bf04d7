"""`gpufabric sandbox --real-engine`: one replica served by a real engine process, the rest simulated.

With a stand-in for `vllm serve` (a small HTTP server, `FAKE_VLLM`, in a tools directory of its own: quick, and
exact in what it counts), the simulated kubelet's part — the engine started for the workload's pod at the pod's
address, Ready only once /health answers, stopped with its node and with its pod — and a whole short run, whose
summary must find the operator's count equal to the clients'. Then one run with vLLM's CPU build itself (`make
tools`), long enough for the model to load: skipped, with the line saying why, where the tools are missing."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest

from gpufabric.sandbox import real_engine, real_replica
from gpufabric.sandbox.controlplane import free_port
from gpufabric.sandbox.emulator import FabricEmulator, JsonDict
from gpufabric.sandbox.kubelet import SimulatedKubelet
from gpufabric.sandbox.real_engine import EngineUnavailableError, RealEngines
from gpufabric.sandbox.run import SandboxOptions, read_inputs, run_sandbox
from gpufabric.sandbox.scenario import DEFAULT_SCENARIO
from gpufabric.sandbox.view import Display, summary_text

ROOT = Path(__file__).resolve().parents[2]
PODS = "v1/pods"
LOAD_SECONDS = 1.5  # the stand-in's "model load": /health answers after it

# `vllm serve MODEL --served-model-name NAME --host H --port P ...`, in the least that the sandbox reads of it:
# /health, vLLM's token counters on /metrics, and completions of max_tokens tokens, each counted.
FAKE_VLLM = """\
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
value = lambda flag: args[args.index(flag) + 1]
name, host, port = value("--served-model-name"), value("--host"), int(value("--port"))
time.sleep(float(os.environ.get("FAKE_VLLM_LOAD_SECONDS", "0")))
lock, generated = threading.Lock(), [0]

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            return self.answer(b"")
        if self.path == "/metrics":
            labels = '{model_name="%s"}' % name
            with lock:
                n = generated[0]
            page = "vllm:prompt_tokens_total%s %d\\nvllm:generation_tokens_total%s %d\\n" % (labels, 4 * n, labels, n)
            return self.answer((page + "vllm:num_requests_waiting%s 0\\n" % labels).encode())
        self.send_error(404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(0.02)
        with lock:
            generated[0] += body["max_tokens"]
        self.answer(json.dumps({"usage": {"completion_tokens": body["max_tokens"]}}).encode())

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass

print("fake vllm serving", name, "at", host, port, flush=True)
ThreadingHTTPServer((host, port), Handler).serve_forever()
"""


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tools directory as `make tools` leaves it, whose `vllm` is FAKE_VLLM."""
    tools = tmp_path / "vllm"
    (tools / "venv" / "bin").mkdir(parents=True)
    (tools / "tiny-llama").mkdir()
    executable = tools / "venv" / "bin" / "vllm"
    executable.write_text(f"#!{sys.executable}\n{FAKE_VLLM}")
    executable.chmod(0o755)
    (tools / "READY").write_text("fake\n")
    monkeypatch.setattr(real_engine, "TOOLS", tools)
    monkeypatch.setenv("FAKE_VLLM_LOAD_SECONDS", str(LOAD_SECONDS))
    return tools


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met in {timeout:g}s")
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie awaiting its parent's wait counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# --- the simulated kubelet with a real engine ----------------------------------------------------------------


@pytest.fixture
async def kubelet(fake_tools: Path, tmp_path: Path) -> AsyncIterator[SimulatedKubelet]:
    engines = RealEngines(frozenset({"agents/tiny-real"}), tmp_path / "logs", fake_tools / "venv")
    async with FabricEmulator() as emulator, kmock.Server(emulator):
        kubelet = SimulatedKubelet(
            emulator,
            interval=0.02,
            ready_after=0.05,
            terminate_after=0.05,
            real_engines=engines,
            pod_network="127.102.0.0/16",
        )
        async with kubelet:
            await emulator.h_create(
                "v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "agents"}}
            )
            await kubelet.add_node("gpu-0", {"nvidia.com/gpu": "8"})
            yield kubelet
            assert kubelet.errors == []
        assert engines.running == {}, "an engine outlived its kubelet"


def engine_pod(name: str, workload: str, port: int) -> JsonDict:
    """One of the operator's pods, as it renders a vLLM replica (the parts the kubelet reads)."""
    container = {
        "name": "server",
        "image": "vllm/vllm-openai:v0.32.0",
        "command": ["vllm", "serve"],
        "args": ["/models/tiny", "--served-model-name", workload, "--host", "0.0.0.0", "--port", str(port)],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
    }
    meta = {
        "name": name,
        "namespace": "agents",
        "labels": {"gpufabric.io/workload": workload, "gpufabric.io/rank": "0"},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": "gpu-0", "containers": [container]},
    }


def pod_status(kubelet: SimulatedKubelet, name: str) -> dict[str, Any]:
    found = kubelet.emulator.get_object(PODS, name, "agents")
    return {} if found is None else dict(found.get("status") or {})


def ready(kubelet: SimulatedKubelet, name: str) -> bool:
    conditions = pod_status(kubelet, name).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def test_the_kubelet_runs_the_real_engine_ready_on_health_and_stops_it_with_its_node_and_pod(
    kubelet: SimulatedKubelet,
) -> None:
    engines = kubelet.real_engines
    assert engines is not None
    port = free_port()
    real = await kubelet.emulator.h_create(PODS, engine_pod("tiny-real-0-0", "tiny-real", port))
    await kubelet.emulator.h_create(PODS, engine_pod("other-0-0", "other", free_port()))
    uid = real["metadata"]["uid"]
    await eventually(lambda: pod_status(kubelet, "tiny-real-0-0").get("phase") == "Running", what="Running")
    started = time.monotonic()
    await eventually(lambda: ready(kubelet, "other-0-0"), what="the simulated pod Ready")
    assert not ready(kubelet, "tiny-real-0-0"), "Ready before its engine answered"
    assert list(engines.running) == [uid]  # the other workload's pod is simulated
    engine = engines.running[uid]
    address = pod_status(kubelet, "tiny-real-0-0")["podIP"]
    assert address.startswith("127.102.")
    # The rendered line; only the executable resolved and the host the pod's own address.
    assert engine.command[1:] == [
        "serve",
        "/models/tiny",
        "--served-model-name",
        "tiny-real",
        "--host",
        address,
        "--port",
        str(port),
    ]
    await eventually(lambda: ready(kubelet, "tiny-real-0-0"), what="Ready once /health answers")
    assert time.monotonic() - started >= LOAD_SECONDS - 0.5
    assert engines.healthy(uid)

    # Its node fails: the machine, and the engine with it, are gone; back, the engine starts again.
    first = engine.process
    assert first is not None
    await kubelet.set_ready("gpu-0", False)
    await eventually(lambda: not alive(first.pid), what="the engine stopped with its node")
    await kubelet.set_ready("gpu-0", True)
    await eventually(lambda: uid in engines.running and engines.running[uid].process is not first, what="restarted")
    await eventually(lambda: not ready(kubelet, "tiny-real-0-0"), what="not Ready while it loads again")
    await eventually(lambda: ready(kubelet, "tiny-real-0-0"), what="Ready again")

    second = engines.running[uid].process
    assert second is not None
    await kubelet.emulator.h_delete(PODS, "tiny-real-0-0", namespace="agents")
    await eventually(lambda: kubelet.emulator.get_object(PODS, "tiny-real-0-0", "agents") is None, what="deleted")
    await eventually(lambda: not alive(second.pid), what="the engine stopped with its pod")
    assert engines.running == {}


# --- a whole run ---------------------------------------------------------------------------------------------


def options(**changes: object) -> SandboxOptions:
    base = SandboxOptions(
        fleet=[ROOT / "examples" / "fleet"], workloads=[ROOT / "examples" / "workloads"], scenario=DEFAULT_SCENARIO
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def engine_processes(port: int) -> list[int]:
    """Processes whose command line serves the real engine's port: none may be left after a run."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            words = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in words and str(port).encode() in words and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def test_a_short_run_with_a_stand_in_engine_counts_what_the_clients_counted(fake_tools: Path) -> None:
    """The wiring, quickly: placed, Ready on /health, scraped, loaded; the operator's count is the clients' to the
    token (the stand-in counts exactly), and its tokens/s the clients' over its window."""
    settings = options(real_engine=True, duration=30.0)
    inputs = read_inputs(settings)
    shown = io.StringIO()
    summary = run_sandbox(settings, inputs, Display(shown))
    real = summary.real_engine
    assert real is not None
    text = summary_text(summary)
    print(text)
    assert real.ready_at is not None, text
    assert real.address is not None
    assert engine_processes(int(real.address.rsplit(":", 1)[1])) == []
    assert real.errors == 0, real.last_error
    assert real.client_tokens > 0
    assert real.client_tokens == real.requests * real_replica.TOKENS_PER_REQUEST
    assert real.operator_tokens == real.client_tokens, text
    assert real.measured is not None, text
    assert real.client_rate is not None, text
    # The sandbox sees a status write up to a tick after it, so the clients' window is placed only roughly on the
    # operator's: close when a whole window of load lay behind the write, rougher when its window began before.
    assert real.measured == pytest.approx(real.client_rate, rel=0.1 if real.measured_settled else 0.25), text
    assert "agents/tiny-real REAL" in shown.getvalue()
    assert "real      the real engine answers /health" in shown.getvalue()
    assert "real      the operator scraped the real engine: 4 clients start" in shown.getvalue()
    assert "REAL ENGINE" in text


def processes_running(executable: Path) -> list[int]:
    """Processes started from `executable` (the stand-in's script: its interpreter's argv[1])."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            words = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(executable).encode() in words and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def test_ctrl_c_while_the_engine_loads_stops_it_and_the_summary_says_it_was_not_ready(
    fake_tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_LOAD_SECONDS", "120")  # still loading when the user gives up
    script = (
        "import sys; from pathlib import Path; from gpufabric import cli; from gpufabric.sandbox import real_engine; "
        "real_engine.TOOLS = Path(sys.argv[1]); sys.exit(cli.main(['sandbox', '--real-engine', '--duration', '90']))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(fake_tools)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if "real      the real engine starts" in line:
                break
        executable = fake_tools / "venv" / "bin" / "vllm"
        deadline = time.monotonic() + 10
        while not processes_running(executable) and time.monotonic() < deadline:
            time.sleep(0.05)
        (engine,) = processes_running(executable)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    assert "interrupted (Ctrl-C)" in out
    assert "NOT READY when the run ended, still loading the model" in out
    assert not alive(engine), "the engine outlived the sandbox"


# --- the real vLLM -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_with_the_real_vllm_engine_measures_it_as_its_clients_count() -> None:
    """vLLM's CPU build with the tiny model, as `gpufabric sandbox --real-engine` runs it (its default length,
    for the model's 40-75 s load): Ready, loaded by four clients, the operator's count within 1 % of theirs and
    its tokens/s within 10 % of their rate over its window; nothing left running after."""
    try:
        real_engine.tools()
    except EngineUnavailableError as error:
        pytest.skip(str(error))
    settings = options(real_engine=True)
    inputs = read_inputs(settings)
    assert inputs.duration == real_replica.MIN_DURATION_SECONDS
    shown = io.StringIO()
    summary = run_sandbox(settings, inputs, Display(shown))
    real = summary.real_engine
    assert real is not None
    text = summary_text(summary)
    print(text)
    assert real.ready_at is not None, text
    assert real.address is not None
    assert engine_processes(int(real.address.rsplit(":", 1)[1])) == [], "vLLM left running"
    assert real.errors == 0, real.last_error
    assert real.operator_tokens is not None, text
    assert real.client_tokens > 10_000, text
    assert real.operator_tokens == pytest.approx(real.client_tokens, rel=0.01), text
    assert real.measured is not None, text
    assert real.client_rate is not None, text
    # The sandbox sees a status write up to a tick after it, so the clients' window is placed only roughly on the
    # operator's: close when a whole window of load lay behind the write, rougher when its window began before.
    assert real.measured == pytest.approx(real.client_rate, rel=0.1 if real.measured_settled else 0.25), text
    assert "agents/tiny-real REAL" in shown.getvalue()
    # The simulation around it still holds: every other workload placed and Ready.
    others = [row for row in summary.workloads if not row.real]
    assert others, text
    assert all(row.ready == row.replicas for row in others), text
    assert Path(real.log).is_file()
