"""Prometheus text exposition into the few numbers we need: token counters and a queue gauge.

Parsing is prometheus-client's; everything that can go wrong with a serving engine's /metrics page —
garbage, truncation, a missing counter, a negative or non-finite value — becomes a `ScrapeProblem` with a
short fixed reason (it labels a metric, so the set is closed), never an exception for the caller."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Reasons a scrape yields nothing (label values of gpufabric_scrape_failures_total).
PARSE_ERROR = "parse_error"
MISSING_COUNTER = "missing_counter"
INVALID_VALUE = "invalid_value"
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
HTTP_ERROR = "http_error"
REASONS = (PARSE_ERROR, MISSING_COUNTER, INVALID_VALUE, UNREACHABLE, TIMEOUT, HTTP_ERROR)


@dataclass(frozen=True)
class Reading:
    """Counter values from one scrape (summed over their label sets), and the queue length if exposed."""

    prompt: float
    generation: float
    waiting: float | None


@dataclass(frozen=True)
class ScrapeProblem:
    reason: str
    detail: str


def _names(counter: str) -> tuple[str, ...]:
    # Counters are configured with or without the `_total` suffix; the exposition always has it.
    return (counter,) if counter.endswith("_total") else (counter, f"{counter}_total")


def read(text: str, prompt_counter: str, generation_counter: str, waiting_gauge: str | None) -> Reading | ScrapeProblem:
    wanted = dict.fromkeys(_names(prompt_counter), "prompt") | dict.fromkeys(_names(generation_counter), "generation")
    totals = {"prompt": 0.0, "generation": 0.0}
    seen: set[str] = set()
    waiting: float | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                kind = wanted.get(sample.name)
                if kind is not None:
                    value = float(sample.value)
                    if not math.isfinite(value) or value < 0:
                        return ScrapeProblem(INVALID_VALUE, f"{sample.name} = {value}")
                    totals[kind] += value
                    seen.add(kind)
                elif waiting_gauge is not None and sample.name == waiting_gauge:
                    value = float(sample.value)
                    if math.isfinite(value) and value >= 0:
                        waiting = (waiting or 0.0) + value
    except (ValueError, TypeError, IndexError) as error:
        return ScrapeProblem(PARSE_ERROR, str(error)[:200])
    missing = [
        name for name, kind in (("prompt", prompt_counter), ("generation", generation_counter)) if name not in seen
    ]
    if missing:
        counters = {"prompt": prompt_counter, "generation": generation_counter}
        return ScrapeProblem(MISSING_COUNTER, ", ".join(counters[m] for m in missing) + " not exposed")
    return Reading(prompt=totals["prompt"], generation=totals["generation"], waiting=waiting)
