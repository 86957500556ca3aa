"""The Prefect layer: ``training_pipeline`` wires the plain step functions together.

Tasks are thin wrappers; the logic lives in ``flows.notebook``, ``flows.schema``,
``flows.reports``, ``flows.gate``, ``flows.packaging`` and ``flows.store``. The flow's own job is
ordering and bookkeeping: every run ends with exactly one ``run.json`` (accepted, rejected or
failed) written last, and the champion moves only after everything else of an accepted run is
stored.
"""

from __future__ import annotations

import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from flows import gate as gate_mod
from flows.errors import NbprodError, PackagingError, RunStoreError
from flows.manifest import build_manifest, data_fingerprint
from flows.notebook import (
    NotebookOutputs,
    check_not_reserved,
    check_parameters,
    execute_notebook,
    read_outputs,
)
from flows.schema import DataSchema, derive_schema, read_table, validate_frame
from flows.settings import PROJECT_ROOT, NbprodSettings, load_settings
from flows.store import RunStore, new_version_id, utc_now

TARGET = "defaulted"
DATETIME_COLUMN = "application_date"
ID_COLUMNS = ("application_id",)


def kernel_died(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a notebook only when its kernel died; a cell error would just fail again."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return False
    return type(exc).__name__ == "DeadKernelError"


@task(name="validate-input-data", cache_policy=NO_CACHE)
def validate_input_data(data_path: Path, reference_path: Path) -> DataSchema:
    schema = derive_schema(
        read_table(reference_path, dataset="reference", datetime_column=DATETIME_COLUMN),
        target=TARGET,
        datetime_column=DATETIME_COLUMN,
    )
    frame = read_table(data_path, dataset=data_path.name, datetime_column=DATETIME_COLUMN)
    validate_frame(frame, schema, dataset=data_path.name)
    return schema


@task(
    name="run-notebook",
    retries=1,
    retry_delay_seconds=1,
    retry_condition_fn=kernel_died,
    cache_policy=NO_CACHE,
    task_run_name="run-notebook-{name}",
)
def run_notebook(
    name: str,
    notebook: Path,
    executed: Path,
    parameters: dict[str, Any],
    kernel_name: str,
    timeout_s: int,
    required: tuple[str, ...],
) -> NotebookOutputs:
    execute_notebook(notebook, executed, parameters, kernel_name=kernel_name, timeout_s=timeout_s)
    return read_outputs(notebook.name, Path(parameters["output_dir"]), required=required)


@task(name="score-champion", cache_policy=NO_CACHE)
def score_champion(
    store: RunStore, champion: dict[str, Any], test_path: Path, workdir: Path
) -> Any:
    """The champion's predictions on this run's holdout rows: the gate compares like with like."""
    import joblib
    import pandas as pd

    try:
        model_file = store.fetch(
            champion["version"], "outputs/train/model.joblib", workdir / "champion" / "model.joblib"
        )
    except (OSError, KeyError) as exc:
        raise RunStoreError(
            f"champion {champion.get('version')} has no stored model: "
            "roll back or clear the champion pointer"
        ) from exc
    model = joblib.load(model_file)
    test = pd.read_parquet(test_path)
    features = test.drop(
        columns=[c for c in (TARGET, DATETIME_COLUMN, *ID_COLUMNS) if c in test.columns]
    )
    scored = pd.DataFrame(
        {
            "application_id": test["application_id"].to_numpy(),
            TARGET: test[TARGET].to_numpy(),
            "prediction": model.predict(features).astype(int),
            "probability": model.predict_proba(features)[:, 1],
        }
    )
    return scored


@task(name="evidently-reports", cache_policy=NO_CACHE)
def make_reports(
    reference: Path,
    prepared: NotebookOutputs,
    candidate: Any,
    champion_scored: Any,
    schema: DataSchema,
    out_dir: Path,
) -> dict[str, Any]:
    import pandas as pd

    from flows.reports import (
        ColumnRoles,
        write_data_drift_report,
        write_data_summary_report,
        write_model_performance_report,
    )

    features = [c for c in schema.numerical + schema.categorical]
    roles = ColumnRoles(
        numerical=schema.numerical,
        categorical=schema.categorical,
        target=TARGET,
        datetime=DATETIME_COLUMN,
    )
    ref = read_table(reference, dataset="reference", datetime_column=DATETIME_COLUMN)
    new = pd.concat(
        [pd.read_parquet(prepared.outputs["train"]), pd.read_parquet(prepared.outputs["test"])],
        ignore_index=True,
    )
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning

    # A model that never predicts the positive class is a gate matter, not console noise.
    warnings.simplefilter("ignore", UndefinedMetricWarning)
    summary = write_data_summary_report(new, roles, out_dir, reference=ref)
    drift = write_data_drift_report(
        ref[features],
        new[features],
        ColumnRoles(numerical=schema.numerical, categorical=schema.categorical),
        out_dir,
    )
    perf = write_model_performance_report(candidate, roles, out_dir, reference=champion_scored)
    return {r.name: r for r in (summary, drift, perf)}


def without_nones(value: Any) -> Any:
    """BentoML metadata refuses None; an absent key says the same (no git, no champion)."""
    if isinstance(value, dict):
        return {k: without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nones(v) for v in value if v is not None]
    return value


@task(name="package-model", cache_policy=NO_CACHE)
def package_model(
    settings: NbprodSettings,
    version: str,
    trained: NotebookOutputs,
    metrics: dict[str, float],
    schema: DataSchema,
    lineage: dict[str, Any],
) -> tuple[str, str]:
    from flows.packaging import build_bento, delete_model, save_model

    labels = {"run_version": version, "pipeline": "training_pipeline"}
    feature_schema = schema.feature_schema()
    model_tag = save_model(
        trained.outputs["model"],
        name=settings.model_name,
        labels=labels,
        metadata={
            "run_version": version,
            "metrics": metrics,
            "data_sha256": lineage["inputs"]["data"]["sha256"],
            "feature_columns": trained.values.get("feature_columns"),
            # Served by the bento's /metadata endpoint: where this model came from.
            "lineage": without_nones(
                {
                    "notebooks": {
                        n: nb["content_sha256"] for n, nb in lineage["notebooks"].items()
                    },
                    "inputs": {n: fp["sha256"] for n, fp in lineage["inputs"].items()},
                    "parameters": lineage["parameters"],
                    "git": lineage["git"],
                    "champion_at_start": lineage["champion_at_start"],
                }
            ),
        },
        feature_schema=feature_schema,
    )
    try:
        bento_tag = build_bento(
            model_tag, bentos_dir=settings.bentos_dir, version=version, labels=labels
        )
    except Exception:
        delete_model(model_tag)  # no accepted model without its bento
        raise
    return model_tag, bento_tag


@dataclass
class RunState:
    """What the flow has produced so far, so a failure can still store everything it has."""

    version: str
    workdir: Path
    step: str = "start"
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)
    notebooks: dict[str, Path] = field(default_factory=dict)


