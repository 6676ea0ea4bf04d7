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
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import celpy
import jsonschema
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

JsonSchema = dict[str, Any]
MAP_KEY = re.compile(r"\[([^\]0-9][^\]]*)\]")  # `[nvidia]` in `spec.runtimes[nvidia].env`, not `[0]`
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
    return result


def _without_nulls(value: Any) -> Any:
    """What CEL sees: a field whose value is null is absent (`has()` is false), as on the real server."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def prune_nulls(schema: JsonSchema, value: Any) -> Any:
    """The API server drops a null whose schema is not `nullable` before defaulting (object fields and map
    values; list items stay), so `replicas: null` means the default. Seen on the real v1.36 server."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for name in list(value):
            child = properties.get(name, additional if isinstance(additional, dict) else None)
            if child is None:
                continue
            if value[name] is None and not child.get("nullable", False):
                del value[name]
            else:
                value[name] = prune_nulls(child, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_nulls(schema["items"], item) for item in value]
    return value


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


def _path(parts: list[Any], *, map_keys_in_brackets: bool = False, keyed: frozenset[int] = frozenset()) -> str:
    """A field path as the API server prints it. Schema errors print map keys as `.key`; CEL errors print
    them as `[key]` (`keyed` holds the positions of map keys in `parts`)."""
    out = ""
    for position, part in enumerate(parts):
        if isinstance(part, int) or (map_keys_in_brackets and position in keyed):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _walk(
    schema: JsonSchema, value: Any, path: list[Any], keyed: frozenset[int] = frozenset()
) -> Iterator[tuple[JsonSchema, Any, list[Any], frozenset[int]]]:
    yield schema, value, path, keyed
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value and value[name] is not None:
                yield from _walk(child, value[name], [*path, name], keyed)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key, child_value in value.items():
                if child_value is not None:
                    yield from _walk(additional, child_value, [*path, key], keyed | {len(path)})
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _walk(schema["items"], item, [*path, index], keyed)


def _shown(value: Any) -> str:
    """A bad value as field.ErrorBody prints it: strings quoted, numbers bare, null as null."""
    return json.dumps(value)


@dataclass(frozen=True)
class Cause:
    """One entry of the 422's `details.causes`: the field, and the message after it. `detail` is the part a
    person wrote (the rule's message), which the models' problems repeat."""

    field: str
    message: str
    detail: str

    def line(self) -> str:
        return f"{self.field}: {self.message}"


def _schema_cause(error: jsonschema.ValidationError) -> Cause:
    """kube-openapi's wording for a schema violation (k8s.io/kube-openapi/pkg/validation/errors)."""
    parts = list(error.absolute_path)
    where = _path(parts)
    kind: Any = error.validator
    expected: Any = error.validator_value
    value: Any = error.instance
    if kind == "required":
        missing = next(name for name in expected if name not in value)
        return Cause(_path([*parts, missing]), "Required value", "Required value")
    if kind == "enum":
        allowed = ", ".join(_shown(v) for v in expected)
        detail = f"supported values: {allowed}"
        return Cause(where, f"Unsupported value: {_shown(value)}: {detail}", detail)
    if kind == "type":
        want = expected if isinstance(expected, str) else next(t for t in expected if t != "null")
        got = _json_type(value)
        detail = f"{where} in body must be of type {want}: {_shown(got)}"
        return Cause(where, f"Invalid value: {_shown(got)}: {detail}", detail)
    wording = {
        "minimum": ("should be greater than or equal to", value),
        "exclusiveMinimum": ("should be greater than", value),
        "maximum": ("should be less than or equal to", value),
        "exclusiveMaximum": ("should be less than", value),
        "pattern": ("should match", value),
        "minLength": ("should be at least", value),
        "maxLength": ("should be at most", value),
        "minProperties": ("should have at least", len(value) if isinstance(value, dict) else value),
        "maxProperties": ("should have at most", len(value) if isinstance(value, dict) else value),
        "minItems": ("should have at least", len(value) if isinstance(value, list) else value),
    }
    if kind in wording:
        verb, shown = wording[kind]
        bound = f"'{expected}'" if kind == "pattern" else expected
        unit = {"minLength": " chars long", "maxLength": " chars long", "minItems": " items"}.get(kind, "")
        unit = " properties" if kind in ("minProperties", "maxProperties") else unit
        detail = f"{where} in body {verb} {bound}{unit}"
        return Cause(where, f"Invalid value: {_shown(shown)}: {detail}", detail)
    return Cause(where, f"Invalid value: {_shown(value)}: {error.message}", error.message)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else "null"


