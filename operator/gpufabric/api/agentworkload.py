"""`AgentWorkload`: one LLM serving fleet for agents — which model, how many replicas, which precisions
and vendors it accepts, and the tokens/s it should deliver. Namespaced."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

from gpufabric.api.common import (
    GROUP_VERSION,
    MAX_LIST_ITEMS,
    MAX_MESSAGE_LENGTH,
    QUANTITY_PATTERN,
    RESOURCE_KEY_MESSAGE,
    RESOURCE_NAME_PATTERN,
    SET_LIST,
    UNIQUE,
    Conditions,
    LabelSelector,
    MetricName,
    Name,
    ObjectMeta,
    Port,
    Rule,
    ShortText,
    WireModel,
    cel_list,
    cel_pattern,
    keys_matching,
)
from gpufabric.api.computenode import DomainName
from gpufabric.api.refs import Allocation, ObjectRef, workload_ref
from gpufabric.api.tokens import TokensPerSecond
from gpufabric.vendors import PLUGIN_OWNED_ENV, Precision, Vendor

MAX_REPLICAS = 1000
MAX_DEVICES_PER_REPLICA = 512
MAX_NODES_PER_REPLICA = 64
# vLLM's OpenAI-compatible server listens on 8000 and serves /health and /metrics there
# (docs.vllm.ai/en/stable/serving/openai_compatible_server.html).
DEFAULT_PORT = 8000
DEFAULT_HEALTH_PATH = "/health"
DEFAULT_METRICS_PATH = "/metrics"
# vLLM's token counters (docs.vllm.ai/en/stable/usage/metrics.html).
DEFAULT_PROMPT_TOKENS_COUNTER = "vllm:prompt_tokens_total"
DEFAULT_GENERATION_TOKENS_COUNTER = "vllm:generation_tokens_total"
DEFAULT_WAITING_REQUESTS_GAUGE = "vllm:num_requests_waiting"
AUTO: Literal["auto"] = "auto"

HttpPath = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^/[^\s]*$")]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]


# --- devicesPerReplica: "auto" or a number -----------------------------------------------------

DEVICES_PER_REPLICA_MESSAGE = f"must be 'auto' or an integer from 1 to {MAX_DEVICES_PER_REPLICA}"


def _devices_per_replica(value: Any) -> int | str:
    if value == AUTO:
        return AUTO
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_DEVICES_PER_REPLICA:
        return value
    raise PydanticCustomError("devices_per_replica", DEVICES_PER_REPLICA_MESSAGE)


DevicesPerReplica = Annotated[
    int | Literal["auto"],
    BeforeValidator(_devices_per_replica),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": f"type(self) == string ? self == 'auto' : (self >= 1 && self <= {MAX_DEVICES_PER_REPLICA})",
                    "message": DEVICES_PER_REPLICA_MESSAGE,
                }
            ],
        }
    ),
]


# --- quantities ----------------------------------------------------------------------------------

_QUANTITY_MESSAGE = "must be a Kubernetes quantity such as 4, 500m, 64Gi"


def _quantity(value: Any) -> str:
    if isinstance(value, bool):
        raise PydanticCustomError("quantity", _QUANTITY_MESSAGE)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and re.fullmatch(QUANTITY_PATTERN, value):
        return value
    raise PydanticCustomError("quantity", _QUANTITY_MESSAGE)


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
_RESOURCE_KEYS, _RESOURCE_KEYS_RULE = keys_matching(RESOURCE_NAME_PATTERN, RESOURCE_KEY_MESSAGE)
ResourceList = Annotated[
    dict[Annotated[str, StringConstraints(max_length=253)], Quantity],
    _RESOURCE_KEYS,
    Field(max_length=32, json_schema_extra=_RESOURCE_KEYS_RULE),
]


class ResourceRequirements(WireModel):
    """Extra resources for the serving container (CPU, memory, hugepages…). The accelerator itself and
    the RDMA resource are added by the operator from the chosen node."""

    requests: ResourceList = Field(default_factory=dict)
    limits: ResourceList = Field(default_factory=dict)


# --- environment ---------------------------------------------------------------------------------


class KeySelector(WireModel):
    name: Name
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    optional: bool | None = None


class FieldSelector(WireModel):
    field_path: Annotated[str, StringConstraints(min_length=1, max_length=253)]


class EnvVarSource(WireModel):
    secret_key_ref: KeySelector | None = None
    config_map_key_ref: KeySelector | None = None
    field_ref: FieldSelector | None = None

    crd_rules = (
        Rule(
            cel="[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)].filter(x, x).size() == 1",
            holds=lambda s: sum(x is not None for x in (s.secret_key_ref, s.config_map_key_ref, s.field_ref)) == 1,
            message="exactly one of secretKeyRef, configMapKeyRef and fieldRef must be set",
        ),
    )


class EnvVar(WireModel):
    name: EnvName
    value: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_LENGTH)] | None = None
    value_from: EnvVarSource | None = None

    crd_rules = (
        Rule(
            cel="!(has(self.value) && has(self.valueFrom))",
            holds=lambda s: not (s.value is not None and s.value_from is not None),
            message="value and valueFrom are mutually exclusive",
        ),
    )


# --- spec ----------------------------------------------------------------------------------------

_VENDOR_NAMES = tuple(str(v) for v in Vendor)
RUNTIME_KEYS_MESSAGE = f"keys must be vendors: {', '.join(_VENDOR_NAMES)}"


def _vendor_keys(value: Any) -> Any:
    # The CRD states this as a CEL rule over the map's keys (structural schemas have no propertyNames);
    # the same sentence here keeps both error messages alike.
    if isinstance(value, dict) and any(key not in _VENDOR_NAMES for key in value):
        raise PydanticCustomError("vendor", RUNTIME_KEYS_MESSAGE)
    return value


class Architecture(WireModel):
    """The attention shape that sets KV-cache size per token (from the model's config.json:
    num_hidden_layers, num_key_value_heads, head_dim)."""

    layers: Annotated[int, Field(strict=True, ge=1, le=1024)]
    kv_heads: Annotated[int, Field(strict=True, ge=1, le=1024)]
    head_dim: Annotated[int, Field(strict=True, ge=1, le=4096)]


class ModelSpec(WireModel):
    """The model served. Its size and context decide how many devices one replica needs."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[^\s]+$")] = Field(
        description="Model identifier the runtime loads, e.g. `meta-llama/Llama-3.1-70B-Instruct` or a path."
    )
    parameters_billions: Annotated[float, Field(gt=0, le=20000)] = Field(
        description="Parameter count in billions (total, for mixture-of-experts models)."
    )
    context_length: Annotated[int, Field(strict=True, ge=256, le=10_000_000)] = Field(
        default=8192, description="Longest sequence (prompt + output) one request may use, in tokens."
    )
    served_name: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = Field(
        default=None, description="Name clients use in API calls; defaults to `name`."
    )
    architecture: Architecture | None = Field(
        default=None,
        description="Attention shape for exact KV-cache sizing; estimated from parametersBillions when unset.",
    )


class ImagePullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class Runtime(WireModel):
    """How to run the serving engine on one vendor's devices (vLLM, SGLang, MindIE, vLLM-MUSA…)."""

    image: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\s]+$")]
    image_pull_policy: ImagePullPolicy | None = None
    command: Annotated[list[Annotated[str, StringConstraints(max_length=4096)]], Field(max_length=64)] = Field(
        default_factory=list
    )
    args: Annotated[list[Annotated[str, StringConstraints(max_length=4096)]], Field(max_length=256)] = Field(
        default_factory=list
    )
    env: Annotated[list[EnvVar], Field(max_length=128)] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    port: Port = Field(default=DEFAULT_PORT, description="Port the server listens on (API and, by default, metrics).")
    health_path: HttpPath = Field(default=DEFAULT_HEALTH_PATH, description="HTTP path of the readiness probe.")
    resources: ResourceRequirements | None = None

    crd_rules = (
        Rule(
            cel=f"!has(self.env) || self.env.all(e, !(e.name in {cel_list(PLUGIN_OWNED_ENV)}))",
            holds=lambda s: not any(e.name in PLUGIN_OWNED_ENV for e in s.env),
            message=f"env must not set {', '.join(PLUGIN_OWNED_ENV)}: device plugins set them, and a pod "
            "that sets them itself sees devices it was not allocated",
            field_path=".env",
        ),
    )


class SpreadPolicy(StrEnum):
    NODE = "Node"
    ROCE_DOMAIN = "RoceDomain"
    NONE = "None"


