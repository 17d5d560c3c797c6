"""The human-review band (`handler.review_band: [low, high]`, off when absent): an answer whose deciding score lies
in the band, ends included, gets `"review": true`, every other answer `"review": false`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

SETTING = "review_band"


@dataclass(frozen=True)
class ReviewBand:
    low: float
    high: float

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "ReviewBand | None":
        """The configured band, or None; a malformed one fails the model load, not a request."""
        value = settings.get(SETTING)
        if value in (None, "", "off", False):
            return None
        if isinstance(value, str):  # an environment or CLI value: "0.4,0.6"
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"handler.{SETTING} must be [low, high], got {value!r}") from None
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"handler.{SETTING} must satisfy 0 <= low <= high <= 1, got [{low}, {high}]")
        return cls(low, high)

    def needs_review(self, score: float) -> bool:
        return self.low <= score <= self.high


def mark(answer: dict, score: float, band: ReviewBand | None) -> bool:
    """Add the review flag to one answer when a band is configured; True when it needs a person."""
    if band is None:
        return False
    answer["review"] = band.needs_review(score)
    return answer["review"]
