"""Estimated cost of a separation, from a price table kept in configuration (fal's prices may change).

fal's SAM Audio pages state "$0.05 per 30s of output audio" and "$0.025 per 30s per additional reranking
candidate" and name no rounding; fal's pricing documentation says only successful outputs are billed. Where
fal rounds an audio model's output up it says so on the model's page (ElevenLabs Music: "rounded up to the
closest minute"), so the estimate is proportional by default (`rounding: none`); `rounding: second` or
`unit` (whole 30 s units) give a cautious upper figure for whoever prefers one.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge.common.plain import UserModel

UNIT_SECONDS = 30.0


class PriceTable(UserModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field("USD", description="shown beside every cost")
    per_30s: float = Field(0.05, ge=0, description="price per 30 s of output audio")
    per_30s_extra_candidate: float = Field(0.025, ge=0, description="added per 30 s per extra candidate")
    rounding: Literal["none", "second", "unit"] = Field(
        "none", description="none: proportional (fal states no rounding); second: whole seconds up; unit: whole "
        "30 s units up")

    def billed_seconds(self, seconds: float) -> float:
        seconds = max(seconds, 0.0)
        if self.rounding == "second":
            return float(math.ceil(seconds - 1e-9))
        if self.rounding == "unit":
            return math.ceil(seconds / UNIT_SECONDS - 1e-9) * UNIT_SECONDS
        return seconds

    def estimate(self, seconds: float, reranking_candidates: int = 1) -> float:
        units = self.billed_seconds(seconds) / UNIT_SECONDS
        return round(units * (self.per_30s + self.per_30s_extra_candidate * max(reranking_candidates - 1, 0)), 4)


class FileEstimate(BaseModel):
    """What separating one file (or its part) would send and cost; nothing is sent to find out."""

    model_config = ConfigDict(frozen=True)

    source: str
    seconds: float = Field(description="seconds of audio sent per request (the part, or the audition window)")
    requests: int = Field(description="paid requests: one per step of the preset")
    estimated_cost: float
    currency: str = Field("USD", description="shown beside every cost")
    whole_seconds: float | None = Field(None, description="an audition: seconds of the whole part")
    whole_cost: float | None = Field(None, description="an audition: what separating the whole part would cost")
    confirm_above: float | None = Field(None, description="the configured amount above which to ask first")

    @property
    def needs_confirmation(self) -> bool:
        return self.confirm_above is not None and self.estimated_cost > self.confirm_above

    def line(self) -> str:
        text = (f"{self.source}: {self.seconds:.1f} s, {self.requests} request{'s' if self.requests != 1 else ''}, "
                f"{money(self.estimated_cost, self.currency)}")
        if self.whole_cost is not None and self.whole_seconds is not None:
            text += f" (the whole {self.whole_seconds:.1f} s: {money(self.whole_cost, self.currency)})"
        return text


def money(amount: float, currency: str = "USD") -> str:
    """Whole cents, or a tenth of a cent where fal's prices give one ($0.075 for 45 s): rounded to cents, the
    lines of an estimate did not add up to its total ($0.01 + $0.07 + $0.02 under a $0.10 total)."""
    cents = round(amount * 100, 6)
    text = f"{amount:.2f}" if cents == round(cents) else f"{amount:.3f}"
    return f"${text}" if currency == "USD" else f"{text} {currency}"
