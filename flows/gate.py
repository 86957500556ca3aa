"""The acceptance gate: a pure function from metrics and a policy to a recorded decision.

Kept free of I/O so it can be tested on its own and so a decision can be recomputed from what a
run version stores (its metrics, the champion's metrics and the policy). :func:`load_policy`
checks a policy file against the pipeline's task (flows.tasks) when it is loaded, before any
kernel starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flows.errors import ConfigError
from flows.tasks import TASKS, TaskName, default_policy, higher_is_better, metric_names

Direction = Literal["higher_is_better", "lower_is_better"]


class Floor(BaseModel):
    """An absolute limit: the candidate's metric must be >= min and/or <= max."""

    model_config = ConfigDict(extra="forbid")
    min: float | None = Field(
        default=None, allow_inf_nan=False, description="Lowest acceptable value."
    )
    max: float | None = Field(
        default=None, allow_inf_nan=False, description="Highest acceptable value."
    )

    @model_validator(mode="after")
    def _has_a_consistent_bound(self) -> Floor:
        if self.min is None and self.max is None:
            raise ValueError("a floor needs 'min' or 'max'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"min {self.min} is above max {self.max}: no value could pass; swap or fix them"
            )
        return self


class ChampionCheck(BaseModel):
    """How much worse than the champion a candidate may be on one metric."""

    model_config = ConfigDict(extra="forbid")
    direction: Direction
    max_regression: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Allowed worsening in the metric's own units.",
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


_FIELD_HINTS = {
    "floors": "a floor takes 'min' and/or 'max'",
    "champion": "a champion check takes 'direction' (higher_is_better or lower_is_better) "
    "and 'max_regression'",
}


def _validation_line(exc: ValidationError) -> str:
    """The first problem of a pydantic error as ``where: what (fix)``."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "top level"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        section = str(first["loc"][0])
        hint = _FIELD_HINTS.get(section) if len(first["loc"]) > 1 else None
        message += f" ({hint or 'a policy has only floors and champion'})"
    elif first["type"] == "finite_number":
        message += " (not NaN or infinity)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}"


def _check_metrics(policy: GatePolicy, task: TaskName, where: str) -> None:
    """Every metric named is one of the task's, and champion directions match the metric's."""
    names = metric_names(task)
    for section, metrics in (("floors", policy.floors), ("champion", policy.champion)):
        for metric in metrics:
            if metric in names:
                continue
            other = [name for name, entry in TASKS.items() if metric in entry.metrics]
            why = (
                f"{metric} is a {other[0]} metric but this pipeline's task is {task}"
                if other
                else f"{task} has no metric {metric!r}"
            )
            raise ConfigError(
                f"gate policy {where}: {section}.{metric}: {why}; use one of "
                f"{', '.join(names)} or remove it"
            )
    for metric, rule in policy.champion.items():
        expected = "higher_is_better" if higher_is_better(metric) else "lower_is_better"
        if rule.direction != expected:
            raise ConfigError(
                f"gate policy {where}: champion.{metric}: direction {rule.direction} is wrong "
                f"for {metric}; set direction: {expected}"
            )


def load_policy(path: Path | None, task: TaskName | None) -> GatePolicy:
    """The gate policy of a pipeline of ``task``: the YAML at ``path``, or the task's default.

    Checked here, before any notebook runs: each problem is one ConfigError line naming the
    file, the metric and the fix (unreadable YAML, unknown fields, a metric ``task`` does not
    have, a wrong champion direction, NaN or infinite thresholds, min above max, no floors).
    ``task`` None (a notebook pipeline, ranked by its notebooks' own metrics): the metric names
    are not checked, and a file is required.
    """
    if path is None:
        if task is None:
            raise ConfigError("no gate policy file and no task to take a default policy from")
        return GatePolicy.model_validate(default_policy(task))
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"gate policy {path} not found: create it"
            + (f", or remove the spec's 'policy' to use the default {task} policy" if task else "")
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        detail = getattr(exc, "problem", None) or " ".join(str(exc).split())
        if mark is not None:
            detail += f" at line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(f"gate policy {path} is not valid YAML: {detail}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(
            f"gate policy {path} is invalid: it must be a mapping with 'floors' and 'champion', "
            f"not {type(raw).__name__}"
        )
    try:
        policy = GatePolicy.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(f"gate policy {path} is invalid at {_validation_line(exc)}") from exc
    if task is not None:
        _check_metrics(policy, task, str(path))
    if not policy.floors:
        metric, floor = next(iter(default_policy(task or "classification")["floors"].items()))
        raise ConfigError(
            f"gate policy {path} has no floors: a policy must have at least one floor (an empty "
            f"one would accept any model); add one, e.g. floors: {{{metric}: "
            f"{{min: {floor['min']}}}}}"
        )
    return policy


def ranking_metric(policy: GatePolicy) -> tuple[str, bool]:
    """The metric that ranks candidates (e.g. grid points) and whether higher is better.

    The first champion check's metric, else the first floor's.
    """
    for metric, rule in policy.champion.items():
        return metric, rule.direction == "higher_is_better"
    for metric, floor in policy.floors.items():
        try:
            return metric, higher_is_better(metric)
        except ValueError:
            return metric, floor.min is not None
    raise ValueError("the gate policy names no metric to rank by")


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
                    f"{metric} is missing or not a finite number in the candidate's metrics"
                    " (roc_auc and log_loss need a model with predict_proba; a metric the"
                    " holdout rows cannot define, e.g. with one class only, is NaN)",
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
