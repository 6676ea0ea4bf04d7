"""Kubernetes objects (plain dicts) into API models, with errors a person can act on.

A bad manifest yields one line per problem, each naming the field by its wire path the way kubectl
does (`spec.throughput.minReplicas: ...`), so the same mistake reads the same here and at `kubectl apply`.
"""

from __future__ import annotations

import difflib
import functools
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gpufabric.api import crdgen
from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.common import GROUP_VERSION, PATTERN_MEANINGS, camel_path
from gpufabric.api.computenode import ComputeNode

ApiObject = ComputeNode | AgentWorkload
KINDS: Mapping[str, type[ComputeNode] | type[AgentWorkload]] = {
    "ComputeNode": ComputeNode,
    "AgentWorkload": AgentWorkload,
}


@dataclass(frozen=True)
class InvalidObjectError(ValueError):
    """A manifest the API would refuse. `problems` are `path: message` lines."""

    what: str
    problems: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.what}: " + "; ".join(self.problems)


# Values quoted in messages are cut to this many characters: a message names the mistake, it does not
# echo a megabyte of input (or expand a YAML alias bomb while formatting it).
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = 60
_SHOWN.maxother = 60
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxtuple = _SHOWN.maxset = 4
_SHOWN.maxlevel = 2


def describe(document: Mapping[str, Any]) -> str:
    """`AgentWorkload team-a/chat`, as far as the document says; odd or huge names are shown cut short."""
    kind = document.get("kind", "object")
    metadata = document.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = {}
    name = metadata.get("name", "<unnamed>")
    namespace = metadata.get("namespace")
    shown_kind, shown_name = _plain(kind), _plain(name)
    return f"{shown_kind} {_plain(namespace)}/{shown_name}" if namespace else f"{shown_kind} {shown_name}"


def _plain(value: Any) -> str:
    """A string as it is (when short), anything else as a short repr."""
    if isinstance(value, str) and len(value) <= 80 and value.isprintable():
        return value
    return shown(value)


def shown(value: Any) -> str:
    """repr(value), bounded in length and effort whatever the value is."""
    return _SHOWN.repr(value)


def parse(document: Mapping[str, Any], *, nulls: bool = True) -> ApiObject:
    """Validate one gpufabric.io object. Raises InvalidObjectError listing every problem found.

    A null where the CRD does not allow one is dropped first, as the API server does before defaulting
    (`replicas: null` means the default, not an error); `nulls=False` says the document has none."""
    what = describe(document)
    if document.get("apiVersion") != GROUP_VERSION:
        raise InvalidObjectError(
            what,
            (
                f"apiVersion: Unsupported value: {shown(document.get('apiVersion'))}: "
                f"supported value: {GROUP_VERSION!r}",
            ),
        )
    kind = document.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidObjectError(
            what,
            (
                f"kind: Unsupported value: {shown(kind)}: supported values: "
                + ", ".join(repr(k) for k in _closest_first(kind)),
            ),
        )
    if nulls:
        document = _without_pruned_nulls(_schema_of(kind), document)
    try:
        return model.model_validate(dict(document))
    except ValidationError as error:
        raise InvalidObjectError(what, tuple(problems(error))) from None


@functools.cache
def _schema_of(kind: str) -> Mapping[str, Any]:
    return crdgen.object_schema(next(k for k in crdgen.KINDS if k.kind == kind))


def _without_pruned_nulls(schema: Mapping[str, Any], value: Any) -> Any:
    """`value` without the nulls the API server prunes: object fields and map values whose schema is not
    `nullable`. List items are kept (the server keeps them, and refuses them if they are not allowed)."""
    if isinstance(value, Mapping):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        result = {}
        for key, child in value.items():
            child_schema = properties.get(key, additional if isinstance(additional, Mapping) else None)
            if child_schema is None:
                result[key] = child  # not in the schema: refused as an unknown field, null or not
            elif child is None and not child_schema.get("nullable", False):
                continue
            else:
                result[key] = _without_pruned_nulls(child_schema, child)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_without_pruned_nulls(schema["items"], item) for item in value]
    return value


def _closest_first(kind: Any) -> list[str]:
    """Our kinds, the one nearest to a misspelt `kind` first."""
    near = difflib.get_close_matches(kind.lower(), [k.lower() for k in KINDS], n=1) if isinstance(kind, str) else []
    return sorted(KINDS, key=lambda k: k.lower() not in near)


def problems(error: ValidationError) -> list[str]:
    return [line for detail in error.errors(include_url=False) for line in _lines(detail)]


def _lines(detail: ErrorDetails) -> list[str]:
    path = camel_path(tuple(part for part in detail["loc"] if part != "[key]"))
    if detail["type"] == "rule":
        broken: tuple[tuple[str, str], ...] = (detail.get("ctx") or {})["broken"]
        return [f"{(path + field_path).lstrip('.') or '<root>'}: {message}" for field_path, message in broken]
    return [f"{path or '<root>'}: {_message(detail)}"]


def _message(detail: ErrorDetails) -> str:
    kind = detail["type"]
    if kind == "missing":
        return "Required value"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "string_pattern_mismatch":
        pattern = str((detail.get("ctx") or {}).get("pattern"))
        # Every pattern in the API has words (a unit test holds that); the regex is the last resort.
        return f"must be {PATTERN_MEANINGS.get(pattern, f'text matching {pattern}')} (got {shown(detail.get('input'))})"
    message = detail["msg"]
    if kind.endswith("_type") or kind.endswith("_parsing") or kind in ("enum", "literal_error"):
        message += f" (got {shown(detail.get('input'))})"
    if kind == "finite_number":
        message = "must be a finite number (got " + shown(detail.get("input")) + ")"
    return message.removeprefix("Value error, ")
