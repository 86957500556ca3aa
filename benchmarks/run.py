"""nbprod's benchmark harness (`make bench`): nbprod vs a baseline, measured in the same run.

Usage: ``.venv/bin/python benchmarks/run.py [--quick] [--only P1,P5,SCALING] [--output FILE]``

Prints ONE markdown table (row, measure, nbprod, baseline, ratio, target, result), then the
scaling curves (drift check and training pipeline at 10k/100k/1M rows: time, peak memory and
growth exponents), and writes both with the date and the machine to benchmarks/RESULTS.md.
Every figure is the median of several runs (fewer and shorter with ``--quick``, which finishes
in under 5 minutes on 2 cores); nbprod and baseline runs are interleaved so load from other
processes hits both alike.

Everything runs in a temporary folder: its own Prefect server (``prefect server start`` on a free
loopback port, with its own PREFECT_HOME), its own NBPROD_HOME and BENTOML_HOME. Servers bind
127.0.0.1 and load generators target 127.0.0.1 only. This is a measurement tool, not a test:
the test suite has no timing assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PACKAGES = [
    "prefect",
    "papermill",
    "bentoml",
    "evidently",
    "scikit-learn",
    "pandas",
    "numpy",
    "fastapi",
    "uvicorn",
]
ALL_ROWS = ["P1", "P2", "P3", "P4", "P5", "P6"]
# What --only selects from: the rows, and the scaling curves (a second table).
SECTIONS = [*ALL_ROWS, "SCALING"]
# --quick: trees per P3 grid point (the notebook's default is 200), so 16 trainings fit the budget.
QUICK_TREES = 20
# The demo's pipeline spec (the loan example), copied with its notebooks, policy and data into the
# benchmark's temporary project: P5 packages its model as the flow would, SCALING runs its flow.
DEMO_SPEC = "deployments/training.yaml"
PROJECT_FILES = [
    "notebooks/prepare.ipynb",
    "notebooks/train.ipynb",
    DEMO_SPEC,
    "deployments/policy.yaml",
    "data/loans.csv",
    "data/reference.csv",
]


@dataclass
class Row:
    """One line of the results table."""

    row: str
    measure: str
    nbprod: str
    baseline: str
    ratio: str
    target: str
    result: str
    note: str = ""


@dataclass
class Config:
    quick: bool
    work: Path
    env: dict[str, str]
    log: Path

    @property
    def reps(self) -> int:
        """Runs per figure for the notebook rows (each run is a kernel start and a training)."""
        return 2 if self.quick else 5


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


# --- environment ---------------------------------------------------------------------------------


def check_tools() -> None:
    """Fail early and clearly when something the harness needs is missing."""
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk (Debian: apt-get install -y wrk)")
    for tool in ("papermill", "prefect", "nbprod", "bentoml"):
        if not (VENV_BIN / tool).exists():
            missing.append(f"{tool} in {VENV_BIN} (run `make venv`)")
    for package in ("fastapi", "uvicorn", "evidently"):
        try:
            metadata.version(package)
        except metadata.PackageNotFoundError:
            missing.append(f"{package} (run `make venv`)")
    if missing:
        sys.exit("benchmarks: missing " + "; ".join(missing))


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} -")
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": ram,
        "python": platform.python_version(),
        "os": platform.platform(),
        "packages": ", ".join(versions),
        "wrk": " ".join((wrk.stdout or wrk.stderr or "wrk -").split()[:2]),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http(url: str, body: bytes | None = None, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"} if body else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError):
            if http(url, timeout=2)[0] == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")


@contextlib.contextmanager
def server(
    cmd: list[str], cfg: Config, name: str, ready_url: str, **kw: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server in its own process group; stop exactly that group afterwards."""
    out = (cfg.work / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        cmd, env=kw.pop("env", cfg.env), stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True, **kw,
    )  # fmt: skip
    try:
        wait_http(ready_url, proc, 180, f"{name} (log: {out.name})")
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their parent
        out.close()


def timed(cmd: list[str], cfg: Config, *, what: str, timeout: float = 900) -> tuple[float, str]:
    """Run a command to completion; return its wall time and stdout. Fail loudly on error."""
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, env=cfg.env, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )
    elapsed = time.perf_counter() - started
    with (cfg.log).open("a") as handle:
        handle.write(f"\n=== {what}: {' '.join(cmd)} ({elapsed:.2f} s, rc {proc.returncode})\n")
        handle.write(proc.stdout[-5000:] + proc.stderr[-5000:])
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed (rc {proc.returncode}): {' | '.join(tail)}")
    return elapsed, proc.stdout


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- the notebook rows (P1, P2, P3) -------------------------------------------------------------


def papermill_cmd(cfg: Config, notebook: str, out: Path, params: dict[str, Any]) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)  # papermill does not create the output folder
    cmd = [str(VENV_BIN / "papermill"), "-k", "python3", "--no-progress-bar"]
    cmd += ["--log-level", "WARNING", str(REPO / "notebooks" / notebook), str(out / "out.ipynb")]
    for name, value in {**params, "output_dir": str(out)}.items():
        cmd += ["-p", name, str(value)]
    return cmd


