"""Standard conditions: `lastTransitionTime` moves only when `status` changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gpufabric.api.common import Condition, ConditionStatus
from gpufabric.api.reasons import ConditionReason, ConditionType


@dataclass(frozen=True)
class Wanted:
    type: ConditionType
    status: bool
    reason: ConditionReason
    message: str


def merge(
    existing: Sequence[Condition], wanted: Sequence[Wanted], generation: int | None, now: datetime
) -> list[Condition]:
    """The wanted conditions in the given order, keeping each one's transition time unless its status
    changes; conditions of other types (written by someone else) are kept after ours."""
    current = {c.type: c for c in existing}
    merged = []
    for want in wanted:
        status = ConditionStatus.TRUE if want.status else ConditionStatus.FALSE
        before = current.get(want.type)
        since = before.last_transition_time if before is not None and before.status == status else now
        merged.append(
            Condition(
                type=want.type.value,
                status=status,
                observed_generation=generation,
                last_transition_time=since,
                reason=want.reason.value,
                message=want.message,
            )
        )
    ours = {w.type for w in wanted}
    return merged + [c for c in existing if c.type not in ours]


def same(a: Sequence[Condition], b: Sequence[Condition]) -> bool:
    """Equal as far as a reader can tell (transition times included)."""
    return [c.wire() for c in a] == [c.wire() for c in b]
