"""A user's own notebook projects, end to end, through the ``nbprod`` command as the README shows.

promote → run (accepted) → serve → predict → monitor, plus a rejected run, for a binary
classifier in one notebook, a multiclass classifier with string labels in two notebooks in a
subfolder, and a regression; the binary and regression pipelines share one run store and keep
separate champions. Real Prefect server, real kernels, real Evidently, real ``bentoml serve``.
State is left to nbprod's defaults: everything under the project's ``.nbprod/``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from prefect_records import run_summary
from user_projects import write_churn_project, write_price_project, write_tiers_project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_server: None) -> Iterator[Path]:
    """A project folder (a prefect.yaml marks its root) with three notebook projects' data and
    notebooks, and no nbprod files yet."""
    root = tmp_path_factory.mktemp("user-project")
    (root / "prefect.yaml").write_text("name: user-project\ndeployments: []\n")
    write_churn_project(root)
    write_tiers_project(root)
    write_price_project(root)
    yield root


def user_env() -> dict[str, str]:
    """A user's shell in this project: only the Prefect server is given (PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NBPROD_HOME", "BENTOML_HOME", "NBPROD_PROJECT_DIR", "NBPROD_RUN_STORE_URL")
    }
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return env


def nbprod(project: Path, *args: str, exit_code: int = 0, timeout: float = 600) -> str:
    """Run ``nbprod ARGS`` in the project folder, require its exit status; stdout and stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=project,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == exit_code, f"nbprod {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def deployment_names() -> set[str]:
    """The deployments registered on the test's Prefect server, as ``flow/deployment``."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def names() -> set[str]:
        async with get_client() as client:
            found = await client.read_deployments()
            flows = {f.id: f.name for f in await client.read_flows()}
            return {f"{flows[d.flow_id]}/{d.name}" for d in found}

    return asyncio.run(names())


def champion(project: Path, pipeline: str) -> dict[str, Any]:
    return json.loads(nbprod(project, "champion", "--pipeline", pipeline, "--json"))


def serving(project: Path, pipeline: str, port: int) -> subprocess.Popen[bytes]:
    """``nbprod serve --pipeline P --port N`` in the background, once it answers /readyz."""
    log = project / f"serve-{pipeline}.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--pipeline", pipeline, "--port", str(port)],
        cwd=project,
        env=user_env(),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a server that is starting, with a deadline
    stop(server)
    raise AssertionError(f"nbprod serve not ready in 120 s:\n{log.read_text()}")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_and_predict(project: Path, pipeline: str, new_rows: str) -> pd.DataFrame:
    """Serve the pipeline's champion, predict a CSV through it, return the predictions."""
    port = free_port()
    server = serving(project, pipeline, port)
    try:
        out = project / f"{pipeline}-predictions.csv"
        nbprod(
            project,
            "predict",
            new_rows,
            "--pipeline",
            pipeline,
            "--output",
            str(out),
            "--url",
            f"http://127.0.0.1:{port}",
        )
        return pd.read_csv(out)
    finally:
        stop(server)


def test_binary_classifier_in_one_notebook(project: Path) -> None:
    promoted = nbprod(
        project,
        "promote",
        "notebooks/churn.ipynb",
        "--name",
        "churn",
        "--target",
        "churned",
        "--data",
        "data/churn.csv",
        "--schedule",
        "0 5 * * *",
    )
    assert "classification" in promoted and "customer_id" in promoted and "signup_date" in promoted
    spec = (project / "deployments" / "churn.yaml").read_text()
    assert "task: classification" in spec and "time_column: signup_date" in spec
    assert (project / "deployments" / "churn.policy.yaml").exists()

    run = nbprod(project, "run", "--spec", "deployments/churn.yaml")
    assert "ACCEPTED" in run, run
    first = champion(project, "churn")
    assert first["metrics"]["roc_auc"] > 0.8
    assert (project / ".nbprod" / "runs").is_dir() and (project / ".nbprod" / "bentoml").is_dir()

    predictions = serve_and_predict(project, "churn", "data/new_customers.csv")
    new = pd.read_csv(project / "data" / "new_customers.csv")
    assert list(predictions["customer_id"]) == list(new["customer_id"])
    assert set(predictions["prediction"]) <= {0, 1}
    assert {"probability_0", "probability_1"} <= set(predictions.columns)
    assert "churned" not in predictions.columns and "signup_date" not in predictions.columns

    # Two independent monitoring runs, side by side as from two shells (each mostly one core).
    with ThreadPoolExecutor(max_workers=2) as shells:
        on_file = shells.submit(
            nbprod, project, "monitor", "data/new_customers.csv", "--pipeline", "churn"
        )
        # The service's own inference log (what `nbprod serve` wrote while predict ran), last 24 h.
        on_log = shells.submit(nbprod, project, "monitor", "--pipeline", "churn", "--start", "-24h")
        monitored, logged = on_file.result(), on_log.result()
    assert "DRIFT" in monitored.upper(), monitored
    assert "300 rows" in logged or "drift" in logged.lower(), logged

    # After monitoring: its drift events must not meet the retrain automation deploy creates.
    deployed = nbprod(project, "deploy")
    assert "churn" in deployed, deployed
    assert deployment_names() >= {"training_pipeline/churn", "monitoring_pipeline/churn-monitoring"}

    rejected = nbprod(
        project,
        "run",
        "--spec",
        "deployments/churn.yaml",
        "--param",
        "shuffle_labels=True",
        exit_code=3,
    )
    assert "REJECTED" in rejected, rejected
    assert champion(project, "churn")["version"] == first["version"]
    # From the Prefect UI alone: the rejected run's summary says why, with the candidate's
    # curves beside the champion's, an image served by nbprod ui over http.
    latest = json.loads(nbprod(project, "runs", "--pipeline", "churn", "--json"))[-1]
    assert latest["status"] == "rejected"
    summary = run_summary(latest["flow_run_id"])
    assert "ROC and precision-recall curves: the candidate's beside the champion's" in summary
    assert re.search(
        rf"!\[[^]]*\]\(http://127\.0\.0\.1:\d+/versions/{latest['version']}/figures/", summary
    )
    assert "FAIL" in summary and first["version"] in summary


