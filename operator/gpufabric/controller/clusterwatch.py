"""What the operator does not own but must count, watched cluster-wide: pods of others that hold
accelerators, and DRA's ResourceSlices and ResourceClaims (resource.k8s.io/v1).

Not through kopf: kopf watches a resource once, with one label selector, and the operator's own pods are
watched through the managed-by selector (at 5,000 unrelated pods that selector is the difference between 10
and 27 CPU-seconds). Others' pods come from a second LIST+WATCH of its own, narrowed by the API server to bound,
non-terminal pods not ours (field and label selectors), and by the operator before parsing: a watch event
whose bytes name none of the accelerator resources is skipped unparsed (its resourceVersion is all that is
read). Of each pod that asks for accelerators, only (Node, resource, quantity) is kept.

Each collection is LISTed in pages, then WATCHed from the list's resourceVersion with bookmarks; a 410
(history compacted) or a change of the accelerator resources to look for relists. A 403 (the grant is
missing) is said once and the collection counts as unknown; a 404 (the API server does not serve DRA's v1)
counts as "nothing published". The same credentials as kopf's (its login handler), read again after a 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import re
import ssl
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

import aiohttp
import kopf

from gpufabric.reconcile.devices import OTHERS_FIELD_SELECTOR, OTHERS_LABEL_SELECTOR, VENDOR_RESOURCES
from gpufabric.reconcile.observe import foreign_pod, resource_claim, resource_slice
from gpufabric.reconcile.state import (
    DraInventory,
    ForeignPod,
    ResourceClaimRecord,
    ResourceSliceRecord,
    foreign_requests,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Bound, not finished, not ours (the API server evaluates both selectors; pods support these fields).
OTHERS_PODS = {"fieldSelector": OTHERS_FIELD_SELECTOR, "labelSelector": OTHERS_LABEL_SELECTOR}
DRA_API = "/apis/resource.k8s.io/v1"
PAGE_SIZE = 500
# A watch is ended by the server after this long and resumed from its last resourceVersion (client-go picks
# 5-10 minutes at random, so that watches do not all reconnect at once).
WATCH_SECONDS = (300, 600)
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
FORBIDDEN_RETRY = 60.0  # a missing grant may be added: look again now and then
NOT_SERVED_RETRY = 300.0
_RESOURCE_VERSION = re.compile(rb'"resourceVersion": ?"(\d+)"')
DEFAULT_RESOURCES = VENDOR_RESOURCES

Login = Callable[..., Any]  # kopf's login handler: returns (or awaits to) a kopf.ConnectionInfo


class Known(StrEnum):
    STARTING = "starting"
    SYNCED = "synced"
    FORBIDDEN = "forbidden"  # the operator may not list it: unknown
    NOT_SERVED = "not served"  # the API server has no such resource: nothing published
    FAILING = "failing"  # listed before, the connection is failing now: the last list stands


class RefusedError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


class ExpiredError(Exception):
    """The resourceVersion is too old (410): list again."""


class Connection:
    """An aiohttp session from kopf's login: the operator's one identity for reads too."""

    def __init__(self, login: Login) -> None:
        self._login = login
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._files: list[Path] = []

    async def session(self) -> tuple[aiohttp.ClientSession, str]:
        if self._session is None or self._session.closed:
            info = self._login(logger=log)
            if inspect.isawaitable(info):
                info = await info
            assert isinstance(info, kopf.ConnectionInfo), "the login handler must return a kopf.ConnectionInfo"
            self._server = info.server.rstrip("/")
            self._session = aiohttp.ClientSession(
                headers=_authorization(info),
                auth=aiohttp.BasicAuth(info.username, info.password or "") if info.username else None,
                connector=aiohttp.TCPConnector(ssl=self._ssl(info) if self._server.startswith("https") else False),
            )
        return self._session, self._server

    async def renew(self) -> None:
        """After a 401: the next request logs in again (a rotated token, a refreshed exec credential)."""
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files.clear()

    def _ssl(self, info: kopf.ConnectionInfo) -> ssl.SSLContext:
        ca_data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        context = ssl.create_default_context(cafile=info.ca_path, cadata=ca_data)
        if info.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        certificate = info.certificate_path or self._file(info.certificate_data)
        key = info.private_key_path or self._file(info.private_key_data)
        if certificate:
            context.load_cert_chain(certificate, key)
        return context

    def _file(self, data: str | bytes | None) -> str | None:
        """ssl loads client certificates only from files: a private temporary one, removed on close."""
        if data is None:
            return None
        with tempfile.NamedTemporaryFile("wb", prefix="gpufabric-", delete=False) as handle:
            handle.write(data if isinstance(data, bytes) else data.encode())
        self._files.append(Path(handle.name))
        return handle.name


def _authorization(info: kopf.ConnectionInfo) -> dict[str, str]:
    if info.token:
        return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
    return {"Authorization": info.scheme} if info.scheme else {}


@dataclass(frozen=True)
class Collection(Generic[T]):
    what: str  # in log lines: "pods of others"
    path: str  # /api/v1/pods
    parse: Callable[[Mapping[str, Any]], T | None]  # None: nothing to keep of this object
    params: Mapping[str, str]
    # bytes a watch event must contain to be worth parsing (none: every event is parsed)
    needles: tuple[bytes, ...] = ()


class ListWatch(Generic[T]):
    """One collection, listed then watched; `items` by namespace/name, only what `parse` keeps."""

    def __init__(self, connection: Connection, collection: Collection[T], on_change: Callable[[], None]) -> None:
        self.connection = connection
        self.collection = collection
        self.on_change = on_change
        self.items: dict[str, T] = {}
        self.known = Known.STARTING
        self.first_outcome = asyncio.Event()
        self._restart = asyncio.Event()

    def restart(self, collection: Collection[T]) -> None:
        """List again with new parameters (the resources to look for changed)."""
        self.collection = collection
        self._restart.set()

    async def run(self, stop: asyncio.Event) -> None:
        delay = RETRY_FIRST
        while not stop.is_set():
            self._restart.clear()
            try:
                version = await self._list()
                delay = RETRY_FIRST
                await self._watch_until(version, stop)
                continue
            except ExpiredError:
                continue
            except RefusedError as refused:
                if refused.status == 401:
                    await self.connection.renew()  # a rotated token: log in again
                wait = RETRY_FIRST if refused.status == 401 else self._refused(refused)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
                if self.known is not Known.STARTING:
                    self.known = Known.FAILING
                log.info("watch of %s: %s; again in %.0fs", self.collection.what, error or type(error).__name__, delay)
                wait, delay = delay * (0.5 + random.random()), min(delay * 2, RETRY_MAX)
            self.first_outcome.set()
            await _sleep(wait, stop, self._restart)

    def _refused(self, refused: RefusedError) -> float:
        was = self.known
        if refused.status == 403:
            self.known = Known.FORBIDDEN
            if was is not Known.FORBIDDEN:
                log.warning(
                    "cannot list %s (%s): they are not counted until the operator may list and watch them",
                    self.collection.what,
                    refused.message,
                )
            wait = FORBIDDEN_RETRY
        elif refused.status == 404:
            self.known = Known.NOT_SERVED
            if was is not Known.NOT_SERVED:
                log.info("the API server does not serve %s: none counted", self.collection.what)
            wait = NOT_SERVED_RETRY
        else:
            self.known = Known.FAILING if was is not Known.STARTING else was
            log.warning("watch of %s refused: %s", self.collection.what, refused)
            wait = RETRY_MAX
        if self.items and self.known is not Known.FAILING:
            self.items = {}
            self.on_change()
        return wait

    async def _get(self, params: Mapping[str, str]) -> aiohttp.ClientResponse:
        session, server = await self.connection.session()
        query = urlencode({**self.collection.params, **params})
        response = await session.get(
            f"{server}{self.collection.path}?{query}",
            timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=WATCH_SECONDS[1] + 30),
        )
        if response.status != 200:
            text = (await response.text())[:300]
            response.release()
            raise RefusedError(response.status, _message(text))
        return response

    async def _list(self) -> str:
        items: dict[str, T] = {}
        token = ""
        while True:
            params = {"limit": str(PAGE_SIZE)} | ({"continue": token} if token else {})
            try:
                response = await self._get(params)
            except RefusedError as refused:
                if refused.status == 410:
                    raise ExpiredError from None  # the continue token expired: start over
                raise
            async with response:
                page = json.loads(await response.read())
            for body in page.get("items") or []:
                self._keep(items, body)
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                break
        self.items = items
        self.known = Known.SYNCED
        self.first_outcome.set()
        self.on_change()
        return str((page.get("metadata") or {}).get("resourceVersion") or "")

    def _keep(self, items: dict[str, T], body: Mapping[str, Any]) -> bool:
        """Store what `parse` keeps of `body`; whether anything changed."""
        meta = body.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else str(meta.get("name"))
        record = self.collection.parse(body)
        if record is None:
            return items.pop(key, None) is not None
        changed = items.get(key) != record
        items[key] = record
        return changed

    async def _watch_until(self, version: str, stop: asyncio.Event) -> None:
        """Watch until `stop` or a restart; the watch's own errors are raised."""
        watching = asyncio.ensure_future(self._watch(version))
        ended = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._restart.wait())]
        try:
            await asyncio.wait([watching, *ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in ended:
                waiter.cancel()
            if not watching.done():
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
        if watching.done() and not watching.cancelled():
            watching.result()

    async def _watch(self, version: str) -> None:
        """Watch after watch (the server ends each after timeoutSeconds), each from the last version seen."""
        while True:
            seconds = random.randint(*WATCH_SECONDS)
            params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(seconds)}
            started = asyncio.get_running_loop().time()
            response = await self._get(params | ({"resourceVersion": version} if version else {}))
            async with response:
                buffer = b""
                # Lines by hand: aiohttp's readline refuses lines past 64 KiB, and a pod can be larger.
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        version = self._event(line) or version
            if asyncio.get_running_loop().time() - started < 1.0:
                await asyncio.sleep(1.0)  # a server ending watches at once must not get them in a busy loop

    def _event(self, line: bytes) -> str | None:
        """Apply one watch event; the resourceVersion to resume from."""
        if not line.strip():
            return None
        head = line[:40]
        if b'"BOOKMARK"' not in head and b'"ERROR"' not in head:
            needles = self.collection.needles
            if needles and not any(needle in line for needle in needles):
                found = _RESOURCE_VERSION.search(line)
                return found.group(1).decode() if found else None
        event = json.loads(line)
        body = event.get("object") or {}
        kind = event.get("type")
        if kind == "ERROR":
            if body.get("code") == 410:
                raise ExpiredError
            raise RefusedError(int(body.get("code") or 500), str(body.get("message") or "watch error"))
        if kind == "DELETED":
            meta = body.get("metadata") or {}
            key = f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else str(meta.get("name"))
            if self.items.pop(key, None) is not None:
                self.on_change()
        elif kind in ("ADDED", "MODIFIED") and self._keep(self.items, body):
            self.on_change()
        return str((body.get("metadata") or {}).get("resourceVersion") or "") or None


def _message(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()
    return str(body.get("message") or text) if isinstance(body, dict) else text


async def _sleep(seconds: float, *events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def pods_of_others(resources: Iterable[str]) -> Collection[ForeignPod]:
    wanted = frozenset(resources)
    return Collection(
        "pods of others",
        "/api/v1/pods",
        lambda body: foreign_pod(body, wanted),
        OTHERS_PODS,
        needles=tuple(sorted(f'"{name}"'.encode() for name in wanted)),
    )


SLICES: Collection[ResourceSliceRecord] = Collection(
    "DRA ResourceSlices", f"{DRA_API}/resourceslices", resource_slice, {}
)
# Claims are parsed whole: one whose allocation was removed has nothing to look for in its bytes.
CLAIMS: Collection[ResourceClaimRecord] = Collection(
    "DRA ResourceClaims", f"{DRA_API}/resourceclaims", resource_claim, {}
)


class Others:
    """Others' pods and DRA's objects, for the reconciler: what each pass counts as held by others."""

    def __init__(self, login: Login, on_change: Callable[[], None]) -> None:
        self.connection = Connection(login)
        self.resources = DEFAULT_RESOURCES
        self.pods = ListWatch(self.connection, pods_of_others(self.resources), on_change)
        self.slices = ListWatch(self.connection, SLICES, on_change)
        self.claims = ListWatch(self.connection, CLAIMS, on_change)

    def look_for(self, resources: Iterable[str]) -> None:
        """Count these accelerator resources too (a ComputeNode with its own `resourceName`): list again."""
        wanted = self.resources | frozenset(resources)
        if wanted != self.resources:
            self.resources = wanted
            self.pods.restart(pods_of_others(wanted))

    def foreign(self) -> tuple[dict[str, dict[str, int]], bool]:
        """Others' requests by Node and resource, and whether they are known."""
        return foreign_requests(self.pods.items.values()), self.pods.known in (Known.SYNCED, Known.FAILING)

    def dra(self) -> DraInventory:
        return DraInventory(tuple(self.slices.items.values()), tuple(self.claims.items.values()))

    async def first_outcome(self, timeout: float) -> None:
        """Until each collection was listed once (or refused): the first pass must not place onto devices
        others hold because it has not looked yet."""
        waiters = [w.first_outcome.wait() for w in (self.pods, self.slices, self.claims)]
        try:
            await asyncio.wait_for(asyncio.gather(*waiters), timeout)
        except TimeoutError:
            log.warning("others' pods and DRA objects not listed within %.0fs: placing without them", timeout)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.gather(*(w.run(stop) for w in (self.pods, self.slices, self.claims)))
        finally:
            await self.connection.close()
