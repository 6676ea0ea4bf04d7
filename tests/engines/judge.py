"""The engines' own parsers, run in the engine tools' virtualenv (`make tools`: scripts/fetch_vllm.py) as a
judge process the tests talk to: one JSON line of arguments in, one verdict out."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "vllm"
GOLDEN = ROOT / "tests" / "golden" / "command-lines.yaml"


class Judge:
    """The judge process: one JSON line of arguments in, one verdict out."""

    @classmethod
    def start(cls, script: Path, *, unavailable: tuple[str, ...] = ("UNAVAILABLE",)) -> Judge:
        """The judge in the tools' virtualenv. The test skips, saying why, when the tools were not made or a
        marker file of scripts/fetch_vllm.py in `unavailable` says what could not be had."""
        for marker in unavailable:
            if (TOOLS / marker).is_file():
                why = (TOOLS / marker).read_text().strip()
                pytest.skip(f"the engine's parser is not available ({why}): `make tools` makes {TOOLS}")
        if not (TOOLS / "READY").is_file():
            pytest.skip(f"the engine's parser is not available (not made): `make tools` makes {TOOLS}")
        return cls(TOOLS / "venv" / "bin" / "python", script)

    def __init__(self, python: Path, script: Path) -> None:
        self.process = subprocess.Popen(
            [str(python), str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        hello = self.process.stdout.readline()
        assert json.loads(hello) == {"ready": True}, hello

    def __call__(self, arguments: list[str]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(arguments) + "\n")
        self.process.stdin.flush()
        verdict: dict[str, Any] = json.loads(self.process.stdout.readline())
        return verdict

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
