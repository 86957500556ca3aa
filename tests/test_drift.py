"""The fast drift check against Evidently's own DataDriftPreset verdicts, on real Evidently.

Synthetic cases cover every default method (small reference: K-S, chi-square, Z; large
reference: Wasserstein, Jensen-Shannon on categories and on few-valued numbers), drifted and
not; the bundled loans data must drift from October on and not before.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.drift import (
    ColumnRule,
    DriftPolicy,
    ReferenceProfile,
    check_drift,
    profile_reference,
)
from flows.errors import DriftError

ROOT = Path(__file__).resolve().parent.parent
NUMERICAL = ["x", "y", "k", "b"]
CATEGORICAL = ["c", "d"]
LOAN_NUMERICAL = [
    "age",
    "annual_income",
    "loan_amount",
    "term_months",
    "interest_rate",
    "credit_score",
    "debt_to_income",
    "num_open_accounts",
]
LOAN_CATEGORICAL = ["employment_type", "home_ownership", "purpose"]


def synthetic(n: int, shift: float, seed: int) -> pd.DataFrame:
    """Continuous, skewed, few-valued and categorical columns; ``shift`` moves all of them."""
    rng = np.random.default_rng(seed)
    three = np.array([0.5, 0.3, 0.2]) + np.array([-1, 0.5, 0.5]) * shift
    two = np.array([0.5, 0.5]) + np.array([-1, 1]) * shift
    x = rng.normal(shift, 1 + shift, n)
    x[:3] = np.nan  # Evidently drops missing values per column; so must the check
    return pd.DataFrame(
        {
            "x": x,
            "y": rng.exponential(1 + shift, n),
            "k": rng.choice([1, 2, 3], n, p=three),
            "b": rng.choice([0, 1], n, p=two),
            "c": rng.choice(["a", "b", "c"], n, p=three),
            "d": rng.choice(["u", "v"], n, p=two),
        }
    )


def evidently_verdicts(
    reference: pd.DataFrame, current: pd.DataFrame, tmp_path: Path
) -> dict[str, dict]:
    from flows.reports import ColumnRoles, write_data_drift_report

    roles = ColumnRoles(numerical=NUMERICAL, categorical=CATEGORICAL)
    return write_data_drift_report(reference, current, roles, tmp_path).summary["per_column"]


@pytest.mark.parametrize(
    ("ref_rows", "cur_rows", "shift", "methods"),
    [
        (400, 300, 0.0, {"x": "ks", "k": "chisquare", "b": "z", "c": "chisquare", "d": "z"}),
        (400, 300, 0.25, {"x": "ks", "k": "chisquare", "b": "z", "c": "chisquare", "d": "z"}),
        (3000, 1500, 0.0, {"x": "wasserstein", "k": "jensenshannon", "c": "jensenshannon"}),
        (3000, 1500, 0.25, {"x": "wasserstein", "k": "jensenshannon", "c": "jensenshannon"}),
        (3000, 1500, 0.06, {"x": "wasserstein", "b": "jensenshannon", "d": "jensenshannon"}),
    ],
)
def test_verdicts_match_evidently(
    ref_rows: int, cur_rows: int, shift: float, methods: dict[str, str], tmp_path: Path
) -> None:
    reference = synthetic(ref_rows, 0.0, seed=1)
    current = synthetic(cur_rows, shift, seed=2)
    profile = profile_reference(reference, NUMERICAL, CATEGORICAL)
    fast = check_drift(profile, current, DriftPolicy(min_rows=1))
    slow = evidently_verdicts(reference, current, tmp_path)
    for column in NUMERICAL + CATEGORICAL:
        ours, theirs = fast.columns[column], slow[column]
        assert ours.method_name == theirs["method"], column
        assert ours.threshold == theirs["threshold"], column
        assert ours.drifted == theirs["drifted"], (column, ours.score, theirs["drift_score"])
        assert ours.score == pytest.approx(theirs["drift_score"], rel=0.02, abs=1e-3), column
    for column, method in methods.items():
        assert fast.columns[column].method == method
    if shift >= 0.25:
        assert fast.verdict == "drift" and fast.drifted_columns
    if shift == 0.0:
        assert fast.verdict == "no_drift"


@pytest.fixture(scope="module")
def loans_profile() -> tuple[ReferenceProfile, pd.DataFrame]:
    reference = pd.read_csv(ROOT / "data" / "reference.csv")
    loans = pd.read_csv(ROOT / "data" / "loans.csv", parse_dates=["application_date"])
    return profile_reference(reference, LOAN_NUMERICAL, LOAN_CATEGORICAL), loans


def _window(loans: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    stamps = loans["application_date"]
    return loans[(stamps >= start) & (stamps < end)]


def test_bundled_data_drifts_from_october(
    loans_profile: tuple[ReferenceProfile, pd.DataFrame],
) -> None:
    profile, loans = loans_profile
    result = check_drift(profile, _window(loans, "2024-10-01", "2025-01-01"))
    assert result.verdict == "drift"
    assert {"annual_income", "credit_score", "interest_rate", "purpose"} <= set(
        result.drifted_columns
    )
    assert result.columns["annual_income"].method == "wasserstein"
    assert result.columns["term_months"].method == "jensenshannon"  # two values: discrete


def test_bundled_data_does_not_drift_in_summer(
    loans_profile: tuple[ReferenceProfile, pd.DataFrame],
) -> None:
    profile, loans = loans_profile
    result = check_drift(profile, _window(loans, "2024-07-01", "2024-10-01"))
    assert result.verdict == "no_drift"
    assert result.drifted_columns == []
    assert result.drift_share == 0.0


def test_profile_is_json_and_round_trips(
    loans_profile: tuple[ReferenceProfile, pd.DataFrame],
) -> None:
    profile, loans = loans_profile
    text = json.dumps(profile.to_dict())
    assert len(text) < 500_000  # small enough to store with every champion
    again = ReferenceProfile.from_dict(json.loads(text))
    window = _window(loans, "2024-10-01", "2025-01-01")
    assert check_drift(again, window).to_dict() == check_drift(profile, window).to_dict()
    income = profile.columns["annual_income"]
    assert income.quantiles is not None and income.quantile_error < 0.005


def test_too_few_rows_gives_no_verdict_and_says_why() -> None:
    profile = profile_reference(synthetic(500, 0.0, seed=1), NUMERICAL, CATEGORICAL)
    result = check_drift(profile, synthetic(40, 0.3, seed=2), DriftPolicy(min_rows=100))
    assert result.verdict == "no_verdict"
    assert result.dataset_drift is None
    assert "too few rows: 40" in result.reason and "at least 100" in result.reason
    assert result.columns == {}


def test_policy_overrides_method_threshold_and_share() -> None:
    reference = synthetic(3000, 0.0, seed=1)
    current = synthetic(1500, 0.06, seed=2)
    profile = profile_reference(reference, NUMERICAL, CATEGORICAL)
    default = check_drift(profile, current)
    policy = DriftPolicy(
        drift_share=0.1,
        columns={"x": ColumnRule(threshold=0.01), "y": ColumnRule(method="ks")},
    )
    tuned = check_drift(profile, current, policy)
    assert tuned.columns["x"].threshold == 0.01 and tuned.columns["x"].drifted
    assert tuned.columns["y"].method == "ks"
    assert tuned.columns["y"].score == pytest.approx(
        __import__("scipy").stats.ks_2samp(reference["y"], current["y"]).pvalue, rel=0.3, abs=1e-3
    )
    assert default.verdict == "no_drift" and tuned.verdict == "drift"


def test_misfit_inputs_are_named() -> None:
    profile = profile_reference(synthetic(3000, 0.0, seed=1), NUMERICAL, CATEGORICAL)
    with pytest.raises(DriftError, match=r"lacks the columns \['c'\]"):
        check_drift(profile, synthetic(300, 0.0, seed=2).drop(columns=["c"]))
    with pytest.raises(DriftError, match="needs category counts"):
        check_drift(
            profile,
            synthetic(300, 0.0, seed=2),
            DriftPolicy(columns={"x": ColumnRule(method="chisquare")}),
        )
    with pytest.raises(DriftError, match="reference lacks"):
        check_drift(profile, synthetic(300, 0.0, seed=2), DriftPolicy(columns={"zz": {}}))


def test_pandas_categories_count_like_plain_values() -> None:
    """Unused categories of a ``category`` dtype must not become zero-count keys."""
    reference = synthetic(3000, 0.0, seed=1)
    current = synthetic(300, 0.0, seed=2)
    typed = current.astype({"c": pd.CategoricalDtype(["a", "b", "c", "unused"])})
    profile = profile_reference(reference, NUMERICAL, CATEGORICAL)
    assert check_drift(profile, typed).to_dict() == check_drift(profile, current).to_dict()


def test_empty_column_in_window_is_not_judged() -> None:
    profile = profile_reference(synthetic(3000, 0.0, seed=1), NUMERICAL, CATEGORICAL)
    current = synthetic(300, 0.0, seed=2)
    current["y"] = np.nan
    result = check_drift(profile, current)
    assert result.columns["y"].drifted is None
    assert result.columns["y"].note == "no values in the window"
    assert result.to_dict()["n_columns"] == len(NUMERICAL + CATEGORICAL) - 1


@pytest.mark.parametrize("n", [4001, 25_000, 120_000])
def test_profile_quantiles_and_counts_are_numpys(n: int) -> None:
    """The profile reads order statistics off its sorted copy; the numbers must stay NumPy's."""
    frame = synthetic(n, 0.3, seed=n)
    frame["y"] = frame["y"].round(3)  # ties, as in real data
    profile = profile_reference(frame, NUMERICAL, CATEGORICAL)
    for name in ("x", "y"):
        values = frame[name].dropna().to_numpy()
        column = profile.columns[name]
        assert column.quantiles is not None and column.quantile_probs is not None
        assert column.quantiles == np.quantile(values, column.quantile_probs).tolist()
        assert column.n_unique == np.unique(values).size
    uniques, counts = np.unique(frame["k"].to_numpy(), return_counts=True)
    assert profile.columns["k"].counts == {
        str(int(u)): int(c) for u, c in zip(uniques, counts, strict=True)
    }


