"""The operator's vocabulary on the wire: condition types, condition reasons and event reasons, each
spelled once. Users alert and script on these (`kubectl wait --for=condition=Ready`, a PrometheusRule on
`Placed`/`Unschedulable`), so they are part of the API; the README lists them and a test keeps the two
lists equal."""

from __future__ import annotations

from enum import StrEnum

# Read, not written: kube-scheduler's reason on a pod's PodScheduled=False condition when no Node fits it.
# (The sandbox's simulated scheduler writes it, as kube-scheduler would.)
KUBE_SCHEDULER_UNSCHEDULABLE = "Unschedulable"
# Kubernetes' own word for a pod not yet running (status.phase), which the sandbox's simulated API server and
# kubelets write; spelled here because one of our reasons happens to be the same word.
POD_PHASE_PENDING = "Pending"
# Node lifecycle's reason on the Ready=False condition it sets on the pods of an unreachable Node (the
# sandbox's stand-in kubelets play node lifecycle on a real control plane).
NODE_LIFECYCLE_NODE_NOT_READY = "NodeNotReady"


class ConditionType(StrEnum):
    # AgentWorkload
    PLACED = "Placed"
    READY = "Ready"
    DEGRADED = "Degraded"
    THROUGHPUT_BELOW_TARGET = "ThroughputBelowTarget"
    AUTOSCALING = "Autoscaling"
    # ComputeNode (and Ready above)
    HEALTHY = "Healthy"


class ConditionReason(StrEnum):
    # Placed
    ALL_REPLICAS_PLACED = "AllReplicasPlaced"
    UNSCHEDULABLE = "Unschedulable"
    PENDING = "Pending"
    INVALID_SPEC = "InvalidSpec"
    # Ready (AgentWorkload)
    ALL_REPLICAS_READY = "AllReplicasReady"
    REPLICAS_NOT_READY = "ReplicasNotReady"
    SCALED_TO_ZERO = "ScaledToZero"
    # Degraded
    PODS_UNSCHEDULABLE = "PodsUnschedulable"
    ARGS_CONFLICT = "ArgsConflict"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    AS_EXPECTED = "AsExpected"
    # ThroughputBelowTarget
    TARGET_MET = "TargetMet"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    MAX_REPLICAS_REACHED = "MaxReplicasReached"
    SCALING = "Scaling"
    # Autoscaling
    TOKENS_PER_SECOND_TARGET = "TokensPerSecondTarget"
    EXTERNAL_SCALER = "ExternalScaler"
    # Ready (ComputeNode)
    NODE_READY = "NodeReady"
    NODE_NOT_READY = "NodeNotReady"
    NODE_NOT_FOUND = "NodeNotFound"
    # Healthy
    AS_DECLARED = "AsDeclared"
    CORDONED = "Cordoned"
    OVERCOMMITTED = "Overcommitted"
    FEWER_DEVICES_ADVERTISED = "FewerDevicesAdvertised"


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class EventReason(StrEnum):
    PLACED = "Placed"
    UNSCHEDULABLE = "Unschedulable"
    RESCHEDULED = "Rescheduled"
    DRAINING = "Draining"
    ROLLING_UPDATE = "RollingUpdate"
    SCALED_DOWN = "ScaledDown"
    SCALED = "Scaled"
    AUTOSCALED = "Autoscaled"
    INVALID_SPEC = "InvalidSpec"
    GANG_RESTARTED = "GangRestarted"
    # the API server refused a write as invalid (422)
    CREATE_FAILED = "CreateFailed"
    UPDATE_FAILED = "UpdateFailed"
    DELETE_FAILED = "DeleteFailed"


# Which reasons each condition type takes, the object it appears on, and what True means: the README's table
# is generated from this and checked against it.
CONDITIONS: tuple[tuple[str, ConditionType, str, tuple[ConditionReason, ...]], ...] = (
    (
        "AgentWorkload",
        ConditionType.PLACED,
        "every replica has nodes",
        (
            ConditionReason.ALL_REPLICAS_PLACED,
            ConditionReason.UNSCHEDULABLE,
            ConditionReason.PENDING,
            ConditionReason.INVALID_SPEC,
        ),
    ),
    (
        "AgentWorkload",
        ConditionType.READY,
        "every replica serves",
        (ConditionReason.ALL_REPLICAS_READY, ConditionReason.REPLICAS_NOT_READY, ConditionReason.SCALED_TO_ZERO),
    ),
    (
        "AgentWorkload",
        ConditionType.DEGRADED,
        "some replicas do not serve, kube-scheduler refuses pods, or a custom command line contradicts the placement",
        (
            ConditionReason.PODS_UNSCHEDULABLE,
            ConditionReason.ARGS_CONFLICT,
            ConditionReason.REPLICAS_UNAVAILABLE,
            ConditionReason.AS_EXPECTED,
        ),
    ),
    (
        "AgentWorkload",
        ConditionType.THROUGHPUT_BELOW_TARGET,
        "predicted capacity is below the tokens/s target",
        (
            ConditionReason.TARGET_MET,
            ConditionReason.INSUFFICIENT_CAPACITY,
            ConditionReason.MAX_REPLICAS_REACHED,
            ConditionReason.SCALING,
        ),
    ),
    (
        "AgentWorkload",
        ConditionType.AUTOSCALING,
        "the tokens/s autoscaler owns spec.replicas",
        (ConditionReason.TOKENS_PER_SECOND_TARGET, ConditionReason.EXTERNAL_SCALER),
    ),
    (
        "ComputeNode",
        ConditionType.READY,
        "its Node exists and is Ready",
        (ConditionReason.NODE_READY, ConditionReason.NODE_NOT_READY, ConditionReason.NODE_NOT_FOUND),
    ),
    (
        "ComputeNode",
        ConditionType.HEALTHY,
        "its Node offers the devices declared, and our replicas and others' pods fit in them",
        (
            ConditionReason.AS_DECLARED,
            ConditionReason.CORDONED,
            ConditionReason.OVERCOMMITTED,
            ConditionReason.FEWER_DEVICES_ADVERTISED,
        ),
    ),
)
