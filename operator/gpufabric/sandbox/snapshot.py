"""What the sandbox shows: plain, frozen data the live view and the summary are rendered from.

The orchestrator (`sandbox.run`) builds a `Snapshot` from the API objects and its own clocks about once a second,
and a `Summary` when the run ends; `sandbox.view` only formats them. Times are seconds since the sandbox started.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeRow:
    name: str
    vendor: str  # "nvidia", "mthreads", "ascend"
    accelerator: str  # e.g. "H100-SXM5-80GB"
    domain: str | None  # RoCE domain, None when the node is on no fabric
    devices: int  # declared in the ComputeNode
    used: int  # promised to replicas (the ComputeNode's status)
    ready: bool  # the Kubernetes Node is Ready
    others: int = 0  # held by pods the operator does not manage (the ComputeNode's status.heldByOthers)
    real: int = 0  # of `used`, the devices of the replica a real engine serves (`--real-engine`)


@dataclass(frozen=True)
class WorkloadRow:
    namespace: str
    name: str
    replicas: int  # spec.replicas (the autoscaler may change it)
    ready: int  # status.readyReplicas
    # "vendor/accelerator/precision xN" per distinct kind, e.g. "nvidia/H100-SXM5-80GB/FP8 x2"
    placements: tuple[str, ...]
    tokens_per_second: float | None  # measured generation tokens/s in status, None before the first scrape
    target: float | None  # spec.throughput.targetTokensPerSecond
    demand: float  # generation tokens/s the simulated clients ask for now
    phase: str  # the Ready condition's reason, e.g. "Ready", "Unschedulable", "Progressing"
    real: bool = False  # its replica runs a real engine (`--real-engine`); its demand is the real clients' count


@dataclass(frozen=True)
class LogLine:
    at: float
    text: str  # an event the operator posted ("Placed ...") or one the scenario caused ("node gpu-a-h100-01 failed")
    # "operator" (its Events), "scenario" (what the scenario did), "log" (warnings: the operator's, the simulation's)
    # or "real" (the real engine's progress, with --real-engine)
    source: str = "operator"


@dataclass(frozen=True)
class Snapshot:
    elapsed: float
    duration: float
    nodes: tuple[NodeRow, ...]
    workloads: tuple[WorkloadRow, ...]
    log: tuple[LogLine, ...]  # the latest lines, oldest first
    api: str = "in-process emulator"  # what serves the Kubernetes API
    real_engine: str | None = None  # with --real-engine: where the real engine is ("loading the model (23s)")


@dataclass(frozen=True)
class Recovery:
    """A replica lost with a node, and how long until it ran (Ready) elsewhere."""

    node: str
    workload: str  # "namespace/name"
    replica: int
    failed_at: float
    recovered_after: float | None  # None: not running elsewhere when the run ended


@dataclass(frozen=True)
class Scaling:
    at: float
    workload: str  # "namespace/name"
    before: int
    after: int
    reason: str  # the operator's event message


@dataclass(frozen=True)
class ForeignJobReport:
    """A job of someone else's that the scenario ran on a node, and how the operator placed around it."""

    pod: str  # "namespace/name"
    node: str  # the ComputeNode it ran on
    devices: int  # what it asked for: every device the node declares
    resource: str  # the device resource it asked for (the ComputeNode's)
    started_at: float
    ended_at: float | None  # None: still running when the run ended
    rejected: str | None  # the kubelet's refusal (the node's devices were in use), else None
    held_seen: int  # the most the node's ComputeNode status counted as held by others while it ran
    placed: int  # replicas the operator placed while it ran
    placed_on_node: int  # of those, on its node


@dataclass(frozen=True)
class RealEngineReport:
    """The replica that ran a real engine (`--real-engine`): when it was Ready, what the operator measured of it,
    and what its clients counted themselves. Times are the run's; None where it did not get that far."""

    workload: str  # "namespace/name"
    phase: str  # its workload's Ready condition reason at the end
    log: str  # the engine's output, kept after the run
    node: str | None = None  # the ComputeNode its pod ran on
    address: str | None = None  # "ip:port" the engine listened at
    started_at: float | None = None  # its pod Running: the engine process started
    ready_at: float | None = None  # its /health answered: the pod Ready
    exited: str | None = None  # "exited with code 1: <its last line>" when the process ended by itself
    load_started_at: float | None = None  # the clients' first request (after the operator's first scrape)
    load_seconds: float = 0.0  # how long the clients sent requests
    concurrency: int = 0  # requests in flight at once
    requests: int = 0  # completions the clients received
    errors: int = 0  # requests that failed
    last_error: str | None = None
    client_tokens: int = 0  # generated tokens the clients counted (usage.completion_tokens), over the load
    operator_tokens: float | None = None  # what the operator's gpufabric_tokens_total grew by over the same
    measured: float | None = None  # status.tokensPerSecond.generation: the operator's rate, as written
    measured_at: float | None = None  # when the sandbox saw it written
    # whether a whole window (and a scrape) of the clients' load lay behind that write: if not, the operator's
    # window also held samples from before the load, and the two rates cover different spans
    measured_settled: bool = False
    client_rate: float | None = None  # the clients' generation tokens/s over the operator's window then


@dataclass(frozen=True)
class Summary:
    elapsed: float
    replicas_per_vendor: dict[str, int]  # Ready replicas per vendor at the end
    # mean measured generation tokens/s over the run, by (vendor, precision), from the operator's own metrics
    tokens_per_vendor_precision: dict[tuple[str, str], float]
    recoveries: tuple[Recovery, ...]
    scalings: tuple[Scaling, ...]
    workloads: tuple[WorkloadRow, ...]  # the final rows
    unplaced: tuple[str, ...] = field(default=())  # "namespace/name: why" for workloads never fully placed
    foreign_jobs: tuple[ForeignJobReport, ...] = field(default=())
    real_engine: RealEngineReport | None = None  # with --real-engine
