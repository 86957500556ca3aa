"""Evaluation stage: find the notebooks' model and holdout, score candidate and champion alike.

nbprod computes predictions and metrics itself, for both models on the same holdout rows, with
one function per task (flows.tasks): the gate compares like with like whatever the notebooks
reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.errors import OutputContractError, RunStoreError

if TYPE_CHECKING:
    import pandas as pd

    from flows.notebook import NotebookOutputs
    from flows.spec import PipelineSpec
    from flows.store import RunStore
    from flows.tasks import Scored

MODEL_FILES = ("model.joblib", "model.pkl")
HOLDOUT_FILES = ("holdout.parquet", "holdout.csv")


@dataclass(frozen=True)
class Artifact:
    """A file one notebook wrote: which notebook (its stem) and where."""

    stem: str
    path: Path

    @property
    def stored(self) -> str:
        """Where the run store keeps it inside the version folder."""
        return f"outputs/{self.stem}/{self.path.name}"


def find_artifact(
    outputs: dict[str, NotebookOutputs], names: tuple[str, ...], what: str
) -> Artifact:
    """The last notebook (in run order) that wrote one of ``names`` into its output_dir."""
    for stem, out in reversed(list(outputs.items())):
        for name in names:
            if (out.output_dir / name).is_file():
                return Artifact(stem, out.output_dir / name)
    raise OutputContractError(
        f"no notebook wrote {what} ({' or '.join(names)}) into its output_dir "
        f"({', '.join(outputs)} ran): write it there, or name the file in the spec "
        f"({'model_file' if what == 'the model' else 'holdout_file'}: FILE)"
    )


def model_and_holdout(
    spec: PipelineSpec, outputs: dict[str, NotebookOutputs]
) -> tuple[Artifact, Artifact]:
    """The fitted model and the holdout rows the notebooks wrote."""
    model = find_artifact(
        outputs, (spec.model_file,) if spec.model_file else MODEL_FILES, "the model"
    )
    holdout = find_artifact(
        outputs, (spec.holdout_file,) if spec.holdout_file else HOLDOUT_FILES, "the holdout rows"
    )
    return model, holdout


def load_model(path: Path) -> Any:
    """A fitted scikit-learn-compatible model from a joblib or pickle file."""
    import joblib

    try:
        model = joblib.load(path)
    except Exception as exc:  # unpickling fails in many ways; all mean "cannot use"
        raise OutputContractError(
            f"model {path.name} does not load with joblib ({type(exc).__name__}: {exc}): "
            "write it with joblib.dump(model, output_dir / 'model.joblib')"
        ) from exc
    if not callable(getattr(model, "predict", None)):
        raise OutputContractError(
            f"model {path.name} is a {type(model).__name__}, which has no predict(): save the "
            "fitted estimator or pipeline"
        )
    return model


def read_holdout(path: Path, spec: PipelineSpec) -> pd.DataFrame:
    """The holdout rows, with the target; unlabelled rows cannot be scored and are left out."""
    import pandas as pd

    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if spec.target not in frame.columns:
        raise OutputContractError(
            f"holdout {path.name} has no target column {spec.target!r} (columns: "
            f"{list(frame.columns)[:12]}): keep the target in the holdout rows"
        )
    frame = frame[frame[spec.target].notna()].reset_index(drop=True)
    if frame.empty:
        raise OutputContractError(f"holdout {path.name} has no labelled rows")
    return frame


def feature_frame(frame: pd.DataFrame, spec: PipelineSpec, model: Any) -> pd.DataFrame:
    """The columns the model predicts from: its own fit columns, else all but ids, time, target."""
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is not None:
        missing = [c for c in fitted if c not in frame.columns]
        if missing:
            raise OutputContractError(
                f"the rows to score lack column(s) {missing} the model was fit on"
            )
        return frame[list(fitted)]
    return frame.drop(columns=[c for c in spec.non_feature_columns if c in frame.columns])


def score(model: Any, holdout: pd.DataFrame, spec: PipelineSpec) -> Scored:
    """The model's predictions on the holdout rows, with their true target."""
    from flows.tasks import Scored, predict

    predictions = predict(model, feature_frame(holdout, spec, model), spec.task)
    return Scored(target=holdout[spec.target].reset_index(drop=True), predictions=predictions)


