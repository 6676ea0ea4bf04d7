"""Turn the pydantic models into CustomResourceDefinitions with structural schemas.

Pydantic emits JSON Schema 2020-12; the API server wants OpenAPI v3 *structural* schemas: every node
typed, no `$ref`, no `propertyNames` or `uniqueItems`, `nullable` instead of `anyOf [.., null]`, and
boolean `exclusiveMinimum`. This module does that translation and nothing else, so the models stay the
single source of truth and `crds/` is always derived (`gpufabric crds`, checked by `--check`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from gpufabric.api.agentworkload import AgentWorkload, AgentWorkloadSpec, AgentWorkloadStatus
from gpufabric.api.common import API_GROUP, API_VERSION
from gpufabric.api.computenode import ComputeNodeSpec, ComputeNodeStatus

JsonSchema = dict[str, Any]

# Keys pydantic emits that a structural schema has no use for or forbids.
_DROPPED_KEYS = frozenset(
    {"title", "uniqueItems", "additionalProperties", "propertyNames", "patternProperties", "$defs"}
)


class SchemaError(ValueError):
    """The models produced something no structural schema can say."""


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0

    def render(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    namespaced: bool
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    printer_columns: tuple[PrinterColumn, ...]
    # JSONPaths of the scale subresource, when the kind has one: (spec replicas, status replicas, selector).
    scale: tuple[str, str, str] | None = None
    # Rules over the whole object (metadata included), from the full model's crd_rules.
    root: type[BaseModel] | None = None

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{API_GROUP}"

    @property
    def file_name(self) -> str:
        return f"{API_GROUP}_{self.plural}.yaml"


_READY = '.status.conditions[?(@.type=="Ready")].status'

KINDS: tuple[Kind, ...] = (
    Kind(
        kind="ComputeNode",
        plural="computenodes",
        short_names=("cn",),
        namespaced=False,
        spec=ComputeNodeSpec,
        status=ComputeNodeStatus,
        description="A GPU server of the fabric: vendor, accelerators, memory, precisions, RoCE NICs and "
        "its RoCE domain. The operator places AgentWorkload replicas on ComputeNodes.",
        printer_columns=(
            PrinterColumn("Vendor", "string", ".spec.vendor", "Accelerator vendor"),
            PrinterColumn("Accelerator", "string", ".spec.accelerator", "Accelerator model"),
            PrinterColumn("Devices", "integer", ".spec.devices", "Accelerators declared"),
            PrinterColumn("Offered", "integer", ".status.offeredDevices", "Accelerators the Node advertises"),
            PrinterColumn("Ours", "integer", ".status.allocatedDevices", "Accelerators allocated to replicas"),
            PrinterColumn("Others", "integer", ".status.heldByOthers", "Accelerators pods of others hold"),
            PrinterColumn("Free", "integer", ".status.freeDevices", "Accelerators new replicas can take"),
            PrinterColumn("Domain", "string", ".spec.fabric.roceDomain", "RoCE domain"),
            PrinterColumn("Ready", "string", _READY, "Whether the node can take replicas"),
            PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation"),
        ),
    ),
    Kind(
        kind="AgentWorkload",
        plural="agentworkloads",
        short_names=("aw",),
        namespaced=True,
        spec=AgentWorkloadSpec,
        status=AgentWorkloadStatus,
        description="An LLM serving fleet for AI agents: the model, its replicas, the precisions and vendor "
        "runtimes it accepts, and its token-throughput target.",
        printer_columns=(
            PrinterColumn("Model", "string", ".spec.model.name", "Model served"),
            PrinterColumn("Replicas", "integer", ".spec.replicas", "Desired replicas"),
            PrinterColumn("Ready", "integer", ".status.readyReplicas", "Replicas serving"),
            PrinterColumn("Vendors", "string", ".status.vendors", "Vendors the replicas run on"),
            PrinterColumn("Tokens/s", "number", ".status.tokensPerSecond.generation", "Generated tokens per second"),
            PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation"),
        ),
        scale=(".spec.replicas", ".status.replicas", ".status.selector"),
        root=AgentWorkload,
    ),
)


def structural_schema(model: type[BaseModel]) -> JsonSchema:
    """The model's validation schema, rewritten as a Kubernetes structural schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, JsonSchema] = raw.get("$defs", {})
    return _convert(raw, definitions, path=model.__name__)


def _resolve(node: JsonSchema, definitions: dict[str, JsonSchema], path: str) -> JsonSchema:
    """Inline a `$ref` (and pydantic's `allOf: [{$ref}]` wrapper), keeping sibling keys such as a
    field's own description and default."""
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**{k: v for k, v in node.items() if k != "allOf"}, **_merge_under(node["allOf"][0], node)}
    if "$ref" not in node:
        return node
    name = node["$ref"].rsplit("/", 1)[-1]
    if name not in definitions:
        raise SchemaError(f"{path}: unresolvable reference {node['$ref']}")
    siblings = {k: v for k, v in node.items() if k != "$ref"}
    return {**copy.deepcopy(definitions[name]), **siblings}


