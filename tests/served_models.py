"""Small models of every task for the bento tests, fitted on data the tests generate.

Each pipeline's frame has an id column, a time column, numerical features (one with missing
values, one integer) and a categorical feature, like a user's table. Used by the packaging
scripts that tests/test_serving.py, test_packaging.py and test_container.py run in a subprocess
with their own ``BENTOML_HOME``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PLANS = ["basic", "plus", "pro"]
# pipeline -> (task, target, id column, time column)
PIPELINES: dict[str, tuple[str, str, str, str]] = {
    "churn": ("classification", "churned", "customer_id", "signup_date"),
    "species": ("classification", "species", "sample_id", "measured_at"),
    "price": ("regression", "price", "listing_id", "listed_on"),
    "svc": ("classification", "churned", "customer_id", "signup_date"),
    "forest": ("classification", "churned", "customer_id", "signup_date"),
}
# Trees per forest: even, so some rows tie (served by scikit-learn, see bentos/fast_runtime.py).
FOREST_TREES = 30


def make_frame(pipeline: str, n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A table for ``pipeline``: ids, time, features x0..x3, visits (int), plan, the target.

    churn/svc/forest: binary int labels; species: string labels (3 classes); price: numbers.
    """
    from sklearn.datasets import make_classification, make_regression

    _, target, id_column, time_column = PIPELINES[pipeline]
    rng = np.random.default_rng(seed)
    if pipeline == "price":
        features, y = make_regression(n_samples=n, n_features=4, noise=5.0, random_state=seed)
        labels: Any = np.round(y * 10 + 2_000, 2)
    else:
        classes = 3 if pipeline == "species" else 2
        features, y = make_classification(
            n_samples=n,
            n_features=4,
            n_informative=3,
            n_redundant=0,
            n_classes=classes,
            random_state=seed,
        )
        labels = np.array(["setosa", "versicolor", "virginica"])[y] if classes == 3 else y
    frame = pd.DataFrame(features, columns=[f"x{i}" for i in range(4)])
    frame.loc[rng.random(n) < 0.1, "x1"] = np.nan
    frame.insert(0, time_column, pd.date_range("2024-01-01", periods=n, freq="h").astype(str))
    frame.insert(0, id_column, [f"{pipeline[:2]}-{i:05d}" for i in range(n)])
    frame["visits"] = rng.integers(0, 40, n)
    frame["plan"] = rng.choice(PLANS, n)
    frame[target] = labels
    return frame


def fit(pipeline: str, frame: pd.DataFrame, *, flip: bool = False) -> Any:
    """A scikit-learn Pipeline (imputer + one-hot + estimator) fitted on the frame's features:
    gradient boosting (churn, price), logistic regression (species), a linear SVC (svc) and a
    random forest (forest), the numbers scaled for the linear models.

    ``flip`` trains a classifier on reversed labels: a model whose answers differ.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import LinearSVC

    _, target, id_column, time_column = PIPELINES[pipeline]
    numerical = ["x0", "x1", "x2", "x3", "visits"]
    scaled = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
    preprocess = ColumnTransformer(
        [
            ("num", SimpleImputer() if pipeline == "forest" else scaled, numerical),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
        ]
    )
    estimator: Any
    if pipeline == "price":
        estimator = HistGradientBoostingRegressor(max_iter=40, random_state=0)
    elif pipeline == "svc":
        estimator = LinearSVC()
    elif pipeline == "species":
        estimator = LogisticRegression(max_iter=1_000)
    elif pipeline == "forest":
        estimator = RandomForestClassifier(n_estimators=FOREST_TREES, random_state=0)
    else:
        estimator = HistGradientBoostingClassifier(max_iter=30, random_state=0)
    y = frame[target]
    if flip:
        y = 1 - y
    model = Pipeline([("pre", preprocess), ("model", estimator)])
    return model.fit(frame.drop(columns=[id_column, time_column, target]), y)


def feature_schema(pipeline: str, frame: pd.DataFrame) -> dict[str, Any]:
    """The serving schema of the frame's features, shaped as flows.schema writes it."""
    numerical = {
        column: {
            "dtype": "int" if column == "visits" else "float",
            "min": float(frame[column].min()),
            "max": float(frame[column].max()),
            "nullable": bool(frame[column].isna().any()),
        }
        for column in ("x0", "x1", "x2", "x3", "visits")
    }
    categorical = {"plan": {"categories": sorted(PLANS), "nullable": False}}
    return {"numerical": numerical, "categorical": categorical, "target": PIPELINES[pipeline][1]}


def metadata(pipeline: str, version: str, frame: pd.DataFrame) -> dict[str, Any]:
    """What the training flow stores with a model (classes are filled in by packaging)."""
    task, target, id_column, time_column = PIPELINES[pipeline]
    return {
        "run_version": version,
        "pipeline": pipeline,
        "task": task,
        "target": target,
        "id_columns": [id_column],
        "time_column": time_column,
        "metrics": {"score": 0.5},
        "data_sha256": "0" * 64,
        "lineage": {"notebooks": {"train": "abc"}, "champion_at_start": None},
    }


def package(
    pipeline: str, workdir: Path, bentos_dir: Path, version: str, *, holdout: bool = True
) -> dict[str, Any]:
    """Fit, save and package one pipeline's model (checking its ONNX conversion on other rows
    of the same kind, unless ``holdout`` is False); return its tags, paths and sample rows."""
    import joblib

    from flows.packaging import package_model

    frame = make_frame(pipeline)
    model = fit(pipeline, frame)
    model_path = workdir / f"{pipeline}.joblib"
    joblib.dump(model, model_path)
    model_tag, bento_tag = package_model(
        model_path,
        pipeline=pipeline,
        model_name=f"{pipeline}-model",
        version=version,
        metadata=metadata(pipeline, version, frame),
        feature_schema=feature_schema(pipeline, frame),
        bentos_dir=bentos_dir,
        holdout=make_frame(pipeline, seed=1) if holdout else None,
    )
    # Rows to serve: new rows of the same kind, as traffic is (a training row can sit exactly on a
    # split the model learned, where float32 and float64 may route it differently).
    csv = workdir / f"{pipeline}.csv"
    make_frame(pipeline, seed=2).to_csv(csv, index=False)
    return {
        "pipeline": pipeline,
        "task": PIPELINES[pipeline][0],
        "model_tag": model_tag,
        "bento_tag": bento_tag,
        "model_path": str(model_path),
        "csv": str(csv),
    }
