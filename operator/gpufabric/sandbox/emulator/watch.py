"""Watch streams: the initial events (or a replay from `?resourceVersion=`), then live changes, as the
objects' selectors see them. kopf resumes every watch from the last resourceVersion it saw, so a resumed
watch must replay exactly the events it missed, and a selector watch must show an object that starts or
stops matching as ADDED or DELETED, as the API server's watch cache does."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import kmock

from gpufabric.sandbox.emulator.kmockcompat import api_error
from gpufabric.sandbox.emulator.selectors import FieldMatcher, LabelMatcher
from gpufabric.sandbox.emulator.store import JsonDict, Store, WatchEvent, labels, meta


@dataclasses.dataclass
class Watcher:
    """One watch request: what it selects, and the committed events waiting to be sent."""

    resource: kmock.resource
    namespace: str | None
    name: str | None
    labels: LabelMatcher
    fields: FieldMatcher = lambda obj: True
    queue: asyncio.Queue[WatchEvent] = dataclasses.field(default_factory=asyncio.Queue)

    def sees(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        obj_meta = meta(obj)
        return (
            (self.namespace is None or obj_meta.get("namespace") == self.namespace)
            and (self.name is None or obj_meta.get("name") == self.name)
            and self.labels(labels(obj))
            and self.fields(obj)
        )

    def offer(self, event: WatchEvent) -> None:
        if event.resource == self.resource:
            self.queue.put_nowait(event)

    def translate(self, event: WatchEvent) -> JsonDict | None:
        """The event as this watch sees it through its selectors (apiserver's watch cache does the same)."""
        now, before = self.sees(event.obj), self.sees(event.old)
        if event.type == "MODIFIED":
            kind = "MODIFIED" if now and before else "ADDED" if now else "DELETED" if before else None
        else:
            kind = event.type if now else None
        return None if kind is None else {"type": kind, "object": event.obj}


def _initial(store: Store, watcher: Watcher, since: str) -> list[JsonDict]:
    if since in ("", "0"):
        items = store.live_items(watcher.resource, watcher.namespace)
        return [{"type": "ADDED", "object": copy.deepcopy(obj)} for _, obj in items if watcher.sees(obj)]
    if not since.isdigit():
        raise api_error(400, "BadRequest", f"invalid resourceVersion {since!r}")
    if int(since) < store.compacted_rv:
        expired = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 410}
        expired |= {"reason": "Expired", "message": f"too old resource version: {since} ({store.compacted_rv})"}
        return [{"type": "ERROR", "object": expired}]
    replay = (
        watcher.translate(event) for event in store.log if event.resource == watcher.resource and event.rv > int(since)
    )
    return [event for event in replay if event is not None]


async def stream(
    store: Store,
    watcher: Watcher,
    params: Mapping[str, str],
    *,
    drop_at: float | None,
    on_drop: Callable[[], None],
) -> AsyncGenerator[JsonDict | bytes, None]:
    """A watch stream of JSON lines.

    Without `resourceVersion` (or with "0") it starts with an ADDED event per existing object, then
    streams live; with one, it replays the committed events after it, then streams live; one older
    than the retained history gets an ERROR event with 410 Expired, as after compaction. It ends
    cleanly after `timeoutSeconds`, or at `drop_at` (loop time; then `on_drop()` is called) if earlier.
    Bookmarks are not sent (they are optional); `sendInitialEvents` (kopf's opt-in initial streaming,
    which waits for one) is refused.
    """
    if "sendInitialEvents" in params:
        raise api_error(400, "BadRequest", "sendInitialEvents is not emulated by FabricEmulator")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(params["timeoutSeconds"]) if "timeoutSeconds" in params else None
    dropping = drop_at is not None and (deadline is None or drop_at < deadline)
    if dropping:
        deadline = drop_at
    # The initial part and the subscription happen with no await in between: nothing is missed.
    initial = _initial(store, watcher, params.get("resourceVersion", ""))
    listener = watcher.offer
    store.listeners.append(listener)
    try:
        yield b""  # send the headers now: a quiet watch must still look connected
        for event in initial:
            yield event
        if initial and initial[-1]["type"] == "ERROR":
            return
        while True:
            timeout = None if deadline is None else deadline - loop.time()
            if timeout is not None and timeout <= 0:
                break
            try:
                change = await asyncio.wait_for(watcher.queue.get(), timeout=timeout)
            except TimeoutError:
                break
            translated = watcher.translate(change)
            if translated is not None:
                yield translated
        if dropping:
            on_drop()
    finally:
        store.listeners.remove(listener)