def write_spec(cfg: Config, name: str, params: dict[str, Any], grid: dict | None = None) -> str:
    import yaml

    spec = {
        "name": name,
        "flow": "notebook",
        "notebooks": ["notebooks/train.ipynb"],
        "parameters": {"train": params},
        **({"grid": {"train": grid}} if grid else {}),
    }
    path = cfg.work / "project" / "deployments" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return f"deployments/{name}.yaml"


def flow_cmd(spec: str, no_cache: bool) -> list[str]:
    cmd = [sys.executable, str(HERE / "drive_flow.py"), spec]
    return cmd + (["--no-cache"] if no_cache else [])


def nbprod_rerun_cmd(spec: str) -> list[str]:
    """``nbprod run --spec`` as a user types it (the console script, its own process)."""
    return [str(VENV_BIN / "nbprod"), "run", "--spec", spec]


def run_flow(cfg: Config, spec: str, no_cache: bool, what: str) -> tuple[float, dict[str, Any]]:
    elapsed, out = timed(flow_cmd(spec, no_cache), cfg, what=what)
    return elapsed, json.loads(out.strip().splitlines()[-1])


def flow_median(records: list[dict[str, Any]]) -> float:
    return median([r["flow_s"] for r in records])


def breakdown(records: list[dict[str, Any]], total: float) -> str:
    """Where an nbprod process's wall time went (medians): import, flow call, start-up + exit."""
    imported, flow = median([r["import_s"] for r in records]), flow_median(records)
    return (
        f"of which import of flows.pipeline {imported:.1f} s, flow call {flow:.1f} s, "
        f"interpreter start + exit {max(total - imported - flow, 0):.1f} s"
    )


def make_project(work: Path) -> Path:
    """The benchmark's project (NBPROD_PROJECT_DIR): the demo's spec, policy, notebooks, data."""
    project = work / "project"
    for name in PROJECT_FILES:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, project / name)
    return project


def prepare_data(cfg: Config) -> dict[str, str]:
    """The train notebook's inputs: one papermill run of the prepare notebook on the demo data.

    The notebook contract: prepare writes ``train.parquet`` and ``holdout.parquet``, which the
    training flow hands to train as ``train_path`` and ``holdout_path``.
    """
    out = cfg.work / "prepare"
    params = {"data_path": REPO / "data" / "loans.csv"}
    timed(papermill_cmd(cfg, "prepare.ipynb", out, params), cfg, what="prepare (papermill)")
    data = {"train_path": out / "train.parquet", "holdout_path": out / "holdout.parquet"}
    missing = [str(path) for path in data.values() if not path.is_file()]
    if missing:
        raise RuntimeError(f"the prepare notebook did not write {missing}")
    return {name: str(path) for name, path in data.items()}


def bench_p1(cfg: Config, data: dict[str, str]) -> list[Row]:
    spec = write_spec(cfg, "bench-train", data)
    nb_times, pm_times = [], []
    cold_records = []
    for i in range(cfg.reps):  # interleaved: nbprod, papermill, nbprod, ...
        elapsed, record = run_flow(cfg, spec, True, f"P1 nbprod cold #{i}")
        if record.get("cache") != {"train": "miss"}:
            raise RuntimeError(f"cold run was not a cache miss: {record}")
        nb_times.append(elapsed)
        cold_records.append(record)
        out = cfg.work / f"papermill-{i}"
        pm_times.append(timed(papermill_cmd(cfg, "train.ipynb", out, data), cfg, what="P1 pm")[0])
    log(f"P1 nbprod {nb_times} papermill {pm_times}")
    cold, base = median(nb_times), median(pm_times)
    rows = [
        Row("P1", "train notebook, wall time (nbprod flow, no cache, vs papermill CLI)",
            fmt_s(cold), fmt_s(base), f"{cold / base:.2f}×", "≤ 1.10×",
            verdict(cold / base <= 1.10),
            f"median of {cfg.reps}; Prefect server running; {breakdown(cold_records, cold)}"),
    ]  # fmt: skip
    return rows


