"""`gpufabric render`: the Pods, Services and ConfigMaps the operator would create for the manifests'
placement, as YAML or JSON, to read and diff before applying.

It places the manifests' workloads as `gpufabric plan` does (replicas their status records stay put) and
renders every replica with the operator's own rendering functions — the same pod, Service and engine files
the reconcile pass creates. Objects come out in the order a cluster needs them: Services, ConfigMaps, Pods.
The workload's uid is unknown until it exists, so ownerReferences carry an empty uid.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import yaml

from gpufabric.api.agentworkload import ReplicaPlacement
from gpufabric.manifests import Fleet
from gpufabric.placement import PriorThroughput, Weights
from gpufabric.placement.engine import Refusal
from gpufabric.placement.plan import plan_fleet
from gpufabric.rendering import (
    render_client_service,
    render_engine_config,
    render_replica_pods,
    render_replica_service,
)
from gpufabric.vendors import ACCELERATORS


@dataclass(frozen=True)
class Rendered:
    objects: tuple[dict[str, Any], ...]
    refused: tuple[Refusal, ...]


def render_fleet(fleet: Fleet, weights: Weights | None = None) -> Rendered:
    plan = plan_fleet(fleet.nodes, fleet.workloads, PriorThroughput(dict(ACCELERATORS)), weights)
    specs = {node.name: node.spec for node in fleet.nodes}
    placements: dict[str, list[ReplicaPlacement]] = defaultdict(list)
    for decision in (*plan.running, *plan.placed):
        placements[decision.workload].append(ReplicaPlacement.of(decision.replica, decision.allocation))
    services: list[dict[str, Any]] = []
    config_maps: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    for workload in sorted(fleet.workloads, key=lambda w: w.key):
        services.append(render_client_service(workload))
        for placement in sorted(placements.get(workload.key, []), key=lambda p: p.replica):
            if len(placement.nodes) > 1:
                services.append(render_replica_service(workload, placement.replica))
            config = render_engine_config(workload, placement)
            if config is not None:
                config_maps.append(config)
            pods += render_replica_pods(workload, placement, specs)
    return Rendered(tuple(services + config_maps + pods), plan.refused)


def as_yaml(rendered: Rendered) -> str:
    return yaml.safe_dump_all(rendered.objects, sort_keys=False, width=120)


def as_json(rendered: Rendered) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(rendered.objects)}, indent=2) + "\n"


FORMATS = {"yaml": as_yaml, "json": as_json}
