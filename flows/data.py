"""Deterministic synthetic loan-default data bundled with the demo.

The demo must run offline and give the same numbers on every machine, so instead of shipping a
real (licensed, private) credit dataset we generate one from a seed. The generator is designed
to exercise the pipeline end to end:

* the target follows a plausible logistic model of the features plus label noise, so a
  gradient-boosting model learns something real (ROC AUC around 0.8) but not everything;
* January-September 2024 is stationary, so models trained on any part of it are comparable and
  drift reports between those months stay quiet;
* from October 2024 the applicant population shifts (lower incomes and credit scores, higher
  rates, more business/medical loans, more contract/unemployed applicants), so a drift report on
  Q4 against the reference period fires on several columns.

Run ``python -m flows.data`` to regenerate ``data/loans.csv`` and ``data/reference.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

YEAR = 2024
#: First month whose applicants come from the shifted population.
DRIFT_START_MONTH = 10
#: The reference period (half-open): what the first champion is trained on and drift is
#: measured against.
REFERENCE_START = pd.Timestamp("2024-01-01")
REFERENCE_END = pd.Timestamp("2024-07-01")

TARGET = "defaulted"
COLUMNS = [
    "application_id",
    "application_date",
    "age",
    "annual_income",
    "loan_amount",
    "term_months",
    "interest_rate",
    "credit_score",
    "debt_to_income",
    "num_open_accounts",
    "employment_type",
    "home_ownership",
    "purpose",
    TARGET,
]

EMPLOYMENT_TYPES = ["salaried", "self_employed", "contract", "unemployed"]
HOME_OWNERSHIP = ["rent", "mortgage", "own"]
PURPOSES = ["debt_consolidation", "home_improvement", "car", "education", "medical", "business"]

# Category mixes before / after the drift point. Kept as module constants so tests and docs can
# point at the designed shift rather than re-deriving it from samples.
EMPLOYMENT_MIX = {
    "stable": [0.62, 0.15, 0.15, 0.08],
    "drifted": [0.40, 0.15, 0.27, 0.18],
}
PURPOSE_MIX = {
    "stable": [0.40, 0.15, 0.15, 0.10, 0.08, 0.12],
    "drifted": [0.26, 0.08, 0.10, 0.07, 0.21, 0.28],
}

# Multiplicative income effect per employment type (unemployed applicants report benefits or
# savings, hence a low but non-zero income).
_INCOME_FACTOR = np.array([1.0, 1.08, 0.85, 0.42])
# Log-odds contributions of the categorical risk drivers.
_EMPLOYMENT_RISK = np.array([0.0, 0.35, 0.5, 1.2])
_PURPOSE_RISK = np.array([0.0, -0.2, -0.35, 0.3, 0.5, 0.75])
_HOME_RISK = np.array([0.2, -0.15, -0.2])
# Typical loan size per purpose, before the income effect.
_PURPOSE_LOAN = np.array([15000.0, 20000.0, 18000.0, 12000.0, 7000.0, 25000.0])

# Intercept tuned so the stationary months default at ~15% (Q4 ~32%, the full year ~19%).
_INTERCEPT = -3.5
# Share of labels flipped at random: repayment depends on things no application form captures.
_LABEL_NOISE = 0.015

INCOME_MISSING_RATE = 0.03
DTI_MISSING_RATE = 0.02


def _month_dates(rng: np.random.Generator, month: int, n: int) -> pd.DatetimeIndex:
    """Uniform timestamps (second resolution) across one calendar month, sorted."""
    start = pd.Timestamp(year=YEAR, month=month, day=1)
    end = start + pd.offsets.MonthBegin(1)
    span_s = int((end - start).total_seconds())
    offsets = np.sort(rng.integers(0, span_s, size=n))
    return start + pd.to_timedelta(offsets, unit="s")


def _applicants(rng: np.random.Generator, n: int, drifted: bool) -> dict[str, np.ndarray]:
    """Draw ``n`` applicants' features; ``drifted`` selects the Q4 population."""
    mix = "drifted" if drifted else "stable"

    age = np.clip(np.round(rng.normal(41, 12, n)), 18, 80).astype(np.int64)
    employment = rng.choice(len(EMPLOYMENT_TYPES), size=n, p=EMPLOYMENT_MIX[mix])
    purpose = rng.choice(len(PURPOSES), size=n, p=PURPOSE_MIX[mix])

    # Income peaks in mid-career; lognormal because incomes are right-skewed.
    career = 1.0 - ((age - 48) / 40.0) ** 2 * 0.6
    log_income = np.log(52000) + np.log(_INCOME_FACTOR[employment]) + np.log(career)
    log_income += rng.normal(0, 0.45, n) + (np.log(0.85) if drifted else 0.0)
    income = np.exp(log_income)

    # Home ownership follows age: the young rent, older applicants own outright.
    age_z = (age - 41) / 12
    logits = np.stack([0.4 - 0.9 * age_z, 0.3 + 0.2 * age_z, -0.9 + 0.9 * age_z], axis=1)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    home = np.minimum((probs.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1), 2)

    # Credit score improves with age and income; Q4 applicants have thinner/worse files.
    credit = (
        680
        + 1.2 * (age - 41)
        + 35 * (np.log(income) - np.log(52000))
        - 25 * (employment == 3)
        + rng.normal(0, 55, n)
        - (20 if drifted else 0)
    )
    credit = np.clip(np.round(credit), 300, 850).astype(np.int64)

    loan = _PURPOSE_LOAN[purpose] * (income / 52000) ** 0.5 * rng.lognormal(0, 0.45, n)
    loan = np.clip(np.round(loan / 100) * 100, 1000, 40000)

    p_long = 1 / (1 + np.exp(-(loan - 18000) / 6000))
    term = np.where(rng.random(n) < p_long, 60, 36).astype(np.int64)

    # Risk-based pricing; rates rose for everyone in Q4.
    rate = (
        7.0
        + 0.045 * (760 - credit).clip(0)
        + 1.5 * (term == 60)
        + rng.normal(0, 1.6, n)
        + (1.5 if drifted else 0.0)
    )
    rate = np.clip(rate, 5.0, 35.99)

    dti = rng.gamma(4.0, 4.5, n) + 4.0 * (employment == 3) + (1.5 if drifted else 0.0)
    dti = np.clip(dti, 0.0, 75.0)

    accounts = rng.poisson(np.clip(3 + 0.12 * (age - 18), 1, None)).astype(np.int64)

    return {
        "age": age,
        "employment": employment,
        "purpose": purpose,
        "income": income,
        "home": home,
        "credit": credit,
        "loan": loan,
        "term": term,
        "rate": rate,
        "dti": dti,
        "accounts": accounts,
    }


