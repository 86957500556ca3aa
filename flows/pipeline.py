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
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from flows import gate as gate_mod
from flows.errors import ConfigError, NbprodError, PackagingError, RunStoreError
from flows.manifest import build_manifest, data_fingerprint, file_sha256
from flows.notebook import (
    OUTPUTS_FILE,
    NotebookOutputs,
    check_not_reserved,
    check_parameters,
    execute_notebook,
    read_outputs,
    warm_up_html_rendering,
)
from flows.reports import EVIDENTLY_WARM_UP, warm_up_evidently
from flows.runner import (
    cache_dir,
    call_cache_key,
    expand_grid,
    resolve_secret,
    scrub_secrets,
    secret_reference,
)
from flows.schema import DataSchema, derive_schema, read_table, validate_frame
from flows.settings import PROJECT_ROOT, NbprodSettings, load_settings
from flows.store import RunStore, new_version_id, utc_now
from flows.warmup import wait_for_warm_up

TARGET = "defaulted"
# triggered_by of a retraining run started by a monitoring run's drift event (prefect.yaml).
DRIFT_TRIGGER_PREFIX = "drift:"
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


def _notebook_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """None (no caching) unless the caller computed a content key for this execution."""
    return parameters.get("cache_key")


@task(
    name="run-notebook",
    retries=1,
    retry_delay_seconds=1,
    retry_condition_fn=kernel_died,
    cache_key_fn=_notebook_cache_key,
    persist_result=True,
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
    cache_key: str | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
    warm_kernel: bool = True,
) -> NotebookOutputs:
    out_dir = Path(parameters["output_dir"])
    shutil.rmtree(out_dir, ignore_errors=True)  # a re-execution never mixes with stale files
    values = {k: resolve_secret(k, ref) for k, ref in (secrets or {}).items()}
    try:
        execute_notebook(
            notebook,
            executed,
            {**parameters, **values},
            kernel_name=kernel_name,
            timeout_s=timeout_s,
            warm_kernel=warm_kernel,
        )
    finally:
        scrub_secrets(
            [executed, executed.with_suffix(".html"), *sorted(out_dir.rglob("*"))],
            values.values(),
        )
    outputs = read_outputs(notebook.name, out_dir, required=required)
    return replace(outputs, executed=executed)


@dataclass(frozen=True)
class NotebookCall:
    """One notebook execution as the flow plans it: where it writes, and how it is cached."""

    name: str
    notebook: Path
    executed: Path
    parameters: dict[str, Any]
    cache_key: str | None
    secrets: dict[str, dict[str, str]]

    def task_arguments(self, settings: NbprodSettings, required: tuple[str, ...]) -> dict[str, Any]:
        """The ``run_notebook`` task's arguments, the same for a direct call and a submit."""
        return {
            "name": self.name,
            "notebook": self.notebook,
            "executed": self.executed,
            "parameters": self.parameters,
            "kernel_name": settings.kernel_name,
            "timeout_s": settings.execution_timeout_s,
            "required": required,
            "cache_key": self.cache_key,
            "secrets": self.secrets or None,
            "warm_kernel": settings.warm_kernels,
        }


def plan_notebook(
    name: str,
    notebook: Path,
    parameters: dict[str, Any],
    *,
    home: Path,
    scratch: Path,
    kernel_name: str,
    use_cache: bool,
    secrets: dict[str, dict[str, str]] | None = None,
) -> NotebookCall:
    """Cached calls write under a content-addressed folder that outlives the run."""
    secrets = secrets or {}
    if not use_cache:
        out = scratch / "outputs" / name
        return NotebookCall(
            name,
            notebook,
            scratch / "notebooks" / f"{name}.ipynb",
            {**parameters, "output_dir": str(out)},
            None,
            secrets,
        )
    key = call_cache_key(notebook, parameters, secrets, kernel_name)
    base = cache_dir(home, notebook, key)
    return NotebookCall(
        name,
        notebook,
        base / "executed" / f"{notebook.stem}.ipynb",
        {**parameters, "output_dir": str(base / "outputs")},
        key,
        secrets,
    )


