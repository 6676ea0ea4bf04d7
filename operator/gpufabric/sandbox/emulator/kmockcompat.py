"""Every workaround for kmock 0.8 and every use of its internals, in one place, each with the upstream fix
that would let it go. pyproject.toml pins kmock to 0.8.*; `file:line` refers to kmock 0.8's
`kmock/_internal/` sources.

The other modules use kmock's public API (`KubernetesEmulator` with its discovery, DSL, `objects` store
and request log; `Request`, `resource`, `ResourceInfo`, `ResourcesArray`, `KubernetesError`, `Payload`),
plus the protected `_get_resources()` and `_serve_list/_serve_fetch/_serve_watch` fallbacks, which
`KubernetesEmulator.__attrs_post_init__` (k8s.py:377-386) registers as bound methods so that overrides
take their place. Internals used here: `parsing.parse_path/guess_k8s/ParsedPath`, `rendering.Response`,
`rendering.StreamingError`, `apps.KMockError`, and `RawHandler`'s `_requests`, `_errors`,
`_render_error`, `_stream_error`.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Mapping
from typing import Any, Final

import aiohttp.web
import attrs
import kmock
from kmock._internal import apps, parsing, rendering

WRITE_METHODS: Final = frozenset({"POST", "PATCH", "PUT", "DELETE"})


def api_error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    """A deliberate API error, which kmock renders as a Status.

    kmock 0.8: `KubernetesScaffold._render_error` puts a server-side traceback in empty `details`
    (k8s.py:114), so every 404 or 409 would carry one. We always pass details.
    Upstream fix: a traceback only for exceptions that are not `KubernetesError`s.
    """
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details or {"causes": []})


def created(payload: kmock.Payload) -> kmock.Payload:
    """A 201 answer.

    kmock 0.8: `Response` and `KMockError` are imported in kmock/__init__.py but missing from its
    `__all__`, so strict type checkers refuse `kmock.Response`. Upstream fix: list both in `__all__`.
    """
    return rendering.Response(status=201, payload=payload)


def header(request: kmock.Request, name: str) -> str | None:
    """A request header, case-insensitively as HTTP has it.

    kmock 0.8: `Request._parse` copies the headers into a plain dict (rendering.py:288), so
    `headers["Content-Type"]` misses `content-type`. Upstream fix: keep a `multidict.CIMultiDict`.
    """
    return next((value for key, value in request.headers.items() if key.lower() == name.lower()), None)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch.

    kmock 0.8: its merge (`dicts.merge_patch_dict`, dicts.py:37-73, behind `Object.patch`) raises when a
    patch replaces a dict by a scalar or the reverse (dicts.py:67-70); RFC 7386 lets the patch's value win.
    Upstream fix: replace instead of raising.
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_CORE_NAMESPACES = re.compile(
    r"/api/(?P<version>[^/]+)/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?/?"
)


def parse_path(path: str) -> parsing.ParsedPath:
    """A URL path as resource, namespace, name and subresource.

    kmock 0.8: `parsing.parse_path` (parsing.py:81-105) takes `namespaces/X` for a namespace prefix
    wherever it is: `/api/v1/namespaces/NAME` means "anything in namespace NAME", and `/api/v1/namespaces`
    (or `/apis/g/v/namespaces`) raises ValueError (line 97), so the core `namespaces` resource, which the
    harness creates, cannot be served, and such paths answer 500. We parse those paths here and answer 404
    for paths kmock cannot parse. Upstream fix: a namespace prefix only when a resource plural follows.
    """
    if m := _CORE_NAMESPACES.fullmatch(path):
        return parsing.ParsedPath(
            group="", version=m["version"], plural="namespaces", name=m["name"], subresource=m["sub"]
        )
    try:
        return parsing.parse_path(path)
    except ValueError:
        return parsing.ParsedPath()


async def parse_request(raw_request: aiohttp.web.BaseRequest, *, request_id: int) -> kmock.Request:
    """kmock's `Request._parse` (rendering.py:259-294), copied as it cannot be given another path parser.

    Changes: `parse_path` above; a trailing slash is dropped, because kube-apiserver serves `/api/v1/` as
    `/api/v1` (the kubernetes client asks for the former) while kmock's discovery routes (k8s.py:92-94)
    must match the whole path (filtering.py:144); bodies are parsed as JSON only (not as forms).
    Upstream fix: a path-parser hook on the handler, and discovery routes that accept a trailing slash.
    """
    body = await raw_request.read()
    text = await raw_request.text()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    url = raw_request.url.with_path(raw_request.path.rstrip("/") or "/", keep_query=True)
    k8s = parse_path(url.path)
    resource = None if k8s.group is None else kmock.resource(group=k8s.group, version=k8s.version, plural=k8s.plural)
    action = parsing.guess_k8s(k8s, kmock.method(raw_request.method), dict(raw_request.query))
    return kmock.Request(
        id=request_id, raw_request=raw_request, url=url, method=raw_request.method, params=dict(raw_request.query),
        headers=dict(raw_request.headers), cookies=dict(raw_request.cookies), data=data, body=body, text=text,
        action=action, resource=resource, namespace=k8s.namespace, name=k8s.name, subresource=k8s.subresource,
    )  # fmt: skip


def load_bundled(resources: kmock.ResourcesArray) -> None:
    """kmock's bundled discovery of the built-in resources.

    kmock 0.8: `ResourcesArray.load_bundled` uses `importlib.resources.read_binary` (k8s_views.py:196),
    which warns DeprecationWarning on Python 3.11 and 3.12. Upstream fix:
    `importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        resources.load_bundled()


@attrs.define(kw_only=True)
class CompatEmulator(kmock.KubernetesEmulator):
    """`kmock.KubernetesEmulator` with request parsing, error bookkeeping, state changes and keep-alive
    replaced; the Kubernetes semantics come from a subclass.

    A subclass implements `_write` (a write's state change, returning its answer) and `_admit` (raise a
    KubernetesError to refuse a request before anything happens). kmock's reaction matching then answers,
    and the `_serve_create/_update/_delete` fallbacks return what `_write` computed (kmock's return what
    its `_handle` stored, k8s.py:504-537): a test's DSL reaction replaces an answer, not a state change.
    """

    _failed: set[int] = attrs.field(factory=set, init=False)
    _outcomes: dict[int, kmock.Payload] = attrs.field(factory=dict, init=False)
    # How many requests the log keeps (None: all, as tests want for their assertions). kmock 0.8 matches a
    # request to a reaction by scanning the whole log for it, once per reaction (apps.py:340 `request in
    # payload._source`, dsl.py:142-146), so each request costs O(requests so far): a long-running emulator
    # (the sandbox: tens of thousands of requests) slowed to seconds per request. Matching happens before
    # the handler's first await, so the request just appended is always within even a short log. Upstream
    # fix: test a reaction's criteria against the request directly.
    request_log_limit: int | None = None
    _served: int = attrs.field(default=0, init=False)

    def _admit(self, request: kmock.Request) -> None:
        raise NotImplementedError

    def _write(self, request: kmock.Request) -> kmock.Payload:
        raise NotImplementedError

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        """The APIResourceList of a group version, with the core group's `groupVersion` as `v1`.

        kmock 0.8 writes `f'{group}/{version}'` (k8s.py:311), so the core group's is `/v1`: the kubernetes
        client and kopf never read it, but kubectl then drops the core group from its discovery and maps
        `kubectl get pods` to metrics.k8s.io's PodMetrics (no resources found). Upstream fix: the same
        expression without the slash for the core group."""
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and str(payload.get("groupVersion", "")).startswith("/"):
            payload["groupVersion"] = payload["groupVersion"][1:]
        return payload

    def refused(self, request: kmock.Request) -> bool:
        """Whether the request was answered with an API error (ours, a fault's, or a DSL reaction's)."""
        return request.id in self._failed

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Answer with `Connection: close`.

        kmock 0.8: `kmock.Server` serves through aiohttp's RawTestServer (apps.py:80), which keeps
        connections alive. kopf's shutdown waits 5 s for, then cancels, every task created in its loop after
        it started (kopf/_core/reactor/running.py, run_tasks), and the server side of a kept-alive
        connection (the operator's kubernetes client's) is one: every operator stop would take 5 s. Watch
        streams are prepared already and end with their request. Upstream fix: a keep-alive option on
        `kmock.Server`, passed to aiohttp as `keepalive_timeout`.
        """
        response = await self._respond(raw_request)
        if not response.prepared:
            response.force_close()
        return response

    async def _respond(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """kmock's `RawHandler.__call__` (apps.py:271-319), copied for two changes: `parse_request`, and a
        `KubernetesError` (an API answer given on purpose: 404, 409, 422…) is not appended to `errors`.

        kmock 0.8 appends every exception (line 311), so `errors` cannot tell an emulator bug from a refused
        request, and a `strict` handler raises at exit after any 404. Refused requests go to `refused()`.
        Upstream fix: a hook deciding which exceptions are errors; KubernetesScaffold would exclude
        `KubernetesError`.
        """
        await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        request: kmock.Request | None = None
        try:
            if self.limit is not None and len(self._requests) >= self.limit:
                raise apps.KMockError("Too many requests have been served so far.")
            request = await parse_request(raw_request, request_id=self._served)
            self._served += 1
            self._requests.append(request)
            if self.request_log_limit is not None and len(self._requests) > self.request_log_limit:
                for forgotten in self._requests[: -self.request_log_limit]:
                    self._failed.discard(forgotten.id)
                del self._requests[: -self.request_log_limit]
            try:
                return await self._handle(request)
            except rendering.StreamingError as e:  # the stream had started: unwrap to the real error
                raw_response = e.args[0]
                if e.__cause__ is not None:
                    raise e.__cause__ from None
                raise
        except Exception as e:
            if isinstance(e, kmock.KubernetesError):
                if request is not None:
                    self._failed.add(request.id)
            elif self._errors:
                self._errors[-1].append(e)
            else:
                raise
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, raw_response)
            await raw_response.write_eof()
            return raw_response

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """`_admit`, `_write` for a write, then kmock's reaction matching.

        kmock 0.8: `KubernetesEmulator._handle` (k8s.py:388-451) applies kmock's own simple state change to
        every create, patch and delete before matching (no uid or resourceVersion, any patch merged, no
        status subresource…) and cannot be told not to; we call the matching it overrides,
        `RawHandler._handle` (apps.py:321-357), directly. Upstream fix: the state change in an overridable
        method (e.g. `_apply(request)`).
        """
        self._admit(request)
        if request.resource is not None and request.method.value in WRITE_METHODS:
            self._outcomes[request.id] = self._write(request)
        try:
            return await kmock.RawHandler._handle(self, request)
        finally:
            self._outcomes.pop(request.id, None)

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        return self._outcomes[request.id]

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        return self._outcomes[request.id]

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        return self._outcomes[request.id]
