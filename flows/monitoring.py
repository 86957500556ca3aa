"""The monitoring flow: is production data still like the champion's training data?

``monitoring_pipeline`` reads a window of production inputs (the service's inference log, or a
batch file), checks it against the champion's training data with the fast check of
``flows.drift`` on every row, writes Evidently's drift and data-summary reports (on a sample
when the window is large: Evidently is the slow part), and stores everything as a versioned
run (``kind: "monitoring"``, status ``completed``) in the same run store as training runs. When
the drift policy is crossed it emits the Prefect event ``nbprod.drift.detected``, which a
deployment trigger can turn into a retraining run.

The plain functions (:func:`read_window`, :func:`champion_reference`, :func:`event_payload`)
carry the logic; the flow orders them and does the bookkeeping.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.drift import DriftPolicy, DriftResult, ReferenceProfile, check_drift, profile_reference
from flows.errors import MonitoringError
from flows.store import RunStore

if TYPE_CHECKING:
    import pandas as pd

    from flows.schema import DataSchema

DRIFT_EVENT = "nbprod.drift.detected"
PROFILE_FILE = "reference_profile.json"
TRAIN_FILE = "outputs/prepare/train.parquet"
# Evidently needs tens of seconds per 100k rows; above this the reports use a seeded sample.
EVIDENTLY_MAX_ROWS = 50_000
TIME_COLUMNS = ("application_date", "timestamp")
SUMMARY_KEY = "nbprod-monitoring-summary"


def _parse_bound(value: str | None, name: str) -> pd.Timestamp | None:
    """A date, or ``-<duration>`` (``-24h``, ``-7d``) before now: scheduled runs slide."""
    import pandas as pd

    if value is None:
        return None
    try:
        if value.startswith("-"):
            return pd.Timestamp.now(tz="UTC") - pd.Timedelta(value[1:])
        return pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise MonitoringError(
            f"--{name} {value!r} is neither a date (2024-10-01) nor a duration before now (-24h)"
        ) from exc


def _align(bound: pd.Timestamp, column: pd.Series) -> pd.Timestamp:
    """Compare like with like: the log's timestamps are UTC-aware, batch files are naive."""
    aware = getattr(column.dtype, "tz", None) is not None
    if aware and bound.tzinfo is None:
        return bound.tz_localize("UTC")
    if not aware and bound.tzinfo is not None:
        return bound.tz_convert("UTC").tz_localize(None)
    return bound


def read_window(source: str, start: str | None, end: str | None) -> tuple[pd.DataFrame, str]:
    """Production inputs in ``[start, end)`` from an inference-log folder or a batch file/URL.

    Returns the rows and a description of where they came from. Batch files are filtered on
    their application timestamp (``application_date``), logs on the request ``timestamp``.
    """
    import pandas as pd

    from flows.serving import read_inference_log

    local = Path(source).expanduser()
    try:
        if "://" not in source and local.is_dir():
            frame = read_inference_log(local)
            kind = "inference log"
        elif source.endswith(".parquet"):
            frame = pd.read_parquet(source)
            kind = "parquet file"
        elif source.endswith(".csv") or source.endswith(".csv.gz"):
            frame = pd.read_csv(source)
            kind = "csv file"
        else:
            raise MonitoringError(
                f"monitoring source {source!r} is neither an inference-log folder nor a "
                ".csv/.parquet file or URL"
            )
    except FileNotFoundError as exc:
        raise MonitoringError(f"monitoring source {source} does not exist") from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MonitoringError(f"monitoring source {source} cannot be read: {exc}") from exc
    lo, hi = _parse_bound(start, "start"), _parse_bound(end, "end")
    if lo is None and hi is None:
        return frame, kind
    time_column = next((c for c in TIME_COLUMNS if c in frame.columns), None)
    if time_column is None:
        raise MonitoringError(
            f"monitoring source {source} has no time column ({' or '.join(TIME_COLUMNS)}): "
            "drop --start/--end to use every row"
        )
    stamps = frame[time_column]
    if not pd.api.types.is_datetime64_any_dtype(stamps):
        stamps = pd.to_datetime(stamps, errors="coerce", format="ISO8601")
    keep = pd.Series(True, index=frame.index)
    if lo is not None:
        keep &= stamps >= _align(lo, stamps)
    if hi is not None:
        keep &= stamps < _align(hi, stamps)
    return frame.loc[keep].reset_index(drop=True), kind


