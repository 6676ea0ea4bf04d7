"""The Helm chart, rendered by the real `helm`: lint, every toggle combination, each object valid for
Kubernetes 1.36 (kubernetes-validate, strict) or for prometheus-operator's published CRDs, exactly the
RBAC of gpufabric.rbac, the generated CRDs, restricted Pod Security, and bad values refused with the
message users see. (Installing it on a real API server: tests/e2e/test_chart_on_a_cluster.py.)"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gpufabric import rbac
from support.apiserver import SchemaValidator
from support.helm import CHART, HELM, NAMESPACE, RELEASE, ROOT, HelmError, helm, render

FULLNAME = f"{RELEASE}-gpu-fabric-operator"
KUBERNETES = "1.36.0"
SCHEMAS = Path(__file__).parent / "schemas"
# Each toggle's "on" values; every combination of them is rendered.
TOGGLES: dict[str, dict[str, Any]] = {
    "crds": {"crds": {"install": False}},
    "serviceMonitor": {"serviceMonitor": {"enabled": True}},
    "prometheusRule": {"prometheusRule": {"enabled": True}},
    "grafanaDashboard": {"grafanaDashboard": {"enabled": True}},
    "podDisruptionBudget": {"podDisruptionBudget": {"enabled": True}, "replicaCount": 2},
    "networkPolicy": {"networkPolicy": {"enabled": True}},
    "watchNamespaces": {"watchNamespaces": ["team-a", "team-b"]},
}


def chart_files() -> Any:
    spec = importlib.util.spec_from_file_location("chart_files", ROOT / "scripts" / "chart_files.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chart_files"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


@cache
def monitoring_validators() -> dict[str, SchemaValidator]:
    """prometheus-operator's CRDs (tests/chart/schemas, see SOURCE.md) as the API server would apply them."""
    validators = {}
    for path in SCHEMAS.glob("*.yaml"):
        crd = _python_patterns(yaml.safe_load(path.read_text(encoding="utf-8")))
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        crd["spec"]["versions"] = [version]
        validators[crd["spec"]["names"]["kind"]] = SchemaValidator(crd)
    return validators


def _python_patterns(node: Any) -> Any:
    """Go's regexp takes a flag group anywhere (`^(?i)(abort|warn)?$`); Python's only at the start. The same
    pattern, moved: `(?i)^(abort|warn)?$`."""
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):
            node["pattern"] = "(?i)^" + pattern.removeprefix("^(?i)")
        for child in node.values():
            _python_patterns(child)
    elif isinstance(node, list):
        for child in node:
            _python_patterns(child)
    return node


VALIDATED: set[str] = set()


def invalid(document: dict[str, Any]) -> list[str]:
    """Why the API server would refuse the object (empty if it would not). Each distinct object once."""
    key = json.dumps(document, sort_keys=True)
    if key in VALIDATED:
        return []
    monitoring = monitoring_validators()
    if document["apiVersion"].startswith("monitoring.coreos.com/"):
        problems = monitoring[document["kind"]].validate(document)
    else:
        try:
            kubernetes_validate.validate(document, KUBERNETES, strict=True)
            problems = []
        except kubernetes_validate.ValidationError as error:
            problems = [f"{'.'.join(map(str, error.path))}: {error.message}"]
    if not problems:
        VALIDATED.add(key)
    return problems


def by_kind(documents: list[dict[str, Any]]) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in documents}


# --- lint and render ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, merged(*TOGGLES.values())], ids=["defaults", "every-toggle-on"])
def test_helm_lint_is_clean(values: dict[str, Any], tmp_path: Path) -> None:
    output = helm("lint", "--strict", str(CHART), values=values, tmp=tmp_path)
    assert "1 chart(s) linted, 0 chart(s) failed" in output
    assert "[WARNING]" not in output
    assert "[ERROR]" not in output


