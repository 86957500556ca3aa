"""The Prefect flows: ``training_pipeline`` and ``notebook_pipeline``, read top to bottom.

Each step is a plain function in the module named for its stage (inputs, execution, evaluation,
reports, gate, release) or a thin task over one; run bookkeeping is :mod:`flows.runs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows import gate as gate_mod
from flows import runs
from flows.errors import ConfigError
from flows.evaluation import Evaluation, evaluate_models, grid_point_scorer
from flows.execution import FLOW_TASK_THREADS, reported_metric, run_chain
from flows.inputs import DataSources, DataWindow, data_sources, load_data_window
from flows.lineage import store_lineage, store_reports
from flows.manifest import data_fingerprint
from flows.notebook import NotebookOutputs
from flows.planning import NotebookPlan, plan_chain
from flows.release import release_model
from flows.spec import PipelineSpec, default_pipeline, load_spec, resolve_project_path


@task(name="validate-input-data", cache_policy=NO_CACHE)
def validate_data(spec: PipelineSpec, sources: DataSources, run: runs.Run) -> DataWindow:
    run.fingerprints.update(
        data=data_fingerprint(sources.data), reference=data_fingerprint(sources.reference)
    )
    return load_data_window(spec, sources, out_dir=run.workdir / "inputs")


def run_notebooks(
    spec: PipelineSpec,
    plans: list[NotebookPlan],
    data: DataWindow,
    policy: gate_mod.GatePolicy,
    run: runs.Run,
    *,
    no_cache: bool,
) -> dict[str, NotebookOutputs]:
    """The notebooks in order on the data window; a grid's points ranked as the gate would."""
    warm_up_later_steps()
    ranking = gate_mod.ranking_metric(policy)
    return run_chain(
        plans,
        run,
        first_inputs={"data_path": str(data.file)},
        no_cache=no_cache,
        ranking=ranking,
        score_point=grid_point_scorer(spec, ranking[0]),
    )


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate(spec: PipelineSpec, outputs: dict[str, Any], run: runs.Run) -> Evaluation:
    """Candidate and champion on the same holdout rows; the metrics go into the record."""
    scored = evaluate_models(spec, outputs, run.store, run.record["champion_before"], run.workdir)
    run.record["metrics"] = {
        "candidate": scored.candidate_metrics,
        "champion": scored.champion_metrics,
    }
    reported = {stem: out.metrics for stem, out in outputs.items() if out.metrics}
    run.put_json("metrics.json", {**run.record["metrics"], "notebook": reported})
    return scored


def gate(policy: gate_mod.GatePolicy, scored: Evaluation, run: runs.Run) -> Any:
    """The policy's decision on the candidate against the champion, recorded with its reasons."""
    decision = gate_mod.evaluate_gate(scored.candidate_metrics, scored.champion_metrics, policy)
    run.put_json("gate.json", {**decision.to_dict(), "policy": policy.model_dump()})
    verdict = decision.to_dict()
    run.record.update(
        decision=verdict["decision"], reasons=decision.reasons, checks=verdict["checks"]
    )
    print(f"gate: {run.record['decision']} — {'; '.join(decision.reasons)}")
    return decision


@task(name="evidently-reports", cache_policy=NO_CACHE)
def write_reports(spec: PipelineSpec, data: DataWindow, scored: Evaluation, run: runs.Run) -> dict:
    """Data summary, data drift and model performance; returns the drift summary."""
    from flows.reports import write_training_reports

    features = set(scored.features)
    written = write_training_reports(
        task=spec.task,
        target=spec.target,
        numerical=[c for c in data.schema.numerical if c in features],
        categorical=[c for c in data.schema.categorical if c in features],
        reference=data.reference,
        current=data.frame,
        candidate=scored.candidate,
        champion=scored.champion,
        out_dir=run.workdir / "reports",
        time_column=spec.time_column,
    )
    return store_reports(run, written, scored, data)


@task(name="package-and-check", cache_policy=NO_CACHE)
def release(
    spec: PipelineSpec, data: DataWindow, scored: Evaluation, run: runs.Run, manifest: dict
) -> str:
    return release_model(spec, data, scored, run, manifest)


def warm_up_later_steps() -> None:
    """While the kernels run, this process mostly waits: the later steps' imports go first."""
    from flows.notebook import warm_up_html_rendering
    from flows.reports import warm_up_evidently

    warm_up_html_rendering()
    warm_up_evidently()


def spec_file(spec: str | None) -> Path:
    """The spec a flow runs: the given path (project-relative), else the default pipeline's."""
    return resolve_project_path(spec or f"deployments/{default_pipeline()}.yaml").resolve()