def champion_reference(
    store: RunStore, champion: dict[str, Any], workdir: Path
) -> tuple[DataSchema, ReferenceProfile, Path, bool]:
    """The champion's schema, drift profile and training file; True when the profile was stored.

    A profile stored with the champion run is used as is; otherwise it is computed from the
    run's ``outputs/prepare/train.parquet`` (and kept in the monitoring run).
    """
    from flows.schema import DataSchema

    version = champion["version"]
    try:
        schema = DataSchema.from_dict(store.read_json(store.version_path(version, "schema.json")))
        train = store.fetch(version, TRAIN_FILE, workdir / "reference" / "train.parquet")
    except (OSError, KeyError) as exc:
        raise MonitoringError(
            f"champion {version} has no stored training data ({TRAIN_FILE}, schema.json): "
            "roll back to a complete run or retrain"
        ) from exc
    profile_path = store.version_path(version, PROFILE_FILE)
    if store.fs.exists(profile_path):
        return schema, ReferenceProfile.from_dict(store.read_json(profile_path)), train, True
    import pandas as pd

    frame = pd.read_parquet(train)
    return schema, profile_reference(frame, schema.numerical, schema.categorical), train, False


def retrain_end(current: pd.DataFrame, end: str | None) -> str:
    """Where the retraining data window ends (a date): the window's end, else after its last row.

    Why the whole labelled history up to there (the spec's start is kept): the drifted period is
    short and its labels few; an expanding window learns it without forgetting the rest, and
    the gate then compares candidate and champion on the newest rows.
    """
    import pandas as pd

    bound = _parse_bound(end, "end")
    if bound is None:
        column = next((c for c in TIME_COLUMNS if c in current.columns), None)
        latest = (
            pd.to_datetime(current[column], errors="coerce", format="ISO8601", utc=True).max()
            if column is not None
            else pd.NaT
        )
        bound = (latest if pd.notna(latest) else pd.Timestamp.now(tz="UTC")) + pd.Timedelta("1ns")
    if bound.tzinfo is not None:
        bound = bound.tz_convert("UTC").tz_localize(None)
    # The prepare notebook's window is [start, end) on dates: round a time of day up.
    return bound.ceil("D").strftime("%Y-%m-%d")


def event_payload(
    pipeline: str,
    champion_version: str,
    result: DriftResult,
    window: list[str | None],
    version: str,
    retrain_end_date: str | None = None,
) -> dict[str, Any]:
    """What a retraining automation (or a person) needs to know about the drift.

    ``retrain_window`` is what prefect.yaml's trigger passes to the training deployment
    (``start_date`` null: the spec's own start).
    """
    return {
        "pipeline": pipeline,
        "champion_version": champion_version,
        "drift_share": result.drift_share,
        "drift_share_threshold": result.drift_share_threshold,
        "drifted_columns": result.drifted_columns,
        "window": {"start": window[0], "end": window[1]},
        "rows": result.rows,
        "monitoring_version": version,
        "retrain_window": {"start_date": None, "end_date": retrain_end_date},
    }


