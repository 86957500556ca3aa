"""ASGI middleware in front of the BentoML app: limits, one-line 4xx errors, request ids, logging.

What BentoML's request handling does not do, done on raw bytes so the hot path pays microseconds:

- refuses oversized bodies (413) and non-JSON content types on /predict (415) before parsing;
- gives each /predict a request id (``X-Request-ID``, also the inference-log key) and names the
  served model (``X-Model-Tag``);
- rewrites 4xx bodies so ``error`` is one line naming each field (``records.3.purpose: Input
  should be ...``) and ``detail`` lists every problem with its ``loc``;
- appends every successful prediction to the inference log before its response is sent, so a
  client that got its answer knows it is logged.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from inference_log import inference_log
from request_schema import MAX_RECORDS

MAX_BODY_BYTES = 8 * 1024 * 1024
# An oversized body up to this size is read and dropped so the client can read its 413.
DRAIN_BYTES = 8 * MAX_BODY_BYTES
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


def error_body(errors: list[dict[str, Any]]) -> bytes:
    """A 4xx body whose ``error`` names the fields: ``records.1.purpose: Input should be ...``."""
    shown = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
    message = "; ".join(shown[:MAX_ERRORS_IN_MESSAGE])
    if len(shown) > MAX_ERRORS_IN_MESSAGE:
        message += f" (and {len(shown) - MAX_ERRORS_IN_MESSAGE} more)"
    return json.dumps({"error": f"invalid request: {message}", "detail": errors}).encode()


def rewrite_client_error(body: bytes) -> bytes:
    """Turn BentoML's 4xx body into one whose message names each field.

    BentoML's own message is "N validation errors for PredictRequest"; the field is only in
    ``detail[].loc``, and an invalid-JSON error has an empty ``loc``.
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
            return error_body(errors)
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        parsed = parsed[0]  # BentoMLException 4xx bodies are a one-element list
    message = parsed.get("error") if isinstance(parsed, dict) else None
    text = str(message or body[:200].decode("utf-8", errors="replace"))
    return error_body([{"loc": ["body"], "msg": text, "type": "bad_request"}])


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


class RequestGuard:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        model_tag: str,
        run_version: str | None,
        predict_route: str = "/predict",
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
            message = (
                f"unsupported media type {media_type!r}: send JSON with "
                "'Content-Type: application/json'"
            )
            await self._reject(send, 415, "content-type", message, "unsupported_media_type")
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
        message_text = (
            f"request body is larger than {self.max_body_bytes} bytes: "
            f"send at most {MAX_RECORDS} records per request"
        )
        await self._reject(send, 413, "body", message_text, "payload_too_large")

    @staticmethod
    async def _reject(send: Send, status: int, field: str, message: str, kind: str) -> None:
        await send_json(send, status, error_body([{"loc": [field], "msg": message, "type": kind}]))
