"""Generate the operator's Grafana dashboard, charts/gpu-fabric-operator/dashboards/gpu-fabric-operator.json.

The dashboard reads only the operator's own `gpufabric_*` metrics (README, "Metrics") and answers, top to
bottom, the questions an operator of a mixed NVIDIA / Moore Threads / Ascend fleet asks:

- Fleet tokens/s: how many generation (and prompt) tokens per second the fleet serves, split by vendor,
  accelerator and precision.
- Workloads: does each AgentWorkload reach its `targetTokensPerSecond` (the target is the dashed line), and
  are its replicas desired = placed = ready.
- Tokens per device-second: the cross-vendor comparison a compute centre buys on, measured now and as
  placement has learned it.
- Devices: accelerators allocated / free / unavailable / held by others / not offered per vendor and per
  RoCE domain, ComputeNodes by state, devices the Nodes do not advertise.
- Free capacity: generation tokens/s the free devices could still serve, per model size class.
- Unschedulable workloads: how many, and which.
- Operator: placement latency, reconcile errors, serving-engine scrape failures, API writes, passes and
  placements, which instance leads.

Variables: `datasource` (any Prometheus data source), and `namespace`, `workload`, `vendor` (multi-select,
All = `.*`, used as `=~"$var"` matchers). Panels are built with grafana-foundation-sdk's builders (pinned in
pyproject.toml's `dev` extra, for Grafana 11.6) and laid out by its Dashboard builder.

Usage: `python scripts/dashboard.py` writes the JSON; `python scripts/dashboard.py --check` exits 1 when the
committed JSON differs from what this would write (0 when equal). `queries()` lists every panel's PromQL with
the dashboard's variables replaced, for evaluating them against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "charts" / "gpu-fabric-operator" / "dashboards" / "gpu-fabric-operator.json"

UID = "gpu-fabric-operator"
TITLE = "GPU Fabric Operator"
DESCRIPTION = (
    "Tokens/s served and targets, tokens per device-second across vendors, devices and free capacity, "
    "unschedulable workloads and the operator's own health, from the gpu-fabric-operator's gpufabric_* metrics."
)
# Every panel and target names the data source through the variable, so one JSON works with whatever the
# Prometheus data source is called in the Grafana it is loaded into.
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
ALL = ".*"
# Grafana's grid is 24 columns wide.
GRID_WIDTH = 24
HEIGHT = 8

# Grafana's custom "count:" units scale like `short` (K, M, B) and append the word, so a rate reads as what it
# counts ("1.2 K tokens/s") without a per-panel axis label.
TOKENS_PER_SECOND = "count:tokens/s"
ERRORS_PER_SECOND = "count:errors/s"
FAILURES_PER_SECOND = "count:failures/s"
PER_SECOND = "count:/s"

NS = 'namespace=~"$namespace"'
WL = 'workload=~"$workload"'
VENDOR = 'vendor=~"$vendor"'
RATE = "[$__rate_interval]"

Panel = Builder[models.Panel]
Section = tuple[str, list[Panel]]


# --- building blocks -----------------------------------------------------------------------------------------


def target(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    """One PromQL query of a panel; the legend is a Grafana template of the series' labels."""
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(DATASOURCE).range()


def generation_rate(by: str, *matchers: str) -> str:
    """Generation tokens/s summed by the given labels, from the token counter (resets handled by rate())."""
    selector = ", ".join(('kind="generation"', *matchers))
    return f"sum by ({by}) (rate(gpufabric_tokens_total{{{selector}}}{RATE}))"