def call_notebook(
    call: NotebookCall, settings: NbprodSettings, required: tuple[str, ...], *, refresh: bool
) -> tuple[NotebookOutputs, str]:
    """Run (or reuse) one notebook; returns its outputs and 'hit', 'miss' or 'off'."""
    task_fn = run_notebook.with_options(refresh_cache=must_refresh(call, refresh))
    state = task_fn(**call.task_arguments(settings, required), return_state=True)
    return from_state(call, state, required)


def must_refresh(call: NotebookCall, forced: bool) -> bool:
    """Re-execute when asked to, or when this home's cache folder lacks the files.

    Prefect's cache record says an execution happened; the files live under NBPROD_HOME, which
    may have been cleaned, or may be another home sharing the same Prefect server.
    """
    if call.cache_key is None:
        return forced
    out = Path(call.parameters["output_dir"])
    return forced or not ((out / OUTPUTS_FILE).exists() and call.executed.exists())


def from_state(
    call: NotebookCall, state: Any, required: tuple[str, ...]
) -> tuple[NotebookOutputs, str]:
    """Outputs are read back from this call's own folder, never from a pickled path."""
    result = state.result()  # raises the task's exception if it failed
    if call.cache_key is None:
        return result, "off"
    outputs = read_outputs(
        call.notebook.name, Path(call.parameters["output_dir"]), required=required
    )
    status = "hit" if state.name == "Cached" else "miss"
    return replace(outputs, executed=call.executed), status


def predict_frame(model: Any, frame: Any) -> dict[str, Any]:
    """A fitted pipeline's labels and P(class 1) for rows that may carry ids, dates and target."""
    features = frame.drop(
        columns=[c for c in (TARGET, DATETIME_COLUMN, *ID_COLUMNS) if c in frame.columns]
    )
    positive = list(model.classes_).index(1)
    return {
        "prediction": model.predict(features).astype(int),
        "probability": model.predict_proba(features)[:, positive],
    }


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
    return pd.DataFrame(
        {
            "application_id": test["application_id"].to_numpy(),
            TARGET: test[TARGET].to_numpy(),
            **predict_frame(model, test),
        }
    )


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


INFRA_SAMPLE_ROWS = 200


@task(name="infra-check", cache_policy=NO_CACHE)
def infra_check(
    bento_tag: str, model_tag: str, test_path: Path, model_path: Path
) -> dict[str, Any]:
    """Serve the built bento for real and require the notebook model's answers from it."""
    import joblib
    import pandas as pd

    from flows.serving import validate_bento

    sample = pd.read_parquet(test_path).head(INFRA_SAMPLE_ROWS)
    model = joblib.load(model_path)
    features = sample.drop(
        columns=[c for c in (TARGET, DATETIME_COLUMN, *ID_COLUMNS) if c in sample.columns]
    )
    positive = list(model.classes_).index(1)
    expected = pd.DataFrame(
        {
            "prediction": model.predict(features).astype(int),
            "probability": model.predict_proba(features)[:, positive],
        }
    )
    return validate_bento(bento_tag, sample, expected, model_tag=model_tag)


def discard_package(model_tag: str, bento_tag: str) -> None:
    """A bento that failed its infra check must not be mistaken for an approved one."""
    from flows.packaging import delete_bento, delete_model

    delete_bento(bento_tag)
    delete_model(model_tag)


@dataclass
class RunState:
    """What the flow has produced so far, so a failure can still store everything it has."""

    version: str
    workdir: Path
    step: str = "start"
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)
    notebooks: dict[str, Path] = field(default_factory=dict)
    # Stored name (e.g. "train", "train-grid-2") -> executed .ipynb, known before execution.
    executed: dict[str, Path] = field(default_factory=dict)
    secret_values: list[str] = field(default_factory=list)


