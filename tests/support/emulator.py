"""An in-process Kubernetes API server for integration tests: kmock's emulator, made strict where we need it.

`FabricEmulator` subclasses `kmock.KubernetesEmulator` and keeps its discovery endpoints, its `objects`
store (with per-object history, for assertions), its request log and its DSL: a reaction such as
`emulator['get /x'] << 500` still overrides the answer, though, as in kmock, a write it intercepts is
applied anyway (refuse writes with a `FaultPlan` instead). What it replaces is the object semantics,
which kmock keeps deliberately simple. Each extension below says what real Kubernetes does and what we
emulate:

* Discovery: kmock's bundled built-in resources plus the operator's CRDs read from `crds/`, and the CRD
  objects themselves under `apiextensions.k8s.io/v1` (kopf lists and watches them).
* Create: uid, creationTimestamp, resourceVersion, generation, `generateName`; 409 AlreadyExists; the
  namespace comes from the URL; `status` is dropped for resources with a status subresource (CRDs) and
  reset to `phase: Pending` for pods, as the API server's create strategies do.
* resourceVersion: one global counter (like etcd's revision), bumped on every write and stored in the
  object; LISTs carry it; watch events carry the object's; watches resume from `?resourceVersion=`.
* Optimistic concurrency: a PATCH or PUT whose resulting `metadata.resourceVersion` differs from the
  stored one is refused with 409 Conflict; a failing JSON-patch `test` op is 422 (kopf relies on both).
* generation: bumped when anything outside `metadata` and `status` changes; a no-op write changes nothing
  (no new resourceVersion, no watch event), as in the API server.
* Status subresource: `PATCH|PUT .../status` changes only `status`; writes to the main resource ignore
  `status` for resources that declare the subresource. `.../scale` is served from the CRD's paths.
* PUT: a full replace that keeps the server-owned metadata.
* Label selectors (`labelSelector`) and simple field selectors (`fieldSelector`) on LIST and WATCH; a watch
  with a selector sees an object that stops matching as DELETED and one that starts matching as ADDED.
* Pod graceful deletion, finalizers, and garbage collection through `ownerReferences` (background and
  orphan propagation), done synchronously in the request that removes the owner.
* Fault injection (`FaultPlan`) for requests without the `X-Harness: 1` header, i.e. the operator's.

What is NOT emulated (beyond what each docstring says): admission and schema validation (see
`support.apiserver` for the schema), server-side apply, dry-run, `limit`/`continue` paging (everything
comes in one page), namespace existence and namespace deletion, strategic-merge list semantics (a
strategic merge patch is applied as a JSON merge patch: lists are replaced, not merged by key), watch
bookmarks (except the one ending `sendInitialEvents`), and RBAC. Each answers an explicit error or is
documented where it is ignored.

Every state change is synchronous code between two awaits, so it is atomic for the event loop without
locks: a watch can never miss or duplicate an event between its initial listing and its live part.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime
import json
import random
import re
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock import KubernetesError, Request
from kmock._internal import apps, enums, parsing, rendering  # not re-exported by kmock; see the notes at each use

JsonDict = dict[str, Any]

ROOT: Final = Path(__file__).resolve().parents[2]
HARNESS_HEADER: Final = "X-Harness"
WRITE_METHODS: Final = frozenset({"POST", "PATCH", "PUT", "DELETE"})
MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"

# Built-in resources the operator, kopf and the kubernetes client use: (resource, kind, namespaced).
# kmock's bundled discovery has them all today; this table keeps them if the bundle ever changes.
REQUIRED_BUILTINS: Final = (
    ("v1/namespaces", "Namespace", False),
    ("v1/nodes", "Node", False),
    ("v1/pods", "Pod", True),
    ("v1/services", "Service", True),
    ("v1/events", "Event", True),
    ("v1/configmaps", "ConfigMap", True),
    ("events.k8s.io/v1/events", "Event", True),
    ("coordination.k8s.io/v1/leases", "Lease", True),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
)
REQUIRED_VERBS: Final = frozenset({"list", "watch", "get", "create", "patch", "update", "delete"})
CRD_VERBS: Final = frozenset({*REQUIRED_VERBS, "deletecollection"})
CRD_RESOURCE: Final = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
PODS: Final = kmock.resource("", "v1", "pods")
NODES: Final = kmock.resource("", "v1", "nodes")
# Subresources with real semantics in the API server that the built-ins we use declare; the bundled
# discovery also lists exec, log, proxy… which we do not serve (404).
SERVED_SUBRESOURCES: Final = frozenset({"status", "scale"})
# kube-apiserver's name generator alphabet (no vowels, no look-alikes): lowercase alphanumerics.
GENERATE_NAME_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
DEFAULT_POD_GRACE_SECONDS: Final = 30


# ---------------------------------------------------------------------------------------------------------
# Fault injection


@dataclasses.dataclass
class FaultPlan:
    """Which faults to inject into the operator's requests (never into those with `X-Harness: 1`).

    Off by default: `FabricEmulator.faults` is None. All rates are per request, drawn from
    `random.Random(seed)`, so one request sequence gets one fault sequence. (The operator's concurrent
    requests may arrive in a different order from run to run; the sequence of draws is still fixed.)
    """

    seed: int = 0
    # Probability that a write (POST/PATCH/PUT/DELETE) is refused with 409 Conflict before it applies.
    conflict_rate: float = 0.0
    # Probability that any request (LIST and WATCH start included) fails with 500, 503 or 504 before it
    # applies. Real 504s may happen after the write committed; we only model the before case.
    server_error_rate: float = 0.0
    # Each watch stream ends cleanly (EOF, as an API server does at its own timeout) after a time drawn
    # uniformly from (min_s, max_s); kopf then watches again from the last resourceVersion it saw.
    watch_drop_after: tuple[float, float] | None = None
    # Discovery (/api, /apis, /version…) is spared by default: a failure there only delays start-up.
    include_discovery: bool = False
    rng: random.Random = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for rate in (self.conflict_rate, self.server_error_rate):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rates are probabilities in [0, 1], got {rate}")
        if self.watch_drop_after is not None and not 0 <= self.watch_drop_after[0] <= self.watch_drop_after[1]:
            raise ValueError(
                f"watch_drop_after must be (min_s, max_s) with 0 <= min_s <= max_s: {self.watch_drop_after}"
            )
        self.rng = random.Random(self.seed)


SERVER_ERRORS: Final = {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


# ---------------------------------------------------------------------------------------------------------
# Selectors


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses: `a in (x,y),b` is two requirements."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_REQ = re.compile(rf"(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)")
_CMP_REQ = re.compile(rf"(?P<key>{_KEY})\s*(?P<op>==|!=|=|>|<)\s*(?P<value>{_VALUE})")
_NOT_EXISTS_REQ = re.compile(rf"!\s*(?P<key>{_KEY})")
_EXISTS_REQ = re.compile(rf"(?P<key>{_KEY})")

LabelMatcher = Callable[[Mapping[str, str]], bool]


def _requirement(part: str) -> LabelMatcher:
    if m := _SET_REQ.fullmatch(part):
        key, values = m["key"], {value.strip() for value in m["values"].split(",")}
        if not all(re.fullmatch(_VALUE, value) for value in values) or values == {""}:
            raise ValueError(f"invalid values in {part!r}")
        if m["op"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _CMP_REQ.fullmatch(part):
        key, op, value = m["key"], m["op"], m["value"]
        if op in ("=", "=="):
            return lambda labels: key in labels and labels[key] == value
        if op == "!=":
            return lambda labels: labels.get(key) != value
        try:  # `>` and `<` compare integers, as apimachinery's labels.Parse does.
            bound = int(value)
        except ValueError:
            raise ValueError(f"{op} needs an integer in {part!r}") from None
        sign = 1 if op == ">" else -1
        return lambda labels: (
            key in labels and labels[key].lstrip("-").isdigit() and sign * (int(labels[key]) - bound) > 0
        )
    if m := _NOT_EXISTS_REQ.fullmatch(part):
        key = m["key"]
        return lambda labels: key not in labels
    if m := _EXISTS_REQ.fullmatch(part):
        key = m["key"]
        return lambda labels: key in labels
    raise ValueError(f"unable to parse requirement {part!r}")


def parse_label_selector(text: str) -> LabelMatcher:
    """The `labelSelector` string syntax of apimachinery's labels.Parse: `a=b`, `a==b`, `a!=b`, `a`, `!a`,
    `a in (x,y)`, `a notin (x,y)`, `a>1`, `a<1`, joined by commas (all must hold). `!=` and `notin` also
    match objects without the label, as in Kubernetes. Raises ValueError on a malformed selector."""
    if not text.strip():
        return lambda labels: True
    requirements = [_requirement(part.strip()) for part in _split_top_level(text)]
    return lambda labels: all(requirement(labels) for requirement in requirements)


def _field(obj: Mapping[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return "" if node is None else str(node).lower() if isinstance(node, bool) else str(node)


def parse_field_selector(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """`fieldSelector`: `path=value`, `path==value`, `path!=value`, comma-joined, on any dotted path.

    The API server accepts only a few paths per resource (metadata.name, metadata.namespace,
    spec.nodeName, status.phase for pods…); we accept any path and compare strings (absent is "")."""
    checks: list[tuple[str, bool, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(?P<path>[A-Za-z0-9_.]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^,]*)", part)
        if m is None:
            raise ValueError(f"invalid field selector requirement {part!r}")
        checks.append((m["path"], m["op"] != "!=", m["value"].strip()))
    return lambda obj: all((_field(obj, path) == value) == equal for path, equal, value in checks)


# ---------------------------------------------------------------------------------------------------------
# Small helpers


def now_rfc3339(delta_seconds: float = 0) -> str:
    """RFC 3339 in UTC with a `Z`, at second precision: how the API server writes metav1.Time."""
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=delta_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch. kmock's own merge (dicts.merge_patch_dict) refuses to replace a dict by a
    scalar or the reverse, which RFC 7386 allows, so we apply the RFC directly."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _meta(obj: Mapping[str, Any]) -> JsonDict:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = _meta(obj).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def _spec_part(obj: Mapping[str, Any]) -> JsonDict:
    """What `metadata.generation` tracks: everything except metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