def bench_p2(cfg: Config, data: dict[str, str]) -> list[Row]:
    """P1's spec re-run unchanged, answered by Prefect's cache, vs Prefect's empty flow run.

    Two ways, interleaved, each against Prefect's floor (as shipped) measured the same way:
    ``nbprod run --spec`` in its own process vs benchmarks/empty_flow.py in a fresh process; a
    deployment's flow run executed as a process worker executes it vs the empty flow's
    (benchmarks/deployment_run.py). Every re-run's notebook task must be a Cached task run.
    """
    spec = write_spec(cfg, "bench-train", data)
    timed(nbprod_rerun_cmd(spec), cfg, what="P2 first run (fills the cache)")
    times: dict[str, list[float]] = {"cli": [], "cli floor": [], "dep": [], "dep floor": []}
    no_warm: list[float] = []  # a note: what the kernel started ahead of need costs a re-run
    for i in range(cfg.reps):
        for env, figures in (([], times["cli"]), (["NBPROD_WARM_KERNELS=false"], no_warm)):
            cmd = ["env", *env, *nbprod_rerun_cmd(spec)]
            elapsed, out = timed(cmd, cfg, what=f"P2 nbprod run, unchanged #{i} {env}")
            if "cache: train hit" not in out:
                raise RuntimeError(f"`nbprod run --spec` re-run was not a cache hit: {out[-500:]}")
            figures.append(elapsed)
        cmd = [sys.executable, str(HERE / "empty_flow.py")]
        elapsed, out = timed(cmd, cfg, what=f"P2 Prefect floor #{i}")
        # The process also ran the second call and its pause: not part of a fresh run.
        times["cli floor"].append(elapsed - last_json(out)["after_first_s"])
        run = deployment_run(cfg, ["nbprod", spec], f"P2 deployment re-run #{i}")
        if run["tasks"].get("run-notebook-train") != "Cached":
            raise RuntimeError(f"a deployment re-run was not a cache hit: {run}")
        times["dep"].append(run["elapsed_s"])
        floor = deployment_run(cfg, ["floor"], f"P2 Prefect floor, deployment #{i}")
        times["dep floor"].append(floor["elapsed_s"])
    log(f"P2 { {k: [round(t, 2) for t in v] for k, v in times.items()} }, no warm {no_warm}")
    cli, cli_floor, dep, dep_floor = (median(times[k]) for k in times)
    return [
        Row("P2", "unchanged re-run through Prefect's cache (CLI; deployment) vs Prefect's "
            "empty flow run as shipped, run the same way",
            f"{fmt_s(cli)}; {fmt_s(dep)}", f"{fmt_s(cli_floor)}; {fmt_s(dep_floor)}",
            f"{cli - cli_floor:+.2f} s; {dep - dep_floor:+.2f} s", "≤ floor + 0.5 s",
            verdict(cli <= cli_floor + 0.5 and dep <= dep_floor + 0.5),
            f"median of {cfg.reps}; every re-run's notebook task a Cached task run; CLI: "
            "`nbprod run --spec` in its own process vs benchmarks/empty_flow.py in a fresh "
            "process; deployment: a flow run of the spec's deployment vs one of the empty "
            "flow's, each executed as a process worker does (`python -m prefect.engine`, no "
            "polling); flow-run heartbeats off in `nbprod run` (flows.prefect_settings), "
            "Prefect's default elsewhere; `nbprod run` with NBPROD_WARM_KERNELS=false, "
            f"interleaved: {fmt_s(median(no_warm))}"),
    ]  # fmt: skip


def last_json(out: str) -> dict[str, Any]:
    """The JSON object a helper script prints on its last stdout line."""
    return json.loads(out.strip().splitlines()[-1])


def deployment_run(cfg: Config, args: list[str], what: str) -> dict[str, Any]:
    """benchmarks/deployment_run.py ARGS: a deployment's flow run as a worker executes it."""
    return last_json(
        timed([sys.executable, str(HERE / "deployment_run.py"), *args], cfg, what=what)[1]
    )


def bench_p3(cfg: Config, data: dict[str, str]) -> list[Row]:
    # Quick mode trains a smaller model per point (both sides alike); full mode the defaults.
    params: dict[str, Any] = {**data, **({"n_estimators": QUICK_TREES} if cfg.quick else {})}
    seeds = list(range(1, 9))
    spec = write_spec(cfg, "bench-grid", params, grid={"seed": seeds})
    reps = 1 if cfg.quick else 3
    grid_times, seq_times = [], []
    for r in range(reps):
        elapsed, record = run_flow(cfg, spec, True, f"P3 nbprod grid #{r}")
        if record.get("status") != "completed":
            raise RuntimeError(f"grid run did not complete: {record}")
        grid_times.append(elapsed)
        started = time.perf_counter()
        for seed in seeds:
            out = cfg.work / f"grid-pm-{r}-{seed}"
            timed(papermill_cmd(cfg, "train.ipynb", out, {**params, "seed": seed}), cfg,
                  what=f"P3 papermill seed {seed}")  # fmt: skip
        seq_times.append(time.perf_counter() - started)
    log(f"P3 grid {grid_times} sequential {seq_times}")
    grid, seq = median(grid_times), median(seq_times)
    speedup = seq / grid
    what = f"n_estimators={QUICK_TREES}" if cfg.quick else "notebook defaults"
    return [
        Row("P3", f"8-point grid (seed 1..8, {what}) vs 8 sequential papermill runs",
            fmt_s(grid), fmt_s(seq), f"{speedup:.2f}× faster", "≥ 1.6× faster",
            verdict(speedup >= 1.6), f"median of {reps}; no cache")
    ]  # fmt: skip


