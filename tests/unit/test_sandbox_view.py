"""`gpufabric sandbox`'s view: the live frame fits 80 and 160 columns and shows every node and workload, the plain
lines carry the right totals and no colour, the summary reports recoveries, scalings and per-vendor numbers, and
Display prints each log line once and the status at most every `every` seconds."""

from __future__ import annotations

import io
import re
import threading

import pytest
from rich.console import Console, RenderableType
from rich.segment import Segment

from gpufabric.sandbox.snapshot import (
    ForeignJobReport,
    LogLine,
    NodeRow,
    Recovery,
    Scaling,
    Snapshot,
    Summary,
    WorkloadRow,
)
from gpufabric.sandbox.view import SIMULATION_BANNER, Display, live_renderable, plain_lines, summary_text

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

NODES = (
    NodeRow("gpu-a-h100-01", "nvidia", "H100-SXM5-80GB", "a", 8, 8, True),
    NodeRow("gpu-a-h100-02", "nvidia", "H100-SXM5-80GB", "a", 8, 4, True),
    NodeRow("gpu-a-h100-03", "nvidia", "H100-SXM5-80GB", "a", 8, 2, False),
    NodeRow("gpu-b-910b-01", "ascend", "Ascend910B", "b", 8, 6, True),
    NodeRow("gpu-b-910b-02", "ascend", "Ascend910B", "b", 8, 3, True),
)
CODE = WorkloadRow(
    "agents",
    "code-agent",
    replicas=4,
    ready=4,
    placements=("nvidia/H100-SXM5-80GB/FP8 x2", "ascend/Ascend910B/INT8 x2"),
    tokens_per_second=15_300.0,
    target=12_000.0,
    demand=11_000.0,
    phase="Ready",
)
SUPPORT = WorkloadRow(  # below its target
    "agents",
    "support-agent",
    replicas=6,
    ready=3,
    placements=("ascend/Ascend910B/INT8 x3",),
    tokens_per_second=4_100.0,
    target=8_000.0,
    demand=9_500.0,
    phase="Progressing",
)
FRONTIER = WorkloadRow(
    "research",
    "frontier-405b",
    replicas=2,
    ready=0,
    placements=(),
    tokens_per_second=None,
    target=3_000.0,
    demand=1_000.0,
    phase="Unschedulable",
)
WORKLOADS = (CODE, SUPPORT, FRONTIER)
LOG = (
    LogLine(10.5, "Placed replica 0 of agents/code-agent on gpu-a-h100-01", "operator"),
    LogLine(11.0, "node gpu-a-h100-03 failed", "scenario"),
    LogLine(11.8, "Rescheduled replica 1 of agents/code-agent off gpu-a-h100-03", "operator"),
)
SNAPSHOT = Snapshot(elapsed=12.0, duration=75.0, nodes=NODES, workloads=WORKLOADS, log=LOG)

SUMMARY = Summary(
    elapsed=75.0,
    replicas_per_vendor={"ascend": 5, "nvidia": 2},
    tokens_per_vendor_precision={
        ("nvidia", "FP8"): 15_234.4,
        ("ascend", "INT8"): 4_100.0,
        ("ascend", "FP16"): 1_980.0,
    },
    recoveries=(
        Recovery("gpu-a-h100-03", "agents/code-agent", 1, failed_at=25.0, recovered_after=12.3),
        Recovery("gpu-a-h100-03", "agents/code-agent", 3, failed_at=25.0, recovered_after=None),
    ),
    scalings=(Scaling(22.1, "agents/support-agent", 3, 6, "4,100 tok/s below the target of 8,000"),),
    workloads=WORKLOADS,
    unplaced=("research/frontier-405b: 0/5 nodes have 16 free H100 devices in one RoCE domain",),
)


def render(renderable: RenderableType, width: int) -> str:
    console = Console(file=io.StringIO(), width=width)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def segments(renderable: RenderableType, width: int) -> list[Segment]:
    console = Console(file=io.StringIO(), width=width)
    return list(console.render(renderable, console.options))


def red(segment: Segment) -> bool:
    style = segment.style
    return style is not None and any(c is not None and c.name == "red" for c in (style.color, style.bgcolor))


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("width", [80, 160])
def test_the_live_view_fits_and_shows_every_node_and_workload(width: int) -> None:
    out = render(live_renderable(SNAPSHOT), width)
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    assert len(lines) <= 40
    assert words(SIMULATION_BANNER) in words(out)
    assert "in-process emulator" in out
    for node in NODES:
        assert node.name in out
    for workload in WORKLOADS:
        assert f"{workload.namespace}/{workload.name}" in out
    # Whole, not folded: on a narrow terminal they move under the workload's name instead.
    assert "nvidia/H100-SXM5-80GB/FP8 x2" in out
    assert "ascend/Ascend910B/INT8 x2" in out
    assert "Unschedulable" in out
    assert "15,300/12,000" in out
    assert "4,100/8,000" in out
    assert "12.0s of 75s" in out
    assert "7/12 replicas ready" in out


