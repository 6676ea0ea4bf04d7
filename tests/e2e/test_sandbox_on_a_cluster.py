"""`gpufabric sandbox --control-plane real`: the default scenario over the examples on a real v1.36 control plane
(its own: etcd, kube-apiserver, kube-scheduler, kube-controller-manager) with the stand-in kubelets, for its
first 42 s, and the summary checked as on the emulator (tests/integration/test_sandbox.py)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from gpufabric.manifests import load
from gpufabric.sandbox.run import SandboxOptions, read_inputs, run_sandbox
from gpufabric.sandbox.scenario import DEFAULT_SCENARIO
from gpufabric.sandbox.snapshot import Summary
from gpufabric.sandbox.view import Display

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = [ROOT / "examples" / "workloads"]


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> tuple[Summary, str, str]:
    kubeconfig = tmp_path_factory.mktemp("sandbox") / "kubeconfig"
    options = SandboxOptions(
        fleet=[ROOT / "examples" / "fleet"],
        workloads=WORKLOADS,
        scenario=DEFAULT_SCENARIO,
        kubeconfig_out=kubeconfig,
        control_plane="real",
        # Through the surge (15 s), the node failure (25 s) and its replicas' move (about 37 s); the recovery
        # and the scale-down come later and are the emulator's test's (tests/integration/test_sandbox.py).
        duration=42.0,
    )
    shown = io.StringIO()
    before = {t.name for t in threading.enumerate()}
    result = run_sandbox(options, read_inputs(options), Display(shown))
    left = [t.name for t in threading.enumerate() if t.name not in before and t.is_alive()]
    assert left == [], f"threads left running: {left}"
    return result, shown.getvalue(), kubeconfig.read_text()


def test_every_example_workload_runs_on_a_vendor_it_allows(summary: tuple[Summary, str, str]) -> None:
    result, _, _ = summary
    workloads = {w.key: w for w in load(WORKLOADS).workloads}
    assert {f"{r.namespace}/{r.name}" for r in result.workloads} == set(workloads)
    for row in result.workloads:
        allowed = {vendor.value for vendor in workloads[f"{row.namespace}/{row.name}"].spec.runtimes}
        assert {p.split("/", 1)[0] for p in row.placements} <= allowed
        assert row.ready == row.replicas, f"{row.name}: {row.ready}/{row.replicas} ({row.phase})"


def test_tokens_flow_for_every_vendor_and_the_failed_node_is_recovered(summary: tuple[Summary, str, str]) -> None:
    result, shown, _ = summary
    assert {v for (v, _), rate in result.tokens_per_vendor_precision.items() if rate > 0} == {
        "nvidia",
        "ascend",
        "mthreads",
    }
    assert result.recoveries
    assert all(r.recovered_after is not None for r in result.recoveries), result.recoveries
    assert any(s.workload == "agents/support-agent" and s.after > s.before and s.at >= 15 for s in result.scalings)
    assert "scenario  node gpu-a-h100-01 failed" in shown
    assert "Rescheduled agents/frontier-405b" in shown


def test_the_kubeconfig_is_the_real_api_servers(summary: tuple[Summary, str, str]) -> None:
    _, _, kubeconfig = summary
    assert "certificate-authority" in kubeconfig
    assert "https://127.0.0.1:" in kubeconfig