def begin_run(
    pipeline: str, run_store_url: str | None, triggered_by: str
) -> tuple[NbprodSettings, RunStore, RunState, dict[str, Any]]:
    """Reserve a new run version and start its record: the bookkeeping every flow shares."""
    settings = load_settings()
    store = RunStore(run_store_url or settings.resolved_run_store_url)
    version = new_version_id()
    flow_ctx = FlowRunContext.get()
    record: dict[str, Any] = {
        "pipeline": pipeline,
        "started_at": utc_now(),
        "flow_run_id": str(flow_ctx.flow_run.id) if flow_ctx and flow_ctx.flow_run else None,
        "triggered_by": triggered_by,
    }
    store.begin(version)
    return (
        settings,
        store,
        RunState(version=version, workdir=settings.scratch_dir / version),
        record,
    )


def notebook_planner(settings: NbprodSettings, state: RunState) -> partial[NotebookCall]:
    """``plan_notebook`` bound to this run: cached calls, scratch space in the run's workdir."""
    return partial(
        plan_notebook,
        home=settings.home,
        scratch=state.workdir,
        kernel_name=settings.kernel_name,
        use_cache=True,
    )


def _store_notebooks(store: RunStore, state: RunState) -> dict[str, str]:
    links: dict[str, str] = {}
    for name, ipynb in state.executed.items():
        for path in (ipynb, ipynb.with_suffix(".html")):
            if path.exists():
                rel = f"notebooks/{name}{path.suffix}"
                store.put_file(state.version, rel, path)
                if "-grid-" not in name:
                    links[f"{name} notebook ({path.suffix[1:]})"] = store.uri(state.version, rel)
    return links


@dataclass(frozen=True)
class TrainingConfig:
    """The flow's inputs once a pipeline spec (if any) and explicit arguments are merged."""

    data_path: str
    reference_path: str
    start_date: str
    end_date: str
    prepare_params: dict[str, Any]
    train_params: dict[str, Any]
    train_grid: dict[str, list[Any]]
    secrets: dict[str, dict[str, dict[str, str]]]
    policy_path: str | None
    notebooks: tuple[Path, Path]
    spec_name: str | None = None


def resolve_training_config(
    spec: str | None, settings: NbprodSettings, **given: Any
) -> TrainingConfig:
    """Explicit flow arguments win over the spec; the spec wins over built-in defaults."""
    defaults: dict[str, Any] = {
        "data_path": "data/loans.csv",
        "reference_path": "data/reference.csv",
        "start_date": "2024-01-01",
        "end_date": "2024-10-01",
    }
    prepare_nb, train_nb = settings.training_notebooks
    spec_params: dict[str, dict[str, Any]] = {}
    grid: dict[str, list[Any]] = {}
    secrets: dict[str, dict[str, dict[str, str]]] = {}
    policy = None
    name = None
    if spec:
        from flows.spec import load_spec

        loaded = load_spec(_resolve(spec))
        name = loaded.name
        defaults.update({k: v for k, v in loaded.data.items() if k in defaults})
        if len(loaded.notebooks) >= 2:
            prepare_nb, train_nb = _resolve(loaded.notebooks[-2]), _resolve(loaded.notebooks[-1])
        spec_params = {k: dict(v) for k, v in loaded.parameters.items()}
        grid = dict(loaded.grid.get(train_nb.stem, {}))
        secrets = {
            nb: {p: ref.model_dump(exclude_none=True) for p, ref in refs.items()}
            for nb, refs in loaded.secrets.items()
        }
        policy = loaded.policy
    values = {k: (given.get(k) if given.get(k) is not None else v) for k, v in defaults.items()}
    return TrainingConfig(
        **values,
        prepare_params={
            **spec_params.get(prepare_nb.stem, {}),
            **(given.get("prepare_params") or {}),
        },
        train_params={**spec_params.get(train_nb.stem, {}), **(given.get("train_params") or {})},
        train_grid=given.get("train_grid") or grid,
        secrets=given.get("secrets") or secrets,
        policy_path=given.get("policy_path") or policy,
        notebooks=(prepare_nb, train_nb),
        spec_name=name,
    )


def gate_metric(policy: gate_mod.GatePolicy) -> tuple[str, bool]:
    """The metric that ranks grid points: the policy's first champion metric, and its direction."""
    for metric, rule in policy.champion.items():
        return metric, rule.direction == "higher_is_better"
    return "roc_auc", True


