"""What the operator wrote but its watches have not shown yet.

The indexes lag behind the operator's own writes by a watch round-trip. A pass that ran in that window
would see a just-created replica as missing and place it again — and give its devices to someone else.
So the reconciler remembers the pods it created (until they appear) and deleted (until they vanish) and
lays that over the indexes when it builds a pass's state, as Kubernetes' own ReplicaSet controller does
with its "expectations". Entries expire, so a lost watch event cannot pin a stale belief forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from gpufabric.api.refs import ObjectRef
from gpufabric.reconcile.state import PodRecord

EXPECTATION_TTL_SECONDS = 60.0


@dataclass
class Expectations:
    ttl: float = EXPECTATION_TTL_SECONDS
    created: dict[ObjectRef, tuple[PodRecord, float]] = field(default_factory=dict)
    deleted: dict[ObjectRef, float] = field(default_factory=dict)

    def expect_created(self, record: PodRecord) -> None:
        self.created[record.ref] = (record, time.monotonic() + self.ttl)

    def expect_deleted(self, pod: ObjectRef) -> None:
        self.deleted[pod] = time.monotonic() + self.ttl

    def overlay(self, observed: Iterable[PodRecord]) -> tuple[PodRecord, ...]:
        """The pods a pass should believe in: observed ones, plus created-but-unseen, with deleted-but-seen
        ones shown as terminating (they hold their devices until they are gone)."""
        now = time.monotonic()
        self.created = {k: v for k, v in self.created.items() if v[1] > now}
        self.deleted = {k: v for k, v in self.deleted.items() if v > now}
        pods: dict[ObjectRef, PodRecord] = {}
        for record in observed:
            self.created.pop(record.ref, None)  # seen: the watch caught up
            pods[record.ref] = replace(record, terminating=True) if record.ref in self.deleted else record
        seen_deleted = {k for k in self.deleted if k in pods}
        self.deleted = {k: v for k, v in self.deleted.items() if k in seen_deleted}
        for key, (record, _) in self.created.items():
            pods.setdefault(key, record)
        return tuple(pods.values())
