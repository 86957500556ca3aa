"""Run bookkeeping shared by every flow: begin a version, record a failure, conclude.

Every run ends with exactly one ``run.json`` (accepted, rejected, completed or failed), written
last by :func:`conclude` or, on any exception, by :func:`recorded`; what the run produced until
then (executed notebooks above all) is stored either way.
"""

from __future__ import annotations

import json
import shutil
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.errors import NbprodError, PackagingError, RunStoreError
from flows.faults import checkpoint
from flows.gc import PROCESS_FILE, process_record
from flows.links import public_url
from flows.progress import show_step
from flows.run_records import new_version_id, utc_now
from flows.settings import NbprodSettings, load_settings
from flows.store import ChampionMove, RunStore

# triggered_by of a retraining run started by a monitoring run's drift event (prefect.yaml).
DRIFT_TRIGGER_PREFIX = "drift:"


Publisher = Callable[[dict[str, Any], dict[str, str]], None]


@dataclass
class Run:
    """One run in progress: its version, its record so far, and what it has produced."""

    settings: NbprodSettings
    store: RunStore
    version: str
    workdir: Path
    record: dict[str, Any]
    step: str = "start"
    links: dict[str, str] = field(default_factory=dict)
    notebooks: dict[str, Path] = field(default_factory=dict)
    # Stored name (a notebook's stem, or stem-grid-N) -> executed .ipynb, known before execution.
    executed: dict[str, Path] = field(default_factory=dict)
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Publishes the finished record and links as Prefect artifacts (a flow may bring its own).
    publish: Publisher | None = None
    # The bento built for this run (flows.release.Package) until the run is listed accepted.
    package: Any = None
    # The champion move an accepted run makes together with its run record.
    crown: ChampionMove | None = None

    def at(self, step: str) -> None:
        """Name the step in progress: a failure is recorded against it."""
        self.step = step
        checkpoint(f"step:{step}")
        show_step(step)

    def put_json(self, rel: str, obj: Any) -> None:
        self.store.put_json(self.version, rel, obj)

    def put_file(self, rel: str, path: Path, link: str | None = None) -> None:
        self.store.put_file(self.version, rel, path)
        if link:
            self.links[link] = public_url(self.store, self.version, rel)


def begin(
    flow_name: str,
    pipeline: str,
    run_store_url: str | None,
    triggered_by: str,
    publish: Publisher | None = None,
) -> Run:
    """Reserve a new run version and start its record; ``publish`` defaults to the run summary."""
    from prefect.context import FlowRunContext

    from flows.paths import default_bentoml_home

    default_bentoml_home()
    settings = load_settings()
    store = RunStore(run_store_url or settings.resolved_run_store_url)
    version = new_version_id()
    flow_ctx = FlowRunContext.get()
    record: dict[str, Any] = {
        "pipeline": pipeline,
        "flow": flow_name,
        "started_at": utc_now(),
        "flow_run_id": str(flow_ctx.flow_run.id) if flow_ctx and flow_ctx.flow_run else None,
        "triggered_by": triggered_by,
        "trigger": parse_trigger(triggered_by),
    }
    store.begin(version)
    owner = process_record(record["flow_run_id"])  # nbprod gc: is this version still running?
    store.put_json(version, PROCESS_FILE, owner)
    workdir = settings.scratch_dir / version
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / PROCESS_FILE).write_text(json.dumps(owner), encoding="utf-8")
    return Run(settings, store, version, workdir, record, publish=publish)


def parse_trigger(triggered_by: str) -> dict[str, str] | None:
    """``drift:<monitoring version>`` (the retrain automation's triggered_by) as a record field."""
    if not triggered_by.startswith(DRIFT_TRIGGER_PREFIX):
        return None
    cause = triggered_by[len(DRIFT_TRIGGER_PREFIX) :].strip()
    return {"kind": "drift", "monitoring_version": cause} if cause else None


def store_notebooks(run: Run) -> None:
    """Copy the executed notebooks (and their HTML) into the version; link the kept ones."""
    for name, ipynb in run.executed.items():
        for path in (ipynb, ipynb.with_suffix(".html")):
            if path.exists():
                rel = f"notebooks/{name}{path.suffix}"
                link = None if "-grid-" in name else f"{name} notebook ({path.suffix[1:]})"
                run.put_file(rel, path, link)


