"""What makes a re-run "unchanged" (flows.uptodate): the flow's cache keys, settings, spec, policy.

Tiny files in a temporary project; no kernel and no Prefect server (tests/test_pipeline_features.py
runs the whole thing through ``nbprod run`` against a real server).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest

from flows import uptodate
from flows.execution import COMPLETE_MARKER
from flows.runner import call_cache_key
from flows.store import RunStore


def write_notebook(path: Path, body: str = "print(value)") -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("value = 1\ndata_path = ''\noutput_dir = 'out'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A completed run's ticket, as notebook_pipeline writes it, and every file it names."""
    monkeypatch.setenv("NBPROD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(tmp_path))
    monkeypatch.delenv("NBPROD_RUN_STORE_URL", raising=False)
    notebook, data = tmp_path / "step.ipynb", tmp_path / "data.csv"
    spec, policy = tmp_path / "step.yaml", tmp_path / "policy.yaml"
    write_notebook(notebook)
    data.write_text("1 2 3\n")
    spec.write_text("name: step\nflow: notebook\n")
    policy.write_text("floors: {}\n")
    parameters = {"value": 2, "data_path": str(data)}
    secrets = {"token": {"env": "STEP_TOKEN"}}
    key = call_cache_key(notebook, parameters, secrets, "python3")
    # A cached call's folder as flows.execution leaves it: the executed notebook, the outputs,
    # and the marker written once the notebook finished (outputs.json is optional).
    folder = tmp_path / "cache"
    cached = [folder / "executed" / "step.ipynb", folder / COMPLETE_MARKER]
    (folder / "outputs").mkdir(parents=True)
    (folder / "outputs" / "result.txt").write_text("6")
    cached[0].parent.mkdir()
    cached[0].write_text("{}")
    cached[1].write_text(key)
    uptodate.write_ticket(
        home=tmp_path / "home",
        spec_file=spec,
        parameters={"value": 2},
        run_store_url=None,
        store_url=str(tmp_path / "home" / "runs"),
        version="v1",
        kernel_name="python3",
        calls=[
            {
                "name": "step",
                "notebook": str(notebook),
                "parameters": {**parameters, "output_dir": str(folder / "outputs")},
                "secrets": secrets,
                "cache_key": key,
                "cached": [str(f) for f in cached],
            }
        ],
        inputs=[policy],
    )
    return {
        "notebook": notebook,
        "data": data,
        "spec": spec,
        "policy": policy,
        "cached": cached,
        "key": key,
    }


def current(project: dict[str, Any], parameters: dict[str, Any] | None = None) -> Any:
    return uptodate.current_ticket(
        project["spec"], {"value": 2} if parameters is None else parameters, None
    )


def test_an_unchanged_run_is_current_and_names_its_version(project: dict[str, Any]) -> None:
    ticket = current(project)
    assert ticket is not None and ticket["version"] == "v1"
    assert ticket["calls"][0]["cache_key"] == project["key"]
    # Outputs and metadata of the notebook are not its source: still current, as for the cache.
    nb = nbformat.read(project["notebook"], as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="2\n")]
    nbformat.write(nb, project["notebook"])
    assert current(project) is not None


