"""The run summary's pictures (flows.figures): PNG files, or None when there is nothing to draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from flows.figures import drift_figure, drift_strength, model_figure
from flows.tasks import Predictions, Scored

RNG = np.random.default_rng(0)


def _classifier(labels: np.ndarray, signal: float, classes: list) -> Scored:
    proba = RNG.dirichlet(np.ones(len(classes)), len(labels))
    proba[np.arange(len(labels)), [classes.index(v) for v in labels]] += signal
    proba /= proba.sum(axis=1, keepdims=True)
    frame = pd.DataFrame(proba, columns=classes)
    return Scored(pd.Series(labels), Predictions(frame.idxmax(axis=1).to_numpy(), frame))


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_binary_curves_show_the_champion_beside_the_candidate(tmp_path: Path) -> None:
    labels = RNG.choice(["no", "yes"], 400)
    candidate, champion = (
        _classifier(labels, 1.0, ["no", "yes"]),
        _classifier(labels, 0.2, ["no", "yes"]),
    )
    title, path = model_figure("classification", candidate, champion, tmp_path / "model.png")
    assert title == "ROC and precision-recall curves: the candidate's beside the champion's"
    width, height = _png(path)
    assert width > 2 * height  # two panels side by side


def test_multiclass_curves_and_what_cannot_be_drawn(tmp_path: Path) -> None:
    labels = RNG.choice([0, 1, 2], 300)
    drawn = model_figure(
        "classification", _classifier(labels, 0.8, [0, 1, 2]), None, tmp_path / "m.png"
    )
    assert drawn is not None and drawn[0] == "ROC and precision-recall curves: the candidate's"
    no_proba = Scored(pd.Series(labels), Predictions(labels))
    assert model_figure("classification", no_proba, None, tmp_path / "x.png") is None
    one_class = _classifier(np.array(["yes"] * 20), 0.5, ["no", "yes"])
    assert model_figure("classification", one_class, None, tmp_path / "y.png") is None
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_regression_predicted_vs_actual_and_residuals(tmp_path: Path) -> None:
    truth = RNG.normal(size=200)
    candidate = Scored(pd.Series(truth), Predictions(truth + RNG.normal(scale=0.2, size=200)))
    champion = Scored(pd.Series(truth), Predictions(truth + RNG.normal(scale=0.5, size=200)))
    title, path = model_figure("regression", candidate, champion, tmp_path / "model.png")
    assert title == "Predicted vs actual and residuals: the candidate's beside the champion's"
    assert _png(path)[0] > 0


def test_drift_picture_of_numerical_and_categorical_columns(tmp_path: Path) -> None:
    reference = pd.DataFrame(
        {"income": RNG.normal(50, 10, 500), "grade": RNG.choice(list("ABC"), 500)}
    )
    current = pd.DataFrame(
        {"income": RNG.normal(65, 10, 300), "grade": RNG.choice(list("ABCD"), 300)}
    )
    labels = ("training data", "production inputs")
    path = drift_figure(
        reference, current, ["income", "grade", "absent"], tmp_path / "d.png", labels
    )
    assert path is not None and _png(path)[0] > _png(path)[1]
    assert drift_figure(reference, current, [], tmp_path / "none.png", labels) is None


def test_drift_strength_orders_p_values_and_distances_alike() -> None:
    strong_p = {"method": "K-S p_value", "score": 0.0001, "threshold": 0.05}
    weak_p = {"method": "K-S p_value", "score": 0.04, "threshold": 0.05}
    distance = {"method": "Wasserstein distance (normed)", "score": 0.3, "threshold": 0.1}
    assert drift_strength(strong_p) > drift_strength(distance) > drift_strength(weak_p)
    assert drift_strength({"method": "K-S p_value", "score": None, "threshold": 0.05}) == float(
        "-inf"
    )


def test_large_values_are_ticked_in_thousands_few_enough_to_read() -> None:
    from matplotlib.figure import Figure

    from flows.figures import _legible_ticks

    axes = Figure(figsize=(5, 4)).subplots()
    axes.hist(RNG.lognormal(10.7, 0.5, 500), bins=30)
    _legible_ticks(axes, 160_000)
    axes.figure.canvas.draw()
    inside = [t for t in axes.get_xticklabels() if axes.get_xlim()[0] <= t.get_position()[0]]
    labels = [t.get_text() for t in inside if t.get_position()[0] <= axes.get_xlim()[1]]
    assert 2 <= len(labels) <= 7, labels
    assert all(label.endswith("k") for label in labels), labels
