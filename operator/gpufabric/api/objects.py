"""Kubernetes objects (plain dicts) into API models, with errors a person can act on.

A bad manifest yields one line per problem, each naming the field by its wire path the way kubectl
does (`spec.throughput.minReplicas: ...`), so the same mistake reads the same here and at `kubectl apply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.common import GROUP_VERSION, camel_path
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


def describe(document: Mapping[str, Any]) -> str:
    """`AgentWorkload team-a/chat`, as far as the document says."""
    kind = document.get("kind", "object")
    metadata = document.get("metadata") if isinstance(document.get("metadata"), Mapping) else {}
    assert isinstance(metadata, Mapping)
    name = metadata.get("name", "<unnamed>")
    namespace = metadata.get("namespace")
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def is_ours(document: Mapping[str, Any]) -> bool:
    api_version = document.get("apiVersion")
    return isinstance(api_version, str) and api_version.split("/", 1)[0] == GROUP_VERSION.split("/", 1)[0]


def parse(document: Mapping[str, Any]) -> ApiObject:
    """Validate one gpufabric.io object. Raises InvalidObjectError listing every problem found."""
    what = describe(document)
    if document.get("apiVersion") != GROUP_VERSION:
        raise InvalidObjectError(
            what,
            (f"apiVersion: Unsupported value: {document.get('apiVersion')!r}: supported value: {GROUP_VERSION!r}",),
        )
    kind = document.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidObjectError(
            what,
            (f"kind: Unsupported value: {kind!r}: supported values: " + ", ".join(repr(k) for k in KINDS),),
        )
    try:
        return model.model_validate(dict(document))
    except ValidationError as error:
        raise InvalidObjectError(what, tuple(problems(error))) from None


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
    message = detail["msg"]
    if kind.endswith("_type") or kind.endswith("_parsing") or kind in ("enum", "literal_error"):
        message += f" (got {_shown(detail.get('input'))})"
    return message.removeprefix("Value error, ")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
