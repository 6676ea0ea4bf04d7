"""`gpufabric capacity`: free fabric capacity in tokens/s, from manifests or from the live cluster."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

from gpufabric.api import labels
from gpufabric.api.computenode import ComputeNode
from gpufabric.manifests import Fleet
from gpufabric.placement import PriorThroughput, Snapshot, ThroughputSource
from gpufabric.placement.plan import is_ready, plan_fleet
from gpufabric.placement.snapshot import ExistingReplica, NodeState, ObservedDevices
from gpufabric.reconcile.devices import OTHERS_FIELD_SELECTOR, OTHERS_LABEL_SELECTOR, VENDOR_RESOURCES
from gpufabric.reconcile.state import DraInventory, NodeHealth, foreign_requests
from gpufabric.texttable import table
from gpufabric.throughput import CapacityRow, LearnedThroughput, best_total, free_capacity
from gpufabric.throughput.learning import STORE_CONFIG_MAP as CONFIG_MAP
from gpufabric.throughput.learning import STORE_KEY as KEY
from gpufabric.vendors import ACCELERATORS, Precision, Vendor

T = TypeVar("T")


@dataclass(frozen=True)
class DeviceRow:
    """The declared devices of one accelerator in one RoCE domain, split as placement counts them (the states
    of gpufabric_devices: they sum to `declared`)."""

    vendor: Vendor
    accelerator: str
    domain: str | None
    declared: int
    not_offered: int  # the Nodes advertise fewer (device plugins, DRA slices), or are missing
    held_by_others: int  # pods and DRA claims the operator does not manage
    allocated: int  # the operator's replicas
    free: int  # on Ready, uncordoned nodes
    unavailable: int  # free, but on nodes that are not Ready or are cordoned


@dataclass(frozen=True)
class CapacityReport:
    parameters_billions: float
    rows: tuple[CapacityRow, ...]
    total: float
    source: str
    devices: tuple[DeviceRow, ...] = ()
    # whether the devices are as the cluster reports them (offered, held by others), not only as declared
    observed: bool = False
    # what could not be listed, in words, and what that means for the numbers
    unknown: tuple[str, ...] = ()


def capacity_from_files(
    fleet: Fleet, parameters_billions: float, precisions: Sequence[Precision] | None
) -> CapacityReport:
    """Free capacity once the manifests' workloads are placed (as `gpufabric plan` would place them)."""
    prior = PriorThroughput(dict(ACCELERATORS))
    plan = plan_fleet(fleet.nodes, fleet.workloads, prior)
    taken = [ExistingReplica.of(d.workload, d.replica, d.allocation) for d in (*plan.running, *plan.placed)]
    snapshot = Snapshot([(node, is_ready(node)) for node in fleet.nodes], taken)
    return _report(snapshot, parameters_billions, precisions, prior, "manifests, after placing their workloads")


class ClusterUnreadableError(Exception):
    """No credentials, no answer, or a refusal from the cluster: one line a person can act on."""


# Long enough for a page of a big cluster's pods, short enough that a silent network is reported.
REQUEST_TIMEOUT_SECONDS = 30
PAGE_SIZE = 500  # items per list request (limit and continue, as kubectl lists)
# The pods of others that hold devices, as the operator's own watch selects them (reconcile.devices).
OTHERS_PODS = {"field_selector": OTHERS_FIELD_SELECTOR, "label_selector": OTHERS_LABEL_SELECTOR}
DRA_GROUP, DRA_VERSION = "resource.k8s.io", "v1"


