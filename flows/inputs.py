"""Data stage: the training data window, validated against the schema of the reference data.

The first notebook receives the window as a file in the source's own format (a CSV stays a CSV),
so a notebook written for the raw file reads it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flows.errors import DataValidationError
from flows.schema import DataSchema, derive_schema, read_table, validate_frame

if TYPE_CHECKING:
    import pandas as pd

    from flows.spec import PipelineSpec


@dataclass(frozen=True)
class DataSources:
    """Where a run's data comes from: the data file, the reference file, the window."""

    data: Path
    reference: Path
    window: tuple[str | None, str | None]


def data_sources(
    spec: PipelineSpec,
    data_path: str | None = None,
    reference_path: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> DataSources:
    """The spec's data, reference and window, each overridden by a value given for this run."""
    from flows.spec import resolve_project_path

    data = resolve_project_path(data_path or spec.data["data_path"]).resolve()
    reference = reference_path or spec.data.get("reference_path")
    sources = DataSources(
        data,
        resolve_project_path(reference).resolve() if reference else data,
        (start or spec.data.get("start_date"), end or spec.data.get("end_date")),
    )
    for role, path, given in (
        ("data", sources.data, data_path),
        ("reference", sources.reference, reference_path),
    ):
        if not path.is_file():
            where = f"with --{role}" if given else f"as data.{role}_path in {spec.name}'s spec"
            raise DataValidationError(
                f"{role} file {path} does not exist or is not a file: give an existing CSV or "
                f"Parquet file {where}",
                dataset=role,
            )
    return sources


@dataclass(frozen=True)
class DataWindow:
    """The rows a training run learns from, and what they were checked against."""

    frame: pd.DataFrame
    file: Path
    schema: DataSchema
    reference: pd.DataFrame
    window: tuple[str | None, str | None]


def load_data_window(spec: PipelineSpec, sources: DataSources, *, out_dir: Path) -> DataWindow:
    """Read, validate and cut the data to ``[start, end)`` on the spec's time column."""
    import pandas as pd

    data_path, reference_path = sources.data, sources.reference
    start, end = sources.window
    time_column = spec.time_column
    reference = read_table(reference_path, dataset="reference", datetime_column=time_column)
    schema = derive_schema(
        reference, target=spec.target, datetime_column=time_column, id_columns=spec.id_columns
    )
    missing = [c for c in spec.non_feature_columns if c not in reference.columns]
    if missing:
        raise DataValidationError(
            f"reference data {reference_path} lacks the spec's column(s) {missing}: fix target, "
            f"id_columns or time_column in deployments/{spec.name}.yaml",
            dataset="reference",
            columns=missing,
        )
    frame = read_table(data_path, dataset=data_path.name, datetime_column=time_column)
    validate_frame(frame, schema, dataset=data_path.name)
    if time_column and (start or end):
        times = frame[time_column]
        keep = pd.Series(True, index=frame.index)
        if start:
            keep &= times >= _bound(start, times, "start")
        if end:
            keep &= times < _bound(end, times, "end")
        if not keep.any():
            raise DataValidationError(
                f"{data_path.name} has no rows in [{start or '…'}, {end or '…'}) on "
                f"{time_column}: it covers {times.min()} to {times.max()}; widen the window",
                dataset=data_path.name,
            )
        frame = frame[keep].reset_index(drop=True)
    labelled = frame[spec.target].notna() if spec.target else None
    if labelled is not None and not labelled.any():
        raise DataValidationError(
            f"{data_path.name} has no labelled rows (target {spec.target!r} is empty) in the "
            "window: widen it or fix the data",
            dataset=data_path.name,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    file = out_dir / data_path.name
    if data_path.suffix == ".parquet":
        frame.to_parquet(file, index=False)
    else:
        frame.to_csv(file, index=False)
    return DataWindow(frame, file, schema, reference, (start, end))


def _bound(value: str, times: pd.Series, which: str) -> pd.Timestamp:
    """A window bound as a timestamp comparable with the time column (tz-aware or not)."""
    import pandas as pd

    try:
        bound = pd.Timestamp(value)
    except ValueError as exc:
        raise DataValidationError(
            f"window {which} {value!r} is not a date: write e.g. 2024-01-01", dataset="window"
        ) from exc
    tz = getattr(times.dt, "tz", None)
    if tz is not None and bound.tzinfo is None:
        return bound.tz_localize(tz)
    if tz is None and bound.tzinfo is not None:
        return bound.tz_convert(None)
    return bound
