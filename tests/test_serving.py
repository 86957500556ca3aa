"""Serving against a real `bentoml serve`: the API, bad requests, concurrency, the inference log,
`nbprod serve`/`predict` and validate_bento.

Isolation as in test_packaging: this module never imports bentoml. The ``stack`` fixture runs
this file as a script in a subprocess whose ``BENTOML_HOME`` is a temporary folder: it trains a
model like the notebook on the reference period (schema derived by ``flows.schema``), packages it
twice — one copy with its model file corrupted afterwards — and writes a run store whose champion
is the good bento. Then ONE server is started through the ``serve`` command for the whole module.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
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

from flows.errors import InferenceLogError, RunStoreError, ServingError
from flows.serving import (
    default_inference_log_dir,
    frame_to_records,
    free_port,
    post_json,
    read_inference_log,
    register_commands,
    resolve_bento,
    stop_server,
    validate_bento,
    wait_ready,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "loan_default"
GOOD, BROKEN, REJECTED = "v-good", "v-broken", "v-rejected"
SERVICE = "nbprod_classifier"
WORKERS = 2
METADATA = {
    "run_version": GOOD,
    "metrics": {"roc_auc": 0.8, "f1": 0.4},
    "lineage": {"notebooks": {"train": "abc"}, "inputs": {"data": "def"}},
}
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
    model_tag: str
    bento_tag: str
    broken_bento_tag: str
    model_path: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Package the models once, then serve the champion with the serve command for the module."""
    workdir = tmp_path_factory.mktemp("serving")
    env = {k: v for k, v in os.environ.items() if k != "NBPROD_MODEL_TAG"}
    env.update(
        BENTOML_HOME=str(workdir / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
        NBPROD_RUN_STORE_URL=str(workdir / "runs"),
        NBPROD_INFERENCE_LOG_DIR=str(workdir / "inference"),
        # Two worker processes: each must log to its own file without losing a record.
        BENTOML_CONFIG_OVERRIDES=json.dumps({"services": {SERVICE: {"workers": WORKERS}}}),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    built = subprocess.run(
        [sys.executable, __file__, str(workdir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, f"packaging script failed:\n{built.stdout}\n{built.stderr}"
    result = json.loads((workdir / "result.json").read_text())

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_log = workdir / "serve.log"
    with server_log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE_CLI, "serve", "--port", str(port)],
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
            model_tag=result["model_tag"],
            bento_tag=result["bento_tag"],
            broken_bento_tag=result["broken_bento_tag"],
            model_path=Path(result["model_path"]),
        )
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def loans() -> Any:
    import pandas as pd

    return pd.read_csv(REPO / "data" / "loans.csv")


@pytest.fixture(scope="module")
def model(stack: Stack) -> Any:
    import joblib

    return joblib.load(stack.model_path)


def _expected(model: Any, frame: Any) -> tuple[list[int], list[float]]:
    """What the joblib'd model itself says for these rows (CSV-read, as a user would pass them)."""
    features = frame.drop(columns=["application_id", "application_date", "defaulted"])
    return (
        [int(p) for p in model.predict(features)],
        [float(p) for p in model.predict_proba(features)[:, 1]],
    )


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


def test_serve_command_serves_the_champion_with_metadata_and_health(stack: Stack) -> None:
    for probe in ("/livez", "/healthz", "/readyz"):
        assert post_json(stack.base + probe, None)[0] == 200, probe
    status, meta, _ = post_json(stack.base + "/metadata", {})
    assert status == 200, meta
    assert meta["model_tag"] == stack.model_tag
    assert meta["run_version"] == GOOD
    assert meta["metrics"] == METADATA["metrics"]
    assert meta["lineage"] == METADATA["lineage"]
    # The notebook's pipeline gets the fast preprocessing path, which the prediction tests check.
    assert meta["fast_preprocessing"] is True
    # HistGradientBoosting's labels are the argmax of its probabilities: one model call per batch.
    assert meta["labels_from_proba"] is True
    # ...and its trees are walked by FastBoostedTrees, which the prediction tests check exactly.
    assert meta["fast_model"] is True
    assert set(meta["feature_schema"]["categorical"]) == {
        "employment_type",
        "home_ownership",
        "purpose",
    }


def test_predictions_equal_the_models_including_missing_and_drifted_rows(
    stack: Stack, model: Any, loans: Any
) -> None:
    # Reference-period rows, rows with missing values, and drifted rows from the last quarter.
    import pandas as pd

    missing = loans[loans["annual_income"].isna() | loans["debt_to_income"].isna()].head(40)
    drifted = loans[loans["application_date"] >= "2024-10-01"]
    frame = pd.concat([loans.head(60), missing, drifted])
    assert len(missing) == 40
    assert len(drifted) > 1_000  # several batches' worth: BentoML splits large requests
    expected_pred, expected_proba = _expected(model, frame)

    status, body, headers = post_json(stack.base + "/predict", {"records": frame_to_records(frame)})
    assert status == 200, body
    assert [r["prediction"] for r in body] == expected_pred
    # Exact: the fast preprocessing and tree walk must reproduce sklearn bit for bit.
    assert [r["probability"] for r in body] == expected_proba
    assert headers["X-Model-Tag"] == stack.model_tag
    assert len(headers["X-Request-ID"]) == 32


MALFORMED = {
    # case: (record change or raw body, where the error must point, expected status or None)
    "string_for_number": ({"age": "52"}, "records.0.age", None),
    "bool_for_number": ({"credit_score": True}, "records.0.credit_score", None),
    "fraction_for_int": ({"term_months": 36.5}, "records.0.term_months", None),
    "null_for_required": ({"credit_score": None}, "records.0.credit_score", None),
    "missing_field": ({"purpose": ...}, "records.0.purpose", None),
    "extra_field": ({"zip_code": "12345"}, "records.0.zip_code", None),
    "unknown_category": ({"home_ownership": "castle"}, "records.0.home_ownership", None),
    "out_of_range": ({"age": 500}, "records.0.age", None),
    # json.dumps writes these as the NaN / Infinity literals many JSON encoders emit.
    "nan": ({"interest_rate": float("nan")}, "records.0.interest_rate", None),
    "infinity": ({"loan_amount": float("inf")}, "records.0.loan_amount", None),
    "minus_infinity": ({"annual_income": float("-inf")}, "records.0.annual_income", None),
    "empty_list": (b'{"records": []}', "records", None),
    "records_not_a_list": (b'{"records": {"age": 52}}', "records", None),
    "record_not_an_object": (b'{"records": ["age=52"]}', "records.0", None),
    "missing_records": (b"{}", "records", None),
    "top_level_array": (b"[]", "body", None),
    "invalid_json": (b'{"records": [{"age": 52,', "body", None),
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
def test_malformed_request_gets_4xx_naming_the_field(stack: Stack, loans: Any, name: str) -> None:
    change, where, status_wanted = MALFORMED[name]
    good = frame_to_records(loans.head(1))[0]
    data, content_type = _malformed_body(change, good)
    status, body = _raw_post(stack.base + "/predict", data, content_type)
    assert 400 <= status < 500, body
    if status_wanted:
        assert status == status_wanted, body
    assert f"{where}:" in body["error"], body
    locs = [".".join(str(part) for part in err["loc"]) for err in body["detail"]]
    assert where in locs, body


def test_good_and_bad_requests_mixed_under_concurrency_all_answered(
    stack: Stack, model: Any, loans: Any
) -> None:
    frame = loans.iloc[:240]
    expected_pred, expected_proba = _expected(model, frame)
    good = frame_to_records(frame)
    bad_bodies = [
        b'{"records": [{"age": 52,',
        json.dumps({"records": [{**good[0], "purpose": "vacation"}]}).encode(),
        json.dumps({"records": []}).encode(),
        json.dumps({"records": [{**good[1], "age": "old"}]}).encode(),
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
        assert [r["prediction"] for r in body] == expected_pred[start : start + size]
        assert [r["probability"] for r in body] == pytest.approx(
            expected_proba[start : start + size], abs=1e-9
        )
    assert post_json(stack.base + "/readyz", None)[0] == 200


def test_inference_log_has_every_record_under_concurrency(stack: Stack, loans: Any) -> None:
    rows_per_request, n_requests = 3, 48
    records = frame_to_records(loans.iloc[: rows_per_request * n_requests])
    chunks = [records[i * rows_per_request : (i + 1) * rows_per_request] for i in range(n_requests)]

    def send(chunk: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
        status, body, headers = post_json(stack.base + "/predict", {"records": chunk}, timeout=60)
        assert status == 200, body
        return headers["X-Request-ID"], body

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(send, chunks, timeout=REQUESTS_DEADLINE_S))

    # The service logs a prediction before answering it, so no waiting is needed here.
    logged = read_inference_log(stack.log_dir)
    ids = {request_id for request_id, _ in answers}
    assert len(ids) == n_requests
    mine = logged[logged["request_id"].isin(ids)]
    assert len(mine) == n_requests * rows_per_request
    assert set(mine["request_id"]) == ids
    assert (mine["model_tag"] == stack.model_tag).all()
    assert (mine["run_version"] == GOOD).all()
    assert str(mine["timestamp"].dt.tz) == "UTC"
    for (request_id, outputs), chunk in zip(answers, chunks, strict=True):
        rows = mine[mine["request_id"] == request_id].sort_values("record_index")
        assert rows["record_index"].tolist() == list(range(rows_per_request))
        assert rows["purpose"].tolist() == [r["purpose"] for r in chunk]
        assert rows["credit_score"].tolist() == [r["credit_score"] for r in chunk]
        assert rows["prediction"].tolist() == [o["prediction"] for o in outputs]
        assert rows["probability"].tolist() == [o["probability"] for o in outputs]
    # One file per worker process that served a prediction.
    assert 1 <= len(list(stack.log_dir.glob("*.jsonl"))) <= WORKERS


# --- the command line ----------------------------------------------------------------------------


def test_serve_refuses_versions_without_a_bento(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NBPROD_RUN_STORE_URL", stack.store_url)
    assert resolve_bento(None) == (stack.bento_tag, GOOD)
    assert resolve_bento(GOOD) == (stack.bento_tag, GOOD)
    with pytest.raises(ServingError, match="v-rejected is rejected, not accepted"):
        _cli(["serve", REJECTED])
    with pytest.raises(RunStoreError, match="not found"):
        _cli(["serve", "v-unknown"])
    monkeypatch.setenv("NBPROD_RUN_STORE_URL", str(tmp_path / "empty"))
    with pytest.raises(ServingError, match="no champion"):
        _cli(["serve", "--port", "3999"])


def test_predict_command_writes_or_prints_predictions(
    stack: Stack, model: Any, loans: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    frame = loans.iloc[100:130]
    csv = tmp_path / "rows.csv"
    frame.to_csv(csv, index=False)
    expected_pred, expected_proba = _expected(model, frame)

    out = tmp_path / "scored.csv"
    assert _cli(["predict", str(csv), "--url", stack.base, "--output", str(out)]) == 0
    assert f"wrote 30 predictions to {out}" in capsys.readouterr().out
    scored = pd.read_csv(out)
    assert list(scored.columns) == [*frame.columns, "prediction", "probability"]
    assert scored["prediction"].tolist() == expected_pred
    assert scored["probability"].tolist() == pytest.approx(expected_proba, abs=1e-9)

    assert _cli(["predict", str(csv), "--url", stack.base]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(printed.columns) == ["application_id", "prediction", "probability"]
    assert printed["application_id"].tolist() == frame["application_id"].tolist()
    assert printed["prediction"].tolist() == expected_pred


def test_predict_command_errors_are_one_clear_line(
    stack: Stack, loans: Any, tmp_path: Path
) -> None:
    bad = loans.iloc[:5].copy()
    bad.loc[bad.index[2], "purpose"] = "vacation"
    csv = tmp_path / "bad.csv"
    bad.to_csv(csv, index=False)
    with pytest.raises(ServingError, match=r"refused the request \(400\): row 3, column purpose"):
        _cli(["predict", str(csv), "--url", stack.base])
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServingError, match="cannot reach the service") as refused:
        _cli(["predict", str(csv), "--url", closed])
    assert "\n" not in str(refused.value)
    with pytest.raises(ServingError, match="does not exist"):
        _cli(["predict", str(tmp_path / "missing.csv")])


def _run_service_probe(stack: Stack, probe: str) -> dict[str, Any]:
    """Run a probe script that loads bentos/service.py in its own process; return its JSON."""
    env = {**stack.env, "NBPROD_MODEL_TAG": stack.model_tag}
    out = subprocess.run(
        [sys.executable, "-c", probe, str(REPO / "bentos" / "service.py")],
        capture_output=True, text=True, timeout=120, env=env, cwd=stack.workdir, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# Runs BentoML's TimeoutMiddleware around tiny ASGI apps, before and after the service's fix.
TIMER_PROBE = """
import asyncio, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("service", sys.argv[1])
service = importlib.util.module_from_spec(spec)
spec.loader.exec_module(service)
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
result["patched"] = service.cancel_request_timers()
result["after"] = asyncio.run(serve(answer, 30, 50))
result["timeout"] = asyncio.run(serve(hang, 0.2, 1))
print(json.dumps(result))
"""


def test_request_timers_are_cancelled_and_timeouts_still_answer_504(stack: Stack) -> None:
    # BentoML 1.4 leaves every request's 30 s timer (and the request's context) alive: under load
    # that made the garbage collector pause for 200-300 ms (the P5 tail). The service fixes it.
    result = _run_service_probe(stack, TIMER_PROBE)
    assert result["before"]["live_timers"] == 50  # the upstream behaviour this guards against
    assert result["patched"] is True
    assert result["after"] == {"live_timers": 0, "statuses": [200] * 50, "bodies": ["ok"] * 50}
    assert result["timeout"]["statuses"] == [504]
    assert "0.2 seconds" in result["timeout"]["bodies"][0]
    assert result["timeout"]["live_timers"] == 0
    status, meta, _ = post_json(stack.base + "/metadata", {})
    assert status == 200 and meta["request_timers_cancelled"] is True


# Spans a request (and a child inside it) under BentoML's sampler class, before and after the
# service module is loaded (loading it applies drop_unsampled_spans), at sampling rates 0 and 1
# and under a remote parent that was sampled: what is recorded, and which ids the request keeps.
SAMPLER_PROBE = """
import importlib.util, json, sys
from bentoml._internal.utils import telemetry
from opentelemetry import context, propagate
from opentelemetry.sdk.trace import TracerProvider

def request(rate, traceparent=None):
    tracer = TracerProvider(sampler=telemetry.ParentBasedTraceIdRatio(rate)).get_tracer("probe")
    parent = propagate.extract({"traceparent": traceparent} if traceparent else {})
    token = context.attach(parent)
    try:
        with tracer.start_as_current_span("request") as span:
            with tracer.start_as_current_span("child") as child:
                recording = [span.is_recording(), child.is_recording()]  # False once ended
    finally:
        context.detach(token)
    ids = span.get_span_context()
    return {"recording": recording[0], "child_recording": recording[1],
            "sampled": ids.trace_flags.sampled, "ids_valid": ids.is_valid,
            "trace_id": format(ids.trace_id, "032x")}

TRACEPARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
result = {"before": request(0)}
spec = importlib.util.spec_from_file_location("service", sys.argv[1])
service = importlib.util.module_from_spec(spec)
spec.loader.exec_module(service)
result["applied"] = service.TRACING_DROPS_UNSAMPLED
result["again"] = service.drop_unsampled_spans()
result["after"] = request(0)
result["all"] = request(1.0)
result["remote_sampled"] = request(0, TRACEPARENT)
result["provider_sampler"] = service.trace_sampler_name()
print(json.dumps(result))
"""
OTEL_SAMPLER = "opentelemetry.sdk.trace.sampling.ParentBasedTraceIdRatio"


def _wait_for_log(path: Path, text: str, timeout_s: float = 30.0) -> str:
    """The server's log once it holds text: a worker logs a request after answering it."""
    deadline = time.monotonic() + timeout_s
    while text not in (log := path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} not logged in {timeout_s} s:\n{log[-3000:]}"
        time.sleep(0.05)
    return log


def test_unsampled_requests_are_not_recorded_and_keep_their_trace_ids(stack: Stack) -> None:
    # BentoML 1.4 records every span it does not sample: a fifth of a request's server CPU at
    # sample_rate 0 (benchmarks/RESULTS.md, P5). The service drops them; ids and sampling stay.
    result = _run_service_probe(stack, SAMPLER_PROBE)
    # The upstream behaviour this guards against: unsampled, yet recorded with its child.
    assert result["before"] == {**result["before"], "recording": True, "child_recording": True}
    assert result["before"]["sampled"] is False
    assert result["applied"] is True and result["again"] is True
    after = result["after"]
    assert after == {**after, "recording": False, "child_recording": False, "sampled": False}
    assert after["ids_valid"] is True and after["trace_id"] != "0" * 32
    assert result["all"] == {**result["all"], "recording": True, "child_recording": True}
    assert result["all"]["sampled"] is True
    remote = result["remote_sampled"]
    assert remote == {**remote, "recording": True, "sampled": True, "trace_id": "ab" * 16}
    assert result["provider_sampler"] == OTEL_SAMPLER

    # The real server's tracer uses it, and its access log still names each request's trace.
    status, meta, headers = post_json(stack.base + "/metadata", {})
    assert status == 200 and meta["trace_sampler"] == OTEL_SAMPLER
    # BentoML's request id header (the span's id) survives the span not being recorded.
    assert re.fullmatch("[0-9a-f]{16}", headers.get("X-BentoML-Request-ID", "")), dict(headers)
    trace_id = "12" * 16
    request = urllib.request.Request(
        stack.base + "/metadata",
        data=b"{}",
        headers={"content-type": "application/json", "traceparent": f"00-{trace_id}-{'34' * 8}-01"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        span_id = response.headers["X-BentoML-Request-ID"]
    log = _wait_for_log(stack.workdir / "serve.log", f"trace={trace_id},")
    assert f"trace={trace_id},span={span_id},sampled=1," in log
    # Every /metadata request so far (this test's first one at least) is logged with its ids.
    requests = [line for line in log.splitlines() if "path=/metadata" in line]
    ids = re.compile(r"\(trace=(?!0{32})[0-9a-f]{32},span=[0-9a-f]{16},sampled=[01],")
    assert len(requests) >= 2 and all(ids.search(line) for line in requests), requests


# A tiny BentoML service's API method read from an instance, before and after bind_api_methods.
BIND_PROBE = """
import importlib.util, json, sys
import bentoml
from pydantic import Field
spec = importlib.util.spec_from_file_location("service", sys.argv[1])
service = importlib.util.module_from_spec(spec)
spec.loader.exec_module(service)

@bentoml.service
class Echo:
    @bentoml.api
    def echo(self, text: str = Field(default="hi"), times: int = 1) -> str:
        return text * times

echo = Echo.inner()
result = {"before_same": echo.echo is echo.echo}
service.bind_api_methods(echo, tuple(Echo.apis))
result["after_same"] = echo.echo is echo.echo
result["local"] = [echo.echo.local(), echo.echo.local("ab", times=2), echo.echo.local(times=3)]
result["signature"] = str(__import__("inspect").signature(echo.echo.local))
print(json.dumps(result))
"""


def test_api_methods_are_bound_once_and_keep_their_defaults(stack: Stack) -> None:
    # BentoML 1.4 rebuilds an API's wrapper (inspect.signature) on every access, twice per
    # request; the service binds it once. Field defaults must still be filled in.
    result = _run_service_probe(stack, BIND_PROBE)
    assert result["before_same"] is False  # the upstream behaviour this guards against
    assert result["after_same"] is True
    assert result["local"] == ["hi", "abab", "hihihi"]
    assert result["signature"].startswith("(text: str = ")
    assert "times: int = 1" in result["signature"] and "self" not in result["signature"]


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


# --- validate_bento ------------------------------------------------------------------------------


def test_validate_bento_passes_for_a_good_bento(
    stack: Stack, model: Any, loans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    monkeypatch.setenv("BENTOML_HOME", stack.env["BENTOML_HOME"])
    sample = loans.iloc[:50]
    pred, proba = _expected(model, sample)
    expected = pd.DataFrame({"prediction": pred, "probability": proba})
    logged_before = len(read_inference_log(stack.log_dir))
    result = validate_bento(stack.bento_tag, sample, expected, model_tag=stack.model_tag)
    assert result["passed"] is True, result
    assert result["reason"] is None
    names = [c["name"] for c in result["checks"]]
    assert names == [
        "startup",
        "health",
        "metadata",
        "predict",
        "predictions_match",
        "rejects_bad_request",
        "inference_log",
    ]
    assert all(c["passed"] for c in result["checks"])
    assert result["startup_s"] > 0
    json.dumps(result)  # a JSON-able record for the run store
    # Validation traffic goes to a temporary log, not to the monitored one.
    assert len(read_inference_log(stack.log_dir)) == logged_before


def test_validate_bento_fails_when_predictions_differ(
    stack: Stack, model: Any, loans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    monkeypatch.setenv("BENTOML_HOME", stack.env["BENTOML_HOME"])
    sample = loans.iloc[:20]
    pred, proba = _expected(model, sample)
    pred[3] = 1 - pred[3]
    expected = pd.DataFrame({"prediction": pred, "probability": proba})
    result = validate_bento(stack.bento_tag, sample, expected)
    assert result["passed"] is False
    assert result["reason"].startswith("predictions_match: 1 of 20 rows differ: row 3")
    json.dumps(result)


def test_validate_bento_fails_when_the_model_cannot_load(
    stack: Stack, loans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    monkeypatch.setenv("BENTOML_HOME", stack.env["BENTOML_HOME"])
    sample = loans.iloc[:5]
    expected = pd.DataFrame({"prediction": [0] * 5, "probability": [0.5] * 5})
    result = validate_bento(stack.broken_bento_tag, sample, expected, timeout_s=100)
    assert result["passed"] is False
    assert result["reason"].startswith("startup: the service failed to start")
    assert "cannot load model.joblib" in result["reason"]
    assert [c["name"] for c in result["checks"]] == ["startup"]

    missing = validate_bento("nbprod_classifier:does-not-exist", sample, expected, timeout_s=100)
    assert missing["passed"] is False
    assert missing["reason"].startswith("startup: bentoml serve exited"), missing


def test_validate_bento_refuses_mismatched_inputs(loans: Any) -> None:
    import pandas as pd

    with pytest.raises(ValueError, match="same non-zero length"):
        validate_bento(
            "x:y", loans.iloc[:3], pd.DataFrame({"prediction": [0], "probability": [0.1]})
        )
    with pytest.raises(ValueError, match="probability"):
        validate_bento("x:y", loans.iloc[:1], pd.DataFrame({"prediction": [0]}))


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
    out = [{"prediction": 1, "probability": 0.9}, {"prediction": 0, "probability": 0.1}]
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
    assert frame["prediction"].tolist() == [1, 0, 1]
    assert list(frame.columns)[:6] == [
        "request_id",
        "timestamp",
        "model_tag",
        "run_version",
        "latency_ms",
        "record_index",
    ]
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert len(read_inference_log(sub / "b.jsonl")) == 1


def test_default_inference_log_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NBPROD_INFERENCE_LOG_DIR", str(tmp_path / "logs"))
    assert default_inference_log_dir() == tmp_path / "logs"
    monkeypatch.delenv("NBPROD_INFERENCE_LOG_DIR")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    assert default_inference_log_dir() == tmp_path / "bentoml" / "inference_logs"


def test_read_inference_log_names_a_corrupt_line(tmp_path: Path) -> None:
    assert read_inference_log(tmp_path).empty
    good = _log_line("r1", [{"age": 30}], [{"prediction": 1, "probability": 0.9}])
    (tmp_path / "a.jsonl").write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(InferenceLogError, match=r"a\.jsonl:2: not a logged prediction"):
        read_inference_log(tmp_path)
    (tmp_path / "a.jsonl").write_text(_log_line("r1", [{"age": 30}], []) + "\n")
    with pytest.raises(InferenceLogError, match="1 records but 0 predictions"):
        read_inference_log(tmp_path)
    with pytest.raises(InferenceLogError, match="does not exist"):
        read_inference_log(tmp_path / "nope")


# --- the packaging script, run in a subprocess with an isolated BENTOML_HOME ---------------------


def _fit_like_the_notebook(train: Any, numerical: list[str], categorical: list[str]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    preprocess = ColumnTransformer(
        [
            ("numerical", SimpleImputer(strategy="median"), numerical),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            ),
        ],
        remainder="drop",
    )
    model = Pipeline(
        [
            ("preprocess", preprocess),
            (
                "classifier",
                HistGradientBoostingClassifier(
                    max_iter=40, max_depth=4, early_stopping=False, random_state=0
                ),
            ),
        ]
    )
    return model.fit(train[numerical + categorical], train["defaulted"])


def _package(workdir: Path) -> None:
    """Train, save twice, build a good and a broken bento, and record a champion."""
    import bentoml
    import joblib
    import pandas as pd

    from flows.packaging import build_bento, save_model
    from flows.schema import derive_schema, read_table
    from flows.store import RunStore

    reference = read_table(
        REPO / "data" / "reference.csv", dataset="reference", datetime_column="application_date"
    )
    schema = derive_schema(reference, target="defaulted", datetime_column="application_date")
    train = pd.read_csv(REPO / "data" / "reference.csv").sample(4_000, random_state=0)
    model = _fit_like_the_notebook(train, schema.numerical, schema.categorical)
    model_path = workdir / "model.joblib"
    joblib.dump(model, model_path)

    labels = {"run_version": GOOD}
    model_tag = save_model(
        model_path,
        name=MODEL_NAME,
        labels=labels,
        metadata=METADATA,
        feature_schema=schema.feature_schema(),
    )
    bento_tag = build_bento(model_tag, bentos_dir=REPO / "bentos", version=GOOD, labels=labels)
    broken_tag = save_model(
        model_path,
        name=MODEL_NAME,
        labels={},
        metadata={"run_version": BROKEN},
        feature_schema=schema.feature_schema(),
    )
    broken_bento = build_bento(broken_tag, bentos_dir=REPO / "bentos", version=BROKEN)
    Path(bentoml.models.get(broken_tag).path_of("model.joblib")).write_bytes(b"not a pickle")

    store = RunStore(workdir / "runs")
    for version, record in (
        (GOOD, {"status": "accepted", "model_tag": model_tag, "bento_tag": bento_tag}),
        (REJECTED, {"status": "rejected"}),
    ):
        store.begin(version)
        store.finalize(version, record)
    store.set_champion(
        {"version": GOOD, "model_tag": model_tag, "bento_tag": bento_tag, "metrics": {}},
        expected=None,
        reason="test",
        triggered_by="test_serving",
    )
    (workdir / "result.json").write_text(
        json.dumps(
            {
                "model_tag": model_tag,
                "bento_tag": bento_tag,
                "broken_bento_tag": broken_bento,
                "model_path": str(model_path),
            }
        )
    )


if __name__ == "__main__":
    _package(Path(sys.argv[1]))
