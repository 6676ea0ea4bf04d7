"""`gpufabric sandbox --real-engine`, the parts that need no engine: the flag and its checks before the start
(the tools, an NVIDIA node, the longer default run), the workload it adds, and how the view and the summary mark
and report the real replica."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from gpufabric import cli
from gpufabric.sandbox import real_engine, real_replica
from gpufabric.sandbox.run import SandboxError, SandboxOptions, read_inputs
from gpufabric.sandbox.scenario import DEFAULT_SCENARIO
from gpufabric.sandbox.snapshot import LogLine, NodeRow, RealEngineReport, Snapshot, Summary, WorkloadRow
from gpufabric.sandbox.view import live_renderable, plain_lines, real_engine_lines, summary_text
from gpufabric.vendors import Precision, Vendor

ROOT = Path(__file__).resolve().parents[2]
FLEET = [ROOT / "examples" / "fleet"]
WORKLOADS = [ROOT / "examples" / "workloads"]


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tools that say they are made (nothing in them runs in these tests)."""
    made = tmp_path / "vllm"
    made.mkdir()
    (made / "READY").write_text("0.32.0\n")
    monkeypatch.setattr(real_engine, "TOOLS", made)
    return made


def options(**changes: object) -> SandboxOptions:
    base = SandboxOptions(fleet=FLEET, workloads=WORKLOADS, scenario=DEFAULT_SCENARIO)
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.chdir(ROOT)  # the default fleet and workloads are relative to it
    try:
        code = cli.main(args)
    except SystemExit as exit_:  # argparse: --help
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


# --- the flag ------------------------------------------------------------------------------------------------


def test_the_flag_is_off_by_default_and_in_the_help(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["sandbox"]).real_engine is False
    assert parser.parse_args(["sandbox", "--real-engine"]).real_engine is True
    code, out, _ = run_cli(["sandbox", "--help"], monkeypatch)
    assert code == 0
    flat = " ".join(out.split())
    assert "--real-engine also run one workload (agents/tiny-real)" in flat
    assert "lasts at least 180 s" in flat
    assert "at least 180 with --real-engine" in flat  # under --duration


def test_without_the_tools_it_exits_2_with_the_one_line_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "vllm"
    monkeypatch.setattr(real_engine, "TOOLS", missing)
    code, out, err = run_cli(["sandbox", "--real-engine"], monkeypatch)
    assert code == 2
    assert out == ""
    with pytest.raises(real_engine.EngineUnavailableError) as why:
        real_engine.tools(missing)
    assert err == f"gpufabric sandbox: --real-engine: {why.value}\n"
    assert err == (
        f"gpufabric sandbox: --real-engine: the real vLLM engine is not available (not made): `make tools` makes "
        f"{missing}\n"
    )


def test_tools_that_could_not_be_made_say_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = tmp_path / "vllm"
    failed.mkdir()
    (failed / "UNAVAILABLE").write_text("no wheel of torch for this CPU\n")
    monkeypatch.setattr(real_engine, "TOOLS", failed)
    with pytest.raises(SandboxError) as refused:
        read_inputs(options(real_engine=True))
    assert refused.value.problems == [
        "--real-engine: the real vLLM engine is not available (no wheel of torch for this CPU): `make tools` makes "
        f"{failed}"
    ]


def test_the_flag_adds_the_workload_and_lengthens_the_run_unless_a_duration_is_given(tools: Path) -> None:
    plain = read_inputs(options())
    assert real_replica.KEY not in {w.key for w in plain.fleet.workloads}
    assert plain.duration == 75
    assert plain.notices == ()

    real = read_inputs(options(real_engine=True))
    assert [w.key for w in real.fleet.workloads] == [*(w.key for w in plain.fleet.workloads), real_replica.KEY]
    assert real.fleet.nodes == plain.fleet.nodes
    assert real.duration == real_replica.MIN_DURATION_SECONDS == 180
    assert real.scenario.events == plain.scenario.events  # the scenario's own, at their times
    assert real.notices == (
        "--real-engine: running for 180s, not the scenario's 75s, as vLLM takes 40-75 s to load the model on two "
        "cores (--duration sets another length)",
    )
    short = read_inputs(options(real_engine=True, duration=30.0))
    assert short.duration == 30
    assert not any(notice.startswith("--real-engine") for notice in short.notices)


def test_a_fleet_without_nvidia_nodes_is_refused(tools: Path, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "apiVersion: gpufabric.io/v1alpha1\nkind: ComputeNode\nmetadata: {name: npu-1}\n"
        "spec: {nodeName: npu-1, vendor: ascend, accelerator: Ascend-910B3, devices: 8}\n"
    )
    scenario = tmp_path / "quiet.yaml"
    scenario.write_text("duration: 30\nevents: []\n")  # the default one names the examples' nodes
    with pytest.raises(SandboxError) as refused:
        read_inputs(options(real_engine=True, fleet=[fleet], scenario=scenario))
    assert refused.value.problems == [
        "--real-engine: no NVIDIA ComputeNode in the fleet for the real engine's replica (vLLM)"
    ]


