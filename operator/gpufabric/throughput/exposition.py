"""Prometheus text exposition into the few numbers we need: token counters, per series, and a queue gauge.

Only the token families' lines are read (found with `str.find`, read by two regular expressions that a
test holds to prometheus-client's answers); prometheus-client's parser still judges a page that has none
of them (a metrics page without the counters, or not a metrics page). Everything that can go wrong with a
serving engine's /metrics page —
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
import re
from collections.abc import Callable, Iterator, Mapping
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
    counters = (prompt_counter, generation_counter, waiting_gauge)
    names = (*_names(prompt_counter), *_names(generation_counter), *((waiting_gauge,) if waiting_gauge else ()))
    outcome = _parse(_lines_of(text, names), *counters, samples=_line_samples)
    if isinstance(outcome, ScrapeProblem) and outcome.reason == MISSING_COUNTER:
        # No token lines at all: is it a metrics page without them, or not a metrics page (an HTML error)?
        whole = _parse(text, *counters)
        if isinstance(whole, ScrapeProblem) and whole.reason == PARSE_ERROR:
            return whole
    elif isinstance(outcome, ScrapeProblem):
        return outcome  # a broken or invalid token line, whatever else the page has
    if text and not text.endswith("\n"):
        # It parsed, but was cut off: its last number may be cut short too.
        return ScrapeProblem(TRUNCATED, f"the page ends without a line feed after {len(text)} characters")
    return outcome


def _lines_of(text: str, names: tuple[str, ...]) -> str:
    """Only the sample lines of the families read. An engine's page is tens of KiB of histograms
    (about 44 KiB for one vLLM V1 engine) around three lines; parsing it all cost ~17 ms a scrape, over
    a core for 1,000 pods every 15 s. The lines kept are read strictly (`_line_samples`), so a broken token
    line is still a parse error; a broken line of another family no longer fails the scrape."""
    # str.find runs in C over the page; splitting it into hundreds of line objects would not. With a line
    # feed in front, every line (the first too) is found as "\n" + its name.
    framed = "\n" + text
    exact = frozenset(names)
    found: dict[int, str] = {}
    cut_off = False
    for name in names:
        hit = framed.find("\n" + name)
        while hit >= 0:
            end = framed.find("\n", hit + 1)
            line = framed[hit + 1 :] if end < 0 else framed[hit + 1 : end]
            if line.partition("{")[0].split(maxsplit=1)[0] in exact:
                found[hit] = line
                # a last line without a line feed stays without one, so the parser refuses it as it would
                cut_off = cut_off or end < 0
            hit = -1 if end < 0 else framed.find("\n" + name, end)
    if not found:
        return ""
    return "\n".join(found[at] for at in sorted(found)) + ("" if cut_off else "\n")


# One sample line of the text format: name, optional {labels}, value, optional timestamp. Label values are
# quoted with \\, \" and \n escaped (https://prometheus.io/docs/instrumenting/exposition_formats/).
_SAMPLE = re.compile(
    r'([a-zA-Z_:][a-zA-Z0-9_:]*)[ \t]*(?:\{((?:[^"}]|"(?:[^"\\\n]|\\.)*")*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*'
)
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(?:,|$)')
_ESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"\\": "\\", '"': '"', "n": "\n"}

Sample = tuple[str, dict[str, str], float]


def _page_samples(text: str) -> Iterator[Sample]:
    """Every sample of a whole page, by prometheus-client's parser."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, dict(sample.labels), float(sample.value)


