"""Argument types for the command line: every number a flag takes is checked here, before any work starts.

Each factory returns a callable for argparse's `type=`; a bad value raises ArgumentTypeError, so argparse
prints `gpufabric plan: error: argument --weight: …` with the usage line and exits 2, like any other usage
mistake. Messages say what is allowed, never a regular expression.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from gpufabric.api.common import DNS_LABEL_PATTERN, PATTERN_MEANINGS
from gpufabric.placement import weights as placement_weights

MAX_DNS_LABEL = 63


def _finite(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a finite number")
    return value


def _whole(raw: str) -> int:
    try:
        return int(raw, 10)
    except ValueError:
        pass
    try:
        float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    raise argparse.ArgumentTypeError(f"{raw!r} is not an integer")


def number(low: float, high: float, *, unit: str = "") -> Callable[[str], float]:
    """A finite float from `low` to `high`, both included."""
    suffix = f" {unit}" if unit else ""

    def parse(raw: str) -> float:
        value = _finite(raw)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{raw!r} is out of range: from {low:g} to {high:g}{suffix}")
        return value

    return parse


def integer(low: int, high: int) -> Callable[[str], int]:
    """A whole number from `low` to `high`, both included."""

    def parse(raw: str) -> int:
        value = _whole(raw)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{raw!r} is out of range: an integer from {low} to {high:,}")
        return value

    return parse


port = integer(1, 65535)


def dns_label(raw: str) -> str:
    """A namespace name, as the API server would accept it."""
    if len(raw) > MAX_DNS_LABEL or not re.fullmatch(DNS_LABEL_PATTERN, raw):
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a namespace name: it must be {PATTERN_MEANINGS[DNS_LABEL_PATTERN]}, "
            f"at most {MAX_DNS_LABEL} characters"
        )
    return raw


def weight(raw: str) -> tuple[str, float | int]:
    """`NAME=VALUE` for one placement weight, its value in the weight's range."""
    name, sep, value_text = raw.partition("=")
    if not sep or name not in placement_weights.RANGES:
        raise argparse.ArgumentTypeError(
            f"{raw!r}: expected NAME=VALUE with NAME one of {', '.join(placement_weights.RANGES)}"
        )
    allowed = placement_weights.describe_range(name)
    try:
        value: float | int = _whole(value_text) if name == "scan_limit" else _finite(value_text)
        placement_weights.Weights(**{name: value})  # type: ignore[arg-type]
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{raw!r}: {error}; {name} must be {allowed}") from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r}: {name} must be {allowed}") from None
    return name, value
