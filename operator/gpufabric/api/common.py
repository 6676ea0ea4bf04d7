"""Building blocks shared by both kinds: the model base, Kubernetes metadata, conditions, selectors.

Every model speaks the Kubernetes wire format (camelCase) and rejects unknown fields, so a typo in a
manifest is an error with its path, never a silently ignored setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

API_GROUP = "gpufabric.io"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

# Sizes the API accepts. They bound CEL evaluation cost (the API server refuses rules over unbounded
# lists) and keep one object well under etcd's object size limit.
MAX_NAME_LENGTH = 253
MAX_LIST_ITEMS = 64
MAX_LABELS = 64
MAX_MESSAGE_LENGTH = 32768


@dataclass(frozen=True)
class Rule:
    """One cross-field rule, stated twice on purpose: as CEL for the API server (`kubectl apply` rejects
    the object) and as Python for everything that reads manifests without one (`gpufabric plan`, the
    operator's own defence). Tests evaluate both on the same objects and require the same verdict and
    the same message."""

    cel: str
    holds: Callable[[Any], bool]
    message: str
    field_path: str | None = None
    # CEL that builds a message naming the offending values, and its Python twin.
    message_expression: str | None = None
    explain: Callable[[Any], str] | None = None

    def as_validation(self) -> dict[str, str]:
        validation = {"rule": self.cel, "message": self.message}
        if self.message_expression:
            validation["messageExpression"] = self.message_expression
        if self.field_path:
            validation["fieldPath"] = self.field_path
        return validation

    def message_for(self, obj: Any) -> str:
        return self.explain(obj) if self.explain else self.message


def _rules_into_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "crd_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.as_validation() for rule in rules]


class WireModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected, values immutable.

    A subclass lists its cross-field `crd_rules`; they become the CRD's `x-kubernetes-validations` at
    that place in the schema and are checked on every validation here."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        # JSON has no NaN or infinity, so the API server never stores them; YAML's .nan and .inf are refused
        # here for the same reason instead of turning a bound check into a silent pass.
        allow_inf_nan=False,
        json_schema_extra=_rules_into_schema,
    )

    crd_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_crd_rules(self) -> Any:
        # The API server reports every broken rule, not the first; so do we. One error carries them all
        # (a validator raises once), and api.objects unfolds it into one line per rule.
        broken = tuple(
            (rule.field_path or "", rule.message_for(self)) for rule in type(self).crd_rules if not rule.holds(self)
        )
        if broken:
            raise PydanticCustomError("rule", "; ".join(message for _, message in broken), {"broken": broken})
        return self

    def wire(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


T = TypeVar("T")


def _no_duplicates(items: list[T]) -> list[T]:
    seen: list[T] = []
    for item in items:
        if item in seen:
            raise PydanticCustomError("duplicate", "Duplicate value: {value}", {"value": repr(str(item))})
        seen.append(item)
    return items


# Kubernetes structural schemas forbid `uniqueItems`; `x-kubernetes-list-type: set` says the same and the
# API server enforces it. The validator enforces it here.
UNIQUE = AfterValidator(_no_duplicates)
SET_LIST: dict[str, Any] = {"x-kubernetes-list-type": "set"}


def cel_string(value: str) -> str:
    """A CEL string literal for a value from our own tables (no quotes or backslashes in them)."""
    if "'" in value or "\\" in value:
        raise ValueError(f"not a plain CEL literal: {value!r}")
    return f"'{value}'"


def cel_pattern(pattern: str) -> str:
    """A regular expression as a CEL raw string literal."""
    if "'" in pattern:
        raise ValueError(f"pattern has a quote: {pattern!r}")
    return f"r'{pattern}'"


def cel_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(cel_string(v) for v in values) + "]"


# --- names, labels, quantities -----------------------------------------------------------------

# RFC 1123 subdomain: what Kubernetes accepts as a Node or object name.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# RFC 1123 label: a Service or Namespace name, one DNS label.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Extended resource names are `<domain>/<name>` (kubernetes.io/docs/concepts/configuration/
# manage-resources-containers/#extended-resources), e.g. nvidia.com/gpu, rdma/rdma_shared_device_a.
RESOURCE_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# Linux netdev names: at most 15 characters (IFNAMSIZ - 1), no '/' or whitespace.
INTERFACE_PATTERN = r"^[A-Za-z0-9_.:-]{1,15}$"
# Label values: empty or 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
# Label keys: optional DNS-subdomain prefix and '/', then a name of at most 63 characters.
LABEL_KEY_PATTERN = rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}$"
# Kubernetes resource.Quantity, as the core API's own schema spells it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# Prometheus metric names (prometheus.io/docs/concepts/data_model/#metric-names-and-labels).
METRIC_NAME_PATTERN = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
# Condition reasons, as metav1.Condition validates them.
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
# Free text that must be one token: images, model names and paths. Spelled out (space and the control
# characters) rather than `\s`, which means different sets in the API server's Go RE2 ([\t\n\f\r ]),
# pydantic's Rust regex (Unicode White_Space) and Python's re (also \x1c-\x1f): all three agree on this.
NO_WHITESPACE_PATTERN = r"^[^\x00-\x20\x7f]+$"
HTTP_PATH_PATTERN = r"^/[^\x00-\x20\x7f]*$"
# What the kubelet accepts as a container env variable name.
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
RDMA_DEVICE_PATTERN = r"^[A-Za-z0-9_.:-]+$"
# A Multus network attachment: `name` or `namespace/name`.
NETWORK_ATTACHMENT_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# What each pattern allows, in words: error messages say this, never the regular expression.
# tests/unit/test_objects.py checks that every pattern in the CRD schemas has an entry.
PATTERN_MEANINGS: dict[str, str] = {
    DNS_SUBDOMAIN_PATTERN: "a DNS subdomain: lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit",
    DNS_LABEL_PATTERN: "a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
    RESOURCE_NAME_PATTERN: "a resource name such as cpu, memory, nvidia.com/gpu or hugepages-2Mi",
    INTERFACE_PATTERN: "a network interface name: 1 to 15 of letters, digits, '_', '.', ':' and '-'",
    LABEL_VALUE_PATTERN: "a label value: empty, or letters, digits, '-', '_' and '.', "
    "starting and ending with a letter or digit",
    LABEL_KEY_PATTERN: "a label key: an optional DNS-subdomain prefix and '/', then letters, digits, '-', '_' "
    "and '.', starting and ending with a letter or digit",
    QUANTITY_PATTERN: "a Kubernetes quantity such as 4, 500m or 64Gi",
    METRIC_NAME_PATTERN: "a Prometheus metric name: letters, digits, '_' and ':', not starting with a digit",
    CONDITION_REASON_PATTERN: "a CamelCase reason: letters, digits, '_', ',' and ':', starting with a letter",
    NO_WHITESPACE_PATTERN: "non-empty text without whitespace",
    HTTP_PATH_PATTERN: "an absolute HTTP path such as /metrics, without whitespace",
    ENV_NAME_PATTERN: "an environment variable name: letters, digits, '-', '.' and '_', not starting with a digit",
    RDMA_DEVICE_PATTERN: "an RDMA device name such as mlx5_0: letters, digits, '_', '.', ':' and '-'",
    NETWORK_ATTACHMENT_PATTERN: "a NetworkAttachmentDefinition as `name` or `namespace/name` (DNS labels)",
}

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS_SUBDOMAIN_PATTERN)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]
ResourceName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=RESOURCE_NAME_PATTERN)
]
RESOURCE_KEY_MESSAGE = "keys must be resource names such as cpu, memory or hugepages-2Mi"
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=METRIC_NAME_PATTERN)]
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]


LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=316, pattern=LABEL_KEY_PATTERN)]

LABEL_KEY_MESSAGE = (
    "label keys are an optional DNS-subdomain prefix and '/', then a name of at most 63 characters "
    "([-A-Za-z0-9_.], alphanumeric at both ends)"
)


def keys_matching(pattern: str, message: str) -> tuple[BeforeValidator, dict[str, Any]]:
    """A map whose keys must match `pattern`: the validator for here and the CEL rule for the CRD
    (structural schemas have no propertyNames), with one message for both."""

    def check(value: Any) -> Any:
        if isinstance(value, dict) and not all(isinstance(k, str) and re.fullmatch(pattern, k) for k in value):
            raise PydanticCustomError("map_key", message)
        return value

    rule = {"rule": f"self.all(k, k.matches({cel_pattern(pattern)}))", "message": message}
    return BeforeValidator(check), {"x-kubernetes-validations": [rule]}


_LABEL_KEYS, _LABEL_KEYS_RULE = keys_matching(LABEL_KEY_PATTERN, LABEL_KEY_MESSAGE)
Labels = Annotated[
    dict[Annotated[str, StringConstraints(max_length=316)], LabelValue],
    _LABEL_KEYS,
    Field(max_length=MAX_LABELS, json_schema_extra=_LABEL_KEYS_RULE),
]


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta the operator reads. Other metadata fields pass through untouched."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS_SUBDOMAIN_PATTERN)]
    namespace: Annotated[str, StringConstraints(max_length=63, pattern=DNS_LABEL_PATTERN)] | None = None
    uid: str | None = None
    generation: Annotated[int, Field(strict=True, ge=0)] | None = None
    resource_version: str | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


# --- conditions ----------------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(WireModel):
    """A standard metav1.Condition: `lastTransitionTime` moves only when `status` changes."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)]
    status: ConditionStatus
    observed_generation: Annotated[int, Field(strict=True, ge=0)] | None = None
    last_transition_time: datetime
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)]
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_LENGTH)] = ""


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