CHANGES: dict[str, Callable[[dict[str, Any], pytest.MonkeyPatch], None]] = {
    "notebook source": lambda p, _: write_notebook(p["notebook"], "print(value * 2)"),
    "input data": lambda p, _: p["data"].write_text("1 2 4\n"),
    "spec": lambda p, _: p["spec"].write_text("name: step\nflow: notebook\n# edited\n"),
    "policy": lambda p, _: p["policy"].write_text("floors: {roc_auc: 0.7}\n"),
    "policy removed": lambda p, _: p["policy"].unlink(),
    "a setting": lambda _, mp: mp.setenv("NBPROD_KERNEL_NAME", "other"),
    "the executed notebook": lambda p, _: p["cached"][0].unlink(),
    "the complete marker": lambda p, _: p["cached"][1].unlink(),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_change_the_cache_would_see_means_not_current(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    assert current(project) is not None
    CHANGES[change](project, monkeypatch)
    assert current(project) is None


def test_the_environment_is_read_again_only_when_its_stamp_changed(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Package metadata is read (slowly) only when an install could have changed it."""
    import sys

    def unreadable() -> dict[str, str]:
        raise AssertionError("package metadata read although the environment's stamp is the same")

    monkeypatch.setattr("flows.runner.package_versions", unreadable)
    assert current(project) is not None  # the recorded fingerprint was reused
    # An install changes a folder on the import path (here: one more folder on it).
    (tmp_path / "site").mkdir()
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "site")])
    monkeypatch.setattr("flows.runner.package_versions", lambda: {"pandas": "0.0-upgraded"})
    assert current(project) is None


def test_other_parameters_or_store_have_their_own_answer(project: dict[str, Any]) -> None:
    assert current(project, {"value": 3}) is None
    assert current(project, {}) is None
    assert uptodate.current_ticket(project["spec"], {"value": 2}, "memory://elsewhere") is None


def test_a_damaged_ticket_is_no_answer(project: dict[str, Any], tmp_path: Path) -> None:
    path = uptodate.ticket_path(tmp_path / "home", project["spec"], {"value": 2})
    path.write_text(path.read_text()[:40])
    assert current(project) is None
    path.write_text(json.dumps({"schema": uptodate.TICKET_SCHEMA}))
    assert current(project) is None


def test_no_answer_without_a_prefect_server_or_a_completed_run(
    project: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert uptodate.answer_rerun(str(project["spec"]), {"value": 2}, None, "test") is None
    # A server that does not answer: nothing is recorded, the flow will run (and report it).
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert uptodate.answer_rerun(str(project["spec"]), {"value": 2}, None, "test") is None
    store = RunStore(tmp_path / "home" / "runs")
    store.begin("v1")
    store.finalize("v1", {"status": "completed"})
    assert uptodate.answer_rerun(str(project["spec"]), {"value": 2}, None, "test") is None
    assert store.reruns("v1") == []


def test_the_settings_compared_are_the_typed_settings_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.paths import SETTINGS_FIELDS, settings_environment
    from flows.settings import NbprodSettings

    assert set(SETTINGS_FIELDS) == set(NbprodSettings.model_fields)
    monkeypatch.setenv("nbprod_kernel_name", "other")  # pydantic-settings ignores the case
    monkeypatch.setenv("NBPROD_API_TOKEN", "a secret a notebook reads")
    assert settings_environment()["NBPROD_KERNEL_NAME"] == "other"
    assert "NBPROD_API_TOKEN" not in settings_environment()


class _Answers:
    """A real HTTP server on the loopback that answers POSTs from a script of (status, body)."""

    def __init__(self, script: list[tuple[int, dict[str, Any]]]) -> None:
        import http.server
        import threading

        self.script, self.seen = list(script), []
        answers = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                answers.seen.append(self.path)
                length = int(self.headers["Content-Length"])
                self.rfile.read(length)
                status, body = answers.script.pop(0) if answers.script else (200, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_busy_server_is_retried_and_a_refusal_is_named() -> None:
    busy = {"detail": "database is locked"}
    server = _Answers([(503, busy), (503, busy), (201, {"id": "f1"})])
    try:
        api = uptodate.PrefectApi(server.url)
        assert api.post("/flows/", {"name": "x"}) == {"id": "f1"}
        assert server.seen == ["/api/flows/"] * 3
        server.script = [(503, busy)] * (uptodate.RETRIES + 1)
        with pytest.raises(uptodate.PrefectApiError, match="answered 503.*database is locked"):
            api.post("/flows/", {"name": "x"})
        server.script = [(422, {"detail": "flow_id: field required"})]
        with pytest.raises(uptodate.PrefectApiError, match="422.*flow_id: field required"):
            api.post("/flow_runs/", {})
        assert len(server.seen) == 3 + uptodate.RETRIES + 1 + 1  # a refusal is not retried
    finally:
        server.close()


def test_the_flow_id_a_ticket_knows_is_used_and_looked_up_again_when_gone() -> None:
    def ticket_for(url: str) -> dict[str, Any]:
        return {"version": "v1", "prefect": {"api_url": url, "flow_id": "f-old"}}

    server = _Answers([(201, {"id": "r1"})])
    try:
        made = uptodate._create_flow_run(
            uptodate.PrefectApi(server.url), ticket_for(server.url + "/"), "s.yaml", None, None, "t"
        )
        assert made == "r1" and server.seen == ["/api/flow_runs/"]  # one round trip
        server.seen.clear()
        server.script = [
            (404, {"detail": "flow not found"}),
            (200, {"id": "f-new"}),
            (201, {"id": "r2"}),
        ]
        made = uptodate._create_flow_run(
            uptodate.PrefectApi(server.url), ticket_for(server.url), "s.yaml", None, None, "t"
        )
        assert made == "r2"
        assert server.seen == ["/api/flow_runs/", "/api/flows/", "/api/flow_runs/"]
    finally:
        server.close()
