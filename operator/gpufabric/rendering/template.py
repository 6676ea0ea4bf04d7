"""The template hash: what a replica was rendered from, so a change of model, image, command, env or
metrics settings is seen as an outdated replica and rolled."""

from __future__ import annotations

import hashlib
import json

from gpufabric.api.agentworkload import AgentWorkloadSpec
from gpufabric.vendors import Vendor

HASH_LENGTH = 10


def template_hash(spec: AgentWorkloadSpec, vendor: Vendor) -> str:
    """Hash of the inputs a replica on `vendor` is rendered from (placement aside: precision, devices and
    nodes are compared on their own)."""
    runtime = spec.runtimes.get(vendor)
    material = {
        "model": spec.model.wire(),
        "runtime": runtime.wire() if runtime else None,
        "metrics": spec.metrics.wire() if spec.metrics else None,
        "nodesPerReplica": spec.nodes_per_replica,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return digest[:HASH_LENGTH]
