"""Evidently reports for the pipeline: data summary, data drift and model performance.

Each report is written twice: an HTML page for people and Evidently's own snapshot JSON, so the
run can later be loaded into an Evidently workspace. The numbers the gate and the run records
need are pulled out of the snapshot into a small ``summary`` digest, so no caller has to know
Evidently's metric layout.

Evidently takes seconds to import, so it is imported inside the functions that use it; importing
this module stays cheap (the CLI's ``--help`` budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.warmup import warm_up

if TYPE_CHECKING:
    import pandas as pd
    from evidently.core.report import Snapshot

__all__ = [
    "ColumnRoles",
    "ReportFiles",
    "write_data_drift_report",
    "write_data_summary_report",
    "write_model_performance_report",
]

EVIDENTLY_WARM_UP = "evidently"


def warm_up_evidently() -> None:
    """Import what the report functions import, in the background (flows.warmup).

    Why: Evidently takes ~5 s to import; the training flow starts this while its notebooks run
    and calls ``wait_for_warm_up(EVIDENTLY_WARM_UP)`` once they are done.
    """

    def load() -> None:
        import evidently.core.report
        import evidently.metrics
        import evidently.presets  # noqa: F401

    warm_up(EVIDENTLY_WARM_UP, load)


# Evidently's classification task names inside one DataDefinition. Two tasks are needed because
# 0.7.23 silently ignores ``prediction_labels`` when ``prediction_probas`` is set on the same task
# and re-derives labels at a 0.5 threshold; the model's own labels may use another threshold.
_LABELS_TASK = "default"  # ClassificationPreset's per-label metrics hard-code this name
_SCORES_TASK = "scores"


@dataclass(frozen=True)
class ColumnRoles:
    """Which column plays which part, so reports never guess types from dtypes."""

    numerical: list[str]
    categorical: list[str]
    target: str | None = None
    prediction: str = "prediction"
    probability: str = "probability"
    datetime: str | None = None

    @property
    def features(self) -> list[str]:
        """Model inputs only: the target and the timestamp would drift for reasons of their own."""
        return [*self.numerical, *self.categorical]


@dataclass(frozen=True)
class ReportFiles:
    """Where a report went, plus the digest that gate records and artifacts carry."""

    name: str
    html: Path
    json: Path
    summary: dict[str, Any]


def write_data_summary_report(
    current: pd.DataFrame,
    roles: ColumnRoles,
    out_dir: Path,
    reference: pd.DataFrame | None = None,
) -> ReportFiles:
    """Profile the data a run consumed; with ``reference`` the HTML shows both side by side.

    Summary keys: ``rows``, ``columns``, ``missing_cells``, ``missing_share`` (missing cells over
    all cells), ``columns_with_missing``, ``duplicated_rows``, ``empty_rows``,
    ``constant_columns``, ``almost_constant_columns`` and, with a reference, ``reference_rows``.
    """
    from evidently import Report
    from evidently.presets import DataSummaryPreset

    numerical = list(roles.numerical)
    categorical = list(roles.categorical)
    if roles.target is not None:
        # The target is a binary label here: its class balance is what matters, not its mean.
        categorical.append(roles.target)
    datetimes = [roles.datetime] if roles.datetime is not None else []
    columns = [*numerical, *categorical, *datetimes]

    _require_columns(current, columns, "current", "data summary")
    if reference is not None:
        _require_columns(reference, columns, "reference", "data summary")

    definition = _definition(numerical, categorical, datetimes)
    snapshot = Report([DataSummaryPreset()]).run(
        _dataset(current, columns, definition),
        None if reference is None else _dataset(reference, columns, definition),
        name="data_summary",
    )

    entries = _metric_entries(snapshot)
    rows = int(_single(entries, "RowCount")["value"])
    n_columns = int(_single(entries, "ColumnCount", column_type=None)["value"])
    missing_cells = int(_single(entries, "DatasetMissingValueCount")["value"]["count"])
    summary: dict[str, Any] = {
        "rows": rows,
        "columns": n_columns,
        "missing_cells": missing_cells,
        # Evidently's own "share" divides missing cells by rows, so it can exceed 1; per cell is
        # what a threshold can be set on.
        "missing_share": missing_cells / (rows * n_columns) if rows and n_columns else 0.0,
        "columns_with_missing": sorted(
            entry["config"]["column"]
            for entry in entries
            if _kind(entry) == "MissingValueCount" and entry["value"]["count"] > 0
        ),
        "duplicated_rows": int(_single(entries, "DuplicatedRowCount")["value"]),
        "empty_rows": int(_single(entries, "EmptyRowsCount")["value"]),
        "constant_columns": int(_single(entries, "ConstantColumnsCount")["value"]),
        "almost_constant_columns": int(_single(entries, "AlmostConstantColumnsCount")["value"]),
    }
    if reference is not None:
        row_count_id = _single(entries, "RowCount")["id"]
        summary["reference_rows"] = int(_reference_value(snapshot, row_count_id))
    return _write(snapshot, "data_summary", out_dir, summary)


def write_data_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    roles: ColumnRoles,
    out_dir: Path,
) -> ReportFiles:
    """Compare feature distributions; Evidently picks the test per column type and size.

    The per-column ``drifted`` flag and ``dataset_drift`` are Evidently's own verdicts (its
    drift tests), because whether a low or a high score means drift depends on the method
    (p-values for K-S/chi-square on small data, distances for Wasserstein/Jensen-Shannon on
    larger data).
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset

    features = roles.features
    if not features:
        raise ValueError("data drift report: ColumnRoles has no numerical or categorical columns")
    _require_columns(reference, features, "reference", "data drift")
    _require_columns(current, features, "current", "data drift")

    definition = _definition(roles.numerical, roles.categorical, [])
    # include_tests turns on the per-column drift verdicts; without it only scores come back.
    report = Report([DataDriftPreset(columns=features)], include_tests=True)
    snapshot = report.run(
        _dataset(current, features, definition),
        _dataset(reference, features, definition),
        name="data_drift",
    )

    entries = _metric_entries(snapshot)
    verdicts = _test_verdicts(snapshot)
    count_entry = _single(entries, "DriftedColumnsCount")
    per_column: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if _kind(entry) != "ValueDrift":
            continue
        config = entry["config"]
        per_column[config["column"]] = {
            "drift_score": float(entry["value"]),
            "method": str(config["method"]),
            "threshold": float(config["threshold"]),
            "drifted": _failed(verdicts, entry["id"], f"drift of column {config['column']!r}"),
        }
    missing = sorted(set(features) - set(per_column))
    if missing:
        raise RuntimeError(f"data drift report: Evidently returned no drift score for {missing}")

    drifted = sorted(column for column, result in per_column.items() if result["drifted"])
    summary = {
        "drift_share": float(count_entry["value"]["share"]),
        "drifted_columns": drifted,
        "n_drifted": int(count_entry["value"]["count"]),
        "n_columns": len(per_column),
        # Evidently's rule: dataset drift when the drifted share reaches this threshold.
        "drift_share_threshold": float(count_entry["config"]["drift_share"]),
        "dataset_drift": _failed(verdicts, count_entry["id"], "dataset drift"),
        "per_column": per_column,
    }
    return _write(snapshot, "data_drift", out_dir, summary)


