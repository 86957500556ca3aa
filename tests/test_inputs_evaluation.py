"""The data window and the scoring stage, on tiny inline frames (no Prefect, no kernels)."""

from __future__ import annotations

from pathlib import Path

import joblib
import pandas as pd
import pytest

from flows.errors import DataValidationError, OutputContractError
from flows.evaluation import find_artifact, model_and_holdout, read_holdout, score
from flows.inputs import data_sources, load_data_window
from flows.notebook import NotebookOutputs
from flows.spec import PipelineSpec

SALES = pd.DataFrame(
    {
        "sale_id": [1, 2, 3, 4, 5, 6],
        "sold_at": pd.to_datetime(
            ["2024-01-05", "2024-02-05", "2024-03-05", "2024-04-05", "2024-05-05", "2024-06-05"]
        ),
        "area": [50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
        "district": ["a", "b", "a", "b", "a", "b"],
        "price": [100.0, 120.0, 140.0, 160.0, 180.0, 200.0],
    }
)


def spec(**extra: object) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": "price",
            "flow": "training",
            "notebooks": ["n/price.ipynb"],
            "task": "regression",
            "target": "price",
            "id_columns": ["sale_id"],
            "time_column": "sold_at",
            "data": {"data_path": "sales.csv"},
            **extra,
        }
    )


def test_the_window_is_cut_on_the_time_column_and_written_as_the_source_format(
    tmp_path: Path,
) -> None:
    SALES.to_csv(tmp_path / "sales.csv", index=False)
    sources = data_sources(spec(), str(tmp_path / "sales.csv"), None, "2024-02-01", "2024-05-01")
    window = load_data_window(spec(), sources, out_dir=tmp_path / "out")
    assert list(window.frame["sale_id"]) == [2, 3, 4]
    assert window.file == tmp_path / "out" / "sales.csv"
    assert list(pd.read_csv(window.file)["sale_id"]) == [2, 3, 4]
    assert window.schema.columns["sale_id"].kind == "id"
    assert window.schema.numerical == ["area"] and window.schema.categorical == ["district"]


def test_an_empty_window_and_missing_columns_are_one_line_errors(tmp_path: Path) -> None:
    SALES.to_parquet(tmp_path / "sales.parquet", index=False)
    empty = data_sources(spec(), str(tmp_path / "sales.parquet"), None, "2030-01-01", None)
    with pytest.raises(DataValidationError, match="no rows in \\[2030-01-01"):
        load_data_window(spec(), empty, out_dir=tmp_path / "out")
    SALES.drop(columns=["sale_id"]).to_parquet(tmp_path / "ref.parquet", index=False)
    bad_ref = data_sources(spec(), str(tmp_path / "sales.parquet"), str(tmp_path / "ref.parquet"))
    with pytest.raises(DataValidationError, match=r"lacks the spec's column\(s\) \['sale_id'\]"):
        load_data_window(spec(), bad_ref, out_dir=tmp_path / "out")


def outputs(tmp_path: Path, files: dict[str, list[str]]) -> dict[str, NotebookOutputs]:
    found = {}
    for stem, names in files.items():
        folder = tmp_path / stem
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"x")
        found[stem] = NotebookOutputs(f"{stem}.ipynb", folder)
    return found


def test_model_and_holdout_come_from_the_last_notebook_that_wrote_them(tmp_path: Path) -> None:
    ran = outputs(
        tmp_path,
        {"clean": ["holdout.csv", "rows.parquet"], "fit": ["model.pkl"], "check": ["plot.png"]},
    )
    model, holdout = model_and_holdout(spec(), ran)
    assert (model.stem, model.path.name, model.stored) == (
        "fit",
        "model.pkl",
        "outputs/fit/model.pkl",
    )
    assert (holdout.stem, holdout.path.name) == ("clean", "holdout.csv")
    named = model_and_holdout(spec(model_file="rows.parquet"), ran)[0]
    assert named.path.name == "rows.parquet"
    with pytest.raises(OutputContractError, match="no notebook wrote the model"):
        find_artifact(
            outputs(tmp_path / "x", {"a": ["holdout.csv"]}), ("model.joblib",), "the model"
        )


def test_scoring_drops_ids_time_and_target_and_keeps_unlabelled_rows_out(tmp_path: Path) -> None:
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    model = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["district"]), remainder="passthrough"),
        LinearRegression(),
    ).fit(SALES[["area", "district"]], SALES["price"])
    holdout = pd.concat([SALES, SALES.head(1).assign(price=None)], ignore_index=True)
    holdout.to_csv(tmp_path / "holdout.csv", index=False)
    rows = read_holdout(tmp_path / "holdout.csv", spec())
    assert len(rows) == len(SALES)
    scored = score(joblib.load(joblib.dump(model, tmp_path / "m.joblib")[0]), rows, spec())
    assert scored.predictions.probabilities is None
    assert list(scored.predictions.prediction.round(6)) == list(SALES["price"])
    with pytest.raises(OutputContractError, match="no target column 'price'"):
        SALES.drop(columns=["price"]).to_csv(tmp_path / "bad.csv", index=False)
        read_holdout(tmp_path / "bad.csv", spec())


@pytest.mark.parametrize(
    ("record", "pointer", "message"),
    [
        ({"status": "rejected", "pipeline": "price"}, {}, "which is rejected"),
        ({"status": "accepted", "pipeline": "churn"}, {}, "in pipeline churn"),
        (
            {"status": "accepted", "pipeline": "price"},
            {"model_file": "../../elsewhere/model.joblib"},
            "outside its version folder",
        ),
    ],
)
def test_only_an_accepted_version_of_the_pipeline_is_unpickled_as_champion(
    tmp_path: Path, record: dict, pointer: dict, message: str
) -> None:
    """A pointer edited by hand (issue 18): nothing outside the pipeline's accepted runs loads."""
    from flows.errors import RunStoreError
    from flows.evaluation import fetch_champion_model
    from flows.store import RunStore

    store = RunStore(tmp_path / "runs")
    store.begin("v1")
    (tmp_path / "model.joblib").write_bytes(b"planted")
    store.put_file("v1", "outputs/fit/model.joblib", tmp_path / "model.joblib")
    store.finalize("v1", record)
    champion = {"version": "v1", "model_file": "outputs/fit/model.joblib", **pointer}
    with pytest.raises(RunStoreError, match=message):
        fetch_champion_model(store, champion, tmp_path / "work", "price")
    store.begin("v2")
    store.put_file("v2", "outputs/fit/model.joblib", tmp_path / "model.joblib")
    store.finalize("v2", {"status": "accepted", "pipeline": "price"})
    fetched = fetch_champion_model(
        store, {"version": "v2", "model_file": "outputs/fit/model.joblib"}, tmp_path / "w", "price"
    )
    assert fetched.read_bytes() == b"planted"  # an accepted run of the pipeline is fetched
