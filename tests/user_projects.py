"""A user's own notebook projects, written by tests: their data, their columns, their notebooks.

None of them looks like the bundled loan example: other column names, an id and a date of their
own, a target that is 0/1, a string label or a number, one notebook or two in a subfolder with
names other than prepare/train. The notebooks are what a data scientist writes in Jupyter:
load, split, fit, save the model and the holdout rows into ``output_dir``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from notebook_files import parameterized_notebook


def churn_data(rows: int = 1500, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """Customers with an id, a signup date, numbers, a plan and a 0/1 ``churned`` target."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows, n_features=5, n_informative=4, n_redundant=0, random_state=seed
    )
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(x + shift, columns=[f"usage_{i}" for i in range(5)])
    frame.insert(0, "customer_id", np.arange(10_000, 10_000 + rows))
    frame.insert(
        1,
        "signup_date",
        pd.Timestamp("2025-01-01") + pd.to_timedelta(np.sort(rng.integers(0, 365, rows)), unit="D"),
    )
    frame["plan"] = np.where(
        y == 1,
        rng.choice(["basic", "pro"], rows, p=[0.7, 0.3]),
        rng.choice(["basic", "pro", "team"], rows),
    )
    frame["churned"] = y
    return frame


CHURN_PARAMETERS = (
    'data_path = "../data/churn.csv"\nseed = 7\nshuffle_labels = False\noutput_dir = "out"'
)
CHURN_BODY = """
from pathlib import Path

import joblib
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

customers = pd.read_csv(data_path, parse_dates=["signup_date"])
features = [c for c in customers.columns if c.startswith("usage_")] + ["plan"]
train, holdout = train_test_split(customers, test_size=0.25, random_state=seed,
                                  stratify=customers["churned"])
y = train["churned"]
if shuffle_labels:  # a useless model, for the gate to refuse
    y = y.sample(frac=1, random_state=seed).to_numpy()
model = make_pipeline(
    ColumnTransformer([("num", StandardScaler(), features[:-1]),
                       ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])]),
    LogisticRegression(max_iter=500, random_state=seed),
)
model.fit(train[features], y)
print("holdout accuracy", model.score(holdout[features], holdout["churned"]))
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
joblib.dump(model, out / "model.joblib")
holdout.to_parquet(out / "holdout.parquet", index=False)
"""


def tiers_data(rows: int = 1200, seed: int = 1) -> pd.DataFrame:
    """Accounts with a string id and a three-way string label ``tier``; no date at all."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows,
        n_features=6,
        n_informative=5,
        n_redundant=0,
        n_classes=3,
        random_state=seed,
    )
    frame = pd.DataFrame(x, columns=["spend", "visits", "tenure", "tickets", "seats", "growth"])
    frame.insert(0, "account_key", [f"acct-{i:05d}" for i in range(rows)])
    frame["region"] = np.random.default_rng(seed).choice(["north", "south", "east"], rows)
    frame["tier"] = np.array(["bronze", "silver", "gold"])[y]
    return frame


TIERS_CLEAN_PARAMETERS = (
    'data_path = "../../data/tiers.csv"\nholdout_share = 0.25\noutput_dir = "out"'
)
TIERS_CLEAN_BODY = """
from pathlib import Path

import pandas as pd

accounts = pd.read_csv(data_path).dropna(subset=["tier"])
holdout = accounts.sample(frac=holdout_share, random_state=3)
rest = accounts.drop(holdout.index)
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
rest.to_parquet(out / "accounts.parquet", index=False)
holdout.to_parquet(out / "holdout.parquet", index=False)
print(len(rest), "rows to fit,", len(holdout), "held out")
"""
TIERS_FIT_PARAMETERS = 'accounts_path = "out/accounts.parquet"\nn_trees = 60\noutput_dir = "out"'
TIERS_FIT_BODY = """
from pathlib import Path

import joblib
import pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

