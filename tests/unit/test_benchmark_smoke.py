"""The manifests benchmark still runs (issue 12 asks for its --quick mode in the suite): a smoke check of
the program, never a timed assertion. The numbers are read by people from its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_manifests_benchmark_runs_in_quick_mode() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "manifests.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    header, row, *_ = result.stdout.splitlines()
    assert header.split()[:2] == ["nodes", "replicas"]
    assert row.split()[:2] == ["200", "100"]
