"""Evidently report writers, against the real Evidently 0.7.23 (no mocks).

The frames are small but big enough for Evidently's statistical tests to tell a shifted column
from an unshifted one; seeds keep the verdicts deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.reports import (
    ColumnRoles,
    ReportFiles,
    write_data_drift_report,
    write_data_summary_report,
    write_model_performance_report,
)

pytestmark = pytest.mark.integration

ROLES = ColumnRoles(
    numerical=["income", "age"],
    categorical=["region", "home_owner"],
    target="defaulted",
    datetime="application_date",
)
METRICS = {"accuracy", "precision", "recall", "f1", "roc_auc"}


def applications(rows: int, seed: int) -> pd.DataFrame:
    """Loan applications with every kind of column the pipeline feeds the reports."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "income": rng.normal(50_000, 10_000, rows),
            "age": rng.normal(40, 10, rows),
            # One categorical as pandas category dtype, one as plain object dtype.
            "region": pd.Categorical(rng.choice(["north", "south", "east"], rows)),
            "home_owner": rng.choice(["yes", "no"], rows),
            "defaulted": rng.integers(0, 2, rows),  # integer target
            # Dates as strings, as they come back from CSV.
            "application_date": pd.date_range("2024-01-01", periods=rows, freq="h").astype(str),
            "unrelated": rng.normal(size=rows),  # not in the roles: must be ignored
        }
    )
    frame.loc[:9, "age"] = np.nan
    return frame


def scored(rows: int, seed: int, signal: float, threshold: float) -> pd.DataFrame:
    """Holdout rows with a model's probability and its own 0/1 decision at ``threshold``."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, rows)
    probability = np.clip(signal * target + (1 - signal) * rng.uniform(size=rows), 0, 1)
    return pd.DataFrame(
        {
            "defaulted": target,
            "probability": probability,
            "prediction": (probability >= threshold).astype(int),
        }
    )


def assert_written(files: ReportFiles, out_dir: Path, name: str) -> None:
    """Both files exist where promised, the JSON is a loadable snapshot, the digest is JSON-safe."""
    from evidently.core.report import Snapshot

    assert files.name == name
    assert files.html == out_dir / f"{name}.html"
    assert files.json == out_dir / f"{name}.json"
    assert "<html" in files.html.read_text(encoding="utf-8")[:2000].lower()
    assert Snapshot.load(str(files.json)).dict()["metrics"]
    json.dumps(files.summary)


def test_data_summary_writes_html_and_json_with_row_count(tmp_path: Path) -> None:
    out_dir = tmp_path / "reports" / "nested"  # created on demand

    files = write_data_summary_report(applications(300, seed=1), ROLES, out_dir)

    assert_written(files, out_dir, "data_summary")
    summary = files.summary
    assert summary["rows"] == 300
    assert summary["columns"] == 6  # 2 numerical + 2 categorical + target + datetime
    assert summary["missing_cells"] == 10
    assert summary["missing_share"] == pytest.approx(10 / (300 * 6))
    assert summary["columns_with_missing"] == ["age"]
    assert "reference_rows" not in summary


def test_data_summary_with_reference_reports_both_row_counts(tmp_path: Path) -> None:
    files = write_data_summary_report(
        applications(250, seed=2), ROLES, tmp_path, reference=applications(400, seed=3)
    )

    assert files.summary["rows"] == 250
    assert files.summary["reference_rows"] == 400


def test_drift_flags_the_shifted_column_and_not_the_others(tmp_path: Path) -> None:
    reference = applications(400, seed=4)
    # Same rows reshuffled, income moved: unshifted columns then cannot drift by sampling chance
    # (Evidently's chi-square/Z-test flag ~5% of independent same-distribution samples).
    current = reference.sample(frac=1.0, random_state=5).reset_index(drop=True)
    current["income"] += 15_000

    files = write_data_drift_report(reference, current, ROLES, tmp_path)

    assert_written(files, tmp_path, "data_drift")
    summary = files.summary
    assert set(summary["per_column"]) == {"income", "age", "region", "home_owner"}  # no target
    assert summary["per_column"]["income"]["drifted"] is True
    assert summary["per_column"]["age"]["drifted"] is False
    assert summary["drifted_columns"] == ["income"]
    assert summary["n_drifted"] == 1
    assert summary["n_columns"] == 4
    assert summary["drift_share"] == pytest.approx(0.25)
    assert summary["dataset_drift"] is False
    age = summary["per_column"]["age"]
    assert isinstance(age["method"], str) and age["method"]
    assert isinstance(age["drift_score"], float) and isinstance(age["threshold"], float)


def test_performance_compares_candidate_with_champion(tmp_path: Path) -> None:
    candidate = scored(400, seed=6, signal=0.5, threshold=0.35)
    champion = scored(400, seed=6, signal=0.1, threshold=0.5)

    files = write_model_performance_report(candidate, ROLES, tmp_path, reference=champion)

    assert_written(files, tmp_path, "model_performance")
    current, reference = files.summary["current"], files.summary["reference"]
    assert set(current) == METRICS
    assert set(reference) == METRICS
    assert 0.0 <= reference["roc_auc"] < current["roc_auc"] <= 1.0
    # Label metrics follow the model's own decisions, not probabilities cut at 0.5.
    own_accuracy = (candidate["prediction"] == candidate["defaulted"]).mean()
    assert current["accuracy"] == pytest.approx(own_accuracy)


def test_performance_without_champion_has_no_reference(tmp_path: Path) -> None:
    files = write_model_performance_report(
        scored(300, seed=7, signal=0.4, threshold=0.5), ROLES, tmp_path
    )

    assert set(files.summary["current"]) == METRICS
    assert files.summary["reference"] is None


@pytest.mark.parametrize(
    ("write", "column", "which"),
    [
        (
            lambda out: write_data_summary_report(
                applications(50, seed=8).drop(columns="region"), ROLES, out
            ),
            "region",
            "current",
        ),
        (
            lambda out: write_data_drift_report(
                applications(50, seed=8).drop(columns="income"),
                applications(50, seed=9),
                ROLES,
                out,
            ),
            "income",
            "reference",
        ),
        (
            lambda out: write_model_performance_report(
                scored(50, seed=8, signal=0.5, threshold=0.5),
                ROLES,
                out,
                reference=scored(50, seed=9, signal=0.5, threshold=0.5).drop(columns="probability"),
            ),
            "probability",
            "reference",
        ),
    ],
    ids=["summary", "drift", "performance"],
)
def test_missing_column_raises_value_error_naming_it(
    tmp_path: Path, write: Callable[[Path], ReportFiles], column: str, which: str
) -> None:
    with pytest.raises(ValueError, match=rf"missing columns \['{column}'\] in {which} data"):
        write(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written
