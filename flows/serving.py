"""Serving: `nbprod serve` and `nbprod predict`, infra validation of a bento, the inference log.

``register_commands`` is what ``flows.cli`` imports, so everything at module level here is
standard library: ``nbprod --help`` must not pay for pandas or BentoML. Heavy imports happen
inside the functions that need them.

The service itself lives in ``bentos/service.py`` (it cannot import this package). Its contract:

- ``POST /predict`` with ``{"records": [{feature: value, ...}, ...]}`` returns
  ``[{"prediction": 0|1, "probability": float}, ...]`` in input order, with the headers
  ``X-Request-ID`` and ``X-Model-Tag``; a bad request gets a 4xx whose ``error`` names the field.
- ``POST /metadata`` with ``{}`` returns the model tag, run version, metrics and lineage.

Inference log: the service appends one JSON line per successful /predict to a file per worker
process in ``$NBPROD_INFERENCE_LOG_DIR``; when that is unset, in ``$BENTOML_HOME/inference_logs``
(``~/bentoml/inference_logs`` when ``BENTOML_HOME`` is unset too, BentoML's own default). Chosen
there because the service always runs with a ``BENTOML_HOME`` (it holds the model), in a
container as well as on a laptop, whereas the working directory of ``bentoml serve`` is arbitrary.
A line is ``{"request_id", "timestamp", "model_tag", "run_version", "latency_ms", "request":
{"records": [...]}, "response": [...]}``; ``read_inference_log`` turns files of them into one row
per record. ``validate_bento`` points the log at a temporary folder, so validation traffic never
reaches the monitored log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.errors import InferenceLogError, ServingError
from flows.options import add_store_option, open_store

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator

    import pandas as pd

HOST = "127.0.0.1"
DEFAULT_PORT = 3000
DEFAULT_URL = f"http://{HOST}:{DEFAULT_PORT}"
# Columns of the bundled data that are not model features.
NON_FEATURE_COLUMNS = ("application_id", "application_date", "defaulted")
# Records per /predict request from the CLI and validation: well under the service's limits.
CHUNK_RECORDS = 1_000
HTTP_TIMEOUT_S = 60.0
PROBABILITY_TOLERANCE = 1e-9
LOG_DIR_ENV_VAR = "NBPROD_INFERENCE_LOG_DIR"
LOG_SUBDIR = "inference_logs"
LOG_META_COLUMNS = (
    "request_id",
    "timestamp",
    "model_tag",
    "run_version",
    "latency_ms",
    "record_index",
)
LOG_OUTPUT_COLUMNS = ("prediction", "probability")
# A worker that cannot start makes BentoML log this and respawn it forever instead of exiting.
STARTUP_FAILED = "Application startup failed"
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)): .+")


# --- command line --------------------------------------------------------------------------------


def register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``predict`` to the ``nbprod`` parser (standard library only)."""
    serve = subparsers.add_parser(
        "serve",
        help="serve the champion (or an accepted VERSION) with `bentoml serve` on 127.0.0.1",
    )
    serve.add_argument(
        "version", nargs="?", default=None, help="an accepted run version (default: the champion)"
    )
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    add_store_option(serve)
    serve.set_defaults(func=cmd_serve)

    predict = subparsers.add_parser(
        "predict", help="send a CSV's rows to a running service; print or write the predictions"
    )
    predict.add_argument(
        "file",
        metavar="FILE.csv",
        help="rows to score (extra id/date/target columns are dropped before sending)",
    )
    predict.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    predict.add_argument(
        "--output",
        default=None,
        metavar="OUT.csv",
        help="write the input rows with prediction and probability here instead of printing",
    )
    predict.set_defaults(func=cmd_predict)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return port


