from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from flows.errors import ConfigError
from flows.gate import GatePolicy, evaluate_gate, load_policy, ranking_metric
from flows.tasks import TaskName

POLICY = GatePolicy.model_validate(
    {
        "floors": {"roc_auc": {"min": 0.7}, "log_loss": {"max": 0.6}},
        "champion": {
            "roc_auc": {"direction": "higher_is_better", "max_regression": 0.01},
            "log_loss": {"direction": "lower_is_better", "max_regression": 0.02},
        },
    }
)


def test_first_run_passes_floors_and_skips_champion_checks() -> None:
    decision = evaluate_gate({"roc_auc": 0.8, "log_loss": 0.4}, None, POLICY)
    assert decision.accepted
    assert not decision.champion_compared
    assert any("no champion" in r for r in decision.reasons)


def test_floor_failure_rejects_and_names_metric() -> None:
    decision = evaluate_gate({"roc_auc": 0.65, "log_loss": 0.4}, None, POLICY)
    assert not decision.accepted
    assert decision.reasons == ["roc_auc 0.6500 < floor 0.7"]


def test_ceiling_failure_for_lower_is_better_floor() -> None:
    decision = evaluate_gate({"roc_auc": 0.8, "log_loss": 0.7}, None, POLICY)
    assert not decision.accepted
    assert "log_loss 0.7000 > ceiling 0.6" in decision.reasons


def test_regression_beyond_allowance_rejects() -> None:
    decision = evaluate_gate(
        {"roc_auc": 0.78, "log_loss": 0.40}, {"roc_auc": 0.80, "log_loss": 0.40}, POLICY
    )
    assert not decision.accepted
    assert len(decision.reasons) == 1
    assert "roc_auc" in decision.reasons[0] and "regressed by 0.0200" in decision.reasons[0]


def test_regression_within_allowance_and_direction_respected() -> None:
    # log_loss went down (better) and roc_auc dropped only 0.005 (allowed 0.01).
    decision = evaluate_gate(
        {"roc_auc": 0.795, "log_loss": 0.30}, {"roc_auc": 0.80, "log_loss": 0.40}, POLICY
    )
    assert decision.accepted
    assert decision.champion_compared


def test_lower_is_better_regression_rejects() -> None:
    decision = evaluate_gate(
        {"roc_auc": 0.80, "log_loss": 0.45}, {"roc_auc": 0.80, "log_loss": 0.40}, POLICY
    )
    assert not decision.accepted
    assert "log_loss" in decision.reasons[0]


@pytest.mark.parametrize("bad", [None, math.nan, "0.8", True])
def test_missing_or_non_numeric_metric_rejects(bad: object) -> None:
    metrics = {"roc_auc": bad, "log_loss": 0.4}
    decision = evaluate_gate(metrics, None, POLICY)  # type: ignore[arg-type]
    assert not decision.accepted
    assert "roc_auc is missing or not a finite number" in decision.reasons[0]


def test_decision_dict_records_every_check() -> None:
    record = evaluate_gate(
        {"roc_auc": 0.8, "log_loss": 0.4}, {"roc_auc": 0.8, "log_loss": 0.4}, POLICY
    ).to_dict()
    assert record["decision"] == "accepted"
    assert {c["metric"] for c in record["checks"]} == {"roc_auc", "log_loss"}
    assert len(record["checks"]) == 4


BUNDLED = Path(__file__).resolve().parent.parent / "deployments" / "policy.yaml"


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "churn.policy.yaml"
    path.write_text(text)
    return path


def test_bundled_policy_loads_for_classification_with_its_thresholds() -> None:
    policy = load_policy(BUNDLED, "classification")
    assert {m: (f.min, f.max) for m, f in policy.floors.items()} == {
        "roc_auc": (0.70, None),
        "f1": (0.20, None),
        "log_loss": (None, 0.60),
    }
    assert set(policy.champion) == {"roc_auc", "log_loss"}


def test_no_path_gives_the_tasks_default_policy() -> None:
    assert set(load_policy(None, "classification").floors) == {"roc_auc"}
    regression = load_policy(None, "regression")
    assert set(regression.floors) == {"r2"} and set(regression.champion) == {"r2"}


