"""The fault matrix's hard faults: a run killed with SIGKILL at each step, a full disk at each
store write, and racing ``--no-cache`` runs, each followed by the state it must leave.

One promoted churn project (tests/fault_projects.py; this module's copy of the session's) with
an accepted champion; every case runs ``nbprod run`` in a subprocess with ``NBPROD_FAULT``
(flows.faults) naming where to die or fail, then checks: nothing half-written is listed, the
champion is unchanged (or fully moved), its history ends at it without gaps, no process the run
started survives it, ``nbprod gc`` removes what is left (bentos, models, partial versions,
scratch) and marks the Prefect flow run crashed, BentoML's ``latest`` names an accepted model,
and the next run is accepted with no manual step. Real Prefect server, kernels,
``bentoml serve``.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_projects import PIPELINE, SECRET_ENV, PromotedProject, copy_project, user_env

pytestmark = pytest.mark.integration

SPEC = f"deployments/{PIPELINE}.yaml"


def nbprod(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=project,
        env=user_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def ok(project: Path, *args: str, code: int = 0) -> str:
    done = nbprod(project, *args)
    assert done.returncode == code, f"nbprod {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, promoted_fault_project: PromotedProject
) -> Iterator[Path]:
    """The churn fault project, promoted, with one accepted run as champion: this module's copy
    of the session's. Its spec takes a secret from the environment, so the shell has one (not
    test_faults' token, which that module looks for everywhere)."""
    copied = copy_project(promoted_fault_project, tmp_path_factory.mktemp("crash") / "project")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(SECRET_ENV, f"crash-token-{uuid.uuid4().hex}")
        yield copied.root


class State:
    """What the run store and the BentoML store hold for the pipeline."""

    def __init__(self, project: Path) -> None:
        from flows.store import RunStore

        store = RunStore(project / ".nbprod" / "runs")
        self.project = project
        self.runs = store.list_runs(PIPELINE)
        self.champion = store.champion(PIPELINE) or {}
        self.history = store.champion_history(PIPELINE)
        self.versions = {r["version"]: r["status"] for r in self.runs}

    def check_consistent(self) -> None:
        """The champion is a listed accepted run; the history is gap-free and ends at it."""
        assert self.versions.get(self.champion["version"]) == "accepted"
        rows = self.history
        assert rows[-1]["to_version"] == self.champion["version"]
        pairs = list(itertools.pairwise(rows))
        assert all(a["to_version"] == b["from_version"] for a, b in pairs)
        folder = self.project / ".nbprod/runs/pipelines" / PIPELINE / "champion_history"
        numbers = sorted(int(p.name[:6]) for p in folder.glob("*.json"))
        assert numbers == list(range(1, len(numbers) + 1))


