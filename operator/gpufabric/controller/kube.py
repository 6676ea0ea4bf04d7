"""The operator's writes to the API server, through the official client, with retries.

Every write is idempotent from the operator's point of view: creating what exists (409 AlreadyExists) and
deleting what is gone (404) count as done, because names are stable and the next pass reconciles from the
truth anyway. 409 Conflict, 429, 5xx and timeouts are retried with exponential backoff and jitter; anything
else fails the action, which the reconciler reports and retries on a later pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpufabric.api import labels
from gpufabric.api.common import API_GROUP, API_VERSION
from gpufabric.api.reasons import EventReason, EventType
from gpufabric.api.refs import Kind, ObjectRef

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = frozenset({409, 429, 500, 502, 503, 504})
REQUEST_TIMEOUT = (5.0, 30.0)
# Every write: bounded, and its response not deserialised (nothing reads the server's echo, and a quirky
# echo must not fail a write that succeeded).
WRITE: dict[str, Any] = {"_request_timeout": REQUEST_TIMEOUT, "_preload_content": False}
MERGE_PATCH: dict[str, Any] = {**WRITE, "_content_type": "application/merge-patch+json"}
PLURALS = {Kind.COMPUTE_NODE: "computenodes", Kind.AGENT_WORKLOAD: "agentworkloads"}
# The events' source and reporting component.
COMPONENT = "gpu-fabric-operator"


class WriteFailedError(Exception):
    def __init__(self, what: str, status: int | None, reason: str) -> None:
        super().__init__(f"{what}: {status or 'no response'} {reason}")
        self.what = what
        self.status = status
        self.reason = reason


class NamespaceTerminatingError(WriteFailedError):
    """A create refused because its namespace is being deleted (403, cause NamespaceTerminating)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_delay: float = 0.1
    max_delay: float = 2.0


