"""Serving against a real `bentoml serve`: the generic service for every task, bad requests,
concurrency, the inference log, `nbprod serve`/`predict` and the infra check.

Isolation as in test_packaging: this module never imports bentoml. The ``stack`` fixture runs
this file as a script in a subprocess whose ``BENTOML_HOME`` is a temporary folder: it fits and
packages one model per task (tests/served_models.py: binary int labels, multiclass string
labels, regression, a random forest, and a LinearSVC without predict_proba, which skl2onnx cannot
convert: scikit-learn serves it, ONNX Runtime the others), a copy of the binary one whose model
file is corrupted afterwards, and writes a run store whose ``churn`` champion is the binary bento.
Then ONE server is started through the ``serve`` command for the whole module.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bento_scripts import isolated_bentoml_env, run_script

from flows.bento_server import free_port, running_bento, stop_server, wait_ready
from flows.errors import InferenceLogError, RunStoreError, ServingError
from flows.inference_log import default_inference_log_dir, read_inference_log
from flows.serving import (
    check_served_answers,
    frame_to_records,
    post_json,
    register_commands,
    resolve_bento,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
GOOD, BROKEN, REJECTED = "v-good", "v-broken", "v-rejected"
# Failed after its bento was built (say, the champion move): the bento is not an approved one.
FAILED_AFTER_BUILD = "v-failed"
PIPELINES = ("churn", "species", "price", "svc", "forest")
NON_FEATURES = {
    "churn": ["customer_id", "signup_date", "churned"],
    "forest": ["customer_id", "signup_date", "churned"],
    "species": ["sample_id", "measured_at", "species"],
    "price": ["listing_id", "listed_on", "price"],
    "svc": ["customer_id", "signup_date", "churned"],
}
WORKERS = 2
SERVER_DEADLINE_S = 120.0
REQUESTS_DEADLINE_S = 90.0
# Runs the serve command exactly as `nbprod serve` will, without depending on flows/cli.py.
SERVE_CLI = """
import argparse, sys
from flows.serving import register_commands
parser = argparse.ArgumentParser(prog="nbprod")
register_commands(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args()
sys.exit(args.func(args))
"""


@dataclass(frozen=True)
class Stack:
    """The module's served bento and everything the tests need to check it."""

    base: str
    env: dict[str, str]
    workdir: Path
    log_dir: Path
    store_url: str
    packaged: dict[str, dict[str, Any]]
    broken_bento_tag: str
    flipped_model_path: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Package the models once, then serve churn's champion with the serve command."""
    workdir = tmp_path_factory.mktemp("serving")
    env = isolated_bentoml_env(
        workdir / "bentoml",
        NBPROD_RUN_STORE_URL=str(workdir / "runs"),
        NBPROD_INFERENCE_LOG_DIR=str(workdir / "inference"),
        # Two worker processes for the served champion: each logs to its own file.
        BENTOML_CONFIG_OVERRIDES=json.dumps(
            {"services": {p: {"workers": WORKERS if p == "churn" else 1} for p in PIPELINES}}
        ),
    )
    result = run_script(__file__, workdir, env)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_log = workdir / "serve.log"
    with server_log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE_CLI, "serve", "--pipeline", "churn", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the workers die with it
        )
    try:
        failure = wait_ready(base, server, server_log, timeout_s=SERVER_DEADLINE_S)
        assert failure is None, f"{failure}\n{server_log.read_text()}"
        yield Stack(
            base=base,
            env=env,
            workdir=workdir,
            log_dir=workdir / "inference",
            store_url=str(workdir / "runs"),
            packaged=result["packaged"],
            broken_bento_tag=result["broken_bento_tag"],
            flipped_model_path=Path(result["flipped_model_path"]),
        )
    finally:
        stop_server(server)


