"""`FabricEmulator`: what it serves (kmock's built-ins and the operator's CRDs), routing of each request to
the module that owns its semantics, reads, and the in-process views tests assert on."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import attrs
import kmock
import yaml

from gpufabric.api import crdgen
from gpufabric.sandbox.emulator import deletion, watch, writes
from gpufabric.sandbox.emulator.client import HarnessClient, ResourceRef, as_resource, is_harness
from gpufabric.sandbox.emulator.faults import FaultPlan, inject, watch_drop_at
from gpufabric.sandbox.emulator.kmockcompat import WRITE_METHODS, CompatEmulator, api_error, created, load_bundled
from gpufabric.sandbox.emulator.selectors import (
    POD_FIELDS,
    FieldMatcher,
    LabelMatcher,
    parse_field_selector,
    parse_label_selector,
)
from gpufabric.sandbox.emulator.store import (
    PODS,
    JsonDict,
    Store,
    api_version,
    details,
    group_resource,
    labels,
    now_rfc3339,
)

CRD_VERBS: Final = frozenset({"list", "watch", "get", "create", "patch", "update", "delete", "deletecollection"})
CRD_RESOURCE: Final = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
CRD_CONDITIONS: Final = (
    ("NamesAccepted", "NoConflicts", "no conflicts found"),
    ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
)


def _not_found(resource: kmock.resource, name: str | None) -> kmock.KubernetesError:
    return api_error(404, "NotFound", f'{group_resource(resource)} "{name}" not found', **details(resource, name))


@attrs.define(kw_only=True)
class FabricEmulator(CompatEmulator, HarnessClient):
    """kmock's Kubernetes emulator with the API server semantics the GPU Fabric Operator depends on.

    Use inside `async with FabricEmulator() as emulator, kmock.Server(emulator): ...`; `emulator.url` is
    then the API server URL. Objects are in `emulator.objects[resource, namespace, name]` (kmock's view,
    with history); `emulator.requests`-style views come from kmock's DSL (`list(emulator)` is every request).

    Unlike the parent, `emulator.errors` collects only unexpected exceptions (bugs in the emulator or in a
    DSL reaction), not the API errors it answers on purpose (404, 409…), so tests can assert it is empty.
    """

    # The CRDs it serves: generated from the API models (what `gpufabric crds` writes to crds/), unless a
    # directory of CRD files is given.
    crds_dir: Path | None = None
    faults: FaultPlan | None = None
    # How many past events a watch can resume over; older resourceVersions get 410 Expired, as after
    # etcd compaction.
    history_limit: int = 100_000
    # Seed for generateName suffixes, so generated names repeat from run to run.
    name_seed: int = 0
    injected: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    _store: Store = attrs.field(init=False)
    _names: random.Random = attrs.field(init=False)
    _crd_resources: set[kmock.resource] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._names = random.Random(self.name_seed)
        self._store = Store(self.objects, self.history_limit)
        self._store.on_removed = lambda uid: deletion.collect_garbage(self._store, uid)
        # kmock 0.8's bundle has every built-in the operator, kopf and the kubernetes client use (namespaces,
        # nodes, pods, services, events, configmaps, leases, CRDs); test_emulator's discovery test checks it.
        load_bundled(self.resources)
        for crd in self._crds():
            self._install_crd(crd)

    def _crds(self) -> list[JsonDict]:
        if self.crds_dir is None:
            return list(crdgen.all_definitions().values())
        documents = (d for p in sorted(self.crds_dir.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()))
        return [d for d in documents if d and d.get("kind") == "CustomResourceDefinition"]

    def _install_crd(self, crd: JsonDict) -> None:
        """Declare the CRD's served versions in discovery and store the CRD object itself, Established
        (kopf lists and watches CRDs)."""
        spec, names = crd["spec"], crd["spec"]["names"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            resource = kmock.resource(spec["group"], version["name"], names["plural"])
            self.resources[resource] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()),
                namespaced=spec["scope"] == "Namespaced",
                verbs=CRD_VERBS,
                shortnames=names.get("shortNames", []),
                categories=names.get("categories", []),
                subresources=set(version.get("subresources") or {}),
            )
            self._crd_resources.add(resource)
        stored = copy.deepcopy(crd)
        stored["status"] = {
            "acceptedNames": copy.deepcopy(names),
            "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now_rfc3339()}
                for t, r, m in CRD_CONDITIONS
            ],
        }
        self._store.commit_new(CRD_RESOURCE, None, stored)

    # ---- in-process views (no request, nothing in the request log) ---------------------------------------

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion (what a LIST now would carry)."""
        return self._store.resource_version

    def live_objects(self, resource: ResourceRef, namespace: str | None = None) -> list[JsonDict]:
        """Deep copies of the live objects of a resource (all namespaces if None), by namespace and name."""
        return [copy.deepcopy(obj) for _, obj in self._store.live_items(as_resource(resource), namespace)]

    def get_object(self, resource: ResourceRef, name: str, namespace: str | None = None) -> JsonDict | None:
        """A deep copy of one live object, or None."""
        obj = self._store.live(as_resource(resource), namespace, name)
        return None if obj is None else copy.deepcopy(obj)

    def writes(self, resource_plural: str | None = None, *, ok_only: bool = False) -> list[kmock.Request]:
        """The operator's write requests (POST/PATCH/PUT/DELETE without `X-Harness: 1`), oldest first,
        for one resource plural (e.g. "pods") or all. Refused ones (faults, conflicts) are included unless
        `ok_only`."""
        return [
            request
            for request in self._requests
            if request.method.value in WRITE_METHODS
            and request.resource is not None
            and request.resource.plural is not None
            and not is_harness(request)
            and (resource_plural is None or request.resource.plural == resource_plural)
            and not (ok_only and self.refused(request))
        ]

    # ---- requests ----------------------------------------------------------------------------------------

    def _admit(self, request: kmock.Request) -> None:
        if self.faults is not None and not is_harness(request):
            inject(self.faults, request, write=request.method.value in WRITE_METHODS, injected=self.injected)

    def _target(self, request: kmock.Request) -> tuple[kmock.resource, kmock.ResourceInfo, str | None]:
        """The request's resource (404 unless served), its discovery info, its namespace (None if cluster-wide)."""
        resource = request.resource
        if resource is None or resource.plural is None or resource not in self._get_resources():
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        info = self.resources[resource]
        return resource, info, request.namespace if info.namespaced is not False else None

    def _write(self, request: kmock.Request) -> kmock.Payload:
        """Route a write; the subresources served are `status` only (`scale` and the rest answer 404)."""
        if "dryRun" in request.params:
            raise api_error(400, "BadRequest", "dryRun is not emulated by FabricEmulator")
        (resource, info, namespace), method = self._target(request), request.method.value
        if info.namespaced and request.name is not None and namespace is None:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        if request.subresource is not None and (request.subresource != "status" or "status" not in info.subresources):
            raise api_error(
                404, "NotFound", f"the server could not find the requested resource ({request.subresource})"
            )
        if method == "PUT":
            raise api_error(405, "MethodNotAllowed", "PUT (replace) is not emulated by FabricEmulator: patch instead")
        is_crd = resource in self._crd_resources
        if method == "POST" and request.name is None:
            return created(writes.create(self._store, resource, info, request, names=self._names, is_crd=is_crd))
        if request.name is None:
            raise api_error(405, "MethodNotAllowed", f"{method} on a collection is not emulated")
        current = self._store.live(resource, namespace, request.name)
        if current is None:
            raise _not_found(resource, request.name)
        if method == "POST":
            raise api_error(405, "MethodNotAllowed", f"POST to {request.subresource or 'an object'} is not emulated")
        if method == "DELETE":
            if request.subresource is not None:
                raise api_error(405, "MethodNotAllowed", "DELETE on a subresource")
            answer, removed = deletion.delete(self._store, resource, namespace, current, request)
            return deletion.removed_status(resource, answer) if removed and resource != PODS and not is_crd else answer
        proposed = writes.proposed(request, current)
        status_only = request.subresource == "status"
        return writes.update(
            self._store, resource, info, current, proposed, namespace=namespace, status_only=status_only
        )

    def _label_selector(self, request: kmock.Request) -> LabelMatcher:
        try:
            return parse_label_selector(request.params.get("labelSelector", ""))
        except ValueError as e:
            raise api_error(400, "BadRequest", f"unable to parse selector: {e}") from None

    def _field_selector(self, request: kmock.Request, resource: kmock.resource) -> FieldMatcher:
        selectable = POD_FIELDS if resource == PODS else frozenset()
        try:
            return parse_field_selector(request.params.get("fieldSelector", ""), selectable)
        except ValueError as e:
            raise api_error(400, "BadRequest", str(e)) from None

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        """Every matching object in one page (`limit` is ignored, `continue` never set), sorted by
        namespace and name as etcd's key order is, with the current global resourceVersion."""
        resource, info, namespace = self._target(request)
        if request.params.get("watch", "false") not in ("false", "0"):
            # kmock routes only watch=true to the watch; the API server takes any ParseBool spelling. Refused
            # rather than answered with a LIST (a client would read it as a watch that ended at once).
            raise api_error(400, "BadRequest", "watch must be spelled watch=true for FabricEmulator")
        matches = self._label_selector(request)
        fields = self._field_selector(request, resource)
        return {
            "apiVersion": api_version(resource),
            "kind": f"{info.kind or 'Object'}List",
            "metadata": {"resourceVersion": self._store.resource_version},
            "items": [
                copy.deepcopy(obj)
                for _, obj in self._store.live_items(resource, namespace)
                if matches(labels(obj)) and fields(obj)
            ],
        }

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        resource, info, namespace = self._target(request)
        obj = self._store.live(resource, namespace, request.name)
        if obj is None:
            raise _not_found(resource, request.name)
        if request.subresource is None or (request.subresource == "status" and "status" in info.subresources):
            return copy.deepcopy(obj)
        raise api_error(404, "NotFound", f"the server could not find the requested resource ({request.subresource})")

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        """See `watch.stream`; a named object (`.../NAME?watch=true`) can be watched too."""
        resource, _, namespace = self._target(request)
        watcher = watch.Watcher(
            resource, namespace, request.name, self._label_selector(request), self._field_selector(request, resource)
        )
        drop_at = None
        if self.faults is not None and not is_harness(request):
            drop_at = watch_drop_at(self.faults, asyncio.get_running_loop().time())

        def dropped() -> None:
            self.injected["watch_drop"] += 1

        events = watch.stream(self._store, watcher, request.params, drop_at=drop_at, on_drop=dropped)
        async with contextlib.aclosing(events):  # a stream closed early unsubscribes at once
            async for event in events:
                yield event