@pytest.mark.parametrize(
    "enabled",
    [combination for size in range(len(TOGGLES) + 1) for combination in itertools.combinations(TOGGLES, size)],
    ids=lambda combination: "+".join(combination) or "defaults",
)
def test_every_toggle_combination_renders_objects_the_api_server_accepts(
    enabled: tuple[str, ...], tmp_path: Path
) -> None:
    documents = render(merged(*(TOGGLES[name] for name in enabled)), tmp_path)
    kinds = {d["kind"] for d in documents}
    assert {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    } <= kinds
    assert ("CustomResourceDefinition" in kinds) == ("crds" not in enabled)
    assert ("ServiceMonitor" in kinds) == ("serviceMonitor" in enabled)
    assert ("PrometheusRule" in kinds) == ("prometheusRule" in enabled)
    assert ("ConfigMap" in kinds) == ("grafanaDashboard" in enabled)
    assert ("PodDisruptionBudget" in kinds) == ("podDisruptionBudget" in enabled)
    assert ("NetworkPolicy" in kinds) == ("networkPolicy" in enabled)
    for document in documents:
        assert invalid(document) == [], f"{document['kind']} {document['metadata']['name']}"
        labels = document["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", document["kind"]
        assert labels.get("app.kubernetes.io/instance") == RELEASE, document["kind"]


def test_the_validators_refuse_what_the_api_server_would(tmp_path: Path) -> None:
    """The check above can fail: an unknown field, a wrong type, in a built-in and in a monitoring object."""
    documents = by_kind(render(merged(TOGGLES["serviceMonitor"], TOGGLES["prometheusRule"]), tmp_path))
    deployment = json.loads(json.dumps(documents[("Deployment", NAMESPACE, FULLNAME)]))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    assert invalid(deployment)
    deployment = json.loads(json.dumps(documents[("Deployment", NAMESPACE, FULLNAME)]))
    deployment["spec"]["replicas"] = "one"
    assert invalid(deployment)
    monitor = json.loads(json.dumps(documents[("ServiceMonitor", NAMESPACE, FULLNAME)]))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert invalid(monitor)
    rule = json.loads(json.dumps(documents[("PrometheusRule", NAMESPACE, FULLNAME)]))
    rule["spec"]["groups"][0]["rules"][0]["for"] = 15
    assert invalid(rule)


# --- one source of truth ----------------------------------------------------------------------------------


def test_the_generated_files_are_current() -> None:
    """files/crds (the crds/ files), files/rbac-rules.yaml (gpufabric.rbac) and README's values reference."""
    assert chart_files().stale() == [], "run `make crds` and commit the result"


def test_the_crds_are_the_generated_files_kept_on_uninstall(tmp_path: Path) -> None:
    rendered = {d["metadata"]["name"]: d for d in render({}, tmp_path) if d["kind"] == "CustomResourceDefinition"}
    generated = {
        (crd := yaml.safe_load(path.read_text(encoding="utf-8")))["metadata"]["name"]: crd
        for path in (ROOT / "crds").glob("*.yaml")
    }
    assert rendered.keys() == generated.keys()
    for name, crd in rendered.items():
        assert crd["spec"] == generated[name]["spec"]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert generated[name]["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    unkept = [d for d in render({"crds": {"keep": False}}, tmp_path) if d["kind"] == "CustomResourceDefinition"]
    assert all(not crd["metadata"].get("annotations") for crd in unkept)


@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]], ids=["all-namespaces", "two-namespaces"])
@pytest.mark.parametrize("discover", [False, True], ids=["declared-nodes", "discover-nodes"])
def test_the_rbac_is_exactly_gpufabric_rbac(watch: list[str], discover: bool, tmp_path: Path) -> None:
    """What the e2e suite proves necessary and sufficient (gpufabric.rbac) is what the chart binds."""
    values = {"watchNamespaces": watch, "operator": {"discoverNodes": discover}}
    rendered = by_kind([d for d in render(values, tmp_path) if d["apiVersion"].startswith("rbac.")])
    expected = by_kind(rbac.manifests(FULLNAME, NAMESPACE, FULLNAME, discover_nodes=discover, watch_namespaces=watch))
    assert rendered.keys() == expected.keys()
    for key, document in expected.items():
        if key[0].endswith("Binding"):
            assert rendered[key]["roleRef"] == document["roleRef"], key
            assert rendered[key]["subjects"] == document["subjects"], key
        else:
            # The order of rules means nothing to RBAC; the rules themselves must be the same.
            assert sorted(map(json.dumps, rendered[key]["rules"])) == sorted(map(json.dumps, document["rules"])), key
    for document in rendered.values():
        for rule in document.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert "secrets" not in rule["resources"]


