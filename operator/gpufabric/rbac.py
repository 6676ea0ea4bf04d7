"""The operator's permissions: one table, the only place they are written.

The README's table, the e2e suite's ServiceAccount (which proves on a real API server that the operator
needs every rule and nothing more) and the deployment manifests all come from `RULES`. Each rule says why
the operator needs it; a rule with `only_with` is needed only with that flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gpufabric.api.common import API_GROUP


class Scope(StrEnum):
    CLUSTER = "cluster"  # a ClusterRole: every namespace (the operator watches cluster-wide)
    OPERATOR_NAMESPACE = "operator namespace"  # a Role in the operator's own namespace


@dataclass(frozen=True)
class Rule:
    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    scope: Scope
    why: str
    only_with: str | None = None

    def policy_rule(self) -> dict[str, Any]:
        return {"apiGroups": [self.api_group], "resources": list(self.resources), "verbs": list(self.verbs)}


WATCH = ("list", "watch")

RULES: tuple[Rule, ...] = (
    Rule(API_GROUP, ("computenodes", "agentworkloads"), WATCH, Scope.CLUSTER, "the fleet and the workloads"),
    Rule(
        API_GROUP,
        ("computenodes/status", "agentworkloads/status"),
        ("patch",),
        Scope.CLUSTER,
        "status: placements, conditions, tokens/s",
    ),
    Rule(
        API_GROUP,
        ("agentworkloads",),
        ("patch",),
        Scope.CLUSTER,
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
    Rule("", ("pods", "services"), (*WATCH, "create", "delete"), Scope.CLUSTER, "the replicas' pods and Services"),
    Rule(
        "",
        ("configmaps",),
        ("create", "patch", "delete"),
        Scope.CLUSTER,
        "engine files of replicas (MindIE's config.json) and the learned-throughput table; never read outside "
        "the operator's namespace",
    ),
    Rule("", ("nodes",), WATCH, Scope.CLUSTER, "Node readiness and advertised devices"),
    Rule("", ("events",), ("create",), Scope.CLUSTER, "events on AgentWorkloads: placed, moved, scaled, refused"),
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        WATCH,
        Scope.CLUSTER,
        "kopf follows the CRDs: one re-created or upgraded is picked up without a restart "
        "(without the rule kopf warns at start)",
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
        ("get",),
        Scope.OPERATOR_NAMESPACE,
        "reading the learned-throughput table: ConfigMap gpufabric-learned-throughput",
    ),
)


def rules(scope: Scope, *, discover_nodes: bool = True) -> list[Rule]:
    return [r for r in RULES if r.scope == scope and (discover_nodes or r.only_with != "--discover-nodes")]


def manifests(name: str, namespace: str, service_account: str, *, discover_nodes: bool = True) -> list[dict[str, Any]]:
    """ClusterRole and Role with the rules, bound to the ServiceAccount `namespace/service_account`."""
    subject = [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]
    labels = {"app.kubernetes.io/name": "gpu-fabric-operator"}
    cluster = [r.policy_rule() for r in rules(Scope.CLUSTER, discover_nodes=discover_nodes)]
    own = [r.policy_rule() for r in rules(Scope.OPERATOR_NAMESPACE, discover_nodes=discover_nodes)]
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": name, "labels": labels}, "rules": cluster},
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": subject,
        },
        {
            "apiVersion": rbac,
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "rules": own,
        },
        {
            "apiVersion": rbac,
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        },
    ]


def grants(*, discover_nodes: bool = True) -> set[tuple[str, str, str, Scope]]:
    """Every (apiGroup, resource, verb, scope) the rules grant, one by one."""
    return {
        (rule.api_group, resource, verb, rule.scope)
        for rule in RULES
        if discover_nodes or rule.only_with != "--discover-nodes"
        for resource in rule.resources
        for verb in rule.verbs
    }
