"""Answer an unchanged re-run of a notebook spec with the version that already holds its outputs.

Why: a re-run whose every notebook call would hit the cache executes nothing, yet through the flow
it still starts Prefect's engine in a fresh process, about 40 % of a cold run here
(benchmarks/RESULTS.md, P2). So ``nbprod run --spec`` asks this module first, which imports
neither Prefect nor pydantic nor YAML: are the calls the last completed run of this spec (with
these parameters) planned still the same, by the same cache keys (flows.runner.call_cache_key:
notebook source, parameters, input file contents, environment), with their cached files present,
under the same settings, spec and policy? Then that version answers, as make or DVC answer for an
up-to-date target, and the re-run is still accounted for: a ``notebook_pipeline`` flow run in a
``Cached`` state on Prefect's server with a summary artifact naming the version and the cached
notebook calls (Prefect's REST API; no task runs, as nothing ran), and an entry next to the
version in the run store (``RunStore.add_rerun``). Any difference or doubt: the flow runs.

The flow writes what this module checks (:func:`write_ticket`) when a run completes: what it
planned. So "unchanged" here is the cache's own definition, not a second one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flows.artifacts import SUMMARY_KEY, summary_markdown
from flows.errors import NbprodError, RunStoreError
from flows.manifest import file_sha256
from flows.paths import home_dir, resolve_project_path, settings_environment, write_atomic
from flows.run_records import utc_now
from flows.runner import call_cache_key, environment_fingerprint, environment_stamp
from flows.store import RunStore

TICKETS_DIRNAME = "uptodate"
TICKET_SCHEMA = 1
FLOW_NAME = "notebook_pipeline"
HTTP_TIMEOUT_S = 10.0
RETRIES = 5
RETRY_CODES = (429, 502, 503)


class PrefectApiError(NbprodError):
    """Prefect's server refused or did not answer a request."""