def capacity_from_cluster(
    kubeconfig: str | None,
    parameters_billions: float,
    precisions: Sequence[Precision] | None,
    *,
    context: str | None = None,
) -> CapacityReport:
    """Free capacity now, counted as the operator counts it: ComputeNodes and Node readiness, what each Node
    offers and what pods and DRA claims of others hold there, allocations from the operator's pods, and the
    throughput the operator has learned (its ConfigMap), else the priors. ClusterUnreadableError when the
    cluster cannot be logged in to, reached or read (others' pods and DRA objects it may not list are said in
    the report instead)."""
    from kubernetes import client  # noqa: PLC0415 - only this path talks to a cluster
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415
    from urllib3.exceptions import HTTPError  # noqa: PLC0415

    from gpufabric import credentials  # noqa: PLC0415

    try:
        configuration = credentials.load(kubeconfig, context)
    except credentials.CredentialsError as error:
        raise ClusterUnreadableError(str(error)) from None
    api: Any = client.ApiClient(configuration)
    try:
        return _capacity_of(api, parameters_billions, precisions)
    except ApiException as error:
        raise ClusterUnreadableError(
            f"{configuration.host} refused a read: {error.status} {error.reason}"
            + (" (are the CRDs installed?)" if error.status == HTTPStatus.NOT_FOUND else "")
        ) from None
    except (HTTPError, OSError) as error:
        raise ClusterUnreadableError(f"cannot reach {configuration.host}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split())


def _capacity_of(api: Any, parameters_billions: float, precisions: Sequence[Precision] | None) -> CapacityReport:
    from kubernetes import client  # noqa: PLC0415

    from gpufabric.reconcile.ledger import fleet_snapshot, replicas_of  # noqa: PLC0415
    from gpufabric.reconcile.observe import NotOurs, node_health, pod_record  # noqa: PLC0415

    core: Any = client.CoreV1Api(api)
    nodes = _compute_nodes(client.CustomObjectsApi(api))
    health = {
        n.metadata.name: node_health(api.sanitize_for_serialization(n))
        for n in core.list_node(_request_timeout=REQUEST_TIMEOUT_SECONDS).items
    }
    records = []
    selector = f"{labels.MANAGED_BY}={labels.MANAGER}"
    for body in _items(core.list_pod_for_all_namespaces, label_selector=selector):
        try:
            records.append(pod_record(body))
        except NotOurs:
            continue
    observed, unknown = _observed(api, nodes, health, {record.ref.key for record in records})
    snapshot = fleet_snapshot(nodes, health, replicas_of(records), observed)
    source, origin = _throughput_source(core)
    return _report(snapshot, parameters_billions, precisions, source, origin, observed=True, unknown=unknown)


def _compute_nodes(custom: Any) -> list[ComputeNode]:
    from pydantic import ValidationError  # noqa: PLC0415

    from gpufabric.api.common import API_GROUP, API_VERSION  # noqa: PLC0415
    from gpufabric.api.objects import problems  # noqa: PLC0415

    nodes = []
    listed = custom.list_cluster_custom_object(
        API_GROUP, API_VERSION, "computenodes", _request_timeout=REQUEST_TIMEOUT_SECONDS
    )
    for item in listed["items"]:
        try:
            nodes.append(ComputeNode.model_validate(item))
        except ValidationError as error:
            name = (item.get("metadata") or {}).get("name")
            raise ClusterUnreadableError(f"ComputeNode {name} in the cluster: {'; '.join(problems(error))}") from None
    return nodes


def _throughput_source(core: Any) -> tuple[ThroughputSource, str]:
    """The throughput the operator has learned (its ConfigMap, in whichever namespace it runs), else the priors."""
    source: ThroughputSource = PriorThroughput(dict(ACCELERATORS))
    origin = "live cluster, vendor-table priors"
    learned = LearnedThroughput(source)
    stores = core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.name={CONFIG_MAP}", _request_timeout=REQUEST_TIMEOUT_SECONDS
    ).items
    for item in stores:
        if item.data and KEY in item.data and not learned.load(item.data[KEY]):
            source, origin = learned, "live cluster, learned throughput where measured"
    return source, origin