def test_multiclass_string_labels_in_two_notebooks_in_a_subfolder(project: Path) -> None:
    promoted = nbprod(
        project,
        "promote",
        "analysis/tiers/clean_rows.ipynb",
        "analysis/tiers/fit_forest.ipynb",
        "--name",
        "tiers",
        "--target",
        "tier",
        "--data",
        "data/tiers.csv",
        "--id-column",
        "account_key",
        "--skip-repro",  # promote's two fresh runs are the churn project's to show
    )
    assert "classification" in promoted, promoted
    run = nbprod(project, "run", "--spec", "deployments/tiers.yaml")
    assert "ACCEPTED" in run, run
    metrics = champion(project, "tiers")["metrics"]
    assert metrics["accuracy"] > 0.5 and 0.5 < metrics["roc_auc"] <= 1

    with ThreadPoolExecutor(max_workers=1) as shell:  # monitoring a file needs no service
        monitoring = shell.submit(
            nbprod, project, "monitor", "data/new_accounts.csv", "--pipeline", "tiers"
        )
        predictions = serve_and_predict(project, "tiers", "data/new_accounts.csv")
        monitored = monitoring.result()
    assert set(predictions["prediction"]) <= {"bronze", "silver", "gold"}
    probabilities = predictions[[f"probability_{t}" for t in ("bronze", "gold", "silver")]]
    assert (probabilities.sum(axis=1) - 1).abs().max() < 1e-6
    assert list(predictions["account_key"])[:3] == ["new-0000", "new-0001", "new-0002"]
    assert "tiers" in monitored or "drift" in monitored.lower(), monitored


def test_regression_shares_the_store_with_its_own_champion(project: Path) -> None:
    nbprod(
        project,
        "promote",
        "models/price/price_model.ipynb",
        "--name",
        "price",
        "--target",
        "price",
        "--data",
        "data/houses.csv",
        "--start",
        "2024-03-01",
        "--end",
        "2024-12-01",
        "--skip-repro",
    )
    assert "task: regression" in (project / "deployments" / "price.yaml").read_text()
    run = nbprod(project, "run", "--spec", "deployments/price.yaml")
    assert "ACCEPTED" in run, run
    price = champion(project, "price")
    assert price["metrics"]["r2"] > 0.8 and "rmse" in price["metrics"]
    (record,) = json.loads(nbprod(project, "runs", "--pipeline", "price", "--json"))
    summary = run_summary(record["flow_run_id"])
    assert "Predicted vs actual and residuals: the candidate's" in summary
    assert f"/versions/{price['version']}/figures/" in summary
    assert f"/versions/{price['version']}/reports/" in summary  # reports linked over http

    with ThreadPoolExecutor(max_workers=1) as shell:  # monitoring a file needs no service
        monitoring = shell.submit(
            nbprod, project, "monitor", "data/new_sales.csv", "--pipeline", "price"
        )
        predictions = serve_and_predict(project, "price", "data/new_sales.csv")
        monitoring.result()
    assert predictions["prediction"].dtype.kind == "f" and "sale_id" in predictions.columns

    # The churn pipeline's champion is untouched by the price pipeline, and each lists its own.
    if (project / "deployments" / "churn.yaml").exists():
        assert champion(project, "churn")["version"] != price["version"]
        listed = json.loads(nbprod(project, "runs", "--pipeline", "price", "--json"))
        assert listed and all(r["pipeline"] == "price" for r in listed)
