"""`AgentWorkload`: one LLM serving fleet for agents — which model, how many replicas, which precisions
and vendors it accepts, and the tokens/s it should deliver. Namespaced."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

from gpufabric.api.common import (
    ENV_NAME_PATTERN,
    GROUP_VERSION,
    HTTP_PATH_PATTERN,
    MAX_LIST_ITEMS,
    MAX_MESSAGE_LENGTH,
    NO_WHITESPACE_PATTERN,
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
from gpufabric.engines import PROFILES, Engine, profile
from gpufabric.vendors import PLUGIN_OWNED_ENV, Precision, Vendor

MAX_REPLICAS = 1000
# Sizes the throughput model is meant for: below 100 M parameters per-token overheads, not weight reads,
# bound a decode step and the predicted tokens/s would be fiction; above 20 T no model has been published.
MIN_PARAMETERS_BILLIONS = 0.1
MAX_PARAMETERS_BILLIONS = 20000.0
MAX_DEVICES_PER_REPLICA = 512
MAX_NODES_PER_REPLICA = 64
# vLLM's OpenAI-compatible server listens on 8000 and serves /health and /metrics there
# (docs.vllm.ai/en/stable/serving/openai_compatible_server.html).
DEFAULT_PORT = 8000
DEFAULT_HEALTH_PATH = "/health"
DEFAULT_METRICS_PATH = "/metrics"
AUTO: Literal["auto"] = "auto"

HttpPath = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=HTTP_PATH_PATTERN)]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=ENV_NAME_PATTERN)]


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
    optional: Annotated[bool, Field(strict=True)] | None = None


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


_PRECISION_NAMES = tuple(p.value for p in Precision)
CHECKPOINT_KEYS_MESSAGE = f"keys must be precisions: {', '.join(_PRECISION_NAMES)}"


def _precision_keys(value: Any) -> Any:
    if isinstance(value, dict) and any(key not in _PRECISION_NAMES for key in value):
        raise PydanticCustomError("precision", CHECKPOINT_KEYS_MESSAGE)
    return value


ModelPath = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=NO_WHITESPACE_PATTERN)]


class ModelSpec(WireModel):
    """The model served. Its size and context decide how many devices one replica needs."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=NO_WHITESPACE_PATTERN)] = Field(
        description="Model identifier the runtime loads, e.g. `meta-llama/Llama-3.1-70B-Instruct` or a path."
    )
    parameters_billions: Annotated[
        float, Field(strict=True, ge=MIN_PARAMETERS_BILLIONS, le=MAX_PARAMETERS_BILLIONS)
    ] = Field(description="Parameter count in billions (total, for mixture-of-experts models), from 0.1 to 20000.")
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

    crd_rules = (
        # The schema's `minimum: 0.1` does not refuse 0: kube-openapi compares an integer value with the
        # bound truncated to an integer (seen on v1.36). The rule does; here `ge` refuses first.
        Rule(
            # double(): celpy, which the tests check rules with, reads an integer value as an int.
            cel=f"double(self.parametersBillions) >= {MIN_PARAMETERS_BILLIONS}",
            holds=lambda m: m.parameters_billions >= MIN_PARAMETERS_BILLIONS,
            message=f"parametersBillions must be at least {MIN_PARAMETERS_BILLIONS} (100 million parameters)",
            field_path=".parametersBillions",
        ),
    )


class ImagePullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class Metrics(WireModel):
    """Where a serving engine exposes its token counters (Prometheus text format). Unset fields come from the
    engine's profile (its own names: vLLM's, SGLang's, MindIE's); for `custom` engines, vLLM's."""

    port: Port | None = Field(default=None, description="Metrics port; the runtime's port when unset.")
    path: HttpPath | None = None
    prompt_tokens_counter: MetricName | None = None
    generation_tokens_counter: MetricName | None = None
    waiting_requests_gauge: MetricName | None = Field(
        default=None,
        description="Gauge of queued requests: while it is above zero the replica is saturated, and its rate "
        "teaches the operator what the devices can do.",
    )


@dataclass(frozen=True)
class ResolvedMetrics:
    """Where and under which names one runtime's engine reports tokens, every field decided."""

    port: int
    path: str
    prompt_tokens_counter: str
    generation_tokens_counter: str
    waiting_requests_gauge: str


def _vendors_of(engine: Engine) -> tuple[str, ...]:
    return tuple(sorted(v.value for v in PROFILES[engine].vendors))


def runtime_fits(vendor: Vendor, runtime: Runtime) -> bool:
    """The runtime's engine runs on `vendor` (sglang only on nvidia, mindie only on ascend)."""
    return vendor in profile(runtime.engine).vendors