def fetch_champion_model(
    store: RunStore, champion: dict[str, Any], workdir: Path, pipeline: str
) -> Path:
    """The champion's stored model file, copied locally (joblib needs a local file).

    Only a listed, accepted version of this pipeline is ever unpickled: a pointer edited to
    name anything else is refused (unpickling runs code).
    """
    from flows.run_records import pipeline_of

    record = store.get_run(str(champion.get("version")))  # the version id is checked there
    if record.get("status") != "accepted" or pipeline_of(record) != pipeline:
        raise RunStoreError(
            f"the champion pointer of pipeline {pipeline} names run {record['version']}, which is "
            f"{record.get('status')} in pipeline {pipeline_of(record)}: roll back to one of its "
            "accepted runs (nbprod rollback --pipeline ...)"
        )
    rel = str(champion.get("model_file") or "outputs/train/model.joblib")
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise RunStoreError(
            f"the champion pointer of pipeline {pipeline} names the model file {rel!r}, outside "
            "its version folder: roll back to an accepted run (nbprod rollback --pipeline ...)"
        )
    try:
        return store.fetch(champion["version"], rel, workdir / "champion" / Path(rel).name)
    except (OSError, KeyError) as exc:
        raise RunStoreError(
            f"champion {champion.get('version')} has no stored model {rel}: roll back to another "
            "version (nbprod rollback) or clear the pipeline's champion"
        ) from exc


@dataclass(frozen=True)
class Evaluation:
    """Candidate and champion scored on the same holdout rows, and where the files are."""

    model: Artifact
    holdout: Artifact
    holdout_rows: pd.DataFrame
    candidate: Scored
    champion: Scored | None
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    classes: list[Any] | None
    features: list[str]


def json_labels(values: Any) -> list[Any]:
    """Class labels as JSON values (NumPy scalars become Python ones)."""
    return [v.item() if hasattr(v, "item") else v for v in values]


def evaluate_models(
    spec: PipelineSpec,
    outputs: dict[str, NotebookOutputs],
    store: RunStore,
    champion: dict[str, Any] | None,
    workdir: Path,
) -> Evaluation:
    """Score the notebooks' model and the pipeline's champion on the notebooks' holdout rows."""
    from flows.reports import EVIDENTLY_WARM_UP
    from flows.tasks import compute_metrics
    from flows.warmup import wait_for_warm_up

    wait_for_warm_up(EVIDENTLY_WARM_UP)  # it imports sklearn.metrics: never in two threads

    model_file, holdout_file = model_and_holdout(spec, outputs)
    model = load_model(model_file.path)
    holdout = read_holdout(holdout_file.path, spec)
    candidate = score(model, holdout, spec)
    champion_scored = None
    champion_metrics = None
    if champion:
        champion_model = load_model(fetch_champion_model(store, champion, workdir, spec.name))
        champion_scored = score(champion_model, holdout, spec)
        champion_metrics = compute_metrics(
            spec.task, champion_scored.target, champion_scored.predictions
        )
    classes = getattr(model, "classes_", None) if spec.task == "classification" else None
    return Evaluation(
        model=model_file,
        holdout=holdout_file,
        holdout_rows=holdout,
        candidate=candidate,
        champion=champion_scored,
        candidate_metrics=compute_metrics(spec.task, candidate.target, candidate.predictions),
        champion_metrics=champion_metrics,
        classes=json_labels(classes) if classes is not None else None,
        features=list(feature_frame(holdout.head(1), spec, model).columns),
    )


def grid_point_scorer(spec: PipelineSpec, metric: str) -> Any:
    """Score a training grid point by ``metric`` on the holdout, computed as for the gate."""
    from flows.tasks import compute_metrics

    def score_point(earlier: dict[str, NotebookOutputs], out: NotebookOutputs) -> float | None:
        model_file, holdout_file = model_and_holdout(spec, {**earlier, "point": out})
        scored = score(load_model(model_file.path), read_holdout(holdout_file.path, spec), spec)
        value = compute_metrics(spec.task, scored.target, scored.predictions).get(metric)
        return None if value is None else float(value)

    return score_point