# --- label selectors -----------------------------------------------------------------------------


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(WireModel):
    """One `matchExpressions` term, with metav1.LabelSelectorRequirement's meaning."""

    crd_rules = (
        Rule(
            cel="(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
            holds=lambda r: (r.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)) == bool(r.values),
            message="values must be non-empty for In and NotIn, and absent for Exists and DoesNotExist",
            field_path=".values",
        ),
    )

    key: LabelKey
    operator: SelectorOperator
    values: Annotated[list[LabelValue], Field(max_length=MAX_LIST_ITEMS)] | None = None

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        match self.operator:
            case SelectorOperator.EXISTS:
                return present
            case SelectorOperator.DOES_NOT_EXIST:
                return not present
            case SelectorOperator.IN:
                return present and labels[self.key] in (self.values or [])
            case SelectorOperator.NOT_IN:
                return not present or labels[self.key] not in (self.values or [])


class LabelSelector(WireModel):
    """metav1.LabelSelector: all `matchLabels` and all `matchExpressions` must hold; empty matches all."""

    match_labels: Labels = Field(default_factory=dict)
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=MAX_LIST_ITEMS)] = Field(
        default_factory=list
    )

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels.items()) and all(
            requirement.matches(labels) for requirement in self.match_expressions
        )


def camel_path(loc: tuple[int | str, ...]) -> str:
    """`('spec', 'model', 'name')` -> `spec.model.name`; list indices as `[i]`, as kubectl prints them."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + part
    return path
