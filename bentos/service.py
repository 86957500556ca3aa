"""BentoML service that serves one approved loan-default model.

The model is pinned by an exact ``name:version`` tag: ``flows.packaging.build_bento`` writes
``model_pin.json`` next to this file in the build context, so the bento carries its pin. Never
``:latest`` — the newest saved model is not necessarily the approved one.

This module must not import the ``flows`` package: a bento only contains this directory.
The per-record request schema comes from the feature schema stored in the model's metadata, so
it is built once in ``__init__`` rather than at import (the class-level input spec only checks
the envelope).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from pydantic import BaseModel, ConfigDict, Field, create_model

PIN_FILE = Path(__file__).with_name("model_pin.json")
PIN_ENV_VAR = "NBPROD_MODEL_TAG"
# Upper bound on records per request: one request must not be able to pin a worker for long.
MAX_RECORDS = 10_000
# Key under which flows.packaging.save_model stores the feature schema in the model metadata.
FEATURE_SCHEMA_KEY = "feature_schema"


def resolve_model_tag(pin_file: Path = PIN_FILE, env: dict[str, str] | None = None) -> str:
    """Return the exact model tag this service serves.

    The pin file wins because it is what the bento was built with; the environment variable only
    exists so the service can be run from a checkout (``bentoml serve service:...``) in dev.
    """
    env = os.environ if env is None else env
    if pin_file.is_file():
        try:
            tag = json.loads(pin_file.read_text(encoding="utf-8"))["model_tag"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(
                f"{pin_file} is not valid JSON of the form {{'model_tag': 'name:version'}}: "
                "rebuild the bento with flows.packaging.build_bento"
            ) from exc
        source = str(pin_file)
    elif env.get(PIN_ENV_VAR):
        tag, source = env[PIN_ENV_VAR], f"${PIN_ENV_VAR}"
    else:
        raise RuntimeError(
            f"No model pinned: neither {pin_file} nor ${PIN_ENV_VAR} exists. Build the bento with "
            f"flows.packaging.build_bento, or export {PIN_ENV_VAR}=name:version for local serving."
        )
    name, _, version = str(tag).partition(":")
    if not name or not version or version == "latest":
        raise RuntimeError(
            f"Model pin {tag!r} from {source} is not an exact 'name:version' tag; "
            "':latest' is refused because the newest model is not necessarily the approved one."
        )
    return str(tag)


def build_record_model(feature_schema: dict[str, Any]) -> type[BaseModel]:
    """Build the pydantic model for one record from the stored feature schema.

    Strict types so ``"35"``/``true``/``35.5`` are not silently coerced into an int feature;
    NaN/inf rejected; unknown fields rejected so a typo in a column name is an error, not a
    silently imputed missing value. Nullable fields may be omitted (missing means null).
    """
    fields: dict[str, Any] = {}
    for column, spec in feature_schema.get("numerical", {}).items():
        base: type = int if spec.get("dtype") == "int" else float
        annotated: Any = Annotated[base, Field(ge=spec.get("min"), le=spec.get("max"))]
        if spec.get("nullable", False):
            fields[column] = (annotated | None, None)
        else:
            fields[column] = (annotated, ...)
    for column, spec in feature_schema.get("categorical", {}).items():
        literal: Any = Literal[tuple(spec["categories"])]
        if spec.get("nullable", False):
            fields[column] = (literal | None, None)
        else:
            fields[column] = (literal, ...)
    return create_model(
        "LoanRecord",
        __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False),
        **fields,
    )


def build_request_model(record_model: type[BaseModel]) -> type[BaseModel]:
    """Wrap the record model so validation errors are located as ``records.<i>.<field>``."""
    return create_model(
        "LoanRecords",
        __config__=ConfigDict(extra="forbid"),
        records=(
            Annotated[list[record_model], Field(min_length=1, max_length=MAX_RECORDS)],
            ...,
        ),
    )


class PredictRequest(BaseModel):
    """Request envelope; each record is validated against the model's feature schema."""

    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_RECORDS)


class PredictResponse(BaseModel):
    """One prediction and one probability of default per input record, in input order."""

    predictions: list[int]
    probabilities: list[float]
    model_tag: str