def _store_notebooks(store: RunStore, state: RunState) -> dict[str, str]:
    links: dict[str, str] = {}
    for name in ("prepare", "train"):
        for suffix in (".ipynb", ".html"):
            path = state.workdir / "notebooks" / f"{name}{suffix}"
            if path.exists():
                store.put_file(state.version, f"notebooks/{name}{suffix}", path)
                links[f"{name} notebook ({suffix[1:]})"] = store.uri(
                    state.version, f"notebooks/{name}{suffix}"
                )
    return links


@flow(name="training_pipeline", log_prints=True)
def training_pipeline(
    data_path: str = "data/loans.csv",
    reference_path: str = "data/reference.csv",
    start_date: str = "2024-01-01",
    end_date: str = "2024-10-01",
    train_params: dict[str, Any] | None = None,
    prepare_params: dict[str, Any] | None = None,
    policy_path: str | None = None,
    run_store_url: str | None = None,
    triggered_by: str = "manual",
) -> dict[str, Any]:
    """Prepare → validate → train → report → gate → package → move champion, versioned."""
    logger = get_run_logger()
    settings = load_settings()
    store = RunStore(run_store_url or settings.resolved_run_store_url)
    version = new_version_id()
    state = RunState(version=version, workdir=settings.scratch_dir / version)
    champion = store.champion()
    started_at = utc_now()
    flow_ctx = FlowRunContext.get()
    flow_run_id = str(flow_ctx.flow_run.id) if flow_ctx and flow_ctx.flow_run else None
    record: dict[str, Any] = {
        "pipeline": "training_pipeline",
        "started_at": started_at,
        "flow_run_id": flow_run_id,
        "triggered_by": triggered_by,
        "champion_before": champion,
        "champion_after": champion,
        "window": [start_date, end_date],
    }
    links: dict[str, str] = {}
    store.begin(version)
    logger.info(
        "run %s started (champion: %s)", version, champion["version"] if champion else "none"
    )
    try:
        data = _resolve(data_path)
        reference = _resolve(reference_path)
        nb_dir = settings.notebooks_dir
        prep_nb, train_nb = nb_dir / "prepare.ipynb", nb_dir / "train.ipynb"
        state.notebooks = {"prepare": prep_nb, "train": train_nb}
        out = state.workdir / "outputs"
        state.parameters["prepare"] = {
            **(prepare_params or {}),
            "data_path": str(data),
            "start_date": start_date,
            "end_date": end_date,
            "output_dir": str(out / "prepare"),
        }
        state.parameters["train"] = {
            **(train_params or {}),
            "train_path": str(out / "prepare" / "train.parquet"),
            "test_path": str(out / "prepare" / "test.parquet"),
            "output_dir": str(out / "train"),
        }

        state.step = "check-parameters"  # before any kernel starts
        check_not_reserved(prepare_params, train_params)
        check_parameters(prep_nb, state.parameters["prepare"])
        check_parameters(train_nb, state.parameters["train"])
        policy = gate_mod.load_policy(Path(policy_path) if policy_path else settings.policy_path)
        store.put_json(version, "parameters.json", state.parameters)

        state.step = "validate-input-data"
        state.fingerprints["data"] = data_fingerprint(data)
        state.fingerprints["reference"] = data_fingerprint(reference)
        schema = validate_input_data(data, reference)
        store.put_json(version, "schema.json", schema.to_dict())

        state.step = "prepare"
        prepared = run_notebook(
            "prepare",
            prep_nb,
            state.workdir / "notebooks" / "prepare.ipynb",
            state.parameters["prepare"],
            settings.kernel_name,
            settings.execution_timeout_s,
            ("train", "test"),
        )
        state.step = "train"
        # The prepare notebook's declared outputs, not assumed paths, feed the train notebook.
        state.parameters["train"].update(
            train_path=str(prepared.outputs["train"]), test_path=str(prepared.outputs["test"])
        )
        trained = run_notebook(
            "train",
            train_nb,
            state.workdir / "notebooks" / "train.ipynb",
            state.parameters["train"],
            settings.kernel_name,
            settings.execution_timeout_s,
            ("model", "predictions"),
        )
        for name in ("train", "test"):
            state.fingerprints[name] = data_fingerprint(prepared.outputs[name])
        state.fingerprints["model"] = data_fingerprint(trained.outputs["model"])

        state.step = "score"
        import pandas as pd

        from flows.metrics import classification_metrics

        candidate = pd.read_parquet(trained.outputs["predictions"])
        cand_metrics = classification_metrics(
            candidate[TARGET], candidate["prediction"], candidate["probability"]
        )
        champion_scored = None
        champ_metrics = None
        if champion:
            champion_scored = score_champion(
                store, champion, prepared.outputs["test"], state.workdir
            )
            champ_metrics = classification_metrics(
                champion_scored[TARGET],
                champion_scored["prediction"],
                champion_scored["probability"],
            )
        metrics = {
            "candidate": cand_metrics,
            "champion": champ_metrics,
            "notebook": {"prepare": prepared.metrics, "train": trained.metrics},
        }
        store.put_json(version, "metrics.json", metrics)
        record["metrics"] = {"candidate": cand_metrics, "champion": champ_metrics}

        state.step = "reports"
        reports = make_reports(
            reference, prepared, candidate, champion_scored, schema, state.workdir / "reports"
        )
        for name, files in reports.items():
            for path in (files.html, files.json):
                store.put_file(version, f"reports/{path.name}", path)
            links[f"{name} report"] = store.uri(version, f"reports/{files.html.name}")
        record["drift"] = {
            k: v for k, v in reports["data_drift"].summary.items() if k != "per_column"
        }
        store.put_json(
            version, "reports/summaries.json", {n: r.summary for n, r in reports.items()}
        )

        state.step = "gate"
        decision = gate_mod.evaluate_gate(cand_metrics, champ_metrics, policy)
        store.put_json(version, "gate.json", {**decision.to_dict(), "policy": policy.model_dump()})
        record.update(decision=decision.to_dict()["decision"], reasons=decision.reasons)
        logger.info("gate: %s — %s", record["decision"], "; ".join(decision.reasons))

        for name in ("prepare", "train"):
            outputs = prepared if name == "prepare" else trained
            store.put_tree(version, f"outputs/{name}", outputs.output_dir)
        links.update(_store_notebooks(store, state))
        store.put_json(version, "fingerprints.json", state.fingerprints)
        manifest = build_manifest(
            version=version,
            notebooks=state.notebooks,
            parameters=state.parameters,
            inputs=state.fingerprints,
            champion=champion,
            project_root=PROJECT_ROOT,
        )
        store.put_json(version, "manifest.json", manifest)

        status = "rejected"
        if decision.accepted:
            state.step = "package"
            model_tag, bento_tag = package_model(
                settings,
                version,
                trained,
                cand_metrics,
                schema,
                manifest,
            )
            record.update(model_tag=model_tag, bento_tag=bento_tag)
            state.step = "promote"
            record["champion_after"] = store.set_champion(
                {
                    "version": version,
                    "model_tag": model_tag,
                    "bento_tag": bento_tag,
                    "metrics": cand_metrics,
                },
                expected=champion["version"] if champion else None,
                reason="gate",
                triggered_by=flow_run_id or triggered_by,
            )
            status = "accepted"
        final = store.finalize(version, {**record, "status": status})
        _publish(final, links, logger)
        shutil.rmtree(state.workdir, ignore_errors=True)
        return final
    except BaseException as exc:
        _record_failure(store, state, record, links, exc, logger)
        raise


