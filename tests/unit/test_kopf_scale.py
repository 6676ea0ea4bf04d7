"""kopf_scale: the start-up toggles wake their waiters only when the set's state changes, and still do then."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from gpufabric.controller import kopf_scale


def test_it_fits_the_installed_kopf() -> None:
    assert kopf_scale.compatible(), "kopf's ToggleSet internals changed: revisit controller/kopf_scale.py"
    assert kopf_scale.apply()
    assert aiotoggles.ToggleSet.make_toggle is kopf_scale.make_toggle


async def test_waiters_wake_once_when_the_last_toggle_goes_and_not_before() -> None:
    kopf_scale.apply()
    toggles = aiotoggles.ToggleSet(all)
    woken = 0
    original = toggles._condition.notify_all

    def counted() -> None:
        nonlocal woken
        woken += 1
        original()

    toggles._condition.notify_all = counted  # type: ignore[method-assign]
    made = [await toggles.make_toggle(name=str(i)) for i in range(200)]
    assert woken == 1, "only the first toggle turns the set off"
    waiters = [asyncio.create_task(toggles.wait_for(True)) for _ in range(50)]
    await asyncio.sleep(0)
    for toggle in made[:-1]:
        await toggles.drop_toggle(toggle)
    await asyncio.sleep(0)
    assert woken == 1, "dropping all but the last changes nothing a waiter waits for"
    assert not any(w.done() for w in waiters)
    await toggles.drop_toggles([made[-1]])
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
    assert woken == 2
    assert toggles.is_on()


async def test_one_toggles_own_state_still_wakes_its_waiter() -> None:
    kopf_scale.apply()
    toggles = aiotoggles.ToggleSet(any)
    toggle = await toggles.make_toggle(False, name="one")
    waiter = asyncio.create_task(toggle.wait_for(True))
    await asyncio.sleep(0)
    await toggle.turn_to(True)
    await asyncio.wait_for(waiter, timeout=5)
    assert toggles.is_on()