@pytest.mark.parametrize("width", [80, 160])
def test_the_notready_node_is_marked_in_red_and_only_it(width: int) -> None:
    rendered = segments(live_renderable(SNAPSHOT), width)
    marks = [s for s in rendered if s.text.strip() == "NotReady"]
    assert len(marks) == 1
    assert red(marks[0])
    (down,) = [s for s in rendered if s.text.strip() == "gpu-a-h100-03"]
    assert red(down)
    for node in NODES:
        if node.ready:
            found = [s for s in rendered if node.name in s.text]
            assert found
            assert not any(red(s) for s in found)


def test_nodes_are_grouped_by_vendor_then_domain_with_a_usage_bar() -> None:
    out = render(live_renderable(SNAPSHOT), 160)
    assert out.index("NVIDIA") < out.index("domain a") < out.index("Ascend") < out.index("domain b")
    assert "gpu-a-h100-02 ■■■■□□□□ 4/8" in out
    assert "gpu-b-910b-01 ■■■■■■□□ 6/8" in out
    assert "gpu-a-h100-03 NotReady 2/8" in out


def test_a_bar_of_a_big_node_is_scaled_and_never_looks_full_while_a_device_is_free() -> None:
    big = NodeRow("gpu-c-big-01", "mthreads", "MTT-S4000", "c", 16, 15, True)
    out = render(live_renderable(Snapshot(1.0, 75.0, (big,), (), ())), 80)
    assert "gpu-c-big-01 ■■■■■■■□ 15/16" in out


def test_devices_others_hold_have_a_glyph_of_their_own() -> None:
    nodes = (
        NodeRow("gpu-a-h100-04", "nvidia", "H100-SXM5-80GB", "a", 8, 0, True, others=8),
        NodeRow("gpu-a-h100-05", "nvidia", "H100-SXM5-80GB", "a", 8, 2, True, others=3),
        NodeRow("gpu-c-big-01", "mthreads", "MTT-S4000", "c", 16, 12, True, others=1),
        NodeRow("gpu-c-big-02", "mthreads", "MTT-S4000", "c", 16, 0, True),
    )
    snapshot = Snapshot(1.0, 75.0, nodes, (), ())
    out = render(live_renderable(snapshot), 160)
    assert "gpu-a-h100-04 ▨▨▨▨▨▨▨▨   8/8" in out
    assert "gpu-a-h100-05 ■■▨▨▨□□□   5/8" in out
    # Scaled: 13 of 16 in use is 6 of 8 cells (never full while any is free), one of them others'.
    assert "gpu-c-big-01  ■■■■■▨□□ 13/16" in out
    assert "gpu-c-big-02  □□□□□□□□  0/16" in out
    assert "26/48 devices used (12 ▨ by others)" in out
    rendered = segments(live_renderable(snapshot), 160)
    theirs = [segment for segment in rendered if segment.text and set(segment.text) == {"▨"}]
    assert theirs
    assert all(segment.style is not None and segment.style.color is not None for segment in theirs)
    assert {segment.style.color.name for segment in theirs if segment.style and segment.style.color} == {"magenta"}
    (status,) = plain_lines(snapshot)
    assert status.endswith(", 12 devices held by others")


def test_below_target_throughput_is_red_and_at_target_is_not() -> None:
    rendered = segments(live_renderable(SNAPSHOT), 160)
    (below,) = [s for s in rendered if "4,100/8,000" in s.text]
    (above,) = [s for s in rendered if "15,300/12,000" in s.text]
    assert red(below)
    assert not red(above)


def test_scenario_lines_look_different_from_operator_lines_and_only_the_latest_ten_are_shown() -> None:
    log = tuple(LogLine(float(i), f"event number {i:02}", "scenario" if i == 14 else "operator") for i in range(15))
    snapshot = Snapshot(15.0, 75.0, NODES, WORKLOADS, log)
    out = render(live_renderable(snapshot), 80)
    assert "event number 04" not in out
    assert all(f"event number {i:02}" in out for i in range(5, 15))
    assert " 14.0s scenario event number 14" in out
    rendered = segments(live_renderable(snapshot), 80)
    scenario = {s.style for s in rendered if s.text.strip() in {"scenario", "event number 14"}}
    operator = {s.style for s in rendered if s.text.strip() in {"operator", "event number 13"}}
    assert scenario
    assert operator
    assert not scenario & operator


