"""Continuous training end to end: drift event → Prefect automation → retraining deployment.

A real ``prefect server start`` (its event triggers and actions services), the shipped
prefect.yaml registered from a temporary copy of the project (training deployment with its
``nbprod-training-retrain-on-drift`` trigger, and the scheduled monitoring deployment), and a
process worker. The champion comes from a real run of the training deployment on the worker;
monitoring runs in this process against the same server and run store, so the drift event
reaches the server as it would from a scheduled monitoring run.

No fixed sleeps: the undrifted window is checked first and emits no event; the drifted one
emits one; the automation must then create exactly one training run, for the drifted
monitoring run, and that run is followed to its final state with a deadline.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_deployment import _log_tail, _run_to_completion, running_stack
from test_monitoring import drift_events

from flows.cli import main
from flows.localstack import wait_for_flow_run
from flows.store import RunStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
LOANS = str(ROOT / "data" / "loans.csv")
PIPELINE = "training"
SPEC = f"deployments/{PIPELINE}.yaml"
TRAINING = "training_pipeline/training"
RETRAIN_TIMEOUT_S = 420.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("continuous-training")
    with running_stack(
        base,
        deployments=("training", "monitoring"),
        project_dirs=("notebooks", "data", "bentos"),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def champion(stack: dict[str, Any]) -> dict[str, Any]:
    """The first champion: the training deployment run by the worker, as a schedule would."""
    flow_run = _run_to_completion(TRAINING, {"triggered_by": "test-seed"}, stack["worker_log"])
    assert flow_run.state.type.value == "COMPLETED", _log_tail(stack["worker_log"], 80)
    found = RunStore(str(stack["nbprod_home"] / "runs")).champion(PIPELINE)
    assert found is not None, "the seed training run was not accepted"
    return found


def test_deployments_and_trigger_are_registered(stack: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client

    assert set(stack["registered"]) == {"tiny-nb", "training", "monitoring"}
    with get_client(sync_client=True) as client:
        automations = client.read_automations_by_name("nbprod-training-retrain-on-drift")
        training = client.read_deployment_by_name(TRAINING)
        monitoring = client.read_deployment_by_name("monitoring_pipeline/monitoring")
    (automation,) = automations
    assert automation.enabled
    assert automation.trigger.expect == {"nbprod.drift.detected"}
    assert automation.trigger.match.model_dump()["prefect.resource.id"] == (
        "nbprod.pipeline.training"
    )
    (action,) = automation.actions
    assert action.deployment_id == training.id
    assert monitoring.parameters["start"] == "-24h"
    assert [s.schedule.cron for s in monitoring.schedules] == ["0 6 * * *"]


def test_drift_triggers_retraining_and_no_drift_or_no_verdict_does_not(
    stack: dict[str, Any], champion: dict[str, Any]
) -> None:
    from flows.monitoring import monitoring_pipeline

    store = RunStore(str(stack["nbprod_home"] / "runs"))

    # A window like the training data: no verdict of drift, so no event and no retraining.
    steady = monitoring_pipeline(
        SPEC, "2024-04-01", "2024-07-01", source=LOANS, run_store_url=store.url, triggered_by="test"
    )
    assert steady["drift"]["verdict"] == "no_drift"
    assert steady["event"] is None
    assert drift_events(steady["version"], expect=False) == []

    # A drifted day, but too few rows for a verdict: no event either, and the run says why.
    sparse = monitoring_pipeline(
        SPEC,
        "2024-12-01",
        "2024-12-02",
        source=LOANS,
        run_store_url=store.url,
        triggered_by="test",
        policy={"min_rows": 500},
    )
    assert sparse["drift"]["verdict"] == "no_verdict" and sparse["event"] is None
    assert "too few rows" in sparse["reasons"][0]
    assert drift_events(sparse["version"], expect=False) == []

    drifted = monitoring_pipeline(
        SPEC, "2024-10-01", "2025-01-01", source=LOANS, run_store_url=store.url, triggered_by="test"
    )
    assert drifted["drift"]["verdict"] == "drift" and drifted["event"]["sent"]
    assert drifted["pipeline"] == PIPELINE
    assert drifted["event"]["resource"]["prefect.resource.id"] == f"nbprod.pipeline.{PIPELINE}"
    cause = f"drift:{drifted['version']}"

    flow_run = wait_for_flow_run(
        lambda run: run.parameters.get("triggered_by", "").startswith("drift:"),
        deployment=TRAINING,
        timeout_s=RETRAIN_TIMEOUT_S,
    )
    assert flow_run.parameters["triggered_by"] == cause  # the drifted run's, not the steady one's
    assert flow_run.state.type.value == "COMPLETED", (
        f"{flow_run.state.name}: {flow_run.state.message}\n{_log_tail(stack['worker_log'], 80)}"
    )
    # The event's window reached the flow: the spec's start, the drifted window's end.
    assert flow_run.parameters["end_date"] == "2025-01-01"
    assert flow_run.parameters["start_date"] is None

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["training"]))
        )
    triggered = [r.parameters.get("triggered_by") for r in runs]
    assert sorted(t for t in triggered if t != "test-seed") == [cause]

    # The retrained run: same gate and infra check, on the new window, linked both ways.
    (retrain,) = [r for r in store.list_runs() if r.get("triggered_by") == cause]
    assert retrain["flow_run_id"] == str(flow_run.id)
    assert retrain["trigger"] == {"kind": "drift", "monitoring_version": drifted["version"]}
    assert retrain["window"] == ["2024-01-01", "2025-01-01"]
    assert retrain["status"] in {"accepted", "rejected"}
    assert retrain["reasons"], "a gate decision always gives its reasons"
    (followup,) = store.followups(drifted["version"])
    assert followup["version"] == retrain["version"]
    assert followup["status"] == retrain["status"]
    assert followup["reasons"] == retrain["reasons"]
    assert store.followups(steady["version"]) == [] == store.followups(sparse["version"])

    # `nbprod show` of the monitoring run names what it caused; `nbprod history` says why.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["show", drifted["version"], "--store", store.url]) == 0
        assert main(["history", "--pipeline", PIPELINE, "--store", store.url]) == 0
    shown = out.getvalue()
    assert f"→ retraining {retrain['version']}: {retrain['status'].upper()}" in shown

    now = store.champion(PIPELINE)
    if retrain["status"] == "accepted":
        assert f"{retrain['version']}  retrain" in shown
        assert retrain["infra_check"]["passed"] is True
        assert now["version"] == retrain["version"]
        last = store.champion_history(PIPELINE)[-1]
        assert last["reason"] == "retrain" and drifted["version"] in last["note"]
    else:
        assert now["version"] == champion["version"]
