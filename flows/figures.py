"""The pictures a run summary shows: model curves, candidate beside champion, and drift.

Classification: ROC and precision-recall curves on the holdout rows, the champion's drawn with
the candidate's (binary: the positive class as scikit-learn orders the classes; multiclass:
micro-averaged one-vs-rest). Regression: predicted against actual, and residuals. Drift: for
the most drifted columns, the reference's distribution beside the compared data's.

Matplotlib's object API (``Figure``, no pyplot): no global state, so flows may draw in their
task threads. Each function writes one PNG and returns its path, or None when there is nothing
to draw (no probabilities, a single class in the holdout rows, no column).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from flows.tasks import Scored

CANDIDATE = {"color": "#0969da", "linestyle": "-"}
CHAMPION = {"color": "#bc4c00", "linestyle": "--"}
REFERENCE_COLOR, CURRENT_COLOR = "#8c959f", "#0969da"
DPI = 100
MAX_DRIFT_COLUMNS = 4
MAX_CATEGORIES = 8


def _figure(width: float, height: float, panels: int, rows: int = 1) -> tuple[Any, list[Axes]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    columns = -(-panels // rows)
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes[:panels]


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def binary_scores(scored: Scored) -> tuple[Any, Any] | None:
    """(is-positive, score) per row for the curves; None without probabilities or two classes.

    Binary: the second of the model's classes is positive (flows.tasks scores it so too).
    Multiclass: every (row, class) pair, one-vs-rest, so the curves are micro-averaged.
    """
    import numpy as np

    proba = scored.predictions.probabilities
    if proba is None or proba.shape[1] < 2:
        return None
    truth = np.asarray(scored.target)
    classes = list(proba.columns)
    if proba.shape[1] == 2:
        positive = truth == classes[1]
        scores = proba[classes[1]].to_numpy(dtype=float)
    else:
        positive = (truth[:, None] == np.asarray(classes, dtype=object)[None, :]).ravel()
        scores = proba.to_numpy(dtype=float).ravel()
    if positive.all() or not positive.any():
        return None
    return positive, scores


def classification_figure(candidate: Scored, champion: Scored | None, path: Path) -> Path | None:
    """ROC and precision-recall curves of the candidate, with the champion's on the same rows."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    curves = [("candidate", candidate, CANDIDATE), ("champion", champion, CHAMPION)]
    drawn = [(name, binary_scores(s), style) for name, s, style in curves if s is not None]
    drawn = [(name, found, style) for name, found, style in drawn if found is not None]
    if not drawn or drawn[0][0] != "candidate":
        return None
    multiclass = (candidate.predictions.probabilities is not None) and (
        candidate.predictions.probabilities.shape[1] > 2
    )
    figure, (roc, pr) = _figure(10, 4.2, 2)
    for name, (positive, scores), style in drawn:
        fpr, tpr, _ = roc_curve(positive, scores)
        roc.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})", **style)
        precision, recall, _ = precision_recall_curve(positive, scores)
        ap = average_precision_score(positive, scores)
        pr.plot(recall, precision, label=f"{name} (AP {ap:.3f})", **style)
    roc.plot([0, 1], [0, 1], color="#d0d7de", linewidth=1)
    suffix = " (micro-average, one-vs-rest)" if multiclass else ""
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC" + suffix)
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall" + suffix)
    for axes in (roc, pr):
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.legend(loc="lower right" if axes is roc else "lower left")
        axes.grid(alpha=0.3)
    return _save(figure, path)


def regression_figure(candidate: Scored, champion: Scored | None, path: Path) -> Path | None:
    """Predicted against actual, and residuals against predicted, champion beside candidate."""
    import numpy as np

    truth = np.asarray(candidate.target, dtype=float)
    if truth.size == 0:
        return None
    figure, (fit, residuals) = _figure(10, 4.2, 2)
    models = [("candidate", candidate, CANDIDATE), ("champion", champion, CHAMPION)]
    for name, scored, style in models:
        if scored is None:
            continue
        predicted = np.asarray(scored.predictions.prediction, dtype=float)
        marker = "o" if name == "candidate" else "x"
        dots = {"color": style["color"], "marker": marker, "s": 12, "alpha": 0.5, "label": name}
        fit.scatter(truth, predicted, **dots)
        residuals.scatter(predicted, truth - predicted, **dots)
    low, high = float(np.nanmin(truth)), float(np.nanmax(truth))
    fit.plot([low, high], [low, high], color="#57606a", linewidth=1, label="perfect")
    residuals.axhline(0, color="#57606a", linewidth=1)
    fit.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (holdout)")
    residuals.set(xlabel="predicted", ylabel="actual − predicted", title="Residuals")
    for axes in (fit, residuals):
        axes.legend(loc="best")
        axes.grid(alpha=0.3)
    return _save(figure, path)


