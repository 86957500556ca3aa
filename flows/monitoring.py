"""The monitoring flow: is production data still like the pipeline champion's training data?

``monitoring_pipeline`` reads the pipeline's spec (its time column and non-feature columns) and
champion, a window of production inputs (the service's inference log, or a batch file), checks
it against the champion's training window with the fast check of ``flows.drift`` on every row,
writes Evidently's drift and data-summary reports (on a sample when the window is large:
Evidently is the slow part), and stores everything as a versioned run (``kind: "monitoring"``,
status ``completed``) in the same run store as training runs. When the drift policy is crossed
it emits the Prefect event ``nbprod.drift.detected`` on the resource ``nbprod.pipeline.<name>``,
which the pipeline's deployment trigger turns into a retraining run.

What a champion version must hold (the training flow stores both): ``reference_profile.json``
(:class:`flows.drift.ReferenceProfile` of the training window's feature columns) and
``inputs/data.parquet`` (that training window).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import drift_table, drift_table_markdown, figure_titles, figures_markdown
from flows.drift import DriftPolicy, DriftResult, ReferenceProfile, check_drift
from flows.errors import MonitoringError
from flows.lineage import DRIFT_TABLE_LIMIT, PROFILE_FILE, WINDOW_FILE, store_drift_figure
from flows.store import RunStore

if TYPE_CHECKING:
    import pandas as pd

    from flows.runs import Run
    from flows.spec import PipelineSpec

DRIFT_EVENT = "nbprod.drift.detected"
# Where a training run stored its data window and the window's drift profile (flows.lineage).
TRAINING_WINDOW_FILE = WINDOW_FILE
# The inference log's request time: the window's time column when the spec names none (or the
# rows do not carry it, as served requests do not).
LOG_TIME_COLUMN = "timestamp"
# Evidently needs tens of seconds per 100k rows; above this the reports use a seeded sample.
EVIDENTLY_MAX_ROWS = 50_000
SUMMARY_KEY = "nbprod-monitoring-summary"
DRIFT_FIGURE_LABELS = ("champion's training data", "production inputs")


# -- the production window ---------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """Production inputs to check: the rows, where they came from, the column time was read from."""

    rows: pd.DataFrame
    kind: str
    time_column: str | None


def parse_bound(value: str | None, name: str) -> pd.Timestamp | None:
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
    """Compare like with like: the log's timestamps are UTC-aware, batch files are often naive."""
    aware = getattr(column.dtype, "tz", None) is not None
    if aware and bound.tzinfo is None:
        return bound.tz_localize("UTC")
    if not aware and bound.tzinfo is not None:
        return bound.tz_convert("UTC").tz_localize(None)
    return bound


def read_source(source: str) -> tuple[pd.DataFrame, str]:
    """Every row of an inference-log folder or a batch .csv/.parquet file or URL, and its kind."""
    import pandas as pd

    from flows.inference_log import read_inference_log

    local = Path(source).expanduser()
    try:
        if "://" not in source and local.is_dir():
            return read_inference_log(local), "inference log"
        if source.endswith(".parquet"):
            return pd.read_parquet(source), "parquet file"
        if source.endswith((".csv", ".csv.gz")):
            return pd.read_csv(source), "csv file"
    except FileNotFoundError as exc:
        raise MonitoringError(f"monitoring source {source} does not exist") from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MonitoringError(f"monitoring source {source} cannot be read: {exc}") from exc
    if "://" not in source and not local.exists():
        raise MonitoringError(f"monitoring source {source} does not exist")
    raise MonitoringError(
        f"monitoring source {source!r} is neither an inference-log folder nor a "
        ".csv/.parquet file or URL"
    )


def served_by(frame: pd.DataFrame, model_name: str | None) -> pd.DataFrame:
    """Logged rows answered by the model ``model_name`` (any version): a log folder can hold
    several pipelines' requests. Rows without a model tag are kept."""
    if model_name is None or "model_tag" not in frame.columns:
        return frame
    names = frame["model_tag"].astype("string").str.split(":").str[0]
    keep = names.isna() | (names == model_name)
    return frame.loc[keep.astype(bool)].reset_index(drop=True)