def _line_samples(text: str) -> Iterator[Sample]:
    """The samples of lines `_lines_of` kept: sample lines only, a few of them. prometheus-client's parser
    reads labels a character at a time (0.1 ms for three lines, a sixth of a scrape's CPU at 5,000 pods);
    this reads the same lines with two regular expressions, and a test holds the two to the same answers."""
    for line in text.split("\n"):
        if not line:
            continue
        sample = _SAMPLE.fullmatch(line)
        if sample is None:
            raise ValueError(f"not a sample line: {line[:100]!r}")
        name, labels_text, value = sample.groups()
        labels: dict[str, str] = {}
        end = 0
        for label in _LABEL.finditer(labels_text or ""):
            if label.start() != end:
                break
            labels[label[1]] = _ESCAPE.sub(lambda m: _ESCAPED.get(m[1], m[0]), label[2])
            end = label.end()
        if labels_text and labels_text[end:].strip():
            raise ValueError(f"labels not understood: {labels_text[:100]!r}")
        yield name, labels, float(value)


def _parse(
    text: str,
    prompt_counter: str,
    generation_counter: str,
    waiting_gauge: str | None,
    samples: Callable[[str], Iterator[Sample]] = _page_samples,
) -> Reading | ScrapeProblem:
    wanted = dict.fromkeys(_names(prompt_counter), "prompt") | dict.fromkeys(_names(generation_counter), "generation")
    series: dict[str, dict[SeriesKey, float]] = {"prompt": {}, "generation": {}}
    waiting: float | None = None
    try:
        for name, labels, value in samples(text):
            kind = wanted.get(name)
            if kind is not None:
                if not math.isfinite(value) or value < 0:
                    return ScrapeProblem(INVALID_VALUE, f"{name} = {value}")
                key = (name, tuple(sorted(labels.items())))
                series[kind][key] = series[kind].get(key, 0.0) + value
            elif waiting_gauge is not None and name == waiting_gauge and math.isfinite(value) and value >= 0:
                waiting = (waiting or 0.0) + value
    except (ValueError, TypeError, IndexError) as error:
        return ScrapeProblem(PARSE_ERROR, str(error)[:200])
    counters = {"prompt": prompt_counter, "generation": generation_counter}
    missing = [counters[kind] for kind in ("prompt", "generation") if not series[kind]]
    if missing:
        return ScrapeProblem(MISSING_COUNTER, ", ".join(missing) + " not exposed")
    gauge_missing = waiting_gauge is not None and waiting is None
    return Reading(series["prompt"], series["generation"], waiting, gauge_missing)


@dataclass(frozen=True)
class Histogram:
    """One histogram family's cumulative buckets per series (the labels other than `le`): upper bound ->
    observations at or below it, and each series' _count and _sum. What latency objectives are read from;
    percentiles come from bucket increases over a window (the goodput work)."""

    buckets: Mapping[tuple[tuple[str, str], ...], Mapping[float, float]]
    count: Mapping[tuple[tuple[str, str], ...], float]
    total: Mapping[tuple[tuple[str, str], ...], float]


def read_histogram(text: str, name: str) -> Histogram | ScrapeProblem:
    """The family `name`'s `_bucket`, `_count` and `_sum` lines, by the same line finder and reader as the
    counters (a test holds it to prometheus-client's answers on a real vLLM page)."""
    parts = {f"{name}_bucket": "bucket", f"{name}_count": "count", f"{name}_sum": "sum"}
    buckets: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    count: dict[tuple[tuple[str, str], ...], float] = {}
    total: dict[tuple[tuple[str, str], ...], float] = {}
    try:
        for sample_name, labels, value in _line_samples(_lines_of(text, tuple(parts))):
            if not math.isfinite(value) and sample_name != f"{name}_sum":
                return ScrapeProblem(INVALID_VALUE, f"{sample_name} = {value}")
            bound = labels.pop("le", None)
            key = tuple(sorted(labels.items()))
            if parts[sample_name] == "bucket":
                if bound is None:
                    return ScrapeProblem(PARSE_ERROR, f"{sample_name} without le")
                buckets.setdefault(key, {})[float(bound)] = value
            elif parts[sample_name] == "count":
                count[key] = value
            else:
                total[key] = value
    except (ValueError, TypeError) as error:
        return ScrapeProblem(PARSE_ERROR, str(error)[:200])
    if not buckets:
        return ScrapeProblem(MISSING_COUNTER, f"{name} not exposed")
    return Histogram(buckets, count, total)
