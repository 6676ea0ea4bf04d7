"""Scraping real serving-engine pages (tests/throughput/pages, each with its source in SOURCES.md) and pages
derived from them: each asserts the exact values or rate, and the exact failure reason.

vLLM's page is a real vLLM 0.32 (CPU) page captured here (SOURCES.md); the e2e suite also reads a live one.
No captured Ray Serve or TGI page could be found in a repository (see SOURCES.md)."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpufabric.engines import MINDIE, SGLANG, VLLM, EngineProfile
from gpufabric.placement import PriorThroughput
from gpufabric.throughput import Reading, ScrapeProblem, TokenTracker, read
from gpufabric.throughput.exposition import Histogram, read_histogram
from gpufabric.vendors import ACCELERATORS
from support.pages import page, sglang_target, with_engines


def parse(text: str, engine: EngineProfile) -> Reading | ScrapeProblem:
    names = engine.metrics
    return read(text, names.prompt_counter, names.generation_counter, names.waiting_gauge)


@pytest.mark.parametrize(
    ("name", "engine", "prompt", "generation", "waiting"),
    [
        ("sglang-v0.4-docs.txt", SGLANG, 8_128_902.0, 7_557_572.0, 2826.0),
        ("mindie-ms-coordinator-docs.txt", MINDIE, 9564.0, 84425.0, 0.0),
        ("mindie-server-node-fixture.txt", MINDIE, 78800.0, 80000.0, 0.0),
        ("vllm-0.32-cpu-tiny.txt", VLLM, 60.0, 384.0, 0.0),
    ],
)
def test_real_pages_read_with_the_engines_names(
    name: str, engine: EngineProfile, prompt: float, generation: float, waiting: float
) -> None:
    outcome = parse(page(name), engine)
    assert isinstance(outcome, Reading), outcome
    assert sum(outcome.prompt.values()) == prompt
    assert sum(outcome.generation.values()) == generation
    assert outcome.waiting == waiting
    assert not outcome.gauge_missing


def test_a_page_over_200_kb_reads_whole() -> None:
    """Four data-parallel engines' pages are ~165 KiB: make one bigger than 200 KB from the SGLang page by
    giving every series of it 24 engine labels; the counters then sum over all of them."""
    big = with_engines(page("sglang-v0.4-docs.txt"), 24)
    assert len(big.encode()) > 200_000
    outcome = parse(big, SGLANG)
    assert isinstance(outcome, Reading), outcome
    assert len(outcome.generation) == 24
    assert sum(outcome.generation.values()) == pytest.approx(24 * 7_557_572.0)
    assert outcome.waiting == 24 * 2826.0


def test_a_page_cut_inside_a_number_is_refused_not_read_as_a_reset() -> None:
    text = page("sglang-v0.4-docs.txt")
    value = re.search(r"sglang:generation_tokens_total\{[^}]*\} (7\.557)", text)
    assert value is not None
    cut = text[: value.end(1)]  # "... 7.557" instead of "... 7.557572e+06": parses, as 7.557
    outcome = parse(cut, SGLANG)
    assert outcome == ScrapeProblem("truncated", f"the page ends without a line feed after {len(cut)} characters")


def _two_engines(first: float, second: float | None) -> str:
    """The SGLang page as two data-parallel engines would serve it (v0.5 adds a dp_rank label)."""
    out = []
    for line in page("sglang-v0.4-docs.txt").splitlines():
        if line.startswith("sglang:generation_tokens_total{"):
            out.append(f'sglang:generation_tokens_total{{dp_rank="0",model_name="m"}} {first}')
            if second is not None:
                out.append(f'sglang:generation_tokens_total{{dp_rank="1",model_name="m"}} {second}')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _rate_after(pages: list[tuple[float, str]]) -> tuple[float, TokenTracker]:
    tracker = TokenTracker(prior=PriorThroughput(dict(ACCELERATORS)), window=600.0)
    target = sglang_target()
    for at, text in pages:
        outcome = parse(text, SGLANG)
        tracker.observe(target, outcome, at)
    ((_, tps, _),) = tracker.rates().values()
    return tps.generation, tracker


def test_one_of_two_engines_restarting_counts_only_its_own_tokens() -> None:
    """Engine 0 grows 600 tokens in 10 s; engine 1 restarts (1,000,000 -> 0) and serves 300 new ones.
    Increases per series, then summed: (600 + 300) / 10 = 90 tok/s. Summing first would see 1,000,600 drop
    to 1,300 and count 1,300 as new."""
    rate, tracker = _rate_after([(0.0, _two_engines(5_000.0, 1_000_000.0)), (10.0, _two_engines(5_600.0, 300.0))])
    assert rate == 90.0
    assert tracker.totals[("agents", "chat", "nvidia", "H100-SXM5-80GB", "FP8", "generation")] == 900.0


def test_an_engine_that_disappears_stops_counting_and_the_other_keeps_its_rate() -> None:
    """Engine 1 vanishes from the page: not a reset of the sum (which would count engine 0's whole counter
    again), just one series fewer. Engine 0 grows 60 tokens/s."""
    rate, tracker = _rate_after(
        [
            (0.0, _two_engines(5_000.0, 1_000_000.0)),
            (10.0, _two_engines(5_600.0, 1_000_600.0)),
            (20.0, _two_engines(6_200.0, None)),
        ]
    )
    assert rate == 60.0
    assert tracker.totals[("agents", "chat", "nvidia", "H100-SXM5-80GB", "FP8", "generation")] == 1_800.0


def test_a_page_without_the_queue_gauge_is_counted_and_flagged() -> None:
    text = "\n".join(
        line for line in page("mindie-server-node-fixture.txt").splitlines() if "num_requests_waiting" not in line
    )
    outcome = parse(text + "\n", MINDIE)
    assert isinstance(outcome, Reading)
    assert outcome.gauge_missing
    assert outcome.waiting is None
    tracker = TokenTracker(prior=PriorThroughput(dict(ACCELERATORS)))
    tracker.observe(sglang_target(), outcome, 0.0)
    assert tracker.failures == {"missing_gauge": 1}


@pytest.mark.parametrize("name", ["vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds"])
def test_the_latency_histograms_of_a_real_vllm_page_read_as_prometheus_client_reads_them(name: str) -> None:
    text = page("vllm-0.32-cpu-tiny.txt")
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    theirs: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in family.samples:
        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        if sample.name == f"{name}_bucket":
            theirs.setdefault(labels, {})[float(sample.labels["le"])] = sample.value
        elif sample.name == f"{name}_count":
            counts[labels] = sample.value
    ours = read_histogram(text, name)
    assert isinstance(ours, Histogram), ours
    assert ours.buckets == theirs
    assert ours.count == counts
    (series,) = ours.buckets.values()
    assert series[float("inf")] == sum(counts.values()) > 0


def test_a_histogram_that_is_not_there_or_broken_is_a_problem_not_an_exception() -> None:
    text = page("vllm-0.32-cpu-tiny.txt")
    missing = read_histogram(text, "vllm:no_such_seconds")
    assert isinstance(missing, ScrapeProblem)
    assert missing.reason == "missing_counter"
    broken = text.replace(
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001"',
        "vllm:time_to_first_token_seconds_bucket{engine=0,le=",
        1,
    )
    assert broken != text
    outcome = read_histogram(broken, "vllm:time_to_first_token_seconds")
    assert isinstance(outcome, ScrapeProblem)
    assert outcome.reason == "parse_error"
