"""The operator's permissions are written once (gpufabric.rbac); the README's table says the same, and the
manifests built from them bind exactly those rules. (That the operator needs every rule and nothing more
is proven on the real API server: tests/e2e/test_operator_on_a_cluster.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from gpufabric import rbac

README = Path(__file__).resolve().parents[2] / "README.md"


def table_rows() -> list[str]:
    rows = []
    for rule in rbac.RULES:
        why = rule.why + (f" (only with `{rule.only_with}`)" if rule.only_with else "")
        why += " (only when every namespace is watched)" if rule.cluster_wide_only else ""
        rows.append(
            f"| `{rule.api_group or 'core'}` | {', '.join(rule.resources)} | {', '.join(rule.verbs)} | "
            f"{rule.scope.value} | {why} |"
        )
    return rows


def test_the_readme_lists_exactly_the_rules() -> None:
    block = re.search(r"<!-- rbac-table:.*?-->\n(.*?)<!-- end rbac-table -->", README.read_text(), re.DOTALL)
    assert block is not None, "README lost its rbac-table markers"
    listed = [line for line in block[1].splitlines() if line.startswith("| `")]
    assert listed == table_rows(), "README's permissions table differs from gpufabric.rbac.RULES:\n" + "\n".join(
        table_rows()
    )


def test_no_wildcards_no_secrets_and_writes_only_where_needed() -> None:
    for rule in rbac.RULES:
        assert "*" not in rule.resources + rule.verbs + (rule.api_group,)
        assert "secrets" not in rule.resources
        if rule.scope is rbac.Scope.OPERATOR_NAMESPACE:
            assert set(rule.resources) <= {"leases", "configmaps"}


def test_watching_every_namespace_binds_one_cluster_role_and_the_operator_namespace_role() -> None:
    cluster_role, cluster_binding, role, binding = rbac.manifests("op", "ops", "op-sa")
    assert cluster_role["rules"] == [
        r.policy_rule() for r in rbac.rules(rbac.Scope.CLUSTER) + rbac.rules(rbac.Scope.WATCHED_NAMESPACES)
    ]
    assert role["rules"] == [r.policy_rule() for r in rbac.rules(rbac.Scope.OPERATOR_NAMESPACE)]
    assert role["metadata"]["namespace"] == "ops"
    for bound in (cluster_binding, binding):
        assert bound["subjects"] == [{"kind": "ServiceAccount", "name": "op-sa", "namespace": "ops"}]
    without_discovery = rbac.manifests("op", "ops", "op-sa", discover_nodes=False)[0]["rules"]
    assert {"apiGroups": ["gpufabric.io"], "resources": ["computenodes"], "verbs": ["create", "patch"]} not in (
        without_discovery
    )


def test_watching_some_namespaces_binds_roles_there_and_nothing_namespaced_cluster_wide() -> None:
    documents = rbac.manifests("op", "ops", "op-sa", watch_namespaces=["team-a", "team-b"])
    roles = {(d["kind"], d["metadata"].get("namespace")): d["rules"] for d in documents if d["kind"].endswith("Role")}
    assert roles[("ClusterRole", None)] == [r.policy_rule() for r in rbac.rules(rbac.Scope.CLUSTER, namespaced=True)]
    watched = [r.policy_rule() for r in rbac.rules(rbac.Scope.WATCHED_NAMESPACES)]
    assert roles[("Role", "team-a")] == roles[("Role", "team-b")] == watched
    assert roles[("Role", "default")] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
    assert roles[("Role", "ops")] == [r.policy_rule() for r in rbac.rules(rbac.Scope.OPERATOR_NAMESPACE)]
    bindings = [d for d in documents if d["kind"].endswith("Binding")]
    assert len(bindings) == len(roles)
    cluster_resources = {res for rule in roles[("ClusterRole", None)] for res in rule["resources"]}
    # No CRDs: kopf's scanning is off when the namespaces are listed. Namespaced, only reads of pods (others'
    # hold devices in every namespace) and ResourceClaims; namespaces to see those being deleted.
    assert cluster_resources == {
        "computenodes",
        "computenodes/status",
        "nodes",
        "pods",
        "namespaces",
        "resourceslices",
        "resourceclaims",
    }
    pods = [rule for rule in roles[("ClusterRole", None)] if "pods" in rule["resources"]]
    assert pods == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
