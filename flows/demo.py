"""``make demo``: the whole idea on the bundled data, from notebook to continuous training.

Run 1 trains on January–September 2024 and, with no champion yet, is accepted, packaged as a
bento and becomes the champion. Run 2 trains a deliberately weakened configuration on the same
window; the gate compares it with the champion on the same holdout rows and rejects it.

Then production: the champion's bento is served and answers single-row requests drawn from
October–December 2024, when the applicants changed. The monitoring flow reads the service's
inference log, finds the drift and emits ``nbprod.drift.detected``; prefect.yaml's automation
(registered on the embedded Prefect server with ``prefect deploy``) runs the training
deployment on a process worker, on the labelled data up to now; the demo follows that run and
prints the new champion or the gate's reasons for rejecting it.
"""

from __future__ import annotations

import sys
from typing import Any

from flows.paths import prepare_environment

DEGRADED = {"n_estimators": 5, "max_depth": 1, "learning_rate": 0.05, "train_fraction": 0.05}


def _say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def _bento_path(tag: str) -> str:
    import bentoml

    return str(bentoml.get(tag).path)


DRIFTED_WINDOW = ("2024-10-01", "2025-01-01")
TRAINING_SPEC = "deployments/training.yaml"
PIPELINE = "training"
TRAFFIC_ROWS = 1_200
CLIENTS = 8
RETRAIN_TIMEOUT_S = 900.0


def send_traffic(url: str, rows: Any, spec: Any) -> int:
    """One POST per row from a few concurrent clients, as production traffic arrives."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.serving import frame_to_records, predict_records

    records = frame_to_records(rows, drop=spec.non_feature_columns)
    with ThreadPoolExecutor(CLIENTS) as pool:
        answered = list(pool.map(lambda r: len(predict_records(url, [r])[0]), records))
    return sum(answered)


def drifted_traffic(data_path: str, rows: int) -> Any:
    import pandas as pd

    frame = pd.read_csv(data_path, parse_dates=["application_date"])
    start, end = (pd.Timestamp(d) for d in DRIFTED_WINDOW)
    window = frame[(frame["application_date"] >= start) & (frame["application_date"] < end)]
    return window.sample(min(rows, len(window)), random_state=0)


def continuous_training(champion: dict[str, Any]) -> dict[str, Any] | None:
    """Serve → drifted traffic → monitoring → automation → retraining run; its stored record."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.localstack import (
        POOL,
        embedded_api_url,
        start_worker,
        stop_process,
        wait_for_flow_run,
        wait_for_worker,
    )
    from flows.monitoring import monitoring_pipeline
    from flows.promote import deploy, ensure_work_pool
    from flows.run_records import new_version_id
    from flows.runs import DRIFT_TRIGGER_PREFIX
    from flows.serving import running_bento
    from flows.settings import PROJECT_ROOT, load_settings
    from flows.spec import load_spec
    from flows.store import RunStore

    settings = load_settings()
    store = RunStore(settings.resolved_run_store_url)
    workdir = settings.home / "demo" / new_version_id()
    log_dir = workdir / "inference_logs"
    spec = load_spec(TRAINING_SPEC)

    _say(
        f"Production: serve the champion's bento {champion['bento_tag']} and send it "
        f"{TRAFFIC_ROWS} single-row requests from {DRIFTED_WINDOW[0]}..{DRIFTED_WINDOW[1]}"
    )
    traffic = drifted_traffic(str(PROJECT_ROOT / spec.data["data_path"]), TRAFFIC_ROWS)
    with running_bento(champion["bento_tag"], log_dir=log_dir, workdir=workdir) as (url, ready):
        print(f"  serving on {url} (ready in {ready:.1f} s)")
        answered = send_traffic(url, traffic, spec)
    print(f"  {answered} predictions; inference log in {log_dir}")

    api = embedded_api_url()
    _say(f"Register the training deployment and its retrain-on-drift trigger ({api})")
    worker = None
    with temporary_settings(updates={PREFECT_API_URL: api}):
        try:
            ensure_work_pool(POOL)
            worker_log = workdir / "worker.log"
            worker = start_worker(api, worker_log, name="nbprod-demo", cwd=PROJECT_ROOT, wait=False)
            registered = deploy(["training", "monitoring"], project_root=PROJECT_ROOT)
            print(f"  deployed: {', '.join(registered)}; worker polling {POOL} (log {worker_log})")
            wait_for_worker(api, "nbprod-demo", POOL, worker, worker_log, timeout_s=120)

            _say("Monitoring: the inference log against the champion's training data")
            record = monitoring_pipeline(
                source=str(log_dir), spec=TRAINING_SPEC, triggered_by="demo"
            )
            drift = record["drift"]
            print(f"  {drift['verdict'].upper()}: {drift['reason']}")
            if drift["verdict"] != "drift":
                return None
            cause = f"{DRIFT_TRIGGER_PREFIX}{record['version']}"
            _say(f"Drift event sent: waiting for the automation's training run ({cause})")
            flow_run = wait_for_flow_run(
                lambda run: run.parameters.get("triggered_by") == cause,
                deployment="training_pipeline/training",
                timeout_s=RETRAIN_TIMEOUT_S,
                on_wait=lambda label: print(f"  {label}", flush=True),
            )
            print(f"  flow run {flow_run.name}: {flow_run.state.name}")
        finally:
            if worker is not None:
                stop_process(worker)
    found = [r for r in store.list_runs() if r.get("triggered_by") == cause]
    return found[-1] if found else None


