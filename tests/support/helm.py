"""The real `helm` (from `make tools`) and the chart: rendering for tests/chart, installing for tests/e2e."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gpu-fabric-operator"
HELM = os.environ.get("HELM") or str(ROOT / ".tools" / "kube" / "bin" / "helm")
PROMTOOL = os.environ.get("PROMTOOL") or str(ROOT / ".tools" / "prometheus" / "usr" / "bin" / "promtool")
RELEASE = "gpufabric"
NAMESPACE = "gpufabric-system"


class HelmError(Exception):
    pass


def helm(*args: str, values: dict[str, Any] | None = None, tmp: Path | None = None) -> str:
    """Run helm; HelmError with its stderr when it fails."""
    assert Path(HELM).is_file(), f"helm not found at {HELM}: run `make tools`"
    command = [HELM, *args]
    if values is not None:
        assert tmp is not None
        path = tmp / f"values-{abs(hash(repr(values)))}.yaml"
        path.write_text(yaml.safe_dump(values))
        command += ["--values", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    return result.stdout


def render(values: dict[str, Any], tmp: Path, *extra: str) -> list[dict[str, Any]]:
    """The objects `helm template` renders for these values (release gpufabric, namespace gpufabric-system)."""
    output = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra, values=values, tmp=tmp)
    return [document for document in yaml.safe_load_all(output) if document]


def on_cluster(kubeconfig: Path, *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None) -> str:
    """helm against a cluster (the e2e control plane), waiting for nothing unless told to."""
    return helm("--kubeconfig", str(kubeconfig), *args, values=values, tmp=tmp)
