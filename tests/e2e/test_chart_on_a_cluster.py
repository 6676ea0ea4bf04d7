"""The Helm chart's whole life on a real control plane of its own (a fresh one: the chart installs the CRDs,
which the session's plane already has): `helm install` into a namespace that enforces the restricted Pod
Security Standard, the operator running with the identity the chart gives its pod (the ServiceAccount's
token) and placing the example fleet, `helm upgrade` to two replicas watching one namespace (Roles there
instead of cluster-wide rules, which the operator must still do its work with), and `helm uninstall`, which
leaves the CRDs and the users' ComputeNodes and AgentWorkloads. The steps run in order."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gpufabric.sandbox.controlplane import ROOT, ControlPlane, find_binaries
from gpufabric.sandbox.standin_kubelet import StandInKubelet
from support import helm
from support.realcluster import (
    OperatorProcess,
    Reader,
    add_nodes_for,
    api_client,
    example_documents,
    stand_in_kubelet,
    wait_for,
)

RELEASE = "gpufabric"
NAMESPACE = "gpufabric-system"
FULLNAME = f"{RELEASE}-gpu-fabric-operator"
ACCOUNT = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
WORKLOADS_NAMESPACE = "agents"


@dataclass
class Chart:
    plane: ControlPlane
    kubelet: StandInKubelet
    reader: Reader
    admin: client.ApiClient
    operator: OperatorProcess | None = None
    steps: dict[str, float] = field(default_factory=dict)

    def helm(self, *args: str, values: dict[str, Any] | None = None) -> str:
        return helm.on_cluster(
            self.plane.admin_kubeconfig,
            *args,
            "--namespace",
            NAMESPACE,
            values=values,
            tmp=self.plane.directory,
        )

    def operator_kubeconfig(self) -> Path:
        """What the operator's pod would log in with: a token of the ServiceAccount the chart created."""
        token = self.plane.kubectl("create", "token", FULLNAME, "-n", NAMESPACE, "--duration=1h").strip()
        return self.plane.kubeconfig_for_token(token, name=f"chart-operator-{time.monotonic_ns()}")

    def start_operator(self, *flags: str) -> None:
        """The operator with the pod's identity and the flags the chart's Deployment passes."""
        self.stop_operator()
        deployment: Any = client.AppsV1Api(self.admin).read_namespaced_deployment(FULLNAME, NAMESPACE)
        args = [
            a for a in deployment.spec.template.spec.containers[0].args if not a.startswith(("--metrics", "--health"))
        ]
        log = self.plane.directory / f"chart-operator-{len(self.steps)}.log"
        kubeconfig = str(self.operator_kubeconfig())
        env = {"POD_NAMESPACE": NAMESPACE}
        self.operator = OperatorProcess([*args, *flags, "--kubeconfig", kubeconfig], log, env).start()

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    def all_ready(self) -> bool:
        names = [w["metadata"]["name"] for w in self.reader.workloads(WORKLOADS_NAMESPACE)]
        return bool(names) and all(self.reader.workload_ready(WORKLOADS_NAMESPACE, n) for n in names)

    def forbidden_since(self, since: str) -> list[str]:
        """Requests of the operator's ServiceAccount RBAC refused after the RFC 3339 time `since`."""
        return [
            f"{e['verb']} {e['objectRef'].get('resource')} in {e['objectRef'].get('namespace', '(cluster)')}"
            for e in self.plane.audit_events()
            if e["user"]["username"] == ACCOUNT
            and e.get("stageTimestamp", "") >= since
            and e["annotations"].get("authorization.k8s.io/decision") == "forbid"
        ]


@pytest.fixture(scope="module")
def chart(report: Any) -> Iterator[Chart]:
    started = time.monotonic()
    with ControlPlane(find_binaries(), audited_users=(ACCOUNT,)) as plane:
        report("second control plane up (for the chart's install, upgrade and uninstall)", time.monotonic() - started)
        admin = api_client(plane.admin_kubeconfig)
        with stand_in_kubelet(plane) as kubelet:
            add_nodes_for(kubelet, example_documents())
            state = Chart(plane, kubelet, Reader(admin), admin)
            try:
                yield state
            finally:
                state.stop_operator()
                admin.close()  # type: ignore[no-untyped-call]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def test_install_into_a_namespace_enforcing_restricted_pod_security(chart: Chart, report: Any) -> None:
    chart.plane.kubectl("create", "namespace", NAMESPACE)
    chart.plane.kubectl(
        "label",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    # The namespace really enforces: a pod that is not restricted is refused at admission.
    refused = chart.plane.kubectl(
        "run", "privileged", "-n", NAMESPACE, "--image=busybox", "--privileged", "--dry-run=server", check=False
    )
    assert refused == "", "a privileged pod was admitted: the namespace does not enforce restricted"
    started = time.monotonic()
    chart.helm("install", RELEASE, str(helm.CHART), "--wait", "--timeout=120s")
    report("helm install -> operator Deployment available (restricted namespace)", time.monotonic() - started)
    chart.plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/computenodes.gpufabric.io",
        "crd/agentworkloads.gpufabric.io",
    )
    core: Any = client.CoreV1Api(chart.admin)
    pods = core.list_namespaced_pod(NAMESPACE).items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    assert pods[0].spec.service_account_name == FULLNAME
    events = chart.plane.kubectl("get", "events", "-n", NAMESPACE, "-o", "json")
    failed = [e["message"] for e in json.loads(events)["items"] if e["reason"] == "FailedCreate"]
    assert failed == [], failed