@pytest.fixture
def in_stack_home(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """Servers started from this process use the module's BentoML store and settings."""
    for key in ("BENTOML_HOME", "BENTOML_CONFIG_OVERRIDES", "NBPROD_RUN_STORE_URL"):
        monkeypatch.setenv(key, stack.env[key])
    return stack


def _frame(stack: Stack, pipeline: str) -> Any:
    import pandas as pd

    return pd.read_csv(stack.packaged[pipeline]["csv"])


def _model(stack: Stack, pipeline: str) -> Any:
    import joblib

    return joblib.load(stack.packaged[pipeline]["model_path"])


def _records(pipeline: str, frame: Any) -> list[dict[str, Any]]:
    return frame_to_records(frame, NON_FEATURES[pipeline])


def _expected(model: Any, pipeline: str, frame: Any) -> list[dict[str, Any]]:
    """What the model itself answers for CSV-read rows, in the service's shape."""
    features = frame.drop(columns=NON_FEATURES[pipeline])
    labels = model.predict(features).tolist()
    if pipeline == "price":
        return [{"prediction": float(v)} for v in labels]
    if not hasattr(model, "predict_proba"):
        return [{"prediction": label} for label in labels]
    keys = [str(c) for c in model.classes_.tolist()]
    return [
        {"prediction": label, "probabilities": dict(zip(keys, row, strict=True))}
        for label, row in zip(labels, model.predict_proba(features).tolist(), strict=True)
    ]


def _same(served: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """Served answers are the model's: the same labels, probabilities within 1e-5 (ONNX Runtime
    sums tree scores in float32)."""
    return [a["prediction"] for a in served] == [e["prediction"] for e in expected] and [
        a.get("probabilities") for a in served
    ] == [pytest.approx(e.get("probabilities"), abs=1e-5) for e in expected]


def _raw_post(url: str, data: bytes, content_type: str = "application/json") -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, json.loads(raw)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nbprod")
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


# --- the API -------------------------------------------------------------------------------------


def test_serve_command_serves_the_pipelines_champion_with_metadata(stack: Stack) -> None:
    churn = stack.packaged["churn"]
    for probe in ("/livez", "/healthz", "/readyz"):
        assert post_json(stack.base + probe, None)[0] == 200, probe
    status, meta, _ = post_json(stack.base + "/metadata", {})
    assert status == 200, meta
    assert meta["model_tag"] == churn["model_tag"]
    assert (meta["pipeline"], meta["service"], meta["task"]) == ("churn", "churn", "classification")
    assert (meta["classes"], meta["probabilities"]) == ([0, 1], True)
    # Converted at packaging, and checked again by each worker at start-up.
    assert meta["runtime"]["name"] == "onnxruntime"
    assert "like scikit-learn: labels identical" in meta["runtime"]["reason"]
    assert meta["fast_paths"]["onnx"] is True and meta["fast_paths"]["checked_records"] > 1_000
    assert meta["run_version"] == GOOD
    assert meta["metrics"] == {"score": 0.5}
    # None values are not stored (BentoML refuses them): champion_at_start is gone.
    assert meta["lineage"] == {"notebooks": {"train": "abc"}}
    assert (meta["target"], meta["id_columns"], meta["time_column"]) == (
        "churned",
        ["customer_id"],
        "signup_date",
    )
    assert set(meta["feature_schema"]["categorical"]) == {"plan"}
    assert set(meta["feature_schema"]["numerical"]) == {"x0", "x1", "x2", "x3", "visits"}
    assert meta["request_timers_cancelled"] is True  # BentoML 1.4.40: see compat_bentoml


def test_binary_answers_equal_the_models_including_missing_values(stack: Stack) -> None:
    import pandas as pd

    frame = _frame(stack, "churn")
    missing = frame[frame["x1"].isna()]
    assert len(missing) > 10
    # Several batches' worth: BentoML splits large requests and merges concurrent ones.
    rows = pd.concat([frame, missing, frame, frame], ignore_index=True)
    expected = _expected(_model(stack, "churn"), "churn", rows)

    status, body, headers = post_json(stack.base + "/predict", {"records": _records("churn", rows)})
    assert status == 200, body
    assert [r["prediction"] for r in body] == [e["prediction"] for e in expected]
    assert {type(r["prediction"]) for r in body} == {int}  # labels as in the data
    assert [list(r["probabilities"]) for r in body[:3]] == [["0", "1"]] * 3
    # ONNX Runtime sums tree scores in float32: probabilities within 1e-5 of the model's.
    assert [r["probabilities"] for r in body] == [
        pytest.approx(e["probabilities"], abs=1e-5) for e in expected
    ]
    assert headers["X-Model-Tag"] == stack.packaged["churn"]["model_tag"]
    assert len(headers["X-Request-ID"]) == 32


@pytest.mark.parametrize("pipeline", ["species", "price", "svc", "forest"])
def test_every_task_is_served_in_its_shape(in_stack_home: Stack, pipeline: str) -> None:
    stack = in_stack_home
    packaged = stack.packaged[pipeline]
    frame = _frame(stack, pipeline).head(120)
    expected = _expected(_model(stack, pipeline), pipeline, frame)
    workdir = stack.workdir / f"serve-{pipeline}"
    with running_bento(packaged["bento_tag"], log_dir=workdir / "log", workdir=workdir) as (
        base,
        _,
    ):
        status, body, _ = post_json(base + "/predict", {"records": _records(pipeline, frame)})
        assert status == 200, body
        status, meta, _ = post_json(base + "/metadata", {})
    assert meta["pipeline"] == meta["service"] == pipeline
    assert meta["task"] == packaged["task"]
    # skl2onnx cannot convert the LinearSVC: scikit-learn serves it, and says why.
    onnx = pipeline != "svc"
    assert meta["runtime"]["name"] == ("onnxruntime" if onnx else "sklearn")
    assert meta["fast_paths"]["onnx"] is onnx
    if not onnx:
        assert meta["runtime"]["reason"].startswith("skl2onnx cannot convert it")
    if pipeline == "forest":  # a random forest: labels identical, probabilities within 1e-5
        assert [r["prediction"] for r in body] == [e["prediction"] for e in expected]
        assert [r["probabilities"] for r in body] == [
            pytest.approx(e["probabilities"], abs=1e-5) for e in expected
        ]
    elif pipeline == "species":  # multiclass, string labels, with probabilities
        assert (meta["classes"], meta["probabilities"]) == (
            ["setosa", "versicolor", "virginica"],
            True,
        )
        assert {r["prediction"] for r in body} == {"setosa", "versicolor", "virginica"}
        assert all(list(r["probabilities"]) == meta["classes"] for r in body)
        assert all(sum(r["probabilities"].values()) == pytest.approx(1.0) for r in body)
        assert [r["prediction"] for r in body] == [e["prediction"] for e in expected]
        assert [r["probabilities"] for r in body] == [
            pytest.approx(e["probabilities"], abs=1e-5) for e in expected
        ]
    elif pipeline == "price":  # regression: a number, nothing else
        assert (meta["classes"], meta["probabilities"]) == (None, False)
        assert all(set(r) == {"prediction"} and isinstance(r["prediction"], float) for r in body)
        assert [r["prediction"] for r in body] == pytest.approx(
            [e["prediction"] for e in expected], rel=1e-5
        )
    else:  # a classifier without predict_proba: labels only
        assert (meta["classes"], meta["probabilities"]) == ([0, 1], False)
        assert all(set(r) == {"prediction"} for r in body)
        assert body == expected
    logged = read_inference_log(workdir / "log")
    assert len(logged) == len(frame)
    if pipeline == "species":
        assert [c for c in logged.columns if c.startswith("probability_")] == [
            "probability_setosa",
            "probability_versicolor",
            "probability_virginica",
        ]
    elif pipeline == "forest":
        assert [c for c in logged.columns if c.startswith("probability_")] == [
            "probability_0",
            "probability_1",
        ]
    else:
        assert not [c for c in logged.columns if c.startswith("probability")]


MALFORMED = {
    # case: (record change or raw body, where the error must point, expected status or None)
    "string_for_number": ({"x0": "52"}, "records.0.x0", None),
    "bool_for_number": ({"x2": True}, "records.0.x2", None),
    "fraction_for_int": ({"visits": 3.5}, "records.0.visits", None),
    "null_for_required": ({"x0": None}, "records.0.x0", None),
    "missing_field": ({"plan": ...}, "records.0.plan", None),
    "extra_field": ({"zip_code": "12345"}, "records.0.zip_code", None),
    # An id column is not a feature: sending it is a mistake the service names.
    "id_column_sent": ({"customer_id": "cu-1"}, "records.0.customer_id", None),
    "unknown_category": ({"plan": "castle"}, "records.0.plan", None),
    "out_of_range": ({"visits": 10_000}, "records.0.visits", None),
    # json.dumps writes these as the NaN / Infinity literals many JSON encoders emit.
    "nan": ({"x2": float("nan")}, "records.0.x2", None),
    "infinity": ({"x3": float("inf")}, "records.0.x3", None),
    "minus_infinity": ({"x0": float("-inf")}, "records.0.x0", None),
    "empty_list": (b'{"records": []}', "records", None),
    "records_not_a_list": (b'{"records": {"x0": 52}}', "records", None),
    "record_not_an_object": (b'{"records": ["x0=52"]}', "records.0", None),
    "missing_records": (b"{}", "records", None),
    "top_level_array": (b"[]", "body", None),
    "invalid_json": (b'{"records": [{"x0": 52,', "body", None),
    "empty_body": (b"", "records", None),
    "too_many_records": ("TOO_MANY", "records", None),
    "oversized_payload": ("OVERSIZED", "body", 413),
    "form_encoded": ("FORM", "content-type", 415),
}


def _malformed_body(case: Any, good: dict[str, Any]) -> tuple[bytes, str]:
    """Bytes and content type of a malformed request built from a valid record."""
    if isinstance(case, dict):
        record = {k: v for k, v in {**good, **case}.items() if v is not ...}
        return json.dumps({"records": [record]}).encode(), "application/json"
    if case == "TOO_MANY":
        return json.dumps({"records": [good] * 10_001}).encode(), "application/json"
    if case == "OVERSIZED":
        padding = "x" * (9 * 1024 * 1024)
        return json.dumps({"records": [good], "padding": padding}).encode(), "application/json"
    if case == "FORM":
        return json.dumps({"records": [good]}).encode(), "application/x-www-form-urlencoded"
    return case, "application/json"


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_gets_4xx_naming_the_field(stack: Stack, name: str) -> None:
    change, where, status_wanted = MALFORMED[name]
    frame = _frame(stack, "churn")
    good = _records("churn", frame[frame["x1"].notna()].head(1))[0]
    data, content_type = _malformed_body(change, good)
    status, body = _raw_post(stack.base + "/predict", data, content_type)
    assert 400 <= status < 500, body
    if status_wanted:
        assert status == status_wanted, body
    assert f"{where}:" in body["error"], body
    assert "\n" not in body["error"]
    locs = [".".join(str(part) for part in err["loc"]) for err in body["detail"]]
    assert where in locs, body


def test_good_and_bad_requests_mixed_under_concurrency_all_answered(stack: Stack) -> None:
    frame = _frame(stack, "churn").iloc[:240]
    expected = _expected(_model(stack, "churn"), "churn", frame)
    good = _records("churn", frame)
    bad_bodies = [
        b'{"records": [{"x0": 52,',
        json.dumps({"records": [{**good[0], "plan": "vacation"}]}).encode(),
        json.dumps({"records": []}).encode(),
        json.dumps({"records": [{**good[1], "x0": "old"}]}).encode(),
    ]
    jobs: list[tuple[str, Any]] = []
    for i in range(60):  # requests of 1-7 rows, interleaved with bad ones
        start, size = (i * 4) % 230, 1 + i % 7
        jobs.append(("good", (start, size)))
        if i % 2 == 0:
            jobs.append(("bad", bad_bodies[i % len(bad_bodies)]))

    def send(job: tuple[str, Any]) -> tuple[int, Any]:
        kind, arg = job
        if kind == "bad":
            return _raw_post(stack.base + "/predict", arg)
        start, size = arg
        status, body, _ = post_json(
            stack.base + "/predict", {"records": good[start : start + size]}, timeout=60
        )
        return status, body

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(send, job) for job in jobs]
        _, pending = wait(futures, timeout=REQUESTS_DEADLINE_S)
    assert not pending, f"{len(pending)} requests unanswered after {REQUESTS_DEADLINE_S}s"
    for job, future in zip(jobs, futures, strict=True):
        status, body = future.result()
        if job[0] == "bad":
            assert 400 <= status < 500, body
            continue
        assert status == 200, body
        start, size = job[1]
        assert _same(body, expected[start : start + size])
    assert post_json(stack.base + "/readyz", None)[0] == 200


def test_inference_log_has_every_record_under_concurrency(stack: Stack) -> None:
    rows_per_request, n_requests = 3, 48
    records = _records("churn", _frame(stack, "churn").iloc[: rows_per_request * n_requests])
    chunks = [records[i * rows_per_request : (i + 1) * rows_per_request] for i in range(n_requests)]

    def send(chunk: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
        status, body, headers = post_json(stack.base + "/predict", {"records": chunk}, timeout=60)
        assert status == 200, body
        return headers["X-Request-ID"], body

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(send, chunks, timeout=REQUESTS_DEADLINE_S))

    # The service logs an answer before sending it, so no waiting is needed here.
    logged = read_inference_log(stack.log_dir)
    ids = {request_id for request_id, _ in answers}
    assert len(ids) == n_requests
    mine = logged[logged["request_id"].isin(ids)]
    assert len(mine) == n_requests * rows_per_request
    assert (mine["model_tag"] == stack.packaged["churn"]["model_tag"]).all()
    assert (mine["run_version"] == GOOD).all()
    assert str(mine["timestamp"].dt.tz) == "UTC"
    assert list(mine.columns)[-3:] == ["prediction", "probability_0", "probability_1"]
    for (request_id, outputs), chunk in zip(answers, chunks, strict=True):
        rows = mine[mine["request_id"] == request_id].sort_values("record_index")
        assert rows["record_index"].tolist() == list(range(rows_per_request))
        assert rows["plan"].tolist() == [r["plan"] for r in chunk]
        assert rows["visits"].tolist() == [r["visits"] for r in chunk]
        assert rows["prediction"].tolist() == [o["prediction"] for o in outputs]
        assert rows["probability_1"].tolist() == [o["probabilities"]["1"] for o in outputs]
    # One file per worker process that served a prediction.
    assert 1 <= len(list(stack.log_dir.glob("*.jsonl"))) <= WORKERS


def test_predict_is_in_the_inference_log_not_in_bentomls_access_log(stack: Stack) -> None:
    records = _records("churn", _frame(stack, "churn").iloc[:2])
    for _ in range(2 * WORKERS):
        status, body, _ = post_json(stack.base + "/predict", {"records": records}, timeout=60)
        assert status == 200, body
    # A worker writes an access line before the response is sent: the /predict lines, if any,
    # are in the log once these answers are in; the /metadata line shows access logging is on.
    assert post_json(stack.base + "/metadata", {}, timeout=60)[0] == 200
    server_log = stack.workdir / "serve.log"
    deadline = time.monotonic() + REQUESTS_DEADLINE_S
    while "path=/metadata" not in server_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "no access line for /metadata in the server log"
        time.sleep(0.1)
    assert "path=/predict" not in server_log.read_text(errors="replace")


# --- the command line ----------------------------------------------------------------------------


def test_serve_resolves_the_pipelines_champion_and_refuses_runs_without_a_bento(
    in_stack_home: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bento = in_stack_home.packaged["churn"]["bento_tag"]
    assert resolve_bento("churn") == (bento, GOOD)
    assert resolve_bento("churn", GOOD) == (bento, GOOD)
    with pytest.raises(ServingError, match="pipeline 'species' has no champion"):
        _cli(["serve", "--pipeline", "species", "--port", "3999"])
    with pytest.raises(ServingError, match="v-rejected is rejected, not accepted"):
        _cli(["serve", REJECTED, "--pipeline", "churn"])
    with pytest.raises(ServingError, match="v-failed is failed, not accepted"):
        _cli(["serve", FAILED_AFTER_BUILD, "--pipeline", "churn"])
    with pytest.raises(RunStoreError, match="not found"):
        _cli(["serve", "v-unknown", "--pipeline", "churn"])
    monkeypatch.setenv("NBPROD_RUN_STORE_URL", str(tmp_path / "empty"))
    with pytest.raises(ServingError, match="no champion"):
        _cli(["serve", "--pipeline", "churn", "--port", "3999"])


def test_predict_drops_id_time_and_target_columns_and_keeps_the_ids(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    frame = _frame(stack, "churn").iloc[100:130]
    assert {"customer_id", "signup_date", "churned"} <= set(frame.columns)
    csv = tmp_path / "rows.csv"
    frame.to_csv(csv, index=False)
    expected = _expected(_model(stack, "churn"), "churn", frame)
    columns = ["customer_id", "prediction", "probability_0", "probability_1"]

    out = tmp_path / "scored.csv"
    argv = ["predict", str(csv), "--pipeline", "churn", "--url", stack.base]
    assert _cli([*argv, "--output", str(out)]) == 0
    assert f"wrote 30 predictions to {out}" in capsys.readouterr().out
    scored = pd.read_csv(out)
    assert list(scored.columns) == columns
    assert scored["customer_id"].tolist() == frame["customer_id"].tolist()
    assert scored["prediction"].tolist() == [e["prediction"] for e in expected]
    assert scored["probability_1"].tolist() == pytest.approx(
        [e["probabilities"]["1"] for e in expected], abs=1e-5
    )

    assert _cli(argv) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(printed.columns) == columns
    assert printed["prediction"].tolist() == [e["prediction"] for e in expected]


def test_predict_reads_the_columns_to_drop_from_the_pipeline_spec(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spec wins over the served model's metadata: this one forgets the time column, so the
    # service is sent signup_date and names it.
    project = tmp_path / "project"
    (project / "deployments").mkdir(parents=True)
    (project / "deployments" / "churn.yaml").write_text(
        "name: churn\nflow: training\nnotebooks: [notebooks/train.ipynb]\n"
        "task: classification\ntarget: churned\nid_columns: [customer_id]\n"
        "data: {data_path: data/churn.csv}\n"
    )
    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(project))
    csv = tmp_path / "rows.csv"
    _frame(stack, "churn").head(3).to_csv(csv, index=False)
    with pytest.raises(ServingError, match=r"row 1, column signup_date: Extra inputs"):
        _cli(["predict", str(csv), "--pipeline", "churn", "--url", stack.base])


def test_predict_command_errors_are_one_clear_line(stack: Stack, tmp_path: Path) -> None:
    bad = _frame(stack, "churn").iloc[:5].copy()
    bad.loc[bad.index[2], "plan"] = "vacation"
    csv = tmp_path / "bad.csv"
    bad.to_csv(csv, index=False)
    argv = ["predict", str(csv), "--pipeline", "churn", "--url"]
    with pytest.raises(ServingError, match=r"refused the request \(400\): row 3, column plan"):
        _cli([*argv, stack.base])
    with pytest.raises(ServingError, match="serves pipeline 'churn', not 'species'"):
        _cli(["predict", str(csv), "--pipeline", "species", "--url", stack.base])
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServingError, match="cannot reach the service") as refused:
        _cli([*argv, closed])
    assert "\n" not in str(refused.value)
    with pytest.raises(ServingError, match="does not exist"):
        _cli(["predict", str(tmp_path / "missing.csv"), "--pipeline", "churn"])


def test_register_commands_imports_nothing_heavy() -> None:
    heavy = ("prefect", "evidently", "bentoml", "papermill", "pandas", "sklearn", "pydantic")
    code = (
        "import argparse, sys\nfrom flows.serving import register_commands\n"
        "p = argparse.ArgumentParser()\nregister_commands(p.add_subparsers())\np.format_help()\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


# --- BentoML compatibility -----------------------------------------------------------------------

# Runs BentoML's TimeoutMiddleware around tiny ASGI apps, before and after the compat fix.
TIMER_PROBE = """
import asyncio, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("compat_bentoml", sys.argv[1])
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
from bentoml._internal.server.http.traffic import TimeoutMiddleware

async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

async def hang(scope, receive, send):
    await asyncio.sleep(60)

async def receive():
    return {"type": "http.request", "body": b""}

async def serve(app, timeout, requests):
    sent = []
    async def send(message):
        sent.append(message)
    middleware = TimeoutMiddleware(app, timeout=timeout)
    for _ in range(requests):
        await middleware({"type": "http"}, receive, send)
    await asyncio.sleep(0)  # one loop turn: a cancelled handler unwinds (its own sleep's timer)
    live = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]
    return {"live_timers": len(live),
            "statuses": [m["status"] for m in sent if m["type"] == "http.response.start"],
            "bodies": [m["body"].decode() for m in sent if m["type"] == "http.response.body"]}

result = {"before": asyncio.run(serve(answer, 30, 50))}
result["affected"] = [compat.is_affected(compat.bentoml_version(v))
                      for v in ("1.3.9", "1.4.0", "1.4.40", "1.4.41", "1.5.0", "nightly")]
result["patched"] = compat.cancel_request_timers()
result["again"] = compat.cancel_request_timers()
result["after"] = asyncio.run(serve(answer, 30, 50))
result["timeout"] = asyncio.run(serve(hang, 0.2, 1))
print(json.dumps(result))
"""


def test_request_timers_are_cancelled_on_affected_bentoml_and_timeouts_still_answer_504(
    stack: Stack,
) -> None:
    # BentoML 1.4.40 leaves every request's 30 s timer (and the request's context) alive: under
    # load that made the garbage collector pause for 200-300 ms. If this first assertion fails,
    # upstream fixed it: delete bentos/compat_bentoml.py.
    out = subprocess.run(
        [sys.executable, "-c", TIMER_PROBE, str(REPO / "bentos" / "compat_bentoml.py")],
        capture_output=True, text=True, timeout=120, env=stack.env, cwd=stack.workdir, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"]["live_timers"] == 50  # the upstream behaviour this works around
    assert result["affected"] == [False, True, True, False, False, False]
    assert result["patched"] is True and result["again"] is True
    assert result["after"] == {"live_timers": 0, "statuses": [200] * 50, "bodies": ["ok"] * 50}
    assert result["timeout"]["statuses"] == [504]
    assert "0.2 seconds" in result["timeout"]["bodies"][0]
    assert result["timeout"]["live_timers"] == 0


# --- the predictor's shortcuts, in this process -------------------------------------------------

BATCHES = (slice(0, 1), slice(1, 8), slice(8, None))
# Not a value the check records can hold (they are probes at the range ends and middle, and draws).
TIE = 0.123456789


@functools.cache
def _bento_module(name: str) -> Any:
    """A module of bentos/ (predictor and request_schema import neither bentoml nor flows)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bento_{name}", REPO / "bentos" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _predictor(pipeline: str, model: Any) -> tuple[Any, list[Any], type[Any]]:
    """A Predictor of ``model`` for a pipeline of tests/served_models.py, the records the
    service checks its shortcuts on, and the request's record model."""
    from served_models import PIPELINES as TASKS
    from served_models import feature_schema, make_frame

    predictor, schema = _bento_module("predictor"), _bento_module("request_schema")
    features = feature_schema(pipeline, make_frame(pipeline))
    task = TASKS[pipeline][0]
    served = predictor.Predictor(model, model_tag="m:1", task=task, feature_schema=features)
    record = schema.build_record_model(features)
    checked = schema.probe_records(features, record) + schema.sample_records(features, record)
    return served, checked, record


def _served(predictor: Any, record: type[Any], pipeline: str, frame: Any) -> list[Any]:
    """The predictor's answers to a frame's rows in batches of 1, 7 and the rest, as BentoML
    batches them. Compare with ``_by_batch``: a model's numbers may depend on the batch size."""
    validated = [record.model_validate(row) for row in _records(pipeline, frame)]
    return [answer for batch in BATCHES for answer in predictor.score(validated[batch])]


def _by_batch(model: Any, pipeline: str, frame: Any) -> list[Any]:
    """What the model itself answers for the frame's rows, batched like ``_served``."""
    return [answer for batch in BATCHES for answer in _expected(model, pipeline, frame[batch])]


def _classifiers() -> tuple[type[Any], type[Any]]:
    """Two classifiers whose predict is not always the argmax of their predict_proba."""
    import numpy as np
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.linear_model import LogisticRegression

    class Contrarian(ClassifierMixin, BaseEstimator):
        """predict names the less likely class."""

        def fit(self, X: Any, y: Any) -> Any:
            self.inner_ = LogisticRegression().fit(X, y)
            self.classes_ = self.inner_.classes_
            return self

        def predict_proba(self, X: Any) -> Any:
            return self.inner_.predict_proba(X)

        def predict(self, X: Any) -> Any:
            return self.classes_[self.predict_proba(X).argmin(axis=1)]

    class TieBreaker(ClassifierMixin, BaseEstimator):
        """Class 1 when x0 > 0 (p 0.9); at x0 == TIE p is 0.5 and predict says 1, argmax 0."""

        def fit(self, X: Any, y: Any) -> Any:
            self.classes_ = np.array([0, 1])
            self.predict_calls = 0
            return self

        def predict_proba(self, X: Any) -> Any:
            x0 = X["x0"].to_numpy()
            p1 = np.where(x0 == TIE, 0.5, np.where(x0 > 0, 0.9, 0.1))
            return np.column_stack([1 - p1, p1])

        def predict(self, X: Any) -> Any:
            self.predict_calls += 1
            x0 = X["x0"].to_numpy()
            return self.classes_[np.where((x0 == TIE) | (x0 > 0), 1, 0)]

    return Contrarian, TieBreaker


@pytest.mark.parametrize(
    ("pipeline", "once", "from_proba"),
    [
        ("churn", True, True),  # gradient boosting: predict is argmax(predict_proba)
        ("species", True, True),  # multinomial logistic regression, string labels
        ("price", False, False),  # regression: one model call already
        ("svc", False, False),  # no predict_proba: one model call already
    ],
)
def test_shortcuts_are_used_when_exact_and_answer_as_the_model(
    pipeline: str, once: bool, from_proba: bool
) -> None:
    from served_models import fit, make_frame

    frame = make_frame(pipeline, seed=1)  # other rows than the model was fit on
    model = fit(pipeline, make_frame(pipeline))
    predictor, checked, record = _predictor(pipeline, model)
    assert predictor.paths == _bento_module("predictor").OWN_CALLS
    paths = predictor.choose_paths(checked)
    assert (paths.preprocess_once, paths.labels_from_probabilities) == (once, from_proba)
    assert predictor.describe_paths() == {
        "preprocess_once": once,
        "labels_from_probabilities": from_proba,
        "onnx": False,  # no conversion given: the model itself answers
        "checked_records": len(checked),
    }
    assert len(checked) > 1_000
    assert _served(predictor, record, pipeline, frame) == _by_batch(model, pipeline, frame)


def test_predict_is_kept_when_it_differs_from_the_argmax_of_predict_proba() -> None:
    from served_models import fit, make_frame
    from sklearn.pipeline import Pipeline

    contrarian, _ = _classifiers()
    frame = make_frame("churn")
    features, preprocess = frame.drop(columns=NON_FEATURES["churn"]), fit("churn", frame)[0]
    last = contrarian().fit(preprocess.transform(features), frame["churned"])
    model = Pipeline([("pre", preprocess), ("model", last)])
    predictor, checked, record = _predictor("churn", model)
    paths = predictor.choose_paths(checked)
    # The transforms still run once: the last step's predict and predict_proba share them.
    assert (paths.preprocess_once, paths.labels_from_probabilities) == (True, False)
    served = _served(predictor, record, "churn", frame)
    assert served == _by_batch(model, "churn", frame)
    likeliest = [max(a["probabilities"], key=a["probabilities"].get) for a in served]
    assert all(str(a["prediction"]) != key for a, key in zip(served, likeliest, strict=True))


def test_a_batch_with_a_tie_calls_predict() -> None:
    from served_models import make_frame

    _, tie_breaker = _classifiers()
    model = tie_breaker().fit(None, None)
    predictor, checked, record = _predictor("churn", model)
    assert predictor.choose_paths(checked).labels_from_probabilities is True
    frame = make_frame("churn").head(20)
    model.predict_calls = 0
    served = [a["prediction"] for a in _served(predictor, record, "churn", frame)]
    assert served == model.predict(frame).tolist()
    assert model.predict_calls == 1  # the call above: the three batches took labels from argmax
    rows = _records("churn", frame)
    tied = [{**rows[0], "x0": TIE}, rows[1]]
    answers = predictor.score([record.model_validate(row) for row in tied])
    assert answers[0] == {"prediction": 1, "probabilities": {"0": 0.5, "1": 0.5}}
    assert model.predict_calls == 2


def test_sample_records_cover_the_schema_and_are_reproducible() -> None:
    from served_models import feature_schema, make_frame

    schema_module = _bento_module("request_schema")
    schema = feature_schema("churn", make_frame("churn"))
    record = schema_module.build_record_model(schema)
    records = schema_module.sample_records(schema, record, count=300)
    again = schema_module.sample_records(schema, record, count=300)
    assert [r.model_dump() for r in records] == [r.model_dump() for r in again]
    assert {r.plan for r in records} == set(schema["categorical"]["plan"]["categories"])
    assert any(r.x1 is None for r in records)  # the nullable column, missing now and then
    assert all(r.x0 is not None for r in records)
    low, high = schema_module.accepted_range(schema["numerical"]["visits"])
    assert all(low <= r.visits <= high for r in records)
    assert len({r.x0 for r in records}) == 300


# --- the infra check -----------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_infra_check_passes_for_every_task(in_stack_home: Stack, pipeline: str) -> None:
    packaged = in_stack_home.packaged[pipeline]
    sample = _frame(in_stack_home, pipeline).head(50)  # ids, time and target included
    logged_before = len(read_inference_log(in_stack_home.log_dir))
    result = check_served_answers(
        packaged["bento_tag"],
        packaged["model_tag"],
        Path(packaged["model_path"]),
        sample,
        packaged["task"],
    )
    assert result["passed"] is True, result
    assert result["reason"] is None
    assert [c["name"] for c in result["checks"]] == [
        "startup",
        "health",
        "metadata",
        "predict",
        "predictions_match",
        "rejects_bad_request",
        "inference_log",
    ]
    assert result["rows"] == 50 and result["startup_s"] > 0
    json.dumps(result)  # a JSON-able record for the run store
    # Check traffic goes to a temporary log, not to the monitored one.
    assert len(read_inference_log(in_stack_home.log_dir)) == logged_before


def test_infra_check_reports_answers_that_differ_from_the_model(in_stack_home: Stack) -> None:
    churn = in_stack_home.packaged["churn"]
    sample = _frame(in_stack_home, "churn").head(20)
    # The served bento holds the churn model; the model file given answers the opposite.
    result = check_served_answers(
        churn["bento_tag"],
        churn["model_tag"],
        in_stack_home.flipped_model_path,
        sample,
        "classification",
    )
    assert result["passed"] is False
    assert result["reason"].startswith("predictions_match: 20 of 20 rows differ: row 0: served")
    failed = [c["name"] for c in result["checks"] if not c["passed"]]
    assert failed == ["predictions_match"]
    json.dumps(result)

    # The wrong task is reported by /metadata, and the answers' shape differs too.
    wrong_task = check_served_answers(
        churn["bento_tag"], churn["model_tag"], Path(churn["model_path"]), sample, "regression"
    )
    failed = [c["name"] for c in wrong_task["checks"] if not c["passed"]]
    assert failed == ["metadata", "predictions_match"], wrong_task
    assert "task 'classification', expected 'regression'" in wrong_task["reason"]

    with pytest.raises(ValueError, match=r"lacks the feature column\(s\) \['plan'\]"):
        check_served_answers(
            churn["bento_tag"],
            churn["model_tag"],
            Path(churn["model_path"]),
            sample.drop(columns=["plan"]),
            "classification",
        )


def test_infra_check_fails_when_the_bento_cannot_start(in_stack_home: Stack) -> None:
    churn = in_stack_home.packaged["churn"]
    sample = _frame(in_stack_home, "churn").head(5)
    model_path = Path(churn["model_path"])
    result = check_served_answers(
        in_stack_home.broken_bento_tag, churn["model_tag"], model_path, sample, "classification"
    )
    assert result["passed"] is False
    assert result["reason"].startswith("startup: the service failed to start")
    assert "cannot load model.joblib" in result["reason"]
    assert [c["name"] for c in result["checks"]] == ["startup"]

    missing = check_served_answers(
        "churn:does-not-exist", churn["model_tag"], model_path, sample, "classification"
    )
    assert missing["passed"] is False
    assert missing["reason"].startswith("startup: bentoml serve exited"), missing


def test_infra_check_refuses_caller_mistakes_before_serving(tmp_path: Path) -> None:
    import pandas as pd

    rows = pd.DataFrame({"x0": [1.0]})
    (tmp_path / "model.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not 'classification' or 'regression'"):
        check_served_answers("b:1", "m:1", tmp_path / "model.joblib", rows, "ranking")
    with pytest.raises(ValueError, match="at least one sample row"):
        check_served_answers("b:1", "m:1", tmp_path / "model.joblib", rows.head(0), "regression")
    with pytest.raises(ValueError, match="does not load with joblib"):
        check_served_answers("b:1", "m:1", tmp_path / "model.joblib", rows, "regression")


# --- read_inference_log --------------------------------------------------------------------------


def _log_line(request_id: str, records: list[dict[str, Any]], outputs: list[Any]) -> str:
    return json.dumps(
        {
            "request_id": request_id,
            "timestamp": f"2026-01-01T00:00:0{len(request_id) % 10}.000001+00:00",
            "model_tag": "m:1",
            "run_version": "v1",
            "latency_ms": 1.5,
            "request": {"records": records},
            "response": outputs,
        }
    )


def test_read_inference_log_reads_folders_and_skips_a_line_being_written(tmp_path: Path) -> None:
    out = [
        {"prediction": "yes", "probabilities": {"no": 0.1, "yes": 0.9}},
        {"prediction": "no", "probabilities": {"no": 0.8, "yes": 0.2}},
    ]
    (tmp_path / "a.jsonl").write_text(
        _log_line("r1", [{"age": 30, "purpose": "car"}, {"age": 40}], out) + "\n"
    )
    sub = tmp_path / "worker2"
    sub.mkdir()
    (sub / "b.jsonl").write_text(
        _log_line("r22", [{"age": 50, "purpose": "car"}], out[:1]) + '\n{"request_id": "r3'
    )
    frame = read_inference_log(tmp_path)
    assert frame["request_id"].tolist() == ["r1", "r1", "r22"]
    assert frame["record_index"].tolist() == [0, 1, 0]
    assert frame["age"].tolist() == [30, 40, 50]
    assert frame["purpose"].isna().tolist() == [False, True, False]
    assert frame["prediction"].tolist() == ["yes", "no", "yes"]
    assert frame["probability_yes"].tolist() == [0.9, 0.2, 0.9]
    assert list(frame.columns) == [
        "request_id",
        "timestamp",
        "model_tag",
        "run_version",
        "latency_ms",
        "record_index",
        "age",
        "purpose",
        "prediction",
        "probability_no",
        "probability_yes",
    ]
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert len(read_inference_log(sub / "b.jsonl")) == 1


def test_read_inference_log_reads_regression_and_older_answers(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        _log_line("r1", [{"x": 1.0}], [{"prediction": 12.5}])
        + "\n"
        + _log_line("r2", [{"x": 2.0}], [{"prediction": 1, "probability": 0.7}])
        + "\n"
    )
    frame = read_inference_log(tmp_path)
    assert frame["prediction"].tolist() == [12.5, 1]
    assert frame["probability"].isna().tolist() == [True, False]
    assert list(frame.columns)[-3:] == ["x", "prediction", "probability"]


def test_default_inference_log_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NBPROD_INFERENCE_LOG_DIR", str(tmp_path / "logs"))
    assert default_inference_log_dir() == tmp_path / "logs"
    monkeypatch.delenv("NBPROD_INFERENCE_LOG_DIR")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    assert default_inference_log_dir() == tmp_path / "bentoml" / "inference_logs"
    # Without BENTOML_HOME: the project's BentoML store, as every nbprod entry point uses.
    monkeypatch.delenv("BENTOML_HOME")
    monkeypatch.setenv("NBPROD_HOME", str(tmp_path / "home"))
    assert default_inference_log_dir() == tmp_path / "home" / "bentoml" / "inference_logs"


def test_read_inference_log_names_a_corrupt_line(tmp_path: Path) -> None:
    assert read_inference_log(tmp_path).empty
    good = _log_line("r1", [{"age": 30}], [{"prediction": 1}])
    (tmp_path / "a.jsonl").write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(InferenceLogError, match=r"a\.jsonl:2: not a logged prediction"):
        read_inference_log(tmp_path)
    (tmp_path / "a.jsonl").write_text(_log_line("r1", [{"age": 30}], []) + "\n")
    with pytest.raises(InferenceLogError, match="1 records but 0 predictions"):
        read_inference_log(tmp_path)
    (tmp_path / "a.jsonl").write_text(_log_line("r1", [{"age": 30}], [{"label": 1}]) + "\n")
    with pytest.raises(InferenceLogError, match="prediction"):
        read_inference_log(tmp_path)
    with pytest.raises(InferenceLogError, match="does not exist"):
        read_inference_log(tmp_path / "nope")


# --- the packaging script, run in a subprocess with an isolated BENTOML_HOME ---------------------


def _package(workdir: Path) -> None:
    """Package every task's model, a broken bento and a flipped model; record churn's champion."""
    import bentoml
    import joblib
    from served_models import fit, make_frame, package

    from flows.store import RunStore

    bentos = REPO / "bentos"
    packaged = {p: package(p, workdir, bentos, GOOD) for p in PIPELINES}
    (workdir / "broken").mkdir()
    broken = package("churn", workdir / "broken", bentos, BROKEN)
    Path(bentoml.models.get(broken["model_tag"]).path_of("model.joblib")).write_bytes(b"not a pkl")
    flipped = workdir / "flipped.joblib"
    joblib.dump(fit("churn", make_frame("churn"), flip=True), flipped)

    churn = packaged["churn"]
    store = RunStore(workdir / "runs")
    accepted = {"status": "accepted", "pipeline": "churn", "flow": "training_pipeline"}
    for version, record in (
        (GOOD, {**accepted, "model_tag": churn["model_tag"], "bento_tag": churn["bento_tag"]}),
        (REJECTED, {"status": "rejected", "pipeline": "churn", "flow": "training_pipeline"}),
        (
            FAILED_AFTER_BUILD,
            {**accepted, "status": "failed", "bento_tag": churn["bento_tag"]},
        ),
    ):
        store.begin(version)
        final = store.finalize(version, record)
        if version == GOOD:
            store.set_champion(
                "churn", final, expected=None, reason="test", triggered_by="test_serving"
            )
    (workdir / "result.json").write_text(
        json.dumps(
            {
                "packaged": packaged,
                "broken_bento_tag": broken["bento_tag"],
                "flipped_model_path": str(flipped),
            }
        )
    )


if __name__ == "__main__":
    _package(Path(sys.argv[1]))


def test_an_svc_with_probabilities_keeps_its_own_predict() -> None:
    """SVC(probability=True) predicts from its decision function, not from its calibrated
    probabilities: the two may disagree anywhere, so labels never come from the argmax."""
    from served_models import fit, make_frame
    from sklearn.pipeline import Pipeline
    from sklearn.svm import SVC

    frame = make_frame("churn")
    features, preprocess = frame.drop(columns=NON_FEATURES["churn"]), fit("churn", frame)[0]
    svc = SVC(probability=True, random_state=0).fit(
        preprocess.transform(features), frame["churned"]
    )
    model = Pipeline([("pre", preprocess), ("model", svc)])
    predictor, checked, record = _predictor("churn", model)
    paths = predictor.choose_paths(checked)
    assert (paths.preprocess_once, paths.labels_from_probabilities) == (True, False)
    assert _served(predictor, record, "churn", frame) == _by_batch(model, "churn", frame)