@flow(name="training_pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=4))
def training_pipeline(
    data_path: str | None = None,
    reference_path: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    train_params: dict[str, Any] | None = None,
    prepare_params: dict[str, Any] | None = None,
    train_grid: dict[str, list[Any]] | None = None,
    secrets: dict[str, dict[str, dict[str, str]]] | None = None,
    policy_path: str | None = None,
    run_store_url: str | None = None,
    spec: str | None = None,
    no_cache: bool = False,
    triggered_by: str = "manual",
) -> dict[str, Any]:
    """Prepare → validate → train (a grid, in parallel) → report → gate → package → champion.

    ``spec`` names a pipeline spec under ``deployments/`` (written by ``nbprod promote``); explicit
    arguments override it. ``secrets`` maps notebook → parameter → ``{"env": NAME}`` or
    ``{"block": NAME}``; values are read at run time and never stored.
    """
    logger = get_run_logger()
    settings, store, state, record = begin_run("training_pipeline", run_store_url, triggered_by)
    version, flow_run_id = state.version, record["flow_run_id"]
    champion = store.champion()
    record.update(
        trigger=parse_trigger(triggered_by), champion_before=champion, champion_after=champion
    )
    links: dict[str, str] = {}
    logger.info(
        "run %s started (champion: %s)", version, champion["version"] if champion else "none"
    )
    try:
        state.step = "check-parameters"  # everything here runs before any kernel starts
        cfg = resolve_training_config(
            spec,
            settings,
            data_path=data_path,
            reference_path=reference_path,
            start_date=start_date,
            end_date=end_date,
            train_params=train_params,
            prepare_params=prepare_params,
            train_grid=train_grid,
            secrets=secrets,
            policy_path=policy_path,
        )
        record.update(window=[cfg.start_date, cfg.end_date], spec=cfg.spec_name)
        data, reference = _resolve(cfg.data_path), _resolve(cfg.reference_path)
        prep_nb, train_nb = cfg.notebooks
        state.notebooks = {"prepare": prep_nb, "train": train_nb}
        check_not_reserved(cfg.prepare_params, cfg.train_params)
        points = expand_grid(cfg.train_grid)
        prep_secrets = cfg.secrets.get(prep_nb.stem, {})
        train_secrets = cfg.secrets.get(train_nb.stem, {})
        placeholders = {
            "data_path": str(data),
            "start_date": cfg.start_date,
            "end_date": cfg.end_date,
            "output_dir": ".",
        }
        check_parameters(
            prep_nb, {**cfg.prepare_params, **placeholders, **dict.fromkeys(prep_secrets, "")}
        )
        for point in points:
            check_parameters(
                train_nb,
                {
                    **cfg.train_params,
                    **point,
                    "train_path": ".",
                    "test_path": ".",
                    "output_dir": ".",
                    **dict.fromkeys(train_secrets, ""),
                },
            )
        policy = gate_mod.load_policy(
            Path(cfg.policy_path) if cfg.policy_path else settings.policy_path
        )

        state.step = "validate-input-data"
        state.fingerprints["data"] = data_fingerprint(data)
        state.fingerprints["reference"] = data_fingerprint(reference)
        schema = validate_input_data(data, reference)
        store.put_json(version, "schema.json", schema.to_dict())

        state.step = "prepare"
        # While the kernels run, this process mostly waits: the later steps' imports go first.
        warm_up_html_rendering()
        warm_up_evidently()
        plan = notebook_planner(settings, state)
        prep_call = plan(
            "prepare",
            prep_nb,
            {**cfg.prepare_params, **{k: v for k, v in placeholders.items() if k != "output_dir"}},
            secrets=prep_secrets,
        )
        state.parameters["prepare"] = _stored_parameters(prep_call)
        state.executed["prepare"] = prep_call.executed
        prepared, prep_cache = call_notebook(
            prep_call, settings, ("train", "test"), refresh=no_cache
        )
        cache = {"prepare": prep_cache}

        state.step = "train"
        # The prepare notebook's declared outputs, not assumed paths, feed the train notebook.
        wired = {
            "train_path": str(prepared.outputs["train"]),
            "test_path": str(prepared.outputs["test"]),
        }
        calls = []
        for i, point in enumerate(points):
            call = plan(
                "train", train_nb, {**cfg.train_params, **point, **wired}, secrets=train_secrets
            )
            stored_name = "train" if len(points) == 1 else f"train-grid-{i}"
            state.executed[stored_name] = call.executed
            calls.append(call)
        state.parameters["train"] = _stored_parameters(calls[0])
        trained, best, grid_record = run_grid(calls, points, settings, policy, no_cache)
        # Evidently's modules overlap those loaded from here on (pyarrow, scikit-learn, SciPy):
        # never import them in two threads at once (flows.warmup).
        wait_for_warm_up(EVIDENTLY_WARM_UP)
        if len(points) > 1:
            state.parameters["train"] = _stored_parameters(calls[best])
            state.executed["train"] = calls[best].executed
            record["grid"] = grid_record
        cache.update(grid_record.get("cache", {}))
        record["cache"] = cache
        logger.info("notebook cache: %s", ", ".join(f"{k} {v}" for k, v in cache.items()))
        store.put_json(version, "parameters.json", state.parameters)
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

        store.put_tree(version, "outputs/prepare", prepared.output_dir)
        store.put_tree(version, "outputs/train", trained.output_dir)
        # What monitoring compares production inputs with, should this run become champion.
        from flows.drift import profile_reference

        store.put_json(
            version,
            "reference_profile.json",
            profile_reference(
                pd.read_parquet(prepared.outputs["train"]), schema.numerical, schema.categorical
            ).to_dict(),
        )
        if len(points) > 1:
            for i, call in enumerate(calls):
                if Path(call.parameters["output_dir"]).exists():
                    store.put_tree(version, f"grid/{i}", Path(call.parameters["output_dir"]))
            store.put_json(version, "grid.json", grid_record)
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
                settings, version, trained, cand_metrics, schema, manifest
            )
            state.step = "infra-check"
            infra = infra_check(
                bento_tag, model_tag, prepared.outputs["test"], trained.outputs["model"]
            )
            store.put_json(version, "infra_check.json", infra)
            record["infra_check"] = {"passed": infra["passed"], "reason": infra["reason"]}
            if not infra["passed"]:
                discard_package(model_tag, bento_tag)
                record.update(
                    decision="rejected",
                    reasons=[f"infra check failed: {infra['reason']}", *decision.reasons],
                )
                logger.warning("bento %s failed the infra check: %s", bento_tag, infra["reason"])
                final = store.finalize(version, {**record, "status": "rejected"})
                _conclude(store, final, links, logger)
                shutil.rmtree(state.workdir, ignore_errors=True)
                return final
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
                reason="retrain" if record["trigger"] else "gate",
                triggered_by=flow_run_id or triggered_by,
                note=f"after drift in monitoring run {record['trigger']['monitoring_version']}"
                if record["trigger"]
                else None,
            )
            status = "accepted"
        final = store.finalize(version, {**record, "status": status})
        _conclude(store, final, links, logger)
        shutil.rmtree(state.workdir, ignore_errors=True)
        return final
    except BaseException as exc:
        _record_failure(store, state, record, links, exc, logger)
        # A run that failed during its notebooks: the warm-up's imports end here too, not in
        # whatever this process runs next (flows.warmup).
        wait_for_warm_up(EVIDENTLY_WARM_UP)
        raise


