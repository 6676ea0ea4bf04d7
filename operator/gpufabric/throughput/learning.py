"""What the fleet has measured, fed back into placement: an EWMA of generation tokens/s per device for each
(model size class, accelerator, precision), learned only from saturated replicas (requests were queueing,
so the rate is what the devices can do, not what clients happened to ask for).

The table is stored normalised by model size (tokens/s × billions of parameters per device), so a figure
learned serving a 7B model predicts an 8B one sensibly. Once an entry has `MIN_SAMPLES`, it replaces the
vendor table's prior for that entry; until then placement keeps using the prior.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from gpufabric.placement.estimates import ThroughputSource
from gpufabric.vendors import Precision

# Upper bounds (billions of parameters) of the size classes: 1.5B and 3B models share a class, 7B and 8B,
# and so on. Labels are the bound, e.g. "8B"; the last class is open ("400B+").
SIZE_CLASS_BOUNDS = (3.0, 8.0, 16.0, 40.0, 80.0, 160.0, 400.0)
EWMA_ALPHA = 0.2
MIN_SAMPLES = 10
# Where the operator keeps the table between runs (a ConfigMap in its own namespace), and the data key.
STORE_CONFIG_MAP = "gpufabric-learned-throughput"
STORE_KEY = "learned.json"


def size_class(parameters_billions: float) -> str:
    for bound in SIZE_CLASS_BOUNDS:
        if parameters_billions <= bound:
            return f"{bound:g}B"
    return f"{SIZE_CLASS_BOUNDS[-1]:g}B+"


def representative_size(label: str) -> float:
    """The model size a class stands for in capacity planning: its upper bound."""
    return float(label.rstrip("+").rstrip("B"))


SIZE_CLASSES = (*tuple(size_class(b) for b in SIZE_CLASS_BOUNDS), f"{SIZE_CLASS_BOUNDS[-1]:g}B+")


@dataclass
class Entry:
    # EWMA of generation tokens/s per device × billions of parameters
    normalised: float = 0.0
    samples: int = 0

    def add(self, value: float) -> None:
        self.normalised = value if self.samples == 0 else (1 - EWMA_ALPHA) * self.normalised + EWMA_ALPHA * value
        self.samples += 1


@dataclass
class LearnedThroughput:
    """A ThroughputSource: measured figures where there are enough, the prior elsewhere."""

    prior: ThroughputSource
    entries: dict[tuple[str, str, str], Entry] = field(default_factory=dict)

    def observe(
        self, accelerator: str, precision: Precision, parameters_billions: float, devices: int, tokens_per_second: float
    ) -> bool:
        """Learn from one saturated replica. Returns whether the sample was taken."""
        if devices < 1 or parameters_billions <= 0 or not math.isfinite(tokens_per_second) or tokens_per_second <= 0:
            return False
        key = (size_class(parameters_billions), accelerator, precision.value)
        self.entries.setdefault(key, Entry()).add(tokens_per_second / devices * parameters_billions)
        return True

    def snapshot(self) -> LearnedThroughput:
        """A copy nobody else changes: what one reconcile pass (in a worker thread) or one Prometheus scrape
        (in the HTTP server's thread) reads while the scraper keeps learning on the event loop."""
        entries = {key: Entry(entry.normalised, entry.samples) for key, entry in self.entries.items()}
        return LearnedThroughput(self.prior, entries)

    def learned(self, accelerator: str, precision: Precision, parameters_billions: float) -> float | None:
        entry = self.entries.get((size_class(parameters_billions), accelerator, precision.value))
        if entry is None or entry.samples < MIN_SAMPLES:
            return None
        return entry.normalised / parameters_billions

    def per_device(self, accelerator: str, precision: Precision, parameters_billions: float) -> float | None:
        measured = self.learned(accelerator, precision, parameters_billions)
        if measured is not None:
            return measured
        return self.prior.per_device(accelerator, precision, parameters_billions)

    # --- persistence (a ConfigMap's data) ---------------------------------------------------------------

    def dump(self) -> str:
        return json.dumps(
            [
                {
                    "sizeClass": k[0],
                    "accelerator": k[1],
                    "precision": k[2],
                    "normalised": round(e.normalised, 3),
                    "samples": e.samples,
                }
                for k, e in sorted(self.entries.items())
            ],
            sort_keys=True,
        )

    def load(self, text: str) -> list[str]:
        """Merge a dump; returns the problems with entries it skipped (never raises on bad data)."""
        problems: list[str] = []
        try:
            rows = json.loads(text)
        except ValueError as error:
            return [f"not JSON: {error}"]
        if not isinstance(rows, list):
            return ["not a list of entries"]
        for row in rows:
            try:
                key = (str(row["sizeClass"]), str(row["accelerator"]), Precision(row["precision"]).value)
                entry = Entry(float(row["normalised"]), int(row["samples"]))
            except (KeyError, TypeError, ValueError) as error:
                problems.append(f"skipped {row!r}: {error!r}")
                continue
            if (
                key[0] not in SIZE_CLASSES
                or not math.isfinite(entry.normalised)
                or entry.normalised < 0
                or entry.samples < 0
            ):
                problems.append(f"skipped {row!r}: out of range")
                continue
            self.entries[key] = entry
        return problems