@contextmanager
def recorded(run: Run) -> Iterator[Run]:
    """Record any exception as the run's failure (run.json says failed), then re-raise it."""
    try:
        yield run
    except BaseException as exc:
        from flows.warmup import wait_for_all_warm_ups

        record_failure(run, exc)
        wait_for_all_warm_ups()
        raise


def record_failure(run: Run, exc: BaseException) -> None:
    """Keep what exists (notebooks above all) and mark the version failed, never half-written."""
    message = str(exc) if isinstance(exc, NbprodError) else f"{type(exc).__name__}: {exc}"
    try:
        store_notebooks(run)
        if run.fingerprints:
            run.put_json("fingerprints.json", run.fingerprints)
        if run.parameters:
            run.put_json("parameters.json", run.parameters)
        run.put_json(
            "error.json",
            {
                "step": run.step,
                "error": message,
                "type": type(exc).__name__,
                "traceback": traceback.format_exception(exc),
            },
        )
        final = run.store.finalize(
            run.version,
            {
                **{k: v for k, v in run.record.items() if k not in ("model_tag", "bento_tag")},
                "status": "failed",
                "decision": None,
                "failed_step": run.step,
                "error": message,
                "champion_after": run.record.get("champion_before"),
            },
        )
        _link_and_publish(run, final)
    except (OSError, RunStoreError, PackagingError) as store_exc:  # pragma: no cover
        _logger().error("could not record failure of run %s: %s", run.version, store_exc)
    finally:
        discard_package(run)
        shutil.rmtree(run.workdir, ignore_errors=True)  # what is worth keeping is in the version


def discard_package(run: Run) -> None:
    """Delete the bento and model of a run that did not become champion (idempotent)."""
    if run.package is None:
        return
    from flows.packaging import delete_package

    try:
        delete_package(run.package.model_tag, run.package.bento_tag)
        run.package = None
    except Exception as exc:  # nbprod gc removes it later
        _logger().warning("could not delete the bento of failed run %s: %s", run.version, exc)


def conclude(run: Run, status: str) -> dict[str, Any]:
    """Store the notebooks, write run.json last, link and publish; the scratch space goes."""
    store_notebooks(run)
    crown = run.crown if status == "accepted" else None
    final = run.store.finalize(run.version, {**run.record, "status": status}, crown=crown)
    run.package = None  # listed accepted: the bento is the champion's now
    _link_and_publish(run, final)
    shutil.rmtree(run.workdir, ignore_errors=True)
    return final


def followup_record(record: dict[str, Any]) -> dict[str, Any]:
    """What the causing monitoring run shows of this run: its outcome and the reasons."""
    after = record.get("champion_after") or {}
    return {
        "version": record["version"],
        "kind": "retraining",
        "pipeline": record.get("pipeline"),
        "status": record.get("status"),
        "reasons": record.get("reasons") or ([record["error"]] if record.get("error") else []),
        "window": record.get("window"),
        "champion_after": after.get("version"),
        "flow_run_id": record.get("flow_run_id"),
        "finished_at": record.get("finished_at"),
    }


def _link_and_publish(run: Run, record: dict[str, Any]) -> None:
    """After finalize: link a drift-triggered run back to its monitoring run, then publish."""
    logger = _logger()
    cause = (record.get("trigger") or {}).get("monitoring_version")
    if cause:
        try:
            run.store.add_followup(cause, followup_record(record))
            run.links[f"monitoring run {cause}"] = public_url(run.store, cause)
        except (OSError, RunStoreError) as exc:
            logger.warning(
                "could not link run %s to monitoring run %s: %s", record["version"], cause, exc
            )
    from flows.artifacts import publish_run_artifacts

    try:
        (run.publish or publish_run_artifacts)(record, run.links)
    except Exception as exc:
        logger.warning("could not publish Prefect artifacts for %s: %s", record["version"], exc)


def _logger() -> Any:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        import logging

        return logging.getLogger("nbprod")
