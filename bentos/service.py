"""BentoML service that serves one approved loan-default model.

Pinning: the model is pinned by an exact ``name:version`` tag. ``flows.packaging.build_bento``
writes ``model_pin.json`` next to this file in the build context, so the bento carries its pin.
Never ``:latest`` — the newest saved model is not necessarily the approved one. This module must
not import the ``flows`` package: a bento only contains this directory.

Request schema: built from the feature schema stored in the pinned model's metadata (derived from
the training data by ``flows.schema``). It has to exist when the class is defined — BentoML
validates a request before adaptive batching merges it with others, and only validation at that
point can refuse one bad request without failing the good requests batched with it. So the
module reads the pinned model's metadata (a YAML file in the local model store; nothing is
written) at import.

API (all POST, JSON):

- ``/predict`` ``{"records": [{<feature>: <value>, ...}, ...]}`` (1..``MAX_RECORDS`` records)
  returns ``[{"prediction": 0|1, "probability": P(default)}, ...]`` in input order, with headers
  ``X-Request-ID`` (also the inference-log key) and ``X-Model-Tag``. Adaptive batching merges
  concurrent requests into one model call.
- ``/metadata`` ``{}`` returns the model tag, run version, metrics, lineage, feature schema and
  the request limits.
- BentoML's ``GET /livez``, ``/healthz`` and ``/readyz``.

Bad requests get a 4xx whose ``error`` names the field (``records.3.purpose: Input should be
...``) and whose ``detail`` lists every problem with its ``loc``.

Inference log: every successful /predict is appended as one JSON line (request id, timestamp,
model tag, run version, latency, the request body and the response body) to
``$NBPROD_INFERENCE_LOG_DIR`` (default ``$BENTOML_HOME/inference_logs``, BentoML's own default
home being ``~/bentoml``), one file per worker process. The line is handed to the kernel (one
``write`` on an ``O_APPEND`` descriptor) before the response is sent, so a client that got its
prediction knows it is logged and a worker crash loses nothing; the file is fsynced at shutdown.
``flows.serving.read_inference_log`` reads these files back as a DataFrame.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from bentoml._internal.context import trace_context
from opentelemetry.trace import get_current_span
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, create_model

PIN_FILE = Path(__file__).with_name("model_pin.json")
PIN_ENV_VAR = "NBPROD_MODEL_TAG"
# Key under which flows.packaging.save_model stores the feature schema in the model metadata.
FEATURE_SCHEMA_KEY = "feature_schema"
MODEL_FILE = "model.joblib"
SERVICE_NAME = "nbprod_classifier"
PREDICT_ROUTE = "/predict"
# One request must not be able to pin a worker for long nor exhaust its memory.
MAX_RECORDS = 10_000
MAX_BODY_BYTES = 8 * 1024 * 1024
# Adaptive batching: records per model call, and the queueing delay beyond which BentoML sheds
# load with a 503 instead of letting requests pile up until the 30 s traffic timeout.
MAX_BATCH_SIZE = 1_000
MAX_LATENCY_MS = 5_000
# Accepted range of a numeric feature: the training range widened by this share of its width on
# each side, never below zero for a column that was never negative. Drifted but plausible data
# is served (and logged for the monitoring flow); absurd values are refused.
RANGE_SLACK = 0.5
# An oversized body up to this size is read and dropped so the client can read its 413.
DRAIN_BYTES = 8 * MAX_BODY_BYTES
LOG_DIR_ENV_VAR = "NBPROD_INFERENCE_LOG_DIR"
LOG_SUBDIR = "inference_logs"
# BentoML picks a non-JSON parser for these; on /predict they are refused with a 415 instead.
NON_JSON_MEDIA_TYPES = frozenset(
    {
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/vnd.bentoml+pickle",
    }
)
MAX_ERRORS_IN_MESSAGE = 5

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("bentoml.service.nbprod")


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


def load_model_metadata(tag: str) -> dict[str, Any]:
    """Read the pinned model's metadata from the local model store, without loading the model.

    ``bentoml.models.get`` looks only at the local store: a missing model must fail here with a
    clear message rather than make BentoML try to pull it from BentoCloud.
    """
    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as exc:
        raise RuntimeError(
            f"Model {tag} is not in the BentoML model store under $BENTOML_HOME "
            f"({os.environ.get('BENTOML_HOME', '~/bentoml')}): import it, or serve with the "
            "BENTOML_HOME the bento was built with"
        ) from exc
    metadata = dict(stored.info.metadata)
    if not isinstance(metadata.get(FEATURE_SCHEMA_KEY), dict):
        raise RuntimeError(
            f"Model {tag} has no {FEATURE_SCHEMA_KEY!r} metadata: "
            "save it with flows.packaging.save_model"
        )
    return metadata


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
    """Build the pydantic model for one record from the stored feature schema.

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
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(
            Annotated[list[record_model], Field(min_length=1, max_length=MAX_RECORDS)],
            ...,
        ),
    )


