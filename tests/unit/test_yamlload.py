"""gpufabric.yamlload gives exactly PyYAML's safe_load values, faster, and refuses duplicate keys."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufabric import yamlload

ROOT = Path(__file__).resolve().parents[2]


def documents(text: str | bytes) -> list[Any]:
    return [loaded.document for loaded in yamlload.load_all(text)]


def test_libyaml_is_used_here() -> None:
    """CI's machine has PyYAML's wheel, which carries libyaml; the fast path is the one tested."""
    assert yamlload.WITH_LIBYAML


@pytest.mark.parametrize("path", sorted(ROOT.glob("examples/**/*.yaml")), ids=lambda p: p.name)
def test_the_examples_load_as_pyyaml_loads_them(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert documents(text) == list(yaml.safe_load_all(text))


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.dates()
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10) | st.integers(), children),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(trees, max_size=3), st.sampled_from([None, '"', "'", "|"]))
def test_any_tree_loads_as_pyyaml_loads_it(trees_: list[Any], style: str | None) -> None:
    text = yaml.safe_dump_all(trees_, default_style=style, allow_unicode=True)
    assert documents(text) == list(yaml.safe_load_all(text))


def test_scalars_keep_yaml_types() -> None:
    text = "a: 1\nb: '1'\nc: 1.5\nd: true\ne: 'true'\nf: ~\ng: 2026-11-27\nh: 0x10\ni: .inf\n"
    assert documents(text) == [
        {
            "a": 1,
            "b": "1",
            "c": 1.5,
            "d": True,
            "e": "true",
            "f": None,
            "g": datetime.date(2026, 11, 27),
            "h": 16,
            "i": float("inf"),
        }
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("replicas: 6\nreplicas: 600\n", "key 'replicas' is given twice, on lines 1 and 2"),
        ("spec:\n  a: 1\n  b: 2\n  a: 3\n", "key 'a' is given twice, on lines 2 and 4"),
        ("- {x: 1, x: 2}\n", "key 'x' is given twice, on lines 1 and 1"),
        ("base: &b {x: 1}\nm:\n  <<: *b\n  y: 1\n  y: 2\n", "key 'y' is given twice, on lines 4 and 5"),
    ],
)
def test_a_key_given_twice_is_refused_with_both_lines(text: str, message: str) -> None:
    with pytest.raises(yamlload.DuplicateKeyError, match=message):
        documents(text)


def test_equal_keys_of_different_types_are_different_keys() -> None:
    assert documents("1: a\n'1': b\n") == [{1: "a", "1": "b"}]


def test_a_key_may_override_a_merged_default() -> None:
    text = "base: &b {x: 1, y: 1}\nm:\n  <<: *b\n  x: 2\n"
    assert documents(text) == [{"base": {"x": 1, "y": 1}, "m": {"x": 2, "y": 1}}]


def test_aliases_share_the_anchor_value_and_are_reported() -> None:
    loaded = list(yamlload.load_all("a: &x [1, 2]\nb: *x\n---\nc: 1\n"))
    assert loaded[0].document["a"] is loaded[0].document["b"]
    assert [item.aliased for item in loaded] == [True, False]


def test_a_recursive_structure_terminates() -> None:
    (document,) = documents("&a [*a]\n")
    assert document[0] is document


def test_nulls_are_reported() -> None:
    assert [item.nulls for item in yamlload.load_all("a: 1\n---\na: null\n---\n[1, ~]\n")] == [False, True, True]


def test_nesting_past_the_limit_names_the_line() -> None:
    nested = "x: 1\nlist: " + "[" * 10 + "]" * 10 + "\n"
    assert documents(nested)  # within the default limit
    with pytest.raises(yamlload.TooDeepError, match="nested deeper than 5 levels") as caught:
        list(yamlload.load_all(nested, max_depth=5))
    assert caught.value.problem_mark is not None
    assert caught.value.problem_mark.line == 1


def test_an_unhashable_key_is_a_yaml_error() -> None:
    with pytest.raises(yaml.YAMLError, match="found unhashable key"):
        documents("? [1, 2]\n: x\n")


def test_bytes_and_streams_read_alike(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: é\n---\nb: 2\n", encoding="utf-8")
    with path.open("rb") as stream:
        from_stream = [loaded.document for loaded in yamlload.load_all(stream)]
    assert from_stream == documents(path.read_bytes()) == documents(path.read_text(encoding="utf-8"))
