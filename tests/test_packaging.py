"""Packaging against real BentoML: model store, bento build and a served bento.

Isolation: BentoML fixes its store location from ``BENTOML_HOME`` the first time it is imported,
and another test module may already have imported it into this pytest process. So this module
never imports bentoml itself: the ``packaged`` fixture runs this very file as a script in a
subprocess whose environment points ``BENTOML_HOME`` at a temporary directory. The script trains
two small models, saves both (the second one is therefore ``:latest``), builds a bento pinned to
the FIRST, exercises the refusals, and writes what it observed to JSON for the tests to check.
The end-to-end test serves that bento with ``bentoml serve`` using the same ``BENTOML_HOME``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flows.serving import free_port, post_json, stop_server, wait_ready

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BENTOS_DIR = REPO / "bentos"
MODEL_NAME = "loan_default"
BENTO_VERSION = "run-0001"
NUMERICAL = {
    "age": "int",
    "annual_income": "float",
    "loan_amount": "float",
    "term_months": "int",
    "interest_rate": "float",
    "credit_score": "int",
    "debt_to_income": "float",
    "num_open_accounts": "int",
}
CATEGORICAL = {
    "employment_type": ["salaried", "self_employed", "contract", "unemployed"],
    "home_ownership": ["rent", "mortgage", "own"],
    "purpose": [
        "debt_consolidation",
        "home_improvement",
        "car",
        "education",
        "medical",
        "business",
    ],
}
NULLABLE = {"annual_income", "debt_to_income"}
LABELS = {"stage": "accepted", "run_version": BENTO_VERSION}
METADATA = {
    "run_version": BENTO_VERSION,
    "metrics": {"roc_auc": 0.81, "n_test": 120},
    "lineage": {"notebook": "notebooks/train.ipynb", "data_sha256": "abc123"},
}
SERVE_DEADLINE_S = 120.0


def _isolated_env(bentoml_home: Path) -> dict[str, str]:
    """Environment for every bentoml process of these tests: private store, no telemetry."""
    env = {k: v for k, v in os.environ.items() if k != "NBPROD_MODEL_TAG"}
    env["BENTOML_HOME"] = str(bentoml_home)
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the packaging script once in an isolated BentoML home; return its observations."""
    workdir = tmp_path_factory.mktemp("packaging")
    env = _isolated_env(workdir / "bentoml")
    proc = subprocess.run(
        [sys.executable, __file__, str(workdir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"packaging script failed:\n{proc.stdout}\n{proc.stderr}"
    result = json.loads((workdir / "result.json").read_text())
    result["env"] = env
    result["workdir"] = str(workdir)
    return result


def test_save_model_returns_exact_tag_and_round_trips(packaged: dict[str, Any]) -> None:
    tag = packaged["tag_a"]
    name, _, version = tag.partition(":")
    assert name == MODEL_NAME
    assert version and version != "latest"
    assert tag != packaged["tag_b"]
    assert packaged["stored_a"]["labels"] == LABELS
    stored_metadata = packaged["stored_a"]["metadata"]
    assert stored_metadata == {**METADATA, "feature_schema": packaged["feature_schema"]}


def test_build_bento_pins_exactly_the_given_model_not_latest(packaged: dict[str, Any]) -> None:
    # The second save is what ':latest' resolves to; the bento must still pin the first.
    assert packaged["latest_model"] == packaged["tag_b"]
    assert packaged["bento_tag"] == f"nbprod_classifier:{BENTO_VERSION}"
    assert packaged["bento_models"] == [packaged["tag_a"]]
    assert packaged["bento_pin"] == {"model_tag": packaged["tag_a"]}
    assert packaged["bento_labels"].items() >= {"run_version": BENTO_VERSION}.items()
    for package in ("scikit-learn", "pandas", "numpy", "pydantic"):
        pin = f"{package}=={importlib.metadata.version(package)}"
        assert pin in packaged["bento_requirements"], "serve-time packages pinned as installed"
    assert packaged["rebuild_same_pin"] == packaged["bento_tag"]
    assert not (BENTOS_DIR / "model_pin.json").exists(), "the build must not pin the source dir"


def test_packaging_refuses_unsafe_operations(packaged: dict[str, Any]) -> None:
    errors = packaged["errors"]
    assert "latest" in errors["build_latest"]
    assert packaged["tag_b"] in errors["rebuild_other_pin"]
    assert "does-not-exist" in errors["build_missing"]
    assert packaged["tag_a"] in errors["delete_in_use"]
    assert errors["bad_schema"] and "purpose" in errors["bad_schema"]
    assert "nbprod_classifier:run-0002" in errors["delete_b_in_use"]
    assert "latest" in errors["delete_bento_latest"]
    assert packaged["deleted_bento_b"] is True
    assert packaged["deleted_b_twice"] is True


def test_served_bento_predicts_like_the_joblib_model(
    packaged: dict[str, Any], tmp_path: Path
) -> None:
    import joblib
    import pandas as pd

    rows: list[dict[str, Any]] = packaged["rows"]
    frame = pd.DataFrame(rows)
    model_a = joblib.load(packaged["model_a_path"])
    model_b = joblib.load(packaged["model_b_path"])
    expected = [int(p) for p in model_a.predict(frame)]
    expected_proba = [float(p) for p in model_a.predict_proba(frame)[:, 1]]
    # Otherwise the test could not tell the pinned model from ':latest'.
    assert expected != [int(p) for p in model_b.predict(frame)]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "bentoml", "serve", packaged["bento_tag"]]
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=packaged["env"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the workers die with it
        )
    try:
        _wait_ready(base, server, log_path)
        for probe in ("/healthz", "/livez"):
            assert _request(base + probe, None)[0] == 200

        status, body = _request(base + "/predict", {"records": rows})
        assert status == 200, body
        assert [r["prediction"] for r in body] == expected
        assert [r["probability"] for r in body] == pytest.approx(expected_proba, abs=1e-9)

        status, body = _request(base + "/metadata", {})
        assert status == 200, body
        assert body["model_tag"] == packaged["tag_a"]
        assert body["run_version"] == BENTO_VERSION
        assert body["metrics"] == METADATA["metrics"]
        assert body["lineage"] == METADATA["lineage"]

        unknown_category = {**rows[0], "purpose": "vacation"}
        extra_field = {**rows[0], "zip_code": "12345"}
        for bad, field in ((unknown_category, "purpose"), (extra_field, "zip_code")):
            status, body = _request(base + "/predict", {"records": [rows[1], bad]})
            assert 400 <= status < 500, body
            assert any(err["loc"] == ["records", 1, field] for err in body["detail"]), body
        status, body = _request(base + "/predict", {"records": []})
        assert 400 <= status < 500, body
    finally:
        stop_server(server)


def _request(url: str, payload: dict[str, Any] | None) -> tuple[int, Any]:
    """GET (payload None) or POST JSON; (status, decoded body) even for 4xx/5xx."""
    status, body, _ = post_json(url, payload, timeout=30)
    return status, body


def _wait_ready(base: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    reason = wait_ready(base, server, log_path, timeout_s=SERVE_DEADLINE_S)
    if reason:
        pytest.fail(f"{reason}\n{log_path.read_text()}")


def _train(path: Path, *, seed: int, flip: bool) -> tuple[Any, dict[str, Any]]:
    """Fit a small pipeline like the notebook's on random data; return (frame, feature schema)."""
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(seed)
    n = 400
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "annual_income": rng.normal(60_000, 20_000, n).clip(5_000),
            "loan_amount": rng.uniform(1_000, 40_000, n),
            "term_months": rng.choice([36, 60], n),
            "interest_rate": rng.uniform(3, 25, n),
            "credit_score": rng.integers(300, 851, n),
            "debt_to_income": rng.uniform(0, 0.6, n),
            "num_open_accounts": rng.integers(0, 20, n),
            **{col: rng.choice(cats, n) for col, cats in CATEGORICAL.items()},
        }
    )
    frame.loc[rng.random(n) < 0.1, "annual_income"] = np.nan
    target = ((frame["interest_rate"] > 14) ^ (frame["credit_score"] < 550)).astype(int)
    if flip:
        target = 1 - target
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]
    )
    preprocess = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median"), list(NUMERICAL)),
            ("cat", categorical, list(CATEGORICAL)),
        ]
    )
    model = Pipeline([("pre", preprocess), ("clf", HistGradientBoostingClassifier(max_iter=30))])
    model.fit(frame, target)
    joblib.dump(model, path)
    schema = {
        "numerical": {
            col: {
                "dtype": dtype,
                "min": float(frame[col].min()),
                "max": float(frame[col].max()),
                "nullable": col in NULLABLE,
            }
            for col, dtype in NUMERICAL.items()
        },
        "categorical": {
            col: {"categories": cats, "nullable": False} for col, cats in CATEGORICAL.items()
        },
        "target": "defaulted",
    }
    return frame, schema