MODEL_TAG = resolve_model_tag()


@bentoml.service(name="nbprod_classifier", workers=1, traffic={"timeout": 30})
class LoanDefaultClassifier:
    """Serves the pinned scikit-learn pipeline behind /predict and /metadata."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        """Load the pipeline and build the request schema once per worker, not per request."""
        import joblib

        stored = self.model
        self.model_tag = str(stored.tag)
        self.model_metadata: dict[str, Any] = dict(stored.info.metadata)
        self.model_labels: dict[str, str] = dict(stored.info.labels)
        feature_schema = self.model_metadata.get(FEATURE_SCHEMA_KEY)
        if not isinstance(feature_schema, dict):
            raise RuntimeError(
                f"Model {self.model_tag} has no {FEATURE_SCHEMA_KEY!r} metadata: "
                "save it with flows.packaging.save_model"
            )
        self.feature_schema: dict[str, Any] = feature_schema
        self.pipeline = joblib.load(stored.path_of("model.joblib"))
        if not hasattr(self.pipeline, "predict_proba"):
            raise RuntimeError(f"Model {self.model_tag} has no predict_proba")
        self.positive_index = list(self.pipeline.classes_).index(1)
        schema_columns = [
            *feature_schema.get("numerical", {}),
            *feature_schema.get("categorical", {}),
        ]
        # sklearn refuses a DataFrame whose columns are not in fit order, so use that order.
        fitted = getattr(self.pipeline, "feature_names_in_", None)
        self.columns: list[str] = list(fitted) if fitted is not None else schema_columns
        if set(self.columns) != set(schema_columns):
            raise RuntimeError(
                f"Model {self.model_tag}: feature schema columns {sorted(schema_columns)} differ "
                f"from the pipeline's {sorted(self.columns)}; re-save it with the right schema"
            )
        self.float_columns = {
            c for c, s in feature_schema.get("numerical", {}).items() if s.get("dtype") != "int"
        }
        self.request_model = build_request_model(build_record_model(feature_schema))

    def validate_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Validate raw records; a pydantic ValidationError becomes a 400 naming the field."""
        validated = self.request_model.model_validate({"records": records})
        return [record.model_dump() for record in validated.records]

    def to_frame(self, records: list[dict[str, Any]]) -> Any:
        """Build the DataFrame the pipeline was fit on: fit column order, missing as NaN."""
        import numpy as np
        import pandas as pd

        frame = pd.DataFrame.from_records(records, columns=self.columns)
        for column in self.columns:
            if column in self.float_columns:
                frame[column] = frame[column].astype("float64")
            elif frame[column].dtype == object and frame[column].isna().any():
                # None -> NaN: SimpleImputer's default missing marker, as read_csv gives it.
                frame[column] = frame[column].where(frame[column].notna(), np.nan)
        return frame

    def score(self, records: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
        """Predict validated records. Plain method so a batchable API can share it."""
        frame = self.to_frame(records)
        predictions = [int(p) for p in self.pipeline.predict(frame)]
        probabilities = [
            float(p) for p in self.pipeline.predict_proba(frame)[:, self.positive_index]
        ]
        if not all(math.isfinite(p) for p in probabilities):
            raise RuntimeError(f"Model {self.model_tag} produced a non-finite probability")
        return predictions, probabilities

    @bentoml.api(route="/predict", input_spec=PredictRequest)
    def predict(self, records: list[dict[str, Any]]) -> PredictResponse:
        """Predict default (0/1) and its probability for each record."""
        predictions, probabilities = self.score(self.validate_records(records))
        return PredictResponse(
            predictions=predictions, probabilities=probabilities, model_tag=self.model_tag
        )

    @bentoml.api(route="/metadata")
    def metadata(self) -> dict[str, Any]:
        """Identify the served model: tag, training run, metrics and lineage."""
        meta = self.model_metadata
        return {
            "model_tag": self.model_tag,
            "run_version": meta.get("run_version", self.model_labels.get("run_version")),
            "metrics": meta.get("metrics", {}),
            "lineage": meta.get("lineage", {}),
            "labels": self.model_labels,
            "feature_schema": self.feature_schema,
        }
