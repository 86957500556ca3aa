"""What the columns of the user's data are: the target's task, the id columns, the time column.

``nbprod promote --target T --data FILE`` reads the data (CSV or Parquet, with pandas) and infers
what the user did not say, printing one line per inference so a wrong guess is seen and fixed
with the flag the line names. The rules:

- task: :func:`flows.tasks.infer_task` (labels → classification, a quantity → regression);
- id columns: every value present and unique, integers or strings (never floats, booleans or
  dates), and named like an id — ``id``, ``key``, ``uuid``, ``guid``, or ending in ``id``,
  ``_key``, ``_uuid``, ``_guid``, in any case (``customer_id``, ``CustomerID``, ``patientid``);
- time column: a datetime column, or a text column that pandas parses as dates in every row. More
  than one candidate is an error asking for ``--time-column``.

What cannot be used is a :class:`~flows.errors.ConfigError` of one line naming the flag.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flows.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from flows.tasks import TaskName

TABLE_SUFFIXES = (".csv", ".parquet")
ID_NAMES = ("id", "key", "uuid", "guid")
ID_SUFFIXES = ("id", "_key", "_uuid", "_guid")
SHOWN_COLUMNS = 12


@dataclass
class Domain:
    """What a training spec says about the data, and one line per decision for the user."""

    task: TaskName
    target: str
    id_columns: list[str]
    time_column: str | None
    messages: list[str] = field(default_factory=list)


def _listing(columns: Sequence[str]) -> str:
    shown = ", ".join(str(c) for c in columns[:SHOWN_COLUMNS])
    more = len(columns) - SHOWN_COLUMNS
    return shown + (f", ... ({more} more)" if more > 0 else "")


def read_data(path: Path, flag: str, shown: Path | None = None) -> pd.DataFrame:
    """The whole table at ``path`` (``.csv`` or ``.parquet``); problems name ``flag`` and
    ``shown`` (the path as the user wrote it, default ``path``)."""
    import pandas as pd

    shown = shown or path
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ConfigError(f"{flag} {shown}: nbprod reads .csv or .parquet files")
    if not path.is_file():
        raise ConfigError(f"{flag} {shown}: file not found")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{flag} {shown}: cannot be read as a table: {exc}") from exc
    except ValueError as exc:  # pyarrow's and pandas' format errors
        raise ConfigError(f"{flag} {shown}: cannot be read as a table: {exc}") from exc


def named_like_id(name: str) -> bool:
    """``id``, ``key``, ``uuid``, ``guid``, or ending in ``id``/``_key``/``_uuid``/``_guid``."""
    lower = str(name).strip().lower()
    return lower in ID_NAMES or lower.endswith(ID_SUFFIXES)


def is_identifier(values: pd.Series) -> bool:
    """Every value present and unique, and integers or strings."""
    import pandas as pd

    if values.empty or values.isna().any() or pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_integer_dtype(values):
        return bool(values.is_unique)
    if pd.api.types.is_string_dtype(values) or values.dtype == object:
        return bool(values.map(lambda v: isinstance(v, str)).all() and values.is_unique)
    return False


def parse_dates(values: pd.Series) -> pd.Series:
    """The values as datetimes, NaT where a value is not a date (pandas' own inference)."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format": NaT rows answer it
        return pd.to_datetime(values, errors="coerce")


def is_time_column(values: pd.Series) -> bool:
    """A datetime column, or text that parses as dates in every row."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    if values.empty or not (pd.api.types.is_string_dtype(values) or values.dtype == object):
        return False
    if not values.map(lambda v: isinstance(v, str)).all():
        return False
    return bool(parse_dates(values).notna().all())


def describe_target(task: TaskName, target: pd.Series) -> str:
    """``binary: 2 classes in 'churned'``, ``numeric 'price', 412 distinct values``."""
    distinct = int(target.nunique(dropna=True))
    if task == "classification":
        kind = "binary" if distinct <= 2 else "multiclass"
        return f"{kind}: {distinct} classes in {target.name!r}"
    return f"numeric {target.name!r}, {distinct} distinct values"


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], flag: str, source: Path) -> None:
    for column in columns:
        if column not in frame.columns:
            raise ConfigError(
                f"{flag} {column}: not a column of {source} "
                f"(columns: {_listing(list(frame.columns))})"
            )


def _task(frame: pd.DataFrame, target: str, task: TaskName | None) -> tuple[TaskName, str]:
    import pandas as pd

    from flows.tasks import infer_task

    values = frame[target]
    if task is None:
        task = infer_task(values)
        how = "inferred; --task to set it"
    else:
        if values.dropna().empty:
            raise ConfigError(f"--target {target}: the column has no values")
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if task == "regression" and not numeric:
            raise ConfigError(
                f"--task regression: target {target!r} is not numeric ({values.dtype}): "
                "use --task classification"
            )
        how = "given (--task)"
    return task, f"task: {task} ({describe_target(task, values)}) — {how}"


def _ids(
    frame: pd.DataFrame, target: str, given: Sequence[str] | None, source: Path
) -> tuple[list[str], str]:
    if given:
        _check_columns(frame, given, "--id-column", source)
        if target in given:
            raise ConfigError(f"--id-column {target}: it is the target (--target)")
        return list(given), f"id columns: {', '.join(given)} — given (--id-column)"
    found = [
        str(c)
        for c in frame.columns
        if c != target and named_like_id(c) and is_identifier(frame[c])
    ]
    if found:
        return found, (
            f"id columns: {', '.join(found)} (unique, named like an id) — inferred; "
            "--id-column to set them"
        )
    return [], (
        "id columns: none (no unique column named like an id) — inferred; --id-column to name them"
    )


def _time(
    frame: pd.DataFrame, taken: Sequence[str], given: str | None, source: Path
) -> tuple[str | None, str]:
    if given:
        _check_columns(frame, [given], "--time-column", source)
        if given in taken:
            raise ConfigError(f"--time-column {given}: it is already the target or an id column")
        if not is_time_column(frame[given]):
            bad = int(parse_dates(frame[given].astype(str)).isna().sum())
            raise ConfigError(
                f"--time-column {given}: not a column of dates ({frame[given].dtype}; {bad} of "
                f"{len(frame)} rows of {source} do not parse as dates)"
            )
        return given, f"time column: {given} — given (--time-column)"
    found = [str(c) for c in frame.columns if c not in taken and is_time_column(frame[c])]
    if len(found) > 1:
        raise ConfigError(
            f"--time-column: {source} has {len(found)} date columns ({', '.join(found)}): "
            "name the one the data window and monitoring use with --time-column"
        )
    if found:
        return found[0], (
            f"time column: {found[0]} (dates in every row) — inferred; --time-column to set it"
        )
    return None, (
        "time column: none (no column of dates; no data window, monitoring reads every row) "
        "— inferred; --time-column to name one"
    )


def check_window(
    frame: pd.DataFrame, time_column: str | None, start: str | None, end: str | None, source: Path
) -> None:
    """``--start``/``--end`` are dates, in order, on a time column, and select some rows."""
    import pandas as pd

    if start is None and end is None:
        return
    if time_column is None:
        raise ConfigError(
            f"--start/--end: {source} has no time column to window on: name one with "
            "--time-column, or drop --start/--end"
        )
    stamps = parse_dates(frame[time_column])
    bounds: dict[str, pd.Timestamp] = {}
    for flag, value in (("--start", start), ("--end", end)):
        if value is None:
            continue
        try:
            stamp = pd.Timestamp(value)
        except ValueError as exc:
            raise ConfigError(f"{flag} {value}: not a date (write e.g. 2024-01-31)") from exc
        tz = getattr(stamps.dt, "tz", None)
        if tz is not None:
            stamp = stamp.tz_localize(tz) if stamp.tzinfo is None else stamp.tz_convert(tz)
        elif stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        bounds[flag] = stamp
    if "--start" in bounds and "--end" in bounds and bounds["--start"] >= bounds["--end"]:
        raise ConfigError(f"--start {start} is not before --end {end}")
    selected = stamps.notna()
    if "--start" in bounds:
        selected &= stamps >= bounds["--start"]
    if "--end" in bounds:
        selected &= stamps < bounds["--end"]
    if not selected.any():
        raise ConfigError(
            f"--start/--end select no rows of {source}: its {time_column!r} spans "
            f"{stamps.min()} to {stamps.max()}"
        )


def infer_domain(
    frame: pd.DataFrame,
    *,
    source: Path,
    target: str,
    task: TaskName | None = None,
    id_columns: Sequence[str] | None = None,
    time_column: str | None = None,
) -> Domain:
    """The task, id columns and time column of ``frame``: given ones checked, others inferred."""
    _check_columns(frame, [target], "--target", source)
    chosen_task, task_line = _task(frame, target, task)
    ids, ids_line = _ids(frame, target, id_columns, source)
    time, time_line = _time(frame, [target, *ids], time_column, source)
    return Domain(chosen_task, target, ids, time, [task_line, ids_line, time_line])


def check_reference(path: Path, columns: Sequence[str], shown: Path | None = None) -> None:
    """The reference file is a table holding the spec's target, id and time columns."""
    frame = read_data(path, "--reference", shown)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"--reference {shown or path}: lacks column(s) {', '.join(missing)} that the data has "
            "(target, id or time column)"
        )