def _json_path(path: str) -> list[str]:
    """The `.spec.replicas` paths of a CRD's scale subresource, as keys."""
    return [part for part in path.split(".") if part]


def _get_path(obj: Mapping[str, Any], path: str) -> Any:
    node: Any = obj
    for part in _json_path(path):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _set_path(obj: JsonDict, path: str, value: Any) -> None:
    *parents, last = _json_path(path)
    node = obj
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _header(request: Request, name: str) -> str | None:
    return next((value for key, value in request.headers.items() if key.lower() == name.lower()), None)


def _is_harness(request: Request) -> bool:
    return _header(request, HARNESS_HEADER) == "1"


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


def _group_resource(resource: kmock.resource) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)


def _error(status: int, reason: str, message: str, **details: Any) -> KubernetesError:
    # Passing details keeps kmock's _render_error from putting a traceback in the Status body.
    return KubernetesError(status=status, reason=reason, message=message, details=details or {"causes": []})


# kmock.parsing.parse_path (kmock/_internal/parsing.py:81-106) reads `/api/v1/namespaces/NAME` as "any
# resource in namespace NAME" and raises ValueError on `/api/v1/namespaces` itself (line 97), so the
# core `namespaces` resource is unreachable through kmock. We parse these paths ourselves.
_CORE_NAMESPACES_PATH = re.compile(
    r"/api/(?P<version>[^/]+)/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?/?"
)


def parse_path(path: str) -> parsing.ParsedPath:
    if m := _CORE_NAMESPACES_PATH.fullmatch(path):
        return parsing.ParsedPath(
            group="", version=m["version"], plural="namespaces", name=m["name"], subresource=m["sub"]
        )
    try:
        return parsing.parse_path(path)
    except ValueError:  # e.g. `/apis/g/v/namespaces`: not a resource path; answered 404 by the fallback
        return parsing.ParsedPath()