def test_each_run_serves_on_a_port_free_at_its_start(tools: Path) -> None:
    ports = {
        read_inputs(options(real_engine=True)).fleet.workloads[-1].spec.runtimes[Vendor.NVIDIA].port for _ in range(3)
    }
    assert len(ports) >= 2, ports  # chosen by the kernel each time, not a fixed number (two may meet by chance)
    assert all(1024 < port < 65536 for port in ports)


# --- the workload --------------------------------------------------------------------------------------------


def test_the_workload_is_the_tiny_model_on_one_nvidia_device() -> None:
    model = Path("/opt/tools/vllm/tiny-llama")
    workload = real_replica.real_workload(model, 40123)
    assert (workload.namespace, workload.name) == ("agents", "tiny-real")
    spec = workload.spec
    assert spec.model.name == str(model)
    assert spec.model.served_name == "tiny-real"
    assert (spec.model.parameters_billions, spec.model.context_length) == (0.1, 1024)
    assert (spec.replicas, spec.devices_per_replica) == (1, 1)
    assert list(spec.precisions) == [Precision.BF16]
    assert spec.throughput is None  # no target: the autoscaler leaves it at one replica
    (vendor,) = spec.runtimes
    runtime = spec.runtimes[vendor]
    assert vendor == Vendor.NVIDIA
    assert (runtime.engine.value, runtime.image, runtime.port) == ("vllm", "vllm/vllm-openai:v0.32.0", 40123)
    assert list(runtime.args) == ["--kv-cache-memory-bytes", "1G", "--max-num-seqs", "4"]
    assert spec.metrics_for(Vendor.NVIDIA).port == 40123  # scraped where it serves


def test_the_workload_takes_the_place_of_one_of_the_same_name() -> None:
    fleet = read_inputs(options()).fleet
    first = real_replica.with_workload(fleet, real_replica.real_workload(Path("/a"), 1111))
    again = real_replica.with_workload(first, real_replica.real_workload(Path("/b"), 2222))
    assert [w.key for w in again.workloads] == [w.key for w in first.workloads]
    assert again.workloads[-1].spec.model.name == "/b"


# --- the view ------------------------------------------------------------------------------------------------

REAL_ROW = WorkloadRow(
    "agents", "tiny-real", 1, 1, ("nvidia/B200/BF16 x1",), 803.0, None, 826.0, "AllReplicasReady", real=True
)
OTHER_ROW = WorkloadRow(
    "agents", "support-agent", 3, 3, ("nvidia/B200/FP8 x3",), 11_000.0, 20_000.0, 11_500.0, "AllReplicasReady"
)
SNAPSHOT = Snapshot(
    elapsed=60.0,
    duration=180.0,
    nodes=(
        NodeRow("gpu-a-b200-01", "nvidia", "B200", "a", 8, 4, True, real=1),
        NodeRow("gpu-a-b200-02", "nvidia", "B200", "a", 8, 3, True),
    ),
    workloads=(OTHER_ROW, REAL_ROW),
    log=(LogLine(56.0, "the operator scraped the real engine: 4 clients start sending completions", "real"),),
    real_engine="Ready, 4 clients: 826 tok/s counted",
)


def test_the_live_view_marks_the_real_replica_its_device_and_its_state() -> None:
    console = Console(width=100, record=True, color_system=None)
    console.print(live_renderable(SNAPSHOT))
    text = console.export_text()
    assert "◆ REAL engine (vLLM CPU, tiny model): Ready, 4 clients: 826 tok/s counted" in text
    assert "devices used · ◆ REAL ─" in text  # the nodes panel's legend
    assert "gpu-a-b200-01 ◆■■■□□□□ 4/8" in text  # its one device in place of one of the four in use
    assert "gpu-a-b200-02 ■■■□□□□□ 3/8" in text
    assert re.search(r"agents/tiny-real REAL +1/1 .* 803 +826 ", text), text
    assert not re.search(r"agents/support-agent REAL", text)


def test_the_plain_lines_mark_the_real_replica() -> None:
    lines = plain_lines(SNAPSHOT)
    assert lines[0].endswith(", REAL engine: Ready, 4 clients: 826 tok/s counted")
    assert any(line.startswith("  agents/tiny-real REAL  1/1  803 tok/s") for line in lines), lines
    assert lines[-1] == "[ 56.0s] real      the operator scraped the real engine: 4 clients start sending completions"


def test_without_a_real_engine_nothing_is_marked() -> None:
    plain = Snapshot(60.0, 75.0, SNAPSHOT.nodes[1:], (OTHER_ROW,), ())
    assert "REAL" not in "\n".join(plain_lines(plain))
    console = Console(width=100, record=True, color_system=None)
    console.print(live_renderable(plain))
    assert "REAL" not in console.export_text()
    assert "◆" not in console.export_text()
    assert "REAL" not in summary_text(Summary(75.0, {}, {}, (), (), (OTHER_ROW,)))