@flow(
    name="training_pipeline",
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=FLOW_TASK_THREADS),
)
def training_pipeline(
    spec: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    data_path: str | None = None,
    reference_path: str | None = None,
    parameters: dict[str, Any] | None = None,
    grid: dict[str, list[Any]] | None = None,
    policy_path: str | None = None,
    run_store_url: str | None = None,
    no_cache: bool = False,
    triggered_by: str = "manual",
) -> dict[str, Any]:
    """Validate data → notebooks → evaluate → reports → gate → package, infra check, champion.

    ``spec``: ``deployments/<pipeline>.yaml``; the other arguments override it for this run
    (``parameters``: ``{stem: {...}}`` or flat for the last notebook; ``grid``: the last one's).
    """
    pipeline = training_spec(spec)
    run = runs.begin("training_pipeline", pipeline.name, run_store_url, triggered_by)
    with runs.recorded(run):
        sources = data_sources(pipeline, data_path, reference_path, start_date, end_date)
        champion = run.store.champion(pipeline.name)
        run.record.update(
            task=pipeline.task,
            spec=pipeline.name,
            window=list(sources.window),
            champion_before=champion,
            champion_after=champion,
        )
        run.at("check-parameters")  # everything here runs before any kernel starts
        policy = gate_mod.load_policy(_policy_file(policy_path or pipeline.policy), pipeline.task)
        plans = plan_chain(
            pipeline,
            overrides=parameters,
            grid=grid,
            first_inputs={"data_path": str(sources.data)},
            shared={"target": pipeline.target},
        )
        run.at("validate-input-data")
        data = validate_data(pipeline, sources, run)
        run.at("notebooks")
        outputs = run_notebooks(pipeline, plans, data, policy, run, no_cache=no_cache)
        run.at("evaluate")
        scored = evaluate(pipeline, outputs, run)
        run.at("reports")
        run.record["drift"] = write_reports(pipeline, data, scored, run)
        run.at("gate")
        decision = gate(policy, scored, run)
        manifest = store_lineage(run, outputs, data, scored)
        status = "rejected"
        if decision.accepted:
            run.at("package")
            status = release(pipeline, data, scored, run, manifest)
        return runs.conclude(run, status)


def training_spec(spec: str | None) -> PipelineSpec:
    """The training spec a run names (or the default pipeline's); a notebook spec is refused."""
    file = spec_file(spec)
    loaded = load_spec(file)
    if loaded.flow != "training":
        raise ConfigError(
            f"{file} is a notebook pipeline (flow: notebook): run it with `nbprod run --spec`"
        )
    return loaded


def _policy_file(policy: str | None) -> Path | None:
    return resolve_project_path(policy).resolve() if policy else None


@flow(
    name="notebook_pipeline",
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=FLOW_TASK_THREADS),
)
def notebook_pipeline(
    spec: str,
    parameters: dict[str, Any] | None = None,
    no_cache: bool = False,
    run_store_url: str | None = None,
    triggered_by: str = "manual",
) -> dict[str, Any]:
    """Run a promoted notebook (or a chain of them) from its spec, versioned like any run.

    ``parameters`` override the spec's: ``{notebook_stem: {...}}``, or a flat dict for the last
    notebook. A grid in the spec fans out in parallel; the best point by the policy's ranking
    metric, as the notebook reports it in outputs.json, is kept.
    """
    pipeline = load_spec(spec_file(spec))
    run = runs.begin("notebook_pipeline", pipeline.name, run_store_url, triggered_by)
    with runs.recorded(run):
        run.record["spec"] = pipeline.name
        run.at("check-parameters")
        policy_file = _policy_file(pipeline.policy) or run.settings.policy_path
        plans = plan_chain(pipeline, overrides=parameters)
        ranking = ("roc_auc", True)
        if any(len(plan.points) > 1 for plan in plans):
            if not policy_file.is_file():
                raise ConfigError(
                    f"{pipeline.relative_path()} has a grid, ranked by a policy's first metric: "
                    "add `policy: FILE` to the spec (e.g. champion: {score: {direction: "
                    "higher_is_better}} plus a floor)"
                )
            ranking = gate_mod.ranking_metric(gate_mod.load_policy(policy_file, None))
        outputs = run_chain(
            plans,
            run,
            first_inputs={},
            no_cache=no_cache,
            ranking=ranking,
            score_point=reported_metric(ranking[0]),
        )
        metrics = {stem: out.metrics for stem, out in outputs.items()}
        run.put_json("metrics.json", metrics)
        store_lineage(run, outputs, None, None)
        run.record["metrics"] = {"candidate": metrics[plans[-1].stem], "champion": None}
        return runs.conclude(run, "completed")
