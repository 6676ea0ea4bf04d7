"""The vendor table is consistent, sourced, and the only place that spells vendor facts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpufabric import vendors
from gpufabric.vendors import ACCELERATORS, VENDORS, Precision, Vendor

PACKAGE = Path(vendors.__file__).resolve().parent


def test_every_vendor_has_facts() -> None:
    assert set(VENDORS) == set(Vendor)
    for vendor, facts in VENDORS.items():
        assert facts.vendor == vendor
        assert vendors.accelerators_of(vendor), f"{vendor} has no accelerator in the table"


@pytest.mark.parametrize("name", sorted(ACCELERATORS))
def test_accelerator_facts_are_plausible(name: str) -> None:
    accelerator = ACCELERATORS[name]
    assert accelerator.name == name
    assert 16 <= accelerator.memory_gib <= 512
    assert accelerator.memory_bandwidth_gb_per_s > 0
    assert {Precision.BF16, Precision.FP16} <= accelerator.precisions
    assert accelerator.prior.tokens_per_second > 0
    assert accelerator.prior.precision in accelerator.precisions
    # An estimate says so in its source; a published figure names where it was published.
    assert ("ESTIMATE" in accelerator.prior.source) == accelerator.prior.estimated
    assert accelerator.product_labels, f"{name}: discovery cannot recognise it"


def test_product_labels_name_one_accelerator_each() -> None:
    seen: dict[tuple[Vendor, str], str] = {}
    for accelerator in ACCELERATORS.values():
        for label in accelerator.product_labels:
            key = (accelerator.vendor, label)
            assert key not in seen, f"{label} names both {seen[key]} and {accelerator.name}"
            seen[key] = accelerator.name
            assert vendors.accelerator_for_product_label(accelerator.vendor, label) is accelerator


def test_unknown_product_label_is_not_guessed() -> None:
    assert vendors.accelerator_for_product_label(Vendor.NVIDIA, "NVIDIA-GeForce-RTX-4090") is None
    assert vendors.accelerator_for_product_label(Vendor.ASCEND, "NVIDIA-H100-80GB-HBM3") is None


def test_fp8_is_claimed_only_where_the_hardware_has_it() -> None:
    without_fp8 = {n for n, a in ACCELERATORS.items() if Precision.FP8 not in a.precisions}
    assert {"A100-80GB", "MTT-S4000", "Ascend-910B3"} <= without_fp8
    assert Precision.FP4 in ACCELERATORS["B200"].precisions
    assert Precision.FP4 not in ACCELERATORS["H100-SXM5-80GB"].precisions


def _vendor_strings() -> set[str]:
    strings = set()
    for facts in VENDORS.values():
        strings |= {facts.resource_name, facts.plugin_visible_devices_env, facts.runtime_visible_devices_env}
        strings |= {facts.collective.socket_interface_env, *facts.taint_keys, facts.discovery.presence_key}
        strings |= {v for v in (facts.collective.rdma_devices_env, facts.collective.gid_index_env) if v}
    # A plain word such as Ascend's `accelerator` label key is also ordinary vocabulary; qualified names
    # (domain/name, dotted, env-style) are what must not be spelled twice.
    return {s for s in strings if any(c in s for c in "/._") or s.isupper()}


def test_no_module_but_the_table_spells_a_vendor_fact() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "vendors.py":
            continue
        text = path.read_text()
        for fact in _vendor_strings():
            if re.search(rf"[\"']{re.escape(fact)}[\"']", text):
                offenders.append(f"{path.relative_to(PACKAGE)} spells {fact!r}")
    assert not offenders, "\n".join(offenders)