def model_figure(
    task: str, candidate: Scored, champion: Scored | None, path: Path
) -> tuple[str, Path] | None:
    """The task's model picture as (title, file), or None when there is nothing to draw."""
    against = " beside the champion's" if champion is not None else ""
    if task == "classification":
        drawn = classification_figure(candidate, champion, path)
        title = f"ROC and precision-recall curves: the candidate's{against}"
    else:
        drawn = regression_figure(candidate, champion, path)
        title = f"Predicted vs actual and residuals: the candidate's{against}"
    return (title, drawn) if drawn is not None else None


def drift_figure(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    path: Path,
    labels: tuple[str, str],
) -> Path | None:
    """Each column's distribution in ``reference`` and ``current`` side by side (at most 4)."""
    import pandas as pd

    columns = [c for c in columns if c in reference.columns and c in current.columns]
    columns = columns[:MAX_DRIFT_COLUMNS]
    if not columns:
        return None
    rows = 1 if len(columns) <= 2 else 2  # two per row: legible in a summary's column
    figure, panels = _figure(10 if len(columns) > 1 else 5.5, 3.8 * rows, len(columns), rows)
    for axes, column in zip(panels, columns, strict=True):
        ref, cur = reference[column].dropna(), current[column].dropna()
        numeric = pd.api.types.is_numeric_dtype(ref) and not pd.api.types.is_bool_dtype(ref)
        if numeric and ref.nunique() > MAX_CATEGORIES:
            _histograms(axes, ref.astype(float), cur.astype(float), labels)
        else:
            _category_bars(axes, ref.astype(str), cur.astype(str), labels)
        axes.set_title(column)
        axes.grid(alpha=0.3)
    panels[0].legend(loc="best", fontsize="small")
    return _save(figure, path)


def _histograms(axes: Axes, ref: pd.Series, cur: pd.Series, labels: tuple[str, str]) -> None:
    import numpy as np

    both = np.concatenate([ref.to_numpy(), cur.to_numpy()])
    low, high = np.nanpercentile(both, [0.5, 99.5]) if both.size else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1, 30)
    axes.hist(ref, bins=bins, density=True, alpha=0.55, color=REFERENCE_COLOR, label=labels[0])
    axes.hist(cur, bins=bins, density=True, alpha=0.55, color=CURRENT_COLOR, label=labels[1])
    axes.set_ylabel("density")
    _legible_ticks(axes, max(abs(float(low)), abs(float(high))))


def _legible_ticks(axes: Axes, largest: float) -> None:
    """At most 6 x ticks, large values in thousands (``120k``): incomes stay readable."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(nbins=6))
    if largest >= 10_000:
        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))


def _category_bars(axes: Axes, ref: pd.Series, cur: pd.Series, labels: tuple[str, str]) -> None:
    import numpy as np

    shares = [ref.value_counts(normalize=True), cur.value_counts(normalize=True)]
    top = (shares[0].add(shares[1], fill_value=0)).sort_values(ascending=False)
    categories = list(top.index[:MAX_CATEGORIES])
    x = np.arange(len(categories))
    for offset, share, color, label in (
        (-0.2, shares[0], REFERENCE_COLOR, labels[0]),
        (0.2, shares[1], CURRENT_COLOR, labels[1]),
    ):
        axes.bar(x + offset, [share.get(c, 0.0) for c in categories], 0.4, color=color, label=label)
    axes.set_xticks(x, [str(c)[:12] for c in categories], rotation=30, ha="right")
    axes.set_ylabel("share of rows")


def drift_strength(row: Mapping[str, Any]) -> float:
    """How far past its threshold a column's score is (p-values: lower is stronger drift)."""
    score, threshold = row.get("score"), row.get("threshold")
    if not isinstance(score, int | float) or not isinstance(threshold, int | float):
        return float("-inf")
    if "p_value" in str(row.get("method")):
        return float(threshold) / max(float(score), 1e-300)
    return float(score) / float(threshold) if threshold else float(score)


__all__ = [
    "binary_scores",
    "classification_figure",
    "drift_figure",
    "drift_strength",
    "model_figure",
    "regression_figure",
]
