"""The harness's own client: set-up and assertions over real HTTP with `X-Harness: 1`, so they take the
same code paths as the operator's requests but are never hit by injected faults and are not counted by
`FabricEmulator.writes()`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import kmock

from gpufabric.sandbox.emulator.kmockcompat import header
from gpufabric.sandbox.emulator.store import JsonDict, meta
from gpufabric.sandbox.emulator.writes import JSON_PATCH, MERGE_PATCH

HARNESS_HEADER: Final = "X-Harness"

ResourceRef = str | kmock.resource


class HarnessError(Exception):
    """A harness request answered with an error Status."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.reason: str | None = body.get("reason") if isinstance(body, Mapping) else None
        super().__init__(f"{status} {self.reason}: {body.get('message') if isinstance(body, Mapping) else body}")


def as_resource(ref: ResourceRef) -> kmock.resource:
    """`'v1/pods'`, `'gpufabric.io/v1alpha1/computenodes'` or a kmock.resource."""
    return ref if isinstance(ref, kmock.resource) else kmock.resource(ref)


def is_harness(request: kmock.Request) -> bool:
    return header(request, HARNESS_HEADER) == "1"


def api_path(
    resource: ResourceRef, *, namespace: str | None = None, name: str | None = None, subresource: str | None = None
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


class HarnessClient:
    """The `h_*` methods of `FabricEmulator`; they send through kmock's `request()` to its own server."""

    __slots__ = ()
    api_path = staticmethod(api_path)

    if TYPE_CHECKING:  # provided by kmock.RawHandler

        def request(self, method: str, url: str, **kwargs: Any) -> Any: ...

    async def h_request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JsonDict:
        """One harness request; returns the decoded JSON answer or raises HarnessError for 4xx/5xx."""
        headers = {HARNESS_HEADER: "1", "Content-Type": content_type, "Connection": "close"}
        data = None if body is None else json.dumps(body)
        async with self.request(method, path, data=data, params=params or {}, headers=headers) as response:
            answer: JsonDict = await response.json(content_type=None)
            if response.status >= 400:
                raise HarnessError(response.status, answer)
            return answer

    async def h_create(
        self, resource: ResourceRef, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> JsonDict:
        """POST; the namespace defaults to the body's metadata.namespace."""
        namespace = namespace if namespace is not None else meta(body).get("namespace")
        return await self.h_request("POST", api_path(resource, namespace=namespace), body=dict(body))

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
        path = api_path(resource, namespace=namespace, name=name, subresource=subresource)
        if isinstance(patch, list):
            return await self.h_request("PATCH", path, body=patch, content_type=JSON_PATCH)
        return await self.h_request("PATCH", path, body=dict(patch), content_type=MERGE_PATCH)

    async def h_delete(
        self, resource: ResourceRef, name: str, *, namespace: str | None = None, grace_period_seconds: int | None = None
    ) -> JsonDict:
        options: JsonDict = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        return await self.h_request("DELETE", api_path(resource, namespace=namespace, name=name), body=options)

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
        query, path = {"watch": "true", **(params or {})}, api_path(resource, namespace=namespace)
        headers = {HARNESS_HEADER: "1", "Connection": "close"} if harness else {"Connection": "close"}
        async with self.request("GET", path, params=query, headers=headers) as response:
            if response.status >= 400:
                raise HarnessError(response.status, await response.json(content_type=None))
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)
