"""Every file in tests/badinput/ is a bad input and the answer it must get: exit code and message.

Run in-process through `gpufabric.cli.main` (what the console script calls), so the table costs
milliseconds per case; argparse's own errors arrive as SystemExit and are checked the same way. The
header format is in tests/badinput/README.md."""

from __future__ import annotations

import io
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpufabric import cli

ROOT = Path(__file__).resolve().parents[2]
CASES_DIR = ROOT / "tests" / "badinput"
CASES = sorted(p for p in CASES_DIR.iterdir() if p.suffix == ".yaml")


@dataclass
class Case:
    args: list[str]
    exit: int
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    not_stdout: list[str] = field(default_factory=list)
    not_stderr: list[str] = field(default_factory=list)
    env: list[tuple[str, str]] = field(default_factory=list)
    stdin: bool = False


def read_case(path: Path, empty_dir: Path) -> Case:
    """The header of one case, with {this}, {examples} and {empty_dir} filled in."""
    text = path.read_bytes().decode("utf-8", errors="replace")  # a case's body need not be UTF-8

    def filled(value: str) -> str:
        return (
            value.replace("{this}", str(path))
            .replace("{examples}", str(ROOT / "examples"))
            .replace("{empty_dir}", str(empty_dir))
        )

    header: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.startswith("# "):
            continue
        key, sep, value = line[2:].partition(": ")
        if sep and key in ("args", "exit", "stdout", "stderr", "not-stdout", "not-stderr", "env", "stdin"):
            header.setdefault(key, []).append(filled(value))
    assert "args" in header, f"{path.name}: needs an # args: line"
    assert "exit" in header, f"{path.name}: needs an # exit: line"
    return Case(
        args=shlex.split(header["args"][0]),
        exit=int(header["exit"][0]),
        stdout=header.get("stdout", []),
        stderr=header.get("stderr", []),
        not_stdout=header.get("not-stdout", []),
        not_stderr=header.get("not-stderr", []),
        env=[tuple(item.split("=", 1)) for item in header.get("env", [])],  # type: ignore[misc]
        stdin=header.get("stdin") == ["this"],
    )


def run(args: list[str], stdin_text: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `gpufabric ARGS` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdout", out)
        patch.setattr("sys.stderr", err)
        patch.setattr("sys.stdin", io.StringIO(stdin_text or ""))
        try:
            code = cli.main(args)
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_bad_input_gets_its_answer(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = read_case(path, tmp_path)
    for name, value in case.env:
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    stdin_text = path.read_text(encoding="utf-8") if case.stdin else None
    code, stdout, stderr = run(case.args, stdin_text)
    shown = f"\n--- stdout:\n{stdout[-3000:]}\n--- stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stdout + stderr, shown
    assert code == case.exit, f"exit {code}, expected {case.exit}{shown}"
    for wanted in case.stdout:
        assert wanted in stdout, f"stdout lacks {wanted!r}{shown}"
    for wanted in case.stderr:
        assert wanted in stderr, f"stderr lacks {wanted!r}{shown}"
    for unwanted in case.not_stdout:
        assert unwanted not in stdout, f"stdout has {unwanted!r}{shown}"
    for unwanted in case.not_stderr:
        assert unwanted not in stderr, f"stderr has {unwanted!r}{shown}"


def test_every_case_is_a_case() -> None:
    """A file with a typo in its header would otherwise be skipped or half-checked."""
    assert len(CASES) >= 40
    others = sorted(p.name for p in CASES_DIR.iterdir() if p.suffix != ".yaml" and p.name != "README.md")
    assert not others, f"files in tests/badinput/ that are not cases: {others}"
    for path in CASES:
        case = read_case(path, Path("/nonexistent"))
        assert case.stdout or case.stderr, f"{path.name} states no message"
