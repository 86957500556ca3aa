"""Baseline for P5: a plain FastAPI + uvicorn service with the same model as the champion bento.

What a data scientist would write by hand: a pydantic model for the request, a DataFrame from
the records, ``predict`` (and ``predict_proba`` when the model has it) of the joblib'd
scikit-learn pipeline. It answers what the bento answers (classification: ``{"prediction":
<label>, "probabilities": {<label>: p, ...}}``, keys ``str(label)`` in ``classes_`` order;
regression: ``{"prediction": <number>}``; the same labels, and probabilities within 1e-5 when
the bento serves the model's ONNX conversion), so both do the same work per request. What it
does not do:
validation beyond JSON types, batching, the inference log, request ids. Run by
benchmarks/run.py with ``NBPROD_BENCH_MODEL=<model.joblib> [NBPROD_BENCH_TASK=classification]
uvicorn fastapi_app:app --host 127.0.0.1``.
"""

from __future__ import annotations

import os
from typing import Any

import joblib
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel

MODEL = joblib.load(os.environ["NBPROD_BENCH_MODEL"])
COLUMNS = list(MODEL.feature_names_in_)
CLASSIFIER = os.environ.get("NBPROD_BENCH_TASK", "classification") == "classification"
PROBABILITIES = CLASSIFIER and callable(getattr(MODEL, "predict_proba", None))
CLASS_KEYS = [str(c) for c in getattr(MODEL, "classes_", [])]

app = FastAPI()


class PredictRequest(BaseModel):
    records: list[dict[str, Any]]


@app.post("/predict")
def predict(request: PredictRequest) -> list[dict[str, Any]]:
    frame = pd.DataFrame(request.records, columns=COLUMNS)
    predictions = MODEL.predict(frame).tolist()  # .tolist(): NumPy scalars as JSON values
    if not CLASSIFIER:
        return [{"prediction": float(p)} for p in predictions]
    if not PROBABILITIES:
        return [{"prediction": p} for p in predictions]
    probabilities = MODEL.predict_proba(frame).tolist()
    return [
        {"prediction": p, "probabilities": dict(zip(CLASS_KEYS, row, strict=True))}
        for p, row in zip(predictions, probabilities, strict=True)
    ]


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ok"}