def graph(title: str, description: str, unit: str, *targets: prometheus.Dataquery, width: int = 12) -> timeseries.Panel:
    """A time series panel with the dashboard's common settings: legend as a table with last and max, and a
    tooltip listing every series (largest first), so a busy fleet stays readable."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(HEIGHT)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
    )
    for query in targets:
        panel.with_target(query)
    return panel


def stacked(panel: timeseries.Panel) -> timeseries.Panel:
    """Stack the series: for parts of a whole (devices by state), the top line is the total."""
    return panel.fill_opacity(40).stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))


def dashed() -> list[models.DynamicConfigValue]:
    """Override properties drawing a series dashed: targets and desired counts, against what is measured."""
    style = common_builders.LineStyle().fill("dash").dash([10.0, 10.0]).build()
    return [
        models.DynamicConfigValue(id_val="custom.lineStyle", value=style),
        models.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
    ]


def thresholds(*steps: tuple[float | None, str]) -> dashboard_builders.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (from minus infinity)."""
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


def single_stat(title: str, description: str, unit: str, query: prometheus.Dataquery, width: int) -> stat.Panel:
    """A big number: the last value, coloured by thresholds, with a sparkline of the time range."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(HEIGHT)
        .with_target(query)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
    )


# --- rows ------------------------------------------------------------------------------------------------------


def fleet_tokens() -> Section:
    per = "Generation tokens/s the selected namespaces serve on the selected vendors, "
    reading = "Read it against the fleet total: a group that drops while others hold points at that hardware."
    return (
        "Fleet tokens/s",
        [
            single_stat(
                "Generation tokens/s",
                "Generation (output) tokens per second the whole selection serves now, summed over every workload "
                "and device: the fleet's throughput in the unit workloads are sized in.",
                TOKENS_PER_SECOND,
                target(f'sum(rate(gpufabric_tokens_total{{kind="generation", {VENDOR}, {NS}}}{RATE}))', "", "A"),
                width=4,
            ).thresholds(thresholds((None, "blue"))),
            graph(
                "Generation tokens/s by vendor",
                per + "by vendor. " + reading,
                TOKENS_PER_SECOND,
                target(generation_rate("vendor", VENDOR, NS), "{{vendor}}", "A"),
                width=10,
            ),
            graph(
                "Prompt tokens/s",
                "Prompt (input) tokens per second the selection's serving engines processed: prefill load. A prompt "
                "rate far above the generation rate means long contexts, which cost memory and latency.",
                TOKENS_PER_SECOND,
                target(f'sum(rate(gpufabric_tokens_total{{kind="prompt", {VENDOR}, {NS}}}{RATE}))', "prompt", "A"),
                width=10,
            ),
            graph(
                "Generation tokens/s by accelerator",
                per + "by accelerator model. " + reading,
                TOKENS_PER_SECOND,
                target(generation_rate("vendor, accelerator", VENDOR, NS), "{{vendor}} {{accelerator}}", "A"),
            ),
            graph(
                "Generation tokens/s by precision",
                per + "by the precision the models run in (bf16, fp8, int8, ...). " + reading,
                TOKENS_PER_SECOND,
                target(generation_rate("precision", VENDOR, NS), "{{precision}}", "A"),
            ),
        ],
    )


def workloads() -> Section:
    return (
        "Workloads: tokens/s against target",
        [
            graph(
                "Generation tokens/s per workload, against target",
                "Solid: generation tokens/s each selected AgentWorkload serves. Dashed: its "
                "spec.throughput.targetTokensPerSecond (only for workloads that set one). A solid line below its "
                "dashed one is a workload short of its target: look at its replicas (next panel) and at free "
                "capacity.",
                TOKENS_PER_SECOND,
                target(generation_rate("namespace, workload", NS, WL), "{{namespace}}/{{workload}}", "A"),
                target(
                    f"max by (namespace, workload) (gpufabric_throughput_target_tokens_per_second{{{NS}, {WL}}})",
                    "{{namespace}}/{{workload}} target",
                    "B",
                ),
            ).override_by_query("B", dashed()),
            graph(
                "Replicas per workload",
                "Replicas of each selected AgentWorkload: desired (dashed, spec.replicas), placed (the operator chose "
                "a node) and ready (serving). placed below desired: no room (see Unschedulable); ready below "
                "placed: pods starting or failing.",
                "short",
                target(
                    f"max by (namespace, workload, state) (gpufabric_replicas{{{NS}, {WL}}})",
                    "{{namespace}}/{{workload}} {{state}}",
                    "A",
                ),
            ).override_by_regexp(".* desired", dashed()),
        ],
    )


def tokens_per_device() -> Section:
    return (
        "Tokens per device-second by accelerator",
        [
            graph(
                "Generation tokens/s per device (measured)",
                "Generation tokens per second per accelerator, measured now over ready replicas, by accelerator and "
                "precision: the cross-vendor comparison (what one device of each kind delivers) a compute centre "
                "buys on. Depends on the models running, so compare accelerators serving similar models.",
                TOKENS_PER_SECOND,
                target(
                    f"max by (vendor, accelerator, precision) (gpufabric_tokens_per_device_second{{{VENDOR}}})",
                    "{{vendor}} {{accelerator}} {{precision}}",
                    "A",
                ),
            ),
            graph(
                "Learned tokens/s per device (placement's view)",
                "Saturated generation tokens/s per device the operator has learned per model size class, "
                "accelerator and precision (at the class's largest model), which placement uses instead of the "
                "vendor table's prior. A series appears once enough samples are in.",
                TOKENS_PER_SECOND,
                target(
                    "max by (size_class, accelerator, precision) (gpufabric_learned_tokens_per_device_second)",
                    "{{accelerator}} {{precision}} ({{size_class}})",
                    "A",
                ),
            ),
        ],
    )


def devices() -> Section:
    return (
        "Devices",
        [
            stacked(
                graph(
                    "Devices by vendor and state",
                    "Accelerators per vendor, stacked by state: allocated (to the operator's replicas), free (on "
                    "Ready, uncordoned nodes), unavailable (free, on nodes NotReady or cordoned), held_by_others "
                    "(pods and DRA claims the operator does not manage), not_offered (declared, but the Node "
                    "advertises fewer or is missing). The top of each vendor's stack is its whole declared fleet.",
                    "short",
                    target(f"sum by (vendor, state) (gpufabric_devices{{{VENDOR}}})", "{{vendor}} {{state}}", "A"),
                )
            ),
            stacked(
                graph(
                    "Devices by RoCE domain and state",
                    "Accelerators per RoCE domain (a multi-node replica needs all its nodes in one domain), stacked "
                    "by state. '(no fabric)' is nodes outside the RoCE fabric. Free devices split over many domains "
                    "cannot take a large multi-node replica.",
                    "short",
                    target(
                        'sum by (roce_domain, state) (label_replace(gpufabric_devices{vendor=~"$vendor"}, '
                        '"roce_domain", "(no fabric)", "roce_domain", ""))',
                        "{{roce_domain}} {{state}}",
                        "A",
                    ),
                )
            ),
            stacked(
                graph(
                    "ComputeNodes by state",
                    "ComputeNodes per vendor and accelerator, stacked by state: ready, not_ready (the Node is "
                    "NotReady or missing), cordoned (spec.unschedulable). Anything but ready removes its devices "
                    "from placement.",
                    "short",
                    target(
                        f"sum by (vendor, accelerator, state) (gpufabric_compute_nodes{{{VENDOR}}})",
                        "{{vendor}} {{accelerator}} {{state}}",
                        "A",
                    ),
                )
            ),
            graph(
                "Devices not advertised by the Nodes",
                "Devices ComputeNodes declare that their Nodes do not offer (fewer in allocatable, from the device "
                "plugin, or in the DRA driver's ResourceSlices), per vendor and accelerator. Should be 0: above it, "
                "placement has that many devices fewer than declared; check the vendor's device plugin or DRA "
                "driver on the Nodes (`kubectl get cn` says which).",
                "short",
                target(
                    f"sum by (vendor, accelerator) (gpufabric_devices_not_advertised{{{VENDOR}}})",
                    "{{vendor}} {{accelerator}}",
                    "A",
                ),
            ).thresholds(thresholds((None, "green"), (1, "red"))),
        ],
    )


def free_capacity() -> Section:
    return (
        "Free capacity",
        [
            graph(
                "Free capacity in generation tokens/s per model size",
                "Generation tokens/s the free devices could serve for one more model of each size class "
                "(single-node replicas, best precision per accelerator, learned or prior per-device throughput). "
                "Near 0 for a class: a new or scaled-up workload of that size will not fit.",
                TOKENS_PER_SECOND,
                target(
                    "max by (size_class) (gpufabric_free_capacity_tokens_per_second)",
                    "{{size_class}}",
                    "A",
                ),
                width=GRID_WIDTH,
            ),
        ],
    )


def unschedulable() -> Section:
    listing = (
        table.Panel()
        .title("Workloads with unschedulable replicas")
        .description(
            "The selected AgentWorkloads that have replicas no node can take now (Placed=False, reason "
            "Unschedulable). `kubectl describe agentworkload` gives the reason per replica; free capacity and the "
            "Devices row show what is missing."
        )
        .datasource(DATASOURCE)
        .span(18)
        .height(HEIGHT)
        .with_target(
            target(f"max by (namespace, workload) (gpufabric_workload_unschedulable{{{NS}, {WL}}} == 1)", "", "A")
            .instant()
            .format(PromQueryFormat.TABLE)
        )
        # The value is always 1 and the time is now: only the names are news.
        .with_transformation(
            models.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True, "Value": True}})
        )
    )
    return (
        "Unschedulable workloads",
        [
            single_stat(
                "Unschedulable workloads",
                "AgentWorkloads (all namespaces) with replicas no node can take. Should be 0; the table beside it "
                "names them.",
                "short",
                target("max(gpufabric_unschedulable_workloads)", "", "A"),
                width=6,
            ).thresholds(thresholds((None, "green"), (1, "red"))),
            listing,
        ],
    )


def operator_health() -> Section:
    return (
        "Operator",
        [
            graph(
                "Placement decision latency",
                "Time the leader takes to decide one reconcile pass (snapshot, placement, rendering, status), "
                "median and 99th percentile. A p99 approaching the resync interval means passes queue up.",
                "s",
                target(placement_quantile(0.5), "p50", "A"),
                target(placement_quantile(0.99), "p99", "B"),
                width=8,
            ),
            graph(
                "Reconcile errors by action",
                "Writes that failed after retries, and failed passes (action=pass), per second by action. Should be "
                "0; the operator's log names the objects.",
                ERRORS_PER_SECOND,
                target(f"sum by (action) (rate(gpufabric_reconcile_errors_total{RATE}))", "{{action}}", "A"),
                width=8,
            ),
            graph(
                "Serving-engine scrape failures by reason",
                "Scrapes of serving engines' metrics that yielded nothing, per second by reason (timeout, "
                "unreachable, parse_error, ...). While they fail, tokens/s for those replicas are not counted.",
                FAILURES_PER_SECOND,
                target(f"sum by (reason) (rate(gpufabric_scrape_failures_total{RATE}))", "{{reason}}", "A"),
                width=8,
            ),
            graph(
                "API writes by verb and resource",
                "Write requests sent to the Kubernetes API server per second, retries included, by verb and "
                "resource. A steady high rate on a quiet fleet means the operator is fighting something.",
                "reqps",
                target(
                    f"sum by (verb, resource) (rate(gpufabric_api_writes_total{RATE}))", "{{verb}} {{resource}}", "A"
                ),
                width=8,
            ),
            graph(
                "Reconcile passes and replicas placed",
                "Reconcile passes the leader runs and replicas it places (new, scaled up, moved, rolled), per "
                "second. Passes with no placements are the steady state.",
                PER_SECOND,
                target(f"sum(rate(gpufabric_reconcile_passes_total{RATE}))", "passes", "A"),
                target(f"sum(rate(gpufabric_replicas_placed_total{RATE}))", "replicas placed", "B"),
                width=8,
            ),
            graph(
                "Leader",
                "1 for the operator instance that holds the Lease and reconciles, 0 for standbys, by scraped "
                "instance. Exactly one line should be at 1: none means nothing reconciles.",
                "short",
                target("max by (instance) (gpufabric_leader)", "{{instance}}", "A"),
                width=8,
            ).max(1),
        ],
    )


def placement_quantile(quantile: float) -> str:
    return (
        f"histogram_quantile({quantile}, sum by (le) "
        f"(rate(gpufabric_placement_decision_duration_seconds_bucket{RATE})))"
    )


SECTIONS = (fleet_tokens, workloads, tokens_per_device, devices, free_capacity, unschedulable, operator_health)


# --- variables and the dashboard ------------------------------------------------------------------------------


def label_variable(name: str, label: str, query: str, description: str) -> dashboard_builders.QueryVariable:
    """A multi-select Prometheus label_values() variable whose All is `.*`: the panels use `=~"$name"`, and a
    regex All keeps queries short however many values there are (Grafana's default All lists them all)."""
    everything = models.VariableOption(selected=True, text=["All"], value=["$__all"])
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(ALL)
        .current(everything)
    )


