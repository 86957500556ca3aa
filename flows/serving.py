"""Serving: `nbprod serve` and `nbprod predict`, and the infra check of a built bento.

``register_commands`` is what ``flows.cli`` imports, so everything at module level here is
standard library: ``nbprod --help`` must not pay for pandas or BentoML.

The service itself lives in ``bentos/`` (it cannot import this package). Its contract:

- ``POST /predict`` with ``{"records": [{feature: value, ...}, ...]}`` returns one answer per
  record in input order: classification ``{"prediction": <label>, "probabilities": {<label>:
  p}}`` (``probabilities`` when the model has ``predict_proba``), regression ``{"prediction":
  <number>}``; headers ``X-Request-ID`` and ``X-Model-Tag``; a bad request gets a 4xx whose
  ``error`` names the field.
- ``POST /metadata`` with ``{}`` returns the model tag, pipeline, task, classes, run version,
  id/time/target columns, metrics, lineage, the feature schema and the ``runtime`` that answers
  (``{"name": "onnxruntime" | "sklearn", "reason": ...}``).

Running a bento and finding the BentoML store (``$BENTOML_HOME``, else the project's
``.nbprod/bentoml``) is ``flows.bento_server``; reading the inference log back is
``flows.inference_log``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.bento_server import HOST, running_bento, serve_command, use_bentoml_home
from flows.bento_server import free_port as free_port  # re-exported: localstack, the demo, tests
from flows.bento_server import stop_server as stop_server  # re-exported, as free_port
from flows.errors import InferenceLogError, ServingError
from flows.faults import checkpoint
from flows.inference_log import (
    PREDICTION_COLUMN,
    PROBABILITY_PREFIX,
    answers_to_columns,
    read_inference_log,
)
from flows.options import add_pipeline_option, add_store_option, open_store, resolve_pipeline

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_PORT = 3000
DEFAULT_URL = f"http://{HOST}:{DEFAULT_PORT}"
# Records per /predict request from the CLI and the infra check: well under the service's limits.
CHUNK_RECORDS = 1_000
HTTP_TIMEOUT_S = 60.0
# Served probabilities and regression predictions may differ from the model's by this much
# (regression: relative above 1): the service rebuilds the rows from JSON. ONNX Runtime sums tree
# scores in float32: packaging keeps a conversion only within ONNX_TOLERANCE (fast_runtime.py).
PROBABILITY_TOLERANCE = 1e-9
ONNX_TOLERANCE = 1e-5
PROBE_FIELD = "__nbprod_probe__"


# --- command line --------------------------------------------------------------------------------


def register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``predict`` to the ``nbprod`` parser (standard library only)."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a pipeline's champion (or an accepted VERSION) with `bentoml serve` on "
        "127.0.0.1",
    )
    serve.add_argument(
        "version",
        nargs="?",
        default=None,
        help="an accepted run version (default: the pipeline's champion)",
    )
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    add_pipeline_option(serve)
    add_store_option(serve)
    serve.set_defaults(func=cmd_serve)

    predict = subparsers.add_parser(
        "predict", help="send a CSV's rows to a running service; print or write the predictions"
    )
    predict.add_argument(
        "file",
        metavar="FILE.csv",
        help="rows to score (the pipeline's id, time and target columns are not sent)",
    )
    predict.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    predict.add_argument(
        "--output",
        default=None,
        metavar="OUT.csv",
        help="write the id columns, prediction and probability_<label> columns here "
        "instead of printing them",
    )
    add_pipeline_option(predict)
    predict.set_defaults(func=cmd_predict)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return port


def resolve_bento(
    pipeline: str, version: str | None = None, store_url: str | None = None
) -> tuple[str, str]:
    """(bento tag, run version) to serve: the pipeline's champion's, or an accepted version's."""
    store = open_store(store_url)
    if version is None:
        champion = store.champion(pipeline)
        if champion is None:
            raise ServingError(
                f"pipeline {pipeline!r} has no champion to serve in {store.url}: its first "
                "accepted `nbprod run` becomes the champion (or pass --pipeline, or an accepted "
                "VERSION)"
            )
        if not champion.get("bento_tag"):
            raise ServingError(
                f"champion {champion.get('version')} of pipeline {pipeline!r} in {store.url} has "
                "no bento_tag: roll the champion back to an accepted run"
            )
        return str(champion["bento_tag"]), str(champion["version"])
    record = store.get_run(version)  # RunStoreError names recent versions when it is unknown
    if record.get("status") != "accepted" or not record.get("bento_tag"):
        raise ServingError(
            f"run {version} is {record.get('status', 'unknown')}, not accepted: only accepted runs "
            "have a bento. Serve the champion (`nbprod serve --pipeline NAME`) or an accepted "
            "version (see `nbprod runs`)"
        )
    return str(record["bento_tag"]), version


