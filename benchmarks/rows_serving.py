"""P5: serving three notebook-trained models, the bento against a plain FastAPI app, by wrk."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    DEMO_SPEC,
    HERE,
    HOST,
    Config,
    Row,
    free_port,
    http,
    log,
    median,
    server,
    timed,
    verdict,
)
from rows_notebooks import papermill_cmd

# The three models P5 serves, each trained by the demo's train notebook (its `estimator`
# parameter, the notebook's defaults otherwise): name -> papermill parameters.
P5_MODELS = {
    "HistGradientBoosting": {"estimator": "hist_gradient_boosting"},
    "RandomForest": {"estimator": "random_forest", "n_estimators": 100},
    "LogisticRegression": {"estimator": "logistic_regression"},
}
P5_LEVELS = [16, 64]
P5_MIN_RATIO = 5.0  # × FastAPI's throughput at 16 connections
P5_MAX_P99_MS = 50.0
# Probabilities may differ by this much (bentos/fast_runtime.py TOLERANCE); labels never.
P5_TOLERANCE = 1e-5
P5_CHECK_ROWS = 200  # holdout rows both services answer for the like-with-like check


def request_body(features: list[str], data_path: str) -> bytes:
    """One record: the data's first row without missing values, features only."""
    import pandas as pd

    frame = pd.read_csv(data_path)[features].dropna()
    record = json.loads(frame.iloc[[0]].to_json(orient="records"))
    return json.dumps({"records": record}).encode()


def check_body(features: list[str], holdout_path: str) -> bytes:
    """The first holdout rows as one request (missing values as null)."""
    import pandas as pd

    frame = pd.read_parquet(holdout_path)[features].head(P5_CHECK_ROWS)
    return json.dumps({"records": json.loads(frame.to_json(orient="records"))}).encode()