def variables() -> list[Builder[models.VariableModel]]:
    return [
        dashboard_builders.DatasourceVariable("datasource")
        .label("Data source")
        .description("The Prometheus that scrapes the operator.")
        .type("prometheus"),
        label_variable(
            "namespace",
            "Namespace",
            "label_values(gpufabric_replicas, namespace)",
            "Namespaces of AgentWorkloads.",
        ),
        label_variable(
            "workload",
            "Workload",
            'label_values(gpufabric_replicas{namespace=~"$namespace"}, workload)',
            "AgentWorkloads in the selected namespaces.",
        ),
        label_variable(
            "vendor",
            "Vendor",
            "label_values(gpufabric_devices, vendor)",
            "Accelerator vendors in the fleet.",
        ),
    ]


def build() -> models.Dashboard:
    """The dashboard model: rows in SECTIONS order, each followed by its panels, laid out left to right by the
    SDK's Dashboard builder (a panel starts a new line when the current one is full)."""
    board = (
        dashboard_builders.Dashboard(TITLE)
        .uid(UID)
        .description(DESCRIPTION)
        .tags(["gpu-fabric-operator", "kubernetes", "gpu", "llm-inference"])
        .editable()
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .variables(variables())
    )
    for title, panels in (section() for section in SECTIONS):
        board.with_row(dashboard_builders.Row(title))
        for panel in panels:
            board.with_panel(panel)
    model = board.build()
    number_panels(model)
    return model