def _unknown_fields(schema: JsonSchema, value: Any, path: list[Any]) -> Iterator[str]:
    """Fields the schema does not declare, as strict field validation names them (`spec.gpus`)."""
    if isinstance(value, dict):
        declared = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            if declared is not None and key in declared:
                yield from _unknown_fields(declared[key], child, [*path, key])
            elif isinstance(additional, dict):
                yield from _unknown_fields(additional, child, [*path, key])
            elif declared is not None and not (
                path == ["metadata"] or schema.get("x-kubernetes-preserve-unknown-fields")
            ):
                yield _path([*path, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _unknown_fields(schema["items"], item, [*path, index])


def _integer_bound(name: str, compare: Any) -> Any:
    """kube-openapi checks an integer value against a bound converted to int64 (truncated): with
    `minimum: 0.1`, 0 passes, 0.05 does not. Seen on the real v1.36 server; emulated, not fixed."""

    def check(validator: Any, bound: Any, instance: Any, schema: JsonSchema) -> Any:
        if not isinstance(instance, (int, float)) or isinstance(instance, bool):
            return
        effective = int(bound) if isinstance(instance, int) else bound
        if not compare(instance, effective):
            yield jsonschema.ValidationError(
                f"{instance!r} is not {name} {bound!r}", validator=name, validator_value=bound
            )

    return check


_KubeOpenAPIValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    {
        "minimum": _integer_bound("minimum", lambda value, bound: value >= bound),
        "maximum": _integer_bound("maximum", lambda value, bound: value <= bound),
    },
)


class SchemaValidator:
    def __init__(self, crd: dict[str, Any]) -> None:
        self.schema: JsonSchema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        self.kind: str = crd["spec"]["names"]["kind"]
        self.version: str = crd["spec"]["versions"][0]["name"]
        self.scale_replicas: str | None = (
            crd["spec"]["versions"][0].get("subresources", {}).get("scale", {}).get("specReplicasPath")
        )
        self._json_schema = to_json_schema(self.schema)
        jsonschema.Draft202012Validator.check_schema(self._json_schema)
        self._validator = _KubeOpenAPIValidator(self._json_schema)
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

    def _evaluate(self, expression: str, value: Any) -> Any:
        """The expression's value, or the error it raised (a rule that errs does not hold)."""
        try:
            return self._program(expression).evaluate({"self": json_to_cel(_without_nulls(value))})
        except (CELEvalError, TypeError, ValueError) as error:
            return error

    def validate(self, obj: dict[str, Any]) -> list[str]:
        """The API server's answer to a create with strict field validation, as `field: message` lines: the
        422's causes in its order, or the single line of a 400 for unknown fields."""
        return [cause.line() for cause in self.causes(obj)]

    def problems(self, obj: dict[str, Any]) -> list[str]:
        """The same answer in the models' `path: message` form: map keys dotted, the rule's own words."""
        return [MAP_KEY.sub(r".\1", cause.field) + f": {cause.detail}" for cause in self.causes(obj)]

    def causes(self, obj: dict[str, Any]) -> list[Cause]:
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict) or not metadata.get("name"):
            # ObjectMeta is checked before the CRD's schema: no name, no object.
            detail = "name or generateName is required"
            return [Cause("metadata.name", f"Required value: {detail}", detail)]
        unknown = list(_unknown_fields(self.schema, obj, []))
        if unknown:
            # Strict field validation refuses the request before any schema or CEL validation (a 400).
            fields = ", ".join(f'unknown field "{name}"' for name in unknown)
            message = (
                f'{self.kind} in version "{self.version}" cannot be handled as a {self.kind}: '
                f"strict decoding error: {fields}"
            )
            return [Cause("<request>", message, message)]
        obj = apply_defaults(self.schema, prune_nulls(self.schema, copy.deepcopy(obj)))
        schema_errors = sorted(self._validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        causes = [_schema_cause(error) for error in schema_errors]
        for node, value, path, _ in _walk(self.schema, obj, []):
            causes.extend(self._list_type_errors(node, value, path))
        causes.extend(self._scale_errors(obj))
        if any(error.validator in ("type", "anyOf", "required", "enum") for error in schema_errors):
            # apiextensions-apiserver: a type, required or unsupported-value error blocks CEL
            # (hasBlockingErr), and the response says so.
            not_checked = f"Invalid value: null: {CEL_NOT_CHECKED}"
            causes.append(Cause("<nil>", not_checked, CEL_NOT_CHECKED))
            return causes
        for node, value, path, keyed in _walk(self.schema, obj, []):
            for rule in node.get("x-kubernetes-validations", []):
                verdict = self._evaluate(rule["rule"], value)
                if verdict is True or (isinstance(verdict, celpy.celtypes.BoolType) and bool(verdict)):
                    continue
                self.rejected_by.add(rule["rule"])
                message = rule.get("message", "failed rule: " + rule["rule"])
                if "messageExpression" in rule:
                    built = self._evaluate(rule["messageExpression"], value)
                    if isinstance(built, str):
                        message = str(built)
                where = (_path(path, map_keys_in_brackets=True, keyed=keyed) + rule.get("fieldPath", "")).lstrip(".")
                # A scalar's value is shown; an object's or a list's is not.
                shown = "" if isinstance(value, (dict, list)) else f"{_shown(value)}: "
                causes.append(Cause(where, f"Invalid value: {shown}{message}", message))
        return causes

    def _scale_errors(self, obj: dict[str, Any]) -> list[Cause]:
        """The scale subresource reads spec.replicas on every write and reports a non-integer there too."""
        if not self.scale_replicas:
            return []
        value: Any = obj
        for step in self.scale_replicas.removeprefix(".").split("."):
            value = value.get(step) if isinstance(value, dict) else None
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return []
        detail = f"{self.scale_replicas} accessor error: {value} is of the type {_go_type(value)}, expected int64"
        return [Cause(self.scale_replicas, f"Invalid value: 0: {detail}", detail)]

    @staticmethod
    def _list_type_errors(node: JsonSchema, value: Any, path: list[Any]) -> list[Cause]:
        list_type = node.get("x-kubernetes-list-type")
        if not isinstance(value, list) or list_type not in ("set", "map"):
            return []
        keys = node.get("x-kubernetes-list-map-keys", [])
        seen: list[Any] = []
        causes = []
        for index, item in enumerate(value):
            if list_type == "map" and not isinstance(item, dict):
                continue  # a type error, reported by the schema
            identity = item if list_type == "set" else {k: item.get(k) for k in keys}
            if identity in seen:
                causes.append(Cause(_path([*path, index]), f"Duplicate value: {_shown(identity)}", "Duplicate value"))
            seen.append(identity)
        return causes


def _go_type(value: Any) -> str:
    return {str: "string", float: "float64", bool: "bool", list: "[]interface {}", dict: "map[string]interface {}"}.get(
        type(value), type(value).__name__
    )


def _schema_nodes(schema: JsonSchema) -> Iterator[JsonSchema]:
    yield schema
    for child in schema.get("properties", {}).values():
        yield from _schema_nodes(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _schema_nodes(schema[key])
