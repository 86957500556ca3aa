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
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from harness import (
    HERE,
    HOST,
    REPO,
    VENV_BIN,
    Config,
    Row,
    fmt_s,
    free_port,
    log,
    make_project,
    median,
    server,
    timed,
    verdict,
)
from rows_drift import bench_p4
from rows_notebooks import bench_p1, bench_p2, bench_p3, prepare_data
from rows_scaling import Curve, bench_scaling, render_scaling
from rows_serving import bench_p5

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


def compile_sources() -> None:
    """Byte-compile nbprod's sources, as pip does when it installs a package.

    Why: the checkout is installed editable; with bytecode writing off (PYTHONDONTWRITEBYTECODE,
    as on CI machines) every nbprod process would compile its modules again, which the
    baselines' installed packages never do.
    """
    import compileall

    for folder in ("flows", "bentos"):
        compileall.compile_dir(REPO / folder, quiet=1)


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
    head = [
        "Row",
        "Measure",
        "nbprod",
        "Baseline",
        "Ratio",
        "Target",
        "Result",
        "Notes",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.row,
            r.measure,
            r.nbprod,
            r.baseline,
            r.ratio,
            r.target,
            r.result,
            r.note,
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


FINDINGS_MARKER = "<!-- Written by hand below this line; benchmarks/run.py keeps it. -->"


def write_results(
    path: Path,
    table: str,
    info: dict[str, str],
    flags: str,
    took: float,
    scaling: str = "",
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
        "--only",
        default=",".join(SECTIONS),
        help="rows to run, e.g. P1,P6 (SCALING: the curves)",
    )
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    only = {x.strip().upper() for x in args.only.split(",")}
    check_tools()
    compile_sources()
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
