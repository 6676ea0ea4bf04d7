"""Create and patch with the API server's rules: server-owned metadata, `generateName`, AlreadyExists,
optimistic concurrency on `metadata.resourceVersion`, `generation`, the status subresource, no-op writes.
The operator and kopf depend on each: a stale resourceVersion must be a 409, a status write must not bump
`generation`, a write that changes nothing must not wake any watch."""

from __future__ import annotations

import copy
import random
import uuid
from typing import Final

import jsonpatch
import kmock

from gpufabric.api.reasons import POD_PHASE_PENDING
from gpufabric.sandbox.emulator.kmockcompat import api_error, header, merge_patch
from gpufabric.sandbox.emulator.store import (
    PODS,
    JsonDict,
    Store,
    api_version,
    details,
    group_resource,
    meta,
    now_rfc3339,
)

MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"
# kube-apiserver's name generator alphabet (no vowels, no look-alikes): lowercase alphanumerics.
GENERATE_NAME_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
OWNED_METADATA: Final = ("uid", "name", "namespace", "creationTimestamp", "deletionTimestamp",
                         "deletionGracePeriodSeconds", "generation", "resourceVersion")  # fmt: skip


def create(
    store: Store,
    resource: kmock.resource,
    info: kmock.ResourceInfo,
    request: kmock.Request,
    *,
    names: random.Random,
    is_crd: bool,
) -> JsonDict:
    """POST: uid, creationTimestamp, resourceVersion, generation 1; the namespace comes from the URL;
    `status` is dropped for a custom resource with a status subresource and reset to `phase: Pending`
    for a pod, as the API server's create strategies do."""
    if not isinstance(request.data, dict) or not isinstance(request.data.get("metadata", {}), dict):
        raise api_error(400, "BadRequest", "the body must be an object with an object `metadata`")
    obj = copy.deepcopy(request.data)
    obj_meta = obj.setdefault("metadata", {})
    namespace = _namespace_of(info, request, obj_meta)
    if namespace is None:
        obj_meta.pop("namespace", None)
    else:
        obj_meta["namespace"] = namespace
    if not obj_meta.get("name"):
        obj_meta["name"] = _generated_name(store, resource, namespace, obj_meta.get("generateName"), names)
    name = obj_meta["name"]
    if store.live(resource, namespace, name) is not None:
        message = f'{group_resource(resource)} "{name}" already exists'
        raise api_error(409, "AlreadyExists", message, **details(resource, name))
    obj.setdefault("apiVersion", api_version(resource))
    if info.kind:
        obj.setdefault("kind", info.kind)
    for owned in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
        obj_meta.pop(owned, None)
    obj_meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
    if resource == PODS:  # the pod strategy's PrepareForCreate resets the status
        obj["status"] = {"phase": POD_PHASE_PENDING}
    elif "status" in info.subresources and is_crd:  # the custom resource strategy drops it
        obj.pop("status", None)
    return copy.deepcopy(store.commit_new(resource, namespace, obj))


def _namespace_of(info: kmock.ResourceInfo, request: kmock.Request, obj_meta: JsonDict) -> str | None:
    """The URL's namespace (the body may repeat it, not contradict it); None for cluster-scoped kinds."""
    if info.namespaced is False:
        return None
    namespace: str | None = request.namespace or obj_meta.get("namespace")
    if request.namespace and obj_meta.get("namespace") not in (None, request.namespace):
        message = "the namespace of the provided object does not match the namespace sent on the request"
        raise api_error(400, "BadRequest", message)
    if info.namespaced and not namespace:
        raise api_error(400, "BadRequest", "a namespaced resource is created under /namespaces/NAMESPACE/")
    return namespace