class Prediction(BaseModel):
    """The prediction for one input record."""

    prediction: int = Field(description="Predicted class: 1 = will default")
    probability: float = Field(ge=0, le=1, description="Predicted probability of default")


# --- fast preprocessing --------------------------------------------------------------------------


class FastPreprocessor:
    """NumPy replay of a fitted ColumnTransformer of SimpleImputers and OneHotEncoders.

    sklearn's ColumnTransformer spends ~10 ms of Python (input checks, pandas indexing) per call
    whatever the row count, holding the GIL that the event loop needs; this replays the fitted
    statistics and categories in microseconds. It is only used for the exact structure the
    notebook fits (``compile`` returns None otherwise) and only after ``LoanDefaultClassifier``
    has checked at start-up that it gives the same matrix as sklearn on probe records.
    """

    def __init__(self, blocks: list[tuple[str, list[str], Any, list[dict[Any, int]]]]) -> None:
        # (kind, columns, statistics, category index per column); kind "numeric" | "onehot".
        self.blocks = blocks
        self.widths = [
            len(columns) if kind == "numeric" else sum(len(index) for index in indexes)
            for kind, columns, _, indexes in blocks
        ]

    @classmethod
    def compile(cls, transformer: Any) -> FastPreprocessor | None:
        """Return a replay of ``transformer``, or None if it uses anything not replayed here."""
        import numpy as np
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder

        if type(transformer) is not ColumnTransformer or getattr(
            transformer, "sparse_output_", False
        ):
            return None
        blocks: list[tuple[str, list[str], Any, list[dict[Any, int]]]] = []
        for _, step, columns in transformer.transformers_:
            if isinstance(step, str) and step == "drop":
                continue
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                return None
            chain = [s for _, s in step.steps] if type(step) is Pipeline else [step]
            imputer = chain[0]
            if (
                type(imputer) is not SimpleImputer
                or imputer.add_indicator
                or not (
                    isinstance(imputer.missing_values, float)
                    and imputer.missing_values != imputer.missing_values
                )
            ):
                return None
            statistics = imputer.statistics_
            if len(statistics) != len(columns):
                return None  # an all-missing training column was dropped
            if len(chain) == 1:
                if statistics.dtype.kind != "f" or not np.isfinite(statistics).all():
                    return None
                blocks.append(("numeric", list(columns), statistics.astype("float64"), []))
                continue
            encoder = chain[1]
            if (
                len(chain) != 2
                or type(encoder) is not OneHotEncoder
                or encoder.drop_idx_ is not None
                or encoder._infrequent_enabled
                or encoder.sparse_output
                or encoder.handle_unknown != "ignore"
                or np.dtype(encoder.dtype) != np.float64
                or not all(isinstance(v, str) for v in statistics)
            ):
                return None
            indexes = [{v: k for k, v in enumerate(cats.tolist())} for cats in encoder.categories_]
            blocks.append(("onehot", list(columns), list(statistics), indexes))
        return cls(blocks) if blocks else None

    def transform(self, records: list[Any]) -> Any:
        """The transformed matrix for validated records (objects with the columns as attributes)."""
        import numpy as np

        rows = [record.__dict__ for record in records]
        parts = []
        for (kind, columns, statistics, indexes), width in zip(
            self.blocks, self.widths, strict=True
        ):
            if kind == "numeric":
                block = np.array([[row[c] for c in columns] for row in rows], dtype="float64")
                missing = np.isnan(block)
                if missing.any():
                    block[missing] = statistics[np.nonzero(missing)[1]]
            else:
                block = np.zeros((len(rows), width))
                offset = 0
                for column, fill, index in zip(columns, statistics, indexes, strict=True):
                    for i, row in enumerate(rows):
                        value = row[column]
                        position = index.get(fill if value is None else value)
                        if position is not None:  # unknown category: all zeros, as "ignore"
                            block[i, offset + position] = 1.0
                    offset += len(index)
            parts.append(block)
        return np.hstack(parts)


# --- inference log -------------------------------------------------------------------------------


