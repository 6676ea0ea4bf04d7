"""A real serving engine in place of a pod's container: the command and args the operator rendered, run as a
process on this machine at the pod's loopback address — vLLM's CPU build from `make tools` (.tools/vllm).

What is changed from the rendered container, and only this: the executable is resolved to the tools'
virtualenv (`vllm` -> .tools/vllm/venv/bin/vllm), and `--host` is the pod's own address (the rendered
`0.0.0.0` would take the port on every address of the machine; a pod has its own). Everything else — the
model, the served name, the port, the parallel sizes, the precision flags and the user's args — is exactly
what the pod would run. The stand-in kubelet marks the pod Ready only once the engine's `/health` answers,
as the rendered readiness probe would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufabric.sandbox.controlplane import ROOT, die_with_parent

TOOLS = ROOT / ".tools" / "vllm"
EXECUTABLES = {"vllm": "vllm"}  # rendered executable -> the tools' virtualenv's


class EngineUnavailableError(Exception):
    """The tools for a real engine are not there: the line says why and what makes them."""


def tools(directory: Path = TOOLS) -> Path:
    """The vLLM tools' directory; EngineUnavailableError when `make tools` has not made them (and why)."""
    if (directory / "READY").is_file():
        return directory
    why = (directory / "UNAVAILABLE").read_text().strip() if (directory / "UNAVAILABLE").is_file() else "not made"
    raise EngineUnavailableError(f"the real vLLM engine is not available ({why}): `make tools` makes {directory}")


def tiny_model(directory: Path = TOOLS) -> Path:
    return tools(directory) / "tiny-llama"


def real_command(command: Sequence[str], args: Sequence[str], venv: Path, address: str) -> list[str]:
    """The rendered command line with the executable resolved and `--host` set to the pod's address."""
    if not command or command[0] not in EXECUTABLES:
        raise EngineUnavailableError(f"no real engine runs {list(command[:2])}: only {sorted(EXECUTABLES)}")
    words = [str(venv / "bin" / EXECUTABLES[command[0]]), *command[1:], *args]
    if "--host" in words:
        words[words.index("--host") + 1] = address
    else:
        words += ["--host", address]
    return words


@dataclass
class RealEngine:
    """One engine process, its log, and its health."""

    command: list[str]
    log: Path
    port: int
    address: str
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # vLLM's CPU backend sizes its KV cache from the flag; no telemetry, nothing from a hub.
                env={**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 -- no engine outlives the run, however it ends
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        if not self.alive:
            return False
        try:
            with urllib.request.urlopen(f"http://{self.address}:{self.port}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to its process group (vLLM starts an engine core process of its own), SIGKILL if slow."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.is_file() else ""


@dataclass
class RealEngines:
    """The stand-in kubelet's real engines: which workloads (namespace/name) get one, and those running, by
    pod uid. Logs go to `logs`, one file a pod."""

    workloads: frozenset[str]
    logs: Path
    venv: Path = field(default_factory=lambda: tools() / "venv")
    running: dict[str, RealEngine] = field(default_factory=dict)
    _warming: set[str] = field(default_factory=set)

    def start(self, pod: Any, workload: str, address: str) -> bool:
        """Start the pod's engine if its workload is one of ours; whether it did."""
        if workload not in self.workloads or pod.metadata.uid in self.running:
            return workload in self.workloads
        (container,) = pod.spec.containers
        port = next(p.container_port for p in container.ports or [] if p.name == "http")
        command = real_command(container.command or [], container.args or [], self.venv, address)
        self.logs.mkdir(parents=True, exist_ok=True)
        engine = RealEngine(command, self.logs / f"{pod.metadata.namespace}-{pod.metadata.name}.log", port, address)
        engine.start()
        self.running[pod.metadata.uid] = engine
        self._warming.add(pod.metadata.uid)
        return True

    def warming(self, uid: str) -> bool:
        return uid in self._warming

    def healthy(self, uid: str) -> bool:
        engine = self.running.get(uid)
        return engine is not None and engine.healthy()

    def ready(self, uid: str) -> None:
        self._warming.discard(uid)

    def stop(self, uid: str) -> None:
        engine = self.running.pop(uid, None)
        self._warming.discard(uid)
        if engine is not None:
            engine.stop()

    def stop_all(self) -> None:
        for uid in list(self.running):
            self.stop(uid)
