"""``nbprod ui``: the run store, read-only, over HTTP on 127.0.0.1.

URL paths are the store's own layout (``/versions/<version>/reports/data_drift.html``), so the
links in Prefect artifacts (flows.links) work the same against this server or any web server
that serves the store folder. On top: ``/`` lists the pipelines, ``/pipelines/<name>/`` a
pipeline's versions (status, key metrics, links), ``/versions/<version>/`` one run.

What is served: files of listed versions (``run.json`` written), champion pointers and their
history, follow-ups; nothing else. A path with an empty, ``.`` or ``..`` segment, a hidden or
temporary file, or one that resolves outside the store (a symlink) is a 404; only GET and HEAD
are answered, and nothing is ever written (unlike ``RunStore.champion``, which completes an
interrupted champion move, pages read the pointer file as it is).

Why Starlette and uvicorn: both ship with Prefect and BentoML (no new dependency), serve files
with ranges and HEAD (``FileResponse``), answer requests concurrently, and stop cleanly on
Ctrl-C; ``http.server`` would need all of that written here. Only the standard library is
imported at module level: ``register_commands`` runs for every ``nbprod --help``.
"""

from __future__ import annotations

import argparse
import html
import json
import mimetypes
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flows.links import UI_HOST, local_ui_url, ui_port

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from flows.store import RunStore

