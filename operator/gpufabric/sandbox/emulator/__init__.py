"""An in-process Kubernetes API server for integration tests: kmock's emulator, made strict where the
operator needs it.

`FabricEmulator` (`server`) subclasses `kmock.KubernetesEmulator` and keeps its discovery, its `objects`
store (with per-object history, for assertions), its request log and its DSL: a reaction such as
`emulator['get /x'] << 500` still overrides the answer, though, as in kmock, a write it intercepts is
applied anyway (refuse writes with a `FaultPlan` instead). It replaces the object semantics, which kmock
keeps deliberately simple, with the API server's, one module per concern: `store` (objects, the global
resourceVersion, the event log), `writes` (create, patch, generation, the status subresource),
`deletion` (graceful pods, finalizers, garbage collection), `selectors` and `watch`, `faults`, `client`
(the harness's own requests), and `kmockcompat`: every workaround for kmock 0.8, which pyproject.toml
pins, with the upstream fix that would remove it.

Refused with an explicit error, because neither the operator nor kopf sends them here and a silent
approximation would let a new use pass against semantics that are not there: PUT (405), `fieldSelector`
on fields the API server does not index (400: pods have theirs, `spec.nodeName`, `status.phase`…, every
resource `metadata.name` and `metadata.namespace`), `sendInitialEvents` (400), `propagationPolicy:
Orphan` (400), subresources other than `status`,
`scale` included (404), `dryRun` (400), server-side apply (415), POST to an object and other writes to a
collection (405). Ignored: admission and schema validation (see `support.apiserver`), `limit`/`continue`
(one page), namespace existence and deletion, strategic-merge list semantics (lists are replaced), watch
bookmarks, RBAC.

Every state change is synchronous code between two awaits, so it is atomic for the event loop without
locks: a watch can never miss or duplicate an event between its initial listing and its live part.
"""

from gpufabric.sandbox.emulator.client import HarnessError
from gpufabric.sandbox.emulator.faults import FaultPlan
from gpufabric.sandbox.emulator.selectors import parse_label_selector
from gpufabric.sandbox.emulator.server import FabricEmulator
from gpufabric.sandbox.emulator.store import NODES, PODS, JsonDict, now_rfc3339

__all__ = [
    "NODES",
    "PODS",
    "FabricEmulator",
    "FaultPlan",
    "HarnessError",
    "JsonDict",
    "now_rfc3339",
    "parse_label_selector",
]
