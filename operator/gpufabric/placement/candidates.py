"""The ways one replica of a workload could run: per node class, each accepted precision it supports,
sized and valued. Computed once per workload per placement pass."""

from __future__ import annotations

from dataclasses import dataclass

from gpufabric.api.agentworkload import AUTO, AgentWorkloadSpec, ModelSpec
from gpufabric.engines import profile
from gpufabric.placement.estimates import ThroughputSource, replica_tokens_per_second
from gpufabric.placement.sizing import Sizing, size_replica
from gpufabric.placement.snapshot import NodeClass
from gpufabric.placement.weights import Weights
from gpufabric.vendors import Precision, Vendor


@dataclass(frozen=True)
class Candidate:
    class_id: int
    node_class: NodeClass
    precision: Precision
    devices_per_node: int
    nodes: int
    tokens_per_second: float
    value: float

    @property
    def devices(self) -> int:
        return self.devices_per_node * self.nodes


def vendor_rank(spec: AgentWorkloadSpec, vendor: Vendor) -> int | None:
    """0 for the most preferred vendor; None when the workload has no runtime for it. Without a
    vendorPreference every vendor with a runtime ranks 0: tokens/s alone decides."""
    if vendor not in spec.runtimes:
        return None
    preference = spec.vendor_preference or []
    return preference.index(vendor) if vendor in preference else len(preference)


def accepted_precisions(spec: AgentWorkloadSpec, node_class: NodeClass) -> list[tuple[int, Precision]]:
    """(preference rank, precision) the workload accepts, the class supports and the workload's engine on
    the class's vendor can serve (from the weights it has), most preferred first."""
    return [
        (rank, p)
        for rank, p in enumerate(spec.precisions)
        if p in node_class.precisions and engine_refusal(spec, node_class.vendor, p) is None
    ]


def engine_refusal(spec: AgentWorkloadSpec, vendor: Vendor, precision: Precision) -> str | None:
    """Why the workload's engine on `vendor` cannot serve it at `precision` (None: it can)."""
    runtime = spec.runtimes.get(vendor)
    if runtime is None:
        return None
    has_checkpoint = precision in runtime.checkpoints
    return profile(runtime.engine).why_not(vendor, precision, has_checkpoint, spec.nodes_per_replica)


def size_and_predict(
    model: ModelSpec,
    precision: Precision,
    node_class: NodeClass,
    *,
    nodes_per_replica: int,
    explicit_devices: int | None,
    source: ThroughputSource,
) -> tuple[Sizing, float] | None:
    """Devices one replica takes on this class at this precision, and its predicted tokens/s; None when it
    does not fit the class's nodes."""
    sizing = size_replica(
        model,
        precision,
        memory_gib=node_class.memory_gib,
        node_devices=node_class.devices,
        nodes_per_replica=nodes_per_replica,
        explicit_devices=explicit_devices,
    )
    if sizing is None:
        return None
    tokens = replica_tokens_per_second(
        source,
        accelerator=node_class.accelerator,
        memory_gib=node_class.memory_gib,
        precision=precision,
        parameters_billions=model.parameters_billions,
        devices_per_node=sizing.devices_per_node,
        nodes=sizing.nodes,
    )
    return sizing, tokens


def candidates_for(
    spec: AgentWorkloadSpec, classes: list[NodeClass], source: ThroughputSource, weights: Weights
) -> list[Candidate]:
    explicit = None if spec.devices_per_replica == AUTO else int(spec.devices_per_replica)
    found = []
    for class_id, node_class in enumerate(classes):
        rank = vendor_rank(spec, node_class.vendor)
        if rank is None or (spec.nodes_per_replica > 1 and not node_class.rdma):
            continue
        for precision_rank, precision in accepted_precisions(spec, node_class):
            option = size_and_predict(
                spec.model,
                precision,
                node_class,
                nodes_per_replica=spec.nodes_per_replica,
                explicit_devices=explicit,
                source=source,
            )
            if option is None:
                continue
            sizing, tokens = option
            value = tokens * weights.vendor_preference_decay**rank * weights.precision_preference_decay**precision_rank
            found.append(
                Candidate(class_id, node_class, precision, sizing.devices_per_node, sizing.nodes, tokens, value)
            )
    # Best value first; equal values keep class order, then precision preference (stable sort).
    return sorted(found, key=lambda c: -c.value)
