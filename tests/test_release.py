"""The release stage on the real stack: a model whose champion move fails leaves nothing behind.

Real BentoML store, real bento build, a real ``bentoml serve`` for the infra check; the champion
pointer moved by another run meanwhile (the compare-and-swap refuses), as two racing runs do.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import pytest
from served_models import fit, make_frame

from flows import runs
from flows.errors import RunStoreError
from flows.evaluation import evaluate_models
from flows.inputs import data_sources, load_data_window
from flows.notebook import NotebookOutputs
from flows.release import release_model
from flows.runs import Run
from flows.settings import load_settings
from flows.spec import PipelineSpec
from flows.store import RunStore

pytestmark = pytest.mark.integration
PIPELINE = "release-race"


def test_a_failed_champion_move_deletes_the_built_bento_and_model(
    tmp_path: Path, nbprod_home: Path
) -> None:
    import bentoml

    frame = make_frame("churn")
    frame.to_csv(tmp_path / "churn.csv", index=False)
    spec = PipelineSpec.model_validate(
        {
            "name": PIPELINE,
            "flow": "training",
            "notebooks": ["n/fit.ipynb"],
            "task": "classification",
            "target": "churned",
            "id_columns": ["customer_id"],
            "time_column": "signup_date",
            "data": {"data_path": str(tmp_path / "churn.csv")},
        }
    )
    window = load_data_window(spec, data_sources(spec), out_dir=tmp_path / "window")
    notebook_out = tmp_path / "fit"
    notebook_out.mkdir()
    joblib.dump(fit("churn", frame), notebook_out / "model.joblib")
    frame.tail(100).to_parquet(notebook_out / "holdout.parquet", index=False)
    store = RunStore(nbprod_home / "runs")
    scored = evaluate_models(
        spec, {"fit": NotebookOutputs("fit.ipynb", notebook_out)}, store, None, tmp_path
    )
    # This run started with no champion; another run of the pipeline became champion since.
    store.begin("v-other")
    other = store.finalize("v-other", {"status": "accepted", "pipeline": PIPELINE})
    store.set_champion(PIPELINE, other, expected=None, reason="test", triggered_by="test")
    store.begin("v-mine")
    run = Run(
        load_settings(),
        store,
        "v-mine",
        tmp_path / "scratch",
        {"champion_before": None, "triggered_by": "test", "trigger": None},
    )
    manifest = {
        "inputs": {"data": {"sha256": "0" * 64}},
        "notebooks": {},
        "parameters": {},
        "git": None,
        "champion_at_start": None,
    }

    run.publish = lambda record, links: None  # no Prefect run to publish artifacts to
    with pytest.raises(RunStoreError, match="moved from None to v-other"), runs.recorded(run):
        status = release_model(spec, window, scored, run, manifest)
        assert status == "accepted"
        runs.conclude(run, status)  # the champion moves with the run record, or neither

    assert run.step == "promote"  # the bento was built and passed its infra check first
    assert store.get_run("v-mine")["status"] == "failed"
    assert [m for m in bentoml.models.list() if m.tag.name == PIPELINE] == []
    assert [b for b in bentoml.list() if b.tag.name == PIPELINE] == []
    assert "bento_tag" not in store.get_run("v-mine")
    assert store.champion(PIPELINE)["version"] == "v-other"  # type: ignore[index]