def _owned_flags_rule(engine: Engine) -> Rule:
    flags = profile(engine).owned_flags

    def holds(runtime: Runtime) -> bool:
        return runtime.engine != engine or not profile(engine).owned_in(runtime.args)

    # Exact matches and `--flag=` prefixes: a regex over every argument would exceed the API server's CEL cost
    # budget for a list of 256 strings of 4096 characters (measured on kube-apiserver 1.36: 8.9x).
    prefixes = " || ".join(f"a.startsWith('{flag}=')" for flag in flags)
    return Rule(
        cel=f"self.engine != '{engine.value}' || !has(self.args) || "
        f"!self.args.exists(a, a in {cel_list(flags)} || {prefixes})",
        holds=holds,
        message=f"args must not set what the operator decides for engine {engine.value} from its placement "
        f"({', '.join(flags)}); use engine: custom to run your own command line",
        field_path=".args",
    )


class Runtime(WireModel):
    """How to run the serving engine on one vendor's devices (vLLM, SGLang, MindIE, vLLM-MUSA…)."""

    engine: Engine = Field(
        default=Engine.CUSTOM,
        description="vllm, sglang or mindie: the operator renders the engine's command line from its placement "
        "(model or its checkpoint, tensor/pipeline parallelism, nodes, precision, context); `args` are appended. "
        "custom (the default, so manifests written before engines keep their meaning): `command` and `args` run "
        "as written, with the placement in GPUFABRIC_* environment variables.",
    )
    image: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=NO_WHITESPACE_PATTERN)]
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
    metrics: Metrics | None = Field(
        default=None, description="Overrides of the engine's metric names for this runtime (over spec.metrics)."
    )
    checkpoints: Annotated[
        dict[Precision, ModelPath], BeforeValidator(_precision_keys), Field(max_length=len(Precision))
    ] = Field(
        default_factory=dict,
        description="Weights this runtime loads per precision instead of spec.model.name: quantized checkpoints, "
        "e.g. {INT8: a W8A8 conversion for this vendor's engine}. Precisions an engine serves only from such "
        "weights are never chosen without one.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"self.all(k, k in {cel_list(_PRECISION_NAMES)})", "message": CHECKPOINT_KEYS_MESSAGE}
            ]
        },
    )

    def weights_for(self, model: ModelSpec, precision: Precision) -> str:
        """What to load at `precision`: this runtime's checkpoint for it, else the model itself."""
        return self.checkpoints.get(precision, model.name)

    crd_rules = (
        Rule(
            cel="self.engine == 'custom' || !has(self.command) || size(self.command) == 0",
            holds=lambda s: s.engine == Engine.CUSTOM or not s.command,
            message="command is rendered by the operator for engines vllm, sglang and mindie; use engine: custom "
            "to run your own",
            field_path=".command",
        ),
        *(_owned_flags_rule(engine) for engine in (Engine.VLLM, Engine.SGLANG)),
        Rule(
            cel="self.engine != 'mindie' || !has(self.args) || size(self.args) == 0",
            holds=lambda s: s.engine != Engine.MINDIE or not s.args,
            message="args are not passed to mindie: it reads the config.json the operator renders",
            field_path=".args",
        ),
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

    target_tokens_per_second: Annotated[float, Field(strict=True, gt=0, le=1e9)] | None = Field(
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
            cel="self.runtimes.all(v, "
            + " && ".join(
                f"(self.runtimes[v].engine != '{e.value}' || v in {cel_list(_vendors_of(e))})"
                for e in (Engine.SGLANG, Engine.MINDIE)
            )
            + ")",
            holds=lambda s: all(runtime_fits(vendor, runtime) for vendor, runtime in s.runtimes.items()),
            message="an engine may only be the runtime of a vendor it runs on: sglang on nvidia, mindie on ascend "
            "(vllm and custom on any)",
            field_path=".runtimes",
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

    def metrics_for(self, vendor: Vendor) -> ResolvedMetrics:
        """Where the runtime for `vendor` reports tokens: its own overrides, then spec.metrics, then its
        engine's names."""
        runtime = self.runtimes[vendor]
        names = profile(runtime.engine).metrics
        layers = [m for m in (runtime.metrics, self.metrics) if m is not None]

        def pick(field: str, default: Any) -> Any:
            return next((getattr(m, field) for m in layers if getattr(m, field) is not None), default)

        return ResolvedMetrics(
            port=pick("port", runtime.port),
            path=pick("path", names.path),
            prompt_tokens_counter=pick("prompt_tokens_counter", names.prompt_counter),
            generation_tokens_counter=pick("generation_tokens_counter", names.generation_counter),
            waiting_requests_gauge=pick("waiting_requests_gauge", names.waiting_gauge),
        )


# --- status --------------------------------------------------------------------------------------


class ReplicaPlacement(WireModel):
    """Where one replica runs."""

    replica: Annotated[int, Field(strict=True, ge=0)]
    vendor: Vendor
    accelerator: ShortText
    precision: Precision
    devices_per_node: Annotated[int, Field(strict=True, ge=1)]
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

    observed_generation: Annotated[int, Field(strict=True, ge=0)] | None = None
    conditions: Conditions = Field(default_factory=list)
    replicas: Annotated[int, Field(strict=True, ge=0)] = 0
    ready_replicas: Annotated[int, Field(strict=True, ge=0)] = 0
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
