"""The benchmark harness's own logic (benchmarks/run.py): what it reports must be what happened.

No timings are judged here (that is `make bench`'s job). These check the parts whose mistakes
would print a wrong verdict with a straight face: the growth exponent and the superlinear flag,
the table staying a table, RESULTS.md keeping the hand-written findings, and `wrk` (through
benchmarks/post.lua) counting requests and failed responses the server really answered.

The `wrk` test runs always when ``NBPROD_WRK_TESTS=1`` (CI, after ``.ci/setup-wrk``), and then a
missing `wrk` FAILS it; without the variable it runs when `wrk` is on PATH, else it is reported
as skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
WRK_TESTS_ENV = "NBPROD_WRK_TESTS"
SIZES = [10_000, 100_000, 1_000_000]
INFO = {
    "nproc": "2",
    "cpu": "test CPU",
    "ram": "1.0 GiB",
    "python": "3.11",
    "os": "Linux",
    "load": "0.00 0.00 0.00",
    "packages": "nbprod 0",
    "wrk": "wrk test",
}


@pytest.fixture(scope="module")
def bench() -> Iterator[SimpleNamespace]:
    """The harness's modules as one namespace (benchmarks/ is a folder of scripts, not a
    package: run.py imports its siblings from its own folder, so that folder goes on sys.path)."""
    folder = str(ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        import harness
        import rows_scaling
        import rows_serving
        import run

        yield SimpleNamespace(
            **{k: v for m in (harness, rows_scaling, rows_serving, run) for k, v in vars(m).items()}
        )
    finally:
        sys.path.remove(folder)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _scaling_rows(table: str) -> dict[str, list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    return {_cells(line)[0]: _cells(line) for line in lines[1:]}


def test_growth_is_the_exponent_and_worse_than_linear_is_flagged(bench: SimpleNamespace) -> None:
    linear = bench.Curve("linear", {10_000: 0.1, 100_000: 1.0, 1_000_000: 10.0}, "s")
    worse = bench.Curve("worse", {10_000: 0.1, 100_000: 1.0, 1_000_000: 20.0}, "s")
    sublinear = bench.Curve("sublinear", {10_000: 1.0, 100_000: 2.0, 1_000_000: 4.0}, "s")

    assert bench.growth(linear, 10_000, 100_000) == pytest.approx(1.0)
    assert bench.growth(worse, 100_000, 1_000_000) == pytest.approx(math.log10(20))
    rows = _scaling_rows(bench.render_scaling([linear, worse, sublinear], SIZES, []))

    assert rows["linear"][-2] == "linear or better"
    assert rows["sublinear"][-2] == "linear or better"
    assert rows["worse"][-2] == "**superlinear**"
    assert rows["worse"][4:6] == ["1.00", "1.30"]  # growth 10k→100k, 100k→1M


def test_memory_growth_is_computed_above_the_imports(bench: SimpleNamespace) -> None:
    """A process's fixed memory must not hide data-proportional growth (nor fake it)."""
    kib = 1e6 / 1024  # 1 MB
    raw = {10_000: 200 * kib, 100_000: 290 * kib, 1_000_000: 1190 * kib}
    above = {10_000: 10 * kib, 100_000: 100 * kib, 1_000_000: 1000 * kib}
    curve = bench.Curve("memory", raw, "KiB", basis=above)

    assert bench.growth(curve, 10_000, 100_000) == pytest.approx(1.0)
    assert curve.cell(100_000) == "290 MB (+100 MB)"


def test_curves_without_figures_are_not_called_linear(bench: SimpleNamespace) -> None:
    partial = bench.Curve("partial", {10_000: 0.1}, "s")
    broken = bench.Curve("broken", {10_000: 0.1, 100_000: 1.0}, "s", error=True)
    rows = _scaling_rows(bench.render_scaling([partial, broken], SIZES, ["a note"]))

    assert rows["partial"][2:6] == ["-", "-", "-", "-"]
    assert rows["partial"][-2] == "-"
    assert rows["broken"][-2] == "error"


def test_a_note_with_a_pipe_stays_in_its_cell(bench: SimpleNamespace) -> None:
    row = bench.Row("P9", "measure", "1 s", "2 s", "0.50×", "≤ 1×", "pass", "a | b")
    lines = bench.render([row]).splitlines()

    assert len({line.count("|") for line in lines}) == 1
    assert _cells(lines[-1])[-1] == "a / b"


def test_results_file_keeps_the_hand_written_findings(
    bench: SimpleNamespace, tmp_path: Path
) -> None:
    path = tmp_path / "RESULTS.md"
    bench.write_results(path, "| old table |", INFO, "", 60.0)
    assert path.read_text().endswith(bench.FINDINGS_MARKER + "\n")
    findings = "\n## Findings (by hand)\n\nP2 misses its target because ...\n"
    kept = path.read_text().split(bench.FINDINGS_MARKER, 1)[1] + findings
    path.write_text(path.read_text() + findings)

    bench.write_results(path, "| new table |", INFO, " --quick", 150.0, scaling="| curve |")
    text = path.read_text()

    assert "| new table |" in text and "| old table |" not in text
    assert "`benchmarks/run.py --quick`" in text and "in 2.5 min" in text
    assert "## Scaling" in text and "| curve |" in text
    assert text.count(bench.FINDINGS_MARKER) == 1
    assert text.endswith(bench.FINDINGS_MARKER + kept)