def test_pod_security_admission_refuses_a_weakened_operator_pod(chart: Chart) -> None:
    """The admission above is meaningful: the same chart with privilege escalation allowed is refused."""
    rendered = helm.render({"securityContext": {"allowPrivilegeEscalation": True}}, chart.plane.directory)
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "weakened", "namespace": NAMESPACE},
        "spec": deployment["spec"]["template"]["spec"],
    }
    path = chart.plane.directory / "weakened-pod.json"
    path.write_text(json.dumps(pod))
    result = chart.plane.kubectl("create", "--dry-run=server", "-f", str(path), check=False)
    assert result == ""
    accepted = pod | {"metadata": {"name": "as-rendered", "namespace": NAMESPACE}}
    (unweakened,) = [d for d in helm.render({}, chart.plane.directory) if d["kind"] == "Deployment"]
    accepted["spec"] = unweakened["spec"]["template"]["spec"]
    path.write_text(json.dumps(accepted))
    assert "created (server dry run)" in chart.plane.kubectl("create", "--dry-run=server", "-f", str(path))


def test_the_operator_with_its_pods_identity_places_the_example_fleet(chart: Chart, report: Any) -> None:
    since = now()
    started = time.monotonic()
    chart.start_operator()
    chart.plane.kubectl("apply", "--server-side", "-R", "-f", str(ROOT / "examples"))
    wait_for("every example workload Ready", chart.all_ready, timeout=120)
    report("chart's ServiceAccount: example fleet applied -> every workload Ready", time.monotonic() - started)
    assert chart.forbidden_since(since) == []


def test_upgrade_to_two_replicas_watching_one_namespace(chart: Chart, report: Any) -> None:
    values = {
        "replicaCount": 2,
        "watchNamespaces": [WORKLOADS_NAMESPACE],
        "podDisruptionBudget": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "operator": {"nodeGraceSeconds": 60},
    }
    started = time.monotonic()
    chart.helm("upgrade", RELEASE, str(helm.CHART), "--wait", "--timeout=120s", values=values)
    report("helm upgrade (2 replicas, one namespace, PDB, NetworkPolicy) -> available", time.monotonic() - started)
    apps: Any = client.AppsV1Api(chart.admin)
    deployment = apps.read_namespaced_deployment(FULLNAME, NAMESPACE)
    assert deployment.spec.replicas == 2
    assert "--namespace=agents" in deployment.spec.template.spec.containers[0].args
    assert "--node-grace=60" in deployment.spec.template.spec.containers[0].args
    rbac_api: Any = client.RbacAuthorizationV1Api(chart.admin)
    cluster_rules = rbac_api.read_cluster_role(FULLNAME).rules
    cluster_resources = {r for rule in cluster_rules for r in rule.resources}
    assert not {"services", "configmaps", "agentworkloads"} & cluster_resources, "namespaced rules left cluster-wide"
    # Pods stay readable cluster-wide (others' hold devices in every namespace), and only readable.
    assert {v for rule in cluster_rules if "pods" in rule.resources for v in rule.verbs} == {"list", "watch"}
    role = rbac_api.read_namespaced_role(FULLNAME, WORKLOADS_NAMESPACE)
    assert {"pods", "services", "agentworkloads"} <= {r for rule in role.rules for r in rule.resources}
    policy: Any = client.PolicyV1Api(chart.admin)
    assert policy.read_namespaced_pod_disruption_budget(FULLNAME, NAMESPACE).spec.min_available == 1
    # The operator, restarted with the upgraded Deployment's flags, does its work with only the Roles.
    since = now()
    chart.start_operator()
    chart.plane.kubectl("scale", "aw/code-agent", "-n", WORKLOADS_NAMESPACE, "--replicas=2")

    def scaled() -> bool:
        placements = (chart.reader.workload(WORKLOADS_NAMESPACE, "code-agent").get("status") or {}).get("placements")
        return len(placements or []) == 2 and chart.reader.workload_ready(WORKLOADS_NAMESPACE, "code-agent")

    wait_for("code-agent scaled to 2 by the namespaced operator", scaled, timeout=60)
    assert chart.forbidden_since(since) == []


def test_uninstall_keeps_the_crds_and_the_users_objects(chart: Chart) -> None:
    chart.stop_operator()
    nodes_before = {n["metadata"]["name"] for n in chart.reader.compute_nodes()}
    workloads_before = {w["metadata"]["name"] for w in chart.reader.workloads(WORKLOADS_NAMESPACE)}
    chart.helm("uninstall", RELEASE, "--wait", "--timeout=60s")
    assert chart.plane.kubectl("get", "crd", "computenodes.gpufabric.io", "agentworkloads.gpufabric.io", "-o", "name")
    assert {n["metadata"]["name"] for n in chart.reader.compute_nodes()} == nodes_before
    assert {w["metadata"]["name"] for w in chart.reader.workloads(WORKLOADS_NAMESPACE)} == workloads_before
    assert len(nodes_before) == 20
    leftovers = chart.plane.kubectl(
        "get",
        "deployment,serviceaccount,role,rolebinding,service",
        "-n",
        NAMESPACE,
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        "-o",
        "name",
    )
    assert leftovers == ""
    assert chart.plane.kubectl("get", "clusterrole", FULLNAME, check=False) == ""
