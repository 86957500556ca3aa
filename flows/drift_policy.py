"""The drift policy: when a monitoring window counts as drifted (the spec's ``drift`` section).

Kept apart from the drift check (flows.drift) so a spec can be read without NumPy or pandas.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["wasserstein", "jensenshannon", "ks", "chisquare", "z"]


class ColumnRule(BaseModel):
    """A per-column override: another method and/or threshold than Evidently's default."""

    model_config = ConfigDict(extra="forbid")

    method: Method | None = Field(default=None, description="Drift method for this column.")
    threshold: float | None = Field(
        default=None, gt=0, description="Threshold (p-value for ks/chisquare/z, else distance)."
    )


class DriftPolicy(BaseModel):
    """When a monitoring window counts as drifted, and when it is too small to say.

    The defaults are Evidently's DataDriftPreset defaults (dataset drift when at least half of
    the columns drift), so the fast check and the Evidently report tell the same story.
    """

    model_config = ConfigDict(extra="forbid")

    drift_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Dataset drift when the share of drifted columns reaches this value.",
    )
    min_rows: int = Field(
        default=200,
        ge=1,
        description="Fewer rows in the window than this: no verdict (too little evidence).",
    )
    columns: dict[str, ColumnRule] = Field(
        default_factory=dict, description="Per-column method and threshold overrides."
    )

    @model_validator(mode="after")
    def _share_is_a_fraction(self) -> DriftPolicy:
        if not 0 < self.drift_share <= 1:
            raise ValueError("drift_share must be in (0, 1]")
        return self
