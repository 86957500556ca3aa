"""``nbprod ui`` (flows.ui): the run store read-only over real HTTP, and nothing else.

The server is uvicorn on a socket bound before it starts (connections wait in the backlog until
it accepts: no polling), in a thread; requests go through ``http.client`` so paths reach it
exactly as written (no client normalises ``..`` away).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.store import RunStore
from flows.ui import create_app, safe_relative_path

ACCEPTED = "v20260101-000000000-aaaaaa"
REJECTED = "v20260102-000000000-bbbbbb"
UNLISTED = "v20260103-000000000-cccccc"


def _record(status: str, **extra: object) -> dict:
    return {
        "pipeline": "churn",
        "flow": "training_pipeline",
        "task": "classification",
        "metrics": {"candidate": {"roc_auc": 0.81, "f1": 0.5}, "champion": None},
        "reasons": [f"the run was {status}"],
        **extra,
        "status": status,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    base = tmp_path_factory.mktemp("ui-store")
    (base / "secret.txt").write_text("outside the store")
    store = RunStore(base / "runs")
    files = base / "files"
    files.mkdir()
    (files / "report.html").write_text("<html><head><title>Data Drift</title></head></html>")
    (files / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    for version, status in ((ACCEPTED, "accepted"), (REJECTED, "rejected"), (UNLISTED, None)):
        store.begin(version)
        store.put_file(version, "reports/data_drift.html", files / "report.html")
        store.put_file(version, "figures/model.png", files / "figure.png")
        store.put_file(version, "notebooks/train.html", files / "report.html")
        if status:
            figures = [{"kind": "model", "title": "ROC", "path": "figures/model.png"}]
            store.finalize(version, _record(status, figures=figures))
    store.set_champion(
        "churn", {"version": ACCEPTED}, expected=None, reason="test", triggered_by="test"
    )
    root = Path(store.root)
    os.symlink(base / "secret.txt", root / "versions" / ACCEPTED / "escape.txt")
    (root / "versions" / ACCEPTED / "run.json.tmp-123").write_text("{}")
    return store


@contextlib.contextmanager
def _serving(store: RunStore) -> Iterator[tuple[str, int]]:
    """``nbprod ui``'s app on a bound loopback socket, in a thread, until the block ends."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(create_app(store), log_level="warning", lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        running.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def server(store: RunStore) -> Iterator[tuple[str, int]]:
    with _serving(store) as address:
        yield address


def _get(server: tuple[str, int], path: str, method: str = "GET") -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(*server, timeout=30)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        conn.close()


def test_serves_reports_figures_notebooks_and_records(server: tuple[str, int]) -> None:
    status, kind, body = _get(server, f"/versions/{ACCEPTED}/reports/data_drift.html")
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert b"<title>Data Drift</title>" in body
    assert _get(server, f"/versions/{ACCEPTED}/figures/model.png")[:2] == (200, "image/png")
    assert _get(server, f"/versions/{ACCEPTED}/notebooks/train.html")[0] == 200
    status, kind, body = _get(server, f"/versions/{ACCEPTED}/run.json")
    assert kind == "application/json" and json.loads(body)["status"] == "accepted"
    assert _get(server, "/pipelines/churn/champion.json")[0] == 200
    assert _get(server, f"/versions/{ACCEPTED}/run.json", method="HEAD")[0] == 200


def test_index_pages_list_pipelines_versions_status_metrics_and_links(
    server: tuple[str, int],
) -> None:
    status, _, body = _get(server, "/")
    assert status == 200 and b"/pipelines/churn/" in body
    status, _, page = _get(server, "/pipelines/churn/")
    text = page.decode()
    assert status == 200 and "<title>nbprod pipeline churn</title>" in text
    rows = [text.index(f"<a href='/versions/{v}/'>") for v in (REJECTED, ACCEPTED)]
    assert rows == sorted(rows)  # newest first
    assert f"{ACCEPTED}</a> (champion)" in text and "roc_auc 0.8100" in text
    assert f"/versions/{ACCEPTED}/reports/data_drift.html" in text
    assert f"/versions/{ACCEPTED}/notebooks/train.html" in text
    assert UNLISTED not in text  # in progress or crashed: not a run yet
    status, _, page = _get(server, f"/versions/{REJECTED}/")
    assert status == 200 and "REJECTED" in page.decode()
    assert f"src='/versions/{REJECTED}/figures/model.png'" in page.decode()
    assert _get(server, "/pipelines/churn")[0] == 307  # to the folder's page


@pytest.mark.parametrize(
    "path",
    [
        "/versions/../../secret.txt",
        f"/versions/{ACCEPTED}/../../../secret.txt",
        "/versions/%2e%2e/%2e%2e/secret.txt",
        f"/versions/{ACCEPTED}/..%2f..%2f..%2fsecret.txt",
        "//etc/passwd",
        "/etc/passwd",
        f"/versions/{ACCEPTED}//etc/passwd",
        f"/versions/{ACCEPTED}/%2fetc%2fpasswd",
        f"/versions/{ACCEPTED}/escape.txt",  # a symlink out of the store
        f"/versions/{ACCEPTED}/run.json.tmp-123",  # a half-written file
        "/pipelines/churn/.lock",
        f"/versions/{UNLISTED}/reports/data_drift.html",  # not listed
        f"/versions/{UNLISTED}/",
        "/versions/..%2f..%2fsecret.txt/",
        "/pipelines/..%2f/",
        "/nowhere",
    ],
)
def test_nothing_outside_the_store_or_unlisted_is_served(
    server: tuple[str, int], path: str
) -> None:
    status, _, body = _get(server, path)
    assert status == 404, (path, body[:200])
    assert b"outside the store" not in body and b"root:" not in body


def test_nothing_is_written(server: tuple[str, int], store: RunStore) -> None:
    before = sorted(store.fs.find(store.root))
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert _get(server, f"/versions/{ACCEPTED}/run.json", method=method)[0] == 405
    assert sorted(store.fs.find(store.root)) == before


def test_safe_relative_path() -> None:
    assert safe_relative_path("versions/v1/reports/a.html") == "versions/v1/reports/a.html"
    for bad in ("", "/etc/passwd", "versions/../x", "versions/./x", "versions/v1/.lock", "x/y"):
        assert safe_relative_path(bad) is None, bad


def test_an_object_store_is_served_the_same_way(tmp_path: Path) -> None:
    """Any fsspec store (here fsspec's memory filesystem) through the same pages and checks."""
    store = RunStore("memory://ui-test/runs")
    page = tmp_path / "report.html"
    page.write_text("<title>Data Drift</title>")
    store.begin(ACCEPTED)
    store.put_file(ACCEPTED, "reports/data_drift.html", page)
    store.finalize(ACCEPTED, _record("accepted"))
    with _serving(store) as address:
        status, kind, body = _get(address, f"/versions/{ACCEPTED}/reports/data_drift.html")
        assert (status, kind) == (200, "text/html; charset=utf-8")
        assert b"<title>Data Drift</title>" in body
        assert _get(address, "/pipelines/churn/")[0] == 200
        assert _get(address, f"/versions/{ACCEPTED}/missing.html")[0] == 404
        assert _get(address, f"/versions/{ACCEPTED}/../../x")[0] == 404