def ticket_path(home: Path, spec_file: Path, parameters: Mapping[str, Any] | None) -> Path:
    """One ticket per spec and parameter overrides: re-runs with other values have their own."""
    identity = json.dumps(
        {"spec": str(spec_file), "parameters": dict(parameters or {})}, sort_keys=True, default=str
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return home / TICKETS_DIRNAME / f"{digest}.json"


def write_ticket(
    *,
    home: Path,
    spec_file: Path,
    parameters: Mapping[str, Any] | None,
    run_store_url: str | None,
    store_url: str,
    version: str,
    kernel_name: str,
    calls: Iterable[Mapping[str, Any]],
    inputs: Iterable[Path] = (),
    prefect: Mapping[str, str] | None = None,
) -> Path:
    """Record what a completed run planned, for :func:`current_ticket` to check later.

    ``calls`` are the planned notebook calls (name, notebook, parameters, secrets, cache_key and
    ``cached``: the files the cache needs); ``inputs`` are other files the run read (the policy);
    ``prefect`` the server the run was recorded on and its flow's id there (``api_url``,
    ``flow_id``), which spares a re-run recorded on the same server one round trip.
    """
    calls = [dict(call) for call in calls]
    ticket = {
        "schema": TICKET_SCHEMA,
        "version": version,
        "store_url": store_url,
        "run_store_url": run_store_url,
        "spec_file": str(spec_file),
        "parameters": dict(parameters or {}),
        "files": {str(p): _content_hash(p) for p in (spec_file, *inputs)},
        "settings": settings_environment(),
        "kernel_name": kernel_name,
        "calls": calls,
        "environment": {
            "fingerprint": environment_fingerprint(kernel_name),
            "stamp": environment_stamp(),
        },
        "prefect": dict(prefect or {}),
        "written_at": utc_now(),
    }
    path = ticket_path(home, spec_file, parameters)
    write_atomic(path, json.dumps(ticket, indent=2, sort_keys=True, default=str))
    return path


def current_ticket(
    spec_file: Path, parameters: Mapping[str, Any] | None, run_store_url: str | None
) -> dict[str, Any] | None:
    """The ticket of the last completed run of this spec and parameters, if nothing changed."""
    try:
        ticket = json.loads(ticket_path(home_dir(), spec_file, parameters).read_text())
    except (OSError, ValueError):
        return None
    if (
        ticket.get("schema") != TICKET_SCHEMA
        or ticket.get("spec_file") != str(spec_file)
        or ticket.get("parameters") != dict(parameters or {})
        or ticket.get("run_store_url") != run_store_url
        or ticket.get("settings") != settings_environment()
    ):
        return None
    try:
        if any(_content_hash(f) != digest for f, digest in ticket["files"].items()):
            return None
        kernel_name = ticket["kernel_name"]
        recorded = ticket["environment"]
        unchanged = recorded["stamp"] == json.loads(json.dumps(environment_stamp()))
        environment = recorded["fingerprint"] if unchanged else environment_fingerprint(kernel_name)
        for call in ticket["calls"]:
            key = call_cache_key(
                Path(call["notebook"]),
                call["parameters"],
                call["secrets"],
                kernel_name,
                environment=environment,
            )
            if key != call["cache_key"] or not all(Path(f).is_file() for f in call["cached"]):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ticket


def _content_hash(path: str | Path) -> str | None:
    """A file's sha256, or None while it does not exist (so that creating it is a change)."""
    return file_sha256(path) if Path(path).is_file() else None


class PrefectApi:
    """The few calls of Prefect's REST API a re-run record needs, over the standard library.

    Authenticated as Prefect's client is: ``PREFECT_API_KEY`` (Prefect Cloud) or
    ``PREFECT_API_AUTH_STRING`` (a server with basic auth).
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if os.environ.get("PREFECT_API_KEY"):
            self.headers["Authorization"] = f"Bearer {os.environ['PREFECT_API_KEY']}"
        elif os.environ.get("PREFECT_API_AUTH_STRING"):
            token = base64.b64encode(os.environ["PREFECT_API_AUTH_STRING"].encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST ``body``; a busy server (429, 502, 503) is retried, as Prefect's client does.

        Why retry: Prefect's SQLite server answers 503 ("database is locked") while it is still
        writing the previous run's events, which a re-run right after a run can meet.
        """
        data = json.dumps(body, default=str).encode()
        for attempt in range(RETRIES + 1):
            request = urllib.request.Request(
                f"{self.url}{path}", data=data, headers=self.headers, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                    payload = response.read()
                return json.loads(payload) if payload else None
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                if exc.code not in RETRY_CODES or attempt == RETRIES:
                    raise PrefectApiError(
                        f"Prefect API {path} answered {exc.code}: {detail}"
                    ) from exc
                time.sleep(_retry_after(exc.headers.get("Retry-After"), attempt))
            except (urllib.error.URLError, OSError) as exc:
                raise PrefectApiError(f"Prefect API at {self.url} did not answer: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _retry_after(header: str | None, attempt: int) -> float:
    """The server's Retry-After when it gives one (capped at 5 s), else 0.1 s doubling."""
    try:
        return min(float(header), 5.0) if header else 0.1 * 2**attempt
    except ValueError:
        return 0.1 * 2**attempt


def answer_rerun(
    spec: str,
    parameters: Mapping[str, Any] | None,
    run_store_url: str | None,
    triggered_by: str,
) -> tuple[dict[str, Any], RunStore] | None:
    """The completed run that answers this re-run (and its store); None: run the flow.

    Only with ``PREFECT_API_URL`` set: without it the flow starts Prefect's embedded server, and
    a re-run recorded anywhere else would not show where the user's runs show.
    """
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        return None
    spec_file = resolve_project_path(spec).resolve()
    ticket = current_ticket(spec_file, parameters, run_store_url)
    if ticket is None:
        return None
    store = RunStore(ticket["store_url"])
    try:
        record = store.get_run(ticket["version"])
    except (RunStoreError, OSError, ValueError):
        return None
    if record.get("status") != "completed":
        return None
    api = PrefectApi(api_url)
    version = record["version"]
    try:
        flow_run_id = _create_flow_run(api, ticket, spec, parameters, run_store_url, triggered_by)
    except PrefectApiError:
        return None  # nothing recorded yet: the flow reports an unreachable server its own way
    rerun = {
        "at": utc_now(),
        "triggered_by": triggered_by,
        "flow_run_id": flow_run_id,
        "spec": spec,
        "parameters": dict(parameters or {}),
    }
    # No task runs: nothing ran. The summary names the reused calls. And one request after the
    # other: Prefect's SQLite server meets concurrent writes with 503 ("database is locked").
    try:
        _publish_summary(api, flow_run_id, {**record, "rerun": rerun}, ticket["calls"], store)
        store.add_rerun(version, rerun)
    except BaseException as exc:
        try:
            api.post(
                f"/flow_runs/{flow_run_id}/set_state",
                {
                    "state": {"type": "FAILED", "message": f"recording the re-run: {exc}"},
                    "force": True,
                },
            )
        except PrefectApiError:
            pass
        raise
    return {**record, "rerun": rerun}, store


def _create_flow_run(
    api: PrefectApi,
    ticket: Mapping[str, Any],
    spec: str,
    parameters: Mapping[str, Any] | None,
    run_store_url: str | None,
    triggered_by: str,
) -> str:
    """A ``notebook_pipeline`` flow run, created in its final Cached state; returns its id.

    The flow's id on this server comes from the ticket when the run it records used the same
    server (one round trip less); a flow deleted since is looked up again.
    """
    known = ticket.get("prefect") or {}
    same_server = str(known.get("api_url", "")).rstrip("/") == api.url
    flow_id = known.get("flow_id") if same_server else None
    version = ticket["version"]
    body = {
        "parameters": {
            "spec": spec,
            "parameters": dict(parameters) if parameters else None,
            "no_cache": False,
            "run_store_url": run_store_url,
            "triggered_by": triggered_by,
        },
        "state": {
            "type": "COMPLETED",
            "name": "Cached",
            "message": f"inputs unchanged since run {version}, which answers this re-run: "
            "nothing executed",
        },
        "tags": ["nbprod", "up-to-date"],
    }
    if flow_id:
        try:
            return api.post("/flow_runs/", {**body, "flow_id": flow_id})["id"]
        except PrefectApiError:
            pass
    flow_id = api.post("/flows/", {"name": FLOW_NAME})["id"]
    return api.post("/flow_runs/", {**body, "flow_id": flow_id})["id"]


def _publish_summary(
    api: PrefectApi,
    flow_run_id: str,
    record: dict[str, Any],
    calls: list[dict[str, Any]],
    store: RunStore,
) -> None:
    """The run's summary artifact, saying it is a re-run and which cached calls answer it."""
    version = record["version"]
    links = {"run record": store.uri(version, "run.json"), "run folder": store.uri(version)}
    reused = "\n".join(f"- `{c['name']}`: cache key `{c['cache_key']}`" for c in calls)
    summary = (
        f"Re-run answered by run `{version}` (finished {record.get('finished_at')}): notebooks, "
        "parameters, input data, environment, settings and spec unchanged, nothing executed. "
        f"Notebook calls reused from the cache:\n\n{reused}\n\n"
        + summary_markdown(_without_nan(record), links)
    )
    api.post(
        "/artifacts/",
        {
            "key": SUMMARY_KEY,
            "type": "markdown",
            "data": summary,
            "description": f"nbprod re-run answered by {version}",
            "flow_run_id": flow_run_id,
        },
    )


def _without_nan(value: Any) -> Any:
    """NaN is not JSON: null, as Prefect's own table artifacts send it."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    return value
