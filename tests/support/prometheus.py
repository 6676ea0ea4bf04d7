"""A real Prometheus server (Debian's `prometheus` package, the one promtool comes from: `make tools`) on
127.0.0.1, scraping the targets it is given every second, for the e2e suite; and the PromQL helpers that
take the dashboard's and the alerts' expressions apart.

It runs in a temporary directory with its own TSDB, dies with the test process (PR_SET_PDEATHSIG), and is
stopped (SIGTERM, then SIGKILL) when the context ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpufabric.sandbox.controlplane import ROOT, die_with_parent, free_port

PROMETHEUS = Path(os.environ.get("PROMETHEUS") or ROOT / ".tools" / "prometheus" / "usr" / "bin" / "prometheus")
JOB = "gpu-fabric-operator"


@dataclass
class PrometheusServer:
    url: str
    directory: Path

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) `expression` evaluates to now; AssertionError with
        Prometheus' own message if it does not evaluate."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        try:
            with urllib.request.urlopen(address, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        assert body.get("status") == "success", f"{expression!r}: {body.get('errorType')}: {body.get('error')}"
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> int:
        return sum(int(float(sample["value"][1])) for sample in self.query(f'up{{job="{JOB}"}}'))

    def log(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.is_file() else ""


@contextlib.contextmanager
def running(targets: Sequence[str]) -> Iterator[PrometheusServer]:
    """Prometheus scraping `host:port` targets as job `gpu-fabric-operator` every second."""
    assert PROMETHEUS.is_file(), f"prometheus not found at {PROMETHEUS}: run `make tools`"
    with tempfile.TemporaryDirectory(prefix="gpufabric-prometheus-") as scratch:
        directory = Path(scratch)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (directory / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 -- no server outlives the test run
        )
        server = PrometheusServer(f"http://127.0.0.1:{port}", directory)
        try:
            _wait_ready(server, process)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            log.close()


def _wait_ready(server: PrometheusServer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"prometheus exited {process.returncode}:\n{server.log()[-2000:]}"
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"prometheus not ready within 30 s:\n{server.log()[-2000:]}")


# --- taking PromQL apart --------------------------------------------------------------------------------

COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def without_final_comparison(expression: str) -> str | None:
    """The left-hand side of the expression's last top-level comparison (`max(x) > 0` -> `max(x)`;
    `(a) < on (l) (b)` -> `(a)`), or None when it has none. Comparisons inside parentheses, braces (label
    matchers), brackets or strings are not top level."""
    depth = 0
    quote: str | None = None
    found: int | None = None
    index = 0
    while index < len(expression):
        char = expression[index]
        if quote:
            quote = None if char == quote and expression[index - 1] != "\\" else quote
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and any(expression.startswith(op, index) for op in COMPARISONS):
            found = index
            index += 1 if expression[index + 1 : index + 2] == "=" else 0
        index += 1
    return expression[:found].strip() if found is not None else None