def _generated_name(
    store: Store, resource: kmock.resource, namespace: str | None, prefix: str | None, names: random.Random
) -> str:
    """`generateName` plus five random characters, drawn again while taken (the API server retries too)."""
    if not prefix:
        raise api_error(422, "Invalid", "metadata.name: Required value: name or generateName is required")
    name = prefix + "".join(names.choices(GENERATE_NAME_ALPHABET, k=5))
    while store.live(resource, namespace, name) is not None:
        name = prefix + "".join(names.choices(GENERATE_NAME_ALPHABET, k=5))
    return name


def proposed(request: kmock.Request, current: JsonDict) -> JsonDict:
    """The object a PATCH proposes, before the server's rules apply. A strategic merge patch is applied as
    a JSON merge patch (lists are replaced, not merged by key); server-side apply is refused."""
    content_type = (header(request, "Content-Type") or MERGE_PATCH).split(";")[0].strip()
    if content_type == JSON_PATCH:
        if not isinstance(request.data, list):
            raise api_error(400, "BadRequest", "a JSON patch is a list of operations")
        try:
            result: JsonDict = jsonpatch.apply_patch(copy.deepcopy(current), request.data)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
            # kube-apiserver answers every JSON-patch application error, a failed `test` included, 422.
            message = f"the server rejected our request due to an error in our request: {e}"
            raise api_error(422, "Invalid", message) from None
        return result
    if content_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH, "application/json"):
        if not isinstance(request.data, dict):
            raise api_error(400, "BadRequest", "a merge patch is an object")
        return dict(merge_patch(copy.deepcopy(current), request.data))
    message = f"the patch type {content_type!r} is not emulated (server-side apply is not)"
    raise api_error(415, "UnsupportedMediaType", message)


def _spec_part(obj: JsonDict) -> JsonDict:
    """What `metadata.generation` tracks: everything except metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


def _keep_server_owned(current: JsonDict, new: JsonDict) -> None:
    """A write of the main resource cannot change what the server owns (uid, name, resourceVersion, …, kind),
    nor add a finalizer to an object being deleted."""
    old_meta = meta(current)
    if not isinstance(new.get("metadata"), dict):
        new["metadata"] = {}
    for owned in OWNED_METADATA:
        if owned in old_meta:
            new["metadata"][owned] = old_meta[owned]
        else:
            new["metadata"].pop(owned, None)
    for top in ("apiVersion", "kind"):
        if top in current:
            new[top] = current[top]
    added = set(meta(new).get("finalizers") or []) - set(old_meta.get("finalizers") or [])
    if old_meta.get("deletionTimestamp") and added:
        message = (
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, "
            f"found new finalizers {sorted(added)}"
        )
        raise api_error(422, "Invalid", message)


def update(
    store: Store,
    resource: kmock.resource,
    info: kmock.ResourceInfo,
    current: JsonDict,
    new_state: JsonDict,
    *,
    namespace: str | None,
    status_only: bool,
) -> JsonDict:
    """The API server's update rules for a PATCH of the main resource or of its status subresource."""
    wanted, old_meta = meta(new_state).get("resourceVersion"), meta(current)
    if wanted not in (None, "") and str(wanted) != old_meta.get("resourceVersion"):
        message = (
            f'Operation cannot be fulfilled on {group_resource(resource)} "{old_meta.get("name")}": the object has '
            "been modified; please apply your changes to the latest version and try again"
        )
        raise api_error(409, "Conflict", message, **details(resource, old_meta.get("name")))
    new = copy.deepcopy(current if status_only else new_state)
    if status_only or "status" in info.subresources:  # /status changes only status; the rest keeps it
        source = new_state if status_only else current
        if "status" in source:
            new["status"] = copy.deepcopy(source["status"])
        else:
            new.pop("status", None)
    if not status_only:
        _keep_server_owned(current, new)
    if new == current:  # a no-op write commits nothing: same resourceVersion, no event
        return copy.deepcopy(current)
    if _spec_part(new) != _spec_part(current):
        meta(new)["generation"] = int(old_meta.get("generation", 1)) + 1
    return copy.deepcopy(store.commit_update(resource, namespace, current, new))