def grid_point_metrics(outputs: NotebookOutputs) -> dict[str, float]:
    if "predictions" in outputs.outputs:
        import pandas as pd

        from flows.metrics import classification_metrics

        preds = pd.read_parquet(outputs.outputs["predictions"])
        if {TARGET, "prediction", "probability"} <= set(preds.columns):
            return classification_metrics(preds[TARGET], preds["prediction"], preds["probability"])
    return dict(outputs.metrics)


def _stored_parameters(call: NotebookCall) -> dict[str, Any]:
    """Parameters as recorded: secrets by reference, never by value."""
    return {**call.parameters, **{k: secret_reference(ref) for k, ref in call.secrets.items()}}


def run_grid(
    calls: list[NotebookCall],
    points: list[dict[str, Any]],
    settings: NbprodSettings,
    policy: gate_mod.GatePolicy,
    no_cache: bool,
) -> tuple[NotebookOutputs, int, dict[str, Any]]:
    """Run every grid point concurrently on the flow's task runner; keep all, pick the best.

    Points are ranked by the gate metric: computed from a ``predictions`` output when there is
    one (the same way as for the gate), else read from the notebook's own metrics.
    """
    required: tuple[str, ...] = ("model", "predictions") if calls[0].name == "train" else ()
    if len(calls) == 1:
        outputs, status = call_notebook(calls[0], settings, required, refresh=no_cache)
        return outputs, 0, {"cache": {calls[0].name: status}}
    futures = [
        run_notebook.with_options(
            task_run_name=f"run-notebook-{c.name}-grid-{i}",
            refresh_cache=must_refresh(c, no_cache),
        ).submit(**c.task_arguments(settings, required))
        for i, c in enumerate(calls)
    ]
    metric, higher = gate_metric(policy)
    results: list[dict[str, Any]] = []
    outputs_by_index: dict[int, NotebookOutputs] = {}
    first_error: BaseException | None = None
    for i, (future, point) in enumerate(zip(futures, points, strict=True)):
        future.wait()
        entry: dict[str, Any] = {"index": i, "parameters": point}
        try:
            out, entry["cache"] = from_state(calls[i], future.state, required)
        except Exception as exc:
            first_error = first_error or exc
            entry.update(status="failed", cache="miss", error=str(exc))
        else:
            entry.update(status="completed", metrics=grid_point_metrics(out))
            outputs_by_index[i] = out
        results.append(entry)
    if not outputs_by_index:
        assert first_error is not None
        raise first_error
    scored = [r for r in results if r["status"] == "completed" and metric in r["metrics"]]
    if not scored:
        raise ConfigError(
            f"no grid point reported the gate metric {metric!r}: the notebook must "
            "write it to outputs.json metrics (or a predictions output)"
        )
    best = (max if higher else min)(scored, key=lambda r: r["metrics"][metric])["index"]
    record = {
        "metric": metric,
        "higher_is_better": higher,
        "best_index": best,
        "best_parameters": points[best],
        "points": results,
        "cache": {f"{calls[0].name}-grid-{r['index']}": r["cache"] for r in results},
    }
    return outputs_by_index[best], best, record


