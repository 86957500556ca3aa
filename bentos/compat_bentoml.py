"""The serve-time workaround for a BentoML defect, applied only to the versions known to have it.

Upstream behaviour (BentoML 1.4.0 to 1.4.40, ``bentoml/_internal/server/http/traffic.py``):
``TimeoutMiddleware.__call__`` schedules ``loop.call_later(timeout, ...)`` for every request and
never cancels it. Each request's timer, future and context (with its OpenTelemetry span) then
stay alive for the whole traffic timeout (30 s here): under load ~100,000 objects that every
full garbage collection re-scans, in 200-300 ms pauses that became the p99 latency
(benchmarks/RESULTS.md, P5). Not reported upstream as of 1.4.40: docs/upstream/bentoml.md holds
the issue text to file.

The fix is the same method with the timer cancelled once the request is answered. It is
installed only when the running BentoML is in ``AFFECTED_VERSIONS`` and its middleware still
has the shape it replaces; otherwise BentoML is left as it is. tests/test_serving.py checks that
upstream still leaks (so the workaround goes when a fixed BentoML is installed) and that the
fixed method keeps the 504 on timeouts. The store's defect under concurrent writers (same
file) is met where nbprod writes the store: flows/packaging.py's lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import bentoml
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

# The BentoML versions whose TimeoutMiddleware leaks its timers.
AFFECTED_VERSIONS = SpecifierSet(">=1.4.0,<=1.4.40")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

logger = logging.getLogger("bentoml.service.nbprod")


def bentoml_version(text: str | None = None) -> Version | None:
    """BentoML's version (or ``text`` read as one); None when it is not a version."""
    try:
        return Version(text if text is not None else bentoml.__version__)
    except InvalidVersion:
        return None


def is_affected(version: Version | None) -> bool:
    """Whether this BentoML version is one the workaround was written for."""
    return version is not None and AFFECTED_VERSIONS.contains(version, prereleases=True)


async def _timeout_middleware_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """BentoML 1.4's ``TimeoutMiddleware.__call__`` with one change: the timer is cancelled.

    Otherwise the same: 504 if the response has not started within the timeout.
    """
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def started(message: MutableMapping[str, Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    handler = asyncio.ensure_future(self.app(scope, receive, started))
    try:
        await waiter
    except TimeoutError:
        if handler.cancel():
            message = f"Not able to process the request in {self.timeout} seconds"
            payload = json.dumps({"error": message}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 504,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload, "more_body": False})
    else:
        await handler
    finally:
        timer.cancel()


def cancel_request_timers() -> bool:
    """Install the fixed ``TimeoutMiddleware.__call__`` on an affected BentoML (idempotent).

    Returns whether the fix is in place. Patched on the class, so middleware instances already
    built use it too.
    """
    if not is_affected(bentoml_version()):
        return False
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
