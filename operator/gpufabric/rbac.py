"""The operator's permissions: one table, the only place they are written.

The README's table, the Helm chart's ClusterRole and Roles (`charts/gpu-fabric-operator/files/rbac-rules.yaml`
is generated from here) and so the e2e suite's ServiceAccount (installed by the chart; the suite proves on
a real API server that the operator needs every rule and nothing more) all come from `RULES`. Each rule says why
the operator needs it; a rule with `only_with` is needed only with that flag, one `cluster_wide_only` only when
the operator watches every namespace (no `--namespace`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gpufabric.api.common import API_GROUP


class Scope(StrEnum):
    # Cluster-scoped resources (ComputeNodes, Nodes, CRDs): a ClusterRole in both modes.
    CLUSTER = "cluster"
    # The workloads' namespaced resources (AgentWorkloads, pods, Services, ConfigMaps, Events): a ClusterRole
    # when the operator watches every namespace, a Role in each watched namespace when it watches some.
    WATCHED_NAMESPACES = "watched namespaces"
    # Events about cluster-scoped objects (ComputeNodes) go to `default`, as Kubernetes' own do; granted
    # there on its own only when the watched namespaces are listed (cluster-wide, the rule above covers it).
    DEFAULT_NAMESPACE = "default namespace"
    # The operator's own namespace: the Lease and the learned-throughput ConfigMap.
    OPERATOR_NAMESPACE = "operator namespace"


@dataclass(frozen=True)
class Rule:
    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    scope: Scope
    why: str
    only_with: str | None = None
    cluster_wide_only: bool = False

    def policy_rule(self) -> dict[str, Any]:
        return {"apiGroups": [self.api_group], "resources": list(self.resources), "verbs": list(self.verbs)}


WATCH = ("list", "watch")

RULES: tuple[Rule, ...] = (
    Rule(API_GROUP, ("computenodes",), WATCH, Scope.CLUSTER, "the fleet"),
    Rule(API_GROUP, ("agentworkloads",), WATCH, Scope.WATCHED_NAMESPACES, "the workloads"),
    Rule(API_GROUP, ("computenodes/status",), ("patch",), Scope.CLUSTER, "status: devices, conditions, tokens/s"),
    Rule(
        API_GROUP,
        ("agentworkloads/status",),
        ("patch",),
        Scope.WATCHED_NAMESPACES,
        "status: placements, conditions, tokens/s",
    ),
    Rule(
        API_GROUP,
        ("agentworkloads",),
        ("patch",),
        Scope.WATCHED_NAMESPACES,
        "the tokens/s autoscaler sets spec.replicas and the gpufabric.io/scaled-to annotation",
    ),
    Rule(
        API_GROUP,
        ("computenodes",),
        ("create", "patch"),
        Scope.CLUSTER,
        "ComputeNodes discovered from Nodes' vendor labels",
        only_with="--discover-nodes",
    ),
    Rule(
        "",
        ("pods", "services"),
        (*WATCH, "create", "delete"),
        Scope.WATCHED_NAMESPACES,
        "the replicas' pods and Services",
    ),
    Rule(
        "",
        ("configmaps",),
        ("create", "patch", "delete"),
        Scope.WATCHED_NAMESPACES,
        "engine files of replicas (MindIE's config.json); never read",
    ),
    Rule("", ("nodes",), WATCH, Scope.CLUSTER, "Node readiness and advertised devices"),
    Rule(
        "",
        ("pods",),
        WATCH,
        Scope.CLUSTER,
        "devices others' pods hold: bound, running pods the operator does not manage, in every namespace "
        "(of each, only its Node and accelerator requests are kept)",
    ),
    Rule("", ("namespaces",), WATCH, Scope.CLUSTER, "namespaces being deleted get no new pods or Services"),
    Rule(
        "resource.k8s.io",
        ("resourceslices", "resourceclaims"),
        WATCH,
        Scope.CLUSTER,
        "Dynamic Resource Allocation: the devices Nodes publish and those others' claims hold",
    ),
    Rule("", ("events",), ("create",), Scope.WATCHED_NAMESPACES, "events on AgentWorkloads: placed, moved, scaled"),
    Rule("", ("events",), ("create",), Scope.DEFAULT_NAMESPACE, "events on ComputeNodes (cluster-scoped)"),
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        WATCH,
        Scope.CLUSTER,
        "kopf follows the CRDs: one re-created or upgraded is picked up without a restart "
        "(without the rule kopf warns at start). Watching listed namespaces, kopf's scanning is off: it would "
        "also list every namespace, and the names are exact, so neither is needed",
        cluster_wide_only=True,
    ),
    Rule(
        "coordination.k8s.io",
        ("leases",),
        ("get", "create", "patch"),
        Scope.OPERATOR_NAMESPACE,
        "leader election: Lease gpu-fabric-operator",
    ),
    Rule(
        "",
        ("configmaps",),
        ("get", "create", "patch"),
        Scope.OPERATOR_NAMESPACE,
        "the learned-throughput table: ConfigMap gpufabric-learned-throughput",
    ),
)


def rules(scope: Scope, *, discover_nodes: bool = True, namespaced: bool = False) -> list[Rule]:
    return [r for r in RULES if r.scope == scope and _granted(r, discover_nodes=discover_nodes, namespaced=namespaced)]


def _granted(rule: Rule, *, discover_nodes: bool, namespaced: bool) -> bool:
    return (
        (discover_nodes or rule.only_with != "--discover-nodes")
        and not (namespaced and rule.cluster_wide_only)
        # Cluster-wide, the watched-namespace rules cover `default` too.
        and (namespaced or rule.scope is not Scope.DEFAULT_NAMESPACE)
    )


def _binding(kind: str, name: str, namespace: str | None, subject: list[dict[str, str]]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(LABELS)}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": RBAC_API,
        "kind": f"{kind}Binding",
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": subject,
    }


def _role(kind: str, name: str, namespace: str | None, rules_: list[Rule]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(LABELS)}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": RBAC_API, "kind": kind, "metadata": metadata, "rules": [r.policy_rule() for r in rules_]}


RBAC_API = "rbac.authorization.k8s.io/v1"
LABELS = {"app.kubernetes.io/name": "gpu-fabric-operator"}


def manifests(
    name: str,
    namespace: str,
    service_account: str,
    *,
    discover_nodes: bool = True,
    watch_namespaces: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The ClusterRole, Roles and their bindings to the ServiceAccount `namespace/service_account`.

    Watching every namespace (`watch_namespaces` empty): one ClusterRole with the cluster and the
    watched-namespace rules, and a Role in the operator's namespace. Watching some: the ClusterRole holds
    only the cluster rules, each watched namespace gets a Role, `default` one for ComputeNodes' events."""
    subject = [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]
    cluster = rules(Scope.CLUSTER, discover_nodes=discover_nodes, namespaced=bool(watch_namespaces))
    watched = rules(Scope.WATCHED_NAMESPACES)
    documents = [
        _role("ClusterRole", name, None, cluster if watch_namespaces else cluster + watched),
        _binding("ClusterRole", name, None, subject),
        _role("Role", name, namespace, rules(Scope.OPERATOR_NAMESPACE)),
        _binding("Role", name, namespace, subject),
    ]
    for watched_namespace in watch_namespaces:
        documents += [
            _role("Role", name, watched_namespace, watched),
            _binding("Role", name, watched_namespace, subject),
        ]
    if watch_namespaces:
        documents += [
            _role("Role", f"{name}-events", "default", rules(Scope.DEFAULT_NAMESPACE, namespaced=True)),
            _binding("Role", f"{name}-events", "default", subject),
        ]
    return documents