async def parse_request(raw_request: aiohttp.web.BaseRequest, *, request_id: int) -> Request:
    """kmock's Request._parse (kmock/_internal/rendering.py:260-294) with our path parser."""
    body = await raw_request.read()
    text = await raw_request.text()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    # kube-apiserver serves `/api/v1/` like `/api/v1` (the kubernetes client asks for the former); kmock's
    # discovery routes (kmock/_internal/k8s.py:92-94) match the exact path, so we drop a trailing slash.
    url = raw_request.url.with_path(raw_request.path.rstrip("/") or "/", keep_query=True)
    k8s = parse_path(url.path)
    resource = None if k8s.group is None else kmock.resource(group=k8s.group, version=k8s.version, plural=k8s.plural)
    action = parsing.guess_k8s(k8s, enums.method(raw_request.method), dict(raw_request.query))
    return Request(
        id=request_id,
        raw_request=raw_request,
        url=url,
        method=raw_request.method,
        params=dict(raw_request.query),
        headers=dict(raw_request.headers),
        cookies=dict(raw_request.cookies),
        data=data,
        body=body,
        text=text,
        action=action,
        resource=resource,
        namespace=k8s.namespace,
        name=k8s.name,
        subresource=k8s.subresource,
    )


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    """One committed change, kept for watches that resume from a resourceVersion."""

    rv: int
    resource: kmock.resource
    type: str  # ADDED, MODIFIED, DELETED
    obj: JsonDict
    old: JsonDict | None  # the state before, so selector watches can see objects leave and enter