class Placement(WireModel):
    """Where replicas may go, and how they should spread."""

    node_selector: LabelSelector | None = Field(
        default=None,
        description="Selector over ComputeNode labels (metadata.labels with spec.labels over them).",
    )
    roce_domains: Annotated[list[DomainName], Field(max_length=MAX_LIST_ITEMS), UNIQUE] | None = Field(
        default=None, description="RoCE domains replicas may use; all when unset.", json_schema_extra=SET_LIST
    )
    spread: SpreadPolicy = Field(
        default=SpreadPolicy.NODE,
        description="Prefer replicas on distinct nodes (Node), distinct RoCE domains first (RoceDomain), or "
        "pack them (None).",
    )


class Throughput(WireModel):
    """Token-throughput goal and the replica range an autoscaler may use to meet it."""

    target_tokens_per_second: Annotated[float, Field(gt=0, le=1e9)] | None = Field(
        default=None, description="Generation tokens/s the fleet should sustain."
    )
    min_replicas: Annotated[int, Field(strict=True, ge=0, le=MAX_REPLICAS)] = 1
    max_replicas: Annotated[int, Field(strict=True, ge=1, le=MAX_REPLICAS)] | None = None

    crd_rules = (
        Rule(
            cel="!has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
            holds=lambda s: s.max_replicas is None or s.min_replicas <= s.max_replicas,
            message="minReplicas must not exceed maxReplicas",
            field_path=".minReplicas",
        ),
        Rule(
            cel="!has(self.targetTokensPerSecond) || has(self.maxReplicas)",
            holds=lambda s: s.target_tokens_per_second is None or s.max_replicas is not None,
            message="maxReplicas is required with targetTokensPerSecond",
            field_path=".maxReplicas",
        ),
    )


class Metrics(WireModel):
    """Where each replica's serving engine exposes its token counters (Prometheus text format)."""

    port: Port | None = Field(default=None, description="Metrics port; the runtime's port when unset.")
    path: HttpPath = DEFAULT_METRICS_PATH
    prompt_tokens_counter: MetricName = DEFAULT_PROMPT_TOKENS_COUNTER
    generation_tokens_counter: MetricName = DEFAULT_GENERATION_TOKENS_COUNTER
    waiting_requests_gauge: MetricName | None = Field(
        default=DEFAULT_WAITING_REQUESTS_GAUGE,
        description="Gauge of queued requests: while it is above zero the replica is saturated, and its rate "
        "teaches the operator what the devices can do (SGLang: sglang:num_queue_reqs).",
    )

    def port_for(self, runtime: Runtime) -> int:
        """Where the counters are served: this port, else the runtime's serving port."""
        return self.port or runtime.port


class AgentWorkloadSpec(WireModel):
    """What the platform team asks for: a model served by `replicas` replicas on any vendor it has a runtime
    for, at the first precision the chosen accelerator supports."""

    model: ModelSpec
    replicas: Annotated[int, Field(strict=True, ge=0, le=MAX_REPLICAS)] = 1
    priority: Annotated[int, Field(strict=True, ge=-1000, le=1000)] = Field(
        default=0, description="Higher priorities are placed first when devices are scarce."
    )
    precisions: Annotated[list[Precision], Field(min_length=1, max_length=5), UNIQUE] = Field(
        default_factory=lambda: [Precision.BF16, Precision.FP16],
        description="Accepted precisions, most preferred first.",
        json_schema_extra={**SET_LIST, "default": [Precision.BF16.value, Precision.FP16.value]},
    )
    runtimes: Annotated[
        dict[Vendor, Runtime], BeforeValidator(_vendor_keys), Field(min_length=1, max_length=len(Vendor))
    ] = Field(
        description="Serving runtime per vendor; the workload may run only on vendors listed here.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"self.all(k, k in {cel_list(_VENDOR_NAMES)})", "message": RUNTIME_KEYS_MESSAGE}
            ]
        },
    )
    vendor_preference: Annotated[list[Vendor], Field(max_length=len(Vendor)), UNIQUE] | None = Field(
        default=None,
        description="Vendors in order of preference; unlisted runtimes come after, in table order.",
        json_schema_extra=SET_LIST,
    )
    devices_per_replica: DevicesPerReplica = Field(
        default=AUTO,
        description="Devices per replica: `auto` sizes from the model and the chosen precision; a number fixes it.",
    )
    nodes_per_replica: Annotated[int, Field(strict=True, ge=1, le=MAX_NODES_PER_REPLICA)] = Field(
        default=1, description="Nodes one replica spans (a gang inside one RoCE domain) when above 1."
    )
    placement: Placement | None = None
    throughput: Throughput | None = None
    metrics: Metrics | None = None

    crd_rules = (
        Rule(
            cel="!has(self.vendorPreference) || self.vendorPreference.all(v, v in self.runtimes)",
            holds=lambda s: all(v in s.runtimes for v in s.vendor_preference or ()),
            message="every vendor in vendorPreference needs an entry in runtimes",
            field_path=".vendorPreference",
        ),
        Rule(
            cel="type(self.devicesPerReplica) == string || self.devicesPerReplica % self.nodesPerReplica == 0",
            holds=lambda s: s.devices_per_replica == AUTO or s.devices_per_replica % s.nodes_per_replica == 0,
            message="devicesPerReplica must be a multiple of nodesPerReplica",
            field_path=".devicesPerReplica",
        ),
    )

    @property
    def vendor_order(self) -> tuple[Vendor, ...]:
        """Vendors this workload may run on, most preferred first."""
        preferred = list(self.vendor_preference or ())
        rest = [v for v in Vendor if v in self.runtimes and v not in preferred]
        return (*preferred, *rest)

    @property
    def metrics_or_default(self) -> Metrics:
        return self.metrics or Metrics()