def test_the_app_version_is_the_operators(tmp_path: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart["appVersion"] == project["version"]
    (deployment,) = [d for d in render({}, tmp_path) if d["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/gpufabric/gpu-fabric-operator:{project['version']}"


def test_the_dashboard_configmap_holds_the_generated_dashboard(tmp_path: Path) -> None:
    (config_map,) = [d for d in render(TOGGLES["grafanaDashboard"], tmp_path) if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    generated = (CHART / "dashboards" / "gpu-fabric-operator.json").read_text(encoding="utf-8")
    assert json.loads(config_map["data"]["gpu-fabric-operator.json"]) == json.loads(generated)


# --- the operator's pod -----------------------------------------------------------------------------------


def test_the_pod_meets_the_restricted_pod_security_standard(tmp_path: Path) -> None:
    """What the restricted profile checks (kubernetes.io/docs/concepts/security/pod-security-standards/);
    the real API server's admission checks it again in tests/e2e."""
    (deployment,) = [d for d in render({}, tmp_path) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod
    assert "hostPID" not in pod
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsNonRoot"] is True
    assert all(volume.keys() <= {"name", "emptyDir"} for volume in pod["volumes"]), "only emptyDir volumes"
    assert container["resources"]["requests"].keys() == container["resources"]["limits"].keys() == {"cpu", "memory"}


def test_the_operator_is_started_with_its_ports_namespace_and_flags(tmp_path: Path) -> None:
    values = {
        "watchNamespaces": ["team-a"],
        "operator": {
            "discoverNodes": True,
            "nodeGraceSeconds": 60,
            "unschedulableGraceSeconds": 45,
            "scrapeIntervalSeconds": 5,
        },
    }
    (deployment,) = [d for d in render(values, tmp_path) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "--metrics-port=8080",
        "--health-port=8081",
        "--node-grace=60",
        "--unschedulable-grace=45",
        "--scrape-interval=5",
        "--namespace=team-a",
        "--discover-nodes",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_the_flags_the_chart_passes_are_flags_the_operator_takes(tmp_path: Path) -> None:
    """The chart and `gpufabric operator` agree: every rendered flag parses."""
    from gpufabric.cli import build_parser  # noqa: PLC0415

    values = merged(*TOGGLES.values(), {"operator": {"discoverNodes": True, "verbose": True}})
    (deployment,) = [d for d in render(values, tmp_path) if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser().parse_args(["operator", *args])
    assert parsed.namespace == ["team-a", "team-b"]
    assert parsed.metrics_port == 8080
    assert parsed.scrape_interval == 15
    assert parsed.health_port == 8081
    assert parsed.discover_nodes is True
    assert parsed.verbose is True


def test_two_replicas_prefer_different_nodes(tmp_path: Path) -> None:
    (one,) = [d for d in render({}, tmp_path) if d["kind"] == "Deployment"]
    assert "affinity" not in one["spec"]["template"]["spec"]
    (two,) = [d for d in render({"replicaCount": 2}, tmp_path) if d["kind"] == "Deployment"]
    anti = two["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == (
        "kubernetes.io/hostname"
    )


def test_the_service_monitor_keeps_the_operators_namespace_label(tmp_path: Path) -> None:
    """The metrics' `namespace` names AgentWorkloads: without honorLabels Prometheus would overwrite it."""
    (monitor,) = [d for d in render(TOGGLES["serviceMonitor"], tmp_path) if d["kind"] == "ServiceMonitor"]
    (service,) = [d for d in render({}, tmp_path) if d["kind"] == "Service"]
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_notes_tell_the_next_commands(tmp_path: Path) -> None:
    output = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", values={}, tmp=tmp_path)
    notes = output.split("NOTES:", 1)[1]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{FULLNAME}" in notes
    assert "kubectl get computenodes,agentworkloads -A" in notes
    assert "kubectl apply -f examples/fleet/" in notes
    assert "grafanaDashboard.enabled=true" in notes


# --- values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 5}, "at '/replicaCount': maximum: got 5, want 3"),
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        (
            {"image": {"pullPolicy": "Sometimes"}},
            "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
        ({"operator": {"nodeGraceSeconds": -1}}, "at '/operator/nodeGraceSeconds': minimum: got -1, want 0"),
        (
            {"operator": {"scrapeIntervalSeconds": 0.5}},
            "at '/operator/scrapeIntervalSeconds': minimum: got 0.5, want 1",
        ),
        ({"metrics": {"port": 99999}}, "at '/metrics/port': maximum: got 99,999, want 65,535"),
        (
            {"serviceMonitor": {"interval": "thirty seconds"}},
            "at '/serviceMonitor/interval': 'thirty seconds' does not match pattern",
        ),
        (
            {"prometheusRule": {"belowTargetRatio": 1.5}},
            "at '/prometheusRule/belowTargetRatio': maximum: got 1.5, want 1",
        ),
        (
            {"prometheusRule": {"freeCapacitySizeClass": "70B"}},
            "at '/prometheusRule/freeCapacitySizeClass': value must be one of",
        ),
        ({"replicCount": 1}, "additional properties 'replicCount' not allowed"),
        (
            {"operator": {"extraArgs": ["discover-nodes"]}},
            "at '/operator/extraArgs/0': 'discover-nodes' does not match pattern",
        ),
        ({"image": {"digest": "latest"}}, "at '/image/digest': 'latest' does not match pattern"),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, dict) else "",
)
def test_bad_values_are_refused_with_the_message_users_see(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(HelmError) as caught:
        render(values, tmp_path)
    assert "values don't meet the specifications of the schema(s)" in str(caught.value)
    assert message in str(caught.value)


def test_a_service_monitor_without_the_metrics_service_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HelmError, match=r"serviceMonitor\.enabled needs metrics\.service\.enabled"):
        render({"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}}, tmp_path)


def test_every_value_is_documented() -> None:
    values = (CHART / "values.yaml").read_text(encoding="utf-8")
    assert chart_files().undocumented_values(values) == []
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert set(yaml.safe_load(values)) == set(schema["properties"]), "values.yaml and values.schema.json differ"


def test_helm_is_the_real_binary() -> None:
    version = helm("version", "--short")
    assert version.startswith("v"), version
    assert Path(HELM).stat().st_size > 10_000_000
