"""What `gpufabric sandbox` shows: a live rich view on a terminal, plain lines elsewhere, and the end-of-run report.

Formatting only: everything comes from `sandbox.snapshot`'s frozen rows, built by the orchestrator. Names, reasons
and event messages come from the API objects, so they always go into `rich.text.Text` (never into markup strings,
where a `[` in an event message would be read as a style tag).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TextIO

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gpufabric.api.reasons import ConditionReason
from gpufabric.sandbox.snapshot import (
    ForeignJobReport,
    LogLine,
    NodeRow,
    RealEngineReport,
    Recovery,
    Snapshot,
    Summary,
    WorkloadRow,
)
from gpufabric.texttable import table

SIMULATION_BANNER = (
    "SIMULATION — simulated nodes, kubelets and inference engines; the GPU Fabric Operator inside is the real one"
)

# The live view shows this many of the latest log lines, so the frame keeps its height as events come in.
LOG_LINES = 10

# Vendors in the order the project lists them everywhere (README, plan output); unknown ones follow, by name.
_VENDOR_ORDER = ("nvidia", "mthreads", "ascend")
_VENDOR_NAMES = {"nvidia": "NVIDIA", "mthreads": "Moore Threads", "ascend": "Ascend"}

# A node's bar has one square per device up to this many; bigger nodes are scaled down to it, so one large node
# does not widen every cell of the grid.
_BAR_CELLS = 8
# A device promised to the operator's replicas, held by a pod the operator does not manage, free.
_OURS, _OTHERS, _FREE = "■", "▨", "□"
# A device of the replica a real engine serves (--real-engine), and the tag on its workload's name: the one
# thing in the view that is not simulated, marked where the eye looks for it.
_REAL, REAL_TAG = "◆", "REAL"
_NOT_READY = "NotReady"
# The nodes grid: the group label column's widest, and the blanks between it and the cells and between cells.
_LABEL_WIDTH = 14
_GAP = 3
# The workloads table's names column, narrowest before the view gives up on a table.
_NAME_WIDTH = 20

# Log lines' sources other than the scenario's (magenta, the whole line): the real engine's progress in its colour.
_SOURCE_STYLES = {"real": "bold cyan"}

# The Ready condition's reasons (the phase column) that deserve a colour.
_PHASE_STYLES = {
    ConditionReason.ALL_REPLICAS_READY.value: "green",
    ConditionReason.SCALED_TO_ZERO.value: "green",
    ConditionReason.UNSCHEDULABLE.value: "bold red",
    ConditionReason.PODS_UNSCHEDULABLE.value: "bold red",
    ConditionReason.REPLICAS_UNAVAILABLE.value: "bold red",
    ConditionReason.ARGS_CONFLICT.value: "bold red",
}


def _vendor_key(vendor: str) -> tuple[int, str]:
    return (_VENDOR_ORDER.index(vendor), "") if vendor in _VENDOR_ORDER else (len(_VENDOR_ORDER), vendor)


def _rate(tokens_per_second: float) -> str:
    return f"{tokens_per_second:,.0f}"


def _seconds(at: float) -> str:
    return f"{at:,.1f}s"


def _below_target(row: WorkloadRow) -> bool:
    # No measurement yet is not "below": the first scrape has not happened, and red would be a false alarm.
    return row.target is not None and row.tokens_per_second is not None and row.tokens_per_second < row.target


def _totals(workloads: Iterable[WorkloadRow]) -> tuple[int, int, float]:
    """(ready replicas, replicas, measured tokens/s) over the workloads; unmeasured ones count as 0 tokens/s."""
    rows = list(workloads)
    return sum(w.ready for w in rows), sum(w.replicas for w in rows), sum(w.tokens_per_second or 0.0 for w in rows)


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _throughput(row: WorkloadRow) -> str:
    """`12,300/10,000`: measured over target; `—` before the first measurement; no `/` without a target."""
    measured = "—" if row.tokens_per_second is None else _rate(row.tokens_per_second)
    return measured if row.target is None else f"{measured}/{_rate(row.target)}"


def _placements(row: WorkloadRow) -> str:
    return ", ".join(row.placements) if row.placements else "—"


def _name(row: WorkloadRow) -> str:
    return f"{row.namespace}/{row.name}" + (f" {REAL_TAG}" if row.real else "")


# ---------------------------------------------------------------------------------------------------------------
# Live view


def live_renderable(snapshot: Snapshot) -> RenderableType:
    """One frame for `rich.live.Live`: header, nodes by vendor and RoCE domain, workloads, the latest log lines."""
    return Group(
        _header(snapshot),
        _nodes_panel(snapshot.nodes),
        _Workloads(snapshot.workloads),
        _log_panel(snapshot.log),
    )


def _header(snapshot: Snapshot) -> Text:
    ready, replicas, tokens = _totals(snapshot.workloads)
    text = Text(SIMULATION_BANNER, style="bold black on yellow")
    text.append("\n")
    text.append(f"{_seconds(snapshot.elapsed)} of {snapshot.duration:,.0f}s", style="bold")
    text.append(" · API: ")
    text.append(snapshot.api, style="cyan")
    text.append(f" · {ready:,}/{replicas:,} replicas ready · {_rate(tokens)} tok/s")
    if snapshot.real_engine is not None:
        text.append("\n")
        text.append(f"{_REAL} {REAL_TAG} ", style="bold cyan")
        text.append(f"engine (vLLM CPU, tiny model): {snapshot.real_engine}", style="cyan")
    return text


def _nodes_panel(nodes: Sequence[NodeRow]) -> Panel:
    if not nodes:
        return Panel(Text("no ComputeNodes yet", style="dim"), title="Nodes", title_align="left")
    not_ready = sum(not n.ready for n in nodes)
    title = Text(f"Nodes {len(nodes) - not_ready}/{len(nodes)} Ready", style="bold")
    if not_ready:
        title.append(f" · {not_ready} {_NOT_READY}", style="bold red")
    used, others = sum(n.used for n in nodes), sum(n.others for n in nodes)
    title.append(f" · {used + others:,}/{sum(n.devices for n in nodes):,} devices used")
    if others:
        title.append(f" ({others:,} {_OTHERS} by others)", style="magenta")
    if any(n.real for n in nodes):
        title.append(f" · {_REAL} {REAL_TAG}", style="bold cyan")  # short: the title shares 80 columns
    return Panel(_NodeGrid(nodes), title=title, title_align="left")


def _in_use(node: NodeRow) -> str:
    """`used/devices`, counting the devices others hold too: the bar shows whose they are."""
    return f"{node.used + node.others}/{node.devices}"


class _NodeGrid:
    """The nodes, grouped by vendor then RoCE domain: a label column (vendor, domain, accelerators) and as many
    equal cells per line as the width allows (`gpu-a-h100-01 ■■■■□□□□ 4/8`). Laid out here rather than with rich's
    Columns so that every group gets the same number of cells per line and the label sits beside its nodes, not
    above them: 25 nodes take about a dozen lines at 80 columns."""

    def __init__(self, nodes: Sequence[NodeRow]) -> None:
        self.groups: dict[tuple[str, str | None], list[NodeRow]] = {}
        for node in sorted(nodes, key=lambda n: (_vendor_key(n.vendor), n.domain is None, n.domain or "", n.name)):
            self.groups.setdefault((node.vendor, node.domain), []).append(node)
        # Every cell is padded to the fleet's widest name, bar and count, so the groups' cells line up.
        self.name_width = max(len(n.name) for n in nodes)
        self.bar_width = max(min(n.devices, _BAR_CELLS) for n in nodes)
        if any(not n.ready for n in nodes):
            self.bar_width = max(self.bar_width, len(_NOT_READY))
        self.count_width = max(len(_in_use(n)) for n in nodes)
        self.label_width = min(_LABEL_WIDTH, max(len(line) for key in self.groups for line in self.label(*key)))

    @property
    def cell_width(self) -> int:
        return self.name_width + 1 + self.bar_width + 1 + self.count_width

    def label(self, vendor: str, domain: str | None, lines: int | None = None) -> list[str]:
        """Vendor, domain, then the group's accelerators; with `lines`, at most that many lines (at least two), the
        accelerators that do not fit joined on the last line (cut at the column's edge)."""
        members = self.groups[vendor, domain]
        accelerators = sorted({n.accelerator for n in members})
        head = [_VENDOR_NAMES.get(vendor, vendor), "no RoCE fabric" if domain is None else f"domain {domain}"]
        room = len(accelerators) if lines is None else max(0, lines - 2)
        if room >= len(accelerators):
            return [*head, *accelerators]
        if room == 0:
            return head
        return [*head, *accelerators[: room - 1], ", ".join(accelerators[room - 1 :])]

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = self.label_width + _GAP + max(len(m) for m in self.groups.values()) * (self.cell_width + _GAP) - _GAP
        return Measurement(min(self.label_width + _GAP + self.cell_width, widest), widest)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if options.max_width < self.label_width + _GAP + self.cell_width:
            yield from self.stacked()
            return
        per_line = (options.max_width - self.label_width) // (_GAP + self.cell_width)
        for (vendor, domain), members in self.groups.items():
            rows = [members[i : i + per_line] for i in range(0, len(members), per_line)]
            # Vendor and domain always; the accelerators only on lines the nodes take anyway.
            label = self.label(vendor, domain, lines=len(rows))
            for index in range(max(2, len(rows))):
                line = Text(no_wrap=True, overflow="ellipsis")
                if index < len(label):
                    style = "bold" if index == 0 else ("cyan" if index == 1 else "dim")
                    line.append(_fit(label[index], self.label_width), style=style)
                else:
                    line.append(" " * self.label_width)
                for node in rows[index] if index < len(rows) else []:
                    line.append(" " * _GAP)
                    line.append_text(self.cell(node))
                line.rstrip()
                yield line

    def stacked(self) -> Iterable[Text]:
        """For a terminal too narrow for the label column: each group's label on a line above its nodes."""
        for (vendor, domain), members in self.groups.items():
            yield Text(" · ".join(self.label(vendor, domain)), style="bold", no_wrap=True, overflow="ellipsis")
            for node in members:
                yield Text.assemble(self.cell(node), no_wrap=True, overflow="ellipsis")

    def cell(self, node: NodeRow) -> Text:
        cell = Text()
        cell.append(node.name.ljust(self.name_width), style="" if node.ready else "bold red")
        cell.append(" ")
        if node.ready:
            ours, others, cells = _bar(node.used, node.others, node.devices)
            full = ours + others == cells
            real = min(node.real, ours)  # the real engine's device first, in place of one of ours
            cell.append(_REAL * real, style="bold cyan")
            cell.append(_OURS * (ours - real), style="yellow" if full else "green")
            cell.append(_OTHERS * others, style="magenta")
            cell.append(_FREE * (cells - ours - others), style="dim")
            cell.append(" " * (self.bar_width - cells))
        else:
            # In place of the bar, where the eye looks for usage: what the node has is unusable anyway.
            cell.append(_NOT_READY, style="bold white on red")
            cell.append(" " * (self.bar_width - len(_NOT_READY)))
        cell.append(" " + _in_use(node).rjust(self.count_width), style="" if node.ready else "red")
        return cell


def _fit(text: str, width: int) -> str:
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"


def _bar(ours: int, others: int, devices: int) -> tuple[int, int, int]:
    """(cells of ours, cells of others', cells) of a node's bar: as `_filled`, with the part others hold (at least
    one cell when they hold any) taken from the filled cells."""
    filled, cells = _filled(ours + others, devices)
    theirs = min(_filled(others, devices)[0], filled)
    return filled - theirs, theirs, cells


def _filled(used: int, devices: int) -> tuple[int, int]:
    """(filled, cells) of a node's usage bar: one cell per device, or scaled to _BAR_CELLS for bigger nodes, where
    partial use never rounds to empty or full (a node with one device free is not full)."""
    used = max(0, min(used, devices))
    if devices <= _BAR_CELLS:
        return used, max(devices, 0)
    filled = round(used * _BAR_CELLS / devices)
    if 0 < used < devices:
        filled = min(max(filled, 1), _BAR_CELLS - 1)
    return filled, _BAR_CELLS


class _Workloads:
    """The workloads table, in one of two layouts: placements in their own column when the terminal is wide
    enough for one line per workload, else listed under the workload's name (a narrow PLACEMENTS column would fold
    `nvidia/H100-SXM5-80GB/FP8 x2` over three lines)."""

    def __init__(self, workloads: Sequence[WorkloadRow]) -> None:
        self.workloads = workloads

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.workloads:
            yield Panel(Text("no AgentWorkloads yet", style="dim"), title="Workloads", title_align="left")
            return
        # Measured without the terminal's limit (Measurement.get clamps to it): the widths they need unwrapped.
        unbounded = options.update(width=10_000, max_width=10_000)
        wide = self.table(wide=True)
        if Measurement.get(console, unbounded, wide).maximum <= options.max_width:
            yield wide
            return
        narrow = self.table(wide=False)
        # What the numbers take (they never wrap); the names get the rest, and need a readable share of it.
        names = max(len(line) for w in self.workloads for line in [_name(w), *w.placements])
        numbers = Measurement.get(console, unbounded, narrow).maximum - names
        if options.max_width - numbers >= min(names, _NAME_WIDTH):
            yield narrow
        else:
            yield from self.stacked()

    def stacked(self) -> Iterable[Text]:
        """For a terminal too narrow for any table: each workload on lines of its own, wrapped where they must."""
        yield Text("WORKLOADS", style="bold")
        for row in self.workloads:
            line = Text(f"{row.namespace}/{row.name} ", overflow="fold")
            if row.real:
                line.append(f"{REAL_TAG} ", style="bold cyan")
            line.append(f"{row.ready}/{row.replicas}", style=self.ready_style(row))
            line.append(" ")
            line.append(row.phase, style=_PHASE_STYLES.get(row.phase, "yellow"))
            line.append("\n  ")
            line.append(f"{_throughput(row)} tok/s", style=self.tokens_style(row))
            line.append(f", demand {_rate(row.demand)}")
            for placement in row.placements:
                line.append(f"\n  {placement}", style="dim")
            yield line

    def table(self, *, wide: bool) -> Table:
        # No title and no edges: the column names say what this is, and every line counts at 80x40. Blank right
        # padding plus the blank separator: two spaces between columns, like kubectl.
        grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
        # Only the names and placements may wrap (folded, not cut: they are what the reader looks for), so on a
        # narrow terminal the numbers keep their width and the names take what is left.
        grid.add_column("WORKLOAD", overflow="fold")
        grid.add_column("READY", justify="right", no_wrap=True)
        if wide:
            grid.add_column("PLACEMENTS", overflow="fold")
        grid.add_column("TOK/S (TARGET)", justify="right", no_wrap=True)
        grid.add_column("DEMAND", justify="right", no_wrap=True)
        grid.add_column("PHASE", no_wrap=True)
        for row in self.workloads:
            name = Text(f"{row.namespace}/{row.name}")
            if row.real:
                name.append(f" {REAL_TAG}", style="bold cyan")
            placements = Text("\n".join(row.placements) if row.placements else "—", style="dim")
            if not wide:
                # Indented under the name they belong to; nothing for none (the PHASE column says why).
                for placement in row.placements:
                    name.append(f"\n  {placement}", style="dim")
            cells = [name, Text(f"{row.ready}/{row.replicas}", style=self.ready_style(row))]
            if wide:
                cells.append(placements)
            cells += [
                Text(_throughput(row), style=self.tokens_style(row)),
                Text(_rate(row.demand)),
                Text(row.phase, style=_PHASE_STYLES.get(row.phase, "yellow")),
            ]
            grid.add_row(*cells)
        return grid

    @staticmethod
    def ready_style(row: WorkloadRow) -> str:
        if row.ready >= row.replicas:
            return "green"
        return "red" if row.ready == 0 else "yellow"

    @staticmethod
    def tokens_style(row: WorkloadRow) -> str:
        if _below_target(row):
            return "bold red"
        return "green" if row.target is not None and row.tokens_per_second is not None else ""


def _log_panel(log: Sequence[LogLine]) -> Panel:
    lines = log[-LOG_LINES:]
    if not lines:
        return Panel(Text("no events yet", style="dim"), title="Events", title_align="left")
    rows: list[Text] = []
    for line in lines:
        scenario = line.source == "scenario"
        # One line per event, cut at the edge, so the frame does not change height as long messages arrive; the
        # plain output and the operator's Kubernetes events keep the whole text.
        row = Text(no_wrap=True, overflow="ellipsis")
        row.append(f"{line.at:6,.1f}s ", style="dim")
        row.append(f"{line.source:<8} ", style="bold magenta" if scenario else _SOURCE_STYLES.get(line.source, "blue"))
        row.append(line.text, style="magenta" if scenario else "")
        rows.append(row)
    return Panel(Group(*rows), title=f"Events (last {len(lines)})", title_align="left")


# ---------------------------------------------------------------------------------------------------------------
# Plain output


def _status_line(snapshot: Snapshot) -> str:
    ready, replicas, tokens = _totals(snapshot.workloads)
    line = (
        f"[{snapshot.elapsed:5,.1f}s/{snapshot.duration:,.0f}s] {_plural(len(snapshot.workloads), 'workload')}, "
        f"{ready:,}/{replicas:,} replicas ready, {_rate(tokens)} tok/s"
    )
    not_ready = sum(not n.ready for n in snapshot.nodes)
    if not_ready:
        line += f", {not_ready}/{len(snapshot.nodes)} nodes {_NOT_READY}"
    others = sum(n.others for n in snapshot.nodes)
    if others:
        line += f", {_plural(others, 'device')} held by others"
    if snapshot.real_engine is not None:
        line += f", {REAL_TAG} engine: {snapshot.real_engine}"
    return line


def _log_line(line: LogLine) -> str:
    return f"[{line.at:5,.1f}s] {line.source:<8}  {line.text}"


def plain_lines(snapshot: Snapshot) -> list[str]:
    """For a log file or pipe: the status line, one line per workload, then every log line of the snapshot (the
    caller passes only the ones it has not printed yet). No colour, no cursor movement."""
    # Placements last: the longest and most variable column would push the others far right.
    rows = [
        [
            _name(w),
            f"{w.ready}/{w.replicas}",
            f"{_throughput(w)} tok/s" + (" BELOW TARGET" if _below_target(w) else ""),
            f"demand {_rate(w.demand)}",
            w.phase,
            _placements(w),
        ]
        for w in snapshot.workloads
    ]
    # texttable pads every column to its widest cell; the first row stands in for its header, so none is printed.
    workload_lines = [f"  {line}" for line in table(rows[0], rows[1:])] if rows else []
    return [_status_line(snapshot), *workload_lines, *(_log_line(line) for line in snapshot.log)]


# ---------------------------------------------------------------------------------------------------------------
# End-of-run report


def summary_text(summary: Summary) -> str:
    """The report printed when the run ends: plain text, also on a terminal, so it can be copied or piped."""
    lines = [SIMULATION_BANNER, f"Ran for {_seconds(summary.elapsed)}.", ""]
    lines += _section("REPLICAS PER VENDOR AT THE END", _vendor_rows(summary), "no replica placed")
    lines += _section(
        "MEAN TOKENS/S PER VENDOR AND PRECISION (the operator's own measurements)",
        _tokens_rows(summary),
        "no tokens measured",
    )
    lines += _section(
        "RESCHEDULES (replicas lost with a node)", [[_recovery(r)] for r in summary.recoveries], "no replica lost"
    )
    lines += _section(
        "FOREIGN JOBS (pods the operator does not manage)",
        [[_foreign_job(job)] for job in summary.foreign_jobs],
        "no foreign job ran",
    )
    lines += _section(
        "AUTOSCALING",
        [[f"at {_seconds(s.at)} {s.workload} {s.before} -> {s.after}: {s.reason}"] for s in summary.scalings],
        "no scaling",
    )
    lines += _section("WORKLOADS", _workload_rows(summary.workloads), "no workloads")
    lines += _section("UNPLACED", [[u] for u in summary.unplaced], "every workload was fully placed")
    if summary.real_engine is not None:
        lines += [
            f"{REAL_TAG} ENGINE (vLLM's CPU build, the tiny model: not simulated; the operator's figures beside its "
            "clients' own)",
            *(f"  {line}" for line in real_engine_lines(summary.real_engine, summary.elapsed)),
            "",
        ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _section(title: str, rows: Sequence[Sequence[str]], empty: str) -> list[str]:
    """A title, its rows aligned (the first row is the header when there is one), and a blank line."""
    if not rows:
        return [title, f"  {empty}", ""]
    return [title, *(f"  {line}" for line in table(rows[0], rows[1:])), ""]


def _vendor_rows(summary: Summary) -> list[list[str]]:
    counts = summary.replicas_per_vendor
    total = sum(counts.values())
    if not total:
        return []
    rows = [["VENDOR", "REPLICAS", "SHARE"]]
    rows += [[v, f"{counts[v]:,}", f"{counts[v] / total:.0%}"] for v in sorted(counts, key=_vendor_key)]
    rows.append(["total", f"{total:,}", ""])
    return rows


def _tokens_rows(summary: Summary) -> list[list[str]]:
    means = summary.tokens_per_vendor_precision
    if not means:
        return []
    keys = sorted(means, key=lambda k: (_vendor_key(k[0]), k[1]))
    return [["VENDOR", "PRECISION", "MEAN TOKENS/S"], *([v, p, _rate(means[v, p])] for v, p in keys)]


def _recovery(recovery: Recovery) -> str:
    lost = f"{recovery.node} failed at {_seconds(recovery.failed_at)}: {recovery.workload} replica {recovery.replica}"
    if recovery.recovered_after is None:
        return f"{lost} not recovered"
    return f"{lost} Ready elsewhere after {_seconds(recovery.recovered_after)}"


def _foreign_job(job: ForeignJobReport) -> str:
    """What the job held and how the operator placed around it (or that the kubelet refused it)."""
    if job.rejected is not None:
        return f"{job.pod} on {job.node} at {_seconds(job.started_at)}: rejected by the kubelet ({job.rejected})"
    until = "the end" if job.ended_at is None else _seconds(job.ended_at)
    held = f"{job.pod} on {job.node} from {_seconds(job.started_at)} to {until}: held {job.devices} {job.resource}"
    seen = f"the operator counted {job.held_seen} held by others there"
    if not job.placed:
        return f"{held}; {seen} and placed no replica meanwhile"
    where = str(job.placed_on_node) if job.placed_on_node else "none"
    return f"{held}; {seen} and placed {_plural(job.placed, 'replica')} meanwhile, {where} on {job.node}"


def real_engine_lines(real: RealEngineReport, ended_at: float) -> list[str]:
    """Where the real engine ran and when it was Ready; then, once its clients ran, the operator's tokens/s and
    count beside the clients' own; its log. Or, in a line, how far it got."""
    where = f" on {real.node}" + (f" at {real.address}" if real.address else "") if real.node else ""
    log = f"its log: {real.log}"
    if real.started_at is None:
        return [f"{real.workload}: its replica never ran ({real.phase}): no tokens measured", log]
    started = f"{real.workload}: one replica{where}, started at {_seconds(real.started_at)}"
    if real.exited is not None:
        return [f"{started}; the engine {real.exited}: see its log", log]
    if real.ready_at is None:
        return [
            f"{started}: NOT READY when the run ended, still loading the model after "
            f"{_seconds(ended_at - real.started_at)} (vLLM takes 40-75 s here): no tokens measured; run longer",
            log,
        ]
    lines = [f"{started}, Ready at {_seconds(real.ready_at)} ({_seconds(real.ready_at - real.started_at)} to load)"]
    if real.load_started_at is None:
        return [*lines, "the operator had not scraped it yet when the run ended: no tokens measured", log]
    return [*lines, _real_rate(real), _real_count(real), log]


def _apart(a: float, b: float) -> str:
    return f"{abs(a - b) / b:.1%} apart" if b else "nothing to compare"


def _real_rate(real: RealEngineReport) -> str:
    if real.measured is None or real.measured_at is None:
        return "tokens/s: the operator wrote no tokens/s into the workload's status while the clients ran"
    measured = (
        f"tokens/s: the operator measured {_rate(real.measured)} (status.tokensPerSecond.generation, written at "
        f"{_seconds(real.measured_at)}, over its window)"
    )
    if real.client_rate is None:
        return measured
    apart = _apart(real.measured, real.client_rate)
    if not real.measured_settled and real.load_started_at is not None:
        # Its window then reached back before the load began: the operator's rate is diluted, the clients' not.
        into = _seconds(real.measured_at - real.load_started_at)
        apart += f"; written {into} into the load, less than a window of it, so the two cover different spans"
    return f"{measured}; the clients counted {_rate(real.client_rate)} over that window ({apart})"


def _real_count(real: RealEngineReport) -> str:
    clients = (
        f"the clients {real.client_tokens:,} ({_plural(real.requests, 'completion')}, {real.concurrency} at a time "
        f"for {_seconds(real.load_seconds)}; {_plural(real.errors, 'error')}"
        + (f", the last {real.last_error}" if real.errors and real.last_error else "")
        + ")"
    )
    if real.operator_tokens is None:
        return f"generated tokens: the operator's count is unknown; {clients}"
    operator = f"generated tokens: the operator counted {real.operator_tokens:,.0f} (gpufabric_tokens_total)"
    return f"{operator}, {clients} ({_apart(real.operator_tokens, real.client_tokens)})"


def _workload_rows(workloads: Sequence[WorkloadRow]) -> list[list[str]]:
    if not workloads:
        return []
    header = ["WORKLOAD", "READY", "PLACEMENTS", "TOKENS/S", "TARGET", "DEMAND", "PHASE"]
    return [
        header,
        *(
            [
                _name(w),
                f"{w.ready}/{w.replicas}",
                _placements(w),
                "—" if w.tokens_per_second is None else _rate(w.tokens_per_second),
                "—" if w.target is None else _rate(w.target),
                _rate(w.demand),
                w.phase,
            ]
            for w in workloads
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Choosing between the two


class Display:
    """Shows snapshots on `stream`: a rich Live frame on a terminal, plain lines otherwise (CI logs, pipes).

    `live=None` decides by `stream.isatty()`; `live=True` forces the Live view even where the stream does not look
    like a terminal. In plain mode the status and workload lines are printed at most once per `every` seconds of
    snapshot time, while every log line is printed once, as soon as a snapshot carries it.

    Use it as a context manager: the Live view is started on enter and stopped on exit, leaving the last frame on
    the screen (no alternate screen, not transient).
    """

    def __init__(self, stream: TextIO, *, live: bool | None = None, every: float = 5.0) -> None:
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.every = every
        # Only an explicit live=True forces terminal output; otherwise rich looks at the stream itself.
        self.console = Console(file=stream, force_terminal=True if live else None)
        self._live: Live | None = None
        self._last_status: float | None = None
        # The log lines already printed, by (at, text): every snapshot repeats the latest lines.
        self._printed: set[tuple[float, str]] = set()

    def __enter__(self) -> Display:
        if self.live:
            # auto_refresh=False: the frame only changes when a snapshot arrives (about once a second), so show()
            # refreshes it and no refresh thread runs.
            self._live = Live(console=self.console, auto_refresh=False, transient=False, screen=False)
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop_live()

    def show(self, snapshot: Snapshot) -> None:
        if self.live:
            if self._live is None:
                raise RuntimeError("Display.show() in live mode needs the view started: `with Display(...)`")
            self._live.update(live_renderable(snapshot), refresh=True)
            return
        new = tuple(line for line in snapshot.log if (line.at, line.text) not in self._printed)
        # The snapshot's log is a window over the latest lines: a line that left it never comes back, so
        # remembering the window's lines is enough, and keeps the set small on long runs.
        self._printed = {(line.at, line.text) for line in snapshot.log}
        if self._last_status is None or snapshot.elapsed - self._last_status >= self.every:
            self._last_status = snapshot.elapsed
            lines = plain_lines(dataclasses.replace(snapshot, log=new))
        else:
            lines = [_log_line(line) for line in new]
        self._write(lines)

    def print_summary(self, summary: Summary) -> None:
        """Prints `summary_text`, plain even on a terminal, as the report is meant to be copied or piped. A running
        Live view is stopped first (its last frame stays), or its next refresh would draw over the report."""
        self._stop_live()
        # A blank line first, to set the report off from the last frame or status.
        self._write(["", *summary_text(summary).splitlines()])

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _write(self, lines: Sequence[str]) -> None:
        if lines:
            self.stream.write("".join(f"{line}\n" for line in lines))
            self.stream.flush()