@dataclasses.dataclass
class _Watcher:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    labels: LabelMatcher
    fields: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[WatchEvent] = dataclasses.field(default_factory=asyncio.Queue)

    def sees(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = _meta(obj)
        return (
            (self.namespace is None or meta.get("namespace") == self.namespace)
            and (self.name is None or meta.get("name") == self.name)
            and self.labels(_labels(obj))
            and self.fields(obj)
        )

    def translate(self, event: WatchEvent) -> JsonDict | None:
        """The event as this watch sees it through its selectors (apiserver's watch cache does the same)."""
        now, before = self.sees(event.obj), self.sees(event.old)
        if event.type == "MODIFIED":
            kind = "MODIFIED" if now and before else "ADDED" if now else "DELETED" if before else None
        else:
            kind = event.type if now else None
        return None if kind is None else {"type": kind, "object": event.obj}


class HarnessError(Exception):
    """A harness request answered with an error Status."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.reason: str | None = body.get("reason") if isinstance(body, Mapping) else None
        super().__init__(f"{status} {self.reason}: {body.get('message') if isinstance(body, Mapping) else body}")


ResourceRef = str | kmock.resource


def as_resource(ref: ResourceRef) -> kmock.resource:
    """`'v1/pods'`, `'gpufabric.io/v1alpha1/computenodes'` or a kmock.resource."""
    return ref if isinstance(ref, kmock.resource) else kmock.resource(ref)


# ---------------------------------------------------------------------------------------------------------
# The emulator


@attrs.define(kw_only=True)
class FabricEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the API server semantics the GPU Fabric Operator depends on.

    Use inside `async with FabricEmulator() as emulator, kmock.Server(emulator): ...`; `emulator.url` is
    then the API server URL. Objects are in `emulator.objects[resource, namespace, name]` (kmock's view,
    with history); `emulator.requests`-style views come from kmock's DSL (`list(emulator)` is every request).

    Unlike the parent, `emulator.errors` collects only unexpected exceptions (bugs in the emulator or in a
    DSL reaction), not the API errors it answers on purpose (404, 409…), so tests can assert it is empty.
    """

    crds_dir: Path = ROOT / "crds"
    faults: FaultPlan | None = None
    # How many past events a watch can resume over; older resourceVersions get 410 Expired, as after
    # etcd compaction.
    history_limit: int = 100_000
    # Seed for generateName suffixes, so generated names repeat from run to run.
    name_seed: int = 0
    # False: every non-streaming answer closes its connection (see __call__ for why kopf needs that).
    keep_alive: bool = False
    injected: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    _rv: int = attrs.field(default=0, init=False)
    _log: collections.deque[WatchEvent] = attrs.field(factory=collections.deque, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    _watchers: list[_Watcher] = attrs.field(factory=list, init=False)
    _outcomes: dict[int, rendering.Payload] = attrs.field(factory=dict, init=False)
    _failed: set[int] = attrs.field(factory=set, init=False)
    _crd_resources: set[kmock.resource] = attrs.field(factory=set, init=False)
    _scale_paths: dict[kmock.resource, JsonDict] = attrs.field(factory=dict, init=False)
    _propagation: dict[str, str] = attrs.field(factory=dict, init=False)
    _names: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # The parent registers its fallbacks with bound methods looked up on self, so our overrides of
        # _serve_list/_serve_watch/_serve_fetch/_serve_create/_serve_update/_serve_delete take their place.
        super().__attrs_post_init__()
        # kmock maps PUT to no action (parsing.guess_k8s); the kubernetes client's replace_* use PUT.
        self.fallback[enums.method.PUT] << self._serve_replace
        self._names = random.Random(self.name_seed)
        self._log = collections.deque(maxlen=self.history_limit)
        with warnings.catch_warnings():  # kmock 0.8 reads it with importlib's deprecated read_binary
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        for ref, kind, namespaced in REQUIRED_BUILTINS:
            info = self.resources[ref]  # auto-created if the bundle lacks it
            info.kind = info.kind or kind
            info.namespaced = namespaced if info.namespaced is None else info.namespaced
            info.verbs |= REQUIRED_VERBS
        for path in sorted(self.crds_dir.glob("*.yaml")):
            for crd in yaml.safe_load_all(path.read_text()):
                if crd and crd.get("kind") == "CustomResourceDefinition":
                    self._install_crd(crd)

    # ---- set-up ------------------------------------------------------------------------------------------

    def _install_crd(self, crd: JsonDict) -> None:
        """Declare the CRD's served versions in discovery and store the CRD object itself, Established."""
        spec, names = crd["spec"], crd["spec"]["names"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            resource = kmock.resource(spec["group"], version["name"], names["plural"])
            subresources = version.get("subresources") or {}
            self.resources[resource] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()),
                namespaced=spec["scope"] == "Namespaced",
                verbs=CRD_VERBS,
                shortnames=names.get("shortNames", []),
                categories=names.get("categories", []),
                subresources=set(subresources),
            )
            self._crd_resources.add(resource)
            if "scale" in subresources:
                self._scale_paths[resource] = subresources["scale"]
        stored = copy.deepcopy(crd)
        stored["status"] = {
            "acceptedNames": copy.deepcopy(names),
            "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now_rfc3339()}
                for t, r, m in (
                    ("NamesAccepted", "NoConflicts", "no conflicts found"),
                    ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                )
            ],
        }
        self._commit_new(CRD_RESOURCE, None, stored)

    # ---- public helpers ----------------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion (what a LIST now would carry)."""
        return str(self._rv)

    def live_objects(self, resource: ResourceRef, namespace: str | None = None) -> list[JsonDict]:
        """Deep copies of the stored, not yet removed objects of a resource (all namespaces if None),
        sorted by namespace and name. In-process and instant: no request, nothing in the request log."""
        res = as_resource(resource)
        return [copy.deepcopy(obj) for _, obj in self._live_items(res, namespace)]

    def get_object(self, resource: ResourceRef, name: str, namespace: str | None = None) -> JsonDict | None:
        """A deep copy of one live object, or None."""
        obj = self._live(as_resource(resource), namespace, name)
        return None if obj is None else copy.deepcopy(obj)

    def writes(self, resource_plural: str | None = None, *, ok_only: bool = False) -> list[Request]:
        """The operator's write requests (POST/PATCH/PUT/DELETE without `X-Harness: 1`), oldest first,
        for one resource plural (e.g. "pods") or all. Refused ones (faults, conflicts) are included unless
        `ok_only`."""
        return [
            request
            for request in self._requests
            if request.method.value in WRITE_METHODS
            and request.resource is not None
            and request.resource.plural is not None
            and not _is_harness(request)
            and (resource_plural is None or request.resource.plural == resource_plural)
            and not (ok_only and request.id in self._failed)
        ]

    # ---- the harness client (sends X-Harness: 1, so faults never hit it and writes() ignores it) --------

    def api_path(
        self,
        resource: ResourceRef,
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        """The URL path of a collection, object or subresource."""
        res = as_resource(resource)
        parts = ["/api" if not res.group else f"/apis/{res.group}", str(res.version)]
        if namespace is not None:
            parts += ["namespaces", namespace]
        parts.append(str(res.plural))
        if name is not None:
            parts.append(name)
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)

    async def h_request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One harness request; returns the decoded JSON answer or raises HarnessError for 4xx/5xx."""
        # Connection: close even when the server keeps connections alive (keep_alive=True): a kept-alive
        # connection leaves a server-side task that a kopf operator in this loop would wait for on exit.
        headers = {HARNESS_HEADER: "1", "Content-Type": content_type, "Connection": "close"}
        data = None if body is None else json.dumps(body)
        async with self.request(method, path, data=data, params=params or {}, headers=headers) as response:
            answer = await response.json(content_type=None)
            if response.status >= 400:
                raise HarnessError(response.status, answer)
            return answer

    async def h_create(
        self, resource: ResourceRef, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> JsonDict:
        """POST; the namespace defaults to the body's metadata.namespace."""
        namespace = namespace if namespace is not None else _meta(body).get("namespace")
        result: JsonDict = await self.h_request("POST", self.api_path(resource, namespace=namespace), body=dict(body))
        return result

    async def h_get(
        self, resource: ResourceRef, name: str, *, namespace: str | None = None, subresource: str | None = None
    ) -> JsonDict:
        path = self.api_path(resource, namespace=namespace, name=name, subresource=subresource)
        result: JsonDict = await self.h_request("GET", path)
        return result

    async def h_list(
        self, resource: ResourceRef, *, namespace: str | None = None, label_selector: str | None = None
    ) -> JsonDict:
        params = {"labelSelector": label_selector} if label_selector is not None else {}
        result: JsonDict = await self.h_request("GET", self.api_path(resource, namespace=namespace), params=params)
        return result

    async def h_patch(
        self,
        resource: ResourceRef,
        name: str,
        patch: Mapping[str, Any] | list[Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> JsonDict:
        """A JSON merge patch for a dict, a JSON patch for a list."""
        path = self.api_path(resource, namespace=namespace, name=name, subresource=subresource)
        kind = JSON_PATCH if isinstance(patch, list) else MERGE_PATCH
        result: JsonDict = await self.h_request(
            "PATCH", path, body=patch if isinstance(patch, list) else dict(patch), content_type=kind
        )
        return result

    async def h_replace(
        self,
        resource: ResourceRef,
        name: str,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> JsonDict:
        path = self.api_path(resource, namespace=namespace, name=name, subresource=subresource)
        result: JsonDict = await self.h_request("PUT", path, body=dict(body))
        return result

    async def h_delete(
        self,
        resource: ResourceRef,
        name: str,
        *,
        namespace: str | None = None,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
    ) -> JsonDict:
        options: JsonDict = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if propagation_policy is not None:
            options["propagationPolicy"] = propagation_policy
        result: JsonDict = await self.h_request(
            "DELETE", self.api_path(resource, namespace=namespace, name=name), body=options
        )
        return result

    async def h_watch(
        self,
        resource: ResourceRef,
        *,
        namespace: str | None = None,
        params: Mapping[str, str] | None = None,
        harness: bool = True,
    ) -> AsyncIterator[JsonDict]:
        """Watch events as dicts until the server ends the stream. `harness=False` watches as the operator
        would (faults apply), for testing the fault plan itself."""
        query = {"watch": "true", **(params or {})}
        headers = {HARNESS_HEADER: "1", "Connection": "close"} if harness else {"Connection": "close"}
        async with self.request(
            "GET", self.api_path(resource, namespace=namespace), params=query, headers=headers
        ) as response:
            if response.status >= 400:
                raise HarnessError(response.status, await response.json(content_type=None))
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)

    # ---- request entry point -----------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        response = await self._respond(raw_request)
        if not self.keep_alive and not response.prepared:
            # Answer "Connection: close": kopf's shutdown waits 5 s for, then cancels, every task created
            # in the loop after it started (kopf/_core/reactor/running.py, run_tasks), and each kept-alive
            # connection's server-side task is one, e.g. those of the operator's kubernetes client. Watch
            # streams are already prepared and end with their request; a refused one is closed here too.
            response.force_close()
        return response

    async def _respond(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """kmock's RawHandler.__call__ (kmock/_internal/apps.py:271-319) with two changes: requests are
        parsed by our `parse_request` (the namespaces fix), and KubernetesErrors, our deliberate API
        answers, are rendered without being recorded in `errors`."""
        await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        request: Request | None = None
        try:
            if self.limit is not None and len(self._requests) >= self.limit:
                raise apps.KMockError("Too many requests have been served so far.")
            request = await parse_request(raw_request, request_id=len(self._requests))
            self._requests.append(request)
            try:
                return await self._handle(request)
            except rendering.StreamingError as e:  # the stream had started: unwrap to the real error
                raw_response = e.args[0]
                if e.__cause__ is not None:
                    raise e.__cause__ from None
                raise
        except Exception as e:
            if isinstance(e, KubernetesError):
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

    async def _handle(self, request: Request) -> aiohttp.web.StreamResponse:
        """Faults first, then the state change of a write, then kmock's reaction matching (our _serve_*
        fallbacks answer unless a test's DSL reaction does). This replaces KubernetesEmulator._handle
        (kmock/_internal/k8s.py:389-451), whose state changes are the simple ones we extend, so we call
        the grandparent's matching directly."""
        if self.faults is not None and not _is_harness(request):
            self._inject_fault(request, self.faults)
        if request.resource is not None and request.method.value in WRITE_METHODS:
            self._outcomes[request.id] = self._write(request)
        try:
            return await apps.RawHandler._handle(self, request)
        finally:
            self._outcomes.pop(request.id, None)

    def _inject_fault(self, request: Request, plan: FaultPlan) -> None:
        if (request.resource is None or request.resource.plural is None) and not plan.include_discovery:
            return
        if plan.server_error_rate and plan.rng.random() < plan.server_error_rate:
            code = plan.rng.choice(sorted(SERVER_ERRORS))
            self.injected["server_error"] += 1
            self.injected[f"http_{code}"] += 1
            raise _error(code, SERVER_ERRORS[code], f"injected fault: {code} {SERVER_ERRORS[code]}")
        if request.method.value in WRITE_METHODS and plan.conflict_rate and plan.rng.random() < plan.conflict_rate:
            self.injected["conflict"] += 1
            raise _error(
                409,
                "Conflict",
                "injected fault: the object has been modified; please apply your changes to the latest version",
            )

    # ---- storage primitives ------------------------------------------------------------------------------

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo:
        if resource.plural is None or resource not in self._get_resources():
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return self.resources[resource]

    def _live(self, resource: kmock.resource, namespace: str | None, name: str | None) -> JsonDict | None:
        if name is None or (resource, namespace, name) not in self.objects:
            return None
        obj = self.objects[resource, namespace, name]
        return None if obj.deleted else obj.raw

    def _live_items(
        self, resource: kmock.resource | None, namespace: str | None = None
    ) -> list[tuple[tuple[Any, str | None, str], JsonDict]]:
        items = [
            ((res, ns, name), obj.raw)
            for (res, ns, name), obj in self.objects.items()
            if not obj.deleted and (resource is None or res == resource) and (namespace is None or ns == namespace)
        ]
        return sorted(items, key=lambda item: (str(item[0][0]), item[0][1] or "", item[0][2]))

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, resource: kmock.resource, kind: str, obj: JsonDict, old: JsonDict | None) -> None:
        if self._log.maxlen is not None and len(self._log) == self._log.maxlen:
            self._compacted_rv = self._log[0].rv
        event = WatchEvent(rv=int(_meta(obj)["resourceVersion"]), resource=resource, type=kind, obj=obj, old=old)
        self._log.append(event)
        for watcher in self._watchers:
            if watcher.resource == resource:
                watcher.queue.put_nowait(event)

    def _commit_new(self, resource: kmock.resource, namespace: str | None, obj: JsonDict) -> JsonDict:
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = self._next_rv()
        key = (resource, namespace, meta["name"])
        if key in self.objects:
            self.objects[key].history.append(obj)  # a re-creation continues the name's history, as in kmock
        else:
            self.objects[key] = obj
        self._emit(resource, "ADDED", obj, None)
        return obj

    def _commit_update(self, resource: kmock.resource, namespace: str | None, old: JsonDict, new: JsonDict) -> JsonDict:
        """Store a changed object; if it is terminating, released by its finalizers and not waiting for a
        kubelet (deletionGracePeriodSeconds 0), remove it instead: the API server does this in the same
        update, so watchers see one DELETED, not MODIFIED then DELETED."""
        meta = _meta(new)
        meta["resourceVersion"] = self._next_rv()
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not meta.get("deletionGracePeriodSeconds"):
            self.objects[resource, namespace, meta["name"]].history.append(new)
            return self._remove(resource, namespace, new, old, bump=False)
        self.objects[resource, namespace, meta["name"]].history.append(new)
        self._emit(resource, "MODIFIED", new, old)
        return new

    def _remove(
        self, resource: kmock.resource, namespace: str | None, obj: JsonDict, old: JsonDict | None, *, bump: bool = True
    ) -> JsonDict:
        """Remove from storage (the DELETED event carries the deletion's own resourceVersion), then
        collect the garbage it leaves."""
        if bump:
            obj = copy.deepcopy(obj)
            _meta(obj)["resourceVersion"] = self._next_rv()
            self.objects[resource, namespace, _meta(obj)["name"]].history.append(obj)
        self.objects[resource, namespace, _meta(obj)["name"]].delete()
        self._emit(resource, "DELETED", obj, old)
        self._collect_garbage(_meta(obj).get("uid"))
        return obj

    # ---- writes ------------------------------------------------------------------------------------------

    def _write(self, request: Request) -> rendering.Payload:
        assert request.resource is not None
        if "dryRun" in request.params:
            raise _error(400, "BadRequest", "dryRun is not emulated by FabricEmulator")
        resource, info = request.resource, self._info(request.resource)
        namespace = request.namespace if info.namespaced is not False else None
        if info.namespaced and request.name is not None and namespace is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        if request.subresource is not None and (
            request.subresource not in SERVED_SUBRESOURCES or request.subresource not in info.subresources
        ):
            raise _error(404, "NotFound", f"the server could not find the requested resource ({request.subresource})")
        method = request.method.value
        if method == "POST" and request.name is None:
            return rendering.Response(status=201, payload=self._create(resource, info, request))
        if request.name is None:
            raise _error(405, "MethodNotAllowed", f"{method} on a collection is not emulated")
        current = self._live(resource, namespace, request.name)
        if current is None:
            raise _error(
                404,
                "NotFound",
                f'{_group_resource(resource)} "{request.name}" not found',
                name=request.name,
                group=resource.group,
                kind=resource.plural,
            )
        if method == "POST":
            raise _error(405, "MethodNotAllowed", f"POST to {request.subresource or 'an object'} is not emulated")
        if method == "DELETE":
            if request.subresource is not None:
                raise _error(405, "MethodNotAllowed", "DELETE on a subresource")
            return self._delete(resource, namespace, current, request)
        proposed = self._proposed(request, current, resource)
        if request.subresource == "scale":
            return self._scale_update(resource, namespace, current, proposed)
        return self._update(resource, namespace, current, proposed, status_only=request.subresource == "status")

    def _create(self, resource: kmock.resource, info: kmock.ResourceInfo, request: Request) -> JsonDict:
        if not isinstance(request.data, dict) or not isinstance(request.data.get("metadata", {}), dict):
            raise _error(400, "BadRequest", "the body must be an object with an object `metadata`")
        obj = copy.deepcopy(request.data)
        meta = obj.setdefault("metadata", {})
        namespace: str | None = None
        if info.namespaced is not False:
            namespace = request.namespace or meta.get("namespace")
            if request.namespace and meta.get("namespace") not in (None, request.namespace):
                raise _error(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            if info.namespaced and not namespace:
                raise _error(400, "BadRequest", "a namespaced resource is created under /namespaces/NAMESPACE/")
        if namespace is None:
            meta.pop("namespace", None)
        else:
            meta["namespace"] = namespace
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise _error(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            meta["name"] = prefix + "".join(self._names.choices(GENERATE_NAME_ALPHABET, k=5))
            while self._live(resource, namespace, meta["name"]) is not None:  # the API server retries too
                meta["name"] = prefix + "".join(self._names.choices(GENERATE_NAME_ALPHABET, k=5))
        name = meta["name"]
        if self._live(resource, namespace, name) is not None:
            raise _error(
                409,
                "AlreadyExists",
                f'{_group_resource(resource)} "{name}" already exists',
                name=name,
                group=resource.group,
                kind=resource.plural,
            )
        obj.setdefault("apiVersion", _api_version(resource))
        if info.kind:
            obj.setdefault("kind", info.kind)
        for owned in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(owned, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        if resource == PODS:  # the pod strategy's PrepareForCreate resets the status
            obj["status"] = {"phase": "Pending"}
        elif "status" in info.subresources and resource in self._crd_resources:  # CRD strategy drops it
            obj.pop("status", None)
        return copy.deepcopy(self._commit_new(resource, namespace, obj))

    def _proposed(self, request: Request, current: JsonDict, resource: kmock.resource) -> JsonDict:
        """The object (or Scale) a PATCH or PUT proposes, before the server's rules apply."""
        base = self._scale_of(resource, current) if request.subresource == "scale" else current
        if request.method.value == "PUT":
            if not isinstance(request.data, dict):
                raise _error(400, "BadRequest", "the body must be an object")
            if _meta(request.data).get("name") not in (None, request.name):
                raise _error(400, "BadRequest", "the name of the object does not match the name on the URL")
            return copy.deepcopy(request.data)
        content_type = (_header(request, "Content-Type") or MERGE_PATCH).split(";")[0].strip()
        if content_type == JSON_PATCH:
            if not isinstance(request.data, list):
                raise _error(400, "BadRequest", "a JSON patch is a list of operations")
            try:
                proposed: JsonDict = jsonpatch.apply_patch(copy.deepcopy(base), request.data)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                # kube-apiserver answers every JSON-patch application error, a failed `test` included, 422.
                raise _error(
                    422, "Invalid", f"the server rejected our request due to an error in our request: {e}"
                ) from None
            return proposed
        if content_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH, "application/json"):
            if not isinstance(request.data, dict):
                raise _error(400, "BadRequest", "a merge patch is an object")
            return dict(merge_patch(copy.deepcopy(base), request.data))
        raise _error(
            415, "UnsupportedMediaType", f"the patch type {content_type!r} is not emulated (server-side apply is not)"
        )

    def _update(
        self,
        resource: kmock.resource,
        namespace: str | None,
        current: JsonDict,
        proposed: JsonDict,
        *,
        status_only: bool,
    ) -> JsonDict:
        """The API server's update rules for a PATCH or PUT, main resource or status subresource."""
        self._check_rv(resource, current, proposed)
        info = self.resources[resource]
        if status_only:
            new = copy.deepcopy(current)
            if "status" in proposed:
                new["status"] = proposed["status"]
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(proposed)
            if "status" in info.subresources:  # the main resource's strategy keeps the old status
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            if not isinstance(new.get("metadata"), dict):
                new["metadata"] = {}
            meta, old_meta = new["metadata"], _meta(current)
            for owned in ("uid", "name", "namespace", "creationTimestamp", "deletionTimestamp",
                          "deletionGracePeriodSeconds", "generation", "resourceVersion"):  # fmt: skip
                if owned in old_meta:
                    meta[owned] = old_meta[owned]
                else:
                    meta.pop(owned, None)
            for top in ("apiVersion", "kind"):
                if top in current:
                    new[top] = current[top]
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if old_meta.get("deletionTimestamp") and added:
                raise _error(
                    422,
                    "Invalid",
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, "
                    f"found new finalizers {sorted(added)}",
                )
        if new == current:  # a no-op write commits nothing: same resourceVersion, no event
            return copy.deepcopy(current)
        if _spec_part(new) != _spec_part(current):
            _meta(new)["generation"] = int(_meta(current).get("generation", 1)) + 1
        return copy.deepcopy(self._commit_update(resource, namespace, current, new))

    def _check_rv(self, resource: kmock.resource, current: JsonDict, proposed: JsonDict) -> None:
        wanted = _meta(proposed).get("resourceVersion")
        if wanted not in (None, "") and str(wanted) != _meta(current).get("resourceVersion"):
            name = _meta(current).get("name")
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {_group_resource(resource)} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                name=name,
                group=resource.group,
                kind=resource.plural,
            )

    # ---- scale subresource -------------------------------------------------------------------------------

    def _scale_of(self, resource: kmock.resource, obj: JsonDict) -> JsonDict:
        """autoscaling/v1 Scale built from the CRD's specReplicasPath/statusReplicasPath/labelSelectorPath."""
        paths, meta = self._scale_paths[resource], _meta(obj)
        status: JsonDict = {"replicas": _get_path(obj, paths["statusReplicasPath"]) or 0}
        if paths.get("labelSelectorPath") and (selector := _get_path(obj, paths["labelSelectorPath"])):
            status["selector"] = selector
        keep = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {key: meta[key] for key in keep if key in meta},
            "spec": {"replicas": _get_path(obj, paths["specReplicasPath"]) or 0},
            "status": status,
        }

    def _scale_update(
        self, resource: kmock.resource, namespace: str | None, current: JsonDict, proposed: JsonDict
    ) -> JsonDict:
        replicas = (proposed.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise _error(422, "Invalid", "spec.replicas: Invalid value: must be a non-negative integer")
        self._check_rv(resource, current, proposed)
        new = copy.deepcopy(current)
        _set_path(new, self._scale_paths[resource]["specReplicasPath"], replicas)
        updated = self._update(resource, namespace, current, new, status_only=False)
        return self._scale_of(resource, updated)

    # ---- deletion and garbage collection -----------------------------------------------------------------

    def _delete(
        self, resource: kmock.resource, namespace: str | None, current: JsonDict, request: Request
    ) -> rendering.Payload:
        options = request.data if isinstance(request.data, dict) else {}
        grace_text = request.params.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        policy = str(request.params.get("propagationPolicy", options.get("propagationPolicy")) or "Background")
        preconditions = options.get("preconditions") or {}
        meta = _meta(current)
        for field, actual in (("uid", meta.get("uid")), ("resourceVersion", meta.get("resourceVersion"))):
            if preconditions.get(field) not in (None, actual):
                raise _error(409, "Conflict", f"Precondition failed: {field}: {preconditions[field]}, actual: {actual}")
        try:
            grace = None if grace_text is None else int(grace_text)
        except ValueError:
            raise _error(400, "BadRequest", f"invalid gracePeriodSeconds {grace_text!r}") from None
        if policy not in ("Background", "Foreground", "Orphan"):
            raise _error(400, "BadRequest", f"unknown propagationPolicy {policy!r}")
        return self._delete_object(resource, namespace, current, grace=grace, policy=policy)

    def _delete_object(
        self, resource: kmock.resource, namespace: str | None, current: JsonDict, *, grace: int | None, policy: str
    ) -> JsonDict:
        """DELETE's effect, also used by the garbage collector.

        Pods are deleted gracefully (the kubelet finishes them) unless the grace period is 0, the pod was
        never scheduled, or it already terminated: the pod strategy's CheckGracefulDelete. Anything with
        finalizers is only marked. Foreground propagation is treated as Background.
        """
        meta = _meta(current)
        uid = meta.get("uid")
        if uid and policy == "Orphan":
            self._propagation[uid] = policy
        finalizers = meta.get("finalizers") or []
        if meta.get("deletionTimestamp"):
            # Already terminating: only a shorter grace period (a force delete) changes anything.
            if resource == PODS and grace == 0 and meta.get("deletionGracePeriodSeconds"):
                new = copy.deepcopy(current)
                _meta(new)["deletionGracePeriodSeconds"] = 0
                return copy.deepcopy(self._commit_update(resource, namespace, current, new))
            return copy.deepcopy(current)
        pod_phase = (current.get("status") or {}).get("phase")
        scheduled = bool((current.get("spec") or {}).get("nodeName"))
        if resource == PODS and grace != 0 and scheduled and pod_phase not in ("Succeeded", "Failed"):
            period = (
                grace
                if grace is not None
                else (current.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_POD_GRACE_SECONDS)
            )
            new = copy.deepcopy(current)
            # As in the API server: the pod's deletionTimestamp is when its grace period runs out.
            _meta(new).update(deletionTimestamp=now_rfc3339(period), deletionGracePeriodSeconds=int(period))
            return copy.deepcopy(self._commit_update(resource, namespace, current, new))
        if finalizers:
            new = copy.deepcopy(current)
            _meta(new).update(deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0)
            return copy.deepcopy(self._commit_update(resource, namespace, current, new))
        removed = self._remove(resource, namespace, current, current)
        if resource == PODS or resource in self._crd_resources:  # their stores return the deleted object
            return copy.deepcopy(removed)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": meta.get("name"), "group": resource.group, "kind": resource.plural, "uid": uid},
        }

    def _collect_garbage(self, owner_uid: str | None) -> None:
        """The garbage collector's reaction to a removed owner, instantly instead of eventually.

        A dependent whose ownerReferences name no other live owner is deleted as by DELETE with
        background propagation (pods gracefully, finalizers respected; its own dependents follow when it
        is removed). A dependent with another live owner, or whose owner was deleted with Orphan
        propagation, only loses the dangling references, as the real collector patches them away.
        """
        if not owner_uid:
            return
        policy = self._propagation.pop(owner_uid, "Background")
        dependents = [
            key
            for key, obj in self._live_items(None)
            if any(ref.get("uid") == owner_uid for ref in _meta(obj).get("ownerReferences") or [])
        ]
        for resource, namespace, name in dependents:
            current = self._live(resource, namespace, name)
            if current is None:  # removed meanwhile by a cascade from an earlier dependent
                continue
            live_uids = {_meta(obj).get("uid") for _, obj in self._live_items(None)}
            refs = _meta(current).get("ownerReferences") or []
            kept = [ref for ref in refs if ref.get("uid") != owner_uid and ref.get("uid") in live_uids]
            if kept or policy == "Orphan":
                new = copy.deepcopy(current)
                if kept:
                    _meta(new)["ownerReferences"] = kept
                else:
                    _meta(new).pop("ownerReferences", None)
                self._commit_update(resource, namespace, current, new)
            else:
                self._delete_object(resource, namespace, current, grace=None, policy="Background")

    # ---- reads (our overrides of the parent's fallbacks) -------------------------------------------------

    def _selectors(self, request: Request) -> tuple[LabelMatcher, Callable[[Mapping[str, Any]], bool]]:
        try:
            return (
                parse_label_selector(request.params.get("labelSelector", "")),
                parse_field_selector(request.params.get("fieldSelector", "")),
            )
        except ValueError as e:
            raise _error(400, "BadRequest", f"unable to parse selector: {e}") from None

    async def _serve_list(self, request: Request) -> rendering.Payload:
        """Every matching object in one page (`limit` is ignored, `continue` never set), sorted by
        namespace and name as etcd's key order is, with the current global resourceVersion."""
        assert request.resource is not None
        info = self._info(request.resource)
        labels, fields = self._selectors(request)
        namespace = request.namespace if info.namespaced is not False else None
        items = [
            copy.deepcopy(obj)
            for _, obj in self._live_items(request.resource, namespace)
            if labels(_labels(obj)) and fields(obj)
        ]
        return {
            "apiVersion": _api_version(request.resource),
            "kind": f"{info.kind or 'Object'}List",
            "metadata": {"resourceVersion": self.resource_version},
            "items": items,
        }

    async def _serve_fetch(self, request: Request) -> rendering.Payload:
        assert request.resource is not None
        info = self._info(request.resource)
        namespace = request.namespace if info.namespaced is not False else None
        obj = self._live(request.resource, namespace, request.name)
        if obj is None:
            raise _error(
                404,
                "NotFound",
                f'{_group_resource(request.resource)} "{request.name}" not found',
                name=request.name,
                group=request.resource.group,
                kind=request.resource.plural,
            )
        if request.subresource is None or (request.subresource == "status" and "status" in info.subresources):
            return copy.deepcopy(obj)
        if request.subresource == "scale" and request.resource in self._scale_paths:
            return self._scale_of(request.resource, obj)
        raise _error(404, "NotFound", f"the server could not find the requested resource ({request.subresource})")

    async def _serve_watch(self, request: Request) -> AsyncIterator[rendering.Payload]:
        """A watch stream of JSON lines.

        Without `resourceVersion` (or with "0") it starts with an ADDED event per existing object, then
        streams live; with one, it replays the committed events after it, then streams live; one older
        than the retained history gets an ERROR event with 410 Expired, as after compaction. It ends
        cleanly after `timeoutSeconds`, or after the fault plan's watch_drop_after. Watching a named
        object (`.../NAME?watch=true`) is supported; `sendInitialEvents=true` ends the initial events with
        the BOOKMARK kopf's initial streaming waits for. Other bookmarks are not sent (they are optional).
        """
        assert request.resource is not None
        info = self._info(request.resource)
        labels, fields = self._selectors(request)
        namespace = request.namespace if info.namespaced is not False else None
        watcher = _Watcher(request.resource, namespace, request.name, labels, fields)
        loop = asyncio.get_running_loop()
        deadline, dropping = None, False
        if "timeoutSeconds" in request.params:
            deadline = loop.time() + float(request.params["timeoutSeconds"])
        plan = self.faults
        if plan is not None and plan.watch_drop_after is not None and not _is_harness(request):
            drop_at = loop.time() + plan.rng.uniform(*plan.watch_drop_after)
            if deadline is None or drop_at < deadline:
                deadline, dropping = drop_at, True
        since = request.params.get("resourceVersion", "")

        # The initial part and the subscription happen with no await in between: nothing is missed.
        initial: list[JsonDict] = []
        if since in ("", "0"):
            initial = [
                {"type": "ADDED", "object": copy.deepcopy(obj)}
                for _, obj in self._live_items(request.resource, namespace)
                if watcher.sees(obj)
            ]
            if request.params.get("sendInitialEvents") == "true":
                bookmark_meta = {
                    "resourceVersion": self.resource_version,
                    "annotations": {"k8s.io/initial-events-end": "true"},
                }
                initial.append(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": info.kind,
                            "apiVersion": _api_version(request.resource),
                            "metadata": bookmark_meta,
                        },
                    }
                )
        elif not since.isdigit():
            raise _error(400, "BadRequest", f"invalid resourceVersion {since!r}")
        elif int(since) < self._compacted_rv:
            initial = [
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "code": 410,
                        "reason": "Expired",
                        "message": f"too old resource version: {since} ({self._compacted_rv})",
                    },
                }
            ]
        else:
            replay = (
                watcher.translate(event)
                for event in self._log
                if event.resource == request.resource and event.rv > int(since)
            )
            initial = [event for event in replay if event is not None]
        self._watchers.append(watcher)
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
                self.injected["watch_drop"] += 1
        finally:
            self._watchers.remove(watcher)

    async def _serve_create(self, request: Request) -> rendering.Payload:
        return self._outcomes[request.id]

    async def _serve_update(self, request: Request) -> rendering.Payload:
        return self._outcomes[request.id]

    async def _serve_delete(self, request: Request) -> rendering.Payload:
        return self._outcomes[request.id]

    async def _serve_replace(self, request: Request) -> rendering.Payload:
        if request.id not in self._outcomes:  # a PUT outside the Kubernetes API paths
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return self._outcomes[request.id]
