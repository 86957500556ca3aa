from __future__ import annotations

import math
from pathlib import Path

import pytest

from flows.errors import ConfigError
from flows.gate import GatePolicy, evaluate_gate, load_policy

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


def test_load_policy_reports_file_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("floors:\n  roc_auc: {minimum: 0.7}\n")
    with pytest.raises(ConfigError, match="policy.yaml is invalid"):
        load_policy(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "absent.yaml")


def test_bundled_policy_loads() -> None:
    policy = load_policy(Path(__file__).resolve().parent.parent / "deployments" / "policy.yaml")
    assert "roc_auc" in policy.floors and "roc_auc" in policy.champion
