"""What a reconcile pass asks the shell to do. Plain, frozen data; the controller carries them out in order.

Every write names what it writes (`target`) and the AgentWorkload or ComputeNode it acts for (`about`);
an Event names what it is about. The controller keys retries on `retry_key`, and when the API server
refuses a write as invalid it reports that on `about` — never by taking a name apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, get_args

from gpufabric.api.reasons import EventReason, EventType
from gpufabric.api.refs import Kind, ObjectRef


def _manifest_ref(kind: Kind, manifest: dict[str, Any]) -> ObjectRef:
    return ObjectRef(kind, manifest["metadata"]["namespace"], manifest["metadata"]["name"])


@dataclass(frozen=True)
class CreatePod:
    verb: ClassVar[str] = "create-pod"
    manifest: dict[str, Any]
    about: ObjectRef

    @property
    def target(self) -> ObjectRef:
        return _manifest_ref(Kind.POD, self.manifest)


@dataclass(frozen=True)
class DeletePod:
    verb: ClassVar[str] = "delete-pod"
    target: ObjectRef
    about: ObjectRef
    # Force (grace 0) for pods on lost nodes: their kubelet will never confirm a graceful stop.
    force: bool


@dataclass(frozen=True)
class CreateService:
    verb: ClassVar[str] = "create-service"
    manifest: dict[str, Any]
    about: ObjectRef

    @property
    def target(self) -> ObjectRef:
        return _manifest_ref(Kind.SERVICE, self.manifest)


@dataclass(frozen=True)
class DeleteService:
    verb: ClassVar[str] = "delete-service"
    target: ObjectRef
    about: ObjectRef


@dataclass(frozen=True)
class ApplyConfigMap:
    """Create a ConfigMap of a replica's engine files, or replace its data if it exists (a replica index can
    be reused by a replica with other settings)."""

    verb: ClassVar[str] = "apply-config-map"
    manifest: dict[str, Any]
    about: ObjectRef
    # for a replica placed this pass: most likely absent, so create first (one write, not a 404 then a create)
    new: bool = False

    @property
    def target(self) -> ObjectRef:
        return _manifest_ref(Kind.CONFIG_MAP, self.manifest)


@dataclass(frozen=True)
class DeleteConfigMap:
    verb: ClassVar[str] = "delete-config-map"
    target: ObjectRef
    about: ObjectRef


@dataclass(frozen=True)
class PatchStatus:
    """A merge patch of an AgentWorkload's or ComputeNode's status subresource."""

    verb: ClassVar[str] = "patch-status"
    target: ObjectRef
    status: dict[str, Any]

    @property
    def about(self) -> ObjectRef:
        return self.target


@dataclass(frozen=True)
class ScaleWorkload:
    """Set spec.replicas (and the scaled-to annotation that marks the autoscaler as its owner)."""

    verb: ClassVar[str] = "scale"
    target: ObjectRef
    replicas: int

    @property
    def about(self) -> ObjectRef:
        return self.target


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about `about` (its `involvedObject`), in its namespace (`default` for ComputeNodes)."""

    verb: ClassVar[str] = "event"
    about: ObjectRef
    uid: str | None
    type: EventType
    reason: EventReason
    message: str


Action = (
    CreatePod
    | DeletePod
    | CreateService
    | DeleteService
    | ApplyConfigMap
    | DeleteConfigMap
    | PatchStatus
    | ScaleWorkload
    | Event
)

# Every kind of action, for what lists them (the exporter's error series).
ACTION_KINDS: tuple[type[Action], ...] = get_args(Action)

# What a failed action's backoff is keyed on: the write and its object; for Events, the object and the reason
# (a refused Event is not retried once per message).
RetryKey = tuple[str, ObjectRef, str]


def retry_key(action: Action) -> RetryKey:
    if isinstance(action, Event):
        return (action.verb, action.about, action.reason.value)
    return (action.verb, action.target, "")