def resolve_bento(version: str | None, store_url: str | None = None) -> tuple[str, str]:
    """The (bento tag, run version) to serve: the champion's, or an accepted version's."""
    store = open_store(store_url)
    if version is None:
        champion = store.champion()
        if champion is None:
            raise ServingError(
                f"no champion to serve in {store.url}: the first accepted `nbprod run` becomes "
                "the champion (or pass an accepted VERSION)"
            )
        if not champion.get("bento_tag"):
            raise ServingError(
                f"champion {champion.get('version')} in {store.url} has no bento_tag: "
                "roll the champion pointer back to an accepted run"
            )
        return str(champion["bento_tag"]), str(champion["version"])
    record = store.get_run(version)  # RunStoreError names recent versions when it is unknown
    if not record.get("bento_tag"):
        raise ServingError(
            f"run {version} is {record.get('status', 'unknown')}, not accepted: only accepted runs "
            "have a bento. Serve the champion (`nbprod serve`) or an accepted version "
            "(see `nbprod runs`)"
        )
    return str(record["bento_tag"]), version


def serve_command(bento_tag: str, port: int) -> list[str]:
    """``bentoml serve`` of this venv, bound to the loopback interface only."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        bento_tag,
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def cmd_serve(args: argparse.Namespace) -> int:
    """Replace this process with ``bentoml serve``: signals (Ctrl-C, SIGTERM) reach it directly."""
    bento_tag, version = resolve_bento(args.version, args.store)
    _require_local_bento(bento_tag)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    print(
        f"serving {bento_tag} (run {version}) on http://{HOST}:{args.port}: POST /predict, "
        "POST /metadata, GET /readyz; Ctrl-C stops",
        flush=True,
    )
    command = serve_command(bento_tag, args.port)
    os.execv(command[0], command)
    return 0  # pragma: no cover - execv does not return


def _require_local_bento(bento_tag: str) -> None:
    """Fail in one line, not in a BentoML traceback, when the bento is not in this store."""
    import bentoml

    try:
        bentoml.bentos.get(bento_tag)
    except bentoml.exceptions.NotFound as exc:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise ServingError(
            f"bento {bento_tag} is not in the BentoML store at {home}: serve with the "
            "BENTOML_HOME the pipeline used (make sets .nbprod/bentoml)"
        ) from exc


def cmd_predict(args: argparse.Namespace) -> int:
    """Score a CSV through a running service; print compact results or write a scored CSV."""
    import pandas as pd

    path = Path(args.file)
    if not path.is_file():
        raise ServingError(f"{path} does not exist: pass a CSV file of rows to score")
    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ServingError(f"cannot read {path} as CSV: {exc}") from exc
    if frame.empty:
        raise ServingError(f"{path} has no rows to score")
    scored, model_tag = predict_frame(frame, args.url)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.concat([frame, scored], axis=1).to_csv(out, index=False)
        print(f"wrote {len(scored)} predictions to {out} (model {model_tag})")
    else:
        ids = [c for c in ("application_id",) if c in frame.columns]
        sys.stdout.write(pd.concat([frame[ids], scored], axis=1).to_csv(index=False))
    return 0


# --- talking to a service ------------------------------------------------------------------------


def frame_to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready feature records: id/date/target columns dropped, missing values as null."""
    features = frame.drop(columns=[c for c in NON_FEATURE_COLUMNS if c in frame.columns])
    as_objects = features.astype(object)
    return as_objects.where(features.notna(), None).to_dict(orient="records")


def post_json(url: str, payload: Any, timeout: float = HTTP_TIMEOUT_S) -> tuple[int, Any, Any]:
    """POST JSON (GET when payload is None); return (status, decoded body, headers), 4xx/5xx too.

    Connection failures raise OSError (urllib.error.URLError is one).
    """
    import urllib.error
    import urllib.request

    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), exc.headers
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = raw.decode(errors="replace")
    return status, body, headers


def predict_records(
    url: str, records: list[dict[str, Any]], *, chunk: int = CHUNK_RECORDS
) -> tuple[list[dict[str, Any]], list[str], str | None]:
    """Send records in chunks to ``{url}/predict``; return (results, request ids, model tag).

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
            reason = getattr(exc, "reason", exc)
            raise ServingError(
                f"cannot reach the service at {base} ({reason}): start it with `nbprod serve`"
            ) from exc
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


def predict_frame(frame: pd.DataFrame, url: str) -> tuple[pd.DataFrame, str | None]:
    """Predictions for a frame's rows, in row order, as a frame of prediction and probability."""
    import pandas as pd

    results, _, model_tag = predict_records(url, frame_to_records(frame))
    scored = pd.DataFrame(
        {
            "prediction": [int(r["prediction"]) for r in results],
            "probability": [float(r["probability"]) for r in results],
        },
        index=frame.index,
    )
    return scored, model_tag


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


