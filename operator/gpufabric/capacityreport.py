"""`gpufabric capacity`: free fabric capacity in tokens/s, from manifests or from the live cluster."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from gpufabric.api import labels
from gpufabric.manifests import Fleet
from gpufabric.placement import PriorThroughput, Snapshot, ThroughputSource
from gpufabric.placement.plan import is_ready, plan_fleet
from gpufabric.placement.snapshot import ExistingReplica
from gpufabric.texttable import table
from gpufabric.throughput import CapacityRow, LearnedThroughput, best_total, free_capacity
from gpufabric.throughput.learning import STORE_CONFIG_MAP as CONFIG_MAP
from gpufabric.throughput.learning import STORE_KEY as KEY
from gpufabric.vendors import ACCELERATORS, Precision


@dataclass(frozen=True)
class CapacityReport:
    parameters_billions: float
    rows: tuple[CapacityRow, ...]
    total: float
    source: str


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


# Long enough for a list of every pod of a big cluster, short enough that a silent network is reported.
REQUEST_TIMEOUT_SECONDS = 30


def capacity_from_cluster(
    kubeconfig: str | None,
    parameters_billions: float,
    precisions: Sequence[Precision] | None,
    *,
    context: str | None = None,
) -> CapacityReport:
    """Free capacity now: ComputeNodes and Node readiness, allocations from the operator's pods, and the
    throughput the operator has learned (its ConfigMap), else the priors. ClusterUnreadableError when the
    cluster cannot be logged in to, reached or read."""
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
    from pydantic import ValidationError  # noqa: PLC0415

    from gpufabric.api.common import API_GROUP, API_VERSION  # noqa: PLC0415
    from gpufabric.api.computenode import ComputeNode  # noqa: PLC0415
    from gpufabric.api.objects import problems  # noqa: PLC0415
    from gpufabric.reconcile.ledger import fleet_snapshot, replicas_of  # noqa: PLC0415
    from gpufabric.reconcile.observe import NotOurs, node_health, pod_record  # noqa: PLC0415

    custom: Any = client.CustomObjectsApi(api)
    core: Any = client.CoreV1Api(api)
    timeout = REQUEST_TIMEOUT_SECONDS
    nodes = []
    for item in custom.list_cluster_custom_object(API_GROUP, API_VERSION, "computenodes", _request_timeout=timeout)[
        "items"
    ]:
        try:
            nodes.append(ComputeNode.model_validate(item))
        except ValidationError as error:
            name = (item.get("metadata") or {}).get("name")
            raise ClusterUnreadableError(f"ComputeNode {name} in the cluster: {'; '.join(problems(error))}") from None
    health = {
        n.metadata.name: node_health(api.sanitize_for_serialization(n))
        for n in core.list_node(_request_timeout=timeout).items
    }
    records = []
    selector = f"{labels.MANAGED_BY}={labels.MANAGER}"
    for pod in core.list_pod_for_all_namespaces(label_selector=selector, _request_timeout=timeout).items:
        try:
            records.append(pod_record(api.sanitize_for_serialization(pod)))
        except NotOurs:
            continue
    snapshot = fleet_snapshot(nodes, health, replicas_of(records))
    source: ThroughputSource = PriorThroughput(dict(ACCELERATORS))
    origin = "live cluster, vendor-table priors"
    learned = LearnedThroughput(source)
    stores = core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.name={CONFIG_MAP}", _request_timeout=timeout
    ).items
    for item in stores:
        if item.data and KEY in item.data and not learned.load(item.data[KEY]):
            source, origin = learned, "live cluster, learned throughput where measured"
    return _report(snapshot, parameters_billions, precisions, source, origin)


def _report(
    snapshot: Snapshot,
    parameters_billions: float,
    precisions: Sequence[Precision] | None,
    source: ThroughputSource,
    origin: str,
) -> CapacityReport:
    rows = tuple(free_capacity(snapshot, parameters_billions, source, precisions))
    return CapacityReport(parameters_billions, rows, best_total(rows), origin)


def render(report: CapacityReport, output: str) -> str:
    if output == "json":
        return (
            json.dumps(
                {
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
                },
                indent=2,
            )
            + "\n"
        )
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
    return "\n".join(lines) + "\n"
