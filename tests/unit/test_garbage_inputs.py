"""Garbage in, a clear answer out: random bytes, random YAML trees and random values in every field of the
example manifests never make `gpufabric validate` print a traceback, and never pass (exit 0) an object the
API server would refuse. The API server's verdict comes from the emulation that tests/e2e holds to the
real one (support.apiserver.SchemaValidator: the CRDs' schemas and CEL rules)."""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufabric import cli
from gpufabric.api import crdgen
from support.apiserver import SchemaValidator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    document
    for path in sorted((ROOT / "examples").rglob("*.yaml"))
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
    if document and document.get("apiVersion") == "gpufabric.io/v1alpha1"
]
API_SERVER = {crd["spec"]["names"]["kind"]: SchemaValidator(crd) for crd in crdgen.all_definitions().values()}
GARBAGE = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def validate(data: bytes) -> tuple[int, str, str]:
    """`gpufabric validate -f -` with `data` on standard input: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdout", out)
        patch.setattr("sys.stderr", err)
        patch.setattr("sys.stdin", stdin)
        try:
            code = cli.main(["validate", "-f", "-"])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_refused(code: int, out: str, err: str) -> None:
    assert "Traceback" not in out + err, err
    assert code == cli.EXIT_INVALID_INPUT, f"exit {code}\n{out}\n{err}"
    assert err.startswith("invalid input ("), err
    assert out == ""


@GARBAGE
@given(st.binary(max_size=4000))
def test_random_bytes_are_refused_clearly(data: bytes) -> None:
    assert_refused(*validate(data))


scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=40)
)
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
)


@GARBAGE
@given(trees)
def test_random_yaml_trees_are_refused_clearly(tree: Any) -> None:
    assert_refused(*validate(yaml.safe_dump(tree).encode()))


@GARBAGE
@given(st.lists(trees, min_size=2, max_size=4))
def test_random_multi_document_streams_are_refused_clearly(documents: list[Any]) -> None:
    assert_refused(*validate(yaml.safe_dump_all(documents).encode()))


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document a value sits, containers included."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def replaced(document: dict[str, Any], path: tuple[Any, ...], value: Any, *, delete: bool) -> dict[str, Any]:
    result = copy.deepcopy(document)
    parent: Any = result
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return result


def has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(has_non_finite(v) for v in value)
    return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_random_value_in_any_field_never_passes_what_the_api_server_refuses(data: st.DataObject) -> None:
    document = data.draw(st.sampled_from(EXAMPLES), label="example")
    path = data.draw(st.sampled_from(paths(document)), label="path")
    delete = isinstance(path[-1], str) and data.draw(st.booleans(), label="delete")
    value = data.draw(scalars | st.just([]) | st.just({}) | trees, label="value")
    mutated = replaced(document, path, value, delete=delete)

    code, out, err = validate(yaml.safe_dump(mutated).encode())

    assert "Traceback" not in out + err, err
    # JSON has no NaN or infinity: kubectl cannot even send such an object.
    api_refuses = has_non_finite(mutated) or bool(API_SERVER[document["kind"]].validate(mutated))
    if api_refuses:
        assert_refused(code, out, err)
    else:
        assert code in (0, cli.EXIT_INVALID_INPUT), err