def _observed(
    api: Any, nodes: list[ComputeNode], health: Mapping[str, NodeHealth], ours: Collection[str]
) -> tuple[dict[str, ObservedDevices], tuple[str, ...]]:
    """What each ComputeNode's Node offers and what others hold there (reconcile.devices, as each pass counts
    it), from the lists the operator's own watches make; and, in words, what it may not list."""
    from kubernetes import client  # noqa: PLC0415

    from gpufabric.reconcile.devices import observe_devices  # noqa: PLC0415
    from gpufabric.reconcile.observe import foreign_pod, resource_claim, resource_slice  # noqa: PLC0415

    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    resources = VENDOR_RESOURCES | {node.spec.device_resource_name for node in nodes}
    unknown: list[str] = []
    pods = _listed(
        "pods of others",
        "the devices they hold are counted as free",
        lambda: _kept(_items(core.list_pod_for_all_namespaces, **OTHERS_PODS), lambda b: foreign_pod(b, resources)),
        unknown,
    )

    def dra(plural: str) -> Iterator[Mapping[str, Any]]:
        return _items(custom.list_cluster_custom_object, DRA_GROUP, DRA_VERSION, plural)

    slices = _listed(
        "DRA ResourceSlices",
        "nodes whose devices only DRA publishes are counted as offering none",
        lambda: _kept(dra("resourceslices"), resource_slice),
        unknown,
    )
    claims = _listed(
        "DRA ResourceClaims",
        "the devices they hold are counted as free",
        lambda: _kept(dra("resourceclaims"), resource_claim),
        unknown,
    )
    inventory = DraInventory(tuple(slices or ()), tuple(claims or ()), claims_known=claims is not None)
    observed = observe_devices(
        nodes, health, foreign_requests(pods or ()), inventory, ours, foreign_known=pods is not None
    )
    return observed, tuple(unknown)


