"""Where the operator's (and `gpufabric capacity`'s) credentials come from: kubectl's sources, in kubectl's
order, so a user's mental model carries over.

1. `--kubeconfig` / `--context` when given;
2. else, inside a pod (`KUBERNETES_SERVICE_HOST` set and a ServiceAccount token mounted), that ServiceAccount;
3. else `$KUBECONFIG` (several files joined with ':' are merged, as kubectl merges them), else
   `~/.kube/config`, with its current context unless `--context` names another.

One loader for the whole process: the writes (official client) and the watches (kopf) log in with the
same configuration, so they can never act as two different identities.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import urllib3
import yaml
from kubernetes import client, config

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class CredentialsError(Exception):
    """No usable credentials: the message is one line a person can act on."""


def in_a_pod() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and SERVICE_ACCOUNT_TOKEN.is_file()


def kubeconfig_paths(explicit: str | None) -> str:
    """The kubeconfig file(s) kubectl would read: the flag, else $KUBECONFIG, else ~/.kube/config."""
    return explicit or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def load(kubeconfig: str | None = None, context: str | None = None) -> client.Configuration:
    """A client configuration from the first source that applies; CredentialsError if none does."""
    configuration = client.Configuration()
    if kubeconfig is None and context is None and in_a_pod():
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException as error:
            raise CredentialsError(f"in-cluster ServiceAccount credentials are unusable: {error}") from None
        return configuration
    paths = kubeconfig_paths(kubeconfig)
    missing = [p for p in paths.split(os.pathsep) if p and not Path(p).expanduser().is_file()]
    if missing and len(missing) == len([p for p in paths.split(os.pathsep) if p]):
        raise CredentialsError(
            f"no credentials: not running in a pod, and no kubeconfig at {', '.join(missing)} "
            "(pass --kubeconfig or set KUBECONFIG)"
        )
    for path in paths.split(os.pathsep):
        if path and Path(path).expanduser().is_file():
            _check_shape(Path(path).expanduser(), context if os.pathsep not in paths else None)
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=paths, context=context, client_configuration=configuration, persist_config=False
        )
    except config.ConfigException as error:
        raise CredentialsError(f"kubeconfig {paths}: {_one_line(error)}") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        # The loader assumes a well-formed file; anything else (not YAML, not a mapping) surfaces as these.
        raise CredentialsError(f"kubeconfig {paths} is not a usable kubeconfig: {_one_line(error)}") from None
    if not configuration.verify_ssl:
        _insecure_once(str(configuration.host))
    return configuration


_warned_insecure: set[str] = set()


def _insecure_once(server: str) -> None:
    """A kubeconfig with insecure-skip-tls-verify: said once per server, here, instead of urllib3's
    InsecureRequestWarning (with a stack line) on every request the process makes."""
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    if server not in _warned_insecure:
        _warned_insecure.add(server)
        log.warning("TLS verification of %s is off (insecure-skip-tls-verify in the kubeconfig)", server)


def _check_shape(path: Path, context: str | None) -> None:
    """What the client's loader assumes without checking: YAML, a mapping, the context asked for."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CredentialsError(f"kubeconfig {path} cannot be read: {_one_line(error)}") from None
    if not isinstance(document, dict) or not isinstance(document.get("contexts", []), list):
        raise CredentialsError(
            f"kubeconfig {path} is not a kubeconfig (a YAML mapping of clusters, users and contexts)"
        )
    if context is not None:
        names = [c.get("name") for c in document.get("contexts") or [] if isinstance(c, dict)]
        if context not in names:
            known = ", ".join(str(n) for n in names) or "none"
            raise CredentialsError(f"context {context} is not in kubeconfig {path} (its contexts: {known})")


def bearer_token(configuration: client.Configuration) -> tuple[str | None, str | None]:
    """(scheme, token) from a loaded configuration: tokens, exec plugins and in-cluster files all end here."""
    # Since client 36 the token sits under BearerToken, before that under authorization.
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    if not header:
        return None, None
    scheme, _, token = str(header).partition(" ")
    return (scheme, token) if token else (None, scheme)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
