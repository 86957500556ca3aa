"""The project's ``prefect.yaml``: the deployments ``nbprod promote`` writes for a pipeline.

A pipeline ``N`` promoted from its spec ``deployments/N.yaml`` gets:

- the deployment ``N`` (``flows.pipeline:training_pipeline`` or ``:notebook_pipeline``) with
  ``parameters: {spec: deployments/N.yaml}``, its schedule and the work pool;
- for a training pipeline, the retrain trigger on that deployment: a Prefect automation running
  it when ``nbprod.drift.detected`` arrives on the resource ``nbprod.pipeline.N`` (the
  monitoring flow emits it), on the event's retrain window;
- for a training pipeline, the deployment ``N-monitoring`` (``flows.monitoring:
  monitoring_pipeline``) that checks the last 24 hours of the service's inputs daily.

Other deployments, hand-added keys and comments are kept (ruamel.yaml round-trip; ruamel is a
dependency of Prefect). A re-promotion without a schedule keeps the existing one, and an
existing monitoring deployment of the pipeline (e.g. the bundled ``monitoring``) is kept as is.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from flows.errors import ConfigError

PREFECT_FILE = "prefect.yaml"
# Module entrypoints, not file paths: Prefect loads a file entrypoint with its folder first on
# sys.path, where flows/schema.py would shadow the `schema` package BentoML imports.
ENTRYPOINTS = {
    "training": "flows.pipeline:training_pipeline",
    "notebook": "flows.pipeline:notebook_pipeline",
}
MONITORING_ENTRYPOINT = "flows.monitoring:monitoring_pipeline"
MONITORING_CRON = "0 6 * * *"
MONITORING_WINDOW = "-24h"
DRIFT_EVENT = "nbprod.drift.detected"
# Resolved by `prefect deploy` from its environment, which `nbprod deploy` sets: the flow-run
# process then knows the project, so the pull step and the flows find it with a plain worker.
PROJECT_DIR_JOB_ENV = {"NBPROD_PROJECT_DIR": "{{ $NBPROD_PROJECT_DIR }}"}
PREFECT_FILE_TEMPLATE = """\
# Prefect project file: `prefect deploy --all` registers nbprod's pipelines, and
# `prefect worker start --pool nbprod-process` runs them. The working directory is the project.
# `nbprod promote` adds and updates deployments here; `nbprod deploy` registers them.
name: nbprod
prefect-version: 3.9.1

build: null
push: null
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{{ $NBPROD_PROJECT_DIR }}"

deployments: []
"""


def pipeline_resource(name: str) -> str:
    """The Prefect event resource of pipeline ``name``: ``nbprod.pipeline.<name>``."""
    return f"nbprod.pipeline.{name}"


def monitoring_name(name: str) -> str:
    """The monitoring deployment of pipeline ``name``: ``<name>-monitoring``."""
    return f"{name}-monitoring"


def retrain_trigger_name(name: str) -> str:
    return f"nbprod-{name}-retrain-on-drift"


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100
    # Write `build: null` as the file had it, not ruamel's bare `build:`.
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def read_prefect_file(path: Path) -> Any:
    """The round-trip document (comments and order kept); a fresh template if there is none."""
    yaml = _yaml()
    text = path.read_text(encoding="utf-8") if path.exists() else PREFECT_FILE_TEMPLATE
    try:
        doc = yaml.load(io.StringIO(text))
    except Exception as exc:  # ruamel's errors share no public base worth importing
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must be a YAML mapping with a 'deployments' list")
    if doc.get("deployments") is None:
        doc["deployments"] = []
    if not isinstance(doc["deployments"], list):
        raise ConfigError(f"{path}: field 'deployments' must be a list")
    return doc


def _entrypoint(entry: Any) -> str:
    text = str(entry.get("entrypoint"))
    return text.replace(".py:", ":").replace("/", ".")  # older file-path entries


def _find(entries: list[Any], name: str) -> Any:
    return next((d for d in entries if d.get("name") == name), None)


def check_not_claimed(path: Path, name: str, *, training: bool) -> None:
    """Refuse to turn a hand-written deployment (e.g. ``monitoring``) into a pipeline's.

    ``training``: the pipeline's ``<name>-monitoring`` deployment must be free too.
    """
    if not path.exists():
        return
    entries = read_prefect_file(path)["deployments"]
    entry = _find(entries, name)
    if entry is not None and _entrypoint(entry) not in ENTRYPOINTS.values():
        raise ConfigError(
            f"deployment {name!r} in {path} runs {entry.get('entrypoint')}, not a promoted "
            "notebook: promote under another name (--name)"
        )
    monitor = _find(entries, monitoring_name(name))
    if training and monitor is not None and _entrypoint(monitor) != MONITORING_ENTRYPOINT:
        raise ConfigError(
            f"deployment {monitoring_name(name)!r} in {path} runs {monitor.get('entrypoint')}, "
            f"not the monitoring of pipeline {name}: promote under another name (--name)"
        )


def _quoted(value: str) -> Any:
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    return DoubleQuotedScalarString(value)


def _flow_list(items: list[str]) -> Any:
    from ruamel.yaml.comments import CommentedSeq

    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def _work_pool(entry: Any, pool_name: str) -> None:
    """The pool, and the job environment carrying the project directory to flow runs."""
    from ruamel.yaml.comments import CommentedMap

    pool = entry.get("work_pool")
    if not isinstance(pool, dict):
        pool = CommentedMap()
        entry["work_pool"] = pool
    pool["name"] = pool_name
    pool.setdefault("work_queue_name", "default")
    job_variables = pool.get("job_variables")
    if not isinstance(job_variables, dict):
        job_variables = CommentedMap()
        pool["job_variables"] = job_variables
    env = job_variables.get("env")
    if not isinstance(env, dict):
        env = CommentedMap()
        job_variables["env"] = env
    for key, value in PROJECT_DIR_JOB_ENV.items():
        env[key] = _quoted(value)


def retrain_trigger(spec_file: str, name: str) -> Any:
    """The automation retraining pipeline ``name`` on the drift event's window."""
    from ruamel.yaml.comments import CommentedMap

    return CommentedMap(
        {
            "type": "event",
            "name": retrain_trigger_name(name),
            "description": "Retrain when monitoring detects drift (flows/monitoring.py).",
            "enabled": True,
            "match": CommentedMap({"prefect.resource.id": pipeline_resource(name)}),
            "expect": [DRIFT_EVENT],
            "posture": "Reactive",
            "threshold": 1,
            "within": 0,
            "parameters": CommentedMap(
                {
                    "spec": spec_file,
                    "start_date": _quoted("{{ event.payload.retrain_window.start_date }}"),
                    "end_date": _quoted("{{ event.payload.retrain_window.end_date }}"),
                    "triggered_by": _quoted("drift:{{ event.payload.monitoring_version }}"),
                }
            ),
        }
    )