def _resolve(path: str) -> Path:
    """Relative paths are relative to the project ($NBPROD_PROJECT_DIR or this checkout)."""
    from flows.spec import resolve_project_path

    return resolve_project_path(path).resolve()


def split_parameters(given: dict[str, Any] | None, stems: list[str]) -> dict[str, dict[str, Any]]:
    """``{stem: {...}}`` addresses notebooks by name; a flat dict is for the last notebook."""
    given = dict(given or {})
    if given and all(k in stems and isinstance(v, dict) for k, v in given.items()):
        return given
    return {stems[-1]: given} if given else {}


def wire_upstream(outputs: NotebookOutputs | None, declared: dict[str, Any]) -> dict[str, str]:
    """An upstream output named X feeds a downstream parameter named X_path."""
    if outputs is None:
        return {}
    return {
        f"{name}_path": str(path)
        for name, path in outputs.outputs.items()
        if f"{name}_path" in declared
    }


@flow(name="notebook_pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=4))
def notebook_pipeline(
    spec: str,
    parameters: dict[str, Any] | None = None,
    no_cache: bool = False,
    run_store_url: str | None = None,
    triggered_by: str = "manual",
) -> dict[str, Any]:
    """Run a promoted notebook (or a chain of them) from its spec, versioned like any run.

    ``parameters`` override the spec's: ``{notebook_stem: {...}}``, or a flat dict for the last
    notebook. Every value is checked against the notebooks' parameters cells before any kernel
    starts. A grid in the spec fans out in parallel; the best point by the gate metric is kept.
    """
    from flows.notebook import declared_parameters
    from flows.spec import load_spec

    logger = get_run_logger()
    settings, store, state, record = begin_run("notebook_pipeline", run_store_url, triggered_by)
    version = state.version
    links: dict[str, str] = {}
    try:
        state.step = "check-parameters"
        loaded = load_spec(_resolve(spec))
        record["spec"] = loaded.name
        notebooks = [_resolve(nb) for nb in loaded.notebooks]
        stems = [nb.stem for nb in notebooks]
        overrides = split_parameters(parameters, stems)
        policy_file = _resolve(loaded.policy) if loaded.policy else settings.policy_path
        policy = gate_mod.load_policy(policy_file)
        plans: list[tuple[Path, dict[str, Any], dict[str, dict[str, str]], list[dict]]] = []
        for nb in notebooks:
            declared = declared_parameters(nb)
            params = {**loaded.parameters.get(nb.stem, {}), **overrides.get(nb.stem, {})}
            nb_secrets = {
                p: ref.model_dump(exclude_none=True)
                for p, ref in loaded.secrets.get(nb.stem, {}).items()
            }
            points = expand_grid(loaded.grid.get(nb.stem))
            wired_placeholders = {
                p: "."
                for p in declared
                if p.endswith("_path") and p not in params and nb is not notebooks[0]
            }
            for point in points:
                check_parameters(
                    nb,
                    {
                        **params,
                        **point,
                        **wired_placeholders,
                        "output_dir": ".",
                        **dict.fromkeys(nb_secrets, ""),
                    },
                )
            plans.append((nb, params, nb_secrets, points))

        previous: NotebookOutputs | None = None
        cache: dict[str, str] = {}
        metrics: dict[str, dict[str, float]] = {}
        planned: list[NotebookCall] = []
        plan = notebook_planner(settings, state)
        for nb, params, nb_secrets, points in plans:
            state.step = nb.stem
            state.notebooks[nb.stem] = nb
            wired = wire_upstream(previous, declared_parameters(nb))
            calls = [
                plan(nb.stem, nb, {**params, **point, **wired}, secrets=nb_secrets)
                for point in points
            ]
            planned.extend(calls)
            for i, call in enumerate(calls):
                state.executed[nb.stem if len(calls) == 1 else f"{nb.stem}-grid-{i}"] = (
                    call.executed
                )
            if len(calls) == 1:
                outputs, status = call_notebook(calls[0], settings, (), refresh=no_cache)
                cache[nb.stem] = status
                best = 0
            else:
                outputs, best, grid_record = run_grid(calls, points, settings, policy, no_cache)
                cache.update(grid_record["cache"])
                record.setdefault("grid", {})[nb.stem] = grid_record
                state.executed[nb.stem] = calls[best].executed
                for i, call in enumerate(calls):
                    if Path(call.parameters["output_dir"]).exists():
                        store.put_tree(
                            version, f"grid/{nb.stem}/{i}", Path(call.parameters["output_dir"])
                        )
            state.parameters[nb.stem] = _stored_parameters(calls[best])
            metrics[nb.stem] = outputs.metrics
            for name, path in outputs.outputs.items():
                if path.is_file():
                    state.fingerprints[f"{nb.stem}.{name}"] = {
                        "sha256": file_sha256(path),
                        "bytes": path.stat().st_size,
                    }
            store.put_tree(version, f"outputs/{nb.stem}", outputs.output_dir)
            previous = outputs
        record["cache"] = cache
        logger.info("notebook cache: %s", ", ".join(f"{k} {v}" for k, v in cache.items()))
        store.put_json(version, "parameters.json", state.parameters)
        store.put_json(version, "metrics.json", metrics)
        store.put_json(version, "fingerprints.json", state.fingerprints)
        links.update(_store_notebooks(store, state))
        store.put_json(
            version,
            "manifest.json",
            build_manifest(
                version=version,
                notebooks=state.notebooks,
                parameters=state.parameters,
                inputs=state.fingerprints,
                champion=None,
                project_root=PROJECT_ROOT,
            ),
        )
        record["metrics"] = {"candidate": metrics[stems[-1]], "champion": None}
        final = store.finalize(version, {**record, "status": "completed"})
        _write_uptodate_ticket(
            settings, spec, parameters, run_store_url, store.url, version, planned, policy_file
        )
        _publish(final, links, logger)
        shutil.rmtree(state.workdir, ignore_errors=True)
        return final
    except BaseException as exc:
        _record_failure(store, state, record, links, exc, logger)
        raise


def _write_uptodate_ticket(
    settings: NbprodSettings,
    spec: str,
    parameters: dict[str, Any] | None,
    run_store_url: str | None,
    store_url: str,
    version: str,
    calls: list[NotebookCall],
    policy_file: Path,
) -> None:
    """What this completed run planned, so an unchanged re-run can be answered by it.

    Best effort: the run is stored whatever happens here; without a ticket the next re-run
    simply goes through the flow (flows.uptodate).
    """
    from flows.uptodate import write_ticket

    if any(call.cache_key is None for call in calls):
        return
    try:
        write_ticket(
            home=settings.home,
            spec_file=_resolve(spec),
            parameters=parameters,
            run_store_url=run_store_url,
            store_url=store_url,
            version=version,
            kernel_name=settings.kernel_name,
            calls=[
                {
                    "name": call.name,
                    "notebook": str(call.notebook),
                    "parameters": call.parameters,
                    "secrets": call.secrets,
                    "cache_key": call.cache_key,
                    "cached": [
                        str(call.executed),
                        str(Path(call.parameters["output_dir"]) / OUTPUTS_FILE),
                    ],
                }
                for call in calls
            ],
            inputs=[policy_file],
            prefect=_prefect_flow_identity(),
        )
    except (OSError, TypeError, ValueError) as exc:
        get_run_logger().warning("could not record run %s for up-to-date re-runs: %s", version, exc)


def _prefect_flow_identity() -> dict[str, str] | None:
    """The server this flow run is recorded on and the flow's id there."""
    from prefect.settings import PREFECT_API_URL

    flow_ctx = FlowRunContext.get()
    if not (flow_ctx and flow_ctx.flow_run and PREFECT_API_URL.value()):
        return None
    return {"api_url": str(PREFECT_API_URL.value()), "flow_id": str(flow_ctx.flow_run.flow_id)}


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
        _conclude(store, final, links, logger)
    except (OSError, RunStoreError, PackagingError) as store_exc:  # pragma: no cover
        logger.error("could not record failure of run %s: %s", state.version, store_exc)


def parse_trigger(triggered_by: str) -> dict[str, str] | None:
    """``drift:<monitoring version>`` (the retrain automation's triggered_by) as a record field."""
    if not triggered_by.startswith(DRIFT_TRIGGER_PREFIX):
        return None
    cause = triggered_by[len(DRIFT_TRIGGER_PREFIX) :].strip()
    return {"kind": "drift", "monitoring_version": cause} if cause else None


def followup_record(record: dict[str, Any]) -> dict[str, Any]:
    """What the causing monitoring run shows of this run: its outcome and the reasons."""
    after = record.get("champion_after") or {}
    return {
        "version": record["version"],
        "kind": "retraining",
        "pipeline": record.get("pipeline"),
        "status": record.get("status"),
        "reasons": record.get("reasons") or ([record["error"]] if record.get("error") else []),
        "window": record.get("window"),
        "champion_after": after.get("version"),
        "flow_run_id": record.get("flow_run_id"),
        "finished_at": record.get("finished_at"),
    }


def _conclude(store: RunStore, record: dict[str, Any], links: dict[str, str], logger: Any) -> None:
    """After finalize: link a drift-triggered run back to its monitoring run, then publish."""
    cause = (record.get("trigger") or {}).get("monitoring_version")
    if cause:
        try:
            store.add_followup(cause, followup_record(record))
            links[f"monitoring run {cause}"] = store.uri(cause, "run.json")
        except (OSError, RunStoreError) as exc:
            logger.warning(
                "could not link run %s to monitoring run %s: %s", record["version"], cause, exc
            )
    _publish(record, links, logger)


def _publish(record: dict[str, Any], links: dict[str, str], logger: Any) -> None:
    from flows.artifacts import publish_run_artifacts

    try:
        publish_run_artifacts(record, links)
    except Exception as exc:
        logger.warning("could not publish Prefect artifacts for %s: %s", record["version"], exc)