accounts = pd.read_parquet(accounts_path)
X = accounts.drop(columns=["account_key", "tier"])
model = make_pipeline(
    make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["region"]),
                            remainder="passthrough"),
    RandomForestClassifier(n_estimators=n_trees, random_state=0, n_jobs=1),
)
model.fit(X, accounts["tier"])
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
joblib.dump(model, out / "model.joblib")
"""


def houses_data(rows: int = 1400, seed: int = 2) -> pd.DataFrame:
    """Sales with an id, a sale timestamp, numbers, a district and a numeric ``price``."""
    from sklearn.datasets import make_regression

    x, y = make_regression(
        n_samples=rows, n_features=5, n_informative=4, noise=8.0, random_state=seed
    )
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(x, columns=["area", "rooms", "age", "distance", "floor"])
    frame.insert(0, "sale_id", np.arange(rows) * 3 + 1)
    frame.insert(
        1,
        "sold_at",
        pd.Timestamp("2024-03-01")
        + pd.to_timedelta(np.sort(rng.integers(0, 300 * 24, rows)), unit="h"),
    )
    frame["district"] = rng.choice(["centre", "harbour", "hills"], rows)
    frame["price"] = 250.0 + y + np.where(frame["district"] == "centre", 40.0, 0.0)
    return frame


PRICE_PARAMETERS = 'data_path = "../../data/houses.csv"\nalpha = 1.0\nseed = 3\noutput_dir = "out"'
PRICE_BODY = """
from pathlib import Path

import joblib
import pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

sales = pd.read_csv(data_path, parse_dates=["sold_at"]).sort_values("sold_at")
cut = int(len(sales) * 0.8)
fit_rows, holdout = sales.iloc[:cut], sales.iloc[cut:]
features = ["area", "rooms", "age", "distance", "floor", "district"]
model = make_pipeline(
    make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["district"]),
                            remainder="passthrough"),
    Ridge(alpha=alpha, random_state=seed),
)
model.fit(fit_rows[features], fit_rows["price"])
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
joblib.dump(model, out / "model.joblib")
holdout.to_csv(out / "holdout.csv", index=False)
"""


def write_churn_project(root: Path) -> None:
    """One notebook, ``notebooks/churn.ipynb``, and ``data/churn.csv`` + new customers."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    data = churn_data()
    data.to_csv(root / "data" / "churn.csv", index=False)
    fresh = churn_data(rows=300, seed=5, shift=1.5)
    fresh["customer_id"] += 50_000
    fresh.to_csv(root / "data" / "new_customers.csv", index=False)
    parameterized_notebook(root / "notebooks" / "churn.ipynb", CHURN_PARAMETERS, CHURN_BODY)


def write_tiers_project(root: Path) -> None:
    """Two notebooks in a subfolder, string labels, no time column."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    tiers_data().to_csv(root / "data" / "tiers.csv", index=False)
    new = tiers_data(rows=200, seed=9)
    new["account_key"] = [f"new-{i:04d}" for i in range(len(new))]
    new.to_csv(root / "data" / "new_accounts.csv", index=False)
    folder = root / "analysis" / "tiers"
    parameterized_notebook(folder / "clean_rows.ipynb", TIERS_CLEAN_PARAMETERS, TIERS_CLEAN_BODY)
    parameterized_notebook(folder / "fit_forest.ipynb", TIERS_FIT_PARAMETERS, TIERS_FIT_BODY)


def write_price_project(root: Path) -> None:
    """A regression notebook in a subfolder with a time column of its own."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    houses_data().to_csv(root / "data" / "houses.csv", index=False)
    new = houses_data(rows=250, seed=11)
    new["sale_id"] += 100_000
    new.to_csv(root / "data" / "new_sales.csv", index=False)
    parameterized_notebook(
        root / "models" / "price" / "price_model.ipynb", PRICE_PARAMETERS, PRICE_BODY
    )