def _set_trigger(entry: Any, trigger: Any | None, name: str) -> None:
    """Put (or, with None, remove) the pipeline's retrain trigger; other triggers are kept."""
    triggers = entry.get("triggers")
    kept = [
        t
        for t in (triggers if isinstance(triggers, list) else [])
        if not (isinstance(t, dict) and t.get("name") == retrain_trigger_name(name))
    ]
    if trigger is not None:
        kept.append(trigger)
    if kept:
        entry["triggers"] = kept
    elif "triggers" in entry:
        del entry["triggers"]


def _monitoring_entry(spec: Any) -> Any:
    from ruamel.yaml.comments import CommentedMap

    entry = CommentedMap()
    entry["name"] = monitoring_name(spec.name)
    entry["description"] = f"Drift of {spec.name}'s served inputs against its champion's data."
    entry["entrypoint"] = MONITORING_ENTRYPOINT
    entry["tags"] = _flow_list(["nbprod", "monitoring"])
    entry["parameters"] = CommentedMap(
        {
            "spec": spec.relative_path(),
            "start": _quoted(MONITORING_WINDOW),
            "triggered_by": "schedule",
        }
    )
    _work_pool(entry, spec.work_pool)
    entry["schedules"] = [
        CommentedMap({"cron": _quoted(MONITORING_CRON), "timezone": "UTC", "active": True})
    ]
    return entry


def _monitors(entry: Any, spec_file: str) -> bool:
    parameters = entry.get("parameters") or {}
    return _entrypoint(entry) == MONITORING_ENTRYPOINT and parameters.get("spec") == spec_file


def upsert_pipeline(path: Path, spec: Any, *, new_schedule: bool) -> list[str]:
    """Add or update (by name) the deployments of ``spec``'s pipeline; everything else is kept.

    Schedules: the spec's schedule when it has one; otherwise an existing entry keeps its
    ``schedules`` (possibly hand-written), and a new entry gets none. A training pipeline gets
    its retrain trigger and, unless one already watches its spec, its monitoring deployment; a
    notebook pipeline loses both. Returns the names of the pipeline's deployments.
    """
    from ruamel.yaml.comments import CommentedMap

    from flows.atomic import write_atomic

    check_not_claimed(path, spec.name, training=spec.flow == "training")
    doc = read_prefect_file(path)
    entries = doc["deployments"]
    entry = _find(entries, spec.name)
    if entry is None:
        entry = CommentedMap()
        entries.append(entry)
    spec_file = spec.relative_path()
    entry["name"] = spec.name
    entry["description"] = spec.description or entry.get("description") or ""
    entry["entrypoint"] = ENTRYPOINTS[spec.flow]
    entry.setdefault("tags", _flow_list(["nbprod", spec.flow]))
    # Both flows take triggered_by: the run record says a deployment started it.
    entry["parameters"] = CommentedMap({"spec": spec_file, "triggered_by": "deployment"})
    _work_pool(entry, spec.work_pool)
    if spec.schedule is not None and (new_schedule or not entry.get("schedules")):
        entry["schedules"] = [CommentedMap(spec.schedule.to_prefect())]
    elif "schedules" not in entry:
        entry["schedules"] = []
    names = [spec.name]
    monitor = _find(entries, monitoring_name(spec.name))
    if spec.flow == "training":
        _set_trigger(entry, retrain_trigger(spec_file, spec.name), spec.name)
        watching = [d for d in entries if _monitors(d, spec_file)]
        if not watching:
            watching = [_monitoring_entry(spec)]
            entries.insert(entries.index(entry) + 1, watching[0])
        names.append(str(watching[0].get("name")))
    else:
        _set_trigger(entry, None, spec.name)
        if monitor is not None and _monitors(monitor, spec_file):
            entries.remove(monitor)
    buffer = io.StringIO()
    _yaml().dump(doc, buffer)
    write_atomic(path, buffer.getvalue())
    return names
