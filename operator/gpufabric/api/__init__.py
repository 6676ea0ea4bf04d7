"""The API: pydantic models of ComputeNode and AgentWorkload, the single source of truth for the CRDs."""

from gpufabric.api.agentworkload import AgentWorkload, AgentWorkloadSpec, AgentWorkloadStatus
from gpufabric.api.common import API_GROUP, API_VERSION, GROUP_VERSION
from gpufabric.api.computenode import ComputeNode, ComputeNodeSpec, ComputeNodeStatus

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "GROUP_VERSION",
    "AgentWorkload",
    "AgentWorkloadSpec",
    "AgentWorkloadStatus",
    "ComputeNode",
    "ComputeNodeSpec",
    "ComputeNodeStatus",
]
