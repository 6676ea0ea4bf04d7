"""`gpufabric plan` output: a table for people, JSON or YAML for tools. Formatting only."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import yaml

from gpufabric.placement.engine import Decision, Refusal
from gpufabric.placement.plan import FleetPlan
from gpufabric.texttable import table


def as_document(plan: FleetPlan) -> dict[str, Any]:
    def replica(decision: Decision, state: str) -> dict[str, Any]:
        return {
            "workload": decision.workload,
            "replica": decision.replica,
            "state": state,
            "vendor": decision.allocation.vendor.value,
            "accelerator": decision.allocation.accelerator,
            "precision": decision.allocation.precision.value,
            "devicesPerNode": decision.allocation.devices_per_node,
            "nodes": list(decision.allocation.nodes),
            "tokensPerSecond": round(decision.tokens_per_second, 1),
        }

    return {
        "placements": [replica(d, "running") for d in plan.running] + [replica(d, "new") for d in plan.placed],
        "unschedulable": [{"workload": r.workload, "replica": r.replica, "reason": r.reason} for r in plan.refused],
        "orphaned": [{"workload": o.workload, "replica": o.replica, "nodes": list(o.nodes)} for o in plan.orphaned],
        "totals": {
            "tokensPerSecond": round(plan.tokens_per_second, 1),
            "vendors": [
                {
                    "vendor": v.vendor.value,
                    "devices": v.devices,
                    "devicesUsed": v.devices_used,
                    "tokensPerSecond": round(v.tokens_per_second, 1),
                }
                for v in plan.vendors
            ],
        },
    }


def refusal_lines(refused: Iterable[Refusal]) -> list[str]:
    """One line per workload and reason, however many replicas share it:
    `replicas 0–999 of agents/big (1,000): 0/20 nodes: …`. Workloads keep their first-refused order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for refusal in refused:
        groups.setdefault((refusal.workload, refusal.reason), []).append(refusal.replica)
    lines = []
    for (workload, reason), replicas in groups.items():
        if len(replicas) == 1:
            lines.append(f"replica {replicas[0]} of {workload}: {reason}")
        else:
            lines.append(f"replicas {replica_ranges(replicas)} of {workload} ({len(replicas):,}): {reason}")
    return lines


def replica_ranges(replicas: Iterable[int]) -> str:
    """`0–3, 7, 9–12`: sorted runs of consecutive replica numbers."""
    runs: list[list[int]] = []
    for replica in sorted(set(replicas)):
        if runs and replica == runs[-1][-1] + 1:
            runs[-1].append(replica)
        else:
            runs.append([replica])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}–{run[-1]}" for run in runs)


def as_json(plan: FleetPlan) -> str:
    return json.dumps(as_document(plan), indent=2) + "\n"


def as_yaml(plan: FleetPlan) -> str:
    return yaml.safe_dump(as_document(plan), sort_keys=False)


def as_table(plan: FleetPlan) -> str:
    lines: list[str] = []
    rows = [
        [
            d.workload,
            str(d.replica),
            state,
            d.allocation.vendor.value,
            d.allocation.accelerator,
            d.allocation.precision.value,
            f"{d.allocation.devices_per_node}x{len(d.allocation.nodes)}"
            if len(d.allocation.nodes) > 1
            else str(d.allocation.devices_per_node),
            ",".join(d.allocation.nodes),
            f"{d.tokens_per_second:,.0f}",
        ]
        for state, decisions in (("running", plan.running), ("new", plan.placed))
        for d in decisions
    ]
    header = ["WORKLOAD", "REPLICA", "STATE", "VENDOR", "ACCELERATOR", "PRECISION", "DEVICES", "NODES", "TOKENS/S"]
    lines += table(header, rows) if rows else ["no replicas placed"]
    if plan.refused:
        lines += ["", "UNSCHEDULABLE"]
        lines += [f"  {line}" for line in refusal_lines(plan.refused)]
    if plan.orphaned:
        lines += ["", "ORPHANED (status names nodes no ComputeNode describes)"]
        lines += [f"  {o.workload} replica {o.replica} on {','.join(o.nodes)}" for o in plan.orphaned]
    totals = [[v.vendor.value, f"{v.devices_used}/{v.devices}", f"{v.tokens_per_second:,.0f}"] for v in plan.vendors]
    totals.append(
        [
            "total",
            f"{sum(v.devices_used for v in plan.vendors)}/{sum(v.devices for v in plan.vendors)}",
            f"{plan.tokens_per_second:,.0f}",
        ]
    )
    lines += ["", *table(["VENDOR", "DEVICES USED", "PREDICTED TOKENS/S"], totals)]
    return "\n".join(lines) + "\n"


FORMATS = {"table": as_table, "json": as_json, "yaml": as_yaml}
