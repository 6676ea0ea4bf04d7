"""`gpufabric capacity`: free capacity in tokens/s from manifests; bad input exits 2 with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpufabric.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["capacity", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_example_fleet_after_its_workloads(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-f", str(EXAMPLES), "--model-params", "70", "-o", "json")
    assert code == 0
    report = json.loads(out)
    rows = {(r["accelerator"], r["precision"], r["roceDomain"]): r for r in report["rows"]}
    # 70B at FP8: one B200 device per replica; the example workloads already hold some of the B200s.
    b200 = rows[("B200", "FP8", "a")]
    assert b200["devicesPerReplica"] == 1
    assert b200["replicas"] == 32 - 6, "four reasoning-70b and two of the support-agent's replicas are placed"
    assert ("Ascend-910B3", "FP8", "b") not in rows
    assert report["totalTokensPerSecond"] > b200["tokensPerSecond"]


def test_precision_filter_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-f", str(EXAMPLES), "--precision", "INT8")
    assert code == 0
    assert out.startswith("Free capacity for a 8B model (manifests, after placing their workloads):")
    assert "FP8" not in out
    assert "TOTAL (best precision per accelerator and domain):" in out


# Bad flags and an unreadable kubeconfig: tests/badinput/ (model-params-*, capacity-*).


def test_a_source_is_required() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["capacity"])
    assert caught.value.code == 2
