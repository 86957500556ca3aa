"""Notebook stage: plan each notebook call, run it with papermill as a Prefect task, wire files.

A call's outputs are every file the notebook wrote into its ``output_dir`` (plus the optional
``outputs.json``'s metrics and values). A later notebook receives ``<file stem>_path`` for each
file an earlier one wrote, when it declares that parameter. Cached calls write under a
content-addressed folder that outlives the run, under a lock; a marker written after the
notebook finished says the folder is complete. A ``--no-cache`` run executes in its own folder.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from prefect import task

from flows.atomic import exclusive_lock
from flows.calls import COMPLETE_MARKER, NotebookCall, is_cached, is_complete, plan_notebook
from flows.errors import ConfigError, NotebookExecutionError
from flows.notebook import NotebookOutputs, execute_notebook, read_outputs
from flows.runner import (
    resolve_secret,
    scrub_secrets,
    scrub_text,
)
from flows.settings import NbprodSettings


def kernel_died(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a notebook only when its kernel died; a cell error would just fail again."""
    from flows.errors import KernelDiedError

    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(exc, KernelDiedError) or type(exc).__name__ == "DeadKernelError"


def _notebook_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """None (no caching) unless the caller computed a content key for this execution."""
    return parameters.get("cache_key")


@task(
    name="run-notebook",
    retries=1,
    retry_delay_seconds=1,
    retry_condition_fn=kernel_died,
    cache_key_fn=_notebook_cache_key,
    persist_result=True,
    task_run_name="run-notebook-{name}",
)
def run_notebook(
    name: str,
    notebook: Path,
    executed: Path,
    parameters: dict[str, Any],
    kernel_name: str,
    timeout_s: int,
    cache_key: str | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
    warm_kernel: bool = True,
    threads: int | None = None,
) -> NotebookOutputs:
    out_dir = Path(parameters["output_dir"])
    # Runs with the same content key share the folder: one executes, the others then reuse it.
    with folder_lock(out_dir.parent):
        marker = out_dir.parent / COMPLETE_MARKER
        if cache_key is not None and is_complete(marker, executed, cache_key):
            return replace(read_outputs(notebook.name, out_dir), executed=executed)
        marker.unlink(missing_ok=True)
        shutil.rmtree(out_dir, ignore_errors=True)  # a re-execution never mixes with stale files
        out_dir.mkdir(parents=True, exist_ok=True)
        execute_scrubbed(
            notebook, executed, parameters, kernel_name, timeout_s, secrets, warm_kernel, threads
        )
        outputs = read_outputs(notebook.name, out_dir)
        if cache_key is not None:
            marker.write_text(cache_key, encoding="utf-8")
    return replace(outputs, executed=executed)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``<folder>.lock`` for the block (released if the process dies)."""
    with exclusive_lock(folder.with_name(folder.name + ".lock")):
        yield


def execute_scrubbed(
    notebook: Path,
    executed: Path,
    parameters: dict[str, Any],
    kernel_name: str,
    timeout_s: int,
    secrets: dict[str, dict[str, str]] | None,
    warm_kernel: bool,
    threads: int | None = None,
) -> None:
    """Execute with the secrets' values; no file or error message it leaves holds one."""
    out_dir = Path(parameters["output_dir"])
    values = {k: resolve_secret(k, ref) for k, ref in (secrets or {}).items()}
    leaked: NotebookExecutionError | None = None
    try:
        execute_notebook(
            notebook,
            executed,
            {**parameters, **values},
            kernel_name=kernel_name,
            timeout_s=timeout_s,
            warm_kernel=warm_kernel,
            threads=threads,
        )
    except Exception as exc:
        redacted = scrub_text(str(exc), values.values())
        if redacted == str(exc):
            raise
        # The message names a secret (a cell printed it into its error): what Prefect, the run
        # store and the terminal record is the scrubbed message, with no trace of the original.
        leaked = NotebookExecutionError(
            redacted,
            notebook=notebook.name,
            cell_index=getattr(exc, "cell_index", None),
            executed_path=str(executed),
        )
    finally:
        scrub_secrets(
            [executed, executed.with_suffix(".html"), *sorted(out_dir.rglob("*"))],
            values.values(),
        )
    if leaked is not None:
        raise leaked  # outside the except block: no __context__ holding the secret


