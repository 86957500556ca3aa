"""The scaling curves: drift check and training pipeline at 10k, 100k and 1M rows."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness import (
    DEMO_SPEC,
    HERE,
    HOST,
    REPO,
    VENV_BIN,
    Config,
    fmt_s,
    free_port,
    log,
    server,
    timed,
)
from rows_drift import DRIFT_RESULTS, drift_compare, fmt_mb, probe_drift, size_label

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
    head += [f"Growth {size_label(a)}→{size_label(b)}" for a, b in steps] + [
        "Flag",
        "Notes",
    ]
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
    prefect = [
        str(VENV_BIN / "prefect"),
        "server",
        "start",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
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
    return {
        **json.loads(out.strip().splitlines()[-1]),
        **data,
        "wall_s": wall,
        "peak_bytes": peak,
    }


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
