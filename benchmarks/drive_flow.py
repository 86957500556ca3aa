"""Run ``flows.pipeline.notebook_pipeline`` once, as a user's process would; print its record.

Usage: ``python benchmarks/drive_flow.py SPEC [--no-cache]``, with NBPROD_PROJECT_DIR,
NBPROD_HOME and PREFECT_API_URL set by benchmarks/run.py. Like ``nbprod run``, it starts the
warm kernel server (flows.kernels) before importing Prefect and runs the flow with the same
Prefect settings (flows.prefect_settings). The last stdout line is JSON with the run's status
and cache outcome, and where the time went: ``import_s`` (importing the flow, i.e. Prefect and
nbprod) and ``flow_s`` (the flow call itself); the rest of the process's wall time is
interpreter start-up and exit.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402


def main() -> None:
    spec = sys.argv[1]
    from flows.cli import prestart_kernels

    no_cache = "--no-cache" in sys.argv
    # As `nbprod run` does: warm kernels start while Prefect loads (none for a cached re-run).
    prestart_kernels(spec, "notebook_pipeline", None, no_cache)
    from flows.pipeline import notebook_pipeline
    from flows.prefect_settings import command_flow_settings

    imported = time.perf_counter()
    with command_flow_settings():  # as `nbprod run` does
        record = notebook_pipeline(spec=spec, no_cache=no_cache, triggered_by="bench")
    finished = time.perf_counter()
    result = {
        "status": record["status"],
        "cache": record.get("cache"),
        "import_s": imported - STARTED,
        "flow_s": finished - imported,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    from flows.cli import run_without_teardown

    run_without_teardown(lambda: main() or 0)  # and exits as the `nbprod` command does
