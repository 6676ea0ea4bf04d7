"""kopf handlers: thin. Indexes turn watched objects into core data; event handlers wake the reconciler;
discovery turns Nodes into ComputeNodes. Nothing here decides anything.

No handler adds a finalizer or stores progress on objects (only indexes and on.event are used), so
deleting any object is never blocked by the operator: pods and Services go with their AgentWorkload
through ownerReferences and the garbage collector.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from gpufabric.api import labels
from gpufabric.api.common import API_GROUP, API_VERSION
from gpufabric.api.computenode import ComputeNode
from gpufabric.controller.reconciler import Reconciler
from gpufabric.reconcile import NodeHealth, discovery
from gpufabric.reconcile.observe import (
    NotOurs,
    agent_workload,
    compute_node,
    namespace_terminating,
    node_health,
    owned_service,
    pod_record,
)

log = logging.getLogger(__name__)
MANAGED = {labels.MANAGED_BY: labels.MANAGER}
MANAGED_SELECTOR = f"{labels.MANAGED_BY}={labels.MANAGER}"
# The core resources the operator watches only its own of.
SELECTED = ("pods", "services")


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, *, discover_nodes: bool = False) -> None:
    """Register every handler on `registry` (a fresh one per operator, so tests can run several)."""
    register_indexes(registry, reconciler)
    register_wakeups(registry, reconciler)
    if discover_nodes:
        register_discovery(registry, reconciler)


def register_indexes(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Indexes: every watched object as core data, keyed by name; the reconciler reads them each pass."""

    @kopf.on.startup(registry=registry)
    async def bind_indexes(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        # kopf hands every index to every handler; startup handlers get them before they are filled,
        # and they stay the same live objects afterwards.
        reconciler.bind({name: kwargs[name] for name in kwargs if name.startswith("gf_")})
        settings.posting.level = logging.WARNING
        # Only our pods and Services, filtered by the API server: kopf's `labels=` filters after receiving,
        # so without this every pod of the cluster would stream through the operator. (Startup handlers run
        # before kopf's watchers, which read the setting.)
        for plural in SELECTED:
            settings.watching.label_selectors["v1", plural] = MANAGED_SELECTOR
        settings.persistence.diffbase_storage = UnusedDiffBase()

    # --- indexes ---------------------------------------------------------------------------------------
    # Async though they never await: kopf runs sync handlers in a worker thread, a thread hop per watch event
    # for what is a few microseconds of parsing.
    # Explicit ids: kopf passes each index to handlers under its handler id, which would otherwise be the
    # nested function's qualified name.

    @kopf.index("pods", labels=MANAGED, registry=registry, id="gf_pods")
    async def gf_pods(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[str, Any]:
        try:
            return {f"{namespace}/{name}": pod_record(body)}
        except NotOurs as error:
            log.warning("%s", error)
            return {f"{namespace}/{name}": str(error)}

    @kopf.index("nodes", registry=registry, id="gf_nodes")
    async def gf_nodes(body: kopf.Body, name: str, **_: Any) -> dict[str, Any]:
        return {name: node_health(body)}

    @kopf.index(API_GROUP, API_VERSION, "computenodes", registry=registry, id="gf_compute_nodes")
    async def gf_compute_nodes(body: kopf.Body, name: str, **_: Any) -> dict[str, Any]:
        parsed = compute_node(body)
        if not isinstance(parsed, ComputeNode):
            log.warning("ComputeNode %s is invalid and ignored: %s", name, "; ".join(parsed))
        return {name: parsed}

    @kopf.index(API_GROUP, API_VERSION, "agentworkloads", registry=registry, id="gf_workloads")
    async def gf_workloads(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[str, Any]:
        return {f"{namespace}/{name}": agent_workload(body)}

    # Only the namespaces being deleted: nothing new is created in them (the API server would refuse it).
    @kopf.index("namespaces", registry=registry, id="gf_terminating_namespaces")
    async def gf_terminating_namespaces(body: kopf.Body, name: str, **_: Any) -> dict[str, Any] | None:
        return {name: True} if namespace_terminating(body) else None

    @kopf.index("services", labels=MANAGED, registry=registry, id="gf_services")
    async def gf_services(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[str, Any] | None:
        owned = owned_service(body)
        return {f"{namespace}/{name}": owned} if owned else None


class UnusedDiffBase(kopf.DiffBaseStorage):
    """kopf's "last handled state", which only change-handlers (on.create/update/field) read. This operator
    has none (indexes and on.event only: a test holds it to that), yet kopf builds the state for every watch
    event, a deep copy of the whole body; at thousands of pods that was a visible share of the CPU."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def register_wakeups(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Wake the reconciler on anything that can change a decision."""

    # Async on purpose: kopf runs sync handlers in worker threads, and asyncio events must be set from the loop.
    async def wake(**_: Any) -> None:
        reconciler.indexes_ready()  # resource handlers run only once every index is filled
        reconciler.trigger()

    kopf.on.event("pods", labels=MANAGED, registry=registry)(wake)

    seen: dict[str, NodeHealth] = {}

    @kopf.on.event("nodes", registry=registry)
    async def node_changed(body: kopf.Body, name: str, type: str | None, **_: Any) -> None:
        # Kubelets heartbeat their Node status every few seconds; only readiness and capacity matter.
        health = node_health(body)
        if type == "DELETED":
            seen.pop(name, None)
        elif seen.get(name) == health:
            return
        else:
            seen[name] = health
        await wake()

    terminating: set[str] = set()

    @kopf.on.event("namespaces", registry=registry)
    async def namespace_changed(body: kopf.Body, name: str, type: str | None, **_: Any) -> None:
        # A namespace starting to terminate stops the writes for its workloads; nothing else about one matters.
        going = type != "DELETED" and namespace_terminating(body)
        if going != (name in terminating):
            (terminating.add if going else terminating.discard)(name)
            await wake()

    kopf.on.event(API_GROUP, API_VERSION, "computenodes", registry=registry)(wake)
    kopf.on.event(API_GROUP, API_VERSION, "agentworkloads", registry=registry)(wake)
    kopf.on.event("services", labels=MANAGED, registry=registry)(wake)


def register_discovery(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """`--discover-nodes`: Nodes with a vendor's discovery label become (and keep updating) ComputeNodes."""

    @kopf.on.event("nodes", registry=registry)
    async def discover(body: kopf.Body, name: str, type: str | None, **kwargs: Any) -> None:
        if type == "DELETED" or not reconciler.leadership.leading:
            return
        found = discovery.discover(body)
        if found is None:
            return
        if found.problem:
            log.warning("discovery: %s", found.problem)
            return
        current = _current_compute_node(kwargs.get("gf_compute_nodes"), name)
        if current is None:
            await reconciler.kube.create_compute_node(discovery.create_body(name, found))
            return
        patch = discovery.update_patch(current, found)
        if patch:
            await reconciler.kube.patch_compute_node(name, patch)


def _current_compute_node(index: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    if not index or name not in index:
        return None
    for value in index[name]:
        if isinstance(value, ComputeNode):
            body: dict[str, Any] = value.wire()
            return body
    return {"metadata": {"name": name}, "spec": {}}
