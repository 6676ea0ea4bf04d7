"""What the operator knows about each serving engine, in one table like the vendor table: how to start it
for a placement decision (model, served name, port, tensor/pipeline parallelism, nodes, precision, context),
which precisions it can serve on which vendor and from what weights, which flags it owns, and the names of
its token counters and queue gauge. Every fact carries its source.

Engines:
- `vllm`: upstream vLLM on NVIDIA; vllm-ascend on Ascend; vllm-musa on Moore Threads (both are platform
  plugins that keep vLLM's command line). Multi-node replicas use vLLM's documented Ray form.
- `sglang`: SGLang on NVIDIA, multi-node with its own flags.
- `mindie`: Huawei's MindIE Service on Ascend, configured by a `config.json` the operator renders.
- `custom`: the user's command and args, untouched; the decision reaches the container only as
  `GPUFABRIC_*` environment variables (usable as `$(GPUFABRIC_TENSOR_PARALLEL_SIZE)` in args).

Pure: no I/O, nothing above `vendors` imported.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gpufabric.vendors import Precision, Vendor


class Engine(StrEnum):
    VLLM = "vllm"
    SGLANG = "sglang"
    MINDIE = "mindie"
    CUSTOM = "custom"


@dataclass(frozen=True)
class MetricNames:
    """Where and under which names an engine reports tokens (Prometheus text format)."""

    prompt_counter: str
    generation_counter: str
    waiting_gauge: str
    path: str = "/metrics"


@dataclass(frozen=True)
class PrecisionSupport:
    """How an engine serves one precision on one vendor."""

    # flags added to the command line (none: the checkpoint's own config says it)
    flags: tuple[str, ...] = ()
    # flags when the weights come from the runtime's checkpoint for this precision (None: the same flags)
    checkpoint_flags: tuple[str, ...] | None = None
    # only from such a checkpoint: the engine cannot quantize the base weights itself
    needs_checkpoint: bool = False
    # (engine version, flags): from that release on, `flags` are spelled so (the image tag says the version)
    renamed: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Launch:
    """One pod's share of a placement decision, in the terms an engine's command line uses."""

    model: str  # what to load: the runtime's checkpoint for the precision, else spec.model.name
    from_checkpoint: bool
    served_name: str
    port: int
    vendor: Vendor
    precision: Precision
    devices_per_node: int
    nodes: int
    rank: int
    leader: str  # rank 0's stable DNS name (the replica's headless Service)
    context_length: int
    # the engine's release, from its image tag (`vllm/vllm-openai:v0.11.0` -> (0, 11, 0)); None when the
    # tag does not say (`latest`, a digest)
    engine_version: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Rendered:
    """What the pod's container runs, and files the operator must provide (path -> content)."""

    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    # env from the downward API: name -> field path (e.g. status.podIP)
    env_from_fields: tuple[tuple[str, str], ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    extra_ports: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class EngineProfile:
    engine: Engine
    precisions: Mapping[Vendor, Mapping[Precision, PrecisionSupport]]
    metrics: MetricNames
    multi_node: bool
    # flags the operator sets from its decision: user args may not set them
    owned_flags: tuple[str, ...]
    # whether user args are appended to the engine's command line at all
    takes_args: bool = True
    source: str = ""

    @property
    def vendors(self) -> frozenset[Vendor]:
        return frozenset(self.precisions)

    def why_not(self, vendor: Vendor, precision: Precision, has_checkpoint: bool, nodes: int) -> str | None:
        """None when this engine can serve the model at `precision` on `vendor` across `nodes` nodes; else
        the reason, as a refusal states it."""
        supported = self.precisions.get(vendor, {})
        if precision not in supported:
            return f"engine {self.engine.value} on {vendor.value} does not serve {precision.value}"
        if supported[precision].needs_checkpoint and not has_checkpoint:
            return (
                f"engine {self.engine.value} on {vendor.value} serves {precision.value} only from a quantized "
                f"checkpoint: set spec.runtimes.{vendor.value}.checkpoints.{precision.value}"
            )
        if nodes > 1 and not self.multi_node:
            return f"engine {self.engine.value} does not run one replica across nodes"
        return None

    def owned_in(self, args: tuple[str, ...] | list[str]) -> list[str]:
        """The operator's flags found in user args (`--flag value` or `--flag=value`)."""
        return sorted({a.split("=", 1)[0] for a in args if a.split("=", 1)[0] in self.owned_flags})


# --- vLLM -------------------------------------------------------------------------------------------------
# `vllm serve MODEL` and its flags: docs.vllm.ai serving/openai_compatible_server and vllm/config/parallel.py
# (-tp/--tensor-parallel-size, -pp/--pipeline-parallel-size, --distributed-executor-backend ray|mp|uni),
# --quantization/--dtype/--max-model-len from vllm/engine/arg_utils.py. /metrics and /health on the API port.
RAY_PORT = 6379  # vLLM examples/online_serving/run_cluster.sh: `ray start --head --port=6379`
VLLM_DTYPE = {Precision.BF16: ("--dtype", "bfloat16"), Precision.FP16: ("--dtype", "float16")}

_VLLM_CUDA = {
    Precision.BF16: PrecisionSupport(flags=VLLM_DTYPE[Precision.BF16]),
    Precision.FP16: PrecisionSupport(flags=VLLM_DTYPE[Precision.FP16]),
    # Online dynamic FP8 from BF16 weights (docs.vllm.ai features/quantization/fp8: `--quantization fp8`); an
    # FP8 checkpoint carries its own quantization config and needs no flag. vLLM 0.32 names online FP8
    # `fp8_per_tensor` and warns that `fp8` is deprecated for it (vllm/model_executor/model_loader/
    # weight_utils.py; checked against 0.32.0's parser by tests/engines).
    Precision.FP8: PrecisionSupport(
        flags=("--quantization", "fp8"),
        checkpoint_flags=(),
        renamed=(((0, 32), ("--quantization", "fp8_per_tensor")),),
    ),
    # W8A8 INT8 and NVFP4 only from checkpoints (compressed-tensors, ModelOpt): vLLM reads their config.
    Precision.INT8: PrecisionSupport(needs_checkpoint=True),
    Precision.FP4: PrecisionSupport(needs_checkpoint=True),
}
_VLLM_ASCEND = {
    Precision.BF16: PrecisionSupport(flags=VLLM_DTYPE[Precision.BF16]),
    Precision.FP16: PrecisionSupport(flags=VLLM_DTYPE[Precision.FP16]),
    # vllm-ascend docs/source/user_guide/feature_guide/quantization.md: W8A8 weights made with msModelSlim are
    # served with `--quantization ascend` (since 0.9.0rc2); the Ascend 910B has no FP8.
    Precision.INT8: PrecisionSupport(checkpoint_flags=("--quantization", "ascend"), needs_checkpoint=True),
}
# MooreThreads/vllm-musa README: a platform plugin that keeps the upstream CLI; no quantized path documented.
_VLLM_MUSA = {
    Precision.BF16: PrecisionSupport(flags=VLLM_DTYPE[Precision.BF16]),
    Precision.FP16: PrecisionSupport(flags=VLLM_DTYPE[Precision.FP16]),
}

VLLM = EngineProfile(
    engine=Engine.VLLM,
    precisions={Vendor.NVIDIA: _VLLM_CUDA, Vendor.ASCEND: _VLLM_ASCEND, Vendor.MTHREADS: _VLLM_MUSA},
    # docs.vllm.ai usage/metrics and design/metrics (V1): vllm:prompt_tokens_total, vllm:generation_tokens_total
    # (counters), vllm:num_requests_waiting (gauge).
    metrics=MetricNames("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_waiting"),
    multi_node=True,
    owned_flags=(
        "--model",
        "--served-model-name",
        "--host",
        "--port",
        "--tensor-parallel-size",
        "-tp",
        "--pipeline-parallel-size",
        "-pp",
        "--quantization",
        "-q",
        "--dtype",
        "--max-model-len",
        "--distributed-executor-backend",
        "--nnodes",
        "--node-rank",
        "--master-addr",
        "--master-port",
        "--headless",
    ),
    source="docs.vllm.ai; vllm-project/vllm examples/online_serving/run_cluster.sh; vllm-project/vllm-ascend; "
    "MooreThreads/vllm-musa",
)

# --- SGLang -----------------------------------------------------------------------------------------------
# `python -m sglang.launch_server`: sgl-project/sglang docs/advanced_features/server_arguments.md (--model-path,
# --served-model-name, --host (default 127.0.0.1), --port (default 30000), --tp-size, --nnodes, --node-rank,
# --dist-init-addr, --quantization, --dtype, --context-length, --enable-metrics (off by default)).
SGLANG_DIST_PORT = 5000  # the port in --dist-init-addr HOST:PORT (any free port on rank 0; SGLang docs use 5000)
SGLANG = EngineProfile(
    engine=Engine.SGLANG,
    precisions={
        Vendor.NVIDIA: {
            Precision.BF16: PrecisionSupport(flags=("--dtype", "bfloat16")),
            Precision.FP16: PrecisionSupport(flags=("--dtype", "float16")),
            Precision.FP8: PrecisionSupport(flags=("--quantization", "fp8"), checkpoint_flags=()),
            Precision.INT8: PrecisionSupport(checkpoint_flags=("--quantization", "w8a8_int8"), needs_checkpoint=True),
            Precision.FP4: PrecisionSupport(checkpoint_flags=("--quantization", "modelopt_fp4"), needs_checkpoint=True),
        }
    },
    # sgl-project/sglang python/sglang/srt/metrics/collector.py and docs/references/production_metrics.md.
    metrics=MetricNames("sglang:prompt_tokens_total", "sglang:generation_tokens_total", "sglang:num_queue_reqs"),
    multi_node=True,
    owned_flags=(
        "--model-path",
        "--model",
        "--served-model-name",
        "--host",
        "--port",
        "--tp",
        "--tp-size",
        "--tensor-parallel-size",
        "--pp-size",
        "--pipeline-parallel-size",
        "--nnodes",
        "--node-rank",
        "--dist-init-addr",
        "--nccl-init-addr",
        "--quantization",
        "--dtype",
        "--context-length",
    ),
    source="sgl-project/sglang docs/advanced_features/server_arguments.md, docs/references/production_metrics.md",
)

# --- MindIE -----------------------------------------------------------------------------------------------
# Ascend/MindIE-LLM docs/zh/user_guide (quick_start, service_parameter_configuration, environment_variable) and
# src/server/conf/config.json: the daemon reads conf/config.json under the service home; with the business,
# management and metrics ports on one IP and port they are served by one server; /metrics needs
# MIES_SERVICE_MONITOR_MODE=1 before start; the config file must be mode 640.
MINDIE_HOME = "/usr/local/Ascend/mindie/latest/mindie-service"
MINDIE_CONFIG = f"{MINDIE_HOME}/conf/config.json"
MINDIE_ENV_SCRIPTS = (
    "/usr/local/Ascend/ascend-toolkit/set_env.sh",
    "/usr/local/Ascend/nnal/atb/set_env.sh",
    "/usr/local/Ascend/mindie/latest/mindie-llm/set_env.sh",
    f"{MINDIE_HOME}/set_env.sh",
)
MINDIE = EngineProfile(
    engine=Engine.MINDIE,
    precisions={
        Vendor.ASCEND: {
            # The weights' own dtype is served (config.json has no dtype setting).
            Precision.BF16: PrecisionSupport(),
            Precision.FP16: PrecisionSupport(),
            # W8A8 weights (msModelSlim) are loaded from their directory.
            Precision.INT8: PrecisionSupport(needs_checkpoint=True),
        }
    },
    # Ascend/MindIE-LLM src/server/endpoint/http_wrapper/prometheus_metrics.cpp: no prefix.
    metrics=MetricNames("prompt_tokens_total", "generation_tokens_total", "num_requests_waiting"),
    # Multi-node MindIE needs a rank table of every NPU's device IP (rank_table_file_configuration.md), which a
    # ComputeNode does not describe: refused rather than started half-configured.
    multi_node=False,
    owned_flags=(),
    takes_args=False,
    source="Ascend/MindIE-LLM docs/zh/user_guide; src/server/conf/config.json",
)

CUSTOM = EngineProfile(
    engine=Engine.CUSTOM,
    precisions={vendor: dict.fromkeys(Precision, PrecisionSupport()) for vendor in Vendor},
    # The defaults before engine profiles existed: vLLM's names (the most common server).
    metrics=VLLM.metrics,
    multi_node=True,
    owned_flags=(),
)

PROFILES: Mapping[Engine, EngineProfile] = {p.engine: p for p in (VLLM, SGLANG, MINDIE, CUSTOM)}


def profile(engine: Engine) -> EngineProfile:
    return PROFILES[engine]


# --- command lines ------------------------------------------------------------------------------------------


def render(engine: Engine, launch: Launch, user_args: tuple[str, ...]) -> Rendered | None:
    """The container's command line for an engine (None for `custom`: the user's command stays)."""
    if engine is Engine.VLLM:
        return _vllm(launch, user_args)
    if engine is Engine.SGLANG:
        return _sglang(launch, user_args)
    if engine is Engine.MINDIE:
        return _mindie(launch)
    return None


def _precision_flags(engine: Engine, launch: Launch) -> tuple[str, ...]:
    support = PROFILES[engine].precisions[launch.vendor][launch.precision]
    if launch.from_checkpoint and support.checkpoint_flags is not None:
        return support.checkpoint_flags
    flags = support.flags
    for since, spelled in support.renamed:
        if launch.engine_version is not None and launch.engine_version >= since:
            flags = spelled
    return flags


_VERSION_TAG = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def image_version(image: str) -> tuple[int, ...] | None:
    """The release an image's tag names: `vllm/vllm-openai:v0.11.0` -> (0, 11, 0), `...:0.32.1-cu128` ->
    (0, 32, 1); None for `latest`, a digest or no tag (a registry's port is not a tag)."""
    reference = image.split("@", 1)[0]
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        return None
    found = _VERSION_TAG.match(tag)
    return tuple(int(part) for part in found.groups() if part is not None) if found else None


def _vllm(launch: Launch, user_args: tuple[str, ...]) -> Rendered:
    serve = (
        "vllm",
        "serve",
        launch.model,
        "--served-model-name",
        launch.served_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(launch.port),
        "--tensor-parallel-size",
        str(launch.devices_per_node),
        "--max-model-len",
        str(launch.context_length),
        *_precision_flags(Engine.VLLM, launch),
    )
    if launch.nodes == 1:
        return Rendered(command=serve[:2], args=(*serve[2:], *user_args))
    # One engine across the gang (vLLM's documented Ray form): rank 0 starts the Ray head, waits until every
    # rank has joined, then serves with pipeline parallelism over the nodes; the other ranks join as workers.
    if launch.rank > 0:
        join = f"exec ray start --block --address={launch.leader}:{RAY_PORT}"
        return Rendered(command=("bash", "-c"), args=(join,))
    multi = (*serve, "--pipeline-parallel-size", str(launch.nodes), "--distributed-executor-backend", "ray")
    wait = (
        "until python3 -c \"import ray, sys; ray.init(address='auto'); "
        f"sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= {launch.nodes} else 1)\"; do sleep 5; done"
    )
    script = f"ray start --head --port={RAY_PORT} && {wait} && exec {shlex.join((*multi, *user_args))}"
    return Rendered(command=("bash", "-c"), args=(script,), extra_ports=(("ray", RAY_PORT),))


def _sglang(launch: Launch, user_args: tuple[str, ...]) -> Rendered:
    args = [
        "--model-path",
        launch.model,
        "--served-model-name",
        launch.served_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(launch.port),
        # Tensor parallelism spans the whole replica; with --nnodes SGLang splits it over the nodes.
        "--tp-size",
        str(launch.devices_per_node * launch.nodes),
        "--context-length",
        str(launch.context_length),
        "--enable-metrics",
        *_precision_flags(Engine.SGLANG, launch),
    ]
    ports: tuple[tuple[str, int], ...] = ()
    if launch.nodes > 1:
        args += [
            "--nnodes",
            str(launch.nodes),
            "--node-rank",
            str(launch.rank),
            "--dist-init-addr",
            f"{launch.leader}:{SGLANG_DIST_PORT}",
        ]
        ports = (("dist-init", SGLANG_DIST_PORT),) if launch.rank == 0 else ()
    return Rendered(command=("python3", "-m", "sglang.launch_server"), args=(*args, *user_args), extra_ports=ports)


def _mindie(launch: Launch) -> Rendered:
    script = " && ".join(
        [*(f"source {path}" for path in MINDIE_ENV_SCRIPTS), f"cd {MINDIE_HOME}", "exec ./bin/mindieservice_daemon"]
    )
    return Rendered(
        command=("bash", "-c"),
        args=(script,),
        env=(("MIES_SERVICE_MONITOR_MODE", "1"), ("MINDIE_LOG_TO_STDOUT", "1")),
        # The daemon binds the IP in config.json unless these say otherwise: the pod's own address.
        env_from_fields=(("MIES_CONTAINER_IP", "status.podIP"), ("MIES_CONTAINER_MANAGEMENT_IP", "status.podIP")),
        files={MINDIE_CONFIG: mindie_config(launch)},
    )


def mindie_config(launch: Launch) -> str:
    """config.json for one MindIE replica on one node. The structure is MindIE's (src/server/conf/config.json);
    the operator sets what its decision fixes — ports (business, management and metrics on one port, so probes
    and scrapes find them where other engines serve them), devices, model, lengths — and turns HTTPS off
    inside the pod network (no certificates are mounted)."""
    config: dict[str, Any] = {
        "Version": "1.0.0",
        "ServerConfig": {
            "ipAddress": "127.0.0.1",  # replaced by MIES_CONTAINER_IP
            "managementIpAddress": "127.0.0.1",  # replaced by MIES_CONTAINER_MANAGEMENT_IP
            "port": launch.port,
            "managementPort": launch.port,
            "metricsPort": launch.port,
            "allowAllZeroIpListening": False,
            "maxLinkNum": 1000,
            "httpsEnabled": False,
            "interCommTLSEnabled": False,
            "openAiSupport": "vllm",
            "tokenTimeout": 600,
            "e2eTimeout": 600,
        },
        "BackendConfig": {
            "backendName": "mindieservice_llm_engine",
            "modelInstanceNumber": 1,
            # Logical ids: the device plugin exposes the allocated NPUs to the container as 0..n-1.
            "npuDeviceIds": [list(range(launch.devices_per_node))],
            "tokenizerProcessNumber": 8,
            "multiNodesInferEnabled": False,
            "interNodeTLSEnabled": False,
            "ModelDeployConfig": {
                "maxSeqLen": launch.context_length,
                "maxInputTokenLen": launch.context_length - 1,
                "truncation": False,
                "ModelConfig": [
                    {
                        "modelInstanceType": "Standard",
                        "modelName": launch.served_name,
                        "modelWeightPath": launch.model,
                        "worldSize": launch.devices_per_node,
                        "cpuMemSize": 0,
                        "npuMemSize": -1,
                        "backendType": "atb",
                        "trustRemoteCode": False,
                    }
                ],
            },
            "ScheduleConfig": {
                "templateType": "Standard",
                "templateName": "Standard_LLM",
                "cacheBlockSize": 128,
                "maxPrefillBatchSize": 50,
                "maxPrefillTokens": max(8192, launch.context_length),
                "prefillTimeMsPerReq": 150,
                "prefillPolicyType": 0,
                "decodeTimeMsPerReq": 50,
                "decodePolicyType": 0,
                "maxBatchSize": 200,
                "maxIterTimes": launch.context_length,
                "maxPreemptCount": 0,
                "supportSelectBatch": False,
                "maxQueueDelayMicroseconds": 5000,
            },
        },
    }
    return json.dumps(config, indent=2, sort_keys=False) + "\n"


# --- custom command lines that contradict the placement -------------------------------------------------------
# A custom runtime's args are the user's, untouched; when they spell out parallelism or precision in vLLM's or
# SGLang's flags and those disagree with what the operator gave the replica, the workload says so (Degraded).
_TP_FLAGS = ("--tensor-parallel-size", "-tp", "--tp", "--tp-size")
_PP_FLAGS = ("--pipeline-parallel-size", "-pp", "--pp-size")
_QUANTIZED = {Precision.FP8: "fp8", Precision.FP4: "fp4", Precision.INT8: "int8"}


def _flag_values(args: tuple[str, ...] | list[str], flags: tuple[str, ...]) -> list[str]:
    found = []
    for index, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name in flags:
            if equals:
                found.append(value)
            elif index + 1 < len(args):
                found.append(args[index + 1])
    return found


def custom_conflicts(args: tuple[str, ...] | list[str], devices: int, precision: Precision) -> list[str]:
    """What in a custom runtime's args contradicts a replica given `devices` devices at `precision`."""
    problems = []
    tp = [int(v) for v in _flag_values(args, _TP_FLAGS) if v.isdigit()]
    pp = [int(v) for v in _flag_values(args, _PP_FLAGS) if v.isdigit()]
    if tp or pp:
        wanted = (tp[-1] if tp else 1) * (pp[-1] if pp else 1)
        if wanted != devices:
            problems.append(
                f"args ask for {wanted} devices (tensor x pipeline parallel) but the replica was given {devices}"
            )
    quantization = [v.lower() for v in _flag_values(args, ("--quantization", "-q"))]
    if quantization and precision not in _QUANTIZED:
        problems.append(f"args quantize ({quantization[-1]}) but the replica was placed at {precision.value}")
    elif precision in _QUANTIZED and quantization and _QUANTIZED[precision] not in quantization[-1]:
        problems.append(f"args quantize as {quantization[-1]} but the replica was placed at {precision.value}")
    dtypes = [v.lower() for v in _flag_values(args, ("--dtype",))]
    accepted_dtypes = {Precision.BF16: ("bfloat16", "auto"), Precision.FP16: ("float16", "half", "auto")}.get(precision)
    if dtypes and accepted_dtypes and dtypes[-1] not in accepted_dtypes:
        problems.append(f"args set --dtype {dtypes[-1]} but the replica was placed at {precision.value}")
    return problems
