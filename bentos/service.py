"""BentoML service serving the pinned model of one nbprod pipeline, for any task.

The service takes everything from the pinned model (``pinning``): its BentoML name and class
name from the pipeline (``churn`` serves as ``ChurnService``, named ``churn``), its request
schema from the feature schema of the training data (``request_schema``), its answers from the
task (``predictor``). The bentofile names only this module (``service: service``): BentoML finds
the one service it defines, whatever its class name.

API (all POST, JSON):

- ``/predict`` ``{"records": [{<feature>: <value>, ...}, ...]}`` (1..10,000 records) returns one
  answer per record in input order: classification ``{"prediction": <label>, "probabilities":
  {<label>: p, ...}}`` (``probabilities`` when the model has ``predict_proba``), regression
  ``{"prediction": <number>}``; headers ``X-Request-ID`` and ``X-Model-Tag``. Adaptive batching
  merges concurrent requests into one model call. Bad requests get a one-line 4xx naming the
  field (``request_guard``); every answer is logged first (``inference_log``).
- ``/metadata`` ``{}`` returns the model tag, pipeline, task, classes, run version, metrics,
  lineage, the feature and record schemas, the request limits, the ``runtime`` that answers
  (``{"name": "onnxruntime" | "sklearn", "reason": ...}``, see ``fast_runtime``) and the
  ``fast_paths`` the worker proved at start-up (``predictor.Paths``).
- BentoML's ``GET /livez``, ``/healthz`` and ``/readyz``.

BentoML's defaults otherwise (access log, ``/metrics``), but ``/predict`` is neither traced nor
in the access log: each answer is in the inference log under its request id (see the ``tracing``
and ``logging`` options below).

A bento only contains this directory: no module here imports the ``flows`` package.
"""

from __future__ import annotations

import gc
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from compat_bentoml import cancel_request_timers
from inference_log import inference_log
from pinning import FEATURE_SCHEMA_KEY, load_model_metadata, read_pin, service_identity
from predictor import Predictor
from request_guard import MAX_BODY_BYTES, RequestGuard
from request_schema import (
    MAX_RECORDS,
    build_record_model,
    build_request_model,
    probe_records,
    sample_records,
)

PREDICT_ROUTE = "/predict"
# Adaptive batching: records per model call, and the queueing delay beyond which BentoML sheds
# load with a 503 instead of letting requests pile up until the traffic timeout.
MAX_BATCH_SIZE = 1_000
MAX_LATENCY_MS = 5_000
TRAFFIC_TIMEOUT_S = 30
# BentoML's own default for logging.access.skip_paths (a service's setting replaces it).
ACCESS_LOG_SKIPPED_BY_BENTOML = ["/metrics", "/healthz", "/livez", "/readyz"]

PIN = read_pin()
MODEL_METADATA = load_model_metadata(PIN.model_tag)
IDENTITY = service_identity(PIN, MODEL_METADATA)
FEATURE_SCHEMA: dict[str, Any] = MODEL_METADATA[FEATURE_SCHEMA_KEY]
Record = build_record_model(FEATURE_SCHEMA)
PredictRequest = build_request_model(Record)


class PipelineService:
    """Serves the pinned model behind /predict and /metadata (renamed for its pipeline below)."""

    model = bentoml.models.BentoModel(PIN.model_tag)

    def __init__(self) -> None:
        """Per worker: load and check the model, answer check records, open the log."""
        self.request_timers_cancelled = cancel_request_timers()
        stored = self.model
        metadata = dict(stored.info.metadata)
        self.predictor = Predictor.load(stored, metadata, FEATURE_SCHEMA)
        # Prove the model answers every kind of valid record before the worker reports ready,
        # and keep only the shortcuts that answer these records exactly as the model does.
        checked = probe_records(FEATURE_SCHEMA, Record) + sample_records(FEATURE_SCHEMA, Record)
        self.predictor.choose_paths(checked)
        self.metadata_response = describe(
            str(stored.tag), metadata, dict(stored.info.labels), self.predictor
        )
        self.metadata_response["request_timers_cancelled"] = self.request_timers_cancelled
        inference_log().open()

    @bentoml.api(
        route=PREDICT_ROUTE,
        input_spec=PredictRequest,
        batchable=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    def predict(
        self, records: list[Any]
    ) -> Annotated[list[dict[str, Any]], ContentType("application/json")]:
        """One answer per record, in input order (see the module docstring). The content type
        is declared so BentoML does not derive it from the output's JSON schema per response."""
        return self.predictor.score(records)

    @bentoml.api(route="/metadata")
    async def metadata(self) -> dict[str, Any]:
        """Identify the served model. Async: it answers without queueing behind inference."""
        return self.metadata_response

    @bentoml.on_startup
    def freeze_startup_objects(self) -> None:
        """Keep what lives for the whole worker (BentoML, pydantic, the model) out of GC scans."""
        gc.collect()
        gc.freeze()

    @bentoml.on_shutdown
    def close_inference_log(self) -> None:
        """Flush this worker's inference log to disk on a normal shutdown."""
        inference_log().close()


def describe(
    model_tag: str, metadata: dict[str, Any], labels: dict[str, str], predictor: Predictor
) -> dict[str, Any]:
    """The /metadata answer: which model, trained how, answering what."""
    return {
        "model_tag": model_tag,
        "pipeline": IDENTITY.pipeline,
        "service": IDENTITY.service_name,
        "task": predictor.task,
        "classes": predictor.classes if predictor.task == "classification" else None,
        "probabilities": predictor.has_probabilities,
        "runtime": predictor.runtime,
        "fast_paths": predictor.describe_paths(),
        "run_version": metadata.get("run_version", labels.get("run_version")),
        "target": metadata.get("target", FEATURE_SCHEMA.get("target")),
        "id_columns": metadata.get("id_columns", []),
        "time_column": metadata.get("time_column"),
        "metrics": metadata.get("metrics", {}),
        "lineage": metadata.get("lineage", {}),
        "data_sha256": metadata.get("data_sha256"),
        "labels": labels,
        "feature_schema": FEATURE_SCHEMA,
        "record_schema": Record.model_json_schema(),
        "limits": {"max_records": MAX_RECORDS, "max_body_bytes": MAX_BODY_BYTES},
    }


# The class takes its pipeline's name; BentoML finds the service by type, not by name.
PipelineService.__name__ = PipelineService.__qualname__ = IDENTITY.class_name
globals()[IDENTITY.class_name] = bentoml.service(
    name=IDENTITY.service_name,
    workers="cpu_count",  # the HTTP stack, not the model, is most of a request's CPU
    traffic={"timeout": TRAFFIC_TIMEOUT_S},
    # BentoML records an OpenTelemetry span per request even with no exporter configured: on
    # /predict that was 40 % of a request's CPU. Each answer is in the inference log under its
    # request id; configuring services.<name>.tracing.excluded_urls: [] re-enables it.
    tracing={"excluded_urls": [PREDICT_ROUTE]},
    # The same for BentoML's access log: /predict's lines are the inference log's (request id,
    # latency), every other route keeps its access line.
    logging={"access": {"skip_paths": [*ACCESS_LOG_SKIPPED_BY_BENTOML, PREDICT_ROUTE]}},
)(PipelineService)
globals()[IDENTITY.class_name].add_asgi_middleware(
    RequestGuard,
    model_tag=PIN.model_tag,
    run_version=MODEL_METADATA.get("run_version"),
    predict_route=PREDICT_ROUTE,
)
