"""A data schema derived from the reference data, and validation of new data against it.

The schema is learnt, not hand-written: columns, kinds, dtypes, the share of missing values, numeric
ranges and categories all come from the reference period. The same schema later shapes the
serving request model, so training and serving agree on what a valid record is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flows.errors import DataValidationError

if TYPE_CHECKING:  # pandas is imported where used: notebook-only flows never pay for it
    import pandas as pd

ColumnKind = Literal["numerical", "categorical", "datetime", "id", "target"]

# New data may have somewhat more missing values than the reference before it is refused.
MISSING_SHARE_SLACK = 0.05
ID_UNIQUE_RATIO = 0.95


@dataclass(frozen=True)
class ColumnSchema:
    name: str
    kind: ColumnKind
    dtype: Literal["int", "float", "str", "datetime"]
    max_missing_share: float
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None


@dataclass(frozen=True)
class DataSchema:
    columns: dict[str, ColumnSchema] = field(default_factory=dict)
    target: str | None = None
    datetime_column: str | None = None

    def names(self, kind: ColumnKind) -> list[str]:
        return [c.name for c in self.columns.values() if c.kind == kind]

    @property
    def numerical(self) -> list[str]:
        return self.names("numerical")

    @property
    def categorical(self) -> list[str]:
        return self.names("categorical")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "datetime_column": self.datetime_column,
            "columns": {name: asdict(col) for name, col in self.columns.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DataSchema:
        return cls(
            columns={n: ColumnSchema(**c) for n, c in raw["columns"].items()},
            target=raw.get("target"),
            datetime_column=raw.get("datetime_column"),
        )

    def feature_schema(self, columns: list[str] | None = None) -> dict[str, Any]:
        """The serving contract: what a request record may contain (features only).

        ``columns``: only these features (the model's own, when it says which it was fit on).
        """
        keep = set(columns) if columns is not None else None
        schema: dict[str, Any] = {
            "numerical": {
                c.name: {
                    "dtype": c.dtype,
                    "min": c.min,
                    "max": c.max,
                    "nullable": c.max_missing_share > 0,
                }
                for c in self.columns.values()
                if c.kind == "numerical"
            },
            "categorical": {
                c.name: {
                    "categories": list(c.categories or []),
                    "nullable": c.max_missing_share > 0,
                }
                for c in self.columns.values()
                if c.kind == "categorical"
            },
            "target": self.target,
        }
        if keep is not None:
            for kind in ("numerical", "categorical"):
                schema[kind] = {k: v for k, v in schema[kind].items() if k in keep}
        return schema


def read_table(
    path: str | Path, *, dataset: str, datetime_column: str | None = None
) -> pd.DataFrame:
    """Read a CSV or Parquet file, turning pandas' low-level failures into a named error."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataValidationError(
            f"{dataset} data {path} does not exist: check the path", dataset=dataset
        )
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(
            f"{dataset} data {path} is empty (no header, no rows): supply a CSV with a header row "
            "and data",
            dataset=dataset,
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataValidationError(
            f"{dataset} data {path} cannot be parsed: {exc}", dataset=dataset
        ) from exc
    if path.suffix != ".parquet":
        check_not_truncated(path, len(frame.columns), dataset)
    if datetime_column and datetime_column in frame.columns:
        parsed = pd.to_datetime(frame[datetime_column], errors="coerce")
        # Keep the raw column when it does not parse so validation can name it.
        if parsed.notna().sum() >= frame[datetime_column].notna().sum():
            frame[datetime_column] = parsed
    return frame


def check_not_truncated(path: Path, columns: int, dataset: str) -> None:
    """A CSV whose last line is cut short (no final newline, fewer fields than the header) was
    copied or exported only in part: refuse it rather than read the cut row as missing values."""
    import csv

    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 65536))
        tail = handle.read()
    if not tail or tail.endswith((b"\n", b"\r")):
        return
    last_line = tail.splitlines()[-1].decode("utf-8", errors="replace")
    fields = len(next(csv.reader([last_line]), []))
    if fields < columns:
        raise DataValidationError(
            f"{dataset} data {path} ends mid-row (its last line has {fields} of {columns} "
            "fields and no line end): the file looks truncated; copy or export it again",
            dataset=dataset,
        )