def cmd_serve(args: argparse.Namespace) -> int:
    """Replace this process with ``bentoml serve``: signals (Ctrl-C, SIGTERM) reach it directly."""
    pipeline = resolve_pipeline(args)
    bento_tag, version = resolve_bento(pipeline, args.version, args.store)
    home = use_bentoml_home()
    _require_local_bento(bento_tag, home)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    print(
        f"serving {bento_tag} (pipeline {pipeline}, run {version}) on http://{HOST}:{args.port}: "
        "POST /predict, POST /metadata, GET /readyz; Ctrl-C stops",
        flush=True,
    )
    command = serve_command(bento_tag, args.port)
    os.execv(command[0], command)
    return 0  # pragma: no cover - execv does not return


def _require_local_bento(bento_tag: str, home: Path) -> None:
    """Fail in one line, not in a BentoML traceback, when the bento is not in this store."""
    import bentoml

    try:
        bentoml.bentos.get(bento_tag)
    except bentoml.exceptions.NotFound as exc:
        raise ServingError(
            f"bento {bento_tag} is not in the BentoML store at {home}: serve with the "
            "BENTOML_HOME the pipeline used (nbprod's default is .nbprod/bentoml)"
        ) from exc


def cmd_predict(args: argparse.Namespace) -> int:
    """Score a CSV through a running service; print or write ids, predictions, probabilities."""
    import pandas as pd

    pipeline = resolve_pipeline(args)
    path = Path(args.file)
    if not path.is_file():
        raise ServingError(f"{path} does not exist: pass a CSV file of rows to score")
    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ServingError(f"cannot read {path} as CSV: {exc}") from exc
    if frame.empty:
        raise ServingError(f"{path} has no rows to score")
    served = service_metadata(args.url)
    if served.get("pipeline") not in (None, pipeline):
        raise ServingError(
            f"the service at {args.url} serves pipeline {served['pipeline']!r}, not {pipeline!r}: "
            f"pass --pipeline {served['pipeline']}, or the --url of {pipeline!r}'s service"
        )
    ids, dropped = pipeline_columns(pipeline, served)
    scored, model_tag = predict_frame(frame, args.url, drop=dropped)
    result = pd.concat([frame[[c for c in ids if c in frame.columns]], scored], axis=1)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(out, index=False)
        print(f"wrote {len(scored)} predictions to {out} (model {model_tag})")
    else:
        sys.stdout.write(result.to_csv(index=False))
    return 0