# --- infra validation ----------------------------------------------------------------------------


def validate_bento(
    bento_tag: str,
    sample: pd.DataFrame,
    expected: pd.DataFrame,
    *,
    timeout_s: float = 120,
    model_tag: str | None = None,
) -> dict[str, Any]:
    """Serve the bento exactly as production would and check it answers like the model.

    Starts ``bentoml serve <bento_tag>`` on a free 127.0.0.1 port (own process group, killed in
    ``finally``; the server inherits this process's ``BENTOML_HOME``, and its inference log goes
    to a temporary folder), waits for /readyz, then checks health, /metadata (and its model tag
    when ``model_tag`` is given), that /predict on ``sample``'s feature columns returns
    ``expected``'s ``prediction`` (equal) and ``probability`` (within 1e-9) row for row, that a
    malformed record gets a 4xx, and that every prediction reached the inference log.

    A failing bento is a result, not an exception: ``{"passed": False, "reason": ...}``. Only
    caller mistakes (sample and expected of different lengths, missing columns) raise ValueError.
    """
    import tempfile

    records, want_pred, want_proba = _validation_inputs(sample, expected)
    checks: list[dict[str, Any]] = []
    startup_s = 0.0
    with tempfile.TemporaryDirectory(prefix="nbprod-validate-") as tmp:
        log_dir = Path(tmp) / "inference"
        try:
            with running_bento(
                bento_tag, log_dir=log_dir, workdir=Path(tmp), timeout_s=timeout_s
            ) as (base, startup_s):
                checks.append(_check("startup", True, f"ready in {startup_s:.1f} s"))
                checks += _serving_checks(base, records, want_pred, want_proba, model_tag, log_dir)
        except ServingError as exc:  # never became ready
            checks.append(_check("startup", False, str(exc)))
        except OSError as exc:  # cannot spawn, or the connection broke mid-check
            checks.append(_check("server", False, f"{type(exc).__name__}: {exc}"))
    failed = [c for c in checks if not c["passed"]]
    return {
        "bento_tag": bento_tag,
        "passed": not failed,
        "checks": checks,
        "reason": f"{failed[0]['name']}: {failed[0]['detail']}" if failed else None,
        "startup_s": round(startup_s, 3),
    }


