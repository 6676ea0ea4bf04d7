"""Fault injection: what an unreliable API server does to the operator's requests (conflicts, 5xx, watch
streams that end), drawn from a seeded generator so that a failing run can be repeated.

The emulator asks this module before serving any request that lacks `X-Harness: 1`; the harness and the
simulated kubelet are never hit, so a test's set-up and the cluster's own behaviour stay deterministic."""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Final

import kmock

from gpufabric.sandbox.emulator.kmockcompat import api_error

SERVER_ERRORS: Final = {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


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


def inject(plan: FaultPlan, request: kmock.Request, *, write: bool, injected: collections.Counter[str]) -> None:
    """Raise the API error this request draws, if any, counting it in `injected`. Discovery (/api, /apis,
    /version…) is spared: a failure there only delays start-up."""
    if request.resource is None or request.resource.plural is None:
        return
    if plan.server_error_rate and plan.rng.random() < plan.server_error_rate:
        code = plan.rng.choice(sorted(SERVER_ERRORS))
        injected["server_error"] += 1
        injected[f"http_{code}"] += 1
        raise api_error(code, SERVER_ERRORS[code], f"injected fault: {code} {SERVER_ERRORS[code]}")
    if write and plan.conflict_rate and plan.rng.random() < plan.conflict_rate:
        injected["conflict"] += 1
        message = "injected fault: the object has been modified; please apply your changes to the latest version"
        raise api_error(409, "Conflict", message)


def watch_drop_at(plan: FaultPlan, now: float) -> float | None:
    """When a new watch stream is to be dropped (loop time), or None if the plan drops none."""
    return None if plan.watch_drop_after is None else now + plan.rng.uniform(*plan.watch_drop_after)