def pipeline_columns(pipeline: str, served: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(id columns, columns never sent) of a pipeline: ids, time and target.

    From the spec ``deployments/<pipeline>.yaml`` when it exists, else from the served model's
    metadata (which the training flow copies from the spec).
    """
    from flows.spec import load_spec, spec_path

    file = spec_path(pipeline)
    if file.is_file():
        spec = load_spec(file)
        return list(spec.id_columns), list(spec.non_feature_columns)
    ids = [str(c) for c in served.get("id_columns") or []]
    others = [served.get("time_column"), served.get("target")]
    return ids, [*ids, *(str(c) for c in others if c)]


# --- talking to a service ------------------------------------------------------------------------


def frame_to_records(frame: pd.DataFrame, drop: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """JSON-ready records of a frame without the ``drop`` columns; missing values as null."""
    features = frame.drop(columns=[c for c in drop if c in frame.columns])
    as_objects = features.astype(object)
    return as_objects.where(features.notna(), None).to_dict(orient="records")


def post_json(url: str, payload: Any, timeout: float = HTTP_TIMEOUT_S) -> tuple[int, Any, Any]:
    """POST JSON (GET when payload is None); return (status, decoded body, headers), 4xx/5xx too.

    Connection failures raise OSError.
    """
    import httpx

    try:
        if payload is None:
            response = httpx.get(url, timeout=timeout)
        else:
            response = httpx.post(url, json=payload, timeout=timeout)
    except httpx.TransportError as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from exc
    status, raw, headers = response.status_code, response.content, response.headers
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = raw.decode(errors="replace")
    return status, body, headers


def _unreachable(base: str, exc: OSError) -> ServingError:
    reason = getattr(exc, "reason", exc)
    return ServingError(
        f"cannot reach the service at {base} ({reason}): start it with `nbprod serve`"
    )


def service_metadata(url: str) -> dict[str, Any]:
    """The running service's /metadata answer; ServingError in one line when it has none."""
    base = url.rstrip("/")
    try:
        status, body, _ = post_json(f"{base}/metadata", {}, timeout=30)
    except OSError as exc:
        raise _unreachable(base, exc) from exc
    if status != 200 or not isinstance(body, dict):
        raise ServingError(
            f"the service at {base} answered /metadata with {status}: {_error_text(body)}; "
            "is it an nbprod bento?"
        )
    return body


def predict_records(
    url: str, records: list[dict[str, Any]], *, chunk: int = CHUNK_RECORDS
) -> tuple[list[dict[str, Any]], list[str], str | None]:
    """Send records in chunks to ``{url}/predict``; return (answers, request ids, model tag).

    Raises ServingError with one clear line: unreachable service, a refused row (named by its
    1-based position and field), or a server error.
    """
    base = url.rstrip("/")
    results: list[dict[str, Any]] = []
    request_ids: list[str] = []
    model_tag = None
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        try:
            status, body, headers = post_json(f"{base}/predict", {"records": part})
        except OSError as exc:
            raise _unreachable(base, exc) from exc
        if 400 <= status < 500:
            raise ServingError(
                f"the service at {base} refused the request ({status}): "
                f"{_describe_refusal(body, offset=start)}"
            )
        if status != 200 or not isinstance(body, list) or len(body) != len(part):
            raise ServingError(
                f"the service at {base} failed ({status}): {_error_text(body)}; see the server log"
            )
        results.extend(body)
        request_ids.append(headers.get("X-Request-ID", ""))
        model_tag = headers.get("X-Model-Tag", model_tag)
    return results, request_ids, model_tag


def predict_frame(
    frame: pd.DataFrame, url: str, *, drop: list[str] | tuple[str, ...] = ()
) -> tuple[pd.DataFrame, str | None]:
    """Answers for a frame's rows (``drop`` columns not sent), in row order, and the model tag.

    Columns: ``prediction``, and ``probability_<label>`` per class when the service sends them.
    """
    import pandas as pd

    results, _, model_tag = predict_records(url, frame_to_records(frame, drop))
    rows = [answers_to_columns(answer) for answer in results]
    return pd.DataFrame(rows, index=frame.index), model_tag


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return str(body)[:300]


def _describe_refusal(body: Any, *, offset: int) -> str:
    """The service's first complaint, with ``records.<i>`` turned into the 1-based input row."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, list) or not detail or not isinstance(detail[0], dict):
        return _error_text(body)
    first = detail[0]
    loc = list(first.get("loc") or [])
    if len(loc) >= 2 and loc[0] == "records" and isinstance(loc[1], int):
        where = f"row {offset + loc[1] + 1}" + (f", column {loc[2]}" if len(loc) > 2 else "")
    else:
        where = ".".join(str(p) for p in loc) or "body"
    more = f" (and {len(detail) - 1} more problems)" if len(detail) > 1 else ""
    return f"{where}: {first.get('msg')}{more}"


# --- infra check ---------------------------------------------------------------------------------


def check_served_answers(
    bento_tag: str,
    model_tag: str,
    model_path: Path,
    sample: pd.DataFrame,
    task: str,
    *,
    timeout_s: float = 120,
) -> dict[str, Any]:
    """Serve the built bento for real and check it answers like the model file itself.

    ``bentoml serve <bento_tag>`` runs on a free 127.0.0.1 port (its inference log in a
    temporary folder, so checks never reach the monitored log). The model at ``model_path``
    answers ``sample``'s feature columns (those of the served feature schema; other columns are
    ignored) with ``predict``, plus ``predict_proba`` for a classifier that has it. The bento
    must: pass its health probes; name ``model_tag``, ``task`` and the model's classes in
    /metadata; answer the same rows with the same labels (exactly) and probabilities (within
    1e-9), or the same numbers (regression, within 1e-9 relative); 1e-5 when /metadata says
    ONNX Runtime serves; refuse an unknown field with a 4xx; log every answer. Returns
    ``{"passed", "reason", "checks", "bento_tag", "model_tag", "task", "rows", "startup_s",
    "runtime"}`` (``runtime``: which runtime serves and why, from /metadata; None if it never
    answered): a failing bento is a result, not an exception. Caller
    mistakes (no rows, an unknown task, a model file that does not load, feature columns missing
    from the sample) raise ValueError.
    """
    import tempfile

    import joblib

    if task not in ("classification", "regression"):
        raise ValueError(f"task {task!r} is not 'classification' or 'regression'")
    if len(sample) == 0:
        raise ValueError("the infra check needs at least one sample row")
    try:
        model = joblib.load(model_path)
    except Exception as exc:  # any unpickling failure: the caller passed an unusable file
        raise ValueError(f"{model_path} does not load with joblib: {exc}") from exc
    checks: list[dict[str, Any]] = []
    startup_s = 0.0
    served: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nbprod-infra-check-") as tmp:
        log_dir = Path(tmp) / "inference"
        try:
            with running_bento(
                bento_tag, log_dir=log_dir, workdir=Path(tmp), timeout_s=timeout_s
            ) as (base, startup_s):
                checks.append(_check("startup", True, f"ready in {startup_s:.1f} s"))
                checkpoint("infra-check-serving")
                checks += _serving_checks(base, model, sample, model_tag, task, log_dir, served)
        except ServingError as exc:  # never became ready
            checks.append(_check("startup", False, str(exc)))
        except OSError as exc:  # cannot spawn, or the connection broke mid-check
            checks.append(_check("server", False, f"{type(exc).__name__}: {exc}"))
    failed = [c for c in checks if not c["passed"]]
    return {
        "bento_tag": bento_tag,
        "model_tag": model_tag,
        "task": task,
        "rows": len(sample),
        "passed": not failed,
        "checks": checks,
        "reason": f"{failed[0]['name']}: {failed[0]['detail']}" if failed else None,
        "startup_s": round(startup_s, 3),
        "runtime": served.get("runtime"),
    }


def expected_answers(
    model: Any, sample: pd.DataFrame, feature_schema: dict[str, Any], task: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records to send, the model's own answers shaped like the service's) for the sample."""
    import numpy as np

    features = [*feature_schema.get("numerical", {}), *feature_schema.get("categorical", {})]
    missing = [c for c in features if c not in sample.columns]
    if missing:
        raise ValueError(f"the sample lacks the feature column(s) {missing}")
    fitted = getattr(model, "feature_names_in_", None)
    rows = sample[[str(c) for c in fitted] if fitted is not None else features]
    labels = np.asarray(model.predict(rows)).reshape(len(rows), -1)[:, 0].tolist()
    expected: list[dict[str, Any]] = [{"prediction": _native(label)} for label in labels]
    if task == "classification" and callable(getattr(model, "predict_proba", None)):
        keys = [str(_native(c)) for c in model.classes_]
        for answer, row in zip(expected, model.predict_proba(rows).tolist(), strict=True):
            answer["probabilities"] = dict(zip(keys, row, strict=True))
    return frame_to_records(rows), expected