# --- status --------------------------------------------------------------------------------------


class ReplicaPlacement(WireModel):
    """Where one replica runs."""

    replica: Annotated[int, Field(ge=0)]
    vendor: Vendor
    accelerator: ShortText
    precision: Precision
    devices_per_node: Annotated[int, Field(ge=1)]
    nodes: Annotated[list[Name], Field(min_length=1, max_length=MAX_NODES_PER_REPLICA)] = Field(
        description="ComputeNodes of the replica, rank 0 first."
    )
    tokens_per_second: TokensPerSecond | None = None

    @classmethod
    def of(cls, replica: int, allocation: Allocation, tokens: TokensPerSecond | None = None) -> ReplicaPlacement:
        return cls(
            replica=replica,
            vendor=allocation.vendor,
            accelerator=allocation.accelerator,
            precision=allocation.precision,
            devices_per_node=allocation.devices_per_node,
            nodes=list(allocation.nodes),
            tokens_per_second=tokens,
        )

    @property
    def allocation(self) -> Allocation:
        return Allocation(self.vendor, self.accelerator, self.precision, self.devices_per_node, tuple(self.nodes))


class AgentWorkloadStatus(WireModel):
    """What the operator observed and decided. Written by the operator only."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: Conditions = Field(default_factory=list)
    replicas: Annotated[int, Field(ge=0)] = 0
    ready_replicas: Annotated[int, Field(ge=0)] = 0
    placements: Annotated[list[ReplicaPlacement], Field(max_length=MAX_REPLICAS)] = Field(default_factory=list)
    unschedulable_reason: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_LENGTH)] | None = None
    selector: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Label selector of the workload's pods, for the scale subresource (HPA)."
    )
    vendors: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="Vendors the placed replicas run on, comma-separated, for `kubectl get`."
    )
    tokens_per_second: TokensPerSecond | None = None


# Pods are named `<workload>-<replica>-<rank>` and double as hostnames, and `<workload>` and
# `<workload>-<replica>` name Services: all must be DNS-1035 labels of at most 63 characters.
MAX_WORKLOAD_NAME = 50
WORKLOAD_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
WORKLOAD_NAME_MESSAGE = (
    f"metadata.name must start with a letter, hold only lowercase letters, digits and '-', and be at most "
    f"{MAX_WORKLOAD_NAME} characters: it names the workload's Services and pods"
)


class AgentWorkload(WireModel):
    crd_rules = (
        Rule(
            cel=f"self.metadata.name.matches({cel_pattern(WORKLOAD_NAME_PATTERN)}) && "
            f"size(self.metadata.name) <= {MAX_WORKLOAD_NAME}",
            holds=lambda w: (
                bool(re.fullmatch(WORKLOAD_NAME_PATTERN, w.metadata.name)) and len(w.metadata.name) <= MAX_WORKLOAD_NAME
            ),
            message=WORKLOAD_NAME_MESSAGE,
            field_path=".metadata.name",
        ),
    )

    api_version: Literal["gpufabric.io/v1alpha1"] = GROUP_VERSION  # type: ignore[assignment]
    kind: Literal["AgentWorkload"] = "AgentWorkload"
    metadata: ObjectMeta
    spec: AgentWorkloadSpec
    status: AgentWorkloadStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ref(self) -> ObjectRef:
        return workload_ref(self.namespace, self.name)