class FastBoostedTrees:
    """NumPy replay of a fitted HistGradientBoostingClassifier's ``predict_proba``.

    sklearn walks its trees one Python call per tree (200 calls for the notebook's model), which
    costs ~10 ms whatever the row count; walking all trees at once, one tree level per step,
    costs ~0.1 ms for a small batch. Leaf values are summed tree by tree in sklearn's order
    (``cumsum`` accumulates sequentially), so the probabilities are bit-identical, and
    ``LoanDefaultClassifier`` still uses it only after checking that on probe records.
    """

    def __init__(self, estimator: Any, arrays: dict[str, Any], depth: int) -> None:
        self.loss = estimator._loss
        self.baseline = estimator._baseline_prediction  # (1, trees per iteration)
        self.trees_per_iteration = int(estimator.n_trees_per_iteration_)
        self.n_features = int(estimator.n_features_in_)
        self.arrays = arrays
        self.depth = depth

    @classmethod
    def compile(cls, estimator: Any) -> FastBoostedTrees | None:
        """Return a replay of ``estimator``, or None if it is not a plain numeric-split HGB."""
        import numpy as np
        from sklearn.ensemble import HistGradientBoostingClassifier

        if type(estimator) is not HistGradientBoostingClassifier:
            return None
        predictors = getattr(estimator, "_predictors", None)
        if not predictors or getattr(estimator, "_in_fit", False):
            return None
        # Iteration-major, class-minor: the order sklearn adds the trees in.
        nodes = [predictor.nodes for iteration in predictors for predictor in iteration]
        if any(tree["is_categorical"].any() for tree in nodes):
            return None  # native categorical splits use bitsets; not replayed
        width = max(len(tree) for tree in nodes)
        shape = (len(nodes), width)
        feature = np.zeros(shape, dtype=np.intp)
        threshold = np.zeros(shape, dtype=np.float64)
        left = np.zeros(shape, dtype=np.intp)
        right = np.zeros(shape, dtype=np.intp)
        missing_left = np.zeros(shape, dtype=bool)
        value = np.zeros(shape, dtype=np.float64)
        for t, tree in enumerate(nodes):
            n = len(tree)
            leaf = tree["is_leaf"].astype(bool)
            own = np.arange(n)
            feature[t, :n] = np.where(leaf, 0, tree["feature_idx"])
            threshold[t, :n] = tree["num_threshold"]
            # A leaf points at itself, so every tree can take the same number of steps.
            left[t, :n] = np.where(leaf, own, tree["left"])
            right[t, :n] = np.where(leaf, own, tree["right"])
            missing_left[t, :n] = tree["missing_go_to_left"].astype(bool)
            value[t, :n] = tree["value"]
        depth = max(int(tree["depth"].max()) for tree in nodes)
        # Flat arrays indexed by tree * width + node: np.take on 1-D arrays is several times
        # faster than 2-D fancy indexing.
        offsets = (np.arange(len(nodes)) * width)[:, None]
        arrays = {
            "feature": feature.ravel(), "threshold": threshold.ravel(),
            "left": (left + offsets).ravel(), "right": (right + offsets).ravel(),
            "missing_left": missing_left.ravel(), "value": value.ravel(), "roots": offsets,
        }  # fmt: skip
        return cls(estimator, arrays, depth)

    def raw_predict(self, features: Any) -> Any:
        """Sum of the baseline and every tree's leaf value, per row and class, as sklearn adds."""
        import numpy as np

        X = np.ascontiguousarray(features, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got shape {X.shape}")
        a = self.arrays
        k = self.trees_per_iteration
        n = len(X)
        cells = X.ravel()
        row_starts = np.arange(n) * self.n_features
        node = np.repeat(a["roots"], n, axis=1)  # (trees, rows): flat node index per tree
        for _ in range(self.depth):
            x = cells.take(row_starts + a["feature"].take(node))
            go_left = np.where(
                np.isnan(x), a["missing_left"].take(node), x <= a["threshold"].take(node)
            )
            node = np.where(go_left, a["left"].take(node), a["right"].take(node))
        leaves = a["value"].take(node)  # (trees, rows), iteration-major
        raw = np.empty((n, k), dtype=np.float64)
        for c in range(k):
            terms = np.concatenate([np.broadcast_to(self.baseline[:, c], (1, n)), leaves[c::k]])
            raw[:, c] = np.cumsum(terms, axis=0)[-1]
        return raw

    def predict_proba(self, features: Any) -> Any:
        return self.loss.predict_proba(self.raw_predict(features))


def inference_log_dir(env: dict[str, str] | None = None) -> Path:
    """Where inference logs go: $NBPROD_INFERENCE_LOG_DIR, else $BENTOML_HOME/inference_logs."""
    env = os.environ if env is None else env
    if env.get(LOG_DIR_ENV_VAR):
        return Path(env[LOG_DIR_ENV_VAR]).expanduser()
    home = env.get("BENTOML_HOME") or str(Path("~/bentoml"))
    return Path(home).expanduser() / LOG_SUBDIR


class InferenceLog:
    """Append-only JSONL file owned by one worker process.

    One file per process means no two writers share a file, so no locking and no interleaving
    across processes. Each line goes to the kernel with a single ``write`` on an ``O_APPEND``
    descriptor, so a record is durable against a worker crash as soon as ``write`` returns;
    fsync (which costs milliseconds) happens only at shutdown.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path: Path | None = None
        self._fd: int | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def open(self) -> Path:
        """Open this process's file (again after a fork); fail now if the folder is unusable."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                return self.path  # type: ignore[return-value]
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            name = f"inference-{stamp}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
            self.path = self.directory / f"{name}.jsonl"
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._pid = os.getpid()
            return self.path

    def write(self, line: bytes) -> None:
        """Append one complete line; loops on short writes so a line is never cut."""
        if self._fd is None or self._pid != os.getpid():
            self.open()
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)  # type: ignore[arg-type]
            view = view[written:]

    def close(self) -> None:
        """Flush to disk and close; safe to call twice."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                try:
                    os.fsync(self._fd)
                finally:
                    os.close(self._fd)
            self._fd = None


_INFERENCE_LOG: InferenceLog | None = None


def inference_log() -> InferenceLog:
    """The per-process inference log shared by the middleware and the service's hooks."""
    global _INFERENCE_LOG
    if _INFERENCE_LOG is None:
        _INFERENCE_LOG = InferenceLog(inference_log_dir())
    return _INFERENCE_LOG