def _validation_inputs(
    sample: pd.DataFrame, expected: pd.DataFrame
) -> tuple[list[dict[str, Any]], list[int], list[float]]:
    missing = {"prediction", "probability"} - set(expected.columns)
    if missing:
        raise ValueError(f"expected lacks column(s) {sorted(missing)}")
    if len(sample) != len(expected) or len(sample) == 0:
        raise ValueError(
            f"sample ({len(sample)} rows) and expected ({len(expected)} rows) must be the same "
            "non-zero length, in the same row order"
        )
    return (
        frame_to_records(sample),
        [int(p) for p in expected["prediction"]],
        [float(p) for p in expected["probability"]],
    )


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _serving_checks(
    base: str,
    records: list[dict[str, Any]],
    want_pred: list[int],
    want_proba: list[float],
    model_tag: str | None,
    log_dir: Path,
) -> list[dict[str, Any]]:
    checks = []
    statuses = {
        probe: post_json(base + probe, None, timeout=10)[0] for probe in ("/livez", "/healthz")
    }
    checks.append(
        _check("health", all(s == 200 for s in statuses.values()), f"status codes {statuses}")
    )

    status, meta, _ = post_json(base + "/metadata", {})
    served_tag = meta.get("model_tag") if isinstance(meta, dict) else None
    ok = status == 200 and served_tag is not None and model_tag in (None, served_tag)
    detail = (
        f"serves {served_tag} (run {meta.get('run_version')})"
        if ok
        else f"status {status}, model_tag {served_tag!r}, expected {model_tag!r}: {str(meta)[:200]}"
    )
    checks.append(_check("metadata", ok, detail))

    try:
        results, request_ids, _ = predict_records(base, records)
    except ServingError as exc:
        checks.append(_check("predict", False, str(exc)))
        return checks
    checks.append(_check("predict", True, f"{len(results)} predictions"))
    checks.append(_compare(results, want_pred, want_proba))

    bad = [{**records[0], "__nbprod_probe__": 1}]
    status, body, _ = post_json(base + "/predict", {"records": bad})
    ok = 400 <= status < 500 and "__nbprod_probe__" in json.dumps(body)
    checks.append(
        _check("rejects_bad_request", ok, f"unknown field answered {status}: {_error_text(body)}")
    )

    try:
        logged = read_inference_log(log_dir)
    except InferenceLogError as exc:
        checks.append(_check("inference_log", False, str(exc)))
        return checks
    ids = set(request_ids)
    rows = logged[logged["request_id"].isin(ids)]
    ok = len(rows) == len(records) and set(rows["request_id"]) == ids
    checks.append(
        _check(
            "inference_log",
            ok,
            f"{len(rows)} of {len(records)} predictions logged under {len(ids)} request id(s)",
        )
    )
    return checks


def _compare(
    results: list[dict[str, Any]], want_pred: list[int], want_proba: list[float]
) -> dict[str, Any]:
    mismatches = []
    worst = 0.0
    for row, (got, pred, proba) in enumerate(zip(results, want_pred, want_proba, strict=True)):
        delta = abs(float(got["probability"]) - proba)
        worst = max(worst, delta)
        if int(got["prediction"]) != pred or not delta <= PROBABILITY_TOLERANCE:
            mismatches.append(
                f"row {row}: served ({got['prediction']}, {got['probability']!r}) "
                f"expected ({pred}, {proba!r})"
            )
    if mismatches:
        shown = "; ".join(mismatches[:3])
        return _check(
            "predictions_match", False, f"{len(mismatches)} of {len(results)} rows differ: {shown}"
        )
    return _check(
        "predictions_match", True, f"{len(results)} rows match (max |Δprobability| {worst:.1e})"
    )


@contextlib.contextmanager
def running_bento(
    bento_tag: str, *, log_dir: Path, workdir: Path, timeout_s: float = 120
) -> Iterator[tuple[str, float]]:
    """``bentoml serve`` on a free 127.0.0.1 port for the block: yields (base URL, start-up s).

    Own process group, stopped on exit (gracefully, so the inference log in ``log_dir`` is
    complete); the server inherits this process's ``BENTOML_HOME``. Raises ServingError with the
    server's reason when it does not become ready.
    """
    import subprocess

    server_log = workdir / "serve.log"
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", LOG_DIR_ENV_VAR: str(log_dir)}
    base = f"http://{HOST}:{free_port()}"
    started = time.monotonic()
    server: subprocess.Popen[bytes] | None = None
    try:
        with server_log.open("wb") as out:
            server = subprocess.Popen(
                serve_command(bento_tag, int(base.rsplit(":", 1)[1])),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )
        failure = wait_ready(base, server, server_log, timeout_s=timeout_s)
        if failure is not None:
            raise ServingError(failure)
        yield base, time.monotonic() - started
    finally:
        if server is not None:
            stop_server(server)


def free_port() -> int:
    """A currently free loopback port (the server binds it a moment later)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_ready(
    base: str, server: subprocess.Popen[bytes], server_log: Path, *, timeout_s: float
) -> str | None:
    """Poll /readyz until 200; return None, or why the server will not become ready.

    Also watches the server's output: BentoML keeps respawning a worker whose start-up fails
    rather than exiting, so waiting for the deadline alone would turn a broken model into a
    two-minute timeout.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return (
                f"bentoml serve exited with status {server.returncode}: {_log_reason(server_log)}"
            )
        text = server_log.read_text(encoding="utf-8", errors="replace")
        if STARTUP_FAILED in text:
            return f"the service failed to start: {_log_reason(server_log)}"
        try:
            if post_json(base + "/readyz", None, timeout=2)[0] == 200:
                return None
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    return f"not ready after {timeout_s:.0f} s: {_log_reason(server_log)}"


