"""Placement: where each replica of an AgentWorkload runs. Pure: plain data in, decisions out."""

from gpufabric.placement.engine import Decision, PlacementResult, Refusal, place
from gpufabric.placement.estimates import PriorThroughput, ThroughputSource
from gpufabric.placement.requests import ReplicaRequest, WorkloadRequest, pending_replicas
from gpufabric.placement.snapshot import ExistingReplica, NodeClass, Snapshot
from gpufabric.placement.weights import Weights

__all__ = [
    "Decision",
    "ExistingReplica",
    "NodeClass",
    "PlacementResult",
    "PriorThroughput",
    "Refusal",
    "ReplicaRequest",
    "Snapshot",
    "ThroughputSource",
    "Weights",
    "WorkloadRequest",
    "pending_replicas",
    "place",
]