def _merge_under(inner: JsonSchema, outer: JsonSchema) -> JsonSchema:
    return {k: v for k, v in inner.items() if k not in outer or k == "$ref"}


def _convert(node: JsonSchema, definitions: dict[str, JsonSchema], path: str) -> JsonSchema:
    """One node of pydantic's JSON Schema as a structural schema node: refs inlined, nullable unions
    collapsed, JSON Schema spellings translated to OpenAPI's, and anything Kubernetes cannot say refused."""
    node = _resolve(node, definitions, path)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        node = _collapse_nullable(node, definitions, path)
    if ("propertyNames" in node or "patternProperties" in node) and not node.get("x-kubernetes-validations"):
        # Without a rule the key constraint would vanish silently from the CRD.
        raise SchemaError(f"{path}: map keys are constrained; state the constraint as a CEL rule too")
    result: JsonSchema = {}
    for key, value in node.items():
        result.update(_convert_keyword(key, value, definitions, path))
    additional = _map_values(node, path)
    if isinstance(additional, dict):
        result["additionalProperties"] = _convert(additional, definitions, f"{path}{{}}")
    if result.get("type") == "object":
        # pydantic spells a map's size bounds as string lengths when they sit on an Annotated dict.
        for length, properties in (("minLength", "minProperties"), ("maxLength", "maxProperties")):
            if length in result:
                result[properties] = result.pop(length)
    if "enum" in result and "type" not in result:
        result["type"] = _enum_type(result["enum"], path)
    _require_structural(result, path)
    return result


def _convert_keyword(key: str, value: Any, definitions: dict[str, JsonSchema], path: str) -> JsonSchema:
    """One keyword of a node, as the structural schema states it (empty: dropped)."""
    if key in _DROPPED_KEYS or (key == "default" and value is None):
        return {}
    if key == "const":
        return {"enum": [value]}
    if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
        # JSON Schema's numeric exclusive bound is OpenAPI v3.0's bound plus a boolean.
        return {"minimum" if key == "exclusiveMinimum" else "maximum": value, key: True}
    if key == "properties":
        return {"properties": {name: _convert(child, definitions, f"{path}.{name}") for name, child in value.items()}}
    if key == "items":
        return {"items": _convert(value, definitions, f"{path}[]")}
    return {key: copy.deepcopy(value)}


def _map_values(node: JsonSchema, path: str) -> Any:
    """The schema of a map's values: additionalProperties, or the one key pattern's (keys go to CEL)."""
    patterned = list(node.get("patternProperties", {}).values())
    if len(patterned) > 1:
        raise SchemaError(f"{path}: several key patterns cannot be one structural map")
    return patterned[0] if patterned else node.get("additionalProperties")


def _require_structural(result: JsonSchema, path: str) -> None:
    if "type" not in result and not result.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path}: no type (structural schemas type every field)")
    if result.get("type") == "object" and "properties" not in result and "additionalProperties" not in result:
        raise SchemaError(f"{path}: an object with neither properties nor additionalProperties")


def _collapse_nullable(node: JsonSchema, definitions: dict[str, JsonSchema], path: str) -> JsonSchema:
    branches = node["anyOf"]
    non_null = [b for b in branches if b.get("type") != "null"]
    if len(non_null) != 1:
        raise SchemaError(f"{path}: a union of several types cannot be a structural schema")
    inner = _resolve(non_null[0], definitions, path)
    merged = {**inner, **{k: v for k, v in node.items() if k != "anyOf"}}
    if len(non_null) != len(branches):
        merged["nullable"] = True
    return merged


def _enum_type(values: list[Any], path: str) -> str:
    kinds = {type(v) for v in values}
    if kinds == {str}:
        return "string"
    if kinds == {int}:
        return "integer"
    raise SchemaError(f"{path}: enum of mixed or unsupported types {sorted(map(str, kinds))}")


def object_schema(kind: Kind) -> JsonSchema:
    schema: JsonSchema = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # A root rule's fieldPath must resolve in the schema: the API server refuses `.metadata.name`
            # unless `name` is declared here (the only metadata fields a CRD may declare are name and
            # generateName).
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
            "spec": structural_schema(kind.spec),
            "status": structural_schema(kind.status),
        },
    }
    rules = getattr(kind.root, "crd_rules", ()) if kind.root else ()
    if rules:
        schema["x-kubernetes-validations"] = [rule.as_validation() for rule in rules]
    return schema


def custom_resource_definition(kind: Kind) -> dict[str, Any]:
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        spec_path, status_path, selector_path = kind.scale
        subresources["scale"] = {
            "specReplicasPath": spec_path,
            "statusReplicasPath": status_path,
            "labelSelectorPath": selector_path,
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/name": "gpu-fabric-operator", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": ["gpufabric"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": object_schema(kind)},
                    "subresources": subresources,
                    "additionalPrinterColumns": [column.render() for column in kind.printer_columns],
                }
            ],
        },
    }


def all_definitions() -> dict[str, dict[str, Any]]:
    """File name in `crds/` -> the CRD it holds."""
    return {kind.file_name: custom_resource_definition(kind) for kind in KINDS}
