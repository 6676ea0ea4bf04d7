"""Reading and planning large fleets: `gpufabric validate` and `gpufabric plan` on 1,000 / 5,000 / 20,000
ComputeNodes with 5,000 replicas, each a fresh process as a user would run it. A program, not a test.

    .venv/bin/python benchmarks/manifests.py [--quick] [--sizes 1000,5000,20000] [--replicas 5000]

The fleet is the example fleet (examples/fleet: 20 B200, H100, Ascend 910B and MTT S4000 servers with
their RoCE NICs) cloned as often as it takes, 16 copies to a RoCE domain, and written as one multi-document
file the way `kubectl get computenodes -o yaml` prints it (server metadata, kubectl's last-applied
annotation, the operator's status); the workloads are the examples' five, cloned to the replica count.

Baselines, in the same run, each loading the same file in a fresh process, load only (no validation):
PyYAML's CSafeLoader (libyaml; `yaml.load_all` as a program would call it) and its pure-Python SafeLoader
(what `validate` used before), the latter on sizes up to --baseline-max (it takes minutes beyond). Each
ratio is that baseline's load time / our whole `validate`. Peak memory is the child process's maximum RSS.
Aim (issue 12): 20,000 nodes validated and planned in under 20 s and under 300 MB.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
GPUFABRIC = Path(sys.executable).with_name("gpufabric")
TARGET_SECONDS = 20.0
TARGET_MB = 300.0
TARGET_SIZE = 20_000
COPIES_PER_DOMAIN = 16


def templates(folder: str) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted((ROOT / "examples" / folder).glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return documents


def as_read_back(node: dict[str, Any], index: int) -> dict[str, Any]:
    """The node as `kubectl get computenodes -o yaml` prints it: server-set metadata, kubectl's
    last-applied annotation (the whole object again, as JSON) and the operator's status."""
    applied = json.dumps(node, separators=(",", ":"), sort_keys=True)
    node["metadata"].update(
        {
            "uid": str(uuid.UUID(int=index)),
            "resourceVersion": str(100_000 + index),
            "generation": 1,
            "creationTimestamp": "2026-11-27T10:00:00Z",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied},
        }
    )
    devices = node["spec"]["devices"]
    node["status"] = {
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "observedGeneration": 1,
                "lastTransitionTime": "2026-11-27T10:00:05Z",
                "reason": "NodeReady",
                "message": f"Node {node['metadata']['name']} is Ready and its device plugin advertises {devices}",
            }
        ],
        "allocatedDevices": 0,
        "freeDevices": devices,
        "tokensPerSecond": {"prompt": 0.0, "generation": 0.0},
    }
    return node


def fleet_documents(nodes: int, replicas: int) -> list[dict[str, Any]]:
    """`nodes` ComputeNodes cloned from the examples (a RoCE domain per copy of the example fleet) and the
    example workloads cloned until their replicas add up to `replicas`."""
    node_templates = templates("fleet")
    documents: list[dict[str, Any]] = []
    for index in range(nodes):
        template = node_templates[index % len(node_templates)]
        copy_number = index // len(node_templates)
        node = copy.deepcopy(template)
        name = f"{template['metadata']['name']}-c{copy_number}"
        node["metadata"]["name"] = name
        node["spec"]["nodeName"] = name
        fabric = node["spec"].get("fabric")
        if fabric:
            # 16 copies of the example fleet share a RoCE domain: 192 NVIDIA, 64 Ascend, 64 MUSA servers per
            # domain, the size of a spine-leaf pod.
            fabric["roceDomain"] = f"{fabric['roceDomain']}{copy_number // COPIES_PER_DOMAIN}"
        documents.append(as_read_back(node, index))
    workload_templates = [w for w in templates("workloads") if w.get("kind") == "AgentWorkload"]
    per_copy = 50
    for index in range(max(1, replicas // per_copy)):
        template = workload_templates[index % len(workload_templates)]
        workload = copy.deepcopy(template)
        workload["metadata"]["name"] = f"{template['metadata']['name']}-{index}"
        workload["spec"]["replicas"] = per_copy
        workload["spec"].get("throughput", {}).pop("maxReplicas", None)
        workload["spec"].pop("throughput", None)
        documents.append(workload)
    return documents


def run(args: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, exit code) of one `gpufabric` process."""
    started = time.perf_counter()
    process = subprocess.Popen([str(GPUFABRIC), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        assert process.stderr is not None
        sys.stderr.write(process.stderr.read().decode(errors="replace")[-2000:])
    return elapsed, usage.ru_maxrss / 1024, process.returncode


def baseline_load(path: Path, loader: str) -> float:
    """Seconds PyYAML's `loader` (SafeLoader, pure Python; CSafeLoader, libyaml) takes to load the file,
    load only, in a fresh process."""
    code = (
        "import sys, yaml; "
        "text = open(sys.argv[1], encoding='utf-8').read(); "
        f"list(yaml.load_all(text, Loader=yaml.{loader}))"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 nodes, 100 replicas")
    parser.add_argument("--sizes", default="1000,5000,20000", help="ComputeNode counts, comma-separated")
    parser.add_argument("--replicas", type=int, default=5000, help="replicas across the workloads")
    parser.add_argument("--baseline-max", type=int, default=5000, help="largest size the baseline runs on")
    options = parser.parse_args()
    sizes = [200] if options.quick else [int(s) for s in options.sizes.split(",")]
    replicas = 100 if options.quick else options.replicas
    print(
        f"{'nodes':>7} {'replicas':>8} {'file MB':>8} {'validate s':>10} {'plan s':>7} {'peak MB':>8} "
        f"{'C load s':>8} {'ratio':>6} {'Py load s':>9} {'ratio':>6}"
    )
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            path = Path(scratch) / f"fleet-{size}.yaml"
            path.write_text(
                yaml.safe_dump_all(fleet_documents(size, replicas), sort_keys=False, width=120), encoding="utf-8"
            )
            megabytes = path.stat().st_size / 1e6
            validate_s, validate_mb, validate_code = run(["validate", "-f", str(path)])
            plan_s, plan_mb, plan_code = run(["plan", "-f", str(path), "-o", "json"])
            if validate_code or plan_code:
                failures.append(f"{size} nodes: validate exited {validate_code}, plan {plan_code}")
            c_load = baseline_load(path, "CSafeLoader")
            py_load = baseline_load(path, "SafeLoader") if size <= options.baseline_max else None
            print(
                f"{size:>7,} {replicas:>8,} {megabytes:>8.1f} {validate_s:>10.2f} {plan_s:>7.2f} "
                f"{max(validate_mb, plan_mb):>8.0f} {c_load:>8.2f} {c_load / validate_s:>5.1f}x "
                f"{f'{py_load:.2f}' if py_load else '-':>9} {f'{py_load / validate_s:.1f}x' if py_load else '-':>6}",
                flush=True,
            )
            if size == TARGET_SIZE:
                verdict = "met" if plan_s < TARGET_SECONDS and max(validate_mb, plan_mb) < TARGET_MB else "MISSED"
                print(
                    f"aim for {TARGET_SIZE:,} nodes ({TARGET_SECONDS:.0f} s, {TARGET_MB:.0f} MB): {verdict} — "
                    f"plan {plan_s:.1f} s, {max(validate_mb, plan_mb):.0f} MB"
                )
    print(f"max RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
