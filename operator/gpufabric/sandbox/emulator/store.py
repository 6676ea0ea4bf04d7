"""Storage with the API server's bookkeeping: one global resourceVersion, bumped by every write and
stored in the object (like etcd's revision); a bounded log of committed events that watches resume from
(older resourceVersions are "compacted"); removal, after which the garbage collector runs. Also the
object helpers every module shares.

Objects live in kmock's `ObjectsArray` (the emulator's `objects`, with per-object history for test
assertions), but only `Store` changes it, so resourceVersions, history and events always agree. Every
method is synchronous, hence atomic for the event loop without locks."""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime
from collections.abc import Callable, Mapping
from typing import Any, Final

import kmock

JsonDict = dict[str, Any]
ObjectKey = tuple[kmock.resource, str | None, str]  # resource, namespace (None if cluster-scoped), name

PODS: Final = kmock.resource("", "v1", "pods")
NODES: Final = kmock.resource("", "v1", "nodes")


def now_rfc3339(delta_seconds: float = 0) -> str:
    """RFC 3339 in UTC with a `Z`, at second precision: how the API server writes metav1.Time."""
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=delta_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(obj: Mapping[str, Any]) -> JsonDict:
    found = obj.get("metadata")
    return found if isinstance(found, dict) else {}


def labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    found = meta(obj).get("labels")
    return found if isinstance(found, Mapping) else {}


def api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


def group_resource(resource: kmock.resource) -> str:
    """`pods`, `computenodes.gpufabric.io`: how the API server names a resource in its messages."""
    return f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)


def details(resource: kmock.resource, name: Any) -> JsonDict:
    """The `details` of a Status about one object."""
    return {"name": name, "group": resource.group, "kind": resource.plural}


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    """One committed change, kept for watches that resume from a resourceVersion."""

    rv: int
    resource: kmock.resource
    type: str  # ADDED, MODIFIED, DELETED
    obj: JsonDict
    old: JsonDict | None  # the state before, so selector watches can see objects leave and enter


class Store:
    def __init__(self, objects: kmock.ObjectsArray, history_limit: int) -> None:
        self.objects = objects
        self.rv = 0
        self.log: collections.deque[WatchEvent] = collections.deque(maxlen=history_limit)
        self.compacted_rv = 0  # a watch from a resourceVersion below this one gets 410 Expired
        self.listeners: list[Callable[[WatchEvent], None]] = []  # the live watches
        self.on_removed: Callable[[str | None], None] = lambda uid: None  # the garbage collector

    @property
    def resource_version(self) -> str:
        return str(self.rv)

    def live(self, resource: kmock.resource, namespace: str | None, name: str | None) -> JsonDict | None:
        """The stored object (not a copy), or None if absent or removed."""
        if name is None or (resource, namespace, name) not in self.objects:
            return None
        obj = self.objects[resource, namespace, name]
        return None if obj.deleted else obj.raw

    def live_items(
        self, resource: kmock.resource | None, namespace: str | None = None
    ) -> list[tuple[ObjectKey, JsonDict]]:
        """The live objects of a resource (all if None) in a namespace (all if None), in etcd's key order."""
        items = [
            ((res, ns, name), obj.raw)
            for (res, ns, name), obj in self.objects.items()
            if not obj.deleted and (resource is None or res == resource) and (namespace is None or ns == namespace)
        ]
        return sorted(items, key=lambda item: (str(item[0][0]), item[0][1] or "", item[0][2]))

    def _commit(self, resource: kmock.resource, kind: str, obj: JsonDict, old: JsonDict | None) -> None:
        if self.log.maxlen is not None and len(self.log) == self.log.maxlen:
            self.compacted_rv = self.log[0].rv
        event = WatchEvent(rv=int(meta(obj)["resourceVersion"]), resource=resource, type=kind, obj=obj, old=old)
        self.log.append(event)
        for listener in self.listeners:
            listener(event)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def commit_new(self, resource: kmock.resource, namespace: str | None, obj: JsonDict) -> JsonDict:
        obj.setdefault("metadata", {})["resourceVersion"] = self._next_rv()
        key = (resource, namespace, meta(obj)["name"])
        if key in self.objects:
            self.objects[key].history.append(obj)  # a re-creation continues the name's history, as in kmock
        else:
            self.objects[key] = obj
        self._commit(resource, "ADDED", obj, None)
        return obj

    def commit_update(self, resource: kmock.resource, namespace: str | None, old: JsonDict, new: JsonDict) -> JsonDict:
        """Store a changed object; if it is terminating, released by its finalizers and not waiting for a
        kubelet (deletionGracePeriodSeconds 0), remove it instead: the API server does this in the same
        update, so watchers see one DELETED, not MODIFIED then DELETED."""
        new_meta = meta(new)
        new_meta["resourceVersion"] = self._next_rv()
        self.objects[resource, namespace, new_meta["name"]].history.append(new)
        releasing = not new_meta.get("finalizers") and not new_meta.get("deletionGracePeriodSeconds")
        if new_meta.get("deletionTimestamp") and releasing:
            return self.remove(resource, namespace, new, old, bump=False)
        self._commit(resource, "MODIFIED", new, old)
        return new

    def remove(
        self, resource: kmock.resource, namespace: str | None, obj: JsonDict, old: JsonDict | None, *, bump: bool = True
    ) -> JsonDict:
        """Remove from storage (the DELETED event carries the deletion's own resourceVersion), then let
        the garbage collector handle what the object owned."""
        if bump:
            obj = copy.deepcopy(obj)
            meta(obj)["resourceVersion"] = self._next_rv()
            self.objects[resource, namespace, meta(obj)["name"]].history.append(obj)
        self.objects[resource, namespace, meta(obj)["name"]].delete()
        self._commit(resource, "DELETED", obj, old)
        self.on_removed(meta(obj).get("uid"))
        return obj