# --- P5: serving ---------------------------------------------------------------------------------

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
    timed(papermill_cmd(cfg, "train.ipynb", out, {**data, **params}), cfg, what=f"P5 {name} model")
    model = out / "model.joblib"
    tags_file = out / "bento.json"
    package = [sys.executable, str(HERE / "package_bento.py"), str(model), str(tags_file)]
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
    serve = [sys.executable, "-m", "bentoml", "serve", tags["bento_tag"], "--host", HOST]
    serve += ["--port", str(bento_port)]
    # One OpenMP thread, like the bento (bentos/predictor.py sets it per inference thread): without
    # it the baseline's single-row predicts spin 2 OpenMP threads on 2 busy cores, 10-20x slower.
    api_env = {**cfg.env, "NBPROD_BENCH_MODEL": str(model), "OMP_NUM_THREADS": "1",
               "NBPROD_BENCH_TASK": tags["task"]}  # fmt: skip
    uvicorn = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(HERE)]
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


# --- P4 and P6 -----------------------------------------------------------------------------------


# P4 cases (see benchmarks/bench_drift.py); --quick compares two of them, in one Evidently process.
P4_CASES = ["none", "small", "large", "categorical", "half"]
P4_QUICK_CASES = ["small", "half"]
P4_MAX_PEAK_BYTES = 1.5e9  # the target's 1.5 GB, read as 10^9 bytes (the stricter reading)
# bench_drift.py results by number of rows, so the scaling section reuses P4's measurement.
DRIFT_RESULTS: dict[int, dict[str, Any]] = {}


def size_label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows >= 1_000_000 else f"{rows // 1000}k"


def fmt_mb(kib: float | None) -> str:
    return "-" if kib is None else f"{kib * 1024 / 1e6:,.0f} MB"


def drift_compare(
    cfg: Config, rows: int, cases: list[str], ev_cases: list[str], *, repeats: int, batch: bool
) -> dict[str, Any]:
    """Run benchmarks/bench_drift.py (each measurement in its own process); keep its result."""
    cmd = [sys.executable, str(HERE / "bench_drift.py"), "compare", str(rows)]
    cmd += ["--cases", ",".join(cases), "--evidently-cases", ",".join(ev_cases)]
    cmd += ["--repeats", str(repeats), *(["--batch"] if batch else [])]
    _, out = timed(cmd, cfg, what=f"drift {size_label(rows)} {cases}", timeout=3600)
    res = json.loads(out.strip().splitlines()[-1])
    DRIFT_RESULTS.setdefault(rows, {}).update(res["per_case"])
    DRIFT_RESULTS[rows]["profile"] = res["profile"]
    return res


def probe_drift(cfg: Config) -> str | None:
    """Why the drift check cannot be measured, or None."""
    if not (REPO / "flows" / "drift.py").is_file():
        return "not measured (flows/drift.py pending)"
    probe = [sys.executable, "-c", "from flows.drift import check_drift, profile_reference"]
    if subprocess.run(probe, env=cfg.env, cwd=REPO, capture_output=True, check=False).returncode:
        return "not measured (flows/drift.py does not import)"
    return None


