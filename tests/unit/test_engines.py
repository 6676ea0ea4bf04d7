"""Engine profiles: the command line each engine gets for a placement decision, checked flag by flag against
the engine's documented CLI; which precisions each serves from which weights; and what a custom command
line may contradict.

Sources of the flags asserted here:
- vLLM: docs.vllm.ai serving/openai_compatible_server (`vllm serve MODEL`, --served-model-name, --host,
  --port), vllm/config/parallel.py (-tp/--tensor-parallel-size, -pp/--pipeline-parallel-size,
  --distributed-executor-backend ray), features/quantization/fp8 (`--quantization fp8`), --dtype, --max-model-len;
  multi-node: examples/online_serving/run_cluster.sh (`ray start --head --port=6379`,
  `ray start --block --address=HEAD:6379`, then one `vllm serve` on the head).
- vllm-ascend: docs/source/user_guide/feature_guide/quantization.md (`--quantization ascend` for msModelSlim W8A8).
- SGLang: docs/advanced_features/server_arguments.md (--model-path, --served-model-name, --host, --port,
  --tp-size, --context-length, --quantization, --dtype, --enable-metrics, --nnodes, --node-rank,
  --dist-init-addr).
- MindIE: Ascend/MindIE-LLM src/server/conf/config.json and docs/zh/user_guide (ServerConfig ports,
  BackendConfig.npuDeviceIds, ModelDeployConfig.ModelConfig[].modelWeightPath/worldSize, maxSeqLen,
  MIES_SERVICE_MONITOR_MODE, mindieservice_daemon).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from gpufabric import engines
from gpufabric.engines import Engine, Launch, image_version, render
from gpufabric.vendors import Precision, Vendor

SINGLE = Launch(
    model="org/model",
    from_checkpoint=False,
    served_name="chat",
    port=8000,
    vendor=Vendor.NVIDIA,
    precision=Precision.BF16,
    devices_per_node=2,
    nodes=1,
    rank=0,
    leader="chat-0-0.chat-0.ns.svc",
    context_length=16384,
)


def flags(args: tuple[str, ...]) -> dict[str, str | None]:
    """`--flag value` pairs (a flag followed by another flag, or last, has no value)."""
    found: dict[str, str | None] = {}
    for index, arg in enumerate(args):
        if arg.startswith("-"):
            following = args[index + 1] if index + 1 < len(args) else None
            found[arg] = None if following is None or following.startswith("-") else following
    return found


class TestVllm:
    def test_single_node_serves_the_decision(self) -> None:
        rendered = engines.render(Engine.VLLM, SINGLE, ("--enable-prefix-caching",))
        assert rendered is not None
        assert rendered.command == ("vllm", "serve")
        assert rendered.args[0] == "org/model"
        assert flags(rendered.args) == {
            "--served-model-name": "chat",
            "--host": "0.0.0.0",
            "--port": "8000",
            "--tensor-parallel-size": "2",
            "--max-model-len": "16384",
            "--dtype": "bfloat16",
            "--enable-prefix-caching": None,
        }
        assert rendered.args[-1] == "--enable-prefix-caching", "user args come last"

    @pytest.mark.parametrize(
        ("vendor", "precision", "checkpoint", "expected"),
        [
            (Vendor.NVIDIA, Precision.FP16, False, {"--dtype": "float16"}),
            (Vendor.NVIDIA, Precision.FP8, False, {"--quantization": "fp8"}),  # online from BF16 weights
            (Vendor.NVIDIA, Precision.FP8, True, {}),  # an FP8 checkpoint carries its quantization config
            (Vendor.NVIDIA, Precision.INT8, True, {}),  # compressed-tensors W8A8: read from the checkpoint
            (Vendor.ASCEND, Precision.INT8, True, {"--quantization": "ascend"}),  # msModelSlim W8A8
            (Vendor.ASCEND, Precision.BF16, False, {"--dtype": "bfloat16"}),
            (Vendor.MTHREADS, Precision.BF16, False, {"--dtype": "bfloat16"}),
        ],
    )
    def test_precision_flags(
        self, vendor: Vendor, precision: Precision, checkpoint: bool, expected: dict[str, str]
    ) -> None:
        launch = replace(SINGLE, vendor=vendor, precision=precision, from_checkpoint=checkpoint, model="w")
        rendered = engines.render(Engine.VLLM, launch, ())
        assert rendered is not None
        chosen = {k: v for k, v in flags(rendered.args).items() if k in ("--dtype", "--quantization")}
        assert chosen == expected

    def test_a_gang_is_one_engine_in_the_ray_form(self) -> None:
        head = replace(SINGLE, devices_per_node=8, nodes=2, precision=Precision.FP8)
        rendered = engines.render(Engine.VLLM, head, ("--enable-chunked-prefill",))
        assert rendered is not None
        assert rendered.command == ("bash", "-c")
        (script,) = rendered.args
        start, wait, serve = script.split(" && ")
        assert start == "ray start --head --port=6379"
        assert wait.startswith("until python3 -c")
        assert ">= 2 else 1" in wait, "waits for both nodes to join"
        assert serve.startswith("exec vllm serve org/model ")
        served = flags(tuple(serve.split()))
        assert served["--tensor-parallel-size"] == "8", "tensor parallel within a node"
        assert served["--pipeline-parallel-size"] == "2", "pipeline parallel across the nodes"
        assert served["--distributed-executor-backend"] == "ray"
        assert serve.endswith("--enable-chunked-prefill")
        assert ("ray", 6379) in rendered.extra_ports
        worker = engines.render(Engine.VLLM, replace(head, rank=1), ("--enable-chunked-prefill",))
        assert worker is not None
        assert worker.args == ("exec ray start --block --address=chat-0-0.chat-0.ns.svc:6379",)


class TestSglang:
    def test_single_node(self) -> None:
        rendered = engines.render(
            Engine.SGLANG, replace(SINGLE, precision=Precision.FP8), ("--mem-fraction-static", "0.85")
        )
        assert rendered is not None
        assert rendered.command == ("python3", "-m", "sglang.launch_server")
        assert flags(rendered.args) == {
            "--model-path": "org/model",
            "--served-model-name": "chat",
            "--host": "0.0.0.0",  # SGLang listens on 127.0.0.1 unless told otherwise
            "--port": "8000",
            "--tp-size": "2",
            "--context-length": "16384",
            "--enable-metrics": None,  # off by default: no token counters without it
            "--quantization": "fp8",
            "--mem-fraction-static": "0.85",
        }

    def test_a_gang_spans_nodes_with_its_own_flags(self) -> None:
        for rank in (0, 1):
            launch = replace(SINGLE, devices_per_node=8, nodes=2, rank=rank)
            rendered = engines.render(Engine.SGLANG, launch, ())
            assert rendered is not None
            got = flags(rendered.args)
            assert got["--tp-size"] == "16", "tensor parallel over the whole replica"
            assert (got["--nnodes"], got["--node-rank"]) == ("2", str(rank))
            assert got["--dist-init-addr"] == "chat-0-0.chat-0.ns.svc:5000"
            assert (("dist-init", 5000) in rendered.extra_ports) is (rank == 0)

    def test_int8_from_a_w8a8_checkpoint(self) -> None:
        launch = replace(SINGLE, precision=Precision.INT8, from_checkpoint=True, model="org/model-w8a8")
        rendered = engines.render(Engine.SGLANG, launch, ())
        assert rendered is not None
        assert flags(rendered.args)["--quantization"] == "w8a8_int8"
        assert flags(rendered.args)["--model-path"] == "org/model-w8a8"


class TestMindie:
    def test_the_daemon_starts_with_metrics_on_and_its_config_rendered(self) -> None:
        launch = replace(SINGLE, vendor=Vendor.ASCEND, devices_per_node=4, model="/models/w", context_length=8192)
        rendered = engines.render(Engine.MINDIE, launch, ())
        assert rendered is not None
        assert rendered.command == ("bash", "-c")
        assert rendered.args[0].endswith(
            "cd /usr/local/Ascend/mindie/latest/mindie-service && exec ./bin/mindieservice_daemon"
        )
        assert ("MIES_SERVICE_MONITOR_MODE", "1") in rendered.env, "/metrics answers 500 without it"
        assert ("MIES_CONTAINER_IP", "status.podIP") in rendered.env_from_fields
        (path,) = rendered.files
        assert path == "/usr/local/Ascend/mindie/latest/mindie-service/conf/config.json"
        config: dict[str, Any] = json.loads(rendered.files[path])
        server = config["ServerConfig"]
        assert server["port"] == server["managementPort"] == server["metricsPort"] == 8000
        assert server["httpsEnabled"] is False
        backend = config["BackendConfig"]
        assert backend["npuDeviceIds"] == [[0, 1, 2, 3]]
        (model,) = backend["ModelDeployConfig"]["ModelConfig"]
        assert (model["modelName"], model["modelWeightPath"], model["worldSize"]) == ("chat", "/models/w", 4)
        assert backend["ModelDeployConfig"]["maxSeqLen"] == 8192


class TestWhatEachEngineServes:
    @pytest.mark.parametrize(
        ("engine", "vendor", "precision", "checkpoint", "nodes", "refusal"),
        [
            (Engine.VLLM, Vendor.NVIDIA, Precision.FP8, False, 1, None),
            (Engine.VLLM, Vendor.NVIDIA, Precision.INT8, False, 1, "serves INT8 only from a quantized checkpoint"),
            (Engine.VLLM, Vendor.ASCEND, Precision.INT8, True, 2, None),
            (Engine.VLLM, Vendor.ASCEND, Precision.FP8, True, 1, "does not serve FP8"),
            (Engine.VLLM, Vendor.MTHREADS, Precision.INT8, True, 1, "does not serve INT8"),
            (Engine.SGLANG, Vendor.NVIDIA, Precision.FP4, False, 1, "serves FP4 only from a quantized checkpoint"),
            (Engine.MINDIE, Vendor.ASCEND, Precision.BF16, False, 1, None),
            (Engine.MINDIE, Vendor.ASCEND, Precision.BF16, False, 2, "does not run one replica across nodes"),
            (Engine.CUSTOM, Vendor.MTHREADS, Precision.FP4, False, 4, None),
        ],
    )
    def test_refusals(  # noqa: PLR0917 -- one parameter per column of the table above
        self, engine: Engine, vendor: Vendor, precision: Precision, checkpoint: bool, nodes: int, refusal: str | None
    ) -> None:
        said = engines.profile(engine).why_not(vendor, precision, checkpoint, nodes)
        if refusal is None:
            assert said is None
        else:
            assert said is not None
            assert refusal in said

    def test_custom_keeps_the_users_command(self) -> None:
        assert engines.render(Engine.CUSTOM, SINGLE, ("--anything",)) is None


@pytest.mark.parametrize(
    ("args", "devices", "precision", "conflicts"),
    [
        (("--tensor-parallel-size", "8", "--pipeline-parallel-size", "2"), 16, Precision.FP8, []),
        (("--tensor-parallel-size", "1"), 2, Precision.BF16, ["args ask for 1 devices"]),
        (("--tp=4",), 2, Precision.BF16, ["args ask for 4 devices"]),
        (("--quantization", "fp8"), 1, Precision.BF16, ["args quantize (fp8) but the replica was placed at BF16"]),
        (("--dtype", "float16"), 1, Precision.BF16, ["args set --dtype float16"]),
        (("--dtype", "auto", "--tensor-parallel-size", "$(GPUFABRIC_TENSOR_PARALLEL_SIZE)"), 4, Precision.BF16, []),
        ((), 8, Precision.INT8, []),
    ],
)
def test_a_custom_command_line_that_contradicts_the_placement_is_named(
    args: tuple[str, ...], devices: int, precision: Precision, conflicts: list[str]
) -> None:
    found = engines.custom_conflicts(args, devices, precision)
    assert len(found) == len(conflicts), found
    for problem, expected in zip(found, conflicts, strict=True):
        assert expected in problem


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("vllm/vllm-openai:v0.11.0", (0, 11, 0)),
        ("registry.example.com:5000/vllm/vllm-openai:0.32.1-cu128", (0, 32, 1)),
        ("lmsysorg/sglang:v0.5.4.post2", (0, 5, 4)),
        ("vllm/vllm-openai:latest", None),
        ("vllm/vllm-openai", None),
        ("registry.example.com:5000/vllm", None),
        ("vllm/vllm-openai@sha256:0123abcd", None),
    ],
)
def test_the_engine_release_comes_from_the_image_tag(image: str, version: tuple[int, ...] | None) -> None:
    assert image_version(image) == version


def test_online_fp8_is_spelled_as_the_engines_release_spells_it() -> None:
    fp8 = replace(SINGLE, vendor=Vendor.NVIDIA, precision=Precision.FP8, from_checkpoint=False)
    spelled = {}
    for version in (None, (0, 31, 1), (0, 32, 0)):
        rendered = render(Engine.VLLM, replace(fp8, engine_version=version), ())
        assert rendered is not None
        spelled[version] = rendered.args
    assert "fp8" in spelled[None]
    assert "fp8" in spelled[(0, 31, 1)]
    assert "fp8_per_tensor" in spelled[(0, 32, 0)]
    assert "fp8" not in spelled[(0, 32, 0)]
