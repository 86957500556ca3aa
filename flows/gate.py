"""The acceptance gate: a pure function from metrics and a policy to a recorded decision.

Kept free of I/O so it can be tested on its own and so a decision can be recomputed from what a
run version stores (its metrics, the champion's metrics and the policy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flows.errors import ConfigError


class Floor(BaseModel):
    """An absolute limit: the candidate's metric must be >= min and/or <= max."""

    model_config = ConfigDict(extra="forbid")
    min: float | None = Field(default=None, description="Lowest acceptable value.")
    max: float | None = Field(default=None, description="Highest acceptable value.")

    @model_validator(mode="after")
    def _has_a_bound(self) -> Floor:
        if self.min is None and self.max is None:
            raise ValueError("a floor needs 'min' or 'max'")
        return self


class ChampionCheck(BaseModel):
    """How much worse than the champion a candidate may be on one metric."""

    model_config = ConfigDict(extra="forbid")
    direction: Literal["higher_is_better", "lower_is_better"]
    max_regression: float = Field(
        default=0.0, ge=0.0, description="Allowed worsening in the metric's own units."
    )


class GatePolicy(BaseModel):
    """Floors apply to every run; champion checks only when a champion exists."""

    model_config = ConfigDict(extra="forbid")
    floors: dict[str, Floor] = Field(default_factory=dict)
    champion: dict[str, ChampionCheck] = Field(default_factory=dict)


@dataclass(frozen=True)
class GateCheck:
    kind: Literal["floor", "champion"]
    metric: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str


@dataclass(frozen=True)
class GateDecision:
    accepted: bool
    checks: list[GateCheck] = field(default_factory=list)
    champion_compared: bool = False

    @property
    def reasons(self) -> list[str]:
        """Failed checks when rejected, every check when accepted: the why of the decision."""
        failed = [c.message for c in self.checks if not c.passed]
        return failed if failed else [c.message for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "decision": "accepted" if self.accepted else "rejected",
            "champion_compared": self.champion_compared,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
        }


def load_policy(path: Path) -> GatePolicy:
    """Read a YAML policy; a malformed file is a ConfigError naming the file and the field."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return GatePolicy.model_validate(raw)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"gate policy {path} not found: create it or set NBPROD_POLICY_PATH"
        ) from exc
    except (yaml.YAMLError, ValidationError) as exc:
        detail = str(exc).splitlines()[0:3]
        raise ConfigError(f"gate policy {path} is invalid: {' '.join(detail)}") from exc


def _usable(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _floor_checks(metrics: Mapping[str, float], floors: Mapping[str, Floor]) -> list[GateCheck]:
    checks: list[GateCheck] = []
    for metric, floor in floors.items():
        value = metrics.get(metric)
        if not _usable(value):
            checks.append(
                GateCheck(
                    "floor",
                    metric,
                    False,
                    None,
                    floor.min if floor.min is not None else floor.max,
                    f"{metric} is missing or not a finite number in the candidate's metrics;"
                    " the train notebook must write it to outputs.json",
                )
            )
            continue
        if floor.min is not None:
            ok = value >= floor.min
            checks.append(
                GateCheck(
                    "floor",
                    metric,
                    ok,
                    value,
                    floor.min,
                    f"{metric} {value:.4f} {'>=' if ok else '<'} floor {floor.min}",
                )
            )
        if floor.max is not None:
            ok = value <= floor.max
            checks.append(
                GateCheck(
                    "floor",
                    metric,
                    ok,
                    value,
                    floor.max,
                    f"{metric} {value:.4f} {'<=' if ok else '>'} ceiling {floor.max}",
                )
            )
    return checks


def _champion_checks(
    metrics: Mapping[str, float],
    champion: Mapping[str, float],
    rules: Mapping[str, ChampionCheck],
) -> list[GateCheck]:
    checks: list[GateCheck] = []
    for metric, rule in rules.items():
        new, old = metrics.get(metric), champion.get(metric)
        if not (_usable(new) and _usable(old)):
            checks.append(
                GateCheck(
                    "champion",
                    metric,
                    False,
                    new if _usable(new) else None,
                    None,
                    f"{metric} cannot be compared with the champion: missing on "
                    f"{'candidate' if not _usable(new) else 'champion'}",
                )
            )
            continue
        # Positive regression means the candidate is worse, whatever the metric's direction.
        regression = (old - new) if rule.direction == "higher_is_better" else (new - old)
        ok = regression <= rule.max_regression + 1e-12
        change = new - old
        checks.append(
            GateCheck(
                "champion",
                metric,
                ok,
                new,
                old,
                f"{metric} {new:.4f} vs champion {old:.4f} (change {change:+.4f}, "
                f"{rule.direction.replace('_', ' ')}, allowed regression {rule.max_regression})"
                + ("" if ok else f": regressed by {regression:.4f}"),
            )
        )
    return checks


def evaluate_gate(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    policy: GatePolicy,
) -> GateDecision:
    """Accept only if every floor holds and, when a champion exists, no metric regresses too far.

    ``champion`` holds the champion's metrics on the same holdout rows as the candidate's; with no
    champion (the first run) the change checks are skipped and that is recorded as a reason.
    """
    checks = _floor_checks(candidate, policy.floors)
    if champion is None:
        checks.append(
            GateCheck(
                "champion",
                "*",
                True,
                None,
                None,
                "no champion yet: change checks skipped (first accepted model)",
            )
        )
    else:
        checks.extend(_champion_checks(candidate, champion, policy.champion))
    return GateDecision(
        accepted=all(c.passed for c in checks),
        checks=checks,
        champion_compared=champion is not None,
    )
