"""Reading the service's inference log back: one row per answered record.

The service (``bentos/inference_log.py``) appends one JSON line per successful /predict to a file
per worker process in ``$NBPROD_INFERENCE_LOG_DIR``, else ``$BENTOML_HOME/inference_logs``:
``{"request_id", "timestamp", "model_tag", "run_version", "latency_ms", "request": {"records":
[...]}, "response": [...]}``. Standard library only at module level.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.bento_server import LOG_DIR_ENV_VAR, bentoml_home
from flows.errors import InferenceLogError

if TYPE_CHECKING:
    import pandas as pd

LOG_SUBDIR = "inference_logs"
LOG_META_COLUMNS = (
    "request_id",
    "timestamp",
    "model_tag",
    "run_version",
    "latency_ms",
    "record_index",
)
PREDICTION_COLUMN = "prediction"
# A classifier's probability of each class: probability_<label>.
PROBABILITY_PREFIX = "probability_"


def default_inference_log_dir() -> Path:
    """The folder the service logs to with this environment (see the module docstring)."""
    if os.environ.get(LOG_DIR_ENV_VAR):
        return Path(os.environ[LOG_DIR_ENV_VAR]).expanduser()
    return bentoml_home() / LOG_SUBDIR


def answers_to_columns(answer: dict[str, Any]) -> dict[str, Any]:
    """One service answer as flat columns: ``prediction`` and ``probability_<label>`` per class.

    Other keys pass through unchanged (an older service's single ``probability``).
    """
    row: dict[str, Any] = {}
    for key, value in answer.items():
        if key == "probabilities" and isinstance(value, dict):
            row.update({f"{PROBABILITY_PREFIX}{label}": p for label, p in value.items()})
        else:
            row[key] = value
    return row


def read_inference_log(path_or_dir: str | Path) -> pd.DataFrame:
    """Logged answers as a DataFrame: one row per record, oldest request first.

    Columns: LOG_META_COLUMNS (``record_index`` is the record's position in its request), the
    features as sent (an omitted nullable feature is NaN), then ``prediction`` and, for a
    classifier with probabilities, ``probability_<label>`` per class. A folder is read
    recursively (``*.jsonl``). A last line without its newline is a write in progress (or cut by
    a crash) and is skipped; any other unreadable line raises InferenceLogError naming file and
    line.
    """
    import pandas as pd

    path = Path(path_or_dir)
    if path.is_dir():
        files = sorted(path.rglob("*.jsonl"))
    elif path.is_file():
        files = [path]
    else:
        raise InferenceLogError(f"inference log {path} does not exist")
    rows: list[dict[str, Any]] = []
    outputs: dict[str, None] = {PREDICTION_COLUMN: None}  # ordered set, first seen first
    for file in files:
        rows.extend(_log_rows(file, outputs))
    if not rows:
        return pd.DataFrame(columns=[*LOG_META_COLUMNS, PREDICTION_COLUMN])
    frame = pd.DataFrame(rows)
    features = [c for c in frame.columns if c not in LOG_META_COLUMNS and c not in outputs]
    frame = frame[[*LOG_META_COLUMNS, *features, *(c for c in outputs if c in frame.columns)]]
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    return frame.sort_values(
        ["timestamp", "request_id", "record_index"], kind="stable", ignore_index=True
    )


def _log_rows(file: Path, outputs: dict[str, None]) -> list[dict[str, Any]]:
    lines = file.read_bytes().split(b"\n")
    rows: list[dict[str, Any]] = []
    # The piece after the last newline is empty, or a line still being written.
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            records = entry["request"]["records"]
            answers = entry["response"]
            if len(records) != len(answers):
                raise ValueError(f"{len(records)} records but {len(answers)} predictions")
            meta = {key: entry.get(key) for key in LOG_META_COLUMNS[:5]}
            meta["request_id"], meta["timestamp"] = entry["request_id"], entry["timestamp"]
            for index, (record, answer) in enumerate(zip(records, answers, strict=True)):
                columns = answers_to_columns(answer)
                if PREDICTION_COLUMN not in columns:
                    raise KeyError(PREDICTION_COLUMN)
                outputs.update(dict.fromkeys(columns))
                rows.append({**meta, "record_index": index, **record, **columns})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InferenceLogError(
                f"{file}:{number}: not a logged prediction ({type(exc).__name__}: {exc}); "
                "move the file aside to read the rest"
            ) from exc
    return rows