# --- request guard: limits, error messages, request ids, inference logging -----------------------


def _error_body(errors: list[dict[str, Any]]) -> bytes:
    """A 4xx body whose ``error`` names the fields: ``records.1.purpose: Input should be ...``."""
    shown = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
    message = "; ".join(shown[:MAX_ERRORS_IN_MESSAGE])
    if len(shown) > MAX_ERRORS_IN_MESSAGE:
        message += f" (and {len(shown) - MAX_ERRORS_IN_MESSAGE} more)"
    return json.dumps({"error": f"invalid request: {message}", "detail": errors}).encode()


def rewrite_client_error(body: bytes) -> bytes:
    """Turn BentoML's 4xx body into one that names each field in its message.

    BentoML's own message is "N validation errors for PredictRequest"; the field is only in
    ``detail[].loc``, and an invalid-JSON error has an empty ``loc``. Only error responses pay
    for this parse.
    """
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("detail"), list):
        errors = [
            {
                "loc": list(item.get("loc") or ["body"]),
                "msg": str(item.get("msg", "invalid")),
                "type": str(item.get("type", "invalid")),
            }
            for item in parsed["detail"]
            if isinstance(item, dict)
        ]
        if errors:
            return _error_body(errors)
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        parsed = parsed[0]  # BentoMLException 4xx bodies are a one-element list
    message = parsed.get("error") if isinstance(parsed, dict) else None
    text = str(message or body[:200].decode("utf-8", errors="replace"))
    return _error_body([{"loc": ["body"], "msg": text, "type": "bad_request"}])