def test_an_empty_snapshot_renders() -> None:
    out = render(live_renderable(Snapshot(0.0, 75.0, (), (), ())), 80)
    assert "no ComputeNodes yet" in out
    assert "no AgentWorkloads yet" in out
    assert words(SIMULATION_BANNER) in words(out)


@pytest.mark.parametrize("width", [20, 40, 60, 100])
def test_narrow_and_odd_widths_do_not_crash(width: int) -> None:
    out = render(live_renderable(SNAPSHOT), width)
    assert all(len(line) <= width for line in out.splitlines())
    if width >= 40:
        assert all(f"{w.namespace}/{w.name}" in out for w in WORKLOADS)
        assert all(node.name in out for node in NODES)


def test_markup_in_names_and_messages_is_shown_as_is() -> None:
    log = (LogLine(1.0, "weird [bold]not markup[/bold] message", "operator"),)
    out = render(live_renderable(Snapshot(1.0, 75.0, NODES, WORKLOADS, log)), 160)
    assert "weird [bold]not markup[/bold] message" in out


def test_plain_lines_have_the_right_totals_and_no_colour() -> None:
    lines = plain_lines(SNAPSHOT)
    assert not any("\x1b" in line for line in lines)
    assert lines[0] == "[ 12.0s/75s] 3 workloads, 7/12 replicas ready, 19,400 tok/s, 1/5 nodes NotReady"
    workload_lines = lines[1:4]
    for line, workload in zip(workload_lines, WORKLOADS, strict=True):
        assert f"{workload.namespace}/{workload.name}" in line
        assert f" {workload.ready}/{workload.replicas} " in line
        assert workload.phase in line
    assert "15,300/12,000 tok/s" in workload_lines[0]
    assert "ascend/Ascend910B/INT8 x2" in workload_lines[0]
    assert ["BELOW TARGET" in line for line in workload_lines] == [False, True, False]
    assert "—/3,000 tok/s" in workload_lines[2]
    assert lines[4:] == [
        "[ 10.5s] operator  Placed replica 0 of agents/code-agent on gpu-a-h100-01",
        "[ 11.0s] scenario  node gpu-a-h100-03 failed",
        "[ 11.8s] operator  Rescheduled replica 1 of agents/code-agent off gpu-a-h100-03",
    ]


def test_the_status_line_without_notready_nodes_or_workloads() -> None:
    ready_nodes = tuple(n for n in NODES if n.ready)
    (line,) = plain_lines(Snapshot(1234.5, 3600.0, ready_nodes, (), ()))
    assert line == "[1,234.5s/3,600s] 0 workloads, 0/0 replicas ready, 0 tok/s"
    (line, _) = plain_lines(Snapshot(3.0, 75.0, ready_nodes, (CODE,), ()))
    assert line == "[  3.0s/75s] 1 workload, 4/4 replicas ready, 15,300 tok/s"


def test_the_summary_reports_recoveries_scalings_and_vendors() -> None:
    text = summary_text(SUMMARY)
    assert "\x1b" not in text
    assert text.startswith(SIMULATION_BANNER + "\n")
    lines = text.splitlines()
    assert "  gpu-a-h100-03 failed at 25.0s: agents/code-agent replica 1 Ready elsewhere after 12.3s" in lines
    assert "  gpu-a-h100-03 failed at 25.0s: agents/code-agent replica 3 not recovered" in lines
    assert "  at 22.1s agents/support-agent 3 -> 6: 4,100 tok/s below the target of 8,000" in lines
    assert "  research/frontier-405b: 0/5 nodes have 16 free H100 devices in one RoCE domain" in lines
    # Per-vendor replicas (NVIDIA first, the project's order), with a total.
    assert [line.split()[:2] for line in lines if line.split()[:1] in (["nvidia"], ["ascend"], ["total"])][:3] == [
        ["nvidia", "2"],
        ["ascend", "5"],
        ["total", "7"],
    ]
    # Mean tokens/s per vendor and precision, with thousands separators.
    means = [line.split() for line in lines if len(line.split()) == 3 and line.split()[1] in {"FP8", "INT8", "FP16"}]
    assert means == [["nvidia", "FP8", "15,234"], ["ascend", "FP16", "1,980"], ["ascend", "INT8", "4,100"]]
    # The final workloads table.
    code = next(line for line in lines if line.startswith("  agents/code-agent "))
    assert code.split()[1:] == [
        "4/4",
        "nvidia/H100-SXM5-80GB/FP8",
        "x2,",
        "ascend/Ascend910B/INT8",
        "x2",
        "15,300",
        "12,000",
        "11,000",
        "Ready",
    ]


