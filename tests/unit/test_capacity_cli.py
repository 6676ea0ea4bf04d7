"""`gpufabric capacity`: free capacity in tokens/s from manifests; bad input exits 2 with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufabric import capacityreport
from gpufabric.cli import main
from gpufabric.exporter import device_states
from gpufabric.placement import Snapshot
from gpufabric.placement.snapshot import ExistingReplica, ObservedDevices
from gpufabric.vendors import Vendor
from support.fleet import PRIOR, node

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["capacity", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_example_fleet_after_its_workloads(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-f", str(EXAMPLES), "--model-params", "70", "-o", "json")
    assert code == 0
    report = json.loads(out)
    rows = {(r["accelerator"], r["precision"], r["roceDomain"]): r for r in report["rows"]}
    # 70B at FP8: one B200 device per replica; the example workloads already hold some of the B200s.
    b200 = rows[("B200", "FP8", "a")]
    assert b200["devicesPerReplica"] == 1
    assert b200["replicas"] == 32 - 6, "four reasoning-70b and two of the support-agent's replicas are placed"
    assert ("Ascend-910B3", "FP8", "b") not in rows
    assert report["totalTokensPerSecond"] > b200["tokensPerSecond"]


def test_precision_filter_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-f", str(EXAMPLES), "--precision", "INT8")
    assert code == 0
    assert out.startswith("Free capacity for a 8B model (manifests, after placing their workloads):")
    assert "FP8" not in out
    assert "TOTAL (best precision per accelerator and domain):" in out


# Bad flags and an unreadable kubeconfig: tests/badinput/ (model-params-*, capacity-*).


def test_a_source_is_required() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["capacity"])
    assert caught.value.code == 2


# --- the same numbers as the operator's ---------------------------------------------------------------------


# devices declared, offered by the Node, held by others, our replicas' sizes, Ready, cordoned
node_facts = st.tuples(
    st.integers(1, 8),
    st.integers(0, 10),
    st.integers(0, 10),
    st.lists(st.integers(1, 4), max_size=4),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(node_facts)
def test_device_states_are_the_exporters(facts: tuple[int, int, int, list[int], bool, bool]) -> None:
    """The report's columns and gpufabric_devices' states (the two reports may not import each other)."""
    devices, offered, others, ours, ready, cordoned = facts
    compute_node = node("n", devices=devices, cordoned=cordoned)
    existing = [ExistingReplica("w", index, ("n",), size) for index, size in enumerate(ours)]
    snapshot = Snapshot([(compute_node, ready)], existing, {"n": ObservedDevices(offered, others)})
    states = capacityreport.node_device_states(snapshot.nodes["n"])
    assert states.pop("declared") == devices
    assert states == device_states(snapshot.nodes["n"])


def test_lists_are_read_a_page_at_a_time() -> None:
    pages = {
        None: {"metadata": {"continue": "2"}, "items": [{"n": 1}, {"n": 2}]},
        "2": {"metadata": {"continue": "3"}, "items": [{"n": 3}]},
        "3": {"metadata": {}, "items": [{"n": 4}]},
    }
    asked: list[dict[str, Any]] = []

    def list_page(group: str, **params: Any) -> SimpleNamespace:
        asked.append({"group": group, **params})
        return SimpleNamespace(data=json.dumps(pages[params["_continue"]]).encode())

    items = list(capacityreport._items(list_page, "resource.k8s.io", field_selector="x"))
    assert [item["n"] for item in items] == [1, 2, 3, 4]
    assert [a["_continue"] for a in asked] == [None, "2", "3"]
    assert all(a["group"] == "resource.k8s.io" and a["field_selector"] == "x" for a in asked)
    assert all(a["limit"] == capacityreport.PAGE_SIZE and a["_preload_content"] is False for a in asked)


def test_the_report_lists_devices_by_state_and_what_is_not_known() -> None:
    snapshot = Snapshot(
        [(node("h1"), True), (node("h2"), False), (node("a1", "Ascend-910B3", domain="b"), True)],
        [ExistingReplica("w", 0, ("h1",), 2)],
        {"h1": ObservedDevices(7, 3), "h2": ObservedDevices(8, 0), "a1": ObservedDevices(8, 0)},
    )
    report = capacityreport._report(
        snapshot,
        8,
        None,
        PRIOR,
        "live cluster",
        observed=True,
        unknown=["cannot list DRA ResourceClaims (403 Forbidden): the devices they hold are counted as free"],
    )
    h100, ascend = report.devices
    # h1: 7 offered of 8, others 3, ours 2 -> 2 free; h2 NotReady: its 8 are unavailable
    counts = (h100.declared, h100.not_offered, h100.held_by_others, h100.allocated, h100.free, h100.unavailable)
    assert counts == (16, 1, 3, 2, 2, 8)
    assert (ascend.vendor, ascend.domain, ascend.free) == (Vendor.ASCEND, "b", 8)
    text = capacityreport.render(report, "table")
    assert "VENDOR  ACCELERATOR     DOMAIN  DECLARED  NOT OFFERED  HELD BY OTHERS  ALLOCATED  FREE  UNAVAILABLE" in text
    assert "nvidia  H100-SXM5-80GB  a       16        1            3               2          2     8" in text
    assert (
        "TOTAL: 24 declared, 1 not offered by their Nodes, 3 held by others, 2 allocated to replicas, "
        "10 free, 8 unavailable" in text
    )
    assert text.endswith(
        "NOT KNOWN: cannot list DRA ResourceClaims (403 Forbidden): the devices they hold are counted as free\n"
    )
    document = json.loads(capacityreport.render(report, "json"))
    assert document["devices"][0] == {
        "vendor": "nvidia",
        "accelerator": "H100-SXM5-80GB",
        "roceDomain": "a",
        "declared": 16,
        "notOffered": 1,
        "heldByOthers": 3,
        "allocated": 2,
        "free": 2,
        "unavailable": 8,
    }
    assert document["notKnown"] == list(report.unknown)
    assert document["devicesObserved"] is True