def write_model_performance_report(
    current: pd.DataFrame,
    roles: ColumnRoles,
    out_dir: Path,
    reference: pd.DataFrame | None = None,
) -> ReportFiles:
    """Score the candidate on the holdout and, when there is a champion, the champion beside it.

    ``current`` holds the candidate's predictions and ``reference`` the champion's on the same
    rows, so Evidently's current/reference columns read as candidate/champion.
    Accuracy, precision, recall and F1 come from the label column (the model's own threshold);
    ROC AUC comes from the probability column.
    """
    from evidently import BinaryClassification, DataDefinition, Report
    from evidently.metrics import RocAuc
    from evidently.presets import ClassificationPreset

    if roles.target is None:
        raise ValueError("model performance report: ColumnRoles.target is not set")
    columns = [roles.target, roles.prediction, roles.probability]
    _require_columns(current, columns, "current", "model performance")
    if reference is not None:
        _require_columns(reference, columns, "reference", "model performance")

    definition = DataDefinition(
        numerical_columns=[roles.probability],
        categorical_columns=[roles.target, roles.prediction],
        classification=[
            BinaryClassification(
                name=_LABELS_TASK, target=roles.target, prediction_labels=roles.prediction
            ),
            BinaryClassification(
                name=_SCORES_TASK, target=roles.target, prediction_probas=roles.probability
            ),
        ],
    )
    label_columns = [roles.target, roles.prediction]
    report = Report([ClassificationPreset(), RocAuc(classification_name=_SCORES_TASK)])
    snapshot = report.run(
        _dataset(_bool_labels_as_int(current, label_columns), columns, definition),
        None
        if reference is None
        else _dataset(_bool_labels_as_int(reference, label_columns), columns, definition),
        name="model_performance",
    )

    entries = _metric_entries(snapshot)
    metric_ids = {
        "accuracy": _single(entries, "Accuracy", classification_name=_LABELS_TASK)["id"],
        "precision": _single(entries, "Precision", classification_name=_LABELS_TASK)["id"],
        "recall": _single(entries, "Recall", classification_name=_LABELS_TASK)["id"],
        "f1": _single(entries, "F1Score", classification_name=_LABELS_TASK)["id"],
        "roc_auc": _single(entries, "RocAuc", classification_name=_SCORES_TASK)["id"],
    }
    values = {entry["id"]: entry["value"] for entry in entries}
    summary: dict[str, Any] = {
        "current": {key: float(values[metric_id]) for key, metric_id in metric_ids.items()},
        "reference": None
        if reference is None
        else {
            key: float(_reference_value(snapshot, metric_id))
            for key, metric_id in metric_ids.items()
        },
    }
    return _write(snapshot, "model_performance", out_dir, summary)


