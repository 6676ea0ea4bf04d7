"""`gpufabric sandbox`: the default scenario over the examples, run whole (about 80 s), and its summary
checked; bad inputs refused before anything starts; Ctrl-C ends a run cleanly, with a summary."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.manifests import load
from gpufabric.sandbox.run import SandboxError, SandboxOptions, read_inputs, run_sandbox
from gpufabric.sandbox.scenario import DEFAULT_SCENARIO
from gpufabric.sandbox.snapshot import Summary
from gpufabric.sandbox.view import Display, summary_text

ROOT = Path(__file__).resolve().parents[2]
FLEET = [ROOT / "examples" / "fleet"]
WORKLOADS = [ROOT / "examples" / "workloads"]
CONSOLE_SCRIPT = Path(sys.executable).parent / "gpufabric"


def options(**changes: object) -> SandboxOptions:
    base = SandboxOptions(fleet=FLEET, workloads=WORKLOADS, scenario=DEFAULT_SCENARIO)
    for key, value in changes.items():
        setattr(base, key, value)
    return base


@pytest.fixture(scope="module")
def default_run() -> tuple[Summary, str]:
    """The default scenario, whole, with the plain display (what CI logs and pipes get)."""
    shown = io.StringIO()
    settings = options()
    before = {t.name for t in threading.enumerate()}
    summary = run_sandbox(settings, read_inputs(settings), Display(shown))
    left = [t.name for t in threading.enumerate() if t.name not in before and t.is_alive()]
    assert left == [], f"threads left running after the sandbox ended: {left}"
    return summary, shown.getvalue()


def examples() -> dict[str, AgentWorkload]:
    return {w.key: w for w in load(WORKLOADS).workloads}


def test_every_example_workload_is_placed_on_a_vendor_it_allows(default_run: tuple[Summary, str]) -> None:
    summary, _ = default_run
    workloads = examples()
    assert {f"{r.namespace}/{r.name}" for r in summary.workloads} == set(workloads)
    for row in summary.workloads:
        allowed = {vendor.value for vendor in workloads[f"{row.namespace}/{row.name}"].spec.runtimes}
        vendors = {placement.split("/", 1)[0] for placement in row.placements}
        assert vendors, f"{row.name} has no placement"
        assert vendors <= allowed, f"{row.name} runs on {vendors}, allows {allowed}"
        assert row.ready == row.replicas, f"{row.name}: {row.ready}/{row.replicas} Ready at the end ({row.phase})"
    assert summary.unplaced == ()


def test_tokens_flow_for_every_vendor(default_run: tuple[Summary, str]) -> None:
    summary, _ = default_run
    vendors = {vendor for (vendor, _), rate in summary.tokens_per_vendor_precision.items() if rate > 0}
    assert vendors == {"nvidia", "ascend", "mthreads"}, summary.tokens_per_vendor_precision
    assert set(summary.replicas_per_vendor) == {"nvidia", "ascend", "mthreads"}
    for row in summary.workloads:
        assert row.tokens_per_second, f"{row.name}: no tokens/s in its status"


def test_the_failed_nodes_replicas_run_elsewhere(default_run: tuple[Summary, str]) -> None:
    summary, _ = default_run
    assert summary.recoveries, "the scenario's failed node held no replica"
    for lost in summary.recoveries:
        assert lost.node == "gpu-a-h100-01"
        assert lost.failed_at == pytest.approx(25, abs=2)
        assert lost.recovered_after is not None, f"{lost.workload} replica {lost.replica} never Ready elsewhere"
        # the operator replaces it at once (a NotReady node is drained: a replacement first), then it starts
        # (2 s); what is left on the node is force-deleted after --node-grace (10 s in the sandbox)
        assert 0 < lost.recovered_after <= 10


def test_the_surge_is_met_by_scaling_up(default_run: tuple[Summary, str]) -> None:
    summary, _ = default_run
    surged = [s for s in summary.scalings if s.workload == "agents/support-agent" and s.at >= 15]
    assert surged, summary.scalings
    assert all(s.after > s.before for s in surged[:1])
    assert max(s.after for s in surged) > 3  # more than the 20,000 tokens/s target alone needs
    assert all(s.workload == "agents/support-agent" for s in summary.scalings), "only support-agent has a target"


def test_replicas_are_placed_around_the_foreign_job(default_run: tuple[Summary, str]) -> None:
    """Another team's job takes gpu-a-h100-03 whole from 20 s to 55 s: the operator counts its 8 GPUs as held by
    others, and the 405B replica that leaves the failed node goes to other H100 nodes."""
    summary, shown = default_run
    (job,) = summary.foreign_jobs
    assert (job.pod, job.node, job.devices, job.resource) == (
        "batch/nightly-training",
        "gpu-a-h100-03",
        8,
        "nvidia.com/gpu",
    )
    assert job.rejected is None, job.rejected
    assert job.started_at == pytest.approx(20, abs=2)
    assert job.ended_at == pytest.approx(55, abs=2)
    assert job.held_seen == 8
    assert job.placed >= 1, "the failed node's replica moved while the job ran"
    assert job.placed_on_node == 0
    placed = re.findall(
        r"^\[\s*([\d.,]+)s\] operator  Placed agents/frontier-405b: .*\((gpu-a-h100-\d+), (gpu-a-h100-\d+)\)",
        shown,
        flags=re.MULTILINE,
    )
    assert job.ended_at is not None
    meanwhile = [nodes for at, *nodes in placed if job.started_at < float(at.replace(",", "")) < job.ended_at]
    assert meanwhile, f"the 405B replica was not placed again while the job ran: {placed}"
    assert all("gpu-a-h100-03" not in nodes for nodes in meanwhile), meanwhile
    assert "scenario  foreign job batch/nightly-training starts on gpu-a-h100-03" in shown
    assert "scenario  foreign job batch/nightly-training finished (Succeeded)" in shown
    assert ", 8 devices held by others" in shown
    report = summary_text(summary)
    assert "  batch/nightly-training on gpu-a-h100-03 from " in report
    assert "held 8 nvidia.com/gpu; the operator counted 8 held by others there and placed " in report


def test_the_scenario_and_the_operator_are_both_in_the_log(default_run: tuple[Summary, str]) -> None:
    _, shown = default_run
    assert "scenario  node gpu-a-h100-01 failed" in shown
    assert "scenario  kubectl scale agents/code-agent --replicas=4" in shown
    assert re.search(r"operator  Placed agents/agent-small: replica \d+ placed on ascend", shown)
    assert re.search(r"operator  Rescheduled agents/\S+: replica \d+ moves off .*gpu-a-h100-01", shown)
    assert "\x1b[" not in shown, "colour codes in the plain display"


# --- bad input: refused before anything starts -----------------------------------------------------------


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "sandbox", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def test_a_scenario_with_a_bad_field_is_refused_with_its_path(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(
        "duration: 30\nevents:\n  - at: 5\n    surge: {workload: agents/support-agent, factor: -2, for: 5}\n"
    )
    result = run_cli("--scenario", str(scenario), timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"gpufabric sandbox: {scenario}: events[0].surge.factor: must be greater than 0 (got -2)\n"
    assert result.stdout == ""


def test_every_bad_input_is_reported_at_once(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "apiVersion: gpufabric.io/v1alpha1\nkind: ComputeNode\nmetadata: {name: n1}\n"
        "spec: {nodeName: n1, vendor: nvidia, accelerator: H100-SXM5-80GB, devices: eight}\n"
    )
    scenario = tmp_path / "s.yaml"
    scenario.write_text("duration: 30\nevents:\n  - at: 5\n    failNode: {node: gpu-a-h100-99}\n")
    result = run_cli("--fleet", str(fleet), "--scenario", str(scenario), timeout=30)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(str(fleet) in line and "spec.devices" in line for line in lines), lines
    assert any(str(scenario) in line and "events[0].failNode.node" in line for line in lines), lines


def test_a_metrics_port_in_use_is_refused_before_the_start() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SandboxError) as refused:
            read_inputs(options(metrics_port=port))
    assert refused.value.problems == [
        f"--metrics-port {port}: already in use by another program (choose another port, or leave the flag out)"
    ]


def test_missing_examples_name_the_directory(tmp_path: Path) -> None:
    result = run_cli(cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    assert "examples/fleet" in result.stderr


def test_a_shorter_duration_leaves_later_events_out_and_says_so() -> None:
    inputs = read_inputs(options(duration=30.0))
    assert [e.action_key for e in inputs.scenario.events] == ["surge", "startForeignJob", "failNode"]
    assert inputs.notices == (
        "--duration 30: 4 of the scenario's events come later and are left out "
        "(addNodes at 35s, recoverNode at 45s, scale at 50s, endForeignJob at 55s)",
    )


# --- Ctrl-C ------------------------------------------------------------------------------------------------


def test_ctrl_c_stops_everything_and_still_prints_the_summary(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "sandbox", "--kubeconfig-out", str(tmp_path / "kubeconfig")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    started = time.monotonic()
    first = process.stdout.readline()  # the first status line: everything is up
    assert first.startswith("["), first
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, err
    assert "interrupted (Ctrl-C)" in out
    assert "Ran for" in out
    assert "WORKLOADS" in out
    assert time.monotonic() - started < 60
    assert "Traceback" not in err, err
    kubeconfig = (tmp_path / "kubeconfig").read_text()
    assert "server: http://127.0.0.1:" in kubeconfig


def test_a_real_control_plane_without_its_binaries_is_refused_before_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real finder, pointed at empty places: the problem names what is missing and where it looked."""
    from gpufabric.sandbox import controlplane  # noqa: PLC0415

    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    finder = controlplane.find_binaries
    monkeypatch.setattr(controlplane, "find_binaries", lambda: finder(tools=tmp_path, shared=tmp_path / "shared"))
    with pytest.raises(SandboxError) as refused:
        read_inputs(options(control_plane="real"))
    (problem,) = refused.value.problems
    assert problem.startswith("--control-plane real: no etcd, kube-apiserver")
    assert str(tmp_path) in problem
