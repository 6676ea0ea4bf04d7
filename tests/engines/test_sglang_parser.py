"""SGLang's own parser (`prepare_server_args`, what `sglang.launch_server` calls) judges the SGLang command
lines the operator renders: the golden file's, and a hypothesis sweep of placements on one node and across
nodes (every rank's line). SGLang's parser installs here without a GPU (`pip install --no-deps`, in the
engine tools' virtualenv); what it resolves from the model and the accelerator later does not, and is not
judged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.judge import GOLDEN, ROOT, Judge
from gpufabric.engines import PROFILES, SGLANG_DIST_PORT, Engine, Launch, render
from gpufabric.vendors import Precision

JUDGE = ROOT / "tests" / "support" / "sglang_judge.py"
LAUNCH = ["python3", "-m", "sglang.launch_server"]


@pytest.fixture(scope="module")
def judge() -> Iterator[Judge]:
    running = Judge.start(JUDGE, unavailable=("UNAVAILABLE", "SGLANG_UNAVAILABLE"))
    yield running
    running.close()


def test_a_wrong_command_line_is_refused_in_sglangs_words(judge: Judge) -> None:
    refused = judge(["--model-path", "m", "--tp-size", "two"])
    assert not refused["ok"]
    assert "invalid int value: 'two'" in refused["error"]
    assert not judge(["--model-path", "m", "--quantization", "fp9"])["ok"]
    assert not judge(["--model-path", "m", "--no-such-flag"])["ok"]


def test_every_golden_sglang_command_line_parses_as_it_reads(judge: Judge) -> None:
    golden = yaml.safe_load(GOLDEN.read_text(encoding="utf-8"))
    judged = 0
    for pool, rendered in golden.items():
        for pod, container in rendered["pods"].items():
            if container["command"] != LAUNCH:
                continue
            arguments = list(container["args"])
            verdict = judge(arguments)
            assert verdict["ok"], f"{pool} {pod}: {verdict}"
            flags = dict(zip(arguments[::2], arguments[1::2], strict=False))
            values = verdict["values"]
            assert values["model_path"] == flags["--model-path"], pod
            assert values["tp_size"] == int(flags["--tp-size"]), pod
            assert values["context_length"] == int(flags["--context-length"]), pod
            assert values["enable_metrics"] is True, pod
            judged += 1
    assert judged >= 1, "the golden file's SGLang pods"
    print(f"golden SGLang command lines parsed by SGLang's own parser: {judged}")


NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,40}", fullmatch=True)
TABLE = PROFILES[Engine.SGLANG].precisions


@st.composite
def launches(draw: st.DrawFn) -> Launch:
    vendor = draw(st.sampled_from(sorted(TABLE, key=lambda v: v.value)))
    precision: Precision = draw(st.sampled_from(sorted(p for p, s in TABLE[vendor].items() if not s.needs_checkpoint)))
    nodes = draw(st.integers(1, 4))
    return Launch(
        model=draw(NAME),
        from_checkpoint=draw(st.booleans()),
        served_name=draw(NAME),
        port=draw(st.integers(1, 65535)),
        vendor=vendor,
        precision=precision,
        devices_per_node=draw(st.sampled_from([1, 2, 4, 8])),
        nodes=nodes,
        rank=draw(st.integers(0, nodes - 1)),
        leader="chat-0-0.chat-0.agents.svc",
        context_length=draw(st.integers(256, 1_048_576)),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(launch=launches())
def test_every_placement_renders_a_command_line_sglang_reads_as_meant(judge: Judge, launch: Launch) -> None:
    rendered = render(Engine.SGLANG, launch, ())
    assert rendered is not None
    assert list(rendered.command) == LAUNCH
    verdict = judge(list(rendered.args))
    assert verdict["ok"], f"{launch}: {verdict}"
    values: dict[str, Any] = verdict["values"]
    assert (values["model_path"], values["served_model_name"]) == (launch.model, launch.served_name)
    assert (values["host"], values["port"]) == ("0.0.0.0", launch.port)
    assert values["tp_size"] == launch.devices_per_node * launch.nodes  # SGLang splits it over the nodes
    assert values["context_length"] == launch.context_length
    assert values["enable_metrics"] is True
    support = TABLE[launch.vendor][launch.precision]
    flags = (
        support.checkpoint_flags if launch.from_checkpoint and support.checkpoint_flags is not None else support.flags
    )
    meant = dict(zip(flags[::2], flags[1::2], strict=True))
    assert values["quantization"] == meant.get("--quantization")
    assert values["dtype"] == meant.get("--dtype", "auto")
    if launch.nodes > 1:
        assert (values["nnodes"], values["node_rank"]) == (launch.nodes, launch.rank)
        assert values["dist_init_addr"] == f"{launch.leader}:{SGLANG_DIST_PORT}"
    else:
        assert (values["nnodes"], values["node_rank"], values["dist_init_addr"]) == (1, 0, None)