# --- wrk and post.lua against a real HTTP server -----------------------------------------------


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True
    status = 200

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """wrk drops its connections mid-request when its time is up: not an error here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk and the real servers use
    server: _Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.seen.append((self.path, self.headers.get("Content-Type", ""), body))
        answer = b'[{"prediction": 0}]'
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _require_wrk() -> None:
    if shutil.which("wrk"):
        return
    reason = "no wrk on PATH: run `sudo .ci/setup-wrk` (Debian's wrk package)"
    if os.environ.get(WRK_TESTS_ENV) == "1":
        pytest.fail(f"{WRK_TESTS_ENV}=1 but {reason}")
    pytest.skip(reason)


def test_wrk_posts_the_body_and_counts_failed_responses(
    bench: SimpleNamespace, recorder: _Recorder, tmp_path: Path
) -> None:
    _require_wrk()
    body = tmp_path / "body.json"
    body.write_bytes(b'{"records": [{"age": 41, "purpose": "car"}]}')
    cfg = bench.Config(quick=True, work=tmp_path, env=dict(os.environ), log=tmp_path / "log")
    url = f"http://127.0.0.1:{recorder.server_address[1]}/predict"

    ok = bench.wrk(cfg, url, 4, 1, body)
    answered_ok = len(recorder.seen)
    recorder.status = 503
    failed = bench.wrk(cfg, url, 4, 1, body)

    assert ok["requests"] > 0 and ok["errors"] == 0
    assert ok["requests"] <= answered_ok  # wrk counts only what the server answered
    assert {(path, kind) for path, kind, _ in recorder.seen} == {("/predict", "application/json")}
    assert {sent for _, _, sent in recorder.seen} == {body.read_bytes()}
    assert failed["requests"] > 0 and failed["status"] == failed["requests"]
    assert failed["errors"] >= failed["requests"]
    assert ok["rps"] == pytest.approx(ok["requests"] / (ok["duration_us"] / 1e6))
    assert "BENCH_JSON" in (tmp_path / "log").read_text()  # every wrk run is logged


# --- P5 compares like with like ----------------------------------------------------------------


def test_answers_that_differ_in_shape_label_or_probability_are_caught(
    bench: SimpleNamespace,
) -> None:
    """A P5 ratio between services that answer differently would compare unlike work."""
    answer = [{"prediction": "b", "probabilities": {"a": 0.25, "b": 0.75}}]

    assert bench.same_answers(answer, [dict(answer[0])]) is None
    assert "keys" in bench.same_answers(answer, [{"prediction": "b", "probability": 0.75}])
    assert "prediction" in bench.same_answers(answer, [{**answer[0], "prediction": "a"}])
    moved = {**answer[0], "probabilities": {"a": 0.2, "b": 0.8}}
    assert "probabilities" in bench.same_answers(answer, [moved])
    relabelled = {**answer[0], "probabilities": {"0": 0.25, "1": 0.75}}
    assert "labels" in bench.same_answers(answer, [relabelled])
    assert bench.same_answers(answer, answer * 2) == "1 vs 2 answers"


def _fit(task: str, labels: list[Any] | None) -> tuple[Any, Any]:
    """A small fitted pipeline on generated data, with one categorical feature."""
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import make_classification, make_regression
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if task == "regression":
        x, y = make_regression(n_samples=300, n_features=4, random_state=0)
        estimator: Any = HistGradientBoostingRegressor(max_iter=10)
    else:
        x, codes = make_classification(
            n_samples=300, n_features=4, n_informative=3, n_redundant=0,
            n_classes=len(labels or []), random_state=0,
        )  # fmt: skip
        y = np.asarray(labels, dtype=object if isinstance(labels[0], str) else None)[codes]
        estimator = HistGradientBoostingClassifier(max_iter=10)
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["kind"] = np.where(frame["a"] > 0, "up", "down")
    encode = ColumnTransformer([("kind", OneHotEncoder(), ["kind"])], remainder="passthrough")
    return Pipeline([("encode", encode), ("model", estimator)]).fit(frame, y), frame


@pytest.mark.parametrize(
    ("task", "labels"),
    [("classification", [0, 1]), ("classification", ["cat", "dog", "eel"]), ("regression", None)],
)
def test_the_fastapi_baseline_answers_what_the_bento_must_answer(
    task: str, labels: list[Any] | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/fastapi_app.py passes the infra check's own comparison (flows.serving): the
    model's predict (+ predict_proba keyed by label) in the bento's response shape."""
    import joblib
    from fastapi.testclient import TestClient

    from flows.serving import compare_answers, expected_answers

    model, frame = _fit(task, labels)
    joblib.dump(model, tmp_path / "model.joblib")
    monkeypatch.setenv("NBPROD_BENCH_MODEL", str(tmp_path / "model.joblib"))
    monkeypatch.setenv("NBPROD_BENCH_TASK", task)
    spec = importlib.util.spec_from_file_location(
        f"nbprod_bench_fastapi_{task}_{len(labels or [])}", ROOT / "benchmarks/fastapi_app.py"
    )
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, app)  # pydantic resolves the request model there
    spec.loader.exec_module(app)
    schema = {
        "numerical": {c: {"dtype": "float"} for c in "abcd"},
        "categorical": {"kind": {"categories": ["down", "up"]}},
    }
    records, expected = expected_answers(model, frame.head(20), schema, task)

    with TestClient(app.app) as client:
        response = client.post("/predict", json={"records": records})

    assert response.status_code == 200
    check = compare_answers(response.json(), expected, task)
    assert check["passed"], check["detail"]
    assert ("probabilities" in response.json()[0]) == (task == "classification")
