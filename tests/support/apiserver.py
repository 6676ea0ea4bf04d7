"""What the Kubernetes API server does with a custom resource before storing it, for tests without one.

`SchemaValidator(crd).validate(obj)` applies the CRD's structural defaults, validates the object against
its openAPIV3Schema (jsonschema, after translating the OpenAPI dialect), enforces list-type uniqueness,
and evaluates every `x-kubernetes-validations` CEL rule with cel-python — the same four steps the API
server takes, in its order. It returns kubectl-style `path: message` lines.

It is a faithful subset, not the API server: CEL cost limits and ratcheting are not modelled; the
e2e tests against a real cluster (tests/e2e) cover those.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
from celpy.adapter import json_to_cel

JsonSchema = dict[str, Any]
CEL_NOT_CHECKED = (
    "some validation rules were not checked because the object was invalid; correct the existing errors to "
    "complete validation"
)


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes dialect) -> JSON Schema draft 2020-12."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    result: JsonSchema = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties",):
            result[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            continue  # handled with minimum/maximum below
        elif key == "minimum" and node.get("exclusiveMinimum") is True:
            result["exclusiveMinimum"] = value
        elif key == "maximum" and node.get("exclusiveMaximum") is True:
            result["exclusiveMaximum"] = value
        else:
            result[key] = to_json_schema(value)
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in result:
        result["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in result:
        result["type"] = [result["type"], "null"]
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
        # The API server prunes unknown fields and `kubectl apply` rejects them (field validation Strict).
        result["additionalProperties"] = False
    return result


def apply_defaults(schema: JsonSchema, value: Any) -> Any:
    """Structural defaulting: a missing property with a default gets it, recursively, as the API server does
    on read and on admission."""
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in list(value):
                value[key] = apply_defaults(additional, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _path(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + str(part))
    return out


def _walk(schema: JsonSchema, value: Any, path: list[Any]) -> Iterator[tuple[JsonSchema, Any, list[Any]]]:
    yield schema, value, path
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value and value[name] is not None:
                yield from _walk(child, value[name], [*path, name])
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key, child_value in value.items():
                if child_value is not None:
                    yield from _walk(additional, child_value, [*path, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _walk(schema["items"], item, [*path, index])


class SchemaValidator:
    def __init__(self, crd: dict[str, Any]) -> None:
        self.schema: JsonSchema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        self._json_schema = to_json_schema(self.schema)
        jsonschema.Draft202012Validator.check_schema(self._json_schema)
        self._validator = jsonschema.Draft202012Validator(self._json_schema)
        self._cel = celpy.Environment()
        self._programs: dict[str, Any] = {}
        # Every rule that has rejected something, so tests can show each rule is exercised.
        self.rejected_by: set[str] = set()

    def rules(self) -> list[dict[str, str]]:
        return [rule for node in _schema_nodes(self.schema) for rule in node.get("x-kubernetes-validations", [])]

    def compile_all_rules(self) -> int:
        """Compile every CEL rule and message expression in the schema; returns how many."""
        for rule in self.rules():
            self._program(rule["rule"])
            if "messageExpression" in rule:
                self._program(rule["messageExpression"])
        return len(self.rules())

    def _program(self, expression: str) -> Any:
        if expression not in self._programs:
            self._programs[expression] = self._cel.program(self._cel.compile(expression))
        return self._programs[expression]

    def validate(self, obj: dict[str, Any]) -> list[str]:
        obj = apply_defaults(self.schema, copy.deepcopy(obj))
        schema_errors = sorted(self._validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        errors = [f"{_path(list(error.absolute_path)) or '<root>'}: {error.message}" for error in schema_errors]
        for node, value, path in _walk(self.schema, obj, []):
            errors.extend(self._list_type_errors(node, value, path))
        if any(error.validator in ("type", "anyOf") for error in schema_errors):
            # apiextensions-apiserver's customResourceStrategy.Validate: a type error blocks CEL
            # (hasBlockingErr), and the response says so.
            errors.append(f"<root>: {CEL_NOT_CHECKED}")
            return errors
        for node, value, path in _walk(self.schema, obj, []):
            for rule in node.get("x-kubernetes-validations", []):
                verdict = self._program(rule["rule"]).evaluate({"self": json_to_cel(value)})
                if verdict is True or (isinstance(verdict, celpy.celtypes.BoolType) and bool(verdict)):
                    continue
                self.rejected_by.add(rule["rule"])
                message = rule.get("message", "failed rule: " + rule["rule"])
                if "messageExpression" in rule:
                    built = self._program(rule["messageExpression"]).evaluate({"self": json_to_cel(value)})
                    if isinstance(built, str):
                        message = str(built)
                where = (_path(path) + rule.get("fieldPath", "")).lstrip(".")
                errors.append(f"{where}: {message}")
        return errors

    @staticmethod
    def _list_type_errors(node: JsonSchema, value: Any, path: list[Any]) -> list[str]:
        list_type = node.get("x-kubernetes-list-type")
        if not isinstance(value, list) or list_type not in ("set", "map"):
            return []
        keys = node.get("x-kubernetes-list-map-keys", [])
        seen: list[Any] = []
        errors = []
        for index, item in enumerate(value):
            identity = item if list_type == "set" else tuple(item.get(k) for k in keys)
            if identity in seen:
                errors.append(f"{_path([*path, index])}: Duplicate value: {identity!r}")
            seen.append(identity)
        return errors


def _schema_nodes(schema: JsonSchema) -> Iterator[JsonSchema]:
    yield schema
    for child in schema.get("properties", {}).values():
        yield from _schema_nodes(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _schema_nodes(schema[key])