def _error(call: Any) -> str | None:
    from flows.errors import PackagingError

    try:
        call()
    except PackagingError as exc:
        return str(exc)
    return None


def _run_packaging(workdir: Path) -> None:
    """Save two models, build a bento pinned to the first, record what BentoML stored."""
    import bentoml

    from flows.packaging import build_bento, delete_bento, delete_model, save_model

    model_a, model_b = workdir / "model_a.joblib", workdir / "model_b.joblib"
    frame, schema = _train(model_a, seed=0, flip=False)
    _train(model_b, seed=1, flip=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    tag_a = save_model(
        model_a, name=MODEL_NAME, labels=LABELS, metadata=METADATA, feature_schema=schema
    )
    timings["save_s"] = time.perf_counter() - started
    tag_b = save_model(model_b, name=MODEL_NAME, labels={}, metadata={}, feature_schema=schema)
    started = time.perf_counter()
    bento_tag = build_bento(tag_a, bentos_dir=BENTOS_DIR, version=BENTO_VERSION, labels=LABELS)
    timings["build_s"] = time.perf_counter() - started

    stored = bentoml.models.get(tag_a)
    assert Path(stored.path).is_relative_to(workdir / "bentoml"), "BENTOML_HOME not honoured"
    bento = bentoml.bentos.get(bento_tag)
    requirements = (Path(bento.path) / "env/python/requirements.txt").read_text().split()
    result: dict[str, Any] = {
        "tag_a": tag_a,
        "tag_b": tag_b,
        "latest_model": str(bentoml.models.get(f"{MODEL_NAME}:latest").tag),
        "stored_a": {"labels": dict(stored.info.labels), "metadata": dict(stored.info.metadata)},
        "feature_schema": schema,
        "bento_tag": bento_tag,
        "bento_models": [str(m.tag) for m in bento.info.all_models],
        "bento_pin": json.loads((Path(bento.path) / "src/model_pin.json").read_text()),
        "bento_labels": dict(bento.info.labels),
        "bento_requirements": requirements,
        "rebuild_same_pin": build_bento(tag_a, bentos_dir=BENTOS_DIR, version=BENTO_VERSION),
    }

    bad_schema = json.loads(json.dumps(schema))
    bad_schema["categorical"]["purpose"]["categories"] = []
    result["errors"] = {
        "build_latest": _error(
            lambda: build_bento(f"{MODEL_NAME}:latest", bentos_dir=BENTOS_DIR, version="x")
        ),
        "rebuild_other_pin": _error(
            lambda: build_bento(tag_b, bentos_dir=BENTOS_DIR, version=BENTO_VERSION)
        ),
        "build_missing": _error(
            lambda: build_bento(f"{MODEL_NAME}:does-not-exist", bentos_dir=BENTOS_DIR, version="x")
        ),
        "delete_in_use": _error(lambda: delete_model(tag_a)),
        "bad_schema": _error(
            lambda: save_model(
                model_a, name=MODEL_NAME, labels={}, metadata={}, feature_schema=bad_schema
            )
        ),
    }
    # Undoing a packaging step whose bento failed validation: the bento first, then its model.
    bento_b = build_bento(tag_b, bentos_dir=BENTOS_DIR, version="run-0002")
    result["errors"]["delete_b_in_use"] = _error(lambda: delete_model(tag_b))
    result["errors"]["delete_bento_latest"] = _error(
        lambda: delete_bento("nbprod_classifier:latest")
    )
    delete_bento(bento_b)
    delete_bento(bento_b)  # undo must be retryable
    result["deleted_bento_b"] = all(str(b.tag) != bento_b for b in bentoml.bentos.list())
    delete_model(tag_b)
    delete_model(tag_b)  # undo must be retryable
    result["deleted_b_twice"] = all(str(m.tag) != tag_b for m in bentoml.models.list(MODEL_NAME))

    # JSON-ready sample rows (pandas gives native Python scalars); NaN becomes null.
    rows = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}
        for record in frame.head(6).to_dict(orient="records")
    ]
    rows[0]["annual_income"] = None  # a missing nullable feature must be accepted
    result.update(rows=rows, model_a_path=str(model_a), model_b_path=str(model_b), timings=timings)
    (workdir / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    _run_packaging(Path(sys.argv[1]))
