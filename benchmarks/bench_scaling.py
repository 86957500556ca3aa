"""Scaling worker: synthetic loan data of a given size, and one ``training_pipeline`` run on it.

Usage (benchmarks/run.py drives both; each prints one JSON line as its last stdout line), with
NBPROD_PROJECT_DIR set to a project holding the demo's spec (SPEC, project-relative, e.g.
``deployments/training.yaml``), its policy and notebooks:

- ``python benchmarks/bench_scaling.py data ROWS OUT_DIR SPEC`` writes ``OUT_DIR/loans.csv`` (all
  of 2024 from ``flows.data.generate_loans(rows_per_month=ROWS // 12, seed=42)``, drift from
  October, as the bundled data) and ``OUT_DIR/reference.csv`` (January to June on the spec's
  time column, as ``flows.data.write_bundled_data`` cuts it).
- ``python benchmarks/bench_scaling.py pipeline DATA_CSV REFERENCE_CSV SPEC`` runs
  ``flows.pipeline.training_pipeline(spec=SPEC, ...)`` on them over 2024-01-01..2024-10-01, as a
  user's process would, with NBPROD_HOME, BENTOML_HOME and PREFECT_API_URL from the environment.
  Its JSON has the run's status and decision, ``import_s`` (importing the flow), ``flow_s`` (the
  flow call) and ``steps`` (each task's run time, from the Prefect API). The harness measures the
  wall time and samples the memory of this process and all its descendants (notebook kernels,
  the infra check's ``bentoml serve``).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from flows.spec import PipelineSpec

CSV_OPTIONS = {"index": False, "date_format": "%Y-%m-%dT%H:%M:%S", "lineterminator": "\n"}


def load_bench_spec(spec: str) -> PipelineSpec:
    from flows.spec import load_spec, resolve_project_path

    return load_spec(resolve_project_path(spec))


def write_data(rows: int, out_dir: Path, spec: str) -> dict[str, object]:
    from flows.data import REFERENCE_END, REFERENCE_START, generate_loans

    time_column = load_bench_spec(spec).time_column
    out_dir.mkdir(parents=True, exist_ok=True)
    loans = generate_loans(rows_per_month=max(rows // 12, 1), seed=42)
    in_reference = (loans[time_column] >= REFERENCE_START) & (loans[time_column] < REFERENCE_END)
    data, reference = out_dir / "loans.csv", out_dir / "reference.csv"
    loans.to_csv(data, **CSV_OPTIONS)
    loans[in_reference].to_csv(reference, **CSV_OPTIONS)
    return {
        "rows": len(loans),
        "reference_rows": int(in_reference.sum()),
        "data_path": str(data),
        "reference_path": str(reference),
        "data_mb": data.stat().st_size / 1e6,
    }


def task_times(flow_run_id: str | None) -> dict[str, float]:
    """Seconds per task of the flow run, by task name (Prefect's run-name suffix dropped)."""
    if not flow_run_id:
        return {}
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    steps: dict[str, float] = {}
    for run in sorted(runs, key=lambda r: r.start_time or r.expected_start_time):
        name = re.sub(r"-[0-9a-f]{3}$", "", run.name)
        steps[name] = steps.get(name, 0.0) + run.total_run_time.total_seconds()
    return steps


def run_pipeline(data: str, reference: str, spec: str) -> dict[str, object]:
    from flows.pipeline import training_pipeline

    imported = time.perf_counter()
    record = training_pipeline(
        spec=spec,
        data_path=data,
        reference_path=reference,
        start_date="2024-01-01",
        end_date="2024-10-01",
        triggered_by="bench",
    )
    finished = time.perf_counter()
    return {
        "status": record.get("status"),
        "decision": record.get("decision"),
        "reasons": record.get("reasons"),
        "error": record.get("error"),
        "import_s": imported - STARTED,
        "flow_s": finished - imported,
        "steps": task_times(record.get("flow_run_id")),
    }


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "data":
        result = write_data(int(args[0]), Path(args[1]), args[2])
    elif command == "pipeline":
        result = run_pipeline(args[0], args[1], args[2])
    else:
        sys.exit(f"unknown command {command!r}: use data or pipeline")
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
