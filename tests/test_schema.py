from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.errors import DataValidationError
from flows.schema import DataSchema, derive_schema, read_table, validate_frame


@pytest.fixture
def reference() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "application_id": [f"A{i}" for i in range(6)],
            "application_date": pd.date_range("2024-01-01", periods=6, freq="D"),
            "income": [10.5, 20.0, np.nan, 30.25, 12.0, 15.0],
            "age": [30, 40, 50, 60, 25, 33],
            "purpose": ["car", "home", "car", "home", "car", "edu"],
            "defaulted": [0, 1, 0, 0, 1, 0],
        }
    )


def schema_of(reference: pd.DataFrame) -> DataSchema:
    return derive_schema(reference, target="defaulted", datetime_column="application_date")


def test_derive_schema_kinds_ranges_and_categories(reference: pd.DataFrame) -> None:
    schema = schema_of(reference)
    kinds = {n: c.kind for n, c in schema.columns.items()}
    assert kinds == {
        "application_id": "id",
        "application_date": "datetime",
        "income": "numerical",
        "age": "numerical",
        "purpose": "categorical",
        "defaulted": "target",
    }
    assert schema.columns["age"].dtype == "int"
    assert schema.columns["income"].dtype == "float"
    assert schema.columns["purpose"].categories == ["car", "edu", "home"]
    assert schema.columns["age"].min == 25 and schema.columns["age"].max == 60
    assert schema.columns["income"].max_missing_share == pytest.approx(1 / 6 + 0.05)
    assert schema.columns["age"].max_missing_share == 0.0


def test_schema_round_trips_through_dict(reference: pd.DataFrame) -> None:
    schema = schema_of(reference)
    assert DataSchema.from_dict(schema.to_dict()) == schema


def test_feature_schema_is_features_only(reference: pd.DataFrame) -> None:
    features = schema_of(reference).feature_schema()
    assert set(features["numerical"]) == {"income", "age"}
    assert features["categorical"]["purpose"]["categories"] == ["car", "edu", "home"]
    assert features["numerical"]["income"]["nullable"] is True
    assert features["target"] == "defaulted"


def test_valid_frame_passes(reference: pd.DataFrame) -> None:
    validate_frame(reference, schema_of(reference), dataset="new")


def test_missing_column_is_named(reference: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match="age: missing column") as info:
        validate_frame(reference.drop(columns=["age"]), schema_of(reference), dataset="new.csv")
    assert info.value.columns == ["age"]
    assert "new.csv" in str(info.value)


def test_wrong_type_is_named_with_examples(reference: pd.DataFrame) -> None:
    bad = reference.assign(income=["10", "x", "y", "1", "2", "3"])
    with pytest.raises(DataValidationError, match=r"income: expected float.*'x'") as info:
        validate_frame(bad, schema_of(reference), dataset="new")
    assert info.value.columns == ["income"]


def test_too_many_missing_values_is_named(reference: pd.DataFrame) -> None:
    bad = reference.assign(age=[np.nan, np.nan, 30, 40, 50, 60])
    with pytest.raises(DataValidationError, match="age: 33.3% missing values"):
        validate_frame(bad, schema_of(reference), dataset="new")


def test_every_violation_reported_at_once(reference: pd.DataFrame) -> None:
    bad = reference.drop(columns=["purpose"]).assign(age=["a"] * 6)
    with pytest.raises(DataValidationError) as info:
        validate_frame(bad, schema_of(reference), dataset="new")
    assert info.value.columns == ["age", "purpose"]


def test_empty_frame_rejected(reference: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match="no rows"):
        validate_frame(reference.iloc[0:0], schema_of(reference), dataset="new")


def test_read_table_empty_file_and_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataValidationError, match="empty.csv is empty"):
        read_table(empty, dataset="new")
    with pytest.raises(DataValidationError, match="does not exist"):
        read_table(tmp_path / "nope.csv", dataset="new")


def test_read_table_parses_dates(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("when,x\n2024-01-02 10:00:00,1\n2024-02-03 11:00:00,2\n")
    frame = read_table(path, dataset="d", datetime_column="when")
    assert pd.api.types.is_datetime64_any_dtype(frame["when"])


def test_id_columns_named_by_the_spec_are_never_features(reference: pd.DataFrame) -> None:
    """A numeric id the uniqueness heuristic cannot tell from a feature: the spec names it."""
    frame = reference.assign(customer_no=[101, 102, 103, 104, 105, 106])
    guessed = derive_schema(frame, target="defaulted", datetime_column="application_date")
    assert guessed.columns["customer_no"].kind == "numerical"
    named = derive_schema(
        frame, target="defaulted", datetime_column="application_date", id_columns=["customer_no"]
    )
    assert named.columns["customer_no"].kind == "id"
    assert "customer_no" not in named.numerical
    assert "customer_no" not in named.feature_schema()["numerical"]
    validate_frame(frame, named, dataset="new")  # still a required column of the data


def test_feature_schema_of_the_models_own_columns(reference: pd.DataFrame) -> None:
    """The serving contract lists only the columns the model was fit on, when it says which."""
    features = schema_of(reference).feature_schema(["income", "purpose"])
    assert set(features["numerical"]) == {"income"}
    assert set(features["categorical"]) == {"purpose"}
    assert schema_of(reference).feature_schema([])["numerical"] == {}