def grants(*, discover_nodes: bool = True, namespaced: bool = False) -> set[tuple[str, str, str, Scope]]:
    """Every (apiGroup, resource, verb, scope) the manifests grant, one by one."""
    return {
        (rule.api_group, resource, verb, rule.scope)
        for rule in RULES
        if _granted(rule, discover_nodes=discover_nodes, namespaced=namespaced)
        for resource in rule.resources
        for verb in rule.verbs
    }


def chart_rules() -> dict[str, list[dict[str, Any]]]:
    """The rules by where the chart binds them (charts/gpu-fabric-operator/files/rbac-rules.yaml)."""
    return {
        "cluster": [r.policy_rule() for r in rules(Scope.CLUSTER, discover_nodes=False, namespaced=True)],
        "discoverNodes": [r.policy_rule() for r in RULES if r.only_with == "--discover-nodes"],
        "clusterWide": [r.policy_rule() for r in RULES if r.cluster_wide_only],
        "watchedNamespaces": [r.policy_rule() for r in rules(Scope.WATCHED_NAMESPACES)],
        "defaultNamespace": [r.policy_rule() for r in rules(Scope.DEFAULT_NAMESPACE, namespaced=True)],
        "operatorNamespace": [r.policy_rule() for r in rules(Scope.OPERATOR_NAMESPACE)],
    }