def _require_columns(frame: pd.DataFrame, columns: list[str], which: str, report: str) -> None:
    """Fail before Evidently does: its error for an absent column names neither side nor role."""
    missing = [column for column in dict.fromkeys(columns) if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{report} report: missing columns {missing} in {which} data "
            f"(it has {sorted(map(str, frame.columns))})"
        )
    if frame.empty:
        raise ValueError(f"{report} report: {which} data has no rows")


def _definition(numerical: list[str], categorical: list[str], datetimes: list[str]) -> Any:
    """Declare every column's type so Evidently does not guess (an int 0/1 column looks numeric)."""
    from evidently import DataDefinition

    return DataDefinition(
        numerical_columns=list(numerical),
        categorical_columns=list(categorical),
        datetime_columns=list(datetimes),
    )


def _dataset(frame: pd.DataFrame, columns: list[str], definition: Any) -> Any:
    """Hand Evidently only the role columns, in the dtypes it copes with.

    Extra columns would be profiled with guessed types. Categorical columns go in as plain
    objects: with a pandas ``category`` dtype, a declared-but-unused category crashes 0.7.23's
    summary rendering (KeyError) when reference and current have different category sets.
    """
    import pandas as pd
    from evidently import Dataset

    data = frame.loc[:, list(dict.fromkeys(columns))].copy()
    for column in definition.categorical_columns or []:
        if isinstance(data[column].dtype, pd.CategoricalDtype):
            data[column] = data[column].astype(object)
    for column in definition.datetime_columns or []:
        if not pd.api.types.is_datetime64_any_dtype(data[column]):
            # Parquet/CSV round trips can leave dates as strings; Evidently needs real datetimes.
            data[column] = pd.to_datetime(data[column], errors="coerce")
    return Dataset.from_pandas(data, data_definition=definition)


def _bool_labels_as_int(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Turn True/False labels into 1/0.

    With a bool target 0.7.23's ROC AUC fails ("mix of binary and continuous targets"), because
    the positive label defaults to 1.
    """
    bools = [column for column in columns if frame[column].dtype == bool]
    if not bools:
        return frame
    return frame.astype({column: int for column in bools})


def _metric_entries(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Top-level metric results as ``{"id", "metric_name", "config", "value"}`` dicts."""
    return [entry for entry in snapshot.dict()["metrics"] if entry]


def _kind(entry: dict[str, Any]) -> str:
    """Metric class name, e.g. ``"evidently:metric_v2:RocAuc"`` -> ``"RocAuc"``."""
    return str(entry["config"]["type"]).rsplit(":", 1)[-1]


def _single(entries: list[dict[str, Any]], kind: str, **params: Any) -> dict[str, Any]:
    """Find one metric by class and config, failing loudly if Evidently's layout changed."""
    matches = [
        entry
        for entry in entries
        if _kind(entry) == kind
        and all(entry["config"].get(key) == value for key, value in params.items())
    ]
    if len(matches) != 1:
        raise RuntimeError(
            f"expected one Evidently {kind} metric with {params or 'default config'}, "
            f"found {len(matches)}; was evidently upgraded past 0.7.23?"
        )
    return matches[0]


def _reference_value(snapshot: Snapshot, metric_id: str) -> Any:
    """A metric's value on the reference data.

    Evidently computes it in the same run but keeps it on the run context only: neither
    ``Snapshot.dict()`` nor the saved snapshot JSON carries reference values.
    """
    return snapshot.context.get_reference_metric_result(metric_id).to_simple_dict()


def _test_verdicts(snapshot: Snapshot) -> dict[str, list[str]]:
    """Test statuses (``"SUCCESS"``/``"FAIL"``/...) per metric id."""
    verdicts: dict[str, list[str]] = {}
    for test in snapshot.dict()["tests"]:
        status = test["status"]
        verdicts.setdefault(test["metric_config"]["metric_id"], []).append(
            str(getattr(status, "value", status))
        )
    return verdicts


def _failed(verdicts: dict[str, list[str]], metric_id: str, what: str) -> bool:
    """True when Evidently's default test for a metric failed, i.e. it detected drift."""
    statuses = verdicts.get(metric_id)
    if not statuses:
        raise RuntimeError(f"data drift report: Evidently returned no test verdict for {what}")
    return "FAIL" in statuses


def _write(snapshot: Snapshot, name: str, out_dir: Path, summary: dict[str, Any]) -> ReportFiles:
    """Save the HTML and the workspace-loadable snapshot JSON side by side."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / f"{name}.html"
    json_path = out_dir / f"{name}.json"
    # save_html silently writes nothing unless given a str (a Path or file object is ignored).
    snapshot.save_html(str(html))
    # dumps() is the SnapshotModel form that Snapshot.load() and workspaces read back;
    # json()/save_json() write a metrics-only digest that cannot be loaded again.
    json_path.write_text(snapshot.dumps(), encoding="utf-8")
    return ReportFiles(name=name, html=html, json=json_path, summary=summary)