class Kube:
    """Thin async wrapper: each call runs the blocking client in a worker thread."""

    def __init__(
        self,
        api_client: client.ApiClient,
        retry: RetryPolicy | None = None,
        on_write: Callable[[str, str], None] | None = None,
        threads: int = 16,
    ) -> None:
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.retry = retry or RetryPolicy()
        self.on_write = on_write or (lambda verb, resource: None)
        # Its own threads, as many as the reconciler's concurrent writes: asyncio's default executor has
        # min(32, CPUs + 4), six on two cores, which queued a pass's writes behind one another.
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gpufabric-kube")

    async def run(self, fn: Callable[[], T]) -> T:
        """A blocking client call in one of this client's threads."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def _call(
        self,
        what: str,
        verb: str,
        resource: str,
        fn: Callable[[], T],
        *,
        ok: frozenset[int] = frozenset(),
        exists_ok: bool = False,
        exists_raise: bool = False,
    ) -> T | None:
        """The write, retried; `exists_ok`: AlreadyExists counts as done; `exists_raise`: it fails at once
        (status 409) for the caller to handle, instead of being retried as a conflict."""
        delay = self.retry.first_delay
        for attempt in range(1, self.retry.attempts + 1):
            try:
                self.on_write(verb, resource)
                result = await self.run(fn)
                # Writes do not read their response (_preload_content=False): no model of ours depends on the
                # server's echo, and a quirky echo cannot fail a write that succeeded.
                if isinstance(result, urllib3.response.HTTPResponse):
                    result.drain_conn()
                    result.release_conn()
                    return None
                return result
            except ApiException as error:
                if error.status in ok or (
                    exists_ok and error.status == 409 and _status_reason(error) == "AlreadyExists"
                ):
                    return None
                if error.status == 403 and _namespace_terminating(error):
                    raise NamespaceTerminatingError(what, 403, _reason(error)) from None
                if exists_raise and error.status == 409 and _status_reason(error) == "AlreadyExists":
                    raise WriteFailedError(what, 409, "AlreadyExists") from None
                if error.status not in RETRYABLE or attempt == self.retry.attempts:
                    raise WriteFailedError(what, error.status, _reason(error)) from None
                log.info("%s: %s %s, retrying (%d/%d)", what, error.status, error.reason, attempt, self.retry.attempts)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                if attempt == self.retry.attempts:
                    raise WriteFailedError(what, None, str(error)) from None
                log.info("%s: %s, retrying (%d/%d)", what, error, attempt, self.retry.attempts)
            except Exception as error:  # anything else from the client: fail this write, not the pass
                raise WriteFailedError(what, None, repr(error)) from error
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.retry.max_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- pods and services ----------------------------------------------------------------------------

    async def create_pod(self, manifest: dict[str, Any]) -> None:
        namespace = manifest["metadata"]["namespace"]
        await self._call(
            f"create pod {namespace}/{manifest['metadata']['name']}",
            "create",
            "pods",
            partial(self.core.create_namespaced_pod, namespace, cast(Any, manifest), **WRITE),
            exists_ok=True,
        )

    async def delete_pod(self, namespace: str, name: str, *, force: bool) -> None:
        await self._call(
            f"delete pod {namespace}/{name}",
            "delete",
            "pods",
            partial(
                self.core.delete_namespaced_pod, name, namespace, grace_period_seconds=0 if force else None, **WRITE
            ),
            ok=frozenset({404}),
        )

    async def create_service(self, manifest: dict[str, Any]) -> None:
        namespace = manifest["metadata"]["namespace"]
        await self._call(
            f"create service {namespace}/{manifest['metadata']['name']}",
            "create",
            "services",
            partial(self.core.create_namespaced_service, namespace, cast(Any, manifest), **WRITE),
            exists_ok=True,
        )

    async def delete_service(self, namespace: str, name: str) -> None:
        await self._call(
            f"delete service {namespace}/{name}",
            "delete",
            "services",
            partial(self.core.delete_namespaced_service, name, namespace, **WRITE),
            ok=frozenset({404}),
        )

    async def apply_config_map(self, manifest: dict[str, Any], *, create_first: bool = False) -> None:
        """Replace the ConfigMap's data, creating the ConfigMap (as given) if it does not exist. The likelier
        case goes first (`create_first` for a new replica's), so it costs one write."""
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        create = partial(self._call, f"create ConfigMap {namespace}/{name}", "create", "configmaps")
        patch = partial(self._call, f"save ConfigMap {namespace}/{name}", "patch", "configmaps")
        create_call = partial(self.core.create_namespaced_config_map, namespace, cast(Any, manifest), **WRITE)
        data = cast(Any, {"data": manifest["data"]})
        patch_call = partial(self.core.patch_namespaced_config_map, name, namespace, data, **WRITE)
        if create_first:
            try:
                await create(create_call, exists_raise=True)
            except WriteFailedError as error:
                if error.status != 409:
                    raise
                await patch(patch_call)
            return
        try:
            await patch(patch_call)
        except WriteFailedError as error:
            if error.status != 404:
                raise
            await create(create_call, exists_ok=True)

    async def delete_config_map(self, namespace: str, name: str) -> None:
        await self._call(
            f"delete ConfigMap {namespace}/{name}",
            "delete",
            "configmaps",
            partial(self.core.delete_namespaced_config_map, name, namespace, **WRITE),
            ok=frozenset({404}),
        )

    # --- our kinds -------------------------------------------------------------------------------------

    async def patch_status(self, target: ObjectRef, status: dict[str, Any]) -> None:
        plural = PLURALS[target.kind]
        body = {"status": status}
        call = (
            partial(
                self.custom.patch_cluster_custom_object_status,
                API_GROUP,
                API_VERSION,
                plural,
                target.name,
                body,
                **MERGE_PATCH,
            )
            if target.namespace is None
            else partial(
                self.custom.patch_namespaced_custom_object_status,
                API_GROUP,
                API_VERSION,
                target.namespace,
                plural,
                target.name,
                body,
                **MERGE_PATCH,
            )
        )
        await self._call(f"patch {target} status", "patch", f"{plural}/status", call, ok=frozenset({404}))

    async def create_compute_node(self, body: dict[str, Any]) -> None:
        await self._call(
            f"create ComputeNode {body['metadata']['name']}",
            "create",
            "computenodes",
            partial(self.custom.create_cluster_custom_object, API_GROUP, API_VERSION, "computenodes", body, **WRITE),
            exists_ok=True,
        )

    async def patch_compute_node(self, name: str, patch: dict[str, Any]) -> None:
        await self._call(
            f"patch ComputeNode {name}",
            "patch",
            "computenodes",
            partial(
                self.custom.patch_cluster_custom_object,
                API_GROUP,
                API_VERSION,
                "computenodes",
                name,
                patch,
                **MERGE_PATCH,
            ),
            ok=frozenset({404}),
        )

    async def scale_workload(self, namespace: str, name: str, replicas: int) -> None:
        """spec.replicas and the annotation that says the tokens/s autoscaler set it, in one patch."""
        patch = {"metadata": {"annotations": {labels.SCALED_TO: str(replicas)}}, "spec": {"replicas": replicas}}
        await self._call(
            f"scale AgentWorkload {namespace}/{name} to {replicas}",
            "patch",
            "agentworkloads",
            partial(
                self.custom.patch_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                namespace,
                "agentworkloads",
                name,
                patch,
                **MERGE_PATCH,
            ),
            ok=frozenset({404}),
        )

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            found = await self.run(
                partial(self.core.read_namespaced_config_map, name, namespace, _request_timeout=REQUEST_TIMEOUT)
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise WriteFailedError(f"read ConfigMap {namespace}/{name}", error.status, _reason(error)) from None
        return dict(found.data or {})

    # --- events ----------------------------------------------------------------------------------------

    async def event(
        self, about: ObjectRef, uid: str | None, type_: EventType, reason: EventReason, message: str
    ) -> None:
        """A core/v1 Event about one of our objects, in its namespace (`default` for cluster-scoped ones)."""
        now = datetime.now(UTC)
        where = about.namespace or "default"
        body = {
            "metadata": {"generateName": f"{about.name}.", "namespace": where},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": about.kind.value,
                "name": about.name,
                **({"namespace": about.namespace} if about.namespace else {}),
                **({"uid": uid} if uid else {}),
            },
            "type": type_.value,
            "reason": reason.value,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        await self._call(
            f"event {reason.value} on {about}",
            "create",
            "events",
            partial(self.core.create_namespaced_event, where, cast(Any, body), **WRITE),
        )


def _status_reason(error: ApiException) -> str | None:
    """The `reason` of the Status body: AlreadyExists and Conflict are both 409."""
    try:
        body = json.loads(error.body) if isinstance(error.body, (str, bytes)) else {}
    except ValueError:
        return None
    reason = body.get("reason") if isinstance(body, dict) else None
    return str(reason) if reason else None


def _namespace_terminating(error: ApiException) -> bool:
    """The namespace lifecycle admission's refusal: `... is forbidden: unable to create new content in
    namespace agents because it is being terminated`, with a NamespaceTerminating cause (kubernetes
    plugin/pkg/admission/namespace/lifecycle)."""
    try:
        body = json.loads(error.body) if isinstance(error.body, (str, bytes)) else {}
    except ValueError:
        return False
    causes = ((body.get("details") or {}).get("causes") or []) if isinstance(body, dict) else []
    return any(isinstance(c, dict) and c.get("type") == "NamespaceTerminating" for c in causes) or (
        "because it is being terminated" in str(body.get("message", "") if isinstance(body, dict) else "")
    )


def _reason(error: ApiException) -> str:
    return str(error.reason or "") + (f": {error.body[:300]}" if isinstance(error.body, str) and error.body else "")
