"""Each file in tests/invalid/ breaks one rule. Its header states what the API server answers at
`kubectl apply` (strict field validation: the 422's causes as `field: message`, or the 400's one line) and
what the models answer (`gpufabric plan`, the operator), both exactly. The in-process emulation must give
the API server's answer word for word; tests/e2e checks the same lines against the real API server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpufabric.api import crdgen
from gpufabric.api.objects import InvalidObjectError, parse
from support.apiserver import SchemaValidator

INVALID = sorted((Path(__file__).resolve().parents[1] / "invalid").glob("*.yaml"))
VALIDATORS = {crd["spec"]["names"]["kind"]: SchemaValidator(crd) for crd in crdgen.all_definitions().values()}


def expectations(path: Path, who: str) -> list[str]:
    """The `# who: path: message` header lines, in order."""
    lines = [line.removeprefix(f"# {who}: ") for line in path.read_text().splitlines() if line.startswith(f"# {who}: ")]
    assert lines, f"{path.name} states no expectation for {who}"
    return lines


def test_every_cel_rule_rejects_at_least_one_case() -> None:
    validators = {crd["spec"]["names"]["kind"]: SchemaValidator(crd) for crd in crdgen.all_definitions().values()}
    for path in INVALID:
        document = yaml.safe_load(path.read_text())
        validators[document["kind"]].validate(document)
    unexercised = [
        rule["message"]
        for validator in validators.values()
        for rule in validator.rules()
        if rule["rule"] not in validator.rejected_by
    ]
    assert not unexercised, f"CEL rules no file in tests/invalid/ breaks: {unexercised}"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_emulated_api_server_rejects_it_as_the_real_one_does(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert VALIDATORS[document["kind"]].validate(document) == expectations(path, "apiserver")


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_models_reject_it_with_the_field_path(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    with pytest.raises(InvalidObjectError) as caught:
        parse(document)
    assert list(caught.value.problems) == expectations(path, "model")