def _log_reason(server_log: Path) -> str:
    """The last exception line of the server's output, else its last line."""
    lines = server_log.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        if EXCEPTION_LINE.match(line.strip()):
            return line.strip()[:500]
    tail = [line.strip() for line in lines if line.strip()]
    return tail[-1][:500] if tail else "no output"


def stop_server(server: subprocess.Popen[bytes], *, grace_s: float = 15) -> None:
    """SIGTERM the server's process group (graceful: logs are flushed), SIGKILL if it lingers."""
    import signal
    import subprocess

    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        except ProcessLookupError:
            pass
    # Workers that outlived the arbiter are still in its group.
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- inference log -------------------------------------------------------------------------------


def default_inference_log_dir() -> Path:
    """The folder the service logs to with this environment (see the module docstring)."""
    if os.environ.get(LOG_DIR_ENV_VAR):
        return Path(os.environ[LOG_DIR_ENV_VAR]).expanduser()
    home = os.environ.get("BENTOML_HOME") or "~/bentoml"
    return Path(home).expanduser() / LOG_SUBDIR


def read_inference_log(path_or_dir: str | Path) -> pd.DataFrame:
    """Logged predictions as a DataFrame: one row per record, oldest request first.

    Columns: request_id, timestamp (UTC), model_tag, run_version, latency_ms, record_index (its
    position in the request), the features as sent (an omitted nullable feature is NaN),
    prediction and probability. A folder is read recursively (``*.jsonl``, one file per worker
    process). A last line without its newline is a write in progress (or cut by a crash) and is
    skipped; any other unreadable line raises InferenceLogError naming file and line.
    """
    import pandas as pd

    path = Path(path_or_dir)
    if path.is_dir():
        files = sorted(path.rglob("*.jsonl"))
    elif path.is_file():
        files = [path]
    else:
        raise InferenceLogError(f"inference log {path} does not exist")
    rows: list[dict[str, Any]] = []
    for file in files:
        rows.extend(_log_rows(file))
    if not rows:
        return pd.DataFrame(columns=[*LOG_META_COLUMNS, *LOG_OUTPUT_COLUMNS])
    frame = pd.DataFrame(rows)
    features = [c for c in frame.columns if c not in (*LOG_META_COLUMNS, *LOG_OUTPUT_COLUMNS)]
    frame = frame[[*LOG_META_COLUMNS, *features, *LOG_OUTPUT_COLUMNS]]
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    return frame.sort_values(
        ["timestamp", "request_id", "record_index"], kind="stable", ignore_index=True
    )


def _log_rows(file: Path) -> list[dict[str, Any]]:
    raw = file.read_bytes()
    lines = raw.split(b"\n")
    # The piece after the last newline is empty, or a line still being written.
    complete = lines[:-1]
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            records = entry["request"]["records"]
            outputs = entry["response"]
            if len(records) != len(outputs):
                raise ValueError(f"{len(records)} records but {len(outputs)} predictions")
            meta = {
                "request_id": entry["request_id"],
                "timestamp": entry["timestamp"],
                "model_tag": entry.get("model_tag"),
                "run_version": entry.get("run_version"),
                "latency_ms": entry.get("latency_ms"),
            }
            for index, (record, output) in enumerate(zip(records, outputs, strict=True)):
                rows.append(
                    {
                        **meta,
                        "record_index": index,
                        **record,
                        "prediction": output["prediction"],
                        "probability": output["probability"],
                    }
                )
        except (ValueError, KeyError, TypeError) as exc:
            raise InferenceLogError(
                f"{file}:{number}: not a logged prediction ({type(exc).__name__}: {exc}); "
                "move the file aside to read the rest"
            ) from exc
    return rows