def bentoml_tags(project: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(bento tag -> run version, model tag -> run version) in the project's BentoML store."""
    script = (
        "import json, bentoml\n"
        "lab = lambda i: (i.info.labels or {}).get('run_version')\n"
        "print(json.dumps([{str(b.tag): lab(b) for b in bentoml.list()},"
        " {str(m.tag): lab(m) for m in bentoml.models.list()},"
        " str(bentoml.models.get('" + PIPELINE + ":latest').tag)]))\n"
    )
    env = user_env(BENTOML_HOME=str(project / ".nbprod/bentoml"))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    bentos, models, latest = json.loads(out.stdout)
    return bentos, {**models, "latest": models[latest]}


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (everything a run started inherits it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "\nState:\tZ" not in status:  # a zombie has exited already
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until(condition: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)  # polling an observable condition with a deadline


def killed_run(project: Path, point: str, *extra: str, until: Any = None) -> str:
    """``nbprod run`` killed with SIGKILL at ``point`` (or, with ``until``, once it holds);
    returns the marker its processes carry."""
    marker = f"NBPROD_CRASH_TEST={uuid.uuid4().hex}"
    key, value = marker.split("=")
    env = user_env(**{key: value}, **({"NBPROD_FAULT": f"kill:{point}"} if until is None else {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--spec", SPEC, *extra],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if until is not None:
        wait_until(lambda: until(marker) or proc.poll() is not None, f"the run to reach {point}")
        assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
        proc.kill()
    out = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == -9, out
    return marker


def gc(project: Path) -> dict[str, Any]:
    return json.loads(ok(project, "gc", "--json"))


def flow_run_state(flow_run_id: str) -> str:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.read_flow_run(UUID(flow_run_id)).state_type.value)


def partial_versions(project: Path, listed: dict[str, str]) -> list[str]:
    folder = project / ".nbprod/runs/versions"
    return sorted(p.name for p in folder.iterdir() if p.name not in listed)


KILL_POINTS = ["step:reports", "bento-build", "infra-check-serving", "step:promote"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_run_killed_at_a_step_leaves_the_champion_and_nothing_running(
    project: Path, point: str
) -> None:
    before = State(project)
    marker = killed_run(project, point)
    wait_until(lambda: not marked_processes(marker), "the killed run's processes to end")

    after = State(project)
    assert after.champion == before.champion and after.versions == before.versions
    after.check_consistent()
    partial = partial_versions(project, after.versions)
    assert len(partial) == 1  # the killed run's folder: never listed
    owner = json.loads(
        (project / ".nbprod/runs/versions" / partial[0] / "process.json").read_text()
    )
    assert flow_run_state(owner["flow_run_id"]) == "RUNNING"

    removed = gc(project)
    assert removed["partial_versions"] == partial
    assert removed["crashed_flow_runs"] == [owner["flow_run_id"]]
    assert flow_run_state(owner["flow_run_id"]) == "CRASHED"
    assert partial_versions(project, after.versions) == []
    bentos, models = bentoml_tags(project)
    assert partial[0] not in bentos.values() and partial[0] not in models.values()
    assert after.versions[models["latest"]] == "accepted"
    assert not (project / ".nbprod/scratch" / partial[0]).exists()
    assert gc(project)["partial_versions"] == []  # nothing more to do


def test_a_run_killed_during_its_champion_move_becomes_champion_or_leaves_it(
    project: Path,
) -> None:
    """Killed after its run record, before the pointer: the record says accepted, so it is."""
    before = State(project)
    killed_run(project, "champion-move")
    after = State(project)
    new = set(after.versions) - set(before.versions)
    assert len(new) == 1 and after.versions[new.pop()] == "accepted"
    assert after.champion["version"] not in before.versions
    after.check_consistent()
    assert gc(project)["bentos"] == []  # the new champion's bento is kept


def test_a_run_killed_while_a_cell_runs_leaves_no_kernel(project: Path) -> None:
    """The kernel of a killed run stops too; the next run is accepted."""
    before = State(project)

    def sleeping_cell_runs(marker: str) -> bool:
        """papermill saves the executed notebook as cells start: the fault cell is running."""
        for path in (project / ".nbprod").rglob("executed/churn.ipynb"):
            try:
                cells = json.loads(path.read_text())["cells"]
            except (OSError, ValueError):
                continue  # being written
            statuses = [c["metadata"].get("papermill", {}).get("status") for c in cells]
            injected = "".join("".join(c["source"]) for c in cells[:2])
            if "running" in statuses and 'fault = "sleep"' in injected:
                return True
        return False

    marker = killed_run(project, "notebook", "--param", "fault=sleep", until=sleeping_cell_runs)
    wait_until(lambda: not marked_processes(marker), "the orphaned kernel to end", timeout=60)
    assert State(project).champion == before.champion
    gc(project)
    out = ok(project, "run", "--spec", SPEC)
    assert "ACCEPTED" in out
    State(project).check_consistent()


# In this order each fault's run has to get past the write the one before it failed at.
WRITES = ["write:gate.json", "write:run.json", "write:champion.json"]


@dataclass(frozen=True)
class FullDisk:
    """A run that met a full disk at one store write, and what it left."""

    done: subprocess.CompletedProcess[str]
    before: State
    after: State
    temp_files: list[Path]
    bentos: dict[str, str]


@pytest.fixture(scope="module")
def full_disk_runs(project: Path) -> dict[str, FullDisk]:
    """A run with ENOSPC at each of WRITES, one after the other, each with what it left.

    Every run after the first must reach a later write than the previous one failed at, so each
    is also a next run working after a full disk; test_the_next_run_after_full_disks_is_accepted
    checks the last one is followed by an accepted run.
    """
    outcomes = {}
    for point in WRITES:
        before = State(project)
        done = nbprod(project, "run", "--spec", SPEC, NBPROD_FAULT=f"enospc:{point}")
        temp_files = list((project / ".nbprod/runs").rglob("*.tmp-*"))
        bentos, _ = bentoml_tags(project)
        outcomes[point] = FullDisk(done, before, State(project), temp_files, bentos)
    return outcomes


@pytest.mark.parametrize("point", WRITES)
def test_a_full_disk_at_a_store_write_fails_the_run_and_leaves_the_store_consistent(
    full_disk_runs: dict[str, FullDisk], point: str
) -> None:
    outcome = full_disk_runs[point]
    done, after = outcome.done, outcome.after
    assert done.returncode == 1, done.stderr
    assert "No space left on device" in done.stderr.strip().splitlines()[-1]
    assert after.champion == outcome.before.champion
    after.check_consistent()
    assert outcome.temp_files == []
    accepted = {v for v, s in after.versions.items() if s == "accepted"}
    assert set(outcome.bentos.values()) <= accepted


def test_the_next_run_after_full_disks_is_accepted(
    project: Path, full_disk_runs: dict[str, FullDisk]
) -> None:
    """No manual step after the full disks: the next run is accepted."""
    assert "ACCEPTED" in ok(project, "run", "--spec", SPEC)
    State(project).check_consistent()


def test_concurrent_no_cache_runs_with_the_same_key_all_complete(project: Path) -> None:
    """Four ``--no-cache`` runs of the same notebook and parameters at once: each executes in its
    own folder, all four finish (accepted, or refused the champion move a racer made first)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--spec", SPEC, "--no-cache"],
            cwd=project,
            env=user_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [(p.communicate(timeout=900), p.returncode) for p in procs]
    for (_, err), code in outcomes:
        assert code in (0, 1), err
        if code == 1:  # lost the race for the champion: the pointer moved meanwhile
            assert "moved from" in err.strip().splitlines()[-1], err
    assert any(code == 0 for _, code in outcomes)
    State(project).check_consistent()