HEALTH_PATH = "/healthz"
HEALTH_TEXT = "nbprod ui"
SERVED_ROOTS = ("versions", "pipelines", "followups")
CONTENT_TYPES = {
    ".ipynb": "application/json",  # shown by the browser (it is JSON), not downloaded
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".html": "text/html; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
}
KEY_REPORTS = ("data_drift", "model_performance", "data_summary")
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1b1f24;max-width:80rem}
table{border-collapse:collapse;margin:1rem 0}td,th{border-bottom:1px solid #d0d7de;
padding:.35rem .7rem;text-align:left;vertical-align:top}th{background:#f6f8fa}
.accepted,.completed{color:#1a7f37;font-weight:600}.rejected{color:#bc4c00;font-weight:600}
.failed{color:#cf222e;font-weight:600}code{background:#f6f8fa;padding:0 .2rem}
img{max-width:100%;border:1px solid #d0d7de;margin:.5rem 0}
"""


# -- paths --------------------------------------------------------------------------------------
def safe_relative_path(path: str) -> str | None:
    """``path`` as a store-relative path if it may be served, else None.

    Refused: an empty, ``.`` or ``..`` segment (so no absolute path either), a hidden or
    temporary file (locks, half-written temp files), a backslash or NUL, and anything outside
    the folders the store shares (versions, pipeline champions, follow-ups).
    """
    segments = path.split("/")
    if not path or any(s in ("", ".", "..") for s in segments):
        return None
    if any(s.startswith(".") or ".tmp-" in s or "\\" in s or "\0" in s for s in segments):
        return None
    if segments[0] not in SERVED_ROOTS or len(segments) < 2:
        return None
    return path


class StoreReader:
    """Read-only access to a run store's files for the server (never writes, never migrates)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.root = store.root.rstrip("/")
        self.real_root = os.path.realpath(self.root) if store.is_local else None

    def full_path(self, rel: str) -> str | None:
        """Where a safe relative path is; None when it is not a servable file of the store."""
        from flows.run_records import VERSION_PATTERN

        segments = rel.split("/")
        if segments[0] == "versions":
            if not re.fullmatch(VERSION_PATTERN, segments[1]) or not self.listed(segments[1]):
                return None
        full = f"{self.root}/{rel}"
        if self.real_root is not None:
            real = os.path.realpath(full)
            if not real.startswith(self.real_root + os.sep) or not os.path.isfile(real):
                return None
            return real
        return full if self.store.fs.isfile(full) else None

    def listed(self, version: str) -> bool:
        record = self.store.version_path(version, "run.json")
        return os.path.isfile(record) if self.store.is_local else self.store.fs.exists(record)

    def read_bytes(self, full: str) -> bytes:
        if self.store.is_local:
            with open(full, "rb") as fh:
                return fh.read()
        return bytes(self.store.fs.cat_file(full))

    def runs(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        return self.store.list_runs(pipeline)

    def champion_version(self, pipeline: str) -> str | None:
        """The pointer file as it is (no completion of an interrupted move: that writes)."""
        full = self.full_path(f"pipelines/{pipeline}/champion.json")
        if full is None:
            return None
        try:
            return str(json.loads(self.read_bytes(full)).get("version"))
        except (OSError, ValueError):
            return None

    def files(self, version: str) -> list[str]:
        return [f for f in self.store.files(version) if safe_relative_path(f"versions/x/{f}")]


# -- pages --------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape("—" if value is None else str(value))


def _page(title: str, body: Iterable[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>{''.join(body)}"
        f"<p><small>nbprod ui: the run store, read-only</small></p></body></html>"
    )


def _metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else _e(value)


def key_figures(record: dict[str, Any]) -> str:
    """A run's key numbers on one line: candidate metrics, or the drift verdict and share."""
    drift = record.get("drift") or {}
    if record.get("kind") == "monitoring" or drift.get("verdict"):
        share = drift.get("drift_share")
        share_text = f"{share:.2f}" if isinstance(share, float) else "—"
        return f"{_e(drift.get('verdict'))}: drift share {share_text}"
    candidate = (record.get("metrics") or {}).get("candidate") or {}
    return ", ".join(f"{_e(k)} {_metric(v)}" for k, v in list(candidate.items())[:4]) or "—"


def index_page(reader: StoreReader) -> str:
    from flows.run_records import pipeline_of

    runs = reader.runs()
    by_pipeline: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_pipeline.setdefault(pipeline_of(run), []).append(run)
    rows = [
        f"<tr><td><a href='/pipelines/{quote(name)}/'>{_e(name)}</a></td><td>{len(found)}</td>"
        f"<td>{_e(reader.champion_version(name))}</td><td>{_e(found[-1]['version'])} "
        f"<span class='{_e(found[-1].get('status'))}'>{_e(found[-1].get('status'))}</span>"
        "</td></tr>"
        for name, found in sorted(by_pipeline.items())
    ]
    body = [f"<p>Run store <code>{_e(reader.store.url)}</code>.</p>"]
    head = "<tr><th>pipeline</th><th>runs</th><th>champion</th><th>latest</th></tr>"
    body += ["<table>", head, *rows, "</table>"] if rows else ["<p>No runs stored yet.</p>"]
    return _page("nbprod runs", body)


def pipeline_page(reader: StoreReader, pipeline: str) -> str | None:
    from flows.run_records import flow_of

    runs = list(reversed(reader.runs(pipeline)))
    if not runs:
        return None
    champion = reader.champion_version(pipeline)
    rows = []
    for run in runs:
        version = run["version"]
        status = str(run.get("status"))
        files = set(reader.files(version))
        links = [f"<a href='/versions/{version}/run.json'>run.json</a>"]
        links += [
            f"<a href='/versions/{version}/reports/{name}.html'>{name.replace('_', ' ')}</a>"
            for name in KEY_REPORTS
            if f"reports/{name}.html" in files
        ]
        links += [
            f"<a href='/versions/{version}/{quote(f)}'>{_e(f.split('/')[-1])}</a>"
            for f in sorted(files)
            if f.startswith("notebooks/") and f.endswith(".html")
        ]
        crown = " (champion)" if version == champion else ""
        rows.append(
            f"<tr><td><a href='/versions/{version}/'>{_e(version)}</a>{crown}</td>"
            f"<td>{_e((flow_of(run) or '').removesuffix('_pipeline'))}</td>"
            f"<td class='{_e(status)}'>{_e(status)}</td><td>{_e(run.get('finished_at'))}</td>"
            f"<td>{key_figures(run)}</td><td>{' · '.join(links)}</td></tr>"
        )
    head = (
        "<tr><th>version</th><th>flow</th><th>status</th><th>finished</th>"
        "<th>key figures</th><th>links</th></tr>"
    )
    body = [
        "<p><a href='/'>all pipelines</a></p>",
        f"<p>Champion: <code>{_e(champion)}</code>; {len(runs)} runs, newest first.</p>",
        "<table>",
        head,
        *rows,
        "</table>",
    ]
    return _page(f"nbprod pipeline {pipeline}", body)


def version_page(reader: StoreReader, version: str) -> str | None:
    from flows.run_records import pipeline_of

    if not reader.listed(version):
        return None
    record = reader.store.get_run(version)
    pipeline = pipeline_of(record)
    status = str(record.get("status"))
    body = [
        f"<p>Pipeline <a href='/pipelines/{quote(pipeline)}/'>{_e(pipeline)}</a>; "
        f"<span class='{_e(status)}'>{_e(status.upper())}</span>; finished "
        f"{_e(record.get('finished_at'))}; key figures: {key_figures(record)}.</p>"
    ]
    reasons = record.get("reasons") or ([record["error"]] if record.get("error") else [])
    if reasons:
        body += ["<ul>", *[f"<li>{_e(r)}</li>" for r in reasons], "</ul>"]
    for figure in record.get("figures") or []:
        body.append(
            f"<h2>{_e(figure.get('title'))}</h2><img alt='{_e(figure.get('title'))}' "
            f"src='/versions/{version}/{quote(str(figure.get('path')))}'>"
        )
    files = reader.files(version)
    body += ["<h2>Files</h2><ul>"]
    body += [f"<li><a href='/versions/{version}/{quote(f)}'>{_e(f)}</a></li>" for f in files]
    body.append("</ul>")
    return _page(f"nbprod run {version}: {status.upper()}", body)


# -- the application ----------------------------------------------------------------------------
def create_app(store: RunStore) -> Starlette:
    """The read-only Starlette application over ``store``."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse
    from starlette.routing import Route

    reader = StoreReader(store)
    methods = ["GET", "HEAD"]

    def not_found() -> Response:
        return PlainTextResponse("not found in the run store", status_code=404)

    async def health(request: Request) -> Response:
        return PlainTextResponse(f"{HEALTH_TEXT} {store.url}")

    async def index(request: Request) -> Response:
        return HTMLResponse(index_page(reader))

    async def pipeline(request: Request) -> Response:
        from flows.errors import RunStoreError

        try:
            page = pipeline_page(reader, request.path_params["name"])
        except RunStoreError:
            page = None
        return HTMLResponse(page) if page else not_found()

    async def version(request: Request) -> Response:
        from flows.errors import RunStoreError

        try:
            page = version_page(reader, request.path_params["version"])
        except RunStoreError:
            page = None
        return HTMLResponse(page) if page else not_found()

    async def file(request: Request) -> Response:
        return serve_file(reader, request.path_params["path"])

    async def folder(request: Request) -> Response:
        return RedirectResponse(request.url.path + "/")

    return Starlette(
        routes=[
            Route(HEALTH_PATH, health, methods=methods),
            Route("/", index, methods=methods),
            Route("/pipelines/{name}/", pipeline, methods=methods),
            Route("/versions/{version}/", version, methods=methods),
            Route("/pipelines/{name}", folder, methods=methods),
            Route("/versions/{version}", folder, methods=methods),
            Route("/{path:path}", file, methods=methods),
        ]
    )


def serve_file(reader: StoreReader, path: str) -> Response:
    """A stored file, or a 404 for anything that is not one (see :func:`safe_relative_path`)."""
    from starlette.responses import FileResponse, PlainTextResponse, Response

    rel = safe_relative_path(path)
    full = reader.full_path(rel) if rel else None
    if full is None:
        return PlainTextResponse("not found in the run store", status_code=404)
    suffix = os.path.splitext(full)[1].lower()
    media_type = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(full)[0]
    media_type = media_type or "application/octet-stream"
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    if reader.store.is_local:
        return FileResponse(full, media_type=media_type, headers=headers)
    return Response(reader.read_bytes(full), media_type=media_type, headers=headers)


def serve(store: RunStore, port: int) -> None:
    """Serve ``store`` on 127.0.0.1:``port`` until interrupted."""
    import uvicorn

    uvicorn.run(create_app(store), host=UI_HOST, port=port, log_level="warning")


def running_store(url: str) -> str | None:
    """The run store an ``nbprod ui`` at ``url`` serves; None when nothing (or another program)
    answers there."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}{HEALTH_PATH}", timeout=2) as response:
            text = response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    return text[len(HEALTH_TEXT) + 1 :] if text.startswith(HEALTH_TEXT + " ") else None


def ensure_running(store: RunStore, log: Path, timeout_s: float = 60) -> tuple[str, int | None]:
    """An ``nbprod ui`` for ``store`` on this machine: (its address, the pid if started here).

    Reuses one already serving ``store`` on the default port; otherwise starts one in the
    background that outlives the caller (the Prefect UI's links stay live), on the default port
    or, when that is taken, on a free one, which ``NBPROD_UI_PORT`` then names for the links
    this process and its children make. Waits until it answers, with a deadline.
    """
    import subprocess
    import time

    from flows.bento_server import free_port
    from flows.errors import NbprodError
    from flows.links import UI_PORT_ENV

    url = local_ui_url()
    if running_store(url) == store.url:
        return url, None
    port = ui_port()
    if _port_taken(port):
        port = free_port()
        os.environ[UI_PORT_ENV] = str(port)
        url = local_ui_url(port)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "flows.ui", "--store", store.url, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # not stopped with the caller's terminal
        )
    deadline = time.monotonic() + timeout_s
    while running_store(url) != store.url:
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise NbprodError(f"nbprod ui did not start on {url}; its log: {log}")
        time.sleep(0.2)
    return url, child.pid


def start_alongside() -> tuple[str, int | None] | None:
    """``make demo``'s ``nbprod ui`` on the configured run store (log: ``$NBPROD_HOME/ui.log``);
    None, with the reason on stderr, when it cannot start (the demo goes on without it)."""
    from flows.errors import NbprodError
    from flows.options import open_store
    from flows.settings import load_settings

    try:
        return ensure_running(open_store(None), load_settings().home / "ui.log")
    except (NbprodError, OSError) as exc:
        print(f"nbprod ui: not started: {exc}", file=sys.stderr)
        return None


def alongside_message(running: tuple[str, int | None] | None, pipeline: str) -> str:
    """Where to browse the runs; said last by ``make demo``."""
    if running is None:
        return "Browse the runs: `.venv/bin/nbprod ui` (it did not start here)"
    url, pid = running
    how = f"started in the background, pid {pid}: `kill {pid}` stops it" if pid else "running"
    return (
        f"Browse the runs (reports, notebooks, pictures; the Prefect UI's links): "
        f"{url}/pipelines/{pipeline}/  (nbprod ui, {how})"
    )


def _port_taken(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex((UI_HOST, port)) == 0


# -- the command --------------------------------------------------------------------------------
def cmd_ui(args: argparse.Namespace) -> int:
    from flows.options import open_store

    store = open_store(args.store)
    port = args.port or ui_port()
    print(
        f"nbprod ui: run store {store.url}, read-only, on {local_ui_url(port)} (Ctrl-C stops)",
        flush=True,
    )
    serve(store, port)
    return 0


def register_commands(subparsers: Any) -> None:
    """Add ``ui`` to ``nbprod``'s parser."""
    from flows.options import add_store_option

    ui = add_store_option(
        subparsers.add_parser(
            "ui",
            help="serve the run store read-only on 127.0.0.1: reports, executed notebooks and "
            "run records, an index per pipeline (the links in Prefect artifacts)",
        )
    )
    ui.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (default: $NBPROD_UI_PORT, else 4280; the artifacts' links use that one)",
    )
    ui.set_defaults(func=cmd_ui)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.ui``: the command without the rest of the CLI (tests, the demo)."""
    from flows.paths import prepare_environment

    prepare_environment()
    parser = argparse.ArgumentParser(prog="nbprod ui")
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ui", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
