"""The fault matrix (issue 18): each fault, and the consistent state it leaves.

One user project (tests/fault_projects.py: the churn notebook with a fault switch and a secret
parameter) is promoted and run once, accepted, for the session, and this module gets its own
copy; every fault then happens in that same pipeline through the real ``nbprod`` command (a
subprocess, a real Prefect server, papermill kernels), and each test checks the fault's one-line
message and exit status AND what it left: the run listed as failed or rejected with its
run.json, the champion and its history unchanged, no scratch folder for the run, no new bento
or model in the BentoML store, and for some faults the next normal run accepted. Serving is
hammered with good and malformed requests on a real ``bentoml serve`` of the champion's bento.
The kill -9 and disk-full faults of nbprod itself are another module's.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fault_projects import (
    FAULT_CELL_INDEX,
    PIPELINE,
    SECRET_ENV,
    PromotedProject,
    copy_project,
    corrupt_inputs,
    user_env,
)

pytestmark = pytest.mark.integration

NON_FEATURES = ["customer_id", "signup_date", "churned"]
RUN_TIMEOUT_S = 300
# A failed run's failed_step: the notebook's stem while it ran, else the step before kernels.
NOTEBOOK_STEP = "churn"
PRE_KERNEL_STEPS = ("start", "check-parameters", "validate-input-data")


# --- the project and its state -------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """What a fault must not change, and the runs it may add."""

    runs: dict[str, str]  # version -> status
    champion: dict[str, Any] | None
    history: list[dict[str, Any]]
    bentos: frozenset[str]
    models: frozenset[str]


@dataclass(frozen=True)
class Project:
    """The module's promoted project; state under its ``.nbprod`` as nbprod defaults it."""

    base: Path  # every file the tests write is under here
    root: Path
    env: dict[str, str]
    token: str

    @property
    def home(self) -> Path:
        return self.root / ".nbprod"

    @property
    def store_dir(self) -> Path:
        return self.home / "runs"

    @property
    def bentoml_dir(self) -> Path:
        return self.home / "bentoml"

    def nbprod(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = RUN_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """``nbprod ARGS`` in the project folder, as the user's shell runs it."""
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def store(self) -> Any:
        from flows.store import RunStore

        return RunStore(self.store_dir)

    def state(self) -> State:
        store = self.store()

        def tags(kind: str) -> frozenset[str]:
            folder = self.bentoml_dir / kind / PIPELINE
            names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
            return frozenset(names - {"latest"})

        return State(
            runs={r["version"]: r["status"] for r in store.list_runs(PIPELINE)},
            champion=store.champion(PIPELINE),
            history=store.champion_history(PIPELINE),
            bentos=tags("bentos"),
            models=tags("models"),
        )


def nbprod_lines(stderr: str) -> list[str]:
    """nbprod's own lines on stderr (Prefect's log lines and tracebacks are not its message)."""
    return [line for line in stderr.splitlines() if line.startswith("nbprod:")]


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``nbprod: error:`` line of a failed command, without its prefix."""
    lines = nbprod_lines(done.stderr)
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("nbprod: error: "), lines
    return lines[0].removeprefix("nbprod: error: ")


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, promoted_fault_project: PromotedProject
) -> Project:
    """The churn project, promoted (lint only), its secret declared, and one accepted run
    whose notebook printed the secret: this module's copy of the session's."""
    base = tmp_path_factory.mktemp("faults")
    # Deep enough that ../../x from the project or its store still lands inside base.
    copied = copy_project(promoted_fault_project, base / "home" / "user" / "churn-project")
    return Project(
        base=base, root=copied.root, env=user_env(**{SECRET_ENV: copied.token}), token=copied.token
    )


def failed_cleanly(project: Project, before: State, status: str = "failed") -> dict[str, Any]:
    """The one run a fault added: listed with ``status`` and its run.json; nothing else moved.

    Champion and history unchanged, no scratch folder left for it, no bento or model added.
    """
    after = project.state()
    added = {v: s for v, s in after.runs.items() if v not in before.runs}
    assert len(added) == 1, added
    ((version, listed),) = added.items()
    assert listed == status
    record = json.loads((project.store_dir / "versions" / version / "run.json").read_text())
    assert record["status"] == status and record["version"] == version
    assert after.champion == before.champion
    assert after.history == before.history
    assert not (project.home / "scratch" / version).exists()
    assert (after.bentos, after.models) == (before.bentos, before.models)
    return record


def stored_files(project: Project, version: str) -> list[str]:
    folder = project.store_dir / "versions" / version
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def accepted_run(project: Project, *args: str) -> dict[str, Any]:
    """A normal run of the pipeline: accepted, the champion moved to it, its bento built."""
    before = project.state()
    done = project.nbprod("run", "--pipeline", PIPELINE, *args)
    assert done.returncode == 0 and "ACCEPTED" in done.stdout, done.stdout + done.stderr[-3000:]
    after = project.state()
    (version,) = set(after.runs) - set(before.runs)
    assert after.runs[version] == "accepted"
    assert after.champion is not None and after.champion["version"] == version
    assert len(after.history) == len(before.history) + 1
    assert version in after.bentos and not (project.home / "scratch" / version).exists()
    return json.loads((project.store_dir / "versions" / version / "run.json").read_text())


# --- 1-3: the notebook fails ---------------------------------------------------------------------


def test_a_cell_that_raises_fails_the_run_in_one_line_naming_notebook_and_cell(
    project: Project,
) -> None:
    """A cell raising: exit 1, one line naming the notebook, the cell and the error; the
    executed notebook is kept in the failed run."""
    before = project.state()
    done = project.nbprod("run", "--pipeline", PIPELINE, "--param", "fault=raise")
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_error_line(done)
    assert line.startswith("notebook churn.ipynb failed in cell"), line
    assert f"cell #{FAULT_CELL_INDEX}" in line
    assert "RuntimeError: injected failure: the fault cell raised" in line
    record = failed_cleanly(project, before)
    assert record["failed_step"] == NOTEBOOK_STEP
    assert "notebooks/churn.ipynb" in stored_files(project, record["version"])


def test_a_killed_kernel_fails_the_run_cleanly_and_the_next_run_is_accepted(
    project: Project,
) -> None:
    """A cell SIGKILLs its kernel (retried once, dies again): exit 1, one line naming the
    notebook and the cell; then an ordinary run of the same pipeline is accepted."""
    before = project.state()
    done = project.nbprod("run", "--pipeline", PIPELINE, "--param", "fault=kill")
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_error_line(done)
    assert line.startswith(
        f"notebook churn.ipynb: the kernel died while running cell #{FAULT_CELL_INDEX}"
    ), line
    record = failed_cleanly(project, before)
    assert record["failed_step"] == NOTEBOOK_STEP
    assert "notebooks/churn.ipynb" in stored_files(project, record["version"])

    accepted_run(project)


def test_a_cell_timeout_names_the_cell_and_the_setting(project: Project) -> None:
    """A cell running past NBPROD_EXECUTION_TIMEOUT_S: exit 1, one line naming the cell, the
    limit and the setting to raise."""
    before = project.state()
    done = project.nbprod(
        "run",
        "--pipeline",
        PIPELINE,
        "--param",
        "fault=sleep",
        env={"NBPROD_EXECUTION_TIMEOUT_S": "10"},
    )
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_error_line(done)
    assert line.startswith(f"notebook churn.ipynb: cell #{FAULT_CELL_INDEX} ("), line
    assert "ran longer than the 10 s execution timeout" in line
    assert line.endswith("raise NBPROD_EXECUTION_TIMEOUT_S"), line
    failed_cleanly(project, before)


# --- 4: bad data files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "truncated-csv",
        "truncated-parquet",
        "binary-garbage",
    ],
)
def test_a_bad_data_file_is_refused_before_any_kernel_starts(project: Project, case: str) -> None:
    """``--data`` missing, empty, truncated or garbage: exit 1, one line naming the file, the
    run failed before its notebooks (nothing executed, nothing accepted)."""
    bad = corrupt_inputs(project.base / "inputs" / case, project.root / "data" / "churn.csv")[case]
    before = project.state()
    done = project.nbprod("run", "--pipeline", PIPELINE, "--data", str(bad))
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_error_line(done)
    assert str(bad) in line, line
    record = failed_cleanly(project, before)
    assert record["failed_step"] in PRE_KERNEL_STEPS, record["failed_step"]
    assert not [f for f in stored_files(project, record["version"]) if f.startswith("notebooks")]


# --- 5: the gate rejects -------------------------------------------------------------------------


def test_a_gate_rejection_exits_3_and_builds_no_bento(project: Project) -> None:
    """A useless model (shuffled labels): REJECTED with the failed checks, exit 3, listed as
    rejected; the champion stays and no bento or model is built for it."""
    before = project.state()
    done = project.nbprod("run", "--pipeline", PIPELINE, "--param", "shuffle_labels=True")
    assert done.returncode == 3, done.stdout + done.stderr[-3000:]
    assert "REJECTED" in done.stdout and nbprod_lines(done.stderr) == []
    record = failed_cleanly(project, before, status="rejected")
    assert record["decision"] == "rejected" and record["reasons"]
    assert all(str(r) in done.stdout for r in record["reasons"])
    assert record.get("bento_tag") is None and record.get("model_tag") is None


# --- 6: gate policies ----------------------------------------------------------------------------

BAD_POLICIES = {
    # case: (policy file text, what its one line must say)
    "empty-file": ("", "has no floors"),
    "comment-only": ("# the gate, to be written\n", "has no floors"),
    "no-floors": ("floors: {}\n", "has no floors"),
    "unknown-metric": ("floors:\n  precision_at_10: {min: 0.5}\n", "precision_at_10"),
    "nan-threshold": ("floors:\n  roc_auc: {min: .nan}\n", "roc_auc"),
    "min-above-max": ("floors:\n  accuracy: {min: 0.9, max: 0.1}\n", "above max"),
    "unknown-key": ("floors:\n  roc_auc: {min: 0.55}\nthreshold: 0.5\n", "threshold"),
    # There is no accept-all switch: a policy that accepts any model is refused by design.
    "accept-all": ("accept_all: true\n", "accept_all"),
}


@pytest.mark.parametrize("case", list(BAD_POLICIES))
def test_a_bad_policy_is_refused_at_load_before_any_kernel(project: Project, case: str) -> None:
    """A policy that is empty, unknown, NaN, contradictory or has unknown keys: exit 1, one
    line naming the file and the problem, the run failed before its notebooks."""
    text, says = BAD_POLICIES[case]
    policy = project.base / "policies" / f"{case}.yaml"
    policy.parent.mkdir(exist_ok=True)
    policy.write_text(text)
    before = project.state()
    done = project.nbprod("run", "--pipeline", PIPELINE, "--policy", str(policy))
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_error_line(done)
    assert line.startswith(f"gate policy {policy}"), line
    assert says in line, line
    record = failed_cleanly(project, before)
    assert record["failed_step"] in PRE_KERNEL_STEPS
    assert not [f for f in stored_files(project, record["version"]) if f.startswith("notebooks")]


def test_after_refused_policies_a_permissive_policy_is_accepted_and_says_why(
    project: Project,
) -> None:
    """The closest to accept-all that exists, a floor every model meets: the next run is
    accepted and its decision lists exactly that check."""
    policy = project.base / "policies" / "permissive.yaml"
    policy.parent.mkdir(exist_ok=True)
    policy.write_text("floors:\n  accuracy: {min: 0.0}\n")
    record = accepted_run(project, "--policy", str(policy))
    assert record["decision"] == "accepted"
    assert len(record["reasons"]) == 1 and record["reasons"][0].startswith("accuracy ")
    assert record["reasons"][0].endswith(">= floor 0.0")
    gate = json.loads(
        (project.store_dir / "versions" / record["version"] / "gate.json").read_text()
    )
    assert gate["accepted"] is True and gate["policy"]["champion"] == {}


# --- 7: names and versions that would leave the store ---------------------------------------------

TRAVERSALS = ["../../x", "/etc/passwd", "..", "a/b", "%2e%2e", "churn\n", "churn\x00/../x"]
# Every command taking a run version or a pipeline name; {} is the hostile value.
NAMED_COMMANDS = [
    ["show", "{}"],
    ["rollback", "{}", "--pipeline", PIPELINE, "--reason", "fault matrix"],
    ["rollback", "--pipeline", "{}", "--reason", "fault matrix"],
    ["serve", "{}", "--pipeline", PIPELINE, "--port", "1"],
    ["serve", "--pipeline", "{}", "--port", "1"],
    ["containerize", "{}", "--pipeline", PIPELINE],
    ["containerize", "--pipeline", "{}"],
    ["predict", "data/new_customers.csv", "--pipeline", "{}", "--url", "http://127.0.0.1:1"],
    ["history", "--pipeline", "{}"],
    ["runs", "--pipeline", "{}"],
    ["champion", "--pipeline", "{}"],
    ["run", "--pipeline", "{}"],
    [
        "promote",
        "notebooks/churn.ipynb",
        "--name",
        "{}",
        "--target",
        "churned",
        "--data",
        "data/churn.csv",
        "--skip-repro",
    ],
    ["monitor", "data/new_customers.csv", "--pipeline", "{}"],
    ["monitor", "--pipeline", "{}"],
    ["deploy", "{}"],
]
DEPLOY_NEWLINE = ["deploy", "churn\n"]
# Runs flows.cli.main (what the console script runs) once per argv in one interpreter, each
# with its own stdout and stderr file descriptors: a NUL byte cannot travel in a real argv.
CLI_DRIVER = """
import json, os, sys, tempfile
from flows.cli import main
results, saved = [], (os.dup(1), os.dup(2))
for argv in json.load(sys.stdin):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        out.seek(0); err.seek(0)
        results.append([code, out.read().decode(), err.read().decode()])
os.write(saved[0], json.dumps(results).encode())
"""


def tree_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time."""
    snapshot = {}
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        snapshot[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return snapshot


def test_names_and_versions_that_leave_the_store_are_refused_everywhere(project: Project) -> None:
    """Every command given ../../x, /etc/passwd, .., a/b, %2e%2e, a trailing newline or a NUL
    byte as a version or name: exit 1 or 2 with one line, and not one file created or touched
    anywhere under the test's folders; the champion and its history unchanged."""
    before = project.state()
    files_before = tree_snapshot(project.base)
    passwd = Path("/etc/passwd").stat()
    cases = [
        [value if part == "{}" else part for part in cmd]
        for value in TRAVERSALS
        for cmd in NAMED_COMMANDS
    ]
    driven = subprocess.run(
        [sys.executable, "-c", CLI_DRIVER],
        input=json.dumps(cases),
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert driven.returncode == 0, driven.stderr[-3000:]
    results = json.loads(driven.stdout)
    # The same refusals through the real console entry point, for the plainest value.
    real = [c for c in cases if "../../x" in c and c[0] in ("show", "run", "promote", "deploy")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda argv: project.nbprod(*argv, timeout=120), real))
    results += [[d.returncode, d.stdout, d.stderr] for d in done]
    cases += real

    problems = []
    for argv, (code, out, err) in zip(cases, results, strict=True):
        value = next(v for v in TRAVERSALS if v in argv)
        lines = err.strip().splitlines()
        if code not in (1, 2) or out or len(lines) != 1 or not lines[0].startswith("nbprod: "):
            problems.append(f"{argv!r}: exit {code}, stdout {out[:200]!r}, stderr {err[-400:]!r}")
        elif "unexpected error" in lines[0] or not any(
            shown in lines[0] for shown in (value, repr(value), repr(value)[1:-1])
        ):
            problems.append(f"{argv!r}: {lines[0]} (does not name {value!r})")
    assert problems == [], "\n".join(problems)

    files_after = tree_snapshot(project.base)
    changed = sorted(
        p
        for p in files_before.keys() | files_after.keys()
        if files_before.get(p) != files_after.get(p)
    )
    assert changed == []
    assert Path("/etc/passwd").stat().st_mtime_ns == passwd.st_mtime_ns
    after = project.state()
    assert (after.runs, after.champion, after.history) == (
        before.runs,
        before.champion,
        before.history,
    )


def test_a_deployment_name_with_a_newline_is_refused_in_one_line(project: Project) -> None:
    """``nbprod deploy $'churn\\n'``: refused, in one line like every other refusal."""
    done = project.nbprod(*DEPLOY_NEWLINE, timeout=120)
    assert done.returncode in (1, 2) and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# --- 8: secrets ----------------------------------------------------------------------------------


def prefect_database() -> Path:
    """The SQLite file of the session's Prefect server (prefect_test_harness's temporary one)."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    assert url.startswith("sqlite+aiosqlite:///"), url
    return Path(url.removeprefix("sqlite+aiosqlite:///"))


def wait_until_recorded(flow_run_id: str, final: str, deadline_s: float = 60) -> None:
    """Poll the server's database until the flow run's last log line and its final-state event
    are written: Prefect ships both after the command has exited."""
    database = prefect_database()
    deadline = time.monotonic() + deadline_s
    while True:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
            logged = db.execute(
                "SELECT COUNT(*) FROM log WHERE flow_run_id = ? AND task_run_id IS NULL "
                "AND message LIKE 'Finished in state%'",
                (flow_run_id,),
            ).fetchone()[0]
            evented = db.execute(
                "SELECT COUNT(*) FROM events WHERE resource_id = ? AND event = ?",
                (f"prefect.flow-run.{flow_run_id}", f"prefect.flow-run.{final}"),
            ).fetchone()[0]
        if logged and evented:
            return
        assert time.monotonic() < deadline, f"flow run {flow_run_id}: log {logged}, event {evented}"
        time.sleep(0.5)  # polling the server's database with a deadline


def files_holding(folders: list[Path], secret: bytes) -> list[str]:
    """Every file under ``folders`` (or the file itself) whose bytes contain ``secret``."""
    found = []
    for folder in folders:
        paths = [folder] if folder.is_file() else folder.rglob("*")
        for path in paths:
            if path.is_file() and secret in path.read_bytes():
                found.append(str(path))
    return found


def secret_places(project: Project) -> list[Path]:
    """Everything the run could have written to: nbprod's home (run store, cache, scratch,
    BentoML store), Prefect's home (task results) and the server's SQLite files."""
    database = prefect_database()
    sqlite_files = [p for p in database.parent.glob(database.name + "*") if p.is_file()]
    assert database in sqlite_files, sqlite_files
    return [project.home, Path(os.environ["PREFECT_HOME"]), *sqlite_files]


def test_a_secret_in_a_failing_cells_output_and_error_is_nowhere(project: Project) -> None:
    """A cell prints the secret parameter and raises with it in its message: the run fails in
    one scrubbed line, and the token's bytes are in no stored file, not in the command's
    output, not in Prefect's database (WAL included)."""
    before = project.state()
    done = project.nbprod("run", "--pipeline", PIPELINE, "--param", "fault=leak-secret")
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_error_line(done)
    assert f"cell #{FAULT_CELL_INDEX}" in line and "refused token ***" in line, line
    record = failed_cleanly(project, before)
    assert project.token not in done.stdout + done.stderr
    wait_until_recorded(record["flow_run_id"], "Failed")
    assert files_holding(secret_places(project), project.token.encode()) == []
    # The executed notebook is kept, with the printed token masked.
    kept = project.store_dir / "versions" / record["version"] / "notebooks" / "churn.ipynb"
    assert b"calling the scoring API with token ***" in kept.read_bytes()


def test_a_secret_printed_by_a_successful_run_is_not_stored(project: Project) -> None:
    """The module's first run printed the secret in a cell and was accepted: its executed
    notebook and HTML in the store show it masked, its parameters name only where it comes
    from, and its bytes are nowhere else either (files, Prefect's database)."""
    store = project.store()
    first = store.get_run(store.champion_history(PIPELINE)[0]["to_version"])
    assert first["status"] == "accepted"
    wait_until_recorded(first["flow_run_id"], "Completed")
    assert files_holding(secret_places(project), project.token.encode()) == []
    version = project.store_dir / "versions" / first["version"]
    masked = b"calling the scoring API with token ***"
    assert masked in (version / "notebooks" / "churn.ipynb").read_bytes()
    assert masked in (version / "notebooks" / "churn.html").read_bytes()
    parameters = json.loads((version / "parameters.json").read_text())
    assert parameters[NOTEBOOK_STEP]["api_token"] == f"<secret from env {SECRET_ENV}>"


# --- 9: serving under malformed load -------------------------------------------------------------

TOTAL_REQUESTS = 10_000
CLIENTS = 16
HUGE_EVERY = 200  # one malformed request in this many is a 9 MB body


def malformed(kind: int, record: dict[str, Any], huge: bool) -> tuple[bytes, str, int | None]:
    """A bad request built from a good record: body, content type, the status it must get."""
    if huge:
        body = {"records": [record], "padding": "x" * (9 * 1024 * 1024)}
        return json.dumps(body).encode(), "application/json", 413
    variants: list[tuple[Any, str, int | None]] = [
        ({"records": [{**record, "usage_0": "lots"}]}, "application/json", None),
        ({"records": [{**record, "plan": 3}]}, "application/json", None),
        ({"records": [{k: v for k, v in record.items() if k != "plan"}]}, "application/json", None),
        ({"records": [{**record, "zip_code": "12345"}]}, "application/json", None),
        (b'{"records": [{"usage_0": 0.1,', "application/json", None),
        ({"records": "usage_0=0.1"}, "application/json", None),
        (b"records=usage_0%3D0.1", "application/x-www-form-urlencoded", 415),
        ({"records": [record]}, "multipart/form-data; boundary=x", 415),
    ]
    body, content_type, status = variants[kind % len(variants)]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return data, content_type, status


def tree_rss(pid: int) -> tuple[int, frozenset[int]]:
    """Resident memory of a process and all its descendants, and their pids."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs), frozenset(p.pid for p in procs)


def test_serving_survives_malformed_load_with_an_exact_inference_log(project: Project) -> None:
    """10,000 requests from 16 clients at the champion's real bento, 20 % malformed: no 5xx,
    every malformed one 4xx, every good one 200 with the model's own answer, the server and
    its workers alive after, and exactly one inference-log record per good request."""
    import joblib
    import pandas as pd

    from flows.bento_server import free_port
    from flows.inference_log import read_inference_log

    champion = project.store().champion(PIPELINE)
    assert champion is not None
    model_file = project.store_dir / "versions" / champion["version"] / "outputs" / PIPELINE
    model = joblib.load(model_file / "model.joblib")
    frame = pd.read_csv(project.root / "data" / "new_customers.csv")
    features = frame.drop(columns=NON_FEATURES)
    records = features.to_dict("records")
    labels = model.predict(features).tolist()
    probabilities = model.predict_proba(features).tolist()

    log_dir = project.base / "inference-load"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_log = project.base / "serve-load.log"
    with server_log.open("wb") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "serve",
                "--pipeline",
                PIPELINE,
                "--port",
                str(port),
            ],
            cwd=project.root,
            env={**project.env, "NBPROD_INFERENCE_LOG_DIR": str(log_dir)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = httpx.Client(
        timeout=60, limits=httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server_log.read_text()
            try:
                if client.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server_log.read_text()
            time.sleep(0.2)  # polling a server that is starting, with a deadline

        def send(i: int) -> tuple[int, int, Any, str | None]:
            record = records[i % len(records)]
            if i % 5 == 0:
                nth = i // 5
                data, content_type, _ = malformed(nth, record, huge=nth % HUGE_EVERY == 0)
            else:
                data, content_type = json.dumps({"records": [record]}).encode(), "application/json"
            response = client.post(
                base + "/predict", content=data, headers={"Content-Type": content_type}
            )
            try:
                body = response.json()
            except ValueError:
                body = response.text
            return i, response.status_code, body, response.headers.get("X-Request-ID")

        rss_before, pids_before = tree_rss(server.pid)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            futures = [pool.submit(send, i) for i in range(TOTAL_REQUESTS)]
            _, pending = wait(futures, timeout=180)
        elapsed = time.monotonic() - started
        assert not pending, f"{len(pending)} requests unanswered"
        rss_after, pids_after = tree_rss(server.pid)
        alive = client.get(base + "/readyz").status_code
    finally:
        client.close()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)

    print(
        f"\n{TOTAL_REQUESTS} requests in {elapsed:.1f} s ({TOTAL_REQUESTS / elapsed:.0f}/s); "
        f"server RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB "
        f"({(rss_after - rss_before) / 2**20:+.0f} MiB)"
    )
    answers = [f.result() for f in futures]
    server_errors = [(i, s, b) for i, s, b, _ in answers if s >= 500]
    assert server_errors == []
    good_ids = []
    for i, status, body, request_id in answers:
        if i % 5 == 0:
            nth = i // 5
            expected = malformed(nth, records[0], huge=nth % HUGE_EVERY == 0)[2]
            assert 400 <= status < 500 and isinstance(body, dict), (i, status, body)
            assert "error" in body, (i, status, body)
            assert expected is None or status == expected, (i, status, body)
            continue
        row = i % len(records)
        assert status == 200, (i, status, body)
        (answer,) = body
        assert answer["prediction"] == labels[row]
        # Within the serving contract (1e-5): ONNX Runtime serves by default (tree scores summed
        # in float32).
        assert list(answer["probabilities"].values()) == pytest.approx(probabilities[row], abs=1e-5)
        good_ids.append(request_id)
    assert alive == 200 and pids_after == pids_before  # no worker died and was respawned
    assert rss_after - rss_before < 512 * 2**20

    logged = read_inference_log(log_dir)
    assert len(good_ids) == len(set(good_ids)) == TOTAL_REQUESTS * 4 // 5
    assert len(logged) == len(good_ids)
    assert sorted(logged["request_id"]) == sorted(good_ids)
    assert (logged["record_index"] == 0).all()