@pytest.mark.parametrize(
    ("text", "task", "expected"),
    [
        (
            "floors:\n  rmse: {max: 3}\n",
            "classification",
            r"floors\.rmse: rmse is a regression metric but this pipeline's task is "
            r"classification; use one of roc_auc, f1, accuracy, log_loss or remove it",
        ),
        (
            "floors:\n  r2: {min: 0.1}\nchampion:\n  roc_auc: {direction: higher_is_better}\n",
            "regression",
            r"champion\.roc_auc: roc_auc is a classification metric .* use one of rmse, mae, r2",
        ),
        (
            "floors:\n  precision: {min: 0.5}\n",
            "classification",
            r"floors\.precision: classification has no metric 'precision'; use one of",
        ),
        (
            "floors:\n  roc_auc: {min: 0.6}\n"
            "champion:\n  log_loss: {direction: higher_is_better}\n",
            "classification",
            r"champion\.log_loss: direction higher_is_better is wrong for log_loss; "
            r"set direction: lower_is_better",
        ),
        ("", "classification", r"has no floors: a policy must have at least one floor"),
        (
            "# only a comment\n",
            "regression",
            r"has no floors.*e\.g\. floors: \{r2: \{min: 0\.01\}\}",
        ),
        ("floors: {}\n", "classification", r"has no floors"),
        (
            "champion:\n  r2: {direction: higher_is_better}\n",
            "regression",
            r"has no floors",
        ),
        (
            "floors:\n  roc_auc: {min: .nan}\n",
            "classification",
            r"invalid at floors\.roc_auc\.min: Input should be a finite number \(not NaN",
        ),
        (
            "floors:\n  r2: {min: 0.1}\nchampion:\n  r2: {direction: higher_is_better, "
            "max_regression: .inf}\n",
            "regression",
            r"invalid at champion\.r2\.max_regression: Input should be a finite number",
        ),
        (
            "floors:\n  accuracy: {min: 0.9, max: 0.8}\n",
            "classification",
            r"invalid at floors\.accuracy: min 0\.9 is above max 0\.8: no value could pass",
        ),
        (
            "floors:\n  roc_auc: {minimum: 0.7}\n",
            "classification",
            r"invalid at floors\.roc_auc\.minimum: Extra inputs are not permitted \(a floor takes "
            r"'min' and/or 'max'\)",
        ),
        ("- roc_auc\n", "classification", r"must be a mapping with 'floors' and 'champion'"),
        ("floors: [unclosed\n", "classification", r"is not valid YAML"),
    ],
    ids=[
        "other-tasks-floor",
        "other-tasks-champion",
        "unknown-metric",
        "wrong-direction",
        "empty",
        "comment-only",
        "empty-floors",
        "champion-only",
        "nan",
        "inf",
        "min-above-max",
        "misspelt-field",
        "not-a-mapping",
        "bad-yaml",
    ],
)
def test_bad_policy_is_one_config_error_line_naming_file_metric_and_fix(
    tmp_path: Path, text: str, task: TaskName, expected: str
) -> None:
    path = write_policy(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_policy(path, task)
    message = str(raised.value)
    assert message.startswith(f"gate policy {path}")
    assert "\n" not in message
    assert re.search(expected, message), message


def test_without_a_task_only_the_shape_is_checked(tmp_path: Path) -> None:
    """A notebook pipeline ranks grid points by its notebooks' own metrics."""
    own = write_policy(tmp_path, "floors:\n  val_score: {min: 0.5}\n")
    assert set(load_policy(own, None).floors) == {"val_score"}
    with pytest.raises(ConfigError, match="has no floors"):
        load_policy(write_policy(tmp_path, "floors: {}\n"), None)
    with pytest.raises(ConfigError, match="no gate policy file and no task"):
        load_policy(None, None)


def test_missing_policy_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.yaml not found: create it, or remove"):
        load_policy(tmp_path / "absent.yaml", "regression")


def test_ranking_metric_is_the_first_champion_check_else_the_first_floor() -> None:
    assert ranking_metric(POLICY) == ("roc_auc", True)
    lower_first = GatePolicy.model_validate(
        {
            "floors": {"r2": {"min": 0.1}},
            "champion": {
                "rmse": {"direction": "lower_is_better"},
                "r2": {"direction": "higher_is_better"},
            },
        }
    )
    assert ranking_metric(lower_first) == ("rmse", False)
    floors_only = GatePolicy.model_validate(
        {"floors": {"log_loss": {"max": 0.5}, "f1": {"min": 0.1}}}
    )
    assert ranking_metric(floors_only) == ("log_loss", False)
    with pytest.raises(ValueError, match="no metric to rank by"):
        ranking_metric(GatePolicy())