def notebook_planner(
    settings: NbprodSettings, private_dir: Path | None = None
) -> partial[NotebookCall]:
    """``plan_notebook`` bound to these settings' cache and kernel.

    ``private_dir``: a ``--no-cache`` run executes there, never in the shared cache folder that
    another run with the same inputs may be reading.
    """
    home = private_dir or settings.home
    return partial(plan_notebook, home=home, kernel_name=settings.kernel_name)


def must_refresh(call: NotebookCall, forced: bool) -> bool:
    """Re-execute when asked to, or when this home's cache folder is not complete.

    Prefect's cache record says an execution happened; the files live under NBPROD_HOME, which
    may have been cleaned, or may be another home sharing the same Prefect server.
    """
    return forced or not is_cached(call)


def from_state(call: NotebookCall, state: Any) -> tuple[NotebookOutputs, str]:
    """Outputs are read back from this call's own folder, never from a pickled path."""
    state.result()  # raises the task's exception if it failed
    outputs = read_outputs(call.notebook.name, call.output_dir)
    status = "hit" if state.name == "Cached" else "miss"
    return replace(outputs, executed=call.executed), status


def call_notebook(
    call: NotebookCall, settings: NbprodSettings, *, refresh: bool
) -> tuple[NotebookOutputs, str]:
    """Run (or reuse) one notebook; returns its outputs and 'hit' or 'miss'."""
    task_fn = run_notebook.with_options(refresh_cache=must_refresh(call, refresh))
    state = task_fn(**call.task_arguments(settings), return_state=True)
    return from_state(call, state)


Ranker = Callable[[NotebookOutputs], float | None]
# Threads of the flows' task runner (flows.pipeline): at most this many tasks run at once.
FLOW_TASK_THREADS = 4