def _native(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) and type(value).__module__ == "numpy" else value


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _serving_checks(
    base: str,
    model: Any,
    sample: pd.DataFrame,
    model_tag: str,
    task: str,
    log_dir: Path,
    served_metadata: dict[str, Any],
) -> list[dict[str, Any]]:
    checks = []
    statuses = {
        probe: post_json(base + probe, None, timeout=10)[0] for probe in ("/livez", "/healthz")
    }
    checks.append(
        _check("health", all(s == 200 for s in statuses.values()), f"status codes {statuses}")
    )
    status, meta, _ = post_json(base + "/metadata", {})
    if status != 200 or not isinstance(meta, dict) or "feature_schema" not in meta:
        checks.append(_check("metadata", False, f"status {status}: {str(meta)[:200]}"))
        return checks
    served_metadata.update(meta)
    records, expected = expected_answers(model, sample, meta["feature_schema"], task)
    checks.append(_metadata_check(meta, model_tag, task, expected))
    try:
        served, request_ids, _ = predict_records(base, records)
    except ServingError as exc:
        checks.append(_check("predict", False, str(exc)))
        return checks
    checks.append(_check("predict", True, f"{len(served)} answers"))
    runtime = (meta.get("runtime") or {}).get("name")
    tolerance = ONNX_TOLERANCE if runtime == "onnxruntime" else PROBABILITY_TOLERANCE
    checks.append(compare_answers(served, expected, task, tolerance=tolerance))

    bad = [{**records[0], PROBE_FIELD: 1}]
    status, body, _ = post_json(base + "/predict", {"records": bad})
    ok = 400 <= status < 500 and PROBE_FIELD in json.dumps(body)
    checks.append(
        _check("rejects_bad_request", ok, f"unknown field answered {status}: {_error_text(body)}")
    )
    checks.append(_log_check(log_dir, request_ids, expected))
    return checks


