"""The bundled training pipeline (deployments/training.yaml) on the real stack: Prefect server,
papermill kernels, Evidently, BentoML.

One module-scoped store is shared so the expensive accepted run happens once; each later test
checks that its failure leaves that store's champion of the pipeline untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from nbprod_cli import run_nbprod
from prefect_records import read_artifacts

from flows.errors import DataValidationError, NotebookExecutionError, ParameterError
from flows.store import RunStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
PIPELINE = "training"  # the bundled spec, deployments/training.yaml
DEGRADED = {"n_estimators": 5, "max_depth": 1, "learning_rate": 0.05, "train_fraction": 0.05}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline-home")


@pytest.fixture(scope="module")
def store(home: Path) -> RunStore:
    return RunStore(home / "runs")


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NBPROD_HOME", str(home))
    monkeypatch.delenv("NBPROD_PROJECT_DIR", raising=False)
    return home


def champion_version(store: RunStore) -> str | None:
    champion = store.champion(PIPELINE)
    return champion["version"] if champion else None


@pytest.fixture(scope="module")
def accepted(prefect_server: None, home: Path) -> dict[str, Any]:
    from flows.pipeline import training_pipeline

    os.environ["NBPROD_HOME"] = str(home)
    try:
        return training_pipeline(triggered_by="test")
    finally:
        os.environ.pop("NBPROD_HOME", None)


def test_first_run_is_accepted_versioned_and_packaged(
    accepted: dict[str, Any], store: RunStore
) -> None:
    assert accepted["status"] == "accepted"
    assert accepted["decision"] == "accepted"
    assert any("no champion yet" in r for r in accepted["reasons"])
    assert accepted["pipeline"] == PIPELINE and accepted["flow"] == "training_pipeline"
    assert accepted["task"] == "classification"
    assert accepted["window"] == ["2024-01-01", "2024-10-01"]  # the spec's data window
    assert accepted["cache"] == {"prepare": "miss", "train": "miss"}
    version = accepted["version"]
    files = set(store.files(version))
    for required in (
        "notebooks/prepare.ipynb",
        "notebooks/prepare.html",
        "notebooks/train.ipynb",
        "notebooks/train.html",
        "parameters.json",
        "fingerprints.json",
        "metrics.json",
        "gate.json",
        "manifest.json",
        "run.json",
        "inputs/data.parquet",
        "reference_profile.json",
        "outputs/prepare/train.parquet",
        "outputs/prepare/holdout.parquet",
        "outputs/train/model.joblib",
        "outputs/train/outputs.json",
        *(
            f"reports/{name}.{ext}"
            for name in ("data_summary", "data_drift", "model_performance")
            for ext in ("html", "json")
        ),
    ):
        assert required in files, required
    champion = store.champion(PIPELINE)
    assert champion is not None and champion["version"] == version
    assert champion["model_tag"] == accepted["model_tag"]
    assert champion["model_file"] == "outputs/train/model.joblib"
    assert store.pipelines() == [PIPELINE]
    # The bento was served for real and answered like the notebook's model before promotion.
    assert accepted["infra_check"] == {"passed": True, "reason": None}
    assert "infra_check.json" in files


def test_nbprod_scores_the_model_itself_and_keeps_what_the_notebook_reported(
    accepted: dict[str, Any], store: RunStore
) -> None:
    """Candidate metrics are nbprod's own on the holdout rows; outputs.json's are kept aside."""
    metrics = store.read_json(store.version_path(accepted["version"], "metrics.json"))
    candidate = metrics["candidate"]
    assert set(candidate) == {"roc_auc", "f1", "accuracy", "log_loss", "rows"}
    assert metrics["champion"] is None
    assert candidate == accepted["metrics"]["candidate"]
    holdout = pd.read_parquet(
        store.version_path(accepted["version"], "outputs/prepare/holdout.parquet")
    )
    assert candidate["rows"] == len(holdout)
    reported = metrics["notebook"]["train"]  # the train notebook's own, computed its own way
    assert reported["roc_auc"] == pytest.approx(candidate["roc_auc"], abs=1e-9)
    gate = store.read_json(store.version_path(accepted["version"], "gate.json"))
    assert gate["decision"] == "accepted" and "roc_auc" in gate["policy"]["floors"]


def test_the_validated_window_is_stored_and_handed_to_the_first_notebook(
    accepted: dict[str, Any], store: RunStore
) -> None:
    version = accepted["version"]
    window = pd.read_parquet(store.version_path(version, "inputs/data.parquet"))
    assert len(window) == 18000
    dates = pd.to_datetime(window["application_date"])
    assert dates.min() >= pd.Timestamp("2024-01-01") and dates.max() < pd.Timestamp("2024-10-01")
    params = store.read_json(store.version_path(version, "parameters.json"))
    # The window as a file in the source's format; the spec's target to notebooks declaring it.
    assert Path(params["prepare"]["data_path"]).name == "loans.csv"
    assert params["prepare"]["target"] == params["train"]["target"] == "defaulted"
    # Each file prepare wrote reaches train as <stem>_path.
    assert Path(params["train"]["train_path"]).name == "train.parquet"
    assert Path(params["train"]["holdout_path"]).name == "holdout.parquet"
    profile = json.dumps(store.read_json(store.version_path(version, "reference_profile.json")))
    assert "credit_score" in profile and "application_id" not in profile


def test_lineage_manifest_names_notebooks_data_params_env_and_git(
    accepted: dict[str, Any], store: RunStore
) -> None:
    from flows.manifest import file_sha256, notebook_content_hash

    manifest = store.read_json(store.version_path(accepted["version"], "manifest.json"))
    assert manifest["notebooks"]["train"]["content_sha256"] == notebook_content_hash(
        ROOT / "notebooks" / "train.ipynb"
    )
    assert manifest["inputs"]["data"]["sha256"] == file_sha256(ROOT / "data" / "loans.csv")
    assert manifest["inputs"]["data"]["rows"] == 24000
    assert manifest["inputs"]["reference"]["sha256"] == file_sha256(ROOT / "data" / "reference.csv")
    # Every file a notebook wrote is fingerprinted; only tables have rows.
    assert manifest["inputs"]["prepare.holdout"]["rows"] == accepted["metrics"]["candidate"]["rows"]
    assert manifest["inputs"]["train.model"]["rows"] is None
    assert manifest["parameters"]["prepare"]["target"] == "defaulted"
    assert manifest["environment"]["packages"]["evidently"] == "0.7.23"
    assert manifest["champion_at_start"] is None
    if (ROOT / ".git").exists():
        assert len(manifest["git"]["commit"]) == 40


def test_bento_pins_the_exact_model_with_run_metadata(accepted: dict[str, Any]) -> None:
    import bentoml

    model = bentoml.models.get(accepted["model_tag"])
    assert model.tag.name == "loan-default"  # the spec's model_name
    assert model.info.labels["run_version"] == accepted["version"]
    metadata = model.info.metadata
    assert metadata["run_version"] == accepted["version"]
    assert metadata["pipeline"] == PIPELINE and metadata["task"] == "classification"
    assert metadata["target"] == "defaulted" and metadata["classes"] == [0, 1]
    assert metadata["id_columns"] == ["application_id"]
    assert metadata["time_column"] == "application_date"
    assert metadata["metrics"]["roc_auc"] == pytest.approx(
        accepted["metrics"]["candidate"]["roc_auc"]
    )
    assert len(metadata["data_sha256"]) == 64
    lineage = metadata["lineage"]
    assert set(lineage["notebooks"]) == {"prepare", "train"}
    assert lineage["inputs"]["data"] == metadata["data_sha256"]
    bento = bentoml.get(accepted["bento_tag"])
    assert bento.tag.name == PIPELINE and bento.tag.version == accepted["version"]
    assert [str(m.tag) for m in bento.info.all_models] == [accepted["model_tag"]]
    pin = json.loads((Path(bento.path) / "src" / "model_pin.json").read_text())
    assert pin["model_tag"] == accepted["model_tag"]


def test_reports_are_real_evidently_snapshots(accepted: dict[str, Any], store: RunStore) -> None:
    summaries = store.read_json(store.version_path(accepted["version"], "reports/summaries.json"))
    assert summaries["data_summary"]["rows"] == 18000
    # Drift over the model's features: not the id, the date or the target.
    assert summaries["data_drift"]["n_columns"] == 11
    perf = summaries["model_performance"]
    assert perf["reference"] is None  # no champion on the first run
    assert perf["current"]["roc_auc"] == pytest.approx(
        accepted["metrics"]["candidate"]["roc_auc"], abs=1e-6
    )
    html = Path(store.version_path(accepted["version"], "reports/data_drift.html")).read_text()
    assert "<html" in html.lower()


def test_dashboard_holds_model_metrics_over_versions(
    accepted: dict[str, Any], store: RunStore, tmp_path: Path
) -> None:
    from evidently.ui.workspace import Workspace

    from flows.dashboard import sync_dashboard

    assert sync_dashboard(store, tmp_path / "ws") >= 2  # the run's drift and model snapshots
    ws = Workspace(str(tmp_path / "ws"))
    (project,) = ws.search_project(PIPELINE)  # one project per pipeline
    panels = {p.title: p for p in project.dashboard.model().panels}
    plotted = {v.metric for v in panels["Model metrics over versions (holdout)"].values}
    assert "evidently:metric_v2:RocAuc" in plotted and "evidently:metric_v2:F1Score" in plotted
    snapshots = {
        m.name: m for sid in ws.list_runs(project.id) if (m := ws.get_run(project.id, sid))
    }
    model = snapshots[f"{accepted['version']}-model"]
    (roc_auc,) = [
        r.value
        for r in model.metric_results.values()
        if r.metric_value_location.metric.params["type"].endswith(":RocAuc")
    ]
    assert roc_auc == pytest.approx(accepted["metrics"]["candidate"]["roc_auc"], abs=1e-6)


def test_dashboard_serves_the_history_on_loopback(
    accepted: dict[str, Any], store: RunStore, tmp_path: Path
) -> None:
    """`nbprod dashboard --serve`: a real `evidently ui` answering on 127.0.0.1."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    from flows.localstack import log_tail, stop_process
    from flows.serving import free_port

    port = free_port()
    log = tmp_path / "dashboard.log"
    nbprod = str(Path(sys.executable).with_name("nbprod"))
    args = ["dashboard", "--serve", "--port", str(port), "--store", store.url]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [nbprod, *args, "--workspace", str(tmp_path / "ws")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}/api/projects"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(base, timeout=2) as response:
                    projects = json.loads(response.read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log_tail(log)
                time.sleep(0.5)
        (project,) = [p for p in projects if p["name"] == PIPELINE]
        with urllib.request.urlopen(f"{base}/{project['id']}/snapshots", timeout=10) as response:
            names = {snap.get("name") for snap in json.loads(response.read())}
        assert {accepted["version"], f"{accepted['version']}-model"} <= names
    finally:
        stop_process(proc)


def test_prefect_artifacts_summarise_the_run(accepted: dict[str, Any]) -> None:
    artifacts = read_artifacts(accepted["flow_run_id"])
    by_type: dict[str, list[Any]] = {}
    for artifact in artifacts:
        by_type.setdefault(artifact.type, []).append(artifact)
    summary = next(a for a in by_type["markdown"] if a.key == "nbprod-run-summary")
    assert "**ACCEPTED**" in summary.data and accepted["version"] in summary.data
    assert "no champion yet" in summary.data
    table = by_type["table"][0]
    assert "roc_auc" in json.dumps(table.data)
    # Prefect 3 stores link artifacts as markdown "[text](url)", keyed so the UI lists them.
    links = {a.key: a.data for a in by_type["markdown"] if a.key != "nbprod-run-summary"}
    assert links["nbprod-data-drift-report"].endswith("reports/data_drift.html)")
    assert links["nbprod-train-notebook-html"].endswith("notebooks/train.html)")
    assert "nbprod-model-performance-report" in links


def test_degraded_run_is_rejected_through_cli_on_a_given_server(
    accepted: dict[str, Any], store: RunStore, home: Path
) -> None:
    """`nbprod run` uses the server in PREFECT_API_URL rather than an embedded one."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "NBPROD_HOME": str(home), "PREFECT_API_URL": PREFECT_API_URL.value()}
    args = [sys.executable, "-m", "flows.cli", "run"]
    for name, value in DEGRADED.items():
        args += ["--param", f"{name}={value}"]  # NAME=V: the last notebook's (train)
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr[-2000:]  # rejected: not a success, not an error
    assert "REJECTED" in proc.stdout
    assert "Starting temporary server" not in proc.stdout + proc.stderr
    rejected = store.list_runs(PIPELINE)[-1]
    assert rejected["status"] == "rejected" and rejected["pipeline"] == PIPELINE
    assert any("roc_auc" in r and "regressed" in r for r in rejected["reasons"])
    # prepare's call is content-addressed (the same window, parameters and notebook): reused.
    assert rejected["cache"] == {"prepare": "hit", "train": "miss"}
    params = store.read_json(store.version_path(rejected["version"], "parameters.json"))
    assert {k: params["train"][k] for k in DEGRADED} == DEGRADED
    assert rejected["metrics"]["champion"]["roc_auc"] == pytest.approx(
        accepted["metrics"]["candidate"]["roc_auc"], abs=1e-9
    )  # the champion's model, scored again on the same holdout rows
    assert champion_version(store) == accepted["version"]
    assert "bento_tag" not in rejected
    perf = store.read_json(store.version_path(rejected["version"], "reports/summaries.json"))
    assert perf["model_performance"]["reference"]["roc_auc"] == pytest.approx(
        accepted["metrics"]["candidate"]["roc_auc"], abs=1e-6
    )
    artifacts = read_artifacts(rejected["flow_run_id"])  # recorded on the given server
    assert any(a.key == "nbprod-run-summary" and "**REJECTED**" in a.data for a in artifacts)


def project_copy(tmp_path: Path) -> Path:
    """The bundled project's notebooks and spec in a folder of their own, reading the bundled
    data: a test can change a notebook without touching the checkout."""
    from flows.spec import load_spec, resolve_project_path, save_spec

    root = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    spec = load_spec(ROOT / "deployments" / f"{PIPELINE}.yaml", root=ROOT)
    data = {
        k: str(resolve_project_path(v, ROOT)) if k.endswith("_path") else v
        for k, v in spec.data.items()
    }
    policy = str(resolve_project_path(spec.policy, ROOT)) if spec.policy else None
    save_spec(spec.model_copy(update={"data": data, "policy": policy}), root=root)
    return root


def failing_project(tmp_path: Path) -> Path:
    root = project_copy(tmp_path)
    nb = nbformat.read(root / "notebooks" / "train.ipynb", as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell("raise RuntimeError('feature store unavailable')"))
    nbformat.write(nb, root / "notebooks" / "train.ipynb")
    return root


def test_raising_notebook_is_kept_with_the_cell_marked(
    accepted: dict[str, Any],
    store: RunStore,
    env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.pipeline import training_pipeline

    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(failing_project(tmp_path)))
    with pytest.raises(
        NotebookExecutionError,
        match=r"train.ipynb failed in cell In \[\d+\]"
        r".*RuntimeError: feature store unavailable",
    ) as info:
        training_pipeline(triggered_by="test")
    failed = store.list_runs()[-1]
    assert failed["status"] == "failed" and failed["failed_step"] == "train"
    assert failed["pipeline"] == PIPELINE
    assert "feature store unavailable" in failed["error"]
    executed = nbformat.reads(
        store.fs.cat_file(store.version_path(failed["version"], "notebooks/train.ipynb")),
        as_version=4,
    )
    marked = [c for c in executed.cells if "papermill-error-cell-tag" in c.metadata.get("tags", [])]
    assert marked, "papermill marks the failing cell"
    errored = [
        c
        for c in executed.cells
        if c.cell_type == "code"
        and any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    assert errored and "feature store unavailable" in errored[0].source
    files = store.files(failed["version"])
    assert "notebooks/train.html" in files and "notebooks/prepare.ipynb" in files
    assert info.value.cell_index is not None
    assert champion_version(store) == accepted["version"]
    assert "run.json" in files


def bad_data(tmp_path: Path, kind: str) -> Path:
    frame = pd.read_csv(ROOT / "data" / "loans.csv")
    path = tmp_path / f"{kind}.csv"
    if kind == "missing-column":
        frame.drop(columns=["credit_score"]).to_csv(path, index=False)
    elif kind == "wrong-type":
        frame.assign(annual_income="unknown").to_csv(path, index=False)
    else:
        path.write_text("")
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing-column", "credit_score: missing column"),
        ("wrong-type", "annual_income: expected float"),
        ("empty", "is empty"),
    ],
)
def test_bad_data_stops_before_training(
    accepted: dict[str, Any], store: RunStore, env: Path, tmp_path: Path, kind: str, message: str
) -> None:
    from flows.pipeline import training_pipeline

    before = len(store.list_runs())
    with pytest.raises(DataValidationError, match=message):
        training_pipeline(data_path=str(bad_data(tmp_path, kind)), triggered_by="test")
    runs = store.list_runs()
    assert len(runs) == before + 1
    assert runs[-1]["status"] == "failed" and runs[-1]["failed_step"] == "validate-input-data"
    assert not any(f.startswith("notebooks/") for f in store.files(runs[-1]["version"]))
    assert [r["version"] for r in runs if r["status"] == "accepted"] == [accepted["version"]]
    assert champion_version(store) == accepted["version"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"parameters": {"n_estimator": 10}},
            r"unknown parameter\(s\) n_estimator \(declared: .*n_estimators: int",
        ),
        ({"parameters": {"max_depth": "deep"}}, "parameter 'max_depth' expects int"),
        (  # {stem: {...}} addresses any notebook
            {"parameters": {"prepare": {"test_fraction": "most"}, "train": {}}},
            "prepare.ipynb: parameter 'test_fraction' expects float",
        ),
        (
            {"parameters": {"target": "repaid"}},
            "train.ipynb: parameter target='repaid' disagrees with the spec's target 'defaulted'",
        ),
        (
            {"parameters": {"prepare": {"data_path": "other.csv"}}},
            r"prepare.ipynb: parameter\(s\) \['data_path'\] are set by the pipeline itself",
        ),
        ({"grid": {"max_depth": [3, "deep"]}}, "parameter 'max_depth' expects int"),
    ],
)
def test_bad_parameters_fail_before_any_kernel(
    accepted: dict[str, Any],
    store: RunStore,
    env: Path,
    arguments: dict[str, Any],
    message: str,
) -> None:
    from flows.pipeline import training_pipeline

    with pytest.raises(ParameterError, match=message):
        training_pipeline(**arguments, triggered_by="test")
    failed = store.list_runs()[-1]
    assert failed["status"] == "failed" and failed["failed_step"] == "check-parameters"
    assert not any(f.startswith("notebooks/") for f in store.files(failed["version"]))
    assert champion_version(store) == accepted["version"]


def test_cli_lists_shows_and_reports_champion(accepted: dict[str, Any], home: Path) -> None:
    env = {**os.environ, "NBPROD_HOME": str(home)}

    def nbprod(*args: str) -> subprocess.CompletedProcess[str]:
        return run_nbprod(*args, env=env, timeout=60)

    runs = nbprod("runs")
    assert runs.returncode == 0
    assert accepted["version"] in runs.stdout and "accepted" in runs.stdout
    listed = json.loads(nbprod("runs", "--json").stdout)
    assert all(r["status"] in ("accepted", "rejected", "failed") for r in listed)
    assert json.loads(nbprod("runs", "--pipeline", PIPELINE, "--json").stdout) == listed
    assert json.loads(nbprod("runs", "--pipeline", "churn", "--json").stdout) == []
    show = nbprod("show", accepted["version"])
    assert show.returncode == 0 and "reports/data_drift.html" in show.stdout
    assert f"pipeline {PIPELINE}" in show.stdout
    champion = nbprod("champion", "--json")  # the project's only pipeline by default
    assert json.loads(champion.stdout)["version"] == accepted["version"]
    named = nbprod("champion", "--pipeline", PIPELINE, "--json")
    assert json.loads(named.stdout)["version"] == accepted["version"]
    assert json.loads(nbprod("champion", "--pipeline", "churn", "--json").stdout) is None
    missing = nbprod("show", "v-does-not-exist")
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_fsspec_store_and_drifted_window(prefect_server: None, env: Path) -> None:
    """Any fsspec URL works as the run store; data from Q4 2024 drifts from the reference."""
    from flows.pipeline import training_pipeline

    url = "memory://nbprod-it-store"
    record = training_pipeline(
        start_date="2024-07-01", end_date="2025-01-01", run_store_url=url, triggered_by="test"
    )
    remote = RunStore(url)
    assert [r["version"] for r in remote.list_runs()] == [record["version"]]
    assert remote.champion(PIPELINE)["version"] == record["version"]  # type: ignore[index]
    assert record["window"] == ["2024-07-01", "2025-01-01"]
    assert "reports/data_drift.html" in remote.files(record["version"])
    assert "inputs/data.parquet" in remote.files(record["version"])
    assert record["drift"]["n_drifted"] >= 3
    assert {"interest_rate", "credit_score"} <= set(record["drift"]["drifted_columns"])
    assert not (env / "runs" / "versions" / record["version"]).exists()  # nothing local


def test_bento_failing_its_infra_check_is_not_promoted(
    accepted: dict[str, Any],
    store: RunStore,
    env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service that builds and starts but answers wrongly never becomes the champion."""
    import bentoml

    from flows.pipeline import training_pipeline

    broken = tmp_path / "bentos"
    shutil.copytree(ROOT / "bentos", broken)
    predictor = (broken / "predictor.py").read_text()
    answer = 'proba = np.asarray(self.model.predict_proba(frame), dtype="float64")'
    assert answer in predictor
    # Serves every probability of the wrong class: the service starts and answers, wrongly.
    (broken / "predictor.py").write_text(predictor.replace(answer, answer + "[:, ::-1]"))
    monkeypatch.setenv("NBPROD_BENTOS_DIR", str(broken))
    before = store.champion(PIPELINE)
    record = training_pipeline(triggered_by="test")
    assert record["status"] == "rejected"
    assert record["reasons"][0].startswith("infra check failed")
    assert record["infra_check"]["passed"] is False
    assert "infra_check.json" in store.files(record["version"])
    assert store.champion(PIPELINE) == before
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.get(f"{PIPELINE}:{record['version']}")
    left = [m for m in bentoml.models.list() if m.info.labels["run_version"] == record["version"]]
    assert left == []  # the model saved for the failed bento is deleted too
