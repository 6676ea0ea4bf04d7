"""Label and field selectors (`?labelSelector=`, `?fieldSelector=`) as the API server parses them: kopf, the
kubernetes client and the operator's own watches send the string form, and a selector watch must agree with
a selector LIST about what matches."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

LabelMatcher = Callable[[Mapping[str, str]], bool]
FieldMatcher = Callable[[Mapping[str, Any]], bool]

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_REQ = re.compile(rf"(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)")
_CMP_REQ = re.compile(rf"(?P<key>{_KEY})\s*(?P<op>==|!=|=|>|<)\s*(?P<value>{_VALUE})")
_NOT_EXISTS_REQ = re.compile(rf"!\s*(?P<key>{_KEY})")
_EXISTS_REQ = re.compile(rf"(?P<key>{_KEY})")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses: `a in (x,y),b` is two requirements."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _requirement(part: str) -> LabelMatcher:
    if m := _SET_REQ.fullmatch(part):
        key, values = m["key"], {value.strip() for value in m["values"].split(",")}
        if not all(re.fullmatch(_VALUE, value) for value in values) or values == {""}:
            raise ValueError(f"invalid values in {part!r}")
        if m["op"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _CMP_REQ.fullmatch(part):
        key, op, value = m["key"], m["op"], m["value"]
        if op in ("=", "=="):
            return lambda labels: key in labels and labels[key] == value
        if op == "!=":
            return lambda labels: labels.get(key) != value
        try:  # `>` and `<` compare integers, as apimachinery's labels.Parse does.
            bound = int(value)
        except ValueError:
            raise ValueError(f"{op} needs an integer in {part!r}") from None
        sign = 1 if op == ">" else -1
        return lambda labels: (
            key in labels and labels[key].lstrip("-").isdigit() and sign * (int(labels[key]) - bound) > 0
        )
    if m := _NOT_EXISTS_REQ.fullmatch(part):
        key = m["key"]
        return lambda labels: key not in labels
    if m := _EXISTS_REQ.fullmatch(part):
        key = m["key"]
        return lambda labels: key in labels
    raise ValueError(f"unable to parse requirement {part!r}")


def parse_label_selector(text: str) -> LabelMatcher:
    """The `labelSelector` string syntax of apimachinery's labels.Parse: `a=b`, `a==b`, `a!=b`, `a`, `!a`,
    `a in (x,y)`, `a notin (x,y)`, `a>1`, `a<1`, joined by commas (all must hold). `!=` and `notin` also
    match objects without the label, as in Kubernetes. Raises ValueError on a malformed selector."""
    if not text.strip():
        return lambda labels: True
    requirements = [_requirement(part.strip()) for part in _split_top_level(text)]
    return lambda labels: all(requirement(labels) for requirement in requirements)


# The fields the API server lets pods be selected by, beyond metadata.name and metadata.namespace (kubernetes
# pkg/registry/core/pod/strategy.go, ToSelectableFields); other resources get only the metadata ones.
POD_FIELDS = frozenset(
    {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    }
)
_FIELD_REQ = re.compile(r"(?P<field>[A-Za-z0-9.]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^,]*)")


def parse_field_selector(text: str, selectable: frozenset[str] = frozenset()) -> FieldMatcher:
    """The `fieldSelector` syntax of apimachinery's fields.ParseSelector: `field=value`, `field==value`,
    `field!=value`, joined by commas (all must hold); a missing field reads as the empty string, so
    `spec.nodeName!=` selects bound pods. Fields other than metadata.name, metadata.namespace and
    `selectable` are refused, as the API server refuses them ("field label not supported")."""
    if not text.strip():
        return lambda obj: True
    requirements: list[FieldMatcher] = []
    for part in text.split(","):
        match = _FIELD_REQ.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"invalid field selector {part!r}")
        field, op, value = match["field"], match["op"], match["value"].strip()
        if field not in {"metadata.name", "metadata.namespace"} | selectable:
            raise ValueError(f'field label not supported: "{field}"')
        requirements.append(_field_requirement(field, op != "!=", value))
    return lambda obj: all(requirement(obj) for requirement in requirements)


def _field_requirement(field: str, equal: bool, value: str) -> FieldMatcher:
    path = field.split(".")

    def read(obj: Mapping[str, Any]) -> str:
        current: Any = obj
        for step in path:
            current = current.get(step) if isinstance(current, Mapping) else None
        if isinstance(current, bool):
            return "true" if current else "false"
        return "" if current is None else str(current)

    return lambda obj: (read(obj) == value) == equal
