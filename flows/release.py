"""Release stage of an accepted model: BentoML model and bento, infra check, champion move.

The champion moves last, with the run record, and only if the built bento, served for real,
answers like the notebook's model: a bento that fails its check is deleted so it cannot be
mistaken for an approved one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from flows.evaluation import Evaluation
    from flows.inputs import DataWindow
    from flows.runs import Run
    from flows.spec import PipelineSpec

INFRA_SAMPLE_ROWS = 200


@dataclass(frozen=True)
class Package:
    model_tag: str
    bento_tag: str


def without_nones(value: Any) -> Any:
    """BentoML metadata refuses None; an absent key says the same (no git, no champion)."""
    if isinstance(value, dict):
        return {k: without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nones(v) for v in value if v is not None]
    return value


def model_metadata(
    spec: PipelineSpec,
    version: str,
    *,
    classes: list[Any] | None,
    metrics: dict[str, float],
    lineage: dict[str, Any],
) -> dict[str, Any]:
    """What the BentoML model carries: the domain the bento serves and where the model came from."""
    return without_nones(
        {
            "run_version": version,
            "pipeline": spec.name,
            "task": spec.task,
            "target": spec.target,
            "classes": classes,
            "id_columns": list(spec.id_columns),
            "time_column": spec.time_column,
            "metrics": metrics,
            "data_sha256": lineage["inputs"]["data"]["sha256"],
            # Served by the bento's /metadata endpoint: where this model came from.
            "lineage": {
                "notebooks": {n: nb["content_sha256"] for n, nb in lineage["notebooks"].items()},
                "inputs": {n: fp["sha256"] for n, fp in lineage["inputs"].items()},
                "parameters": lineage["parameters"],
                "git": lineage["git"],
                "champion_at_start": lineage["champion_at_start"],
            },
        }
    )


def package(
    spec: PipelineSpec,
    version: str,
    model_path: Path,
    *,
    metadata: dict[str, Any],
    feature_schema: dict[str, Any],
    bentos_dir: Path,
    holdout: pd.DataFrame | None = None,
) -> Package:
    """Save the model to the BentoML store and build the pipeline's bento pinned to it; with the
    holdout rows, served by ONNX Runtime when its conversion answers them like the model."""
    from flows.packaging import package_model

    model_tag, bento_tag = package_model(
        model_path,
        pipeline=spec.name,
        model_name=spec.resolved_model_name,
        version=version,
        metadata=metadata,
        feature_schema=feature_schema,
        bentos_dir=bentos_dir,
        holdout=holdout,
    )
    return Package(model_tag, bento_tag)


def infra_check(
    built: Package, model_path: Path, holdout: pd.DataFrame, spec: PipelineSpec
) -> dict[str, Any]:
    """Serve the bento for real; it must answer the holdout's first rows as the model does."""
    from flows.evaluation import feature_frame, load_model
    from flows.serving import check_served_answers

    model = load_model(model_path)
    sample = feature_frame(holdout.head(INFRA_SAMPLE_ROWS), spec, model)
    result = check_served_answers(
        built.bento_tag, built.model_tag, model_path, sample, str(spec.task)
    )
    if not result["passed"]:
        from flows.packaging import delete_package

        delete_package(built.model_tag, built.bento_tag)
    return result


def release_model(
    spec: PipelineSpec, data: DataWindow, scored: Evaluation, run: Run, manifest: dict[str, Any]
) -> str:
    """Package and check an accepted candidate; returns the run's status.

    An accepted run leaves ``run.crown``, the champion move that :func:`flows.runs.conclude`
    makes together with the run record. Until then ``run.package`` names the bento, which a
    failing run deletes (flows.runs.record_failure): no unapproved bento is left behind.
    """
    run.package = package(
        spec,
        run.version,
        scored.model.path,
        metadata=model_metadata(
            spec,
            run.version,
            classes=scored.classes,
            metrics=scored.candidate_metrics,
            lineage=manifest,
        ),
        feature_schema=data.schema.feature_schema(scored.features),
        bentos_dir=run.settings.bentos_dir,
        holdout=scored.holdout_rows,
    )
    return check_and_prepare_crown(spec, run.package, scored, run)


def check_and_prepare_crown(
    spec: PipelineSpec, built: Package, scored: Evaluation, run: Run
) -> str:
    """The infra check, then the champion move to make with the run record; returns the status."""
    from flows.store import ChampionMove

    run.at("infra-check")
    infra = infra_check(built, scored.model.path, scored.holdout_rows, spec)
    run.put_json("infra_check.json", infra)
    run.record["infra_check"] = {"passed": infra["passed"], "reason": infra["reason"]}
    run.record["runtime"] = infra.get("runtime")  # which runtime serves the bento, and why
    if not infra["passed"]:
        run.package = None  # deleted by the check
        run.record.update(
            decision="rejected",
            reasons=[f"infra check failed: {infra['reason']}", *run.record.get("reasons", [])],
        )
        return "rejected"
    run.at("promote")
    champion = run.record.get("champion_before")
    trigger = run.record.get("trigger")
    run.record.update(model_tag=built.model_tag, bento_tag=built.bento_tag)
    run.crown = ChampionMove(
        spec.name,
        {
            "version": run.version,
            "model_tag": built.model_tag,
            "bento_tag": built.bento_tag,
            "model_file": scored.model.stored,
            "metrics": scored.candidate_metrics,
        },
        expected=champion["version"] if champion else None,
        reason="retrain" if trigger else "gate",
        triggered_by=run.record.get("flow_run_id") or run.record["triggered_by"],
        note=f"after drift in monitoring run {trigger['monitoring_version']}" if trigger else None,
    )
    return "accepted"
