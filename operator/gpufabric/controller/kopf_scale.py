"""A fix to kopf for fleets of thousands of objects, measured (benchmarks/operator_scale.py --profile).

While kopf fills its indexes at start-up, every object listed gets a toggle in one `ToggleSet`, every worker
waits on that set's condition until all toggles are gone, and every toggle added or dropped wakes every
waiter (`notify_all`), each of which then re-evaluates the whole set. With thousands of ComputeNodes and
Nodes that is quadratic: a quarter of the operator's CPU at 1,000 + 1,000, and most of it at 5,000 + 5,000.

A waiter only ever waits for the set's overall state (on/off) or for one toggle's own state; adding or
dropping a toggle changes no toggle's own state, so it needs to wake the waiters only when it changes the
set's overall state. That is what the replacements below do; everything else is kopf's. Checked against the
installed kopf by a test (tests/unit/test_kopf_scale.py): if kopf changes these internals, `apply` leaves kopf
alone and says so, and the test fails, rather than the operator breaking.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles

log = logging.getLogger(__name__)
_ORIGINALS = {
    name: getattr(aiotoggles.ToggleSet, name, None) for name in ("make_toggle", "drop_toggle", "drop_toggles")
}


async def make_toggle(
    self: aiotoggles.ToggleSet, value: bool = False, /, *, name: str | None = None
) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(value, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != before:
            self._condition.notify_all()


async def drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


def compatible() -> bool:
    """Whether the installed kopf has the internals the replacements rely on."""
    probe = aiotoggles.ToggleSet(all)
    return all(_ORIGINALS.values()) and hasattr(probe, "_condition") and hasattr(probe, "_toggles")


def apply() -> bool:
    """Install the replacements (idempotent); False, with a warning, if this kopf is not the one they fit."""
    if not compatible():
        log.warning("kopf's ToggleSet internals changed: start-up stays quadratic in the number of objects")
        return False
    aiotoggles.ToggleSet.make_toggle = make_toggle  # type: ignore[method-assign,assignment]
    aiotoggles.ToggleSet.drop_toggle = drop_toggle  # type: ignore[method-assign]
    aiotoggles.ToggleSet.drop_toggles = drop_toggles  # type: ignore[method-assign]
    return True
