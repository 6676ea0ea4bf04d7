"""`gpufabric plan`: where every replica of the manifests would run, in three formats; refusals are an
answer (exit 0); invalid files are not (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gpufabric.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_example_fleet_is_placed_sensibly(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = plan(capsys, "-f", str(EXAMPLES), "-o", "json")
    assert code == 0
    document = json.loads(out)
    assert document["unschedulable"] == []
    by_workload: dict[str, list[dict[str, object]]] = {}
    for row in document["placements"]:
        by_workload.setdefault(str(row["workload"]), []).append(row)
    # The 405B gang: two H100 nodes (its nodeSelector), eight devices each, one RoCE domain.
    (frontier,) = by_workload["agents/frontier-405b"]
    assert (frontier["accelerator"], frontier["precision"], frontier["devicesPerNode"]) == ("H100-SXM5-80GB", "FP8", 8)
    assert len(frontier["nodes"]) == 2  # type: ignore[arg-type]
    # The 70B model: FP8 on one B200 each (more tokens/s than two H100s), spread over four nodes.
    reasoning = by_workload["agents/reasoning-70b"]
    assert {(r["accelerator"], r["precision"], r["devicesPerNode"]) for r in reasoning} == {("B200", "FP8", 1)}
    assert len({tuple(r["nodes"]) for r in reasoning}) == 4  # type: ignore[arg-type]
    # The small agent model honours its Ascend-first preference, at INT8 (Ascend has no FP8).
    small = by_workload["agents/agent-small"]
    assert {(r["vendor"], r["precision"]) for r in small} == {("ascend", "INT8")}
    assert len(small) == 6
    # The code agent runs only on Moore Threads.
    assert {r["vendor"] for r in by_workload["agents/code-agent"]} == {"mthreads"}
    assert document["totals"]["tokensPerSecond"] > 0


def test_table_and_yaml_say_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    _, table, _ = plan(capsys, "-f", str(EXAMPLES))
    _, as_yaml, _ = plan(capsys, "-f", str(EXAMPLES), "-o", "yaml")
    rows = yaml.safe_load(as_yaml)["placements"]
    assert table.startswith("WORKLOAD")
    for row in rows:
        assert f"{row['workload']}  " in table
    assert "PREDICTED TOKENS/S" in table


def test_unschedulable_replicas_are_reported_with_exit_code_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fleet.yaml").write_text(
        "apiVersion: gpufabric.io/v1alpha1\nkind: ComputeNode\nmetadata: {name: m1}\n"
        "spec: {nodeName: m1, vendor: mthreads, accelerator: MTT-S4000, devices: 8}\n---\n"
        "apiVersion: gpufabric.io/v1alpha1\nkind: AgentWorkload\nmetadata: {name: big, namespace: ns}\n"
        "spec:\n  model: {name: m, parametersBillions: 405}\n  runtimes: {mthreads: {image: x}}\n"
    )
    code, out, _ = plan(capsys, "-f", str(tmp_path))
    assert code == 0
    refusal = "replica 0 of ns/big: 0/1 nodes: 1 too small for the model (needs 32 devices at BF16)"
    assert f"UNSCHEDULABLE\n  {refusal}" in out


def test_running_replicas_from_status_keep_their_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fleet.yaml").write_text(
        "apiVersion: gpufabric.io/v1alpha1\nkind: ComputeNode\nmetadata: {name: h1}\n"
        "spec: {nodeName: h1, vendor: nvidia, accelerator: H100-SXM5-80GB, devices: 8}\n---\n"
        "apiVersion: gpufabric.io/v1alpha1\nkind: AgentWorkload\nmetadata: {name: chat, namespace: ns}\n"
        "spec:\n  model: {name: m, parametersBillions: 8}\n  replicas: 2\n  devicesPerReplica: 4\n"
        "  runtimes: {nvidia: {image: x}}\n"
        "status:\n  placements:\n  - {replica: 0, vendor: nvidia, accelerator: H100-SXM5-80GB, precision: BF16,"
        " devicesPerNode: 4, nodes: [h1]}\n"
        "  - {replica: 7, vendor: nvidia, accelerator: H100-SXM5-80GB, precision: BF16, devicesPerNode: 4,"
        " nodes: [gone]}\n"
    )
    code, out, _ = plan(capsys, "-f", str(tmp_path), "-o", "json")
    document = json.loads(out)
    assert code == 0
    assert [(p["replica"], p["state"], p["nodes"]) for p in document["placements"]] == [
        (0, "running", ["h1"]),
        (1, "new", ["h1"]),
    ]
    # Replica 7 is beyond spec.replicas (scaled down) and is not counted; nothing is orphaned.
    assert document["orphaned"] == []
    assert document["totals"]["vendors"][0]["devicesUsed"] == 8


def test_invalid_files_exit_2_and_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: gpufabric.io/v1alpha1\nkind: ComputeNode\nmetadata: {name: h1}\n"
        "spec: {nodeName: h1, vendor: nvidia, accelerator: H100-SXM5-80GB, devices: -1}\n"
    )
    code, out, err = plan(capsys, "-f", str(tmp_path))
    assert code == 2
    assert out == ""
    assert "spec.devices: Input should be greater than or equal to 1" in err


def test_weights_can_be_overridden(capsys: pytest.CaptureFixture[str]) -> None:
    _, preferred, _ = plan(capsys, "-f", str(EXAMPLES), "-o", "json")
    _, indifferent, _ = plan(capsys, "-f", str(EXAMPLES), "-o", "json", "--weight", "vendor_preference_decay=1")
    vendors = {r["vendor"] for r in json.loads(preferred)["placements"] if r["workload"] == "agents/agent-small"}
    assert vendors == {"ascend"}
    # Without the preference's weight, tokens/s alone decides: the small model goes to NVIDIA.
    vendors = {r["vendor"] for r in json.loads(indifferent)["placements"] if r["workload"] == "agents/agent-small"}
    assert vendors == {"nvidia"}


# Bad --weight values: tests/badinput/weight-*.yaml.
