"""Checks before the operator starts watching, each failing with one line that says what to do.

A user who starts the operator with the wrong credentials, before installing the CRDs, or without its
namespace would otherwise get a traceback, or a warning repeated every few seconds forever. Each check is
one request, and none writes anything: the namespace and permission checks are dry-run creates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpufabric.api.common import API_GROUP, API_VERSION
from gpufabric.throughput.learning import STORE_CONFIG_MAP

TIMEOUT = (5.0, 10.0)
DRY_RUN = "All"


class PreflightError(Exception):
    """The operator cannot work as started; the message is one line a person can act on."""


@dataclass(frozen=True)
class Identity:
    server: str
    username: str


def check(
    api_client: client.ApiClient, *, namespace: str, lease: str | None, source: str = "the kubeconfig"
) -> Identity:
    """Who we are, that our API is served, and that our own namespace exists and takes our writes."""
    server = str(api_client.configuration.host)
    identity = Identity(server, _whoami(api_client, server, source))
    _api_is_served(api_client, server)
    core = client.CoreV1Api(api_client)
    config_map = {"metadata": {"name": STORE_CONFIG_MAP, "namespace": namespace}}
    _dry_run_create(
        f"ConfigMap {namespace}/{STORE_CONFIG_MAP}",
        "configmaps",
        namespace,
        identity,
        lambda: core.create_namespaced_config_map(
            namespace, cast(Any, config_map), dry_run=DRY_RUN, _request_timeout=TIMEOUT
        ),
    )
    if lease is not None:
        coordination = client.CoordinationV1Api(api_client)
        body = {"metadata": {"name": lease, "namespace": namespace}, "spec": {}}
        _dry_run_create(
            f"Lease {namespace}/{lease}",
            "leases",
            namespace,
            identity,
            lambda: coordination.create_namespaced_lease(
                namespace, cast(Any, body), dry_run=DRY_RUN, _request_timeout=TIMEOUT
            ),
        )
    return identity


def _whoami(api_client: client.ApiClient, server: str, source: str) -> str:
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    try:
        response: Any = client.AuthenticationV1Api(api_client).create_self_subject_review(
            cast(Any, review), _request_timeout=TIMEOUT
        )
    except ApiException as error:
        if error.status == 401:
            raise PreflightError(
                f"the API server at {server} refused the credentials from {source} (401 Unauthorized)"
            ) from None
        raise PreflightError(f"the API server at {server} answered {error.status} {error.reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise PreflightError(f"cannot reach the API server at {server}: {_reason(error)}") from None
    user = response.status.user_info if response.status else None
    return str(user.username) if user and user.username else "an anonymous user"


def _api_is_served(api_client: client.ApiClient, server: str) -> None:
    try:
        client.CustomObjectsApi(api_client).get_api_resources(API_GROUP, API_VERSION, _request_timeout=TIMEOUT)
    except ApiException as error:
        if error.status == 404:
            raise PreflightError(
                f"{server} does not serve {API_GROUP}/{API_VERSION}: install the CRDs first (kubectl apply -f crds/)"
            ) from None
        raise PreflightError(f"discovery of {API_GROUP}/{API_VERSION}: {error.status} {error.reason}") from None


def _dry_run_create(what: str, resource: str, namespace: str, identity: Identity, create: Any) -> None:
    try:
        create()
    except ApiException as error:
        status = _status(error)
        if error.status == 409:
            return  # it exists: the namespace does too, and we may create it
        if error.status == 404 and (status.get("details") or {}).get("kind") == "namespaces":
            raise PreflightError(
                f"namespace {namespace} does not exist: create it (kubectl create namespace {namespace}) "
                "or pass --operator-namespace"
            ) from None
        if error.status == 403:
            raise PreflightError(
                f"forbidden: {identity.username} may not create {resource} in namespace {namespace} ({what}); "
                "grant the operator's RBAC (see the README's permissions)"
            ) from None
        raise PreflightError(f"{what}: {error.status} {status.get('message') or error.reason}") from None


def _status(error: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(error.body) if isinstance(error.body, (str, bytes)) else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split())
