"""A user's churn project with a fault switch, and the corrupted inputs of the fault matrix.

The notebook is tests/user_projects.py's churn notebook plus two parameters — ``fault``, which
a third cell reads to fail on purpose, and ``api_token``, a secret the spec takes from the
environment — so every fault happens inside the same promoted pipeline whose champion, history
and bentos the fault tests then check were left alone.

Promoting it and training its first champion is done once per session
(:func:`build_promoted_project`, conftest's ``promoted_fault_project``); each fault module works
on its own copy (:func:`copy_project`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from notebook_files import KERNELSPEC
from user_projects import CHURN_BODY, churn_data

PIPELINE = "churn"
SECRET_ENV = "API_TOKEN"
FAULT_PARAMETERS = (
    'data_path = "../data/churn.csv"\n'
    "seed = 7\n"
    "shuffle_labels = False\n"
    'fault = ""\n'
    'api_token = ""\n'
    'output_dir = "out"'
)
# The third cell (#3 once papermill has injected its parameters cell as #1).
FAULT_CELL = """
# What goes wrong, when a test asks for it: fault is "" in every normal run.
if fault == "raise":
    raise RuntimeError("injected failure: the fault cell raised")
if fault == "kill":
    import os
    os.kill(os.getpid(), 9)
if fault == "sleep":
    import time
    time.sleep(300)
if fault in ("print-secret", "leak-secret"):
    print("calling the scoring API with token", api_token)
if fault == "leak-secret":
    raise PermissionError(f"the scoring API refused token {api_token}")
"""
FAULT_CELL_INDEX = 3
# nbprod's state variables: unset in a user's shell, so nbprod defaults them to the project's.
STATE_ENV = ("NBPROD_HOME", "BENTOML_HOME", "NBPROD_PROJECT_DIR", "NBPROD_RUN_STORE_URL")


@dataclass(frozen=True)
class PromotedProject:
    """A promoted fault project whose first (and only) run, accepted, printed ``token``."""

    root: Path
    token: str


def user_env(**extra: str) -> dict[str, str]:
    """The user's shell: the test's Prefect server, nbprod's state defaulted, plus ``extra``."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in STATE_ENV}
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return {**env, **extra}


def write_fault_project(root: Path) -> None:
    """``prefect.yaml``, ``data/churn.csv``, ``data/new_customers.csv`` and
    ``notebooks/churn.ipynb`` (parameters, training, fault cell)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "prefect.yaml").write_text("name: fault-project\ndeployments: []\n")
    (root / "data").mkdir(parents=True, exist_ok=True)
    churn_data().to_csv(root / "data" / "churn.csv", index=False)
    churn_data(rows=300, seed=5).to_csv(root / "data" / "new_customers.csv", index=False)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    parameters = nbformat.v4.new_code_cell(FAULT_PARAMETERS)
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [
        parameters,
        nbformat.v4.new_code_cell(CHURN_BODY.strip()),
        nbformat.v4.new_code_cell(FAULT_CELL.strip()),
    ]
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, root / "notebooks" / "churn.ipynb")


def add_secret(spec: Path) -> None:
    """Declare ``api_token`` as a secret from ``$API_TOKEN`` in the spec, as a user edits it."""
    import yaml

    raw = yaml.safe_load(spec.read_text())
    raw["secrets"] = {PIPELINE: {"api_token": {"env": SECRET_ENV}}}
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))


def build_promoted_project(root: Path) -> PromotedProject:
    """The fault project at ``root``, promoted (lint only), its secret declared, and one accepted
    run whose notebook printed the secret (the secrets tests check it was scrubbed)."""
    write_fault_project(root)
    token = "tok-" + os.urandom(12).hex()

    def nbprod(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=root,
            env=user_env(**{SECRET_ENV: token}),
            capture_output=True,
            text=True,
            timeout=600,
        )

    promoted = nbprod(
        "promote",
        "notebooks/churn.ipynb",
        "--name",
        PIPELINE,
        "--target",
        "churned",
        "--data",
        "data/churn.csv",
        "--skip-repro",
    )
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    add_secret(root / "deployments" / f"{PIPELINE}.yaml")
    first = nbprod("run", "--pipeline", PIPELINE, "--param", "fault=print-secret")
    assert first.returncode == 0 and "ACCEPTED" in first.stdout, first.stdout + first.stderr
    assert token not in first.stdout + first.stderr
    return PromotedProject(root=root, token=token)


def copy_project(promoted: PromotedProject, dest: Path) -> PromotedProject:
    """A copy of the project at ``dest``, its ``.nbprod`` (run store, notebook cache, BentoML
    store) included: nbprod finds all of it from the project folder, wherever that is."""
    shutil.copytree(promoted.root, dest, symlinks=True)
    return PromotedProject(root=dest, token=promoted.token)


def corrupt_inputs(folder: Path, good_csv: Path) -> dict[str, Path]:
    """Bad data files, by case: missing, empty, a CSV cut mid-row, a Parquet cut in half, and
    binary garbage under a .csv name."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    text = good_csv.read_bytes()
    # Cut in the middle of the last-but-ten row, after its third field: a partial last line.
    lines = text.splitlines(keepends=True)
    partial = lines[-10].split(b",")
    truncated_csv = folder / "truncated.csv"
    truncated_csv.write_bytes(b"".join(lines[:-10]) + b",".join(partial[:3]))
    parquet = folder / "whole.parquet"
    pd.read_csv(good_csv).to_parquet(parquet, index=False)
    half = parquet.read_bytes()
    truncated_parquet = folder / "truncated.parquet"
    truncated_parquet.write_bytes(half[: len(half) // 2])
    parquet.unlink()
    empty = folder / "empty.csv"
    empty.write_bytes(b"")
    garbage = folder / "garbage.csv"
    garbage.write_bytes(os.urandom(64 * 1024))
    return {
        "missing": folder / "missing.csv",
        "empty": empty,
        "truncated-csv": truncated_csv,
        "truncated-parquet": truncated_parquet,
        "binary-garbage": garbage,
    }