def _dtype_of(series: pd.Series) -> Literal["int", "float", "str", "datetime"]:
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    if pd.api.types.is_bool_dtype(series):
        return "str"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        non_null = series.dropna()
        return "int" if len(non_null) and (non_null == non_null.round()).all() else "float"
    return "str"


def derive_schema(
    reference: pd.DataFrame,
    *,
    target: str | None = None,
    datetime_column: str | None = None,
    id_columns: tuple[str, ...] | list[str] = (),
) -> DataSchema:
    """Learn the schema from the reference data; ``id_columns`` are never features."""
    if reference.empty:
        raise DataValidationError(
            "reference data has no rows: cannot derive a schema", dataset="reference"
        )
    columns: dict[str, ColumnSchema] = {}
    for name in reference.columns:
        series = reference[name]
        dtype = _dtype_of(series)
        missing = float(series.isna().mean())
        allowed = min(1.0, missing + MISSING_SHARE_SLACK) if missing > 0 else 0.0
        if name == target:
            kind: ColumnKind = "target"
        elif name in id_columns:
            kind = "id"
        elif name == datetime_column or dtype == "datetime":
            kind, dtype = "datetime", "datetime"
        elif dtype == "str" and series.nunique(dropna=True) >= ID_UNIQUE_RATIO * len(series):
            kind = "id"
        elif dtype == "str":
            kind = "categorical"
        else:
            kind = "numerical"
        col = ColumnSchema(name=name, kind=kind, dtype=dtype, max_missing_share=allowed)
        if kind == "numerical":
            col = ColumnSchema(
                **{**asdict(col), "min": float(series.min()), "max": float(series.max())}
            )
        elif kind == "categorical":
            cats = sorted(str(v) for v in series.dropna().unique())
            col = ColumnSchema(**{**asdict(col), "categories": cats})
        columns[name] = col
    return DataSchema(columns=columns, target=target, datetime_column=datetime_column)


def _type_problem(series: pd.Series, col: ColumnSchema) -> str | None:
    import pandas as pd

    if col.dtype in ("int", "float"):
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            bad = pd.to_numeric(series, errors="coerce").isna() & series.notna()
            sample = series[bad].astype(str).head(3).tolist()
            return f"expected {col.dtype}, found {series.dtype} (e.g. {sample})"
    elif col.dtype == "datetime":
        if not pd.api.types.is_datetime64_any_dtype(series):
            return f"expected datetime, found {series.dtype} values that do not parse as dates"
    elif pd.api.types.is_numeric_dtype(series) and col.kind == "categorical":
        return f"expected text categories, found {series.dtype}"
    return None


def find_violations(frame: pd.DataFrame, schema: DataSchema) -> dict[str, str]:
    """Every problem at once, keyed by column, so one error can list them all."""
    problems: dict[str, str] = {}
    for name, col in schema.columns.items():
        if name not in frame.columns:
            problems[name] = f"missing column (expected {col.dtype})"
            continue
        series = frame[name]
        type_problem = _type_problem(series, col)
        if type_problem:
            problems[name] = type_problem
            continue
        missing = float(series.isna().mean()) if len(series) else 0.0
        if missing > col.max_missing_share + 1e-12:
            problems[name] = (
                f"{missing:.1%} missing values, more than the "
                f"{col.max_missing_share:.1%} allowed by the reference data"
            )
    return problems


def validate_frame(frame: pd.DataFrame, schema: DataSchema, *, dataset: str) -> None:
    """Raise one DataValidationError naming every offending column, or return quietly."""
    if frame.empty:
        raise DataValidationError(
            f"{dataset} data has no rows: supply at least one row", dataset=dataset
        )
    problems = find_violations(frame, schema)
    if problems:
        detail = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
        raise DataValidationError(
            f"{dataset} data does not match the reference schema: {detail}. "
            "Fix the data (or the reference) and run again.",
            dataset=dataset,
            columns=list(problems),
        )
