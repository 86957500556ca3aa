"""Packaging against real BentoML: model store, bento build, undo, and a served bento.

Isolation: BentoML fixes its store location from ``BENTOML_HOME`` the first time it is imported,
and another test module may already have imported it into this pytest process. So BentoML's store
is only used from a subprocess: the ``packaged`` fixture runs this very file as a script whose
``BENTOML_HOME`` is a temporary directory. The script packages two models of one pipeline (the
second is therefore ``:latest``), a pickled one, exercises the refusals and the undo, and writes
what it observed to JSON. The end-to-end test serves the first bento with ``bentoml serve``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from bento_scripts import isolated_bentoml_env, run_script

from flows.bento_server import free_port, stop_server, wait_ready
from flows.serving import frame_to_records, post_json

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BENTOS_DIR = REPO / "bentos"
PIPELINE = "churn-v2"
MODEL_NAME = "churn-model"
NON_FEATURES = ["customer_id", "signup_date", "churned"]
SERVE_DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the packaging script once in an isolated BentoML home; return its observations."""
    workdir = tmp_path_factory.mktemp("packaging")
    env = isolated_bentoml_env(workdir / "bentoml")
    result = run_script(__file__, workdir, env)
    result["env"] = env
    result["workdir"] = str(workdir)
    return result


def test_package_model_stores_the_file_metadata_and_labels(packaged: dict[str, Any]) -> None:
    tag = packaged["tag_a"]
    name, _, version = tag.partition(":")
    assert name == MODEL_NAME and version and version != "latest"
    assert tag != packaged["tag_b"]
    labels = {"pipeline": PIPELINE, "run_version": "run-0001", "task": "classification"}
    assert packaged["stored_a"]["labels"] == labels
    given = packaged["metadata_given"]
    # None values are dropped (BentoML refuses None); pipeline, classes and file name added.
    assert given["time_column"] is None and given["lineage"]["champion_at_start"] is None
    expected = {k: v for k, v in given.items() if v is not None}
    expected["lineage"] = {"notebooks": {"train": "abc"}}
    assert packaged["stored_a"]["metadata"] == {
        **expected,
        "classes": [0, 1],
        "model_file": "churn-v2.joblib",
        "feature_schema": packaged["feature_schema"],
        # No holdout rows: nothing to check a conversion on, so scikit-learn serves it.
        "runtime": {
            "name": "sklearn",
            "reason": "no holdout rows were given to check a conversion on",
        },
    }
    assert packaged["stored_a"]["file_identical"] is True
    assert packaged["stored_a"]["files"] == ["model.joblib"]


def test_a_model_whose_conversion_answers_like_it_is_stored_with_it(
    packaged: dict[str, Any],
) -> None:
    converted = packaged["converted"]
    assert converted["files"] == ["model.joblib", "model.onnx"]
    assert converted["file_identical"] is True  # the notebook's file, still byte for byte
    runtime = converted["metadata"]["runtime"]
    assert runtime == converted["packaged_runtime"]
    assert (runtime["name"], runtime["file"]) == ("onnxruntime", "model.onnx")
    assert runtime["reason"].startswith("its ONNX conversion (skl2onnx ")
    assert [(i["name"], i["type"]) for i in runtime["inputs"]] == [
        *((c, "float64") for c in ("x0", "x1", "x2", "x3", "visits")),
        ("plan", "string"),
    ]
    assert runtime["versions"] == {
        "skl2onnx": importlib.metadata.version("skl2onnx"),
        "onnxruntime": importlib.metadata.version("onnxruntime"),
    }


def test_a_pickled_model_is_stored_byte_for_byte(packaged: dict[str, Any]) -> None:
    pickled = packaged["pickled"]
    assert pickled["file_identical"] is True
    assert pickled["metadata"]["model_file"] == "model.pkl"
    assert pickled["bento_tag"] == "pickled:run-0003"


def test_bento_is_named_for_the_pipeline_and_pins_exactly_its_model(
    packaged: dict[str, Any],
) -> None:
    # The second package is what ':latest' resolves to; the first bento must still pin the first.
    assert packaged["latest_model"] == packaged["tag_b"]
    assert packaged["bento_tag"] == f"{PIPELINE}:run-0001"
    assert packaged["bento_models"] == [packaged["tag_a"]]
    assert packaged["bento_pin"] == {"model_tag": packaged["tag_a"], "pipeline": PIPELINE}
    # The service's class and BentoML name come from the pipeline.
    assert packaged["bento_service"] == "service:ChurnV2Service"
    assert packaged["bento_services"] == [PIPELINE]
    assert packaged["bento_labels"].items() >= {"run_version": "run-0001"}.items()
    for package in ("scikit-learn", "pandas", "numpy", "pydantic", "joblib", "onnxruntime"):
        pin = f"{package}=={importlib.metadata.version(package)}"
        assert pin in packaged["bento_requirements"], "serve-time packages pinned as installed"
    assert packaged["rebuild_same_pin"] == packaged["bento_tag"]
    assert not (BENTOS_DIR / "model_pin.json").exists(), "the build must not pin the source dir"


