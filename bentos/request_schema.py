"""The /predict request model, built from the feature schema stored with the pinned model.

The feature schema (``flows.schema``: numerical columns with dtype, training range and whether
they may be missing; categorical columns with their categories) is derived from the training
data, so training and serving agree on what a valid record is. The request model must exist when
the service class is defined: BentoML validates each request before adaptive batching merges it
with others, and only validation at that point refuses one bad request without failing the good
ones batched with it.
"""

from __future__ import annotations

import math
import random
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, create_model

# One request must not be able to pin a worker for long nor exhaust its memory.
MAX_RECORDS = 10_000
# Accepted range of a numeric feature: the training range widened by this share of its width on
# each side, never below zero for a column that was never negative. Drifted but plausible data
# is served (and logged for the monitoring flow); absurd values are refused.
RANGE_SLACK = 0.5
# Random records the service checks its shortcuts on, besides the probe records (see predictor),
# and the share of them missing a nullable field.
CHECK_RECORDS = 1_000
MISSING_SHARE = 0.1


def accepted_range(spec: dict[str, Any]) -> tuple[float | None, float | None]:
    """The sane range of a numeric feature: its training range, widened (see RANGE_SLACK)."""
    low, high = spec.get("min"), spec.get("max")
    if low is None or high is None:
        return low, high
    width = high - low or max(abs(high), 1.0)
    lower = low - RANGE_SLACK * width
    if low >= 0:
        lower = max(lower, 0.0)
    upper = high + RANGE_SLACK * width
    if spec.get("dtype") == "int":
        return float(math.floor(lower)), float(math.ceil(upper))
    return round(lower, 6), round(upper, 6)  # already widened: rounding only tidies the schema


def _whole_number(value: float) -> int:
    """Accept 35 and 35.0 for an int feature (pandas writes ints with gaps as floats), not 35.5."""
    if not value.is_integer():
        raise ValueError("Input should be a whole number")
    return int(value)


def _integer_schema(low: float | None, high: float | None) -> dict[str, Any]:
    """JSON schema of an int feature (validated as a float, see ``_whole_number``)."""
    schema: dict[str, Any] = {"type": "integer"}
    if low is not None:
        schema["minimum"] = int(low)
    if high is not None:
        schema["maximum"] = int(high)
    return schema


def build_record_model(feature_schema: dict[str, Any]) -> type[BaseModel]:
    """The pydantic model of one record.

    Strict types so ``"35"``/``true`` are not silently coerced into a number and ``35.5`` not
    into an int feature; NaN/inf rejected; ranges checked (see ``accepted_range``); unknown
    fields rejected so a typo in a column name is an error, not a silently imputed missing value.
    Nullable fields may be omitted (missing means null).
    """
    fields: dict[str, Any] = {}
    for column, spec in feature_schema.get("numerical", {}).items():
        low, high = accepted_range(spec)
        annotated: Any
        if spec.get("dtype") == "int":
            annotated = Annotated[
                float,
                Field(ge=low, le=high),
                AfterValidator(_whole_number),
                WithJsonSchema(_integer_schema(low, high)),
            ]
        else:
            annotated = Annotated[float, Field(ge=low, le=high)]
        fields[column] = (annotated | None, None) if spec.get("nullable") else (annotated, ...)
    for column, spec in feature_schema.get("categorical", {}).items():
        literal: Any = Literal[tuple(spec["categories"])]
        fields[column] = (literal | None, None) if spec.get("nullable") else (literal, ...)
    return create_model(
        "Record",
        __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False),
        **fields,
    )


def build_request_model(record_model: type[BaseModel]) -> type[BaseModel]:
    """Wrap the record model so validation errors are located as ``records.<i>.<field>``."""
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(
            Annotated[list[record_model], Field(min_length=1, max_length=MAX_RECORDS)],
            ...,
        ),
    )


def example_record(feature_schema: dict[str, Any]) -> dict[str, Any]:
    """A valid record: mid-range numbers, first categories."""
    record: dict[str, Any] = {}
    for column, spec in feature_schema.get("numerical", {}).items():
        low, high = spec.get("min"), spec.get("max")
        middle = 0.0 if low is None or high is None else (low + high) / 2
        record[column] = round(middle) if spec.get("dtype") == "int" else float(middle)
    for column, spec in feature_schema.get("categorical", {}).items():
        record[column] = spec["categories"][0]
    return record


def probe_records(feature_schema: dict[str, Any], record_model: type[BaseModel]) -> list[Any]:
    """Validated records covering every category, every missing value and the range ends.

    The service predicts them at start-up: a model that cannot answer every valid record fails
    before the worker reports ready, not on a user's request.
    """
    base = example_record(feature_schema)
    variants: list[dict[str, Any]] = [base]
    for column, spec in feature_schema.get("categorical", {}).items():
        variants += [{**base, column: category} for category in spec["categories"]]
        if spec.get("nullable"):
            variants.append({**base, column: None})
    for column, spec in feature_schema.get("numerical", {}).items():
        variants += [{**base, column: b} for b in accepted_range(spec) if b is not None]
        if spec.get("nullable"):
            variants.append({**base, column: None})
    return [record_model.model_validate(v) for v in variants]


def sample_records(
    feature_schema: dict[str, Any],
    record_model: type[BaseModel],
    count: int = CHECK_RECORDS,
    seed: int = 0,
) -> list[Any]:
    """Validated random records: every field drawn on its own over its accepted range or its
    categories, missing now and then where nullable; the same ones for the same seed.

    With the probe records they check, at start-up, that the service's shortcuts answer
    exactly what the model answers on records unlike the probes (which vary one field each).
    """
    rng = random.Random(seed)
    base = example_record(feature_schema)
    numerical = feature_schema.get("numerical", {})
    categorical = feature_schema.get("categorical", {})
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        row: dict[str, Any] = {}
        for column, spec in numerical.items():
            low, high = accepted_range(spec)
            if spec.get("nullable") and rng.random() < MISSING_SHARE:
                row[column] = None
            elif low is None or high is None:
                row[column] = base[column]
            elif spec.get("dtype") == "int":
                row[column] = rng.randint(int(low), int(high))
            else:
                row[column] = min(max(rng.uniform(low, high), low), high)
        for column, spec in categorical.items():
            missing = spec.get("nullable") and rng.random() < MISSING_SHARE
            row[column] = None if missing else rng.choice(spec["categories"])
        rows.append(row)
    return [record_model.model_validate(row) for row in rows]