def _metadata_check(
    meta: dict[str, Any], model_tag: str, task: str, expected: list[dict[str, Any]]
) -> dict[str, Any]:
    problems = []
    if meta.get("model_tag") != model_tag:
        problems.append(f"model_tag {meta.get('model_tag')!r}, expected {model_tag!r}")
    if meta.get("task") != task:
        problems.append(f"task {meta.get('task')!r}, expected {task!r}")
    classes = expected[0].get("probabilities")
    if classes is not None and [str(c) for c in meta.get("classes") or []] != list(classes):
        problems.append(f"classes {meta.get('classes')}, expected {list(classes)}")
    if problems:
        return _check("metadata", False, "; ".join(problems))
    runtime = (meta.get("runtime") or {}).get("name", "sklearn")
    detail = f"serves {model_tag} (run {meta.get('run_version')}, {task}) with {runtime}"
    return _check("metadata", True, detail)


def compare_answers(
    served: list[dict[str, Any]],
    expected: list[dict[str, Any]],
    task: str,
    *,
    tolerance: float = PROBABILITY_TOLERANCE,
) -> dict[str, Any]:
    """The ``predictions_match`` check: labels equal, numbers and probabilities within
    ``tolerance`` (regression: relative above 1)."""
    mismatches = []
    worst = 0.0
    for row, (got, want) in enumerate(zip(served, expected, strict=True)):
        same, delta = _same_answer(got, want, task, tolerance)
        worst = max(worst, delta)
        if not same:
            mismatches.append(f"row {row}: served {got!r}, expected {want!r}")
    if mismatches:
        shown = "; ".join(mismatches[:3])
        return _check(
            "predictions_match", False, f"{len(mismatches)} of {len(served)} rows differ: {shown}"
        )
    return _check(
        "predictions_match",
        True,
        f"{len(served)} rows match (max |Δ| {worst:.1e}, limit {tolerance:g})",
    )


def _same_answer(got: Any, want: dict[str, Any], task: str, tolerance: float) -> tuple[bool, float]:
    """Whether one served answer is the model's, and the largest numeric difference."""
    if not isinstance(got, dict) or set(got) != set(want):
        return False, 0.0
    if task == "regression":
        served, own = got["prediction"], float(want["prediction"])
        if isinstance(served, bool) or not isinstance(served, int | float):
            return False, 0.0
        delta = abs(float(served) - own)
        return math.isfinite(delta) and delta <= tolerance * max(1.0, abs(own)), delta
    if got["prediction"] != want["prediction"] or type(got["prediction"]) is not type(
        _native(want["prediction"])
    ):
        return False, 0.0
    if "probabilities" not in want:
        return True, 0.0
    served_p, own_p = got["probabilities"], want["probabilities"]
    if not isinstance(served_p, dict) or list(served_p) != list(own_p):
        return False, 0.0
    delta = max(abs(float(served_p[k]) - float(own_p[k])) for k in own_p)
    return delta <= tolerance, delta


def _log_check(
    log_dir: Path, request_ids: list[str], expected: list[dict[str, Any]]
) -> dict[str, Any]:
    try:
        logged = read_inference_log(log_dir)
    except InferenceLogError as exc:
        return _check("inference_log", False, str(exc))
    ids = set(request_ids)
    rows = logged[logged["request_id"].isin(ids)]
    wanted = [PREDICTION_COLUMN]
    if "probabilities" in expected[0]:
        wanted += [f"{PROBABILITY_PREFIX}{key}" for key in expected[0]["probabilities"]]
    missing = [c for c in wanted if c not in rows.columns or rows[c].isna().any()]
    ok = len(rows) == len(expected) and set(rows["request_id"]) == ids and not missing
    detail = f"{len(rows)} of {len(expected)} answers logged under {len(ids)} request id(s)"
    return _check("inference_log", ok, detail + (f"; missing {missing}" if missing else ""))
