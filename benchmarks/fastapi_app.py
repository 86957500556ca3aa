"""Baseline for P5: a plain FastAPI + uvicorn service with the same model as the champion bento.

What a data scientist would write by hand: a pydantic model for the request, a DataFrame from
the records, ``predict`` and ``predict_proba`` of the joblib'd pipeline. No batching, no
validation beyond types, no inference log. Run by benchmarks/run.py with
``NBPROD_BENCH_MODEL=<model.joblib> uvicorn fastapi_app:app --host 127.0.0.1``.
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

app = FastAPI()


class PredictRequest(BaseModel):
    records: list[dict[str, Any]]


@app.post("/predict")
def predict(request: PredictRequest) -> list[dict[str, Any]]:
    frame = pd.DataFrame(request.records, columns=COLUMNS)
    predictions = MODEL.predict(frame)
    probabilities = MODEL.predict_proba(frame)[:, 1]
    return [
        {"prediction": int(p), "probability": float(q)}
        for p, q in zip(predictions, probabilities, strict=True)
    ]


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ok"}