def run_demo() -> int:
    prepare_environment()
    from flows.prefect_settings import command_flow_settings
    from flows.ui import alongside_message, start_alongside

    ui = start_alongside()  # the artifacts' links open while it runs, after the demo too
    try:
        with command_flow_settings():
            return demo_steps()
    finally:
        print(f"\n{alongside_message(ui, PIPELINE)}", flush=True)


def demo_steps() -> int:
    """Train twice, serve the champion, detect drift and retrain; 0 when all went as shown."""
    from flows.errors import NbprodError
    from flows.pipeline import training_pipeline
    from flows.settings import load_settings
    from flows.store import RunStore

    settings = load_settings()
    store = RunStore(settings.resolved_run_store_url)
    try:
        _say("Run 1: train on 2024-01..2024-09 with the notebook defaults")
        first: dict[str, Any] = training_pipeline(spec=TRAINING_SPEC, triggered_by="demo")
        _say(f"Run 1 {first['status']}: " + "; ".join(first.get("reasons") or []))
        _say(f"Run 2: a degraded configuration {DEGRADED}")
        second: dict[str, Any] = training_pipeline(
            spec=TRAINING_SPEC, parameters={"train": DEGRADED}, triggered_by="demo"
        )
        _say(f"Run 2 {second['status']}: " + "; ".join(second.get("reasons") or []))
    except NbprodError as exc:
        print(f"nbprod demo: error: {exc}", file=sys.stderr)
        return 1

    champion = store.champion(PIPELINE)
    print("\nWhat was stored:")
    for record in (first, second):
        v = record["version"]
        print(f"  run {v} [{record['status']}]")
        print(
            f"    reports:    {store.uri(v, 'reports')}/"
            "{data_summary,data_drift,model_performance}.html"
        )
        print(f"    notebooks:  {store.uri(v, 'notebooks')}/{{prepare,train}}.html (and .ipynb)")
        print(f"    lineage:    {store.uri(v, 'manifest.json')}")
    if champion:
        print(f"\nChampion: {champion['version']}  model {champion['model_tag']}")
        print(f"  bento:    {champion['bento_tag']}  at {_bento_path(champion['bento_tag'])}")
        print("\nServe it (answers on http://127.0.0.1:3000, POST /predict):")
        print(f"  .venv/bin/nbprod serve --pipeline {PIPELINE} --port 3000")
    ok = first["status"] == "accepted" and second["status"] == "rejected"
    if not ok or not champion:
        print("demo: expected run 1 accepted and run 2 rejected", file=sys.stderr)
        return 1

    try:
        retrain = continuous_training(champion)
    except NbprodError as exc:
        print(f"nbprod demo: error: {exc}", file=sys.stderr)
        return 1
    if retrain is None:
        print(
            "demo: monitoring found no drift, or the retraining run left no record", file=sys.stderr
        )
        return 1
    now = store.champion(PIPELINE) or {}
    _say(
        f"Retraining {retrain['version']} ({retrain['triggered_by']}): {retrain['status'].upper()}"
    )
    for reason in retrain.get("reasons") or [retrain.get("error") or ""]:
        print(f"  - {reason}")
    if retrain["status"] == "accepted":
        print(f"New champion: {now.get('version')}  bento {now.get('bento_tag')}")
    else:
        print(f"Champion unchanged: {now.get('version')}")
    print("\nChampion history: .venv/bin/nbprod history    Runs: .venv/bin/nbprod runs")
    print("Inspect one: .venv/bin/nbprod show VERSION    Dashboard: .venv/bin/nbprod dashboard")
    return 0 if retrain["status"] in ("accepted", "rejected") else 1


if __name__ == "__main__":
    sys.exit(run_demo())
