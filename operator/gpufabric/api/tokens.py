"""Token throughput as it appears in status: the KPI users read with `kubectl get`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gpufabric.api.common import WireModel

NonNegativeRate = Annotated[float, Field(strict=True, ge=0)]


class TokensPerSecond(WireModel):
    """Measured token rates, averaged over the scrape window."""

    prompt: NonNegativeRate = Field(default=0.0, description="Prompt (prefill) tokens per second.")
    generation: NonNegativeRate = Field(default=0.0, description="Generated (decode) tokens per second.")
