"""The chart's alerts, rendered by the real `helm` with its default values, checked and unit-tested by the
real `promtool` (tests/chart/alerts.test.yaml), and each documented with a runbook in the README."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.helm import PROMTOOL, ROOT, render

TESTS = Path(__file__).parent / "alerts.test.yaml"
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture
def rules(tmp_path: Path) -> list[dict[str, Any]]:
    """The PrometheusRule's groups, written as a Prometheus rules file beside a copy of the unit tests."""
    (rule,) = [d for d in render({"prometheusRule": {"enabled": True}}, tmp_path) if d["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    return groups


def promtool(*args: str, cwd: Path) -> str:
    assert Path(PROMTOOL).is_file(), f"promtool not found at {PROMTOOL}: run `make tools`"
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_checks_the_rules(rules: list[dict[str, Any]], tmp_path: Path) -> None:
    output = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(alerts(rules))} rules found" in output


def test_promtool_unit_tests_pass(rules: list[dict[str, Any]], tmp_path: Path) -> None:
    output = promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert "SUCCESS" in output


def test_the_unit_tests_can_fail(rules: list[dict[str, Any]], tmp_path: Path) -> None:
    """A threshold moved by the chart would break them: the tests pin the rules, not just run them."""
    text = (tmp_path / "rules.yaml").read_text()
    (tmp_path / "rules.yaml").write_text(text.replace("> 0.1", "> 0.5"))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", TESTS.name], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "GpuFabricScrapeFailures" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent(rules: list[dict[str, Any]]) -> None:
    tests = yaml.safe_load(TESTS.read_text(encoding="utf-8"))["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    silent = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]}
    names = {rule["alert"] for rule in alerts(rules)}
    assert names == fired, f"alerts never tested firing: {names - fired}"
    assert names == silent, f"alerts never tested silent: {names - silent}"


def test_every_alert_has_text_severity_and_a_runbook_in_the_readme(rules: list[dict[str, Any]]) -> None:
    for rule in alerts(rules):
        name = rule["alert"]
        assert rule["annotations"].keys() == {"summary", "description", "runbook_url"}, name
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower(), name
        assert re.search(rf"^#### {name}$", README, re.MULTILINE), f"README has no runbook for {name}"
        assert re.search(rf"^\| {name} \| {rule['labels']['severity']} \|", README, re.MULTILINE), name


def test_alerts_use_only_exported_metrics(rules: list[dict[str, Any]]) -> None:
    exported = set(re.findall(r"^\| `(gpufabric_[a-z_]+)` \|", README, re.MULTILINE))
    for rule in alerts(rules):
        used = set(re.findall(r"\b(gpufabric_[a-z_]+)\b", rule["expr"]))
        assert used <= exported, (rule["alert"], used - exported)


def test_the_free_capacity_alert_can_be_turned_off(tmp_path: Path) -> None:
    values = {"prometheusRule": {"enabled": True, "freeCapacityTokensPerSecond": 0}}
    (rule,) = [d for d in render(values, tmp_path) if d["kind"] == "PrometheusRule"]
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "GpuFabricFreeCapacityLow" not in names
    assert "GpuFabricOperatorDown" in names