def _items(list_page: Callable[..., Any], *args: Any, **params: Any) -> Iterator[Mapping[str, Any]]:
    """Every item of a collection as the API server's JSON, a page at a time (the client's models would be
    built for every pod of the cluster only to be turned back into dicts)."""
    token: str | None = None
    while True:
        response = list_page(
            *args,
            **params,
            limit=PAGE_SIZE,
            _continue=token,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
        page = json.loads(response.data)
        yield from page.get("items") or []
        token = (page.get("metadata") or {}).get("continue") or None
        if token is None:
            return


def _kept(items: Iterable[Mapping[str, Any]], parse: Callable[[Mapping[str, Any]], T | None]) -> list[T]:
    """What `parse` keeps of each item (others' pods: only those holding accelerators, as the operator keeps)."""
    return [record for item in items if (record := parse(item)) is not None]


def _listed(what: str, meaning: str, read: Callable[[], list[T]], unknown: list[str]) -> list[T] | None:
    """`read()`; for a collection the API server does not serve (404: no DRA), nothing; for one the credentials
    may not list (403), None, and why in `unknown` with what it `meaning`s for the numbers."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        return read()
    except ApiException as error:
        if error.status == HTTPStatus.NOT_FOUND:
            return []
        if error.status == HTTPStatus.FORBIDDEN:
            unknown.append(f"cannot list {what} ({error.status} {error.reason}): {meaning}")
            return None
        raise


def _report(
    snapshot: Snapshot,
    parameters_billions: float,
    precisions: Sequence[Precision] | None,
    source: ThroughputSource,
    origin: str,
    *,
    observed: bool = False,
    unknown: Sequence[str] = (),
) -> CapacityReport:
    rows = tuple(free_capacity(snapshot, parameters_billions, source, precisions))
    devices = device_rows(snapshot)
    return CapacityReport(parameters_billions, rows, best_total(rows), origin, devices, observed, tuple(unknown))


def device_rows(snapshot: Snapshot) -> tuple[DeviceRow, ...]:
    """The snapshot's declared devices by state, per accelerator and RoCE domain."""
    totals: dict[tuple[Vendor, str, str | None], Counter[str]] = {}
    for node in snapshot.nodes.values():
        key = (node.node_class.vendor, node.node_class.accelerator, node.domain)
        totals.setdefault(key, Counter()).update(node_device_states(node))
    order = list(Vendor)
    return tuple(
        DeviceRow(
            vendor,
            accelerator,
            domain,
            declared=counts["declared"],
            not_offered=counts["not_offered"],
            held_by_others=counts["held_by_others"],
            allocated=counts["allocated"],
            free=counts["free"],
            unavailable=counts["unavailable"],
        )
        for (vendor, accelerator, domain), counts in sorted(
            totals.items(), key=lambda item: (order.index(item[0][0]), item[0][1], item[0][2] or "")
        )
    )


def node_device_states(node: NodeState) -> dict[str, int]:
    """One node's declared devices by the states of `gpufabric_devices` (exporter.device_states: the reports
    may not import each other, and a test holds the two equal), with `declared` beside them."""
    declared = node.node_class.devices
    offered = min(node.offered, declared)
    free = min(node.free, node.capacity)
    return {
        "declared": declared,
        "not_offered": declared - offered,
        "held_by_others": min(node.held_by_others, offered),
        "allocated": node.capacity - free,
        "free" if node.schedulable else "unavailable": free,
    }


def render(report: CapacityReport, output: str) -> str:
    if output == "json":
        return json.dumps(_as_json(report), indent=2) + "\n"
    header = ["VENDOR", "ACCELERATOR", "PRECISION", "DOMAIN", "REPLICAS", "DEVICES/REPLICA", "TOKENS/S"]
    rows = [
        [
            r.vendor.value,
            r.accelerator,
            r.precision.value,
            r.domain or "-",
            str(r.replicas),
            str(r.devices_per_replica),
            f"{r.tokens_per_second:,.0f}",
        ]
        for r in report.rows
    ]
    lines = [f"Free capacity for a {report.parameters_billions:g}B model ({report.source}):"]
    lines += table(header, rows)
    lines.append(f"TOTAL (best precision per accelerator and domain): {report.total:,.0f} generation tokens/s")
    if report.devices:
        lines += ["", *_devices_table(report.devices, observed=report.observed)]
    lines += [f"NOT KNOWN: {problem}" for problem in report.unknown]
    return "\n".join(lines) + "\n"


def _devices_table(devices: Sequence[DeviceRow], *, observed: bool) -> list[str]:
    header = [
        *("VENDOR", "ACCELERATOR", "DOMAIN", "DECLARED"),
        *("NOT OFFERED", "HELD BY OTHERS", "ALLOCATED", "FREE", "UNAVAILABLE"),
    ]
    rows = [
        [
            d.vendor.value,
            d.accelerator,
            d.domain or "-",
            *(str(n) for n in (d.declared, d.not_offered, d.held_by_others, d.allocated, d.free, d.unavailable)),
        ]
        for d in devices
    ]
    declared = sum(d.declared for d in devices)
    others = sum(d.held_by_others for d in devices)
    not_offered = sum(d.not_offered for d in devices)
    title = (
        "Devices as placement counts them (what the Nodes offer, less what pods and DRA claims of others hold):"
        if observed
        else "Devices as the manifests declare them (what Nodes offer and others hold is known only from a cluster):"
    )
    return [
        title,
        *table(header, rows),
        f"TOTAL: {declared:,} declared, {not_offered:,} not offered by their Nodes, {others:,} held by others, "
        f"{sum(d.allocated for d in devices):,} allocated to replicas, {sum(d.free for d in devices):,} free, "
        f"{sum(d.unavailable for d in devices):,} unavailable",
    ]


def _as_json(report: CapacityReport) -> dict[str, Any]:
    return {
        "parametersBillions": report.parameters_billions,
        "source": report.source,
        "totalTokensPerSecond": round(report.total, 1),
        "rows": [
            {
                "vendor": r.vendor.value,
                "accelerator": r.accelerator,
                "precision": r.precision.value,
                "roceDomain": r.domain,
                "replicas": r.replicas,
                "devicesPerReplica": r.devices_per_replica,
                "tokensPerSecond": round(r.tokens_per_second, 1),
            }
            for r in report.rows
        ],
        "devices": [
            {
                "vendor": d.vendor.value,
                "accelerator": d.accelerator,
                "roceDomain": d.domain,
                "declared": d.declared,
                "notOffered": d.not_offered,
                "heldByOthers": d.held_by_others,
                "allocated": d.allocated,
                "free": d.free,
                "unavailable": d.unavailable,
            }
            for d in report.devices
        ],
        "devicesObserved": report.observed,
        "notKnown": list(report.unknown),
    }