def test_missing_and_infinite_categories_are_not_counted() -> None:
    reference = synthetic(3000, 0.0, seed=1)
    reference["f"] = np.where(np.arange(3000) % 2, 1.0, 2.0)
    current = synthetic(300, 0.0, seed=2)
    current["c"] = current["c"].astype(object)
    current.loc[:9, "c"] = None
    current.loc[10:19, "c"] = np.nan
    current["f"] = np.r_[[np.inf, -np.inf, np.nan] * 10, np.ones(270)]
    profile = profile_reference(reference, NUMERICAL, [*CATEGORICAL, "f"])
    assert profile.columns["f"].rows == 3000 and profile.columns["f"].counts == {
        "1": 1500,
        "2": 1500,
    }
    result = check_drift(profile, current)
    assert result.columns["c"].rows == 280
    assert result.columns["f"].rows == 270


def test_profile_without_non_feature_columns() -> None:
    """A pipeline's ids, time and target leave the profile; production rows need not have them."""
    frame = synthetic(3000, 0.0, seed=1)
    profile = profile_reference(frame, NUMERICAL, CATEGORICAL)
    features = profile.without(["b", "d", "not-a-column"])
    assert features.numerical == ["x", "y", "k"] and features.categorical == ["c"]
    assert set(features.columns) == {"x", "y", "k", "c"} and features.rows == profile.rows
    assert set(profile.columns) == {*NUMERICAL, *CATEGORICAL}  # the original is unchanged
    current = synthetic(300, 0.0, seed=2).drop(columns=["b", "d"])
    assert check_drift(features, current).verdict == "no_drift"
    assert ReferenceProfile.from_dict(features.to_dict()) == features
