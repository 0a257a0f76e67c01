"""Estimated cost of a separation, from a price table kept in configuration (fal's prices may change)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = "USD"
    per_30s: float = Field(0.05, ge=0, description="price per 30 s of output audio")
    per_30s_extra_candidate: float = Field(0.025, ge=0, description="added per 30 s per extra candidate")

    def estimate(self, seconds: float, reranking_candidates: int = 1) -> float:
        units = max(seconds, 0.0) / 30.0
        return round(units * (self.per_30s + self.per_30s_extra_candidate * max(reranking_candidates - 1, 0)), 4)