def _resolve(path: str) -> Path:
    """Relative data paths are relative to the project, so deployments and the CLI agree."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else (PROJECT_ROOT / candidate).resolve()


def _record_failure(
    store: RunStore,
    state: RunState,
    record: dict[str, Any],
    links: dict[str, str],
    exc: BaseException,
    logger: Any,
) -> None:
    """Keep what exists (notebooks above all) and mark the version failed, never half-written."""
    message = str(exc) if isinstance(exc, NbprodError) else f"{type(exc).__name__}: {exc}"
    try:
        links.update(_store_notebooks(store, state))
        if state.fingerprints:
            store.put_json(state.version, "fingerprints.json", state.fingerprints)
        if state.parameters:
            store.put_json(state.version, "parameters.json", state.parameters)
        store.put_json(
            state.version,
            "error.json",
            {
                "step": state.step,
                "error": message,
                "type": type(exc).__name__,
                "traceback": traceback.format_exception(exc),
            },
        )
        final = store.finalize(
            state.version,
            {
                **record,
                "status": "failed",
                "decision": None,
                "failed_step": state.step,
                "error": message,
                "champion_after": record.get("champion_before"),
            },
        )
        _publish(final, links, logger)
    except (OSError, RunStoreError, PackagingError) as store_exc:  # pragma: no cover
        logger.error("could not record failure of run %s: %s", state.version, store_exc)


def _publish(record: dict[str, Any], links: dict[str, str], logger: Any) -> None:
    from flows.artifacts import publish_run_artifacts

    try:
        publish_run_artifacts(record, links)
    except Exception as exc:
        logger.warning("could not publish Prefect artifacts for %s: %s", record["version"], exc)