def read_window(
    source: str,
    start: str | None,
    end: str | None,
    *,
    time_column: str | None = None,
    model_name: str | None = None,
) -> Window:
    """Production inputs in ``[start, end)`` from an inference-log folder or a batch file/URL.

    Time is read from ``time_column`` (the spec's), else the log's ``timestamp``; without
    ``start`` and ``end`` every row is used, with them a source without either column is an
    error. ``model_name`` keeps an inference log's rows of that model only.
    """
    import pandas as pd

    frame, kind = read_source(source)
    if kind == "inference log":
        frame = served_by(frame, model_name)
    candidates = [c for c in (time_column, LOG_TIME_COLUMN) if c]
    used = next((c for c in candidates if c in frame.columns), None)
    lo, hi = parse_bound(start, "start"), parse_bound(end, "end")
    if lo is None and hi is None:
        return Window(frame, kind, used)
    if used is None:
        raise MonitoringError(
            f"monitoring source {source} has no time column ({' or '.join(candidates)}): "
            "drop --start/--end to use every row"
        )
    stamps = frame[used]
    if not pd.api.types.is_datetime64_any_dtype(stamps):
        stamps = pd.to_datetime(stamps, errors="coerce", format="ISO8601")
    keep = pd.Series(True, index=frame.index)
    if lo is not None:
        keep &= stamps >= _align(lo, stamps)
    if hi is not None:
        keep &= stamps < _align(hi, stamps)
    return Window(frame.loc[keep].reset_index(drop=True), kind, used)


# -- the champion's reference ------------------------------------------------------------------
@dataclass(frozen=True)
class ChampionReference:
    """What the window is compared with: the champion's feature profile and training window."""

    version: str
    profile: ReferenceProfile
    data_path: str


def require_champion(store: RunStore, pipeline: str) -> dict[str, Any]:
    """The pipeline's champion pointer; none is a clear error (there is nothing to compare)."""
    champion = store.champion(pipeline)
    if champion is None:
        raise MonitoringError(
            f"pipeline {pipeline} has no champion yet: monitoring compares production data "
            f"with the champion's training data, run `nbprod run --spec deployments/"
            f"{pipeline}.yaml` first"
        )
    return champion


def model_name_of(champion: dict[str, Any]) -> str | None:
    """The BentoML model name in the champion's tag (``name:version``)."""
    tag = champion.get("model_tag")
    return str(tag).split(":", 1)[0] if tag else None


def champion_reference(
    store: RunStore, champion: dict[str, Any], spec: PipelineSpec
) -> ChampionReference:
    """The champion's stored profile, restricted to features (never the spec's ids, time or
    target), and where its training window is."""
    version = champion["version"]
    profile_path = store.version_path(version, PROFILE_FILE)
    data_path = store.version_path(version, TRAINING_WINDOW_FILE)
    paths = {PROFILE_FILE: profile_path, TRAINING_WINDOW_FILE: data_path}
    missing = [rel for rel, path in paths.items() if not store.fs.exists(path)]
    if missing:
        raise MonitoringError(
            f"champion {version} of pipeline {spec.name} has no stored {' or '.join(missing)}: "
            "retrain (`nbprod run`) or roll back to a version that has them"
        )
    profile = ReferenceProfile.from_dict(store.read_json(profile_path))
    features = profile.without(spec.non_feature_columns)
    if not features.columns:
        raise MonitoringError(
            f"champion {version}'s reference profile has no feature column outside the spec's "
            f"id, time and target columns {spec.non_feature_columns}"
        )
    return ChampionReference(version, features, data_path)


def load_training_window(store: RunStore, reference: ChampionReference) -> pd.DataFrame:
    import pandas as pd

    with store.fs.open(reference.data_path, "rb") as fh:
        return pd.read_parquet(fh)


def drift_policy_for(spec: PipelineSpec, given: dict[str, Any] | DriftPolicy | None) -> DriftPolicy:
    """The spec's drift policy (or Evidently's defaults), with ``given`` fields on top."""
    from pydantic import ValidationError

    if isinstance(given, DriftPolicy):
        return given
    base = spec.drift.model_dump() if spec.drift is not None else {}
    try:
        return DriftPolicy.model_validate({**base, **(given or {})})
    except ValidationError as exc:
        raise MonitoringError(f"drift policy of {spec.name} is invalid: {exc}") from exc


# -- what drift sets off -----------------------------------------------------------------------
def retrain_end(window: Window, end: str | None, spec: PipelineSpec) -> str | None:
    """Where the retraining data window ends (a date): the window's end, else after its last row.

    None when the spec has no time column: training then uses all its data. Why the whole
    labelled history up to there (the spec's start is kept): the drifted period is short and its
    labels few; an expanding window learns it without forgetting the rest, and the gate then
    compares candidate and champion on the newest rows.
    """
    import pandas as pd

    if spec.time_column is None:
        return None
    bound = parse_bound(end, "end")
    if bound is None:
        column = window.time_column
        latest = (
            pd.to_datetime(window.rows[column], errors="coerce", format="ISO8601", utc=True).max()
            if column is not None
            else pd.NaT
        )
        bound = (latest if pd.notna(latest) else pd.Timestamp.now(tz="UTC")) + pd.Timedelta("1ns")
    if bound.tzinfo is not None:
        bound = bound.tz_convert("UTC").tz_localize(None)
    # The training window is [start, end) on dates: round a time of day up.
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