class RequestGuard:
    """Pure ASGI middleware in front of the BentoML app.

    It does what BentoML's request handling does not: refuses oversized bodies (413) and non-JSON
    content types (415) before parsing, gives each /predict a request id, rewrites 4xx bodies so
    the message names the field, and logs every successful prediction before its response is
    sent. It works on raw bytes — the log line splices the request and response bodies instead
    of re-encoding them — so the hot path pays microseconds.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        model_tag: str,
        run_version: str | None,
        predict_route: str = PREDICT_ROUTE,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.predict_route = predict_route
        self.max_body_bytes = max_body_bytes
        self.model_tag_header = model_tag.encode()
        # Constant middle of every log line, encoded once.
        self.log_constant = (
            json.dumps({"model_tag": model_tag, "run_version": run_version})[1:-1].encode() + b","
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Guard POST bodies; add request ids, readable errors and logging to /predict."""
        if scope["type"] == "http":
            set_bentoml_request_id()
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        is_predict = scope["path"] == self.predict_route
        content_length, media_type = None, ""
        for key, value in scope["headers"]:
            if key == b"content-length":
                content_length = value
            elif key == b"content-type":
                media_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
        if is_predict and media_type in NON_JSON_MEDIA_TYPES:
            await self._reject(
                send,
                415,
                "content-type",
                f"unsupported media type {media_type!r}: send JSON with "
                "'Content-Type: application/json'",
                "unsupported_media_type",
            )
            return
        if content_length is not None and content_length.isdigit():
            if int(content_length) > self.max_body_bytes:
                await self._reject_oversized(receive, send)
                return
        body = await self._read_body(receive)
        if body is None:
            await self._reject_oversized(receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if not is_predict:
            await self.app(scope, replay, send)
            return
        await self._guard_predict(scope, replay, send, body)

    async def _guard_predict(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        """Hold the response until it is complete: log it (200) or rewrite it (4xx), then send."""
        request_id = uuid.uuid4().hex
        arrived = datetime.now(UTC)
        started = time.perf_counter()
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status = start["status"]
            payload = b"".join(chunks)
            if status == 200:
                self._log(request_id, arrived, started, body, payload)
            elif 400 <= status < 500:
                payload = rewrite_client_error(payload)
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-length", str(len(payload)).encode()),
                (b"content-type", b"application/json"),
                (b"x-request-id", request_id.encode()),
                (b"x-model-tag", self.model_tag_header),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": payload, "more_body": False})

        await self.app(scope, receive, capture)

    def _log(
        self, request_id: str, arrived: datetime, started: float, request: bytes, response: bytes
    ) -> None:
        """Append one JSON line; raw JSON bodies are spliced in (newlines are only whitespace)."""
        latency_ms = (time.perf_counter() - started) * 1000
        line = b"".join(
            (
                b'{"request_id":"',
                request_id.encode(),
                b'","timestamp":"',
                arrived.isoformat(timespec="microseconds").encode(),
                b'",',
                self.log_constant,
                b'"latency_ms":',
                f"{latency_ms:.3f}".encode(),
                b',"request":',
                request.replace(b"\n", b" ").replace(b"\r", b" "),
                b',"response":',
                response.replace(b"\n", b" ").replace(b"\r", b" "),
                b"}\n",
            )
        )
        inference_log().write(line)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it exceeds the limit (chunked uploads too)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # client went away; the app will see an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _reject_oversized(self, receive: Receive, send: Send) -> None:
        """413, after reading (and dropping) the rest of a not absurdly large body.

        A client still sending its body when the answer comes sees a reset connection instead
        of the 413; a body past DRAIN_BYTES is not worth reading, so it gets the reset.
        """
        drained = 0
        while drained <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                break
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self._reject(
            send,
            413,
            "body",
            f"request body is larger than {self.max_body_bytes} bytes: "
            f"send at most {MAX_RECORDS} records per request",
            "payload_too_large",
        )

    @staticmethod
    async def _reject(send: Send, status: int, field: str, message: str, kind: str) -> None:
        await send_json(send, status, _error_body([{"loc": [field], "msg": message, "type": kind}]))


async def send_json(send: Send, status: int, payload: bytes) -> None:
    """Send a complete JSON response from ASGI middleware."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})


# --- BentoML's request timeout, without its timer leak --------------------------------------


async def _timeout_middleware_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """BentoML 1.4's ``TimeoutMiddleware.__call__`` with one change: the timer is cancelled.

    Upstream schedules ``loop.call_later(timeout, ...)`` per request and never cancels it, so
    every request's timer, future and context (with its OpenTelemetry span) stay alive for the
    whole traffic timeout: at 400 req/s and 30 s, ~100,000 objects that each gen-2 collection
    re-scans, in 200-300 ms pauses that were the p99 latency (benchmarks/RESULTS.md, P5).
    Behaviour is otherwise the same: 504 if the response has not started within the timeout.
    """
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def started(message: Message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    handler = asyncio.ensure_future(self.app(scope, receive, started))
    try:
        await waiter
    except TimeoutError:
        if handler.cancel():
            message = f"Not able to process the request in {self.timeout} seconds"
            await send_json(send, 504, json.dumps({"error": message}).encode())
    else:
        await handler
    finally:
        timer.cancel()


def cancel_request_timers() -> bool:
    """Install ``_timeout_middleware_call`` on BentoML's TimeoutMiddleware (idempotent).

    Patched on the class, so middleware instances already built use it too. Returns False, and
    changes nothing, if this BentoML has no such middleware or it no longer looks like 1.4's.
    """
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:
        return False
    if TimeoutMiddleware.__call__ is _timeout_middleware_call:
        return True
    if not hasattr(TimeoutMiddleware, "_set_timer_out"):
        logger.warning("BentoML's TimeoutMiddleware changed: its request timers are left alone")
        return False
    TimeoutMiddleware.__call__ = _timeout_middleware_call  # type: ignore[method-assign]
    return True


# --- BentoML's tracing, without recording the spans it will not export ---------------------------


def drop_unsampled_spans() -> bool:
    """Make BentoML's tracer build only the spans it samples (idempotent); False if it cannot.

    BentoML 1.4's sampler records every span it does not sample ("so that we can get the
    trace_id"), so with ``tracing.sample_rate`` at its default of 0 each request builds and
    fills a full SDK span that nothing ever exports: a fifth of a request's server CPU under
    load (0.82 → 0.66 ms, benchmarks/RESULTS.md, P5). OpenTelemetry's own
    ``ParentBasedTraceIdRatio`` samples the same traces and drops the rest as non-recording
    spans, which still carry a trace and span id, so the access log's ``trace=…,span=…`` and
    trace propagation are unchanged (BentoML's request id, which it reads from recorded spans
    only, is set by set_bentoml_request_id); a sampled request is recorded and exported as
    before. Call before BentoML creates its tracer provider (the worker does when it builds
    the app, after importing this module).
    """
    try:
        from bentoml._internal.utils import telemetry
        from opentelemetry.sdk.trace.sampling import ParentBased, ParentBasedTraceIdRatio
    except ImportError:
        return False
    if telemetry.ParentBasedTraceIdRatio is ParentBasedTraceIdRatio:
        return True
    if not issubclass(telemetry.ParentBasedTraceIdRatio, ParentBased):
        logger.warning("BentoML's trace sampler changed: its unsampled spans are left recording")
        return False
    telemetry.ParentBasedTraceIdRatio = ParentBasedTraceIdRatio  # type: ignore[misc]
    return True


def set_bentoml_request_id() -> None:
    """Set BentoML's request id (its ``X-BentoML-Request-ID`` header) to the request span's id.

    BentoML's own hook reads it from ``span.context``, which only a recorded span has; with
    drop_unsampled_spans most spans are not recorded. Called by RequestGuard, which runs inside
    the OpenTelemetry middleware (the request's span is current) and before BentoML's endpoint.
    """
    ids = get_current_span().get_span_context()
    if ids.is_valid:  # no span on the paths BentoML does not trace (health, metrics)
        trace_context.request_id = ids.span_id


def trace_sampler_name() -> str:
    """The dotted class name of the sampler BentoML's (process-wide) tracer provider uses."""
    from bentoml._internal.container import BentoMLContainer

    sampler = BentoMLContainer.tracer_provider.get().sampler
    return f"{type(sampler).__module__}.{type(sampler).__qualname__}"


# --- BentoML's API methods, bound once ----------------------------------------------------------


def bind_api_methods(instance: Any, names: tuple[str, ...]) -> None:
    """Store each API method's bound wrapper on the instance, so BentoML stops rebuilding it.

    BentoML 1.4's ``APIMethod.__get__`` builds a new wrapper (``inspect.signature`` plus
    ``functools.wraps``) on every attribute access, and its app reads the method twice per
    request: a tenth of a request's server CPU under load (0.62 → 0.56 ms,
    benchmarks/RESULTS.md, P5). The wrapper depends only on the function, so the first one
    serves every request; instance attributes take precedence over the (non-data) descriptor.
    The app calls its ``.local``, as before. One difference, on purpose: ``self.<api>()``
    inside the service now runs locally instead of through BentoML's HTTP proxy to the same
    service, which would tie up a worker.
    """
    for name in names:
        setattr(instance, name, getattr(instance, name))


# --- the service ---------------------------------------------------------------------------------

TRACING_DROPS_UNSAMPLED = drop_unsampled_spans()  # before the worker builds its app: see there
MODEL_TAG = resolve_model_tag()
MODEL_METADATA = load_model_metadata(MODEL_TAG)
LoanRecord = build_record_model(MODEL_METADATA[FEATURE_SCHEMA_KEY])
PredictRequest = build_request_model(LoanRecord)


# One worker process per core: the HTTP stack, not the model, is most of a request's CPU.
@bentoml.service(name=SERVICE_NAME, workers="cpu_count", traffic={"timeout": 30})
class LoanDefaultClassifier:
    """Serves the pinned scikit-learn pipeline behind /predict and /metadata."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        """Do all per-model work once per worker: load, check, precompute, warm up, open the log."""
        import joblib
        import numpy as np

        self.request_timers_cancelled = cancel_request_timers()
        self.trace_sampler = trace_sampler_name()
        bind_api_methods(self, tuple(LoanDefaultClassifier.apis))
        stored = self.model
        self.model_tag = str(stored.tag)
        self.model_metadata: dict[str, Any] = dict(stored.info.metadata)
        self.model_labels: dict[str, str] = dict(stored.info.labels)
        self.feature_schema: dict[str, Any] = self.model_metadata[FEATURE_SCHEMA_KEY]
        try:
            self.pipeline = joblib.load(stored.path_of(MODEL_FILE))
        except Exception as exc:  # unpickling fails in many ways; all mean "cannot serve"
            raise RuntimeError(
                f"Model {self.model_tag}: cannot load {MODEL_FILE} from {stored.path} "
                f"({type(exc).__name__}: {exc}); re-save the model with flows.packaging.save_model"
            ) from exc
        if not hasattr(self.pipeline, "predict_proba"):
            raise RuntimeError(f"Model {self.model_tag} has no predict_proba")
        classes = list(getattr(self.pipeline, "classes_", []))
        if 1 not in classes:
            raise RuntimeError(f"Model {self.model_tag} has classes {classes}, not class 1")
        self.positive_index = classes.index(1)
        numerical = self.feature_schema.get("numerical", {})
        categorical = self.feature_schema.get("categorical", {})
        schema_columns = [*numerical, *categorical]
        # sklearn refuses a DataFrame whose columns are not in fit order, so use that order.
        fitted = getattr(self.pipeline, "feature_names_in_", None)
        self.columns: list[str] = list(fitted) if fitted is not None else schema_columns
        if set(self.columns) != set(schema_columns):
            raise RuntimeError(
                f"Model {self.model_tag}: feature schema columns {sorted(schema_columns)} differ "
                f"from the pipeline's {sorted(self.columns)}; re-save it with the right schema"
            )
        # Column dtypes as read_csv gives them: ints stay int64 unless they may be missing.
        self.column_dtypes: dict[str, str] = {}
        for column in self.columns:
            spec = numerical.get(column)
            if spec is None:
                self.column_dtypes[column] = "object"
            elif spec.get("dtype") == "int" and not spec.get("nullable", False):
                self.column_dtypes[column] = "int64"
            else:
                self.column_dtypes[column] = "float64"
        # Pipeline.predict and .predict_proba would each run the preprocessing; run it once and
        # call the final estimator twice, which is exactly what the two Pipeline methods do.
        steps = getattr(self.pipeline, "steps", None)
        if steps and len(steps) > 1:
            self.preprocess = self.pipeline[:-1].transform
            self.estimator = self.pipeline[-1]
        else:
            self.preprocess = None
            self.estimator = self.pipeline
        self._single_threaded = threading.local()
        self.fast = self._compile_fast_path(steps)
        self.classes = np.asarray(classes)
        self.fast_model = self._compile_fast_model()
        self.predict_proba = (
            self.fast_model.predict_proba if self.fast_model else self.estimator.predict_proba
        )
        self.labels_from_proba = self._labels_follow_proba()
        self.metadata_response = self._describe()
        # Warm up (first calls pay lazy initialisation) and prove the model works before /readyz.
        self.score(self._probe_records())
        inference_log().open()

    def _labels_follow_proba(self) -> bool:
        """Whether ``predict`` is the argmax of ``predict_proba`` (checked on probe records).

        Then one model call per batch does both: for tree ensembles the per-call cost (a Python
        loop over the trees) dominates small batches, so this halves a single-row request's
        model time. Any estimator whose labels differ keeps its own ``predict``.
        """
        import numpy as np

        probes = self._probe_records()
        features = self._features(probes)
        proba = self.estimator.predict_proba(features)
        derived = self.classes[np.argmax(proba, axis=1)]
        return bool(np.array_equal(derived, self.estimator.predict(features)))

    def _features(self, records: list[Any]) -> Any:
        if self.fast is not None:
            return self.fast.transform(records)
        if self.preprocess is not None:
            return self.preprocess(self.to_frame(records))
        return self.to_frame(records)

    def _compile_fast_model(self) -> FastBoostedTrees | None:
        """Use FastBoostedTrees only if it gives sklearn's exact probabilities on probe records."""
        import numpy as np

        fast = FastBoostedTrees.compile(self.estimator)
        if fast is None:
            return None
        features = self._features(self._probe_records())
        try:
            expected = self.estimator.predict_proba(features)
            same = np.array_equal(fast.predict_proba(features), expected)
        except (ValueError, TypeError, IndexError) as exc:
            logger.warning("%s: fast tree walk failed (%s); not used", self.model_tag, exc)
            return None
        if not same:
            logger.warning("%s: fast tree walk differs from sklearn's; not used", self.model_tag)
            return None
        return fast

    def _compile_fast_path(self, steps: list[tuple[str, Any]] | None) -> FastPreprocessor | None:
        """Use FastPreprocessor only if it reproduces sklearn's matrix exactly on probe records."""
        import numpy as np

        if not steps or len(steps) != 2 or hasattr(self.estimator, "feature_names_in_"):
            return None
        fast = FastPreprocessor.compile(steps[0][1])
        if fast is None:
            return None
        probes = self._probe_records()
        expected = self.preprocess(self.to_frame(probes))  # type: ignore[misc]
        got = fast.transform(probes)
        if (
            not isinstance(expected, np.ndarray)
            or expected.shape != got.shape
            or expected.dtype != got.dtype
            or not np.array_equal(expected, got)
        ):
            logger.warning(
                "%s: fast preprocessing differs from sklearn's; not used", self.model_tag
            )
            return None
        return fast

    def _probe_records(self) -> list[Any]:
        """Valid records covering every category, every missing value and the range ends."""
        base = self._example_record()
        variants: list[dict[str, Any]] = [base]
        for column, spec in self.feature_schema.get("categorical", {}).items():
            variants += [{**base, column: category} for category in spec["categories"]]
            if spec.get("nullable", False):
                variants.append({**base, column: None})
        for column, spec in self.feature_schema.get("numerical", {}).items():
            for bound in accepted_range(spec):
                if bound is not None:
                    variants.append({**base, column: bound})
            if spec.get("nullable", False):
                variants.append({**base, column: None})
        return [LoanRecord.model_validate(v) for v in variants]

    def _describe(self) -> dict[str, Any]:
        meta = self.model_metadata
        return {
            "model_tag": self.model_tag,
            "run_version": meta.get("run_version", self.model_labels.get("run_version")),
            "metrics": meta.get("metrics", {}),
            "lineage": meta.get("lineage", {}),
            "data_sha256": meta.get("data_sha256"),
            "labels": self.model_labels,
            "feature_schema": self.feature_schema,
            "record_schema": LoanRecord.model_json_schema(),
            "limits": {"max_records": MAX_RECORDS, "max_body_bytes": MAX_BODY_BYTES},
            # Whether FastPreprocessor replaced sklearn's preprocessing (see its docstring).
            "fast_preprocessing": self.fast is not None,
            # Whether labels come from the same predict_proba call (see _labels_follow_proba).
            "labels_from_proba": self.labels_from_proba,
            # Whether FastBoostedTrees replaced sklearn's tree walk (see its docstring).
            "fast_model": self.fast_model is not None,
            # Whether BentoML's request timers are cancelled (see cancel_request_timers).
            "request_timers_cancelled": self.request_timers_cancelled,
            # The sampler of the tracer that spans each request (see drop_unsampled_spans).
            "trace_sampler": self.trace_sampler,
        }

    def _example_record(self) -> dict[str, Any]:
        """A valid record from the schema: mid-range numbers, first categories."""
        record: dict[str, Any] = {}
        for column, spec in self.feature_schema.get("numerical", {}).items():
            low, high = spec.get("min"), spec.get("max")
            middle = 0.0 if low is None or high is None else (low + high) / 2
            record[column] = round(middle) if spec.get("dtype") == "int" else float(middle)
        for column, spec in self.feature_schema.get("categorical", {}).items():
            record[column] = spec["categories"][0]
        return record

    def to_frame(self, records: list[Any]) -> Any:
        """Build the DataFrame the pipeline was fit on: fit column order, missing as NaN."""
        import numpy as np
        import pandas as pd

        data: dict[str, Any] = {}
        for column, dtype in self.column_dtypes.items():
            values = [record.__dict__[column] for record in records]
            if dtype == "object":
                # None -> NaN: SimpleImputer's missing marker for object columns, as read_csv.
                data[column] = np.array([np.nan if v is None else v for v in values], dtype=object)
            else:
                data[column] = np.array(values, dtype=dtype)  # None -> NaN for float64
        return pd.DataFrame(data, columns=self.columns)

    def score(self, records: list[Any]) -> list[Prediction]:
        """Predict validated records. A plain method so APIs can share it without calling APIs."""
        import numpy as np

        if not getattr(self._single_threaded, "done", False):
            # One OpenMP thread: tiny batches gain nothing from more, and the event loop needs
            # the other core. The limit is per thread, so set it in each inference thread.
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1, user_api="openmp")
            self._single_threaded.done = True
        features = self._features(records)
        proba = self.predict_proba(features)
        if self.labels_from_proba:
            predictions = self.classes[np.argmax(proba, axis=1)]
        else:
            predictions = self.estimator.predict(features)
        probabilities = proba[:, self.positive_index]
        if not np.isfinite(probabilities).all():
            raise RuntimeError(f"Model {self.model_tag} produced a non-finite probability")
        return [
            Prediction.model_construct(prediction=p, probability=q)
            for p, q in zip(predictions.tolist(), probabilities.tolist(), strict=True)
        ]

    @bentoml.api(
        route=PREDICT_ROUTE,
        input_spec=PredictRequest,
        batchable=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    def predict(self, records: list[Any]) -> list[Prediction]:
        """Predict default (0/1) and its probability for each record, in input order.

        Batchable: BentoML validates each request, then concatenates the records of concurrent
        requests into one call and splits the results back per request.
        """
        return self.score(records)

    @bentoml.api(route="/metadata")
    async def metadata(self) -> dict[str, Any]:
        """Identify the served model: tag, training run, metrics and lineage.

        Async so it answers on the event loop instead of queueing behind inference threads.
        """
        return self.metadata_response

    @bentoml.on_startup
    def freeze_startup_objects(self) -> None:
        """Move everything alive once the worker is up out of the garbage collector's scans.

        A worker holds ~220,000 long-lived objects (BentoML, pydantic, sklearn, the model) that
        every full collection would walk again: 200-300 ms pauses under load. Frozen, a full
        collection only walks what requests create.
        """
        gc.collect()
        gc.freeze()

    @bentoml.on_shutdown
    def close_inference_log(self) -> None:
        """Flush this worker's inference log to disk on a normal shutdown."""
        inference_log().close()


# The output is always JSON: saying so spares BentoML deriving the media type from the output's
# JSON schema on every response.
LoanDefaultClassifier.apis["predict"].output_spec.media_type = "application/json"
LoanDefaultClassifier.add_asgi_middleware(
    RequestGuard, model_tag=MODEL_TAG, run_version=MODEL_METADATA.get("run_version")
)