def test_packaging_refuses_wrong_models_metadata_and_unsafe_operations(
    packaged: dict[str, Any],
) -> None:
    errors = packaged["errors"]
    assert "metadata 'task' is None" in errors["no_task"]
    assert "names pipeline 'other'" in errors["other_pipeline"]
    assert (
        "metadata classes ['no', 'yes'] differ from the model's classes_ [0, 1]"
        in errors["wrong_classes"]
    )
    assert (
        "has no classes_ although the task is classification" in errors["regressor_as_classifier"]
    )
    assert "differ from the columns the model was fit on" in errors["schema_columns"]
    assert "plan: categories must be a non-empty list of str" in errors["bad_schema"]
    assert "does not load with joblib" in errors["not_a_model"]
    assert "does not exist" in errors["missing_file"]
    assert "latest" in errors["build_latest"]
    assert packaged["tag_b"] in errors["rebuild_other_pin"]
    assert f"{MODEL_NAME}:nope: it is not in the BentoML store" in errors["build_missing"]
    assert packaged["tag_a"] in errors["delete_in_use"]
    assert "latest" in errors["delete_bento_latest"]
    # None of the refused packages left a model behind.
    assert packaged["models_after_refusals"] == sorted(
        [
            packaged["tag_a"],
            packaged["tag_b"],
            packaged["pickled"]["model_tag"],
            packaged["converted"]["model_tag"],
        ]
    )


def test_a_failed_build_deletes_the_saved_model(packaged: dict[str, Any]) -> None:
    assert "Building the bento broken:run-0004" in packaged["errors"]["build_fails"]
    assert "service import failed on purpose" in packaged["errors"]["build_fails"]
    assert packaged["broken_models_left"] == []


def test_delete_package_removes_bento_then_model_and_can_be_retried(
    packaged: dict[str, Any],
) -> None:
    assert packaged["deleted"] == {"bento": True, "model": True}


def test_served_bento_answers_like_its_model_not_latest(
    packaged: dict[str, Any], tmp_path: Path
) -> None:
    import joblib
    import pandas as pd

    frame = pd.read_csv(packaged["csv"]).head(40)
    features = frame.drop(columns=NON_FEATURES)
    rows = frame_to_records(frame, NON_FEATURES)
    model_a = joblib.load(packaged["model_a_path"])
    model_b = joblib.load(packaged["model_b_path"])
    expected = model_a.predict(features).tolist()
    expected_proba = model_a.predict_proba(features)[:, 1].tolist()
    # Otherwise the test could not tell the pinned model from ':latest'.
    assert expected != model_b.predict(features).tolist()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "bentoml", "serve", packaged["bento_tag"]]
    env = {**packaged["env"], "NBPROD_INFERENCE_LOG_DIR": str(tmp_path / "log")}
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the workers die with it
        )
    try:
        reason = wait_ready(base, server, log_path, timeout_s=SERVE_DEADLINE_S)
        assert reason is None, f"{reason}\n{log_path.read_text()}"
        for probe in ("/healthz", "/livez"):
            assert post_json(base + probe, None)[0] == 200

        status, body, _ = post_json(base + "/predict", {"records": rows})
        assert status == 200, body
        assert [r["prediction"] for r in body] == expected
        assert [r["probabilities"]["1"] for r in body] == pytest.approx(expected_proba, abs=1e-12)

        status, body, _ = post_json(base + "/metadata", {})
        assert status == 200, body
        assert (body["model_tag"], body["pipeline"]) == (packaged["tag_a"], PIPELINE)
        assert body["run_version"] == "run-0001"

        unknown_category = {**rows[0], "plan": "vacation"}
        extra_field = {**rows[0], "zip_code": "12345"}
        for bad, field in ((unknown_category, "plan"), (extra_field, "zip_code")):
            status, body, _ = post_json(base + "/predict", {"records": [rows[1], bad]})
            assert 400 <= status < 500, body
            assert any(err["loc"] == ["records", 1, field] for err in body["detail"]), body
    finally:
        stop_server(server)


# --- the bento's own modules ---------------------------------------------------------------------


def test_bentofile_includes_every_module_and_bentos_never_import_flows() -> None:
    config = yaml.safe_load((BENTOS_DIR / "bentofile.yaml").read_text())
    modules = sorted(p.name for p in BENTOS_DIR.glob("*.py"))
    assert sorted(f for f in config["include"] if f.endswith(".py")) == modules
    assert config["service"] == "service"
    for module in modules:
        imported: list[str] = []
        for node in ast.walk(ast.parse((BENTOS_DIR / module).read_text())):
            if isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.append(node.module)
        assert not [n for n in imported if n.split(".")[0] == "flows"], module
        assert sum(1 for _ in (BENTOS_DIR / module).open()) < 500, module


