"""Reconciliation: the operator's decisions as pure functions — ledger, scaling, rolling updates, node loss,
status — from plain cluster state to a list of actions the controller carries out."""

from gpufabric.reconcile.actions import (
    Action,
    ApplyConfigMap,
    CreatePod,
    CreateService,
    DeleteConfigMap,
    DeletePod,
    DeleteService,
    Event,
    PatchStatus,
    ScaleWorkload,
)
from gpufabric.reconcile.passes import Outcome, Settings, reconcile
from gpufabric.reconcile.state import ClusterState, InvalidWorkload, NodeHealth, OwnedService, PodRecord

__all__ = [
    "Action",
    "ApplyConfigMap",
    "ClusterState",
    "CreatePod",
    "CreateService",
    "DeleteConfigMap",
    "DeletePod",
    "DeleteService",
    "Event",
    "InvalidWorkload",
    "NodeHealth",
    "Outcome",
    "OwnedService",
    "PatchStatus",
    "PodRecord",
    "ScaleWorkload",
    "Settings",
    "reconcile",
]
