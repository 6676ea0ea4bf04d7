"""`--discover-nodes`: ComputeNodes from what Nodes already say about their accelerators.

A Node with a vendor's presence label (the vendor table's discovery labels) becomes a ComputeNode of the
same name: vendor from the label, devices from `status.capacity` of the vendor's resource, accelerator from
the vendor's product label (or `gpufabric.io/accelerator`, which wins), RoCE domain from
`gpufabric.io/roce-domain`. The fields discovery wrote are recorded in an annotation; later it changes a
field only while it still holds the value discovery wrote — a field the user set is never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpufabric import vendors
from gpufabric.api.common import API_GROUP, GROUP_VERSION
from gpufabric.vendors import Vendor

DISCOVERED = f"{API_GROUP}/discovered"
ACCELERATOR_LABEL = f"{API_GROUP}/accelerator"
ROCE_DOMAIN_LABEL = f"{API_GROUP}/roce-domain"
# What an accelerator the table does not know is assumed to serve: every device does 16-bit formats.
UNKNOWN_PRECISIONS = ("BF16", "FP16")


@dataclass(frozen=True)
class Discovered:
    spec: dict[str, Any]
    # why discovery could not describe the node fully (it then does nothing)
    problem: str | None = None


def discover(node: Mapping[str, Any]) -> Discovered | None:
    """What a Node's labels and capacity say, or None when it carries no known vendor's devices."""
    meta = node.get("metadata") or {}
    node_labels: Mapping[str, str] = meta.get("labels") or {}
    capacity: Mapping[str, Any] = (node.get("status") or {}).get("capacity") or {}
    for vendor in Vendor:
        facts = vendors.facts(vendor)
        labels = facts.discovery
        present = labels.presence_key in node_labels and (
            labels.presence_value is None or node_labels[labels.presence_key] == labels.presence_value
        )
        if not present:
            continue
        return _describe(meta["name"], vendor, node_labels, capacity)
    return None


def _describe(name: str, vendor: Vendor, node_labels: Mapping[str, str], capacity: Mapping[str, Any]) -> Discovered:
    facts = vendors.facts(vendor)
    try:
        devices = int(str(capacity.get(facts.resource_name, "0")))
    except ValueError:
        devices = 0
    if devices < 1:
        return Discovered({}, f"Node {name} advertises no {facts.resource_name}")
    spec: dict[str, Any] = {"nodeName": name, "vendor": vendor.value, "devices": devices}
    product = node_labels.get(facts.discovery.product_key) if facts.discovery.product_key else None
    hinted = node_labels.get(ACCELERATOR_LABEL)
    known = (
        vendors.accelerator(hinted)
        if hinted
        else (vendors.accelerator_for_product_label(vendor, product) if product else None)
    )
    if known is not None:
        spec["accelerator"] = known.name
    elif hinted or product:
        spec["accelerator"] = hinted or product
        memory_label = facts.discovery.memory_mib_key
        memory_mib = node_labels.get(memory_label) if memory_label else None
        if not memory_mib or not memory_mib.isdigit():
            return Discovered(
                {},
                f"Node {name}: accelerator {spec['accelerator']} is not in the vendor table and "
                "no memory label says its size; create its ComputeNode by hand",
            )
        spec["memoryGiB"] = round(int(memory_mib) / 1024, 1)
        spec["precisions"] = list(UNKNOWN_PRECISIONS)
    else:
        return Discovered(
            {},
            f"Node {name}: no label names its {facts.display_name} accelerator; label it {ACCELERATOR_LABEL}=<model>",
        )
    domain = node_labels.get(ROCE_DOMAIN_LABEL)
    if domain:
        spec["fabric"] = {"roceDomain": domain}
    return Discovered(spec)


def create_body(name: str, found: Discovered) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "ComputeNode",
        "metadata": {"name": name, "annotations": {DISCOVERED: json.dumps(found.spec, sort_keys=True)}},
        "spec": found.spec,
    }


def update_patch(current: Mapping[str, Any], found: Discovered) -> dict[str, Any] | None:
    """A merge patch bringing discovery's fields up to date, skipping every field the user has set."""
    meta = current.get("metadata") or {}
    try:
        written = json.loads((meta.get("annotations") or {}).get(DISCOVERED) or "{}")
    except ValueError:
        written = {}
    spec: Mapping[str, Any] = current.get("spec") or {}
    changes: dict[str, Any] = {}
    record = dict(written)
    for field, value in found.spec.items():
        ours = field not in spec or (field in written and spec[field] == written[field])
        if ours and spec.get(field) != value:
            changes[field] = value
        if ours:
            record[field] = value
    if not changes:
        return None
    return {"metadata": {"annotations": {DISCOVERED: json.dumps(record, sort_keys=True)}}, "spec": changes}