def bench_p4(cfg: Config) -> list[Row]:
    if reason := probe_drift(cfg):
        return [Row("P4", "drift check, 1M rows × 20 columns", "-", "-", "-", "-", reason)]
    # Evidently needs 1-3 min per run at 1M rows on 2 cores: --quick measures at 100k rows and
    # compares 2 of the 5 cases, in one Evidently process (its import alone takes ~9 s).
    rows_n = 100_000 if cfg.quick else 1_000_000
    cases = P4_QUICK_CASES if cfg.quick else P4_CASES
    res = drift_compare(cfg, rows_n, cases, cases, repeats=3, batch=cfg.quick)
    log(f"P4 {json.dumps({k: v for k, v in res.items() if k != 'per_case'})}")
    size, n = size_label(rows_n), len(res["evidently_cases"])
    speedup, agreement = res["speedup"] or 0.0, res["agreement"] or 0.0
    nb_peak, ev_peak = res["nbprod_peak_kib"], res["evidently_peak_kib"]
    ok = speedup >= 10 and agreement >= 0.95 and nb_peak * 1024 <= P4_MAX_PEAK_BYTES
    per_case = res["per_case"]
    verdicts = "; ".join(
        f"{c} {len(per_case[c]['nbprod_drifted'])}/{len(per_case[c]['evidently_drifted'])}"
        for c in res["evidently_cases"]
    )
    differ = [
        f"{c}/{d['column']} (nbprod {d['nbprod']['score']:.4g} {d['nbprod']['method']}, "
        f"Evidently {d['evidently']['score']:.4g} {d['evidently']['method']})"
        for c in res["evidently_cases"]
        for d in per_case[c]["disagreements"]
    ]
    profile = res["profile"]
    with_profile = res["evidently_s"] / (res["nbprod_s"] + n * profile["profile_s"])
    note = (
        f"{n} cases ({', '.join(res['evidently_cases'])}"
        + ("; --quick: 2 of the 5, Evidently's in one process" if cfg.quick else "")
        + f"), one Evidently run and the median of {res['repeats']} check_drift runs per case "
        f"(time per window: mean over the cases); drifted columns nbprod/Evidently: "
        f"{verdicts}; same default method on {res['same_method']}/{res['compared']}"
        + (f"; verdicts differ on {', '.join(differ)}" if differ else "")
        + f". Memory, each in its own process: nbprod {fmt_mb(res['nbprod_imports_kib'])} "
        f"after imports, {fmt_mb(res['nbprod_data_kib'])} with the current window, peak "
        f"{fmt_mb(nb_peak)}; Evidently {fmt_mb(res['evidently_imports_kib'])}, "
        f"{fmt_mb(res['evidently_data_kib'])} with both frames, peak {fmt_mb(ev_peak)}. "
        f"One-off profile_reference {profile['profile_s']:.2f} s (peak "
        f"{fmt_mb(profile['peak_kib'])}, profile {profile['profile_kb']:.0f} kB); counting one "
        f"profile per window: {with_profile:.1f}× faster"
        + (
            f". --quick: the target is defined at 1M rows, this was measured at {size} rows"
            if rows_n < 1_000_000
            else ""
        )
    )
    return [
        Row("P4", "drift check (check_drift on a stored profile) vs Evidently DataDriftPreset, "
            f"{size} rows × {res['columns']} columns (reference and current window {size} "
            "each): time per window; per-column verdicts; peak RSS",
            f"{res['nbprod_s'] / n:.2f} s, peak {fmt_mb(nb_peak)}",
            f"{res['evidently_s'] / n:.2f} s, peak {fmt_mb(ev_peak)}",
            f"{speedup:.1f}× faster; {res['agree']}/{res['compared']} verdicts agree "
            f"({agreement:.1%})",
            "≥ 10× faster; ≥ 95 % same verdicts; nbprod peak ≤ 1.5 GB", verdict(ok), note)
    ]  # fmt: skip


# --- scaling curves ------------------------------------------------------------------------------

SCALING_SIZES = [10_000, 100_000, 1_000_000]
SCALING_QUICK_SIZES = [10_000, 100_000]
DRIFT_SCALING_CASE = "half"  # 10 of the 20 columns shifted
SUPERLINEAR = 1.1  # growth exponent above which a curve is flagged
PIPELINE_SAMPLE_S = 0.2


@dataclass
class Curve:
    """One line of the scaling table: a figure at each size, and how fast it grows."""

    what: str
    values: dict[int, float | None]  # rows -> figure (seconds or KiB)
    unit: str  # "s" or "KiB"
    # What the growth exponent is computed on when not on ``values`` (memory above imports).
    basis: dict[int, float | None] | None = None
    note: str = ""
    error: bool = False

    def cell(self, rows: int) -> str:
        value = self.values.get(rows)
        if value is None:
            return "-"
        if self.unit == "s":
            return f"{value:.3f} s" if value < 1 else fmt_s(value)
        extra = (self.basis or {}).get(rows)
        return fmt_mb(value) + ("" if extra is None else f" (+{fmt_mb(extra)})")


def growth(curve: Curve, n1: int, n2: int) -> float | None:
    """log(y2 / y1) / log(n2 / n1): 1 is linear, above 1 worse than linear."""
    import math

    basis = curve.basis or curve.values
    y1, y2 = basis.get(n1), basis.get(n2)
    if not y1 or not y2 or y1 <= 0 or y2 <= 0:
        return None
    return math.log(y2 / y1) / math.log(n2 / n1)


def render_scaling(curves: list[Curve], sizes: list[int], notes: list[str]) -> str:
    steps = list(itertools.pairwise(sizes))
    head = ["Curve", *(size_label(n) for n in sizes)]
    head += [f"Growth {size_label(a)}→{size_label(b)}" for a, b in steps] + ["Flag", "Notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in curves:
        exps = [growth(c, a, b) for a, b in steps]
        known = [e for e in exps if e is not None]
        flag = (
            "error" if c.error
            else "-" if not known
            else "**superlinear**" if max(known) > SUPERLINEAR
            else "linear or better"
        )  # fmt: skip
        cells = [c.what, *(c.cell(n) for n in sizes)]
        cells += ["-" if e is None else f"{e:.2f}" for e in exps] + [flag, c.note]
        lines.append("| " + " | ".join(x.replace("|", "/") for x in cells) + " |")
    text = "\n".join(lines)
    return text + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "")