def _bento_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bento_{name}", BENTOS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_service_names_come_from_the_pipeline_and_the_pin_is_exact(tmp_path: Path) -> None:
    pinning = _bento_module("pinning")
    identity = pinning.service_identity(pinning.Pin("m:1", "churn-v2"), {})
    assert (identity.service_name, identity.class_name) == ("churn-v2", "ChurnV2Service")
    from_metadata = pinning.service_identity(pinning.Pin("m:1", None), {"pipeline": "9lives"})
    assert (from_metadata.service_name, from_metadata.class_name) == (
        "9lives",
        "Pipeline9livesService",
    )
    pin = tmp_path / "model_pin.json"
    pin.write_text(json.dumps({"model_tag": "m:v1", "pipeline": "churn"}))
    assert pinning.read_pin(pin, env={}) == pinning.Pin("m:v1", "churn")
    assert pinning.read_pin(tmp_path / "none.json", {"NBPROD_MODEL_TAG": "m:v2"}).pipeline is None
    for bad in ({"model_tag": "m:latest"}, {"model_tag": "m"}, {"tag": "m:1"}):
        pin.write_text(json.dumps(bad))
        with pytest.raises(RuntimeError, match="model_tag|exact"):
            pinning.read_pin(pin, env={})
    with pytest.raises(RuntimeError, match="No model pinned"):
        pinning.read_pin(tmp_path / "none.json", env={})


# --- the packaging script, run in a subprocess with an isolated BENTOML_HOME ---------------------


def _error(call: Any) -> str | None:
    from flows.errors import PackagingError

    try:
        call()
    except PackagingError as exc:
        return str(exc)
    return None


def _stored(tag: str, source: Path) -> dict[str, Any]:
    import bentoml

    model = bentoml.models.get(tag)
    return {
        "labels": dict(model.info.labels),
        "metadata": dict(model.info.metadata),
        "file_identical": Path(model.path_of("model.joblib")).read_bytes() == source.read_bytes(),
        "files": sorted(p.name for p in Path(model.path).iterdir() if p.suffix != ".yaml"),
    }


