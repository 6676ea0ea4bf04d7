"""Tokens/s maths, without servers: parsing exposition text, rates across resets, learning, the autoscaler,
capacity planning and when status is rewritten."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufabric.api.tokens import TokensPerSecond
from gpufabric.placement import PriorThroughput
from gpufabric.reconcile.status import tokens_to_write
from gpufabric.throughput import Autoscaler, Inputs, LearnedThroughput, Reading, ScrapeProblem, read, size_class
from gpufabric.throughput.autoscale import needed
from gpufabric.throughput.capacity import best_total, free_capacity
from gpufabric.throughput.exposition import _line_samples, _page_samples
from gpufabric.throughput.learning import MIN_SAMPLES
from gpufabric.throughput.rates import MAX_PLAUSIBLE_RATE, CounterSeries, increase
from gpufabric.vendors import ACCELERATORS, Precision
from support.fleet import node, snapshot

PRIOR = PriorThroughput(dict(ACCELERATORS))
VLLM = """# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="m"} 1200.0
vllm:prompt_tokens_created{model_name="m"} 1.7e9
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="m"} 3400.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 2.0
"""


class TestExposition:
    def test_vllm_counters_and_queue(self) -> None:
        assert read(
            VLLM, "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_waiting"
        ) == Reading(
            prompt={("vllm:prompt_tokens_total", (("model_name", "m"),)): 1200.0},
            generation={("vllm:generation_tokens_total", (("model_name", "m"),)): 3400.0},
            waiting=2.0,
        )

    def test_counters_are_kept_per_label_set_and_found_without_the_suffix(self) -> None:
        text = (
            'sglang:prompt_tokens_total{model="a"} 10\nsglang:prompt_tokens_total{model="b"} 5\n'
            "sglang:generation_tokens_total 7\n"
        )
        assert read(text, "sglang:prompt_tokens", "sglang:generation_tokens", None) == Reading(
            prompt={
                ("sglang:prompt_tokens_total", (("model", "a"),)): 10.0,
                ("sglang:prompt_tokens_total", (("model", "b"),)): 5.0,
            },
            generation={("sglang:generation_tokens_total", ()): 7.0},
            waiting=None,
        )

    def test_a_configured_gauge_the_page_lacks_is_flagged(self) -> None:
        text = "vllm:prompt_tokens_total 1\nvllm:generation_tokens_total 2\n"
        outcome = read(text, "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_waiting")
        assert isinstance(outcome, Reading)
        assert outcome.waiting is None
        assert outcome.gauge_missing

    def test_only_the_token_families_are_parsed_and_read_as_the_whole_page_would(self) -> None:
        histogram = "".join(
            f'vllm:e2e_request_latency_seconds_bucket{{le="{le}",model_name="m"}} {n}\n'
            for n, le in enumerate(("0.1", "1", "+Inf"))
        )
        page = (
            "# HELP vllm:prompt_tokens_total Prefill tokens processed.\n# TYPE vllm:prompt_tokens_total counter\n"
            'vllm:prompt_tokens_total{model_name="a"} 10\nvllm:prompt_tokens_total_created 1.7e9\n'
            'vllm:prompt_tokens_total\t{model_name="b"} 5\n'
            f"{histogram}"
            'vllm:generation_tokens_total{model_name="a"} 7\nvllm:num_requests_waiting{model_name="a"} 3\n'
            "vllm:num_requests_waiting_other 99\n"
        )
        outcome = read(page, "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_waiting")
        assert outcome == Reading(
            prompt={
                ("vllm:prompt_tokens_total", (("model_name", "a"),)): 10.0,
                ("vllm:prompt_tokens_total", (("model_name", "b"),)): 5.0,
            },
            generation={("vllm:generation_tokens_total", (("model_name", "a"),)): 7.0},
            waiting=3.0,
        )
        # a broken line of another family no longer costs the scrape
        assert isinstance(outcome, Reading)
        broken = page.replace('le="1"', 'le="1')
        assert read(broken, "vllm:prompt_tokens_total", "vllm:generation_tokens_total", None) == Reading(
            prompt=outcome.prompt, generation=outcome.generation, waiting=None
        )

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["vllm:prompt_tokens_total", "vllm:generation_tokens_total", "x:y_total"]),
                st.dictionaries(
                    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True),
                    st.text(alphabet='ab\\"\n},{= \t', max_size=8),
                    max_size=3,
                ),
                st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False),
                st.sampled_from(["", " 1700000000000", "\t-5"]),
                st.sampled_from([" ", "\t", "  "]),
            ),
            min_size=1,
            max_size=6,
        )
    )
    def test_the_line_reader_reads_sample_lines_as_prometheus_client_does(
        self, lines: list[tuple[str, dict[str, str], float, str, str]]
    ) -> None:
        def quoted(value: str) -> str:
            return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        def line(name: str, labels: dict[str, str], value: float, stamp: str, gap: str) -> str:
            pairs = ",".join(k + '="' + quoted(v) + '"' for k, v in labels.items())
            return f"{name}{{{pairs}}}{gap}{value!r}{stamp}\n"

        text = "".join(line(*sample) for sample in lines)
        ours = list(_line_samples(text))
        theirs = list(_page_samples(text))
        assert ours == theirs

    @pytest.mark.parametrize("line", ['a{b="c} 1', 'a{b="c"} ', 'a{b="c" d="e"} 1', "a 1 2 3", "a{b=c} 1", "a{ 1"])
    def test_the_line_reader_refuses_what_is_not_a_sample_line(self, line: str) -> None:
        with pytest.raises(ValueError, match=r"not a sample line|labels not understood|could not convert"):
            list(_line_samples(line + "\n"))

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("<html>502 Bad Gateway</html>", "parse_error"),
            ('vllm:prompt_tokens_total{model_name="m"} 12\nvllm:generation_tokens_total{model_name="m', "parse_error"),
            ("vllm:prompt_tokens_total 12\nvllm:generation_tokens_total 34", "truncated"),
            ("vllm:prompt_tokens_total 12\n", "missing_counter"),
            ("vllm:prompt_tokens_total 12\nvllm:generation_tokens_total -4\n", "invalid_value"),
            ("vllm:prompt_tokens_total NaN\nvllm:generation_tokens_total 4\n", "invalid_value"),
            ("vllm:prompt_tokens_total +Inf\nvllm:generation_tokens_total 4\n", "invalid_value"),
            ("", "missing_counter"),
        ],
        ids=["garbage", "truncated", "cut-in-a-number", "missing", "negative", "nan", "infinite", "empty"],
    )
    def test_bad_pages_are_problems_not_exceptions(self, text: str, reason: str) -> None:
        outcome = read(text, "vllm:prompt_tokens_total", "vllm:generation_tokens_total", None)
        assert isinstance(outcome, ScrapeProblem)
        assert outcome.reason == reason


class TestRates:
    def test_a_steady_counter_gives_its_rate(self) -> None:
        series = CounterSeries(window=30.0)
        for second in range(0, 61, 5):
            series.add(float(second), 1000.0 + 250.0 * second)
        assert series.rate() == pytest.approx(250.0)

    def test_a_reset_counts_from_zero(self) -> None:
        series = CounterSeries(window=100.0)
        series.add(0.0, 1000.0)
        series.add(10.0, 2000.0)  # +1000
        series.add(20.0, 300.0)  # restarted: +300
        series.add(30.0, 1300.0)  # +1000
        assert series.rate() == pytest.approx(2300.0 / 30.0)

    def test_refused_readings(self) -> None:
        series = CounterSeries()
        assert series.add(0.0, 10.0) == 0.0
        assert series.add(0.0, 20.0) is None, "same time"
        assert series.add(-1.0, 20.0) is None, "out of order"
        assert series.add(1.0, float("nan")) is None
        assert series.add(1.0, -5.0) is None
        assert series.add(1.0, 10.0 + MAX_PLAUSIBLE_RATE * 2) is None, "implausibly fast"
        assert series.add(1.0, 20.0) == 10.0

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.floats(0.1, 10.0), st.floats(0.0, 1e5)), min_size=2, max_size=40))
    def test_monotone_counters_give_non_negative_exact_rates(self, steps: list[tuple[float, float]]) -> None:
        series = CounterSeries(window=1e9)
        at, value = 0.0, 0.0
        series.add(at, value)
        for dt, grow in steps:
            at, value = at + dt, value + grow
            series.add(at, value)
        assert series.rate() >= 0
        assert series.rate() == pytest.approx(value / at, rel=1e-6, abs=1e-6)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.floats(0.1, 10.0),
                st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf, 1e300])),
            ),
            min_size=1,
            max_size=40,
        )
    )
    def test_any_readings_never_give_a_negative_or_non_finite_rate(self, steps: list[tuple[float, float]]) -> None:
        series = CounterSeries(window=20.0)
        at = 0.0
        for dt, value in steps:
            at += dt
            series.add(at, value)
            assert math.isfinite(series.rate())
            assert series.rate() >= 0

    @given(st.floats(0, 1e9), st.floats(0, 1e9))
    def test_increase_is_never_negative(self, before: float, after: float) -> None:
        assert increase(before, after) >= 0


class TestLearning:
    def test_the_prior_until_enough_samples_then_the_measurement(self) -> None:
        learned = LearnedThroughput(PRIOR)
        prior = PRIOR.per_device("H100-SXM5-80GB", Precision.FP8, 8.0)
        for _ in range(MIN_SAMPLES - 1):
            learned.observe("H100-SXM5-80GB", Precision.FP8, 8.0, devices=1, tokens_per_second=5000.0)
        assert learned.per_device("H100-SXM5-80GB", Precision.FP8, 8.0) == prior
        learned.observe("H100-SXM5-80GB", Precision.FP8, 8.0, devices=1, tokens_per_second=5000.0)
        assert learned.per_device("H100-SXM5-80GB", Precision.FP8, 8.0) == pytest.approx(5000.0)
        # Normalised by size within the class: a 7.6B model predicts a little faster.
        assert learned.per_device("H100-SXM5-80GB", Precision.FP8, 7.6) == pytest.approx(5000.0 * 8 / 7.6)
        # Other classes and precisions keep the prior.
        assert learned.per_device("H100-SXM5-80GB", Precision.FP8, 70.0) == PRIOR.per_device(
            "H100-SXM5-80GB", Precision.FP8, 70.0
        )

    def test_survives_a_restart_through_its_dump(self) -> None:
        learned = LearnedThroughput(PRIOR)
        for value in range(MIN_SAMPLES):
            learned.observe("Ascend-910B3", Precision.INT8, 32.0, devices=2, tokens_per_second=1000.0 + value)
        again = LearnedThroughput(PRIOR)
        assert again.load(learned.dump()) == []
        # The dump keeps three decimals of tokens/s x billions: far below anything placement can tell apart.
        assert again.per_device("Ascend-910B3", Precision.INT8, 32.0) == pytest.approx(
            learned.per_device("Ascend-910B3", Precision.INT8, 32.0), rel=1e-6
        )

    def test_bad_stored_data_is_skipped_with_a_reason(self) -> None:
        learned = LearnedThroughput(PRIOR)
        assert learned.load("{not json") == [
            "not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
        ]
        problems = learned.load(
            '[{"sizeClass": "8B", "accelerator": "H20", "precision": "FP7", "normalised": 1,'
            ' "samples": 3}, {"sizeClass": "9B", "accelerator": "H20", "precision": "FP8",'
            ' "normalised": 1, "samples": 3}]'
        )
        assert len(problems) == 2
        assert learned.entries == {}

    @pytest.mark.parametrize(("size", "label"), [(1.5, "3B"), (7.6, "8B"), (8.0, "8B"), (70.6, "80B"), (405, "400B+")])
    def test_size_classes(self, size: float, label: str) -> None:
        assert size_class(size) == label


def inputs(**overrides: float | int | bool) -> Inputs:
    base: dict[str, float | int | bool] = {
        "target": 10_000.0,
        "demand": 0.0,
        "capacity_per_replica": 2_500.0,
        "saturated": False,
        "current": 2,
        "minimum": 1,
        "maximum": 8,
    }
    base.update(overrides)
    return Inputs(**base)  # type: ignore[arg-type]


class TestAutoscaler:
    def test_the_target_alone_sizes_the_fleet(self) -> None:
        assert Autoscaler().recommend(0.0, inputs()).desired == 4

    def test_demand_beyond_the_target_adds_replicas_at_80_percent(self) -> None:
        assert Autoscaler().recommend(0.0, inputs(demand=14_000.0)).desired == 7

    def test_a_saturated_fleet_grows_by_one_at_least(self) -> None:
        assert Autoscaler().recommend(0.0, inputs(target=1.0, current=3, saturated=True)).desired == 4

    def test_clamped_to_max_with_the_unclamped_need_reported(self) -> None:
        recommendation = Autoscaler().recommend(0.0, inputs(target=100_000.0))
        assert (recommendation.desired, recommendation.needed_for_target) == (8, 40)

    def test_down_only_after_the_stabilisation_window(self) -> None:
        scaler = Autoscaler(stabilisation=300.0)
        assert scaler.recommend(0.0, inputs(demand=14_000.0, current=4)).desired == 7
        assert scaler.recommend(60.0, inputs(demand=0.0, current=7)).desired == 7, "too soon"
        assert scaler.recommend(299.0, inputs(demand=0.0, current=7)).desired == 7
        assert scaler.recommend(361.0, inputs(demand=0.0, current=7)).desired == 4

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.tuples(st.floats(0, 200_000), st.booleans()), min_size=1, max_size=30),
        st.integers(0, 5),
        st.integers(0, 10),
        st.floats(1, 50_000),
        st.floats(100, 10_000),
    )
    def test_never_leaves_its_bounds(
        self, loads: list[tuple[float, bool]], minimum: int, spread: int, target: float, capacity: float
    ) -> None:
        maximum = max(1, minimum + spread)
        scaler = Autoscaler(stabilisation=60.0)
        current = minimum
        for step, (demand, saturated) in enumerate(loads):
            current = scaler.recommend(
                step * 15.0,
                inputs(
                    target=target,
                    demand=demand,
                    saturated=saturated,
                    capacity_per_replica=capacity,
                    current=current,
                    minimum=minimum,
                    maximum=maximum,
                ),
            ).desired
            assert minimum <= current <= maximum

    @settings(max_examples=200, deadline=None)
    @given(st.floats(0, 100_000), st.floats(100, 10_000), st.integers(1, 20))
    def test_steady_load_settles_and_stays(self, demand: float, capacity: float, start: int) -> None:
        scaler = Autoscaler(stabilisation=60.0)
        current = start
        seen = []
        for step in range(40):
            current = scaler.recommend(
                step * 15.0,
                inputs(
                    target=1.0, demand=demand, capacity_per_replica=capacity, current=current, minimum=1, maximum=50
                ),
            ).desired
            seen.append(current)
        tail = seen[20:]
        assert len(set(tail)) == 1, f"oscillates on steady load: {tail}"

    def test_an_unknown_capacity_keeps_the_count(self) -> None:
        assert needed(inputs(capacity_per_replica=0.0)) == (2, 2)


class TestCapacity:
    def test_free_devices_in_tokens_per_second(self) -> None:
        fleet = [node("h1", "H100-SXM5-80GB", domain="a"), node("a1", "Ascend-910B3", domain="b")]
        rows = free_capacity(snapshot(fleet), 8.0, PRIOR)
        by_key = {(r.accelerator, r.precision.value, r.domain): r for r in rows}
        fp8 = by_key[("H100-SXM5-80GB", "FP8", "a")]
        assert (fp8.replicas, fp8.devices_per_replica) == (8, 1)
        per_device = PRIOR.per_device("H100-SXM5-80GB", Precision.FP8, 8.0)
        assert per_device is not None
        assert fp8.tokens_per_second == pytest.approx(8 * per_device)
        assert ("Ascend-910B3", "FP8", "b") not in by_key, "no FP8 on Ascend"
        # The total counts each accelerator's devices once, at its best precision.
        assert best_total(rows) == pytest.approx(
            fp8.tokens_per_second + by_key[("Ascend-910B3", "INT8", "b")].tokens_per_second
        )

    def test_nothing_free_nothing_offered(self) -> None:
        assert free_capacity(snapshot([node("h1")], not_ready=("h1",)), 8.0, PRIOR) == []


class TestWhenTokensAreWritten:
    OLD = TokensPerSecond(prompt=1000.0, generation=2000.0)

    def test_a_small_move_is_not_written(self) -> None:
        assert tokens_to_write(self.OLD, TokensPerSecond(prompt=1050.0, generation=2100.0), stale=False) is self.OLD

    def test_a_large_move_is_written(self) -> None:
        new = TokensPerSecond(prompt=1000.0, generation=2500.0)
        assert tokens_to_write(self.OLD, new, stale=False) == new

    def test_a_stale_value_is_refreshed_even_for_a_small_move(self) -> None:
        new = TokensPerSecond(prompt=1001.0, generation=2001.0)
        assert tokens_to_write(self.OLD, new, stale=True) == new

    def test_nothing_measured_keeps_what_is_there(self) -> None:
        assert tokens_to_write(self.OLD, None, stale=True) is self.OLD
