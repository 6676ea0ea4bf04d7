"""DELETE and the garbage collector: pods terminate gracefully (a kubelet confirms), finalizers hold an
object, and dependents named by `ownerReferences` follow their owner (background propagation, done in the
request that removes the owner instead of eventually). The operator relies on all three: it deletes pods
and Services and leaves the rest of a workload's objects to the garbage collector."""

from __future__ import annotations

import copy
from typing import Final

import kmock

from gpufabric.sandbox.emulator.kmockcompat import api_error
from gpufabric.sandbox.emulator.store import PODS, JsonDict, Store, details, meta, now_rfc3339

DEFAULT_POD_GRACE_SECONDS: Final = 30


def delete(
    store: Store, resource: kmock.resource, namespace: str | None, current: JsonDict, request: kmock.Request
) -> tuple[JsonDict, bool]:
    """A DELETE request, with DeleteOptions from the query or the body: `gracePeriodSeconds`,
    `preconditions`, `propagationPolicy` Background or Foreground (both done as Background; Orphan is not
    emulated). Returns what `delete_object` does."""
    options = request.data if isinstance(request.data, dict) else {}
    grace_text = request.params.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
    policy = str(request.params.get("propagationPolicy", options.get("propagationPolicy")) or "Background")
    preconditions = options.get("preconditions") or {}
    for field in ("uid", "resourceVersion"):
        wanted, actual = preconditions.get(field), meta(current).get(field)
        if wanted not in (None, actual):
            raise api_error(409, "Conflict", f"Precondition failed: {field}: {wanted}, actual: {actual}")
    try:
        grace = None if grace_text is None else int(grace_text)
    except ValueError:
        raise api_error(400, "BadRequest", f"invalid gracePeriodSeconds {grace_text!r}") from None
    if policy not in ("Background", "Foreground"):
        raise api_error(400, "BadRequest", f"propagationPolicy {policy!r} is not emulated by FabricEmulator")
    return delete_object(store, resource, namespace, current, grace=grace)


def removed_status(resource: kmock.resource, obj: JsonDict) -> JsonDict:
    """What DELETE answers for a removed built-in other than a pod (their stores return a Status)."""
    status_details = details(resource, meta(obj).get("name")) | {"uid": meta(obj).get("uid")}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": status_details}


def delete_object(
    store: Store, resource: kmock.resource, namespace: str | None, current: JsonDict, *, grace: int | None
) -> tuple[JsonDict, bool]:
    """DELETE's effect, also the garbage collector's: (a copy of the object, whether it is removed now).

    Pods are deleted gracefully (the kubelet finishes them) unless the grace period is 0, the pod was never
    scheduled, or it already terminated: the pod strategy's CheckGracefulDelete. Anything with finalizers
    is only marked.
    """
    old_meta, new = meta(current), copy.deepcopy(current)
    if old_meta.get("deletionTimestamp"):
        # Already terminating: only a shorter grace period (a force delete) changes anything.
        if not (resource == PODS and grace == 0 and old_meta.get("deletionGracePeriodSeconds")):
            return new, False
        meta(new)["deletionGracePeriodSeconds"] = 0
    elif (
        resource == PODS
        and grace != 0
        and (current.get("spec") or {}).get("nodeName")
        and ((current.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
    ):
        default = (current.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_POD_GRACE_SECONDS)
        period = default if grace is None else grace
        # As in the API server: the pod's deletionTimestamp is when its grace period runs out.
        meta(new).update(deletionTimestamp=now_rfc3339(period), deletionGracePeriodSeconds=int(period))
    elif old_meta.get("finalizers"):
        meta(new).update(deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0)
    else:
        return copy.deepcopy(store.remove(resource, namespace, current, current)), True
    return copy.deepcopy(store.commit_update(resource, namespace, current, new)), False


def collect_garbage(store: Store, owner_uid: str | None) -> None:
    """The garbage collector's reaction to a removed owner, at once instead of eventually.

    A dependent whose ownerReferences name no other live owner is deleted as by DELETE with background
    propagation (pods gracefully, finalizers respected; its own dependents follow when it is removed). A
    dependent with another live owner only loses the dangling references, as the real collector patches
    them away.
    """
    if not owner_uid:
        return
    dependents = [
        key
        for key, obj in store.live_items(None)
        if any(ref.get("uid") == owner_uid for ref in meta(obj).get("ownerReferences") or [])
    ]
    for resource, namespace, name in dependents:
        current = store.live(resource, namespace, name)
        if current is None:  # removed meanwhile by a cascade from an earlier dependent
            continue
        live_uids = {meta(obj).get("uid") for _, obj in store.live_items(None)}
        refs = meta(current).get("ownerReferences") or []
        kept = [ref for ref in refs if ref.get("uid") != owner_uid and ref.get("uid") in live_uids]
        if kept:
            new = copy.deepcopy(current)
            meta(new)["ownerReferences"] = kept
            store.commit_update(resource, namespace, current, new)
        else:
            delete_object(store, resource, namespace, current, grace=None)