def same_answers(bento: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> str | None:
    """Why the two services' answers differ, or None: labels identical, probabilities per label
    within P5_TOLERANCE."""
    if len(bento) != len(baseline):
        return f"{len(bento)} vs {len(baseline)} answers"
    for got, want in zip(bento, baseline, strict=True):
        if set(got) != set(want):
            return f"keys {sorted(got)} vs {sorted(want)}"
        if got["prediction"] != want["prediction"]:
            return f"prediction {got['prediction']!r} vs {want['prediction']!r}"
        probs, base = got.get("probabilities") or {}, want.get("probabilities") or {}
        if set(probs) != set(base):
            return f"probability labels {sorted(probs)} vs {sorted(base)}"
        if any(abs(probs[k] - base[k]) > P5_TOLERANCE for k in probs):
            return f"probabilities {probs} vs {base}"
    return None


def largest_difference(bento: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> float:
    """The largest difference between two services' probabilities for the same label."""
    return max(
        (
            abs(p - want["probabilities"][label])
            for got, want in zip(bento, baseline, strict=True)
            for label, p in (got.get("probabilities") or {}).items()
        ),
        default=0.0,
    )


def wrk(cfg: Config, url: str, clients: int, seconds: int, body: Path) -> dict[str, Any]:
    threads = min(2, clients)
    cmd = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--latency"]
    cmd += ["--timeout", "5s", "-s", str(HERE / "post.lua"), url]
    env = {**cfg.env, "NBPROD_BENCH_BODY": str(body)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    with cfg.log.open("a") as handle:
        handle.write(f"\n=== {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {proc.stderr.strip()[-300:]}")
    stats = json.loads(line.removeprefix("BENCH_JSON "))
    stats["errors"] = sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    return stats


def drain(url: str, body: Path) -> None:
    """Wait until requests queued by a finished wrk run are served: one request gets through."""
    http(url, body.read_bytes(), timeout=120)


def tree_cpu_s(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU seconds of a server and all its descendants so far."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
    except psutil.Error:
        pass
    return total


def load_test(
    cfg: Config,
    servers: dict[str, tuple[str, subprocess.Popen[bytes]]],
    body: Path,
    levels: list[int],
) -> dict[str, dict[int, dict[str, float]]]:
    """wrk at each concurrency against each server, the servers' runs alternating (so load from
    other processes falls on both alike); also each server's CPU milliseconds per request.

    ``servers``: name -> (URL, server process). CPU per request bounds what a server can do: on
    one core, c clients wait at least c × cpu_ms on average (Little's law), whatever the batching.
    """
    seconds, reps = (2, 3) if cfg.quick else (10, 3)
    for url, _ in servers.values():  # warm-up
        wrk(cfg, url, 16, 2, body)
        drain(url, body)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {} for name in servers}
    for clients in levels:
        for _ in range(reps):
            for name, (url, proc) in servers.items():
                before = tree_cpu_s(proc)
                stats = wrk(cfg, url, clients, seconds, body)
                stats["cpu_ms"] = (tree_cpu_s(proc) - before) * 1000 / max(stats["requests"], 1)
                runs[name].setdefault(clients, []).append(stats)
                drain(url, body)
    return {
        name: {
            clients: {
                "cpu_ms": median([r["cpu_ms"] for r in rs]),
                "rps": median([r["rps"] for r in rs]),
                "p99_ms": median([r["p99_us"] / 1000 for r in rs]),
                "p50_ms": median([r["p50_us"] / 1000 for r in rs]),
                "errors": sum(r["errors"] for r in rs),
                "requests": sum(r["requests"] for r in rs),
            }
            for clients, rs in by_level.items()
        }
        for name, by_level in runs.items()
    }


def raw_answer_rate(model_path: Path, body: bytes, task: str) -> float:
    """Single-row answers per second straight from the model, on a prebuilt DataFrame, in one
    process: ``predict``, plus ``predict_proba`` for a classifier that has it (what each answer
    of the baseline needs). The limit for one core without HTTP or batching."""
    import joblib
    import pandas as pd
    from threadpoolctl import threadpool_limits

    model = joblib.load(model_path)
    frame = pd.DataFrame(json.loads(body)["records"])[list(model.feature_names_in_)]
    proba = getattr(model, "predict_proba", None) if task == "classification" else None

    def answer() -> None:
        model.predict(frame)
        if proba is not None:
            proba(frame)

    # One OpenMP thread, as both services use: with two, each tiny predict spins on 2 busy cores.
    with threadpool_limits(limits=1, user_api="openmp"):
        for _ in range(5):
            answer()
        times = []
        for _ in range(5):
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < 0.5:
                answer()
                calls += 1
            times.append((time.perf_counter() - started) / calls)
    return 1 / median(times)


def bench_p5(cfg: Config, data: dict[str, str]) -> list[Row]:
    """P5 for each of P5_MODELS; a model that fails gives an error row, the others still run."""
    rows: list[Row] = []
    for name, params in P5_MODELS.items():
        log(f"P5 {name} ...")
        try:
            rows += bench_p5_model(cfg, data, name, params)
        except Exception as exc:  # one broken model must not lose the others
            log(f"P5 {name} failed: {exc}")
            rows.append(Row(f"P5 {name}", "serving", "-", "-", "-", "-", "error", str(exc)[:300]))
    return rows


def bench_p5_model(
    cfg: Config, data: dict[str, str], name: str, params: dict[str, Any]
) -> list[Row]:
    """Train one model with the notebook, package it as the release step does, serve it with
    ``bentoml serve`` and the FastAPI baseline at once, check both answer alike, load both."""
    slug = str(params["estimator"]).replace("_", "-")
    out = cfg.work / f"p5-{slug}"
    timed(
        papermill_cmd(cfg, "train.ipynb", out, {**data, **params}),
        cfg,
        what=f"P5 {name} model",
    )
    model = out / "model.joblib"
    tags_file = out / "bento.json"
    package = [
        sys.executable,
        str(HERE / "package_bento.py"),
        str(model),
        str(tags_file),
    ]
    package += [DEMO_SPEC, data["holdout_path"], f"v-bench-{slug}"]
    timed(package, cfg, what=f"P5 {name} bento", timeout=900)
    tags = json.loads(tags_file.read_text())
    body = request_body(tags["features"], tags["data_path"])
    body_file = out / "body.json"
    body_file.write_bytes(body)
    check = check_body(tags["features"], data["holdout_path"])

    bento_port, api_port = free_port(), free_port()
    bento_base, api_base = f"http://{HOST}:{bento_port}", f"http://{HOST}:{api_port}"
    bento_env = {**cfg.env, "NBPROD_INFERENCE_LOG_DIR": str(out / "inference")}
    serve = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        tags["bento_tag"],
        "--host",
        HOST,
    ]
    serve += ["--port", str(bento_port)]
    # One OpenMP thread, like the bento (bentos/predictor.py sets it per inference thread): without
    # it the baseline's single-row predicts spin 2 OpenMP threads on 2 busy cores, 10-20x slower.
    api_env = {**cfg.env, "NBPROD_BENCH_MODEL": str(model), "OMP_NUM_THREADS": "1",
               "NBPROD_BENCH_TASK": tags["task"]}  # fmt: skip
    uvicorn = [
        sys.executable,
        "-m",
        "uvicorn",
        "fastapi_app:app",
        "--app-dir",
        str(HERE),
    ]
    uvicorn += ["--host", HOST, "--port", str(api_port), "--log-level", "warning"]
    # As many worker processes as the bento (workers="cpu_count" in bentos/service.py).
    uvicorn += ["--no-access-log", "--workers", str(os.cpu_count() or 1)]
    with (
        server(serve, cfg, f"bentoml-{slug}", f"{bento_base}/readyz", env=bento_env) as bento_proc,
        server(uvicorn, cfg, f"fastapi-{slug}", f"{api_base}/readyz", env=api_env) as api_proc,
    ):
        answers = {}
        for side, base in (("bento", bento_base), ("FastAPI baseline", api_base)):
            status, raw = http(f"{base}/predict", check, timeout=60)
            if status != 200:
                raise RuntimeError(f"{side} answered {status}: {raw[:300]!r}")
            answers[side] = json.loads(raw)
        runtime = json.loads(http(f"{bento_base}/metadata", b"{}", timeout=30)[1])["runtime"]
        servers = {
            "bento": (f"{bento_base}/predict", bento_proc),
            "fastapi": (f"{api_base}/predict", api_proc),
        }
        results = load_test(cfg, servers, body_file, P5_LEVELS)
    bento, fastapi = results["bento"], results["fastapi"]
    log(f"P5 {name} bento ({runtime['name']}) {bento}")
    log(f"P5 {name} fastapi {fastapi}")
    limit = raw_answer_rate(model, body, tags["task"])
    # Like with like: both must give the same answers (same labels, probabilities within 1e-5).
    differ = same_answers(answers["bento"], answers["FastAPI baseline"])
    worst = 0.0 if differ else largest_difference(answers["bento"], answers["FastAPI baseline"])

    rows = []
    for clients in P5_LEVELS:
        b, f = bento[clients], fastapi[clients]
        ratio = b["rps"] / f["rps"] if f["rps"] else float("inf")
        ok = b["p99_ms"] <= P5_MAX_P99_MS and b["errors"] == 0 and differ is None
        target = f"p99 ≤ {P5_MAX_P99_MS:.0f} ms, 0 errors, same answers"
        if clients == 16:
            ok = ok and ratio >= P5_MIN_RATIO
            target = f"≥ {P5_MIN_RATIO:.0f}× FastAPI; " + target
        rows.append(
            Row(f"P5 {name} c={clients}",
                f"{name}, single-row POST /predict, {clients} conn.: rows/s (= req/s)",
                f"{b['rps']:.0f} rows/s, p99 {b['p99_ms']:.1f} ms, {b['errors']:.0f} err",
                f"{f['rps']:.0f} rows/s, p99 {f['p99_ms']:.1f} ms, {f['errors']:.0f} err",
                f"{ratio:.2f}×", target, verdict(ok),
                f"bento served by {runtime['name']} ({runtime['reason'][:120]}); server CPU "
                f"per request {b['cpu_ms']:.2f} ms (FastAPI {f['cpu_ms']:.2f} ms); p50 "
                f"{b['p50_ms']:.1f} ms (FastAPI {f['p50_ms']:.1f} ms); raw model limit "
                f"{limit:.0f} rows/s (one row's predict + predict_proba straight from the "
                f"scikit-learn model, 1 core, no HTTP); both answered {P5_CHECK_ROWS} holdout "
                f"rows alike (max Δp {worst:.1e}), runs alternating"
                + ("" if differ is None else f"; ANSWERS DIFFER (not like with like): {differ}"))
        )  # fmt: skip
    return rows