def test_the_summary_says_what_foreign_jobs_held_and_how_the_operator_placed_around_them() -> None:
    ran = ForeignJobReport("batch/nightly-training", "gpu-a-h100-03", 8, "nvidia.com/gpu", 20.5, 55.0, None, 8, 3, 0)
    still = ForeignJobReport("batch/eval", "gpu-a-h100-04", 8, "nvidia.com/gpu", 30.0, None, None, 8, 0, 0)
    rejected = ForeignJobReport(
        "batch/late", "gpu-a-h100-01", 8, "nvidia.com/gpu", 40.0, None, "OutOfnvidia.com/gpu: Pod was rejected", 0, 0, 0
    )
    on_node = ForeignJobReport("batch/small", "gpu-a-h100-05", 8, "nvidia.com/gpu", 10.0, 20.0, None, 8, 2, 1)
    lines = summary_text(Summary(60.0, {}, {}, (), (), (), foreign_jobs=(ran, still, rejected, on_node))).splitlines()
    start = lines.index("FOREIGN JOBS (pods the operator does not manage)")
    assert lines[start + 1 : start + 5] == [
        "  batch/nightly-training on gpu-a-h100-03 from 20.5s to 55.0s: held 8 nvidia.com/gpu; the operator counted 8 "
        "held by others there and placed 3 replicas meanwhile, none on gpu-a-h100-03",
        "  batch/eval on gpu-a-h100-04 from 30.0s to the end: held 8 nvidia.com/gpu; the operator counted 8 held by "
        "others there and placed no replica meanwhile",
        "  batch/late on gpu-a-h100-01 at 40.0s: rejected by the kubelet (OutOfnvidia.com/gpu: Pod was rejected)",
        "  batch/small on gpu-a-h100-05 from 10.0s to 20.0s: held 8 nvidia.com/gpu; the operator counted 8 held by "
        "others there and placed 2 replicas meanwhile, 1 on gpu-a-h100-05",
    ]


def test_an_uneventful_summary_says_so() -> None:
    text = summary_text(Summary(60.0, {}, {}, (), (), ()))
    assert "no foreign job ran" in text
    assert "no replica lost" in text
    assert "no scaling" in text
    assert "every workload was fully placed" in text
    assert "no workloads" in text


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def snapshot_at(at: float, events: list[LogLine]) -> Snapshot:
    # Like the orchestrator: the latest few lines, so consecutive snapshots repeat most of them.
    return Snapshot(at, 75.0, NODES, WORKLOADS, tuple(line for line in events if line.at <= at)[-3:])


def test_plain_display_prints_each_log_line_once_and_the_status_at_most_every_period() -> None:
    stream = io.StringIO()
    display = Display(stream, every=5.0)
    events = [LogLine(round(0.9 * i, 1), f"event {i:02}", "operator") for i in range(14)]
    with display:
        for i in range(14):
            before = len(stream.getvalue())
            display.show(snapshot_at(round(0.9 * i, 1), events))
            # What this call printed: its one new event, every time, whether or not a status is due.
            printed = stream.getvalue()[before:]
            assert printed.count("event ") == 1
            assert f"event {i:02}" in printed
    out = stream.getvalue()
    assert "\x1b" not in out
    for i in range(14):
        assert out.count(f"event {i:02}\n") == 1
    statuses = [line for line in out.splitlines() if "replicas ready" in line]
    # Ticks every 0.9s: the status at 0, then at the first tick at least 5s later (5.4), then 10.8.
    assert [s.split("s/")[0] for s in statuses] == ["[  0.0", "[  5.4", "[ 10.8"]
    # Each status comes with its workload lines.
    assert out.count("agents/support-agent") == 3


def test_plain_display_prints_the_summary_text() -> None:
    stream = io.StringIO()
    with Display(stream, live=False) as display:
        display.show(SNAPSHOT)
        display.print_summary(SUMMARY)
    assert stream.getvalue().endswith(summary_text(SUMMARY))


def test_display_picks_live_on_a_tty_without_threads_of_its_own() -> None:
    stream = Tty()
    before = set(threading.enumerate())
    with Display(stream) as display:
        display.show(SNAPSHOT)
        display.show(Snapshot(13.0, 75.0, NODES, WORKLOADS, LOG))
        assert set(threading.enumerate()) == before
        display.print_summary(SUMMARY)
    out = stream.getvalue()
    plain = ANSI.sub("", out)
    # The live frame, not plain lines: the nodes panel is there, the plain status line is not.
    assert "Nodes 4/5 Ready" in plain
    assert "gpu-b-910b-02" in plain
    assert "[ 12.0s/75s]" not in plain
    assert "13.0s of 75s" in plain
    # The report is printed after the last frame, as plain text, colour codes and all left out.
    assert out.endswith(summary_text(SUMMARY))


def test_live_display_needs_to_be_started() -> None:
    display = Display(io.StringIO(), live=True)
    with pytest.raises(RuntimeError, match="with Display"):
        display.show(SNAPSHOT)