def number_panels(model: models.Dashboard) -> None:
    """Give rows and panels ids 1, 2, ... in order: Grafana needs them unique (links, `viewPanel=`), and
    fixed ids keep the generated JSON stable."""
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number


def render() -> str:
    """The dashboard as committed: indented JSON, keys sorted, one trailing newline."""
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- the queries, for evaluating them --------------------------------------------------------------------------


def all_panels(dashboard_json: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves are left out."""
    for panel in dashboard_json.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queries(dashboard_json: Mapping[str, Any], rate_interval: str = "1m") -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, with the template variables replaced so that
    Prometheus accepts the expression as is: each variable with an All value by that value (`.*`, which matches
    every series, as the dashboard's All does), `$__rate_interval` by `rate_interval`. A `$` reference to any
    other variable raises ValueError, so a misspelt variable is found before Grafana shows an empty panel."""
    values = {"__rate_interval": rate_interval}
    for variable in dashboard_json.get("templating", {}).get("list", []):
        if variable.get("includeAll") and variable.get("allValue") is not None:
            values[variable["name"]] = variable["allValue"]

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"unknown variable ${name} in {match.string!r}")
        return values[name]

    found: list[tuple[str, str]] = []
    for panel in all_panels(dashboard_json):
        for query in panel.get("targets", []):
            expr = re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, query["expr"])
            found.append((panel["title"], expr))
    return found


# --- command line ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed JSON is not what this would write"
    )
    args = parser.parse_args(argv)
    text = render()
    shown = OUTPUT.relative_to(ROOT)
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{shown} is stale: run `make dashboard` and commit it", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
