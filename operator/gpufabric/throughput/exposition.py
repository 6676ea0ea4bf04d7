"""Prometheus text exposition into the few numbers we need: token counters, per series, and a queue gauge.

Parsing is prometheus-client's; everything that can go wrong with a serving engine's /metrics page —
garbage, truncation, a missing counter, a negative or non-finite value — becomes a `ScrapeProblem` with a
short fixed reason (it labels a metric, so the set is closed), never an exception for the caller.

Counters are kept per label set (one series per data-parallel engine, per model, …): increases are taken
per series and then summed, as PromQL's `sum(increase(...))` does, so one engine restarting or vanishing
cannot pass for a reset of the others. A page that does not end with a line feed was cut off in transit
(every line of the text format ends with one): it is refused whole, because a number cut in half still
parses — as a smaller number, which would look like a counter reset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Reasons a scrape yields nothing (label values of gpufabric_scrape_failures_total), and MISSING_GAUGE for a
# scrape that yielded counters but not the queue gauge the workload names.
PARSE_ERROR = "parse_error"
TRUNCATED = "truncated"
TOO_LARGE = "too_large"
MISSING_COUNTER = "missing_counter"
MISSING_GAUGE = "missing_gauge"
INVALID_VALUE = "invalid_value"
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
HTTP_ERROR = "http_error"
REASONS = (
    PARSE_ERROR,
    TRUNCATED,
    TOO_LARGE,
    MISSING_COUNTER,
    MISSING_GAUGE,
    INVALID_VALUE,
    UNREACHABLE,
    TIMEOUT,
    HTTP_ERROR,
)
# What a scraper asks for: the text format (version 0.0.4). Asked for OpenMetrics, prometheus-client based
# engines rename counters (vLLM's `vllm:prompt_tokens_total` family becomes `vllm:prompt_tokens`).
ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"

# A series' identity on a page: its metric name and sorted labels.
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Reading:
    """One scrape: each token counter's value per series, and the queue length summed over series (None
    when the page does not expose the gauge, or no gauge is configured)."""

    prompt: Mapping[SeriesKey, float]
    generation: Mapping[SeriesKey, float]
    waiting: float | None
    gauge_missing: bool = False

    @classmethod
    def single(cls, prompt: float, generation: float, waiting: float | None) -> Reading:
        """A page with one series per counter (one engine, one model)."""
        return cls({("prompt", ()): prompt}, {("generation", ()): generation}, waiting)


@dataclass(frozen=True)
class ScrapeProblem:
    reason: str
    detail: str


def _names(counter: str) -> tuple[str, ...]:
    # Counters are configured with or without the `_total` suffix; the exposition always has it.
    return (counter,) if counter.endswith("_total") else (counter, f"{counter}_total")


def read(text: str, prompt_counter: str, generation_counter: str, waiting_gauge: str | None) -> Reading | ScrapeProblem:
    wanted = dict.fromkeys(_names(prompt_counter), "prompt") | dict.fromkeys(_names(generation_counter), "generation")
    series: dict[str, dict[SeriesKey, float]] = {"prompt": {}, "generation": {}}
    waiting: float | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                kind = wanted.get(sample.name)
                if kind is not None:
                    value = float(sample.value)
                    if not math.isfinite(value) or value < 0:
                        return ScrapeProblem(INVALID_VALUE, f"{sample.name} = {value}")
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    series[kind][key] = series[kind].get(key, 0.0) + value
                elif waiting_gauge is not None and sample.name == waiting_gauge:
                    value = float(sample.value)
                    if math.isfinite(value) and value >= 0:
                        waiting = (waiting or 0.0) + value
    except (ValueError, TypeError, IndexError) as error:
        return ScrapeProblem(PARSE_ERROR, str(error)[:200])
    if text and not text.endswith("\n"):
        # It parsed, but was cut off: its last number may be cut short too.
        return ScrapeProblem(TRUNCATED, f"the page ends without a line feed after {len(text)} characters")
    counters = {"prompt": prompt_counter, "generation": generation_counter}
    missing = [counters[kind] for kind in ("prompt", "generation") if not series[kind]]
    if missing:
        return ScrapeProblem(MISSING_COUNTER, ", ".join(missing) + " not exposed")
    gauge_missing = waiting_gauge is not None and waiting is None
    return Reading(series["prompt"], series["generation"], waiting, gauge_missing)
