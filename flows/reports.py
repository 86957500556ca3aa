"""Evidently reports for the pipeline: data summary, data drift and model performance.

Each report is written twice: an HTML page for people and Evidently's own snapshot JSON, so the
run can later be loaded into an Evidently workspace. The numbers the run records need are pulled
out of the snapshot into a small ``summary`` digest, so no caller has to know Evidently's metric
layout. The model performance report uses the task's preset (flows.tasks): classification
(binary or multiclass, labels as strings or numbers) or regression.

Evidently takes seconds to import, so it is imported inside the functions that use it; importing
this module stays cheap (the CLI's ``--help`` budget).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.tasks import Scored, TaskName, evidently_preset, task_info
from flows.warmup import warm_up

if TYPE_CHECKING:
    import pandas as pd
    from evidently.core.report import Snapshot

__all__ = [
    "EVIDENTLY_WARM_UP",
    "ColumnRoles",
    "ReportFiles",
    "warm_up_evidently",
    "write_data_drift_report",
    "write_data_summary_report",
    "write_model_performance_report",
    "write_training_reports",
]

EVIDENTLY_WARM_UP = "evidently"


def warm_up_evidently() -> None:
    """Import what the report functions import, in the background (flows.warmup).

    Why: Evidently takes ~5 s to import; the training flow starts this while its notebooks run
    and calls ``wait_for_warm_up(EVIDENTLY_WARM_UP)`` once they are done. It covers
    ``sklearn.metrics`` too (~1 s, flows.tasks.compute_metrics), which Evidently imports anyway.
    """

    def load() -> None:
        import evidently.core.report
        import evidently.metrics
        import evidently.presets  # noqa: F401
        import sklearn.metrics  # noqa: F401

    warm_up(EVIDENTLY_WARM_UP, load)


# Evidently task names inside one DataDefinition. Two are needed because 0.7.23 ignores
# ``prediction_labels`` when ``prediction_probas`` is set on the same task and re-derives labels
# from the probabilities (0.5 or argmax); the model's own predict() may decide otherwise.
_LABELS_TASK = "default"  # ClassificationPreset's per-label metrics hard-code this name
_SCORES_TASK = "scores"
_TARGET = "target"
_PREDICTION = "prediction"


@dataclass(frozen=True)
class ColumnRoles:
    """Which column plays which part, so reports never guess types from dtypes.

    ``target_numerical``: the target is a quantity (regression) rather than a label.
    """

    numerical: list[str]
    categorical: list[str]
    target: str | None = None
    datetime: str | None = None
    target_numerical: bool = False

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


def write_training_reports(
    *,
    task: TaskName,
    target: str,
    numerical: list[str],
    categorical: list[str],
    reference: pd.DataFrame,
    current: pd.DataFrame,
    candidate: Scored,
    champion: Scored | None,
    out_dir: Path,
    time_column: str | None = None,
) -> dict[str, ReportFiles]:
    """The three reports of a training run, by name: data_summary, data_drift, model_performance.

    ``current`` is the data the run trained on and ``reference`` the data it is compared with
    (both with the target, and ``time_column`` when given); ``candidate`` and ``champion`` are
    the two models scored on the same holdout rows.
    """
    roles = ColumnRoles(
        numerical=list(numerical),
        categorical=list(categorical),
        target=target,
        datetime=time_column,
        target_numerical=task == "regression",
    )
    summary = write_data_summary_report(current, roles, out_dir, reference=reference)
    drift = write_data_drift_report(reference, current, roles, out_dir)
    performance = write_model_performance_report(task, candidate, out_dir, champion=champion)
    return {files.name: files for files in (summary, drift, performance)}


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
        # A label's class balance is what matters, not its mean; a quantity's distribution.
        (numerical if roles.target_numerical else categorical).append(roles.target)
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
    task: TaskName,
    candidate: Scored,
    out_dir: Path,
    champion: Scored | None = None,
) -> ReportFiles:
    """Score the candidate with the task's Evidently preset, the champion beside it if any.

    Evidently's current/reference columns read as candidate/champion (the same holdout rows).
    Classification: accuracy, precision, recall and F1 come from the model's own labels, ROC AUC
    and log loss from its probabilities (when both models have them). Summary: ``current`` and
    ``reference`` (None without a champion), each a dict of metric name to value.
    """
    from evidently import Report
    from sklearn.exceptions import UndefinedMetricWarning

    scored = [candidate] if champion is None else [candidate, champion]
    for which, one in zip(("candidate", "champion"), scored, strict=False):
        if len(one.target) == 0:
            raise ValueError(f"model performance report: the {which} has no rows")
        if len(one.target) != len(one.predictions.prediction):
            raise ValueError(
                f"model performance report: the {which} has {len(one.target)} targets but "
                f"{len(one.predictions.prediction)} predictions"
            )
    definition, metrics, frames, wanted = _PERFORMANCE[task_info(task).name](scored)
    with warnings.catch_warnings():
        # A model that never predicts a class, or a plot over a tiny slice of rows, makes
        # scikit-learn warn inside Evidently: a matter for the gate, not console noise.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        snapshot = Report(metrics).run(
            _dataset(frames[0], list(frames[0].columns), definition),
            None if len(frames) == 1 else _dataset(frames[1], list(frames[1].columns), definition),
            name="model_performance",
        )
        entries = _metric_entries(snapshot)
    ids = {key: _single(entries, kind, **params)["id"] for key, (kind, params) in wanted.items()}
    values = {entry["id"]: entry["value"] for entry in entries}
    summary: dict[str, Any] = {
        "preset": evidently_preset(task),
        "current": {key: _number(values[metric_id]) for key, metric_id in ids.items()},
        "reference": None
        if champion is None
        else {
            key: _number(_reference_value(snapshot, metric_id)) for key, metric_id in ids.items()
        },
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return _write(snapshot, "model_performance", out_dir, summary)


Wanted = dict[str, tuple[str, dict[str, Any]]]


def _classification_report(scored: list[Scored]) -> tuple[Any, list[Any], list[Any], Wanted]:
    """Frames, definition and metrics of a classification performance report.

    Labels go to Evidently as strings (probability columns named after them): its multiclass
    ROC curves compare the target with the column names, and a bool target breaks its ROC AUC.
    """
    import numpy as np
    import pandas as pd
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification
    from evidently.metrics import LogLoss, RocAuc

    probas = [one.predictions.probabilities for one in scored]
    parts = [np.asarray(one.target) for one in scored]
    parts += [np.asarray(one.predictions.prediction) for one in scored]
    parts += [np.asarray(list(p.columns), dtype=object) for p in probas if p is not None]
    labels = np.unique(np.concatenate([part.astype(object) for part in parts])).tolist()
    names = {label: str(label) for label in labels}
    if len(set(names.values())) != len(labels):
        raise ValueError(f"model performance report: labels {labels} are not distinct as text")
    target, prediction = _free_names(set(names.values()))
    classes = list(probas[0].columns) if probas[0] is not None else []
    present = set(np.unique(parts[0].astype(object)).tolist())
    # ROC AUC and log loss only when every model has probabilities for the same classes and the
    # rows hold every class: otherwise Evidently cannot score them (and sklearn says undefined).
    with_scores = (
        all(p is not None and list(p.columns) == classes for p in probas)
        and present == set(classes)
        and len(classes) >= 2
    )
    binary = len(labels) <= 2
    positive = names[labels[-1] if len(labels) < 2 else labels[1]]
    frames = []
    for one, proba in zip(scored, probas, strict=True):
        frame = pd.DataFrame(
            {
                target: [names[v] for v in np.asarray(one.target).tolist()],
                prediction: [names[v] for v in np.asarray(one.predictions.prediction).tolist()],
            }
        )
        if with_scores and proba is not None:
            shown = [labels[1]] if binary else classes
            for label in shown:
                frame[names[label]] = proba[label].to_numpy(dtype=float)
        frames.append(frame)
    score_columns = [c for c in frames[0].columns if c not in (target, prediction)]
    if binary:
        tasks: list[Any] = [
            BinaryClassification(
                name=_LABELS_TASK, target=target, prediction_labels=prediction, pos_label=positive
            )
        ]
        if with_scores:
            tasks.append(
                BinaryClassification(
                    name=_SCORES_TASK,
                    target=target,
                    prediction_probas=score_columns[0],
                    pos_label=positive,
                )
            )
    else:
        tasks = [
            MulticlassClassification(name=_LABELS_TASK, target=target, prediction_labels=prediction)
        ]
        if with_scores:
            tasks.append(
                MulticlassClassification(
                    name=_SCORES_TASK, target=target, prediction_probas=score_columns
                )
            )
    definition = DataDefinition(
        numerical_columns=score_columns,
        categorical_columns=[target, prediction],
        classification=tasks,
    )
    preset = _preset("classification")
    metrics = [preset]
    wanted: Wanted = {
        key: (kind, {"classification_name": _LABELS_TASK})
        for key, kind in (
            ("accuracy", "Accuracy"),
            ("precision", "Precision"),
            ("recall", "Recall"),
            ("f1", "F1Score"),
        )
    }
    if with_scores:
        metrics += [
            RocAuc(classification_name=_SCORES_TASK),
            LogLoss(classification_name=_SCORES_TASK),
        ]
        wanted["roc_auc"] = ("RocAuc", {"classification_name": _SCORES_TASK})
        wanted["log_loss"] = ("LogLoss", {"classification_name": _SCORES_TASK})
    return definition, metrics, frames, wanted


def _regression(scored: list[Scored]) -> tuple[Any, list[Any], list[Any], Wanted]:
    """Frames, definition and metrics of a regression performance report."""
    import numpy as np
    import pandas as pd
    from evidently import DataDefinition, Regression

    frames = [
        pd.DataFrame(
            {
                _TARGET: np.asarray(one.target, dtype=float),
                _PREDICTION: np.asarray(one.predictions.prediction, dtype=float),
            }
        )
        for one in scored
    ]
    definition = DataDefinition(
        numerical_columns=[_TARGET, _PREDICTION],
        regression=[Regression(target=_TARGET, prediction=_PREDICTION)],
    )
    wanted: Wanted = {
        key: (kind, {})
        for key, kind in (
            ("rmse", "RMSE"),
            ("mae", "MAE"),
            ("r2", "R2Score"),
            ("mean_error", "MeanError"),
            ("abs_max_error", "AbsMaxError"),
        )
    }
    return definition, [_preset("regression")], frames, wanted


_PERFORMANCE = {"classification": _classification_report, "regression": _regression}


def _preset(task: TaskName) -> Any:
    """The task's Evidently preset (flows.tasks names it), with its defaults."""
    import evidently.presets

    return getattr(evidently.presets, evidently_preset(task))()


def _free_names(taken: set[str]) -> tuple[str, str]:
    """Target and prediction column names that no class label (a probability column) uses."""
    target, prediction = _TARGET, _PREDICTION
    while target in taken or prediction in taken:
        target, prediction = f"_{target}", f"_{prediction}"
    return target, prediction


def _number(value: Any) -> float:
    """A metric's value as a float; mean/std metrics (MAE, mean error) give their mean."""
    if isinstance(value, dict):
        value = value["mean"]
    return float(value)


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
