"""Prefect's own floor for P2: the least any Prefect flow run costs, whatever it caches.

Usage: ``python benchmarks/empty_flow.py``, with PREFECT_API_URL set by benchmarks/run.py. A
fresh process imports Prefect, runs a flow whose one task does nothing, then runs it again in the
same process; Prefect as shipped (its default settings). A cache hit through Prefect cannot cost
less than this: it is still a flow run (and task runs) recorded on the server, in a process that
imported Prefect. The last stdout line is JSON: ``import_s`` (Prefect's import), ``flow_s`` (the
first call), ``resident_flow_s`` (the second call, as a process that imported Prefect earlier
would see it, after an untimed pause: SETTLE_S) and ``after_first_s`` (pause and second call:
what a fresh run's wall time leaves out). The process exits the way ``nbprod`` does
(flows.cli.run_without_teardown), so the floor and nbprod's hit end alike.

``empty_flow`` is also the entrypoint of the floor's deployment (benchmarks/deployment_run.py).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402

from prefect import flow, task  # noqa: E402

# Untimed pause before the second call. Prefect's SQLite server persists the first run's events
# just after it ends; a flow run created in those milliseconds fails with "database is locked"
# (HTTP 503) and the client retries after 2 s (PrefectHQ/prefect#18934). Runs started later, as
# a re-run is, do not meet that: the pause keeps the floor a flow run's cost, not a retry's.
SETTLE_S = 1.0


@task
def do_nothing() -> int:
    return 0


@flow
def empty_flow() -> int:
    return do_nothing()


def main() -> int:
    imported = time.perf_counter()
    empty_flow()
    first = time.perf_counter()
    time.sleep(SETTLE_S)
    started_again = time.perf_counter()
    empty_flow()
    second = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": imported - STARTED,
                "flow_s": first - imported,
                "resident_flow_s": second - started_again,
                "after_first_s": second - first,
            }
        )
    )
    return 0


if __name__ == "__main__":
    from flows.cli import run_without_teardown

    run_without_teardown(main)