def emit_drift_event(pipeline: str, payload: dict[str, Any]) -> dict[str, Any]:
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


# -- Prefect tasks -----------------------------------------------------------------------------
@task(name="fast-drift-check", cache_policy=NO_CACHE)
def fast_drift_check(
    profile: ReferenceProfile, current: pd.DataFrame, policy: DriftPolicy
) -> DriftResult:
    return check_drift(profile, current, policy)


@task(name="monitoring-reports", cache_policy=NO_CACHE)
def monitoring_reports(
    reference: pd.DataFrame, current: pd.DataFrame, profile: ReferenceProfile, out_dir: Path
) -> dict[str, Any]:
    """Evidently's drift and data-summary reports on the profiled features, on a seeded sample
    of a large window."""
    from flows.reports import ColumnRoles, write_data_drift_report, write_data_summary_report

    roles = ColumnRoles(numerical=list(profile.numerical), categorical=list(profile.categorical))
    sampled = len(current) > EVIDENTLY_MAX_ROWS
    if sampled:
        current = current.sample(EVIDENTLY_MAX_ROWS, random_state=0)
    if len(reference) > EVIDENTLY_MAX_ROWS:
        reference = reference.sample(EVIDENTLY_MAX_ROWS, random_state=0)
    features = roles.features
    drift = write_data_drift_report(reference[features], current[features], roles, out_dir)
    summary = write_data_summary_report(current, roles, out_dir, reference=reference)
    return {"sampled": sampled, "rows": len(current), "reports": [drift, summary]}


# -- run bookkeeping (flows.runs), monitoring's part -------------------------------------------
def store_drift(run: Run, result: DriftResult, policy: DriftPolicy) -> None:
    drift = result.to_dict()
    run.put_json("drift.json", {**drift, "policy": policy.model_dump()})
    run.record["drift"] = {k: v for k, v in drift.items() if k != "columns"}
    run.record["drift"]["table"] = drift_table(drift["columns"])[:DRIFT_TABLE_LIMIT]
    run.record["reasons"] = [result.reason]


def store_reports(run: Run, reports: dict[str, Any]) -> None:
    for files in reports["reports"]:
        run.put_file(f"reports/{files.json.name}", files.json)
        run.put_file(f"reports/{files.html.name}", files.html, link=f"{files.name} report")
    evidently_drift = reports["reports"][0].summary
    run.record["evidently"] = {
        "sampled": reports["sampled"],
        "rows": reports["rows"],
        "drift_share": evidently_drift["drift_share"],
        "drifted_columns": evidently_drift["drifted_columns"],
        "dataset_drift": evidently_drift["dataset_drift"],
    }


