"""One active operator: a coordination.k8s.io Lease decides which instance writes.

Every instance watches and keeps its indexes warm; only the Lease holder reconciles. The holder renews the
Lease every `renew_every` seconds; another instance takes it over once it has not been renewed for
`lease_seconds`. Renewals use the Lease's resourceVersion, so two instances can never both win a race.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from kubernetes.client.exceptions import ApiException

from gpufabric.controller.kube import REQUEST_TIMEOUT, Kube

log = logging.getLogger(__name__)


def _micro(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Leadership:
    kube: Kube | None
    namespace: str
    name: str
    identity: str
    lease_seconds: int = 15
    renew_every: float = 5.0
    on_elected: Callable[[], None] = lambda: None
    leading: bool = False

    @classmethod
    def always(cls) -> Leadership:
        """No election (a single instance, or tests): this instance always leads."""
        return cls(kube=None, namespace="", name="", identity="standalone", leading=True)

    async def run(self, stop: asyncio.Event) -> None:
        if self.kube is None:
            return
        while not stop.is_set():
            try:
                was = self.leading
                self.leading = await self._try_hold()
                if self.leading and not was:
                    log.info("leading: this instance holds Lease %s/%s", self.namespace, self.name)
                    self.on_elected()
                elif was and not self.leading:
                    log.warning("lost Lease %s/%s: no longer reconciling", self.namespace, self.name)
            except Exception as error:
                # Cannot tell whether we still hold it: stop writing until we can, and keep trying.
                self.leading = False
                log.warning(
                    "Lease %s/%s: %r",
                    self.namespace,
                    self.name,
                    error,
                    exc_info=not isinstance(error, (ApiException, OSError)),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.renew_every)

    async def _try_hold(self) -> bool:
        assert self.kube is not None
        api = self.kube.coordination
        now = datetime.now(UTC)
        try:
            lease = await asyncio.to_thread(
                api.read_namespaced_lease, self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status != 404:
                raise
            body = {
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, now, transitions=0),
            }
            try:
                await asyncio.to_thread(
                    api.create_namespaced_lease, self.namespace, cast(Any, body), _request_timeout=REQUEST_TIMEOUT
                )
            except ApiException as conflict:
                if conflict.status == 409:
                    return False  # someone else created it first
                raise
            return True
        spec = lease.spec
        holder = spec.holder_identity if spec else None
        renewed = spec.renew_time if spec else None
        duration = (spec.lease_duration_seconds if spec else None) or self.lease_seconds
        expired = renewed is None or _aware(renewed) + timedelta(seconds=duration) < now
        if holder != self.identity and not expired:
            return False
        transitions = (spec.lease_transitions or 0) if spec else 0
        acquired = _aware(spec.acquire_time) if spec and spec.acquire_time and holder == self.identity else now
        patch: dict[str, Any] = {
            "metadata": {"resourceVersion": lease.metadata.resource_version if lease.metadata else None},
            "spec": self._spec(acquired, now, transitions if holder == self.identity else transitions + 1),
        }
        try:
            await asyncio.to_thread(
                api.patch_namespaced_lease, self.name, self.namespace, patch, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status == 409:
                return False  # lost the race to another instance
            raise
        return True

    def _spec(self, acquired: datetime, renewed: datetime, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": _micro(acquired),
            "renewTime": _micro(renewed),
            "leaseTransitions": transitions,
        }


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
