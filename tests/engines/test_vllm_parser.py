"""vLLM's own argument parser judges every vLLM command line the operator renders: the golden file's, and a
hypothesis sweep of placements (tensor and pipeline parallel sizes, precisions, context lengths, names,
ports, user args). Each must parse, with the values the decision meant. The parser runs in the vLLM tools'
virtualenv (`make tools`: scripts/fetch_vllm.py), one process for the whole module (tests/support/vllm_judge.py);
without it the module is skipped with the line that says why."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.judge import GOLDEN, ROOT, Judge
from gpufabric.engines import PROFILES, Engine, Launch, render
from gpufabric.vendors import Precision, Vendor

JUDGE = ROOT / "tests" / "support" / "vllm_judge.py"


@pytest.fixture(scope="module")
def judge() -> Iterator[Judge]:
    running = Judge.start(JUDGE)
    yield running
    running.close()


def serve_arguments(command: list[str], args: list[str]) -> list[str] | None:
    """What follows `vllm serve` in a rendered container: its args, or the `exec vllm serve ...` of a gang's
    `bash -c` script; None for a container that does not serve (a gang's worker)."""
    if command[:2] == ["vllm", "serve"]:
        return list(args)
    if command == ["bash", "-c"]:
        words = shlex.split(args[0])
        for index in range(len(words) - 1):
            if words[index : index + 2] == ["vllm", "serve"]:
                rest = words[index + 2 :]
                return rest[: rest.index("&&")] if "&&" in rest else rest
    return None


def test_a_wrong_command_line_is_refused_in_vllms_words(judge: Judge) -> None:
    """The judge can say no: the sweep below would pass vacuously otherwise."""
    refused = judge(["m", "--dtype", "float8"])
    assert not refused["ok"]
    assert "invalid choice: 'float8'" in str(refused["error"])
    assert not judge(["m", "--tensor-parallel-size", "two"])["ok"]
    assert not judge(["m", "--no-such-flag"])["ok"]


def test_every_golden_vllm_command_line_parses_as_it_reads(judge: Judge) -> None:
    golden = yaml.safe_load(GOLDEN.read_text(encoding="utf-8"))
    judged = 0
    for pool, rendered in golden.items():
        for pod, container in rendered["pods"].items():
            arguments = serve_arguments(container["command"], container["args"])
            if arguments is None:
                continue
            verdict = judge(arguments)
            assert verdict["ok"], f"{pool} {pod}: {verdict}"
            values = verdict["values"]
            flags = dict(zip(arguments[1::2], arguments[2::2], strict=False))
            assert values["model_tag"] == arguments[0], pod
            assert values["tensor_parallel_size"] == int(flags["--tensor-parallel-size"]), pod
            assert values["max_model_len"] == int(flags["--max-model-len"]), pod
            assert values["port"] == int(flags["--port"]), pod
            assert values["served_model_name"] == [flags["--served-model-name"]], pod
            judged += 1
    assert judged >= 8, "the golden file's vLLM pods"
    print(f"golden vLLM command lines parsed by vLLM's own parser: {judged}")


VLLM_VENDORS = sorted(PROFILES[Engine.VLLM].precisions, key=lambda v: v.value)
NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,40}", fullmatch=True)
USER_ARGS = st.lists(
    st.sampled_from(
        [
            ("--enable-prefix-caching",),
            ("--max-num-seqs", "16"),
            ("--gpu-memory-utilization", "0.85"),
            ("--kv-cache-memory-bytes", "1G"),
            ("--max-num-batched-tokens", "8192"),
            ("--enforce-eager",),
        ]
    ),
    max_size=3,
    unique=True,
)


@st.composite
def launches(draw: st.DrawFn) -> Launch:
    vendor: Vendor = draw(st.sampled_from(VLLM_VENDORS))
    table = PROFILES[Engine.VLLM].precisions[vendor]
    precision: Precision = draw(st.sampled_from(sorted(p for p, s in table.items() if not s.needs_checkpoint)))
    return Launch(
        model=draw(NAME),
        from_checkpoint=draw(st.booleans()),
        served_name=draw(NAME),
        port=draw(st.integers(1, 65535)),
        vendor=vendor,
        precision=precision,
        devices_per_node=draw(st.sampled_from([1, 2, 4, 8])),
        nodes=draw(st.integers(1, 4)),
        rank=0,
        leader="chat-0-0.chat-0.agents.svc",
        context_length=draw(st.integers(256, 1_048_576)),
        engine_version=draw(st.sampled_from([None, (0, 11, 0), (0, 31, 1), (0, 32, 0), (0, 32), (1, 0, 0)])),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(launch=launches(), user=USER_ARGS)
def test_every_placement_renders_a_command_line_vllm_reads_as_meant(
    judge: Judge, launch: Launch, user: list[tuple[str, ...]]
) -> None:
    user_args = tuple(word for flags in user for word in flags)
    rendered = render(Engine.VLLM, launch, user_args)
    assert rendered is not None
    arguments = serve_arguments(list(rendered.command), list(rendered.args))
    assert arguments is not None
    verdict = judge(arguments)
    assert verdict["ok"], f"{launch}: {verdict}"
    values = verdict["values"]
    assert values["model_tag"] == launch.model
    assert values["served_model_name"] == [launch.served_name]
    assert (values["host"], values["port"]) == ("0.0.0.0", launch.port)
    assert values["tensor_parallel_size"] == launch.devices_per_node
    assert values["pipeline_parallel_size"] == launch.nodes
    assert values["distributed_executor_backend"] == ("ray" if launch.nodes > 1 else None)
    assert values["max_model_len"] == launch.context_length
    support = PROFILES[Engine.VLLM].precisions[launch.vendor][launch.precision]
    flags = (
        support.checkpoint_flags if launch.from_checkpoint and support.checkpoint_flags is not None else support.flags
    )
    if not launch.from_checkpoint and launch.engine_version is not None and launch.engine_version >= (0, 32):
        # vLLM 0.32 renamed online FP8 (the parser above is 0.32's: it takes both spellings)
        flags = tuple("fp8_per_tensor" if word == "fp8" else word for word in flags)
    meant = dict(zip(flags[::2], flags[1::2], strict=True))
    assert values["quantization"] == meant.get("--quantization")
    assert values["dtype"] == meant.get("--dtype", "auto")
    if ("--kv-cache-memory-bytes", "1G") in user:
        assert values["kv_cache_memory_bytes"] == 1 << 30