# -- the flow ----------------------------------------------------------------------------------
@flow(name="monitoring_pipeline", log_prints=True)
def monitoring_pipeline(
    spec: str,
    start: str | None = None,
    end: str | None = None,
    source: str | None = None,
    triggered_by: str = "manual",
    run_store_url: str | None = None,
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check a window of production inputs against the pipeline champion's training window.

    ``spec``: the training pipeline's spec (``deployments/<name>.yaml``). ``source`` defaults to
    the service's inference log folder (``$NBPROD_INFERENCE_LOG_DIR``, else
    ``$BENTOML_HOME/inference_logs``), which the scheduled deployment watches. ``policy`` (a
    DriftPolicy as a dict) overrides the spec's ``drift`` section. Returns the stored record.
    """
    from flows.inference_log import default_inference_log_dir
    from flows.runs import begin, conclude, recorded

    pipeline = monitored_spec(spec)
    drift_policy = drift_policy_for(pipeline, policy)  # a bad policy fails before a version
    source = source or str(default_inference_log_dir())
    run = begin(
        "monitoring_pipeline",
        pipeline.name,
        run_store_url,
        triggered_by,
        publish=publish_monitoring_artifacts,
    )
    run.record.update(kind="monitoring", spec=pipeline.relative_path(), source=source)
    run.record.update(window=[start, end], champion_version=None, event=None)
    with recorded(run):
        run.at("champion")
        champion = require_champion(run.store, pipeline.name)
        # Monitoring never moves the champion.
        run.record.update(champion_version=champion["version"], champion_before=champion)
        run.record["champion_after"] = champion
        run.at("read-window")
        window = read_production_window(run, source, (start, end), pipeline, champion)
        run.at("reference")
        reference = load_reference(run, champion, pipeline)
        run.at("drift")
        result = check_window(run, reference, window, drift_policy)
        if result.verdict != "no_verdict":
            run.at("reports")
            training = load_training_window(run.store, reference)
            store_reports(
                run,
                monitoring_reports(
                    training, window.rows, reference.profile, run.workdir / "reports"
                ),
            )
            table = run.record["drift"]["table"]
            store_drift_figure(run, training, window.rows, table, DRIFT_FIGURE_LABELS)
        if result.verdict == "drift":
            run.at("event")
            alert(run, pipeline, champion, result, window, (start, end))
        return conclude(run, "completed")


def monitored_spec(spec: str) -> Any:
    """The training spec a monitoring run watches; a notebook spec has no champion to watch."""
    from flows.spec import load_spec

    pipeline = load_spec(spec)
    if pipeline.flow != "training":
        raise MonitoringError(
            f"{spec} is a notebook pipeline: only training pipelines have a champion"
        )
    return pipeline


def read_production_window(
    run: Any, source: str, bounds: tuple[str | None, str | None], pipeline: Any, champion: dict
) -> Any:
    """The rows the champion answered in ``bounds``, from the inference log or a batch file."""
    window = read_window(
        source,
        bounds[0],
        bounds[1],
        time_column=pipeline.time_column,
        model_name=model_name_of(champion),
    )
    run.record["source_kind"] = window.kind
    get_run_logger().info("monitoring %s rows from %s %s", len(window.rows), window.kind, source)
    return window


def load_reference(run: Any, champion: dict, pipeline: Any) -> Any:
    """The champion's training window profile, recorded as the run's reference."""
    reference = champion_reference(run.store, champion, pipeline)
    run.record["reference"] = {
        "version": reference.version,
        "file": TRAINING_WINDOW_FILE,
        "rows": reference.profile.rows,
    }
    return reference


def check_window(run: Any, reference: Any, window: Any, drift_policy: DriftPolicy) -> DriftResult:
    """The fast drift check of the window against the reference, recorded."""
    result = fast_drift_check(reference.profile, window.rows, drift_policy)
    store_drift(run, result, drift_policy)
    get_run_logger().info("drift: %s — %s", result.verdict, result.reason)
    return result


def alert(
    run: Any,
    pipeline: Any,
    champion: dict,
    result: DriftResult,
    window: Any,
    bounds: tuple[str | None, str | None],
) -> None:
    """Emit the drift event the pipeline's retrain trigger listens for."""
    retrain = retrain_end(window, bounds[1], pipeline)
    payload = event_payload(
        pipeline.name, champion["version"], result, list(bounds), run.version, retrain
    )
    run.record["event"] = emit_drift_event(pipeline.name, payload)
    get_run_logger().warning("drift detected: emitted %s for %s", DRIFT_EVENT, pipeline.name)


# -- the run on one page -----------------------------------------------------------------------
def summary_markdown(
    record: dict[str, Any], links: dict[str, str], notice: str | None = None
) -> str:
    """The monitoring run on one page: the verdict, why, the drifted columns, the reports."""
    drift = record.get("drift") or {}
    window = record.get("window") or [None, None]
    lines = [
        f"# nbprod monitoring `{record.get('version')}`: **{drift.get('verdict', '—')}**",
        "",
        f"- pipeline: `{record.get('pipeline')}`; champion `{record.get('champion_version')}`",
        f"- window: {window[0] or 'start'} → {window[1] or 'end'} ({drift.get('rows')} rows "
        f"from {record.get('source_kind')} `{record.get('source')}`)",
        f"- {drift.get('reason') or record.get('error') or ''}",
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
    table = drift_table_markdown(drift)
    if table:
        lines += ["## Columns, most drifted first", "", *table, ""]
    lines += figures_markdown(record, links, "drift")
    pictures = figure_titles(record)
    files = [f"- [{name}]({url})" for name, url in links.items() if name not in pictures]
    if files:
        lines += ["## Reports", "", *files, ""]
    if notice and files:
        lines += [f"_{notice}_", ""]
    return "\n".join(lines)


def publish_monitoring_artifacts(record: dict[str, Any], links: dict[str, str]) -> None:
    from prefect.artifacts import create_markdown_artifact

    from flows.artifacts import publish_links
    from flows.links import resolve_links

    resolved = resolve_links(links)
    create_markdown_artifact(
        markdown=summary_markdown(record, resolved.urls, resolved.notice),
        key=SUMMARY_KEY,
        description=f"nbprod monitoring {record.get('version')}",
    )
    publish_links(record, resolved.urls, resolved.expires, prefix="monitoring ")


__all__ = [
    "DRIFT_EVENT",
    "PROFILE_FILE",
    "TRAINING_WINDOW_FILE",
    "ChampionReference",
    "Window",
    "champion_reference",
    "emit_drift_event",
    "event_payload",
    "monitoring_pipeline",
    "read_window",
    "retrain_end",
]