def _default_logit(f: dict[str, np.ndarray]) -> np.ndarray:
    """Log-odds of default: a scorecard-like additive model with one interaction-ish term."""
    monthly_payment_share = (f["loan"] / f["term"]) / (f["income"] / 12)
    return (
        _INTERCEPT
        - 0.015 * (f["credit"] - 680)
        + 0.05 * (f["dti"] - 18)
        - 0.63 * (np.log(f["income"]) - np.log(52000))
        + 0.125 * (f["rate"] - 12)
        + 2.8 * (monthly_payment_share - 0.06)
        + 0.42 * (f["term"] == 60)
        - 0.017 * (f["age"] - 41)
        + 0.04 * (f["accounts"] - 6)
        + _EMPLOYMENT_RISK[f["employment"]]
        + _PURPOSE_RISK[f["purpose"]]
        + _HOME_RISK[f["home"]]
    )


def generate_loans(rows_per_month: int = 2000, seed: int = 42) -> pd.DataFrame:
    """Return ``12 * rows_per_month`` loan applications for 2024, ordered by application date.

    Pure and deterministic for a given ``(rows_per_month, seed)``: the demo's numbers and the
    tests' expectations depend on it. Values are rounded as they are written to CSV, so the frame
    and the file it produces read back identically.
    """
    if rows_per_month <= 0:
        raise ValueError(f"rows_per_month must be positive, got {rows_per_month}")
    rng = np.random.default_rng(seed)
    months = []
    for month in range(1, 13):
        dates = _month_dates(rng, month, rows_per_month)
        f = _applicants(rng, rows_per_month, drifted=month >= DRIFT_START_MONTH)
        p_default = 1 / (1 + np.exp(-_default_logit(f)))
        defaulted = (rng.random(rows_per_month) < p_default).astype(np.int64)
        flip = rng.random(rows_per_month) < _LABEL_NOISE
        defaulted = np.where(flip, 1 - defaulted, defaulted)

        income = np.round(f["income"], 2)
        income[rng.random(rows_per_month) < INCOME_MISSING_RATE] = np.nan
        dti = np.round(f["dti"], 2)
        dti[rng.random(rows_per_month) < DTI_MISSING_RATE] = np.nan

        months.append(
            pd.DataFrame(
                {
                    "application_date": dates,
                    "age": f["age"],
                    "annual_income": income,
                    "loan_amount": f["loan"],
                    "term_months": f["term"],
                    "interest_rate": np.round(f["rate"], 2),
                    "credit_score": f["credit"],
                    "debt_to_income": dti,
                    "num_open_accounts": f["accounts"],
                    "employment_type": np.array(EMPLOYMENT_TYPES, dtype=object)[f["employment"]],
                    "home_ownership": np.array(HOME_OWNERSHIP, dtype=object)[f["home"]],
                    "purpose": np.array(PURPOSES, dtype=object)[f["purpose"]],
                    TARGET: defaulted,
                }
            )
        )
    df = pd.concat(months, ignore_index=True)
    df.insert(0, "application_id", [f"A{i:06d}" for i in range(1, len(df) + 1)])
    return df[COLUMNS]


def write_bundled_data(data_dir: Path) -> dict[str, Path]:
    """Write ``loans.csv`` (all of 2024) and ``reference.csv`` (Jan-Jun) into ``data_dir``.

    The reference slice is written separately because it is the contract's anchor: the schema is
    derived from it and drift is measured against it, so it must not move when loans.csv does.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    loans = generate_loans()
    in_reference = (loans["application_date"] >= REFERENCE_START) & (
        loans["application_date"] < REFERENCE_END
    )
    paths = {"loans": data_dir / "loans.csv", "reference": data_dir / "reference.csv"}
    csv_options = {"index": False, "date_format": "%Y-%m-%dT%H:%M:%S", "lineterminator": "\n"}
    loans.to_csv(paths["loans"], **csv_options)
    loans[in_reference].to_csv(paths["reference"], **csv_options)
    return paths


def main() -> None:
    """Regenerate the bundled CSVs in the project's ``data/`` folder."""
    data_dir = Path(__file__).resolve().parent.parent / "data"
    for name, path in write_bundled_data(data_dir).items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