def run_grid(
    calls: list[NotebookCall],
    points: list[dict[str, Any]],
    settings: NbprodSettings,
    *,
    rank: Ranker,
    metric: str,
    higher_is_better: bool,
    no_cache: bool,
) -> tuple[NotebookOutputs, int, dict[str, Any]]:
    """Run every grid point concurrently on the flow's task runner; keep all, pick the best.

    ``rank`` gives a point's score on ``metric`` from its outputs (None: it has none).
    """
    if len(calls) == 1:
        outputs, status = call_notebook(calls[0], settings, refresh=no_cache)
        return outputs, 0, {"cache": {calls[0].name: status}}
    at_once = points_at_once(settings, len(calls))
    # The kernels running at once share this machine's cores (a cluster's workers count theirs).
    threads = max(1, (os.cpu_count() or 1) // at_once) if at_once else None
    slots = threading.Semaphore(at_once or len(calls))  # a point starts once another ends
    futures = []
    for i, c in enumerate(calls):
        slots.acquire()
        future = run_notebook.with_options(
            task_run_name=f"run-notebook-{c.name}-grid-{i}",
            refresh_cache=must_refresh(c, no_cache),
        ).submit(**c.task_arguments(settings), threads=threads)
        future.add_done_callback(lambda _done: slots.release())
        futures.append(future)
    results: list[dict[str, Any]] = []
    outputs_by_index: dict[int, NotebookOutputs] = {}
    first_error: BaseException | None = None
    for i, (future, point) in enumerate(zip(futures, points, strict=True)):
        future.wait()
        entry: dict[str, Any] = {"index": i, "parameters": point}
        try:
            out, entry["cache"] = from_state(calls[i], future.state)
        except Exception as exc:
            first_error = first_error or exc
            entry.update(status="failed", cache="miss", error=str(exc))
        else:
            score = rank(out)
            entry.update(status="completed", metrics={metric: score} if score is not None else {})
            outputs_by_index[i] = out
        results.append(entry)
    if not outputs_by_index:
        assert first_error is not None
        raise first_error
    scored = [r for r in results if r["status"] == "completed" and metric in r["metrics"]]
    if not scored:
        raise ConfigError(
            f"no grid point of {calls[0].notebook.name} has the ranking metric {metric!r}: "
            "it must write a model and holdout (training) or report the metric in outputs.json"
        )
    best = (max if higher_is_better else min)(scored, key=lambda r: r["metrics"][metric])["index"]
    record = {
        "metric": metric,
        "higher_is_better": higher_is_better,
        "best_index": best,
        "best_parameters": points[best],
        "points": results,
        "cache": {f"{calls[0].name}-grid-{r['index']}": r["cache"] for r in results},
    }
    return outputs_by_index[best], best, record


def points_at_once(settings: NbprodSettings, points: int) -> int | None:
    """Grid points in flight when this process's threads run the tasks (on its cores):
    ``settings.notebooks_at_once`` at most, and no more than the flow's task threads; None when
    a cluster (Dask) schedules them."""
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    context = FlowRunContext.get()
    if context is None or not isinstance(context.task_runner, ThreadPoolTaskRunner):
        return None
    return min(points, settings.notebooks_at_once, FLOW_TASK_THREADS)


def wire_inputs(produced: dict[str, Path], declared: dict[str, Any]) -> dict[str, str]:
    """Files earlier notebooks wrote, as ``<stem>_path`` for the parameters this one declares."""
    return {
        f"{name}_path": str(path) for name, path in produced.items() if f"{name}_path" in declared
    }


PointScorer = Callable[[dict[str, NotebookOutputs], NotebookOutputs], float | None]


def reported_metric(metric: str) -> PointScorer:
    """Score a grid point by the metric its notebook reports in outputs.json."""
    return lambda _earlier, out: out.metrics.get(metric)


def start_kernels_ahead(
    plans: list[Any], first_calls: list[NotebookCall], settings: NbprodSettings
) -> None:
    """Start the chain's kernels ahead of need in a run nothing started them for (a
    deployment's), as ``nbprod run`` does before Prefect loads: not when the first notebook's
    calls are all cached, nor when tasks run in other processes (a Dask cluster)."""
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.kernels import active_kernel_pool, start_kernel_pool

    if not settings.warm_kernels or active_kernel_pool() is not None:
        return
    if all(is_cached(call) for call in first_calls):
        return
    context = FlowRunContext.get()
    if context is None or not isinstance(context.task_runner, ThreadPoolTaskRunner):
        return
    start_kernel_pool([plan.path for plan in plans for _ in plan.points], settings.kernel_name)


def run_chain(
    plans: list[Any],
    run: Any,
    *,
    first_inputs: dict[str, Any],
    no_cache: bool,
    ranking: tuple[str, bool],
    score_point: PointScorer,
) -> dict[str, NotebookOutputs]:
    """Run the planned notebooks in order (each grid in parallel); outputs by notebook stem.

    ``run`` is the :class:`flows.runs.Run` in progress: the calls, executed notebooks, stored
    parameters and cache outcomes are recorded on it as they happen.
    """
    from flows.notebook import declared_parameters

    plan_call = notebook_planner(run.settings, run.workdir if no_cache else None)
    produced: dict[str, Path] = {}
    outputs: dict[str, NotebookOutputs] = {}
    cache: dict[str, str] = {}
    for index, plan in enumerate(plans):
        run.at(plan.stem)
        run.notebooks[plan.stem] = plan.path
        wired = {
            **(first_inputs if index == 0 else {}),
            **wire_inputs(produced, declared_parameters(plan.path)),
        }
        calls = [
            plan_call(
                plan.stem, plan.path, {**plan.parameters, **point, **wired}, secrets=plan.secrets
            )
            for point in plan.points
        ]
        if index == 0:
            start_kernels_ahead(plans, calls, run.settings)
        for i, call in enumerate(calls):
            run.executed[plan.stem if len(calls) == 1 else f"{plan.stem}-grid-{i}"] = call.executed
        earlier = dict(outputs)
        out, best, grid = run_grid(
            calls,
            plan.points,
            run.settings,
            rank=lambda o, earlier=earlier: score_point(earlier, o),
            metric=ranking[0],
            higher_is_better=ranking[1],
            no_cache=no_cache,
        )
        cache.update(grid["cache"])
        run.parameters[plan.stem] = calls[best].stored_parameters()
        if len(calls) > 1:
            run.executed[plan.stem] = calls[best].executed
            run.record.setdefault("grid", {})[plan.stem] = grid
            for i, call in enumerate(calls):
                if call.output_dir.exists():
                    run.store.put_tree(run.version, f"grid/{plan.stem}/{i}", call.output_dir)
        outputs[plan.stem] = out
        produced.update(out.outputs)
    run.record["cache"] = cache
    print("notebook cache: " + ", ".join(f"{k} {v}" for k, v in cache.items()))
    return outputs