def _run_packaging(workdir: Path) -> None:
    """Package, refuse, undo; record what BentoML stored."""
    import bentoml
    import joblib
    from served_models import feature_schema, fit, make_frame, metadata

    from flows.packaging import (
        build_bento,
        delete_bento,
        delete_model,
        delete_package,
        packaged_runtime,
    )
    from flows.packaging import package_model as package

    frame = make_frame("churn")
    schema = feature_schema("churn", frame)
    model_a, model_b = workdir / "churn-v2.joblib", workdir / "model_b.joblib"
    joblib.dump(fit("churn", frame), model_a)
    joblib.dump(fit("churn", frame, flip=True), model_b)
    csv = workdir / "churn.csv"
    frame.to_csv(csv, index=False)
    given = {**metadata("churn", "run-0001", frame), "pipeline": PIPELINE, "time_column": None}

    def package_model(path: Path, version: str, **changes: Any) -> tuple[str, str]:
        options: dict[str, Any] = {
            "pipeline": PIPELINE,
            "model_name": MODEL_NAME,
            "version": version,
            "metadata": {**given, "run_version": version},
            "feature_schema": schema,
            "bentos_dir": BENTOS_DIR,
        }
        return package(path, **{**options, **changes})

    tag_a, bento_tag = package_model(model_a, "run-0001")
    tag_b, bento_b = package_model(model_b, "run-0002")
    bento = bentoml.bentos.get(bento_tag)
    bento_yaml = yaml.safe_load((Path(bento.path) / "bento.yaml").read_text())
    requirements = (Path(bento.path) / "env/python/requirements.txt").read_text().split()
    result: dict[str, Any] = {
        "tag_a": tag_a,
        "tag_b": tag_b,
        "latest_model": str(bentoml.models.get(f"{MODEL_NAME}:latest").tag),
        "stored_a": _stored(tag_a, model_a),
        "metadata_given": given,
        "feature_schema": schema,
        "bento_tag": bento_tag,
        "bento_models": [str(m.tag) for m in bento.info.all_models],
        "bento_pin": json.loads((Path(bento.path) / "src/model_pin.json").read_text()),
        "bento_service": bento_yaml["service"],
        "bento_services": [s["name"] for s in bento_yaml["services"]],
        "bento_labels": dict(bento.info.labels),
        "bento_requirements": requirements,
        "rebuild_same_pin": build_bento(
            tag_a, pipeline=PIPELINE, bentos_dir=BENTOS_DIR, version="run-0001"
        ),
    }

    pickled_path = workdir / "model.pkl"
    with pickled_path.open("wb") as fh:
        pickle.dump(fit("churn", frame), fh)
    pickled_tags = package_model(
        pickled_path, "run-0003", pipeline="pickled", metadata={**given, "pipeline": "pickled"}
    )
    result["pickled"] = {
        **_stored(pickled_tags[0], pickled_path),
        "model_tag": pickled_tags[0],
        "bento_tag": pickled_tags[1],
    }
    # With holdout rows (other rows of the same kind) its ONNX conversion is checked and kept.
    converted_tag, _ = package_model(
        model_a, "run-0005", pipeline="converted", metadata={**given, "pipeline": "converted"},
        holdout=make_frame("churn", seed=1),
    )  # fmt: skip
    result["converted"] = {
        **_stored(converted_tag, model_a),
        "packaged_runtime": packaged_runtime(converted_tag),
        "model_tag": converted_tag,
    }

    price = make_frame("price")
    regressor = workdir / "price.joblib"
    joblib.dump(fit("price", price), regressor)
    not_a_model = workdir / "notes.joblib"
    not_a_model.write_text("not a model")
    bad_schema = json.loads(json.dumps(schema))
    bad_schema["categorical"]["plan"]["categories"] = []
    fewer_columns = json.loads(json.dumps(schema))
    del fewer_columns["numerical"]["visits"]
    no_task = {k: v for k, v in given.items() if k != "task"}
    result["errors"] = {
        "no_task": _error(lambda: package_model(model_a, "x1", metadata=no_task)),
        "other_pipeline": _error(
            lambda: package_model(model_a, "x2", metadata={**given, "pipeline": "other"})
        ),
        "wrong_classes": _error(
            lambda: package_model(model_a, "x3", metadata={**given, "classes": ["no", "yes"]})
        ),
        "regressor_as_classifier": _error(
            lambda: package_model(regressor, "x4", feature_schema=feature_schema("price", price))
        ),
        "schema_columns": _error(
            lambda: package_model(model_a, "x5", feature_schema=fewer_columns)
        ),
        "bad_schema": _error(lambda: package_model(model_a, "x6", feature_schema=bad_schema)),
        "not_a_model": _error(lambda: package_model(not_a_model, "x7")),
        "missing_file": _error(lambda: package_model(workdir / "missing.joblib", "x8")),
        "build_latest": _error(
            lambda: build_bento(
                f"{MODEL_NAME}:latest", pipeline=PIPELINE, bentos_dir=BENTOS_DIR, version="x"
            )
        ),
        "rebuild_other_pin": _error(
            lambda: build_bento(tag_b, pipeline=PIPELINE, bentos_dir=BENTOS_DIR, version="run-0001")
        ),
        "build_missing": _error(
            lambda: build_bento(
                f"{MODEL_NAME}:nope",
                pipeline=PIPELINE,
                bentos_dir=BENTOS_DIR,
                version="x",
            )
        ),
        "delete_in_use": _error(lambda: delete_model(tag_a)),
        "delete_bento_latest": _error(lambda: delete_bento(f"{PIPELINE}:latest")),
    }
    result["models_after_refusals"] = sorted(str(m.tag) for m in bentoml.models.list())

    # A service that fails to import: the build fails, and the model saved for it is deleted.
    broken_dir = workdir / "broken-bentos"
    broken_dir.mkdir()
    for file in BENTOS_DIR.iterdir():
        if file.is_file():
            (broken_dir / file.name).write_bytes(file.read_bytes())
    service = broken_dir / "service.py"
    service.write_text(
        service.read_text() + '\nraise RuntimeError("service import failed on purpose")\n'
    )
    result["errors"]["build_fails"] = _error(
        lambda: package_model(
            model_a,
            "run-0004",
            pipeline="broken",
            model_name="broken",
            metadata={**given, "pipeline": "broken"},
            bentos_dir=broken_dir,
        )
    )
    # The build runs after the save: its error proves a model was saved, then deleted.
    result["broken_models_left"] = [
        str(m.tag) for m in bentoml.models.list() if m.tag.name == "broken"
    ]

    # Undoing a package whose bento failed its infra check: retryable.
    delete_package(tag_b, bento_b)
    delete_package(tag_b, bento_b)
    result["deleted"] = {
        "bento": all(str(b.tag) != bento_b for b in bentoml.bentos.list()),
        "model": all(str(m.tag) != tag_b for m in bentoml.models.list(MODEL_NAME)),
    }
    result.update(model_a_path=str(model_a), model_b_path=str(model_b), csv=str(csv))
    (workdir / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    _run_packaging(Path(sys.argv[1]))