def emit_drift_event(pipeline: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """``nbprod.drift.detected`` on the pipeline's resource; returns what was sent."""
    from prefect.events import emit_event

    resource = {
        "prefect.resource.id": f"nbprod.pipeline.{pipeline}",
        "prefect.resource.name": pipeline,
    }
    event = emit_event(event=DRIFT_EVENT, resource=resource, payload=payload)
    return {
        "event": DRIFT_EVENT,
        "id": str(event.id) if event is not None else None,
        "resource": resource,
        "payload": payload,
        "sent": event is not None,
    }


def summary_markdown(record: dict[str, Any], links: dict[str, str]) -> str:
    """The monitoring run on one page: the verdict, why, the drifted columns, the reports."""
    drift = record.get("drift") or {}
    window = record.get("window") or [None, None]
    lines = [
        f"# nbprod monitoring `{record.get('version')}`: **{drift.get('verdict', '—')}**",
        "",
        f"- pipeline: `{record.get('spec')}`; champion `{record.get('champion_version')}`",
        f"- window: {window[0] or 'start'} → {window[1] or 'end'} ({drift.get('rows')} rows "
        f"from {record.get('source_kind')} `{record.get('source')}`)",
        f"- {drift.get('reason', '')}",
    ]
    if drift.get("drift_share") is not None:
        lines.append(
            f"- drift share: {drift['drift_share']:.2f} (policy: {drift['drift_share_threshold']})"
        )
        lines.append(
            f"- drifted columns: {', '.join(drift.get('drifted_columns') or []) or 'none'}"
        )
    evidently = record.get("evidently") or {}
    if evidently.get("sampled"):
        lines.append(
            f"- Evidently reports on a sample of {evidently['rows']} rows "
            f"(of {drift.get('rows')}); the verdict above uses every row"
        )
    if record.get("event"):
        lines.append(f"- event `{DRIFT_EVENT}` emitted (id `{record['event'].get('id')}`)")
    lines.append("")
    if links:
        lines += ["## Reports", ""] + [f"- [{name}]({url})" for name, url in links.items()]
    return "\n".join(lines)


def publish_monitoring_artifacts(record: dict[str, Any], links: dict[str, str]) -> None:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    from flows.artifacts import artifact_key

    create_markdown_artifact(
        markdown=summary_markdown(record, links),
        key=SUMMARY_KEY,
        description=f"nbprod monitoring {record.get('version')}",
    )
    for name, url in links.items():
        create_link_artifact(
            link=url,
            link_text=name,
            key=artifact_key(f"monitoring {name}"),
            description=f"monitoring {record.get('version')}: {name}",
        )


@task(name="fast-drift-check", cache_policy=NO_CACHE)
def fast_drift_check(
    profile: ReferenceProfile, current: pd.DataFrame, policy: DriftPolicy
) -> DriftResult:
    return check_drift(profile, current, policy)


@task(name="monitoring-reports", cache_policy=NO_CACHE)
def monitoring_reports(
    reference: pd.DataFrame, current: pd.DataFrame, schema: DataSchema, out_dir: Path
) -> dict[str, Any]:
    """Evidently's drift and data-summary reports, on a seeded sample of a large window."""
    from flows.reports import ColumnRoles, write_data_drift_report, write_data_summary_report

    roles = ColumnRoles(numerical=schema.numerical, categorical=schema.categorical)
    sampled = len(current) > EVIDENTLY_MAX_ROWS
    if sampled:
        current = current.sample(EVIDENTLY_MAX_ROWS, random_state=0)
    if len(reference) > EVIDENTLY_MAX_ROWS:
        reference = reference.sample(EVIDENTLY_MAX_ROWS, random_state=0)
    features = roles.features
    drift = write_data_drift_report(reference[features], current[features], roles, out_dir)
    summary = write_data_summary_report(current, roles, out_dir, reference=reference)
    return {"sampled": sampled, "rows": len(current), "reports": [drift, summary]}


def _policy(spec_policy: Any, given: dict[str, Any] | DriftPolicy | None) -> DriftPolicy:
    """The spec's drift policy (or Evidently's defaults), with ``given`` fields on top."""
    from pydantic import ValidationError

    if isinstance(given, DriftPolicy):
        return given
    base = spec_policy.model_dump() if hasattr(spec_policy, "model_dump") else spec_policy
    try:
        return DriftPolicy.model_validate({**(base or {}), **(given or {})})
    except ValidationError as exc:
        raise MonitoringError(f"drift policy is invalid: {exc}") from exc


@flow(name="monitoring_pipeline", log_prints=True)
def monitoring_pipeline(
    source: str | None = None,
    start: str | None = None,
    end: str | None = None,
    spec: str = "deployments/training.yaml",
    run_store_url: str | None = None,
    triggered_by: str = "manual",
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check a window of production inputs against the champion's training data.

    ``source`` defaults to the service's inference log folder (``$NBPROD_INFERENCE_LOG_DIR``,
    else ``$BENTOML_HOME/inference_logs``), which is what the scheduled deployment watches.
    ``policy`` (a DriftPolicy as a dict) overrides the spec's ``drift`` section; without either,
    Evidently's defaults apply. Returns the stored run record.
    """
    from flows.pipeline import _record_failure, _resolve, begin_run
    from flows.spec import load_spec

    logger = get_run_logger()
    if source is None:
        from flows.serving import default_inference_log_dir

        source = str(default_inference_log_dir())
    _, store, state, record = begin_run("monitoring_pipeline", run_store_url, triggered_by)
    version = state.version
    champion = store.champion()
    record.update(
        kind="monitoring",
        source=source,
        window=[start, end],
        champion_version=champion["version"] if champion else None,
        champion_before=champion,
        champion_after=champion,
    )
    links: dict[str, str] = {}
    try:
        state.step = "load-spec"
        loaded = load_spec(_resolve(spec))
        record["spec"] = loaded.name
        drift_policy = _policy(getattr(loaded, "drift", None), policy)
        if champion is None:
            raise MonitoringError(
                "no champion yet: monitoring compares production data with the champion's "
                "training data, run `nbprod run` first"
            )
        state.step = "read-window"
        current, kind = read_window(source, start, end)
        record["source_kind"] = kind
        logger.info("monitoring %s rows from %s %s", len(current), kind, source)

        state.step = "reference"
        schema, profile, train_path, stored = champion_reference(store, champion, state.workdir)
        record["reference"] = {
            "version": champion["version"],
            "file": TRAIN_FILE,
            "rows": profile.rows,
            "profile": "stored with the champion" if stored else "computed from its train.parquet",
        }
        store.put_json(version, PROFILE_FILE, profile.to_dict())

        state.step = "drift"
        result = fast_drift_check(profile, current, drift_policy)
        drift = result.to_dict()
        store.put_json(version, "drift.json", {**drift, "policy": drift_policy.model_dump()})
        record["drift"] = {k: v for k, v in drift.items() if k != "columns"}
        record["reasons"] = [result.reason]
        logger.info("drift: %s — %s", result.verdict, result.reason)

        if result.verdict != "no_verdict":
            state.step = "reports"
            import pandas as pd

            reports = monitoring_reports(
                pd.read_parquet(train_path), current, schema, state.workdir / "reports"
            )
            for files in reports["reports"]:
                for path in (files.html, files.json):
                    store.put_file(version, f"reports/{path.name}", path)
                links[f"{files.name} report"] = store.uri(version, f"reports/{files.html.name}")
            evidently_drift = reports["reports"][0].summary
            record["evidently"] = {
                "sampled": reports["sampled"],
                "rows": reports["rows"],
                "drift_share": evidently_drift["drift_share"],
                "drifted_columns": evidently_drift["drifted_columns"],
                "dataset_drift": evidently_drift["dataset_drift"],
            }
            if reports["sampled"]:
                logger.info(
                    "Evidently reports use a sample of %s of %s rows",
                    reports["rows"],
                    len(current),
                )

        record["event"] = None
        if result.verdict == "drift":
            state.step = "event"
            payload = event_payload(
                loaded.name,
                champion["version"],
                result,
                [start, end],
                version,
                retrain_end_date=retrain_end(current, end),
            )
            record["event"] = emit_drift_event(loaded.name, payload)
            logger.warning("drift detected: emitted %s for %s", DRIFT_EVENT, loaded.name)

        final = store.finalize(version, {**record, "status": "completed"})
        _publish(final, links, logger)
        shutil.rmtree(state.workdir, ignore_errors=True)
        return final
    except BaseException as exc:
        _record_failure(store, state, record, links, exc, logger)
        raise


DASHBOARD_PROJECT = "nbprod"
DASHBOARD_TAB = "Data drift"
MODEL_TAB = "Model quality"
# Stored Evidently snapshots loaded into the workspace: (file, suffix of the snapshot's name).
DASHBOARD_REPORTS = (("reports/data_drift.json", ""), ("reports/model_performance.json", "-model"))


def dashboard_panels() -> list[tuple[str, Any]]:
    """(tab, panel): drift share over time (monitoring and training runs alike), and the
    holdout metrics of every training run over versions. Panel titles are unique: an existing
    workspace gains the panels it lacks."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel

    return [
        (
            DASHBOARD_TAB,
            line_plot_panel(
                title="Share of drifted columns",
                values=[
                    PanelMetric(
                        legend="share",
                        metric="DriftedColumnsCount",
                        metric_labels={"value_type": "share"},
                    )
                ],
            ),
        ),
        (
            DASHBOARD_TAB,
            bar_plot_panel(
                title="Drifted columns",
                values=[
                    PanelMetric(
                        legend="count",
                        metric="DriftedColumnsCount",
                        metric_labels={"value_type": "count"},
                    )
                ],
            ),
        ),
        (
            MODEL_TAB,
            line_plot_panel(
                title="Model metrics over versions (holdout)",
                values=[
                    PanelMetric(legend="ROC AUC", metric="RocAuc"),
                    PanelMetric(legend="F1", metric="F1Score"),
                    PanelMetric(legend="accuracy", metric="Accuracy"),
                ],
            ),
        ),
    ]


def sync_dashboard(store: RunStore, workspace: Path, project_name: str = DASHBOARD_PROJECT) -> int:
    """Load every stored Evidently report snapshot into a local Evidently workspace.

    Drift reports of monitoring and training runs (drift share over time) and the model
    performance reports of training runs (model metrics over versions). Why a sync and not a
    write at run time: the run store is the record, any fsspec URL; the workspace is a local
    view of it that can be rebuilt at will. Idempotent: a snapshot already in the workspace
    (named after its run version) is not added again. Returns how many snapshots were added.
    """
    import tempfile

    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(workspace))
    found = ws.search_project(project_name)
    project = (
        found[0]
        if found
        else ws.create_project(
            project_name, description="nbprod: drift of production and training data, model quality"
        )
    )
    titles = {panel.title for panel in project.dashboard.model().panels}
    for tab, panel in dashboard_panels():
        if panel.title not in titles:
            project.dashboard.add_panel(panel, tab=tab)
    present = {
        model.name
        for sid in ws.list_runs(project.id)
        if (model := ws.get_run(project.id, sid)) is not None
    }
    added = 0
    with tempfile.TemporaryDirectory() as tmp:
        for run in store.list_runs():
            version = run["version"]
            stored = store.files(version)
            for rel, suffix in DASHBOARD_REPORTS:
                name = f"{version}{suffix}"
                if name in present or rel not in stored:
                    continue
                local = store.fetch(version, rel, Path(tmp) / f"{name}.json")
                ws.add_run(project.id, Snapshot.load(str(local)), name=name)
                added += 1
    return added


def _publish(record: dict[str, Any], links: dict[str, str], logger: Any) -> None:
    try:
        publish_monitoring_artifacts(record, links)
    except Exception as exc:
        logger.warning("could not publish Prefect artifacts for %s: %s", record["version"], exc)


__all__ = [
    "DRIFT_EVENT",
    "champion_reference",
    "emit_drift_event",
    "event_payload",
    "monitoring_pipeline",
    "read_window",
]
