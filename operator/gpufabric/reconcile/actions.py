"""What a reconcile pass asks the shell to do. Plain data; the controller carries them out in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _namespaced_name(manifest: dict[str, Any]) -> str:
    return f"{manifest['metadata']['namespace']}/{manifest['metadata']['name']}"


@dataclass(frozen=True)
class CreatePod:
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return _namespaced_name(self.manifest)


@dataclass(frozen=True)
class DeletePod:
    namespace: str
    name: str
    # Force (grace 0) for pods on lost nodes: their kubelet will never confirm a graceful stop.
    force: bool
    reason: str


@dataclass(frozen=True)
class CreateService:
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return _namespaced_name(self.manifest)


@dataclass(frozen=True)
class DeleteService:
    namespace: str
    name: str


@dataclass(frozen=True)
class PatchStatus:
    """A merge patch of an object's status subresource; `kind` is ComputeNode or AgentWorkload."""

    kind: str
    namespace: str | None
    name: str
    status: dict[str, Any]


@dataclass(frozen=True)
class ScaleWorkload:
    """Set spec.replicas (and the scaled-to annotation that marks the autoscaler as its owner)."""

    namespace: str
    name: str
    replicas: int


@dataclass(frozen=True)
class Event:
    kind: str
    namespace: str | None
    name: str
    uid: str | None
    type: str  # Normal | Warning
    reason: str
    message: str


Action = CreatePod | DeletePod | CreateService | DeleteService | PatchStatus | ScaleWorkload | Event