def scaling_drift(cfg: Config, sizes: list[int]) -> list[Curve]:
    """nbprod's profile and check (and Evidently, full run only) at each size, case "half"."""
    if reason := probe_drift(cfg):
        return [Curve("drift check", {}, "s", note=reason)]
    case = DRIFT_SCALING_CASE
    with_evidently = not cfg.quick
    for rows in sizes:
        known = DRIFT_RESULTS.get(rows, {}).get(case)
        if known is None or (with_evidently and known["evidently"] is None):
            ev = [case] if with_evidently else []
            drift_compare(cfg, rows, [case], ev, repeats=3, batch=False)
    runs = {rows: DRIFT_RESULTS[rows] for rows in sizes}

    def pick(fn: Callable[[dict[str, Any]], float | None]) -> dict[int, float | None]:
        out: dict[int, float | None] = {}
        for rows, run in runs.items():
            try:
                out[rows] = fn(run)
            except (KeyError, TypeError):
                out[rows] = None
        return out

    def above(part: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: r[case][part]["peak_kib"] - r[case][part]["rss_imports_kib"]

    curves = [
        Curve("drift: nbprod check_drift, time per window",
              pick(lambda r: r[case]["nbprod"]["s"]), "s",
              note="median of 3, against a stored profile"),
        Curve("drift: nbprod check process, peak RSS",
              pick(lambda r: r[case]["nbprod"]["peak_kib"]), "KiB", basis=pick(above("nbprod")),
              note="growth on the peak above the process's RSS after imports"),
        Curve("drift: nbprod profile_reference (one-off), time",
              pick(lambda r: r["profile"]["profile_s"]), "s"),
        Curve("drift: nbprod profile process, peak RSS", pick(lambda r: r["profile"]["peak_kib"]),
              "KiB",
              basis=pick(lambda r: r["profile"]["peak_kib"] - r["profile"]["rss_imports_kib"]),
              note="growth on the peak above the process's RSS after imports"),
    ]  # fmt: skip
    if with_evidently:
        curves += [
            Curve("drift: Evidently DataDriftPreset, time",
                  pick(lambda r: r[case]["evidently"]["s"]), "s", note="one run per size"),
            Curve("drift: Evidently process, peak RSS",
                  pick(lambda r: r[case]["evidently"]["peak_kib"]), "KiB",
                  basis=pick(above("evidently")),
                  note="growth on the peak above the process's RSS after imports"),
        ]  # fmt: skip
    return curves


def tree_pss(proc: Any) -> int:
    """Bytes of memory a process and all its descendants use, shared pages split among the
    processes sharing them (PSS): processes share library pages (bentoml workers, kernels), and
    summing RSS would count those once per kernel."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return total


def sampled(cmd: list[str], env: dict[str, str], cfg: Config, what: str, timeout: float
            ) -> tuple[float, str, int]:  # fmt: skip
    """Run a command; return its wall time, stdout and the peak PSS (bytes) of its process tree,
    sampled every PIPELINE_SAMPLE_S seconds."""
    import psutil

    out_path, err_path = cfg.work / f"{what}.out", cfg.work / f"{what}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=err,
                                start_new_session=True)  # fmt: skip
        peak = 0
        try:
            ps = psutil.Process(proc.pid)
            while proc.poll() is None:
                peak = max(peak, tree_pss(ps))
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(f"{what} timed out after {timeout:.0f} s")
                time.sleep(PIPELINE_SAMPLE_S)
        finally:
            if proc.poll() is None:  # timed out or interrupted: stop the tree, kernels included
                with contextlib.suppress(psutil.Error):  # (they run in sessions of their own)
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            child.kill()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        elapsed = time.perf_counter() - started
    stdout, stderr = out_path.read_text(), err_path.read_text()
    with cfg.log.open("a") as handle:
        handle.write(f"\n=== {what}: {' '.join(cmd)} ({elapsed:.2f} s, rc {proc.returncode}, "
                     f"peak {peak / 1e6:.0f} MB)\n{stdout[-5000:]}{stderr[-5000:]}")  # fmt: skip
    if proc.returncode != 0:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed (rc {proc.returncode}): {' | '.join(tail)}")
    return elapsed, stdout, peak


def scaling_pipeline(cfg: Config, sizes: list[int]) -> list[Curve]:
    """One first run of training_pipeline per size (fresh NBPROD_HOME and BENTOML_HOME), against
    a Prefect server of its own; wall time of the flow call and peak PSS of the process tree."""
    port = free_port()
    env = {
        **cfg.env,
        "PREFECT_HOME": str(cfg.work / "prefect-scaling"),
        "PREFECT_API_URL": f"http://{HOST}:{port}/api",
    }
    prefect = [str(VENV_BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    runs: dict[int, dict[str, Any]] = {}
    errors: list[Curve] = []
    with server(prefect, cfg, "prefect-scaling", f"http://{HOST}:{port}/api/health", env=env):
        for rows in sizes:
            try:
                runs[rows] = pipeline_run(cfg, env, rows)
            except Exception as exc:  # a failed size must not lose the others
                log(f"SCALING pipeline {rows} failed: {exc}")
                errors.append(Curve(f"pipeline at {size_label(rows)}", {}, "s",
                                    note=str(exc)[:300], error=True))  # fmt: skip
                continue
            log(f"SCALING pipeline {rows}: {runs[rows]}")
    statuses = ", ".join(
        f"{size_label(n)} {r['rows']} rows, {r['status']}" for n, r in runs.items()
    )
    curves = [
        Curve("pipeline: training_pipeline flow call, time",
              {n: r["flow_s"] for n, r in runs.items()}, "s",
              note=f"first run per size; {statuses}"),
        Curve("pipeline: peak memory (PSS), sum over the process tree",
              {n: r["peak_bytes"] / 1024 for n, r in runs.items()}, "KiB",
              note=f"driver + kernels + bentoml serve, shared pages split "
              f"between the processes sharing them, sampled every {PIPELINE_SAMPLE_S} s; "
              "fixed per-process memory makes the growth look smaller than the data part's"),
    ]  # fmt: skip
    steps = list(dict.fromkeys(step for r in runs.values() for step in r.get("steps", {})))
    for step in steps:
        values = {n: r.get("steps", {}).get(step) for n, r in runs.items()}
        curves.append(Curve(f"pipeline step: {step}, time", values, "s"))
    return curves + errors


def pipeline_run(cfg: Config, env: dict[str, str], rows: int) -> dict[str, Any]:
    """Write the data (not measured), then one measured first run of training_pipeline."""
    folder = cfg.work / "scaling" / size_label(rows)
    cmd = [sys.executable, str(HERE / "bench_scaling.py"), "data", str(rows), str(folder / "data"),
           DEMO_SPEC]  # fmt: skip
    _, out = timed(cmd, cfg, what=f"scaling data {rows}", timeout=1800)
    data = json.loads(out.strip().splitlines()[-1])
    run_env = {
        **env,
        "NBPROD_HOME": str(folder / "nbprod"),
        "BENTOML_HOME": str(folder / "bentoml"),
    }
    cmd = [sys.executable, str(HERE / "bench_scaling.py"), "pipeline"]
    cmd += [data["data_path"], data["reference_path"], DEMO_SPEC]
    wall, out, peak = sampled(cmd, run_env, cfg, f"scaling-pipeline-{rows}", 3600)
    return {**json.loads(out.strip().splitlines()[-1]), **data, "wall_s": wall, "peak_bytes": peak}


def bench_scaling(cfg: Config) -> tuple[list[int], list[Curve], list[str]]:
    sizes = SCALING_QUICK_SIZES if cfg.quick else SCALING_SIZES
    notes = [
        f"Growth = log(y2 / y1) / log(n2 / n1) between sizes: 1 is linear; above {SUPERLINEAR} "
        "is flagged superlinear. Memory growth is computed on the peak above the process's RSS "
        "after imports where that is known (drift), on the raw peak otherwise (pipeline).",
        f"Drift curves: bench_drift.py case {DRIFT_SCALING_CASE!r}, 20 columns, reference and "
        "current window of the given size each; every measurement in its own process; memory "
        "as peak RSS (+ the part above the process's RSS after imports); figures at a size P4 "
        "measured are P4's.",
    ]
    curves: list[Curve] = []
    for name, part in (("drift", scaling_drift), ("pipeline", scaling_pipeline)):
        if name == "pipeline" and cfg.quick:
            notes.append("Pipeline curve: full run only (one training_pipeline run takes about "
                         "a minute at 10k rows; --quick must stay under 5 minutes).")  # fmt: skip
            continue
        log(f"SCALING {name} ...")
        try:
            curves += part(cfg, sizes)
        except Exception as exc:  # one broken part must not lose the other
            log(f"SCALING {name} failed: {exc}")
            curves.append(Curve(name, {}, "s", note=str(exc)[:300], error=True))
    if not cfg.quick:
        notes.append("Evidently's drift curve (10k, 100k; 1M from P4) shows the baseline's "
                     "growth for comparison.")  # fmt: skip
    else:
        notes.append("Evidently's drift curve: full run only.")
    return sizes, curves, notes


def bench_p6(cfg: Config) -> list[Row]:
    reps = 5 if cfg.quick else 11
    help_times, pass_times = [], []
    for i in range(reps):
        help_times.append(timed([str(VENV_BIN / "nbprod"), "--help"], cfg, what=f"P6 help {i}")[0])
        pass_times.append(timed([sys.executable, "-c", "pass"], cfg, what=f"P6 pass {i}")[0])
    nb, base = median(help_times), median(pass_times)
    return [
        Row("P6", "`nbprod --help` wall time vs `python -c pass`", fmt_s(nb), fmt_s(base),
            f"{nb / base:.1f}×", "≤ 0.5 s", verdict(nb <= 0.5), f"median of {reps}")
    ]  # fmt: skip


# --- the table -----------------------------------------------------------------------------------


def render(rows: list[Row]) -> str:
    head = ["Row", "Measure", "nbprod", "Baseline", "Ratio", "Target", "Result", "Notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.row, r.measure, r.nbprod, r.baseline, r.ratio, r.target, r.result, r.note]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


FINDINGS_MARKER = "<!-- Written by hand below this line; benchmarks/run.py keeps it. -->"


def write_results(
    path: Path, table: str, info: dict[str, str], flags: str, took: float, scaling: str = ""
) -> None:
    """Write the tables and the machine; keep the hand-written findings after FINDINGS_MARKER."""
    kept = ""
    if path.is_file() and FINDINGS_MARKER in (old := path.read_text()):
        kept = old.split(FINDINGS_MARKER, 1)[1]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    scaling_section = (
        f"""
## Scaling

How cost grows with the data size (time and peak memory); see benchmarks/README.md.

{scaling}
"""
        if scaling
        else ""
    )
    text = f"""# nbprod benchmark results

Generated by `make bench` (`benchmarks/run.py{flags}`) on {now},
in {took / 60:.1f} min. Do not edit the table by hand: re-run the harness.

Machine: {info["nproc"]} CPUs ({info["cpu"]}), {info["ram"]} RAM, Python {info["python"]},
{info["os"]}; load average at start {info["load"]} (the machine may be shared).
Packages: {info["packages"]}; {info["wrk"]}.

{table}

Baselines, measured in the same run: P1/P3 the same notebook through the bare `papermill` CLI;
P2 nbprod's own cold run (P1); P4 Evidently's `DataDriftPreset`; P5 a plain FastAPI + uvicorn
app with the same model and the same answers (`benchmarks/fastapi_app.py`, one worker per core
like the bento), load from `wrk` with `benchmarks/post.lua`, runs alternating; P6
`python -c pass`. See benchmarks/README.md for the method.
{scaling_section}
{FINDINGS_MARKER}"""
    path.write_text(text + (kept or "\n"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (< 5 min)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="rows to run, e.g. P1,P6 (SCALING: the curves)"
    )
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    only = {x.strip().upper() for x in args.only.split(",")}
    check_tools()
    started = time.perf_counter()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="nbprod-bench-"))
    project = make_project(work)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "NBPROD_MODEL_TAG")}
    env.update(
        PREFECT_HOME=str(work / "prefect"),
        PREFECT_API_URL=f"http://{HOST}:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        DO_NOT_TRACK="1",
        BENTOML_DO_NOT_TRACK="true",
        BENTOML_HOME=str(work / "bentoml"),
        NBPROD_HOME=str(work / "nbprod"),
        NBPROD_PROJECT_DIR=str(project),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    cfg = Config(quick=args.quick, work=work, env=env, log=work / "bench.log")
    log(f"working in {work} (log: {cfg.log})")
    rows: list[Row] = []
    curves: list[Curve] = []
    scaling = ""

    def attempt(name: str, fn: Callable[[], list[Row]], measure: str) -> None:
        if name not in only:
            return
        log(f"{name} ...")
        try:
            rows.extend(fn())
        except Exception as exc:  # one broken row must not lose the others
            log(f"{name} failed: {exc}")
            rows.append(Row(name, measure, "-", "-", "-", "-", "error", str(exc)[:300]))

    try:
        attempt("P6", lambda: bench_p6(cfg), "`nbprod --help`")
        if only & {"P1", "P2", "P3", "P5"}:
            prefect = [str(VENV_BIN / "prefect"), "server", "start", "--host", HOST]
            health = f"http://{HOST}:{port}/api/health"
            with server([*prefect, "--port", str(port)], cfg, "prefect-server", health):
                data = prepare_data(cfg)
                attempt("P1", lambda: bench_p1(cfg, data), "train notebook")
                attempt("P2", lambda: bench_p2(cfg, data), "unchanged re-run")
                attempt("P3", lambda: bench_p3(cfg, data), "8-point grid")
            attempt("P5", lambda: bench_p5(cfg, data), "serving")
        attempt("P4", lambda: bench_p4(cfg), "drift check")
        if "SCALING" in only:  # after P4, whose drift measurements it reuses
            log("SCALING ...")
            sizes, curves, notes = bench_scaling(cfg)
            scaling = render_scaling(curves, sizes, notes)
    finally:
        failed = any(r.result == "error" for r in rows) or any(c.error for c in curves)
        if args.keep or failed:
            log(f"kept {work} for inspection (log: {cfg.log})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    order = {name: i for i, name in enumerate(ALL_ROWS)}
    rows.sort(key=lambda r: order.get(r.row.split()[0], 99))
    table = render(rows)
    print(table)
    if scaling:
        print(f"\nScaling\n\n{scaling}")
    took = time.perf_counter() - started
    flags = (" --quick" if args.quick else "") + (
        f" --only {','.join(sorted(only))}" if only != set(SECTIONS) else ""
    )
    write_results(args.output, table, info, flags, took, scaling)
    log(f"done in {took:.0f} s; table written to {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