# --- the summary ---------------------------------------------------------------------------------------------

LOG = "/tmp/gpufabric-sandbox-real-engine-x/agents-tiny-real-0-0.log"
MEASURED = RealEngineReport(
    workload="agents/tiny-real",
    phase="AllReplicasReady",
    log=LOG,
    node="gpu-a-b200-01",
    address="127.101.0.23:40035",
    started_at=3.3,
    ready_at=65.7,
    load_started_at=67.8,
    load_seconds=112.6,
    concurrency=4,
    requests=2068,
    client_tokens=66_176,
    operator_tokens=66_049.0,
    measured=498.0,
    measured_at=168.5,
    measured_settled=True,
    client_rate=499.0,
)


def test_the_summary_sets_the_operators_figures_beside_the_clients() -> None:
    assert real_engine_lines(MEASURED, 183.0) == [
        "agents/tiny-real: one replica on gpu-a-b200-01 at 127.101.0.23:40035, started at 3.3s, Ready at 65.7s "
        "(62.4s to load)",
        "tokens/s: the operator measured 498 (status.tokensPerSecond.generation, written at 168.5s, over its "
        "window); the clients counted 499 over that window (0.2% apart)",
        "generated tokens: the operator counted 66,049 (gpufabric_tokens_total), the clients 66,176 (2,068 "
        "completions, 4 at a time for 112.6s; 0 errors) (0.2% apart)",
        f"its log: {LOG}",
    ]
    text = summary_text(Summary(183.0, {}, {}, (), (), (OTHER_ROW, REAL_ROW), real_engine=MEASURED))
    section = text.split("REAL ENGINE", 1)[1].splitlines()
    assert section[0].startswith(" (vLLM's CPU build, the tiny model: not simulated")
    assert section[1].startswith("  agents/tiny-real: one replica on gpu-a-b200-01")
    assert "  agents/tiny-real REAL  1/1    nvidia/B200/BF16 x1" in text  # the WORKLOADS table marks it too


def test_the_summary_says_when_the_rate_was_written_before_a_whole_window_of_load() -> None:
    early = dataclasses.replace(MEASURED, measured_at=76.3, measured_settled=False, measured=3749.0, client_rate=4058.0)
    assert real_engine_lines(early, 183.0)[1] == (
        "tokens/s: the operator measured 3,749 (status.tokensPerSecond.generation, written at 76.3s, over its "
        "window); the clients counted 4,058 over that window (7.6% apart; written 8.5s into the load, less than a "
        "window of it, so the two cover different spans)"
    )


def test_the_summary_says_when_the_engine_was_not_yet_ready() -> None:
    loading = RealEngineReport("agents/tiny-real", "ReplicasNotReady", LOG, node="gpu-a-b200-01", started_at=3.3)
    (line, log) = real_engine_lines(loading, 30.5)
    assert line == (
        "agents/tiny-real: one replica on gpu-a-b200-01, started at 3.3s: NOT READY when the run ended, still "
        "loading the model after 27.2s (vLLM takes 40-75 s here): no tokens measured; run longer"
    )
    assert log == f"its log: {LOG}"


def test_the_summary_says_how_far_the_engine_got_otherwise() -> None:
    never = RealEngineReport("agents/tiny-real", "Unschedulable", LOG)
    assert real_engine_lines(never, 30.0)[0] == (
        "agents/tiny-real: its replica never ran (Unschedulable): no tokens measured"
    )
    died = RealEngineReport(
        "agents/tiny-real", "ReplicasNotReady", LOG, node="n", started_at=2.0, exited="exited with code 1: boom"
    )
    assert real_engine_lines(died, 30.0)[0] == (
        "agents/tiny-real: one replica on n, started at 2.0s; the engine exited with code 1: boom: see its log"
    )
    unscraped = RealEngineReport("agents/tiny-real", "AllReplicasReady", LOG, node="n", started_at=2.0, ready_at=50.0)
    assert real_engine_lines(unscraped, 51.0)[1] == (
        "the operator had not scraped it yet when the run ended: no tokens measured"
    )
    unwritten = RealEngineReport(
        "agents/tiny-real", "AllReplicasReady", LOG, node="n", started_at=2.0, ready_at=50.0, load_started_at=52.0,
        load_seconds=3.0, concurrency=4, requests=10, errors=2, last_error="ClientConnectorError: refused",
        client_tokens=320, operator_tokens=None,
    )  # fmt: skip
    assert real_engine_lines(unwritten, 56.0)[1:3] == [
        "tokens/s: the operator wrote no tokens/s into the workload's status while the clients ran",
        "generated tokens: the operator's count is unknown; the clients 320 (10 completions, 4 at a time for 3.0s; "
        "2 errors, the last ClientConnectorError: refused)",
    ]
