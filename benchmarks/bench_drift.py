"""P4 worker: nbprod's drift check vs Evidently's DataDriftPreset on synthetic data.

Usage: ``python benchmarks/bench_drift.py ROWS REPEATS EVIDENTLY_REPEATS``; prints one JSON line.
The data: ROWS rows x 20 columns (12 numerical, 8 categorical) for both the reference and the
current window, 5 of the 20 columns shifted in the current window. nbprod's time is
``check_drift`` against a stored profile (what monitoring pays per window); the one-off
``profile_reference`` time is reported separately. Evidently's time is one
``Report([DataDriftPreset()]).run(current, reference)``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
import pandas as pd

NUMERICAL = [f"num_{i}" for i in range(12)]
CATEGORICAL = [f"cat_{i}" for i in range(8)]
SHIFTED = {"num_0", "num_1", "num_2", "cat_0", "cat_1"}


def make_frame(rows: int, seed: int, shifted: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {}
    for i, name in enumerate(NUMERICAL):
        shift = 0.5 if shifted and name in SHIFTED else 0.0
        data[name] = rng.normal(loc=i + shift, scale=1.0 + i / 10, size=rows)
    for i, name in enumerate(CATEGORICAL):
        levels = np.array([f"c{j}" for j in range(3 + i)], dtype=object)
        weights = np.linspace(1.0, 2.0, levels.size)
        if shifted and name in SHIFTED:
            weights = weights[::-1] ** 3
        data[name] = rng.choice(levels, size=rows, p=weights / weights.sum())
    return pd.DataFrame(data)


def main() -> None:
    rows, repeats, ev_repeats = (int(a) for a in sys.argv[1:4])
    reference = make_frame(rows, seed=1, shifted=False)
    current = make_frame(rows, seed=2, shifted=True)

    from flows.drift import check_drift, profile_reference

    started = time.perf_counter()
    profile = profile_reference(reference, NUMERICAL, CATEGORICAL)
    profile_s = time.perf_counter() - started
    nb_times = []
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = check_drift(profile, current)
        nb_times.append(time.perf_counter() - started)
    assert result is not None

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=NUMERICAL, categorical_columns=CATEGORICAL)
    ev_times = []
    snapshot = None
    for _ in range(ev_repeats):
        started = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
        ev_times.append(time.perf_counter() - started)
    ev_count = None
    if snapshot is not None:
        for metric in snapshot.dict().get("metrics", []):
            if "DriftedColumnsCount" in str(metric.get("metric_name", "")):
                value = metric.get("value")
                ev_count = value.get("count") if isinstance(value, dict) else value
    print(
        json.dumps(
            {
                "rows": rows,
                "columns": len(NUMERICAL) + len(CATEGORICAL),
                "nbprod_s": statistics.median(nb_times),
                "nbprod_runs": nb_times,
                "profile_s": profile_s,
                "evidently_s": statistics.median(ev_times),
                "evidently_runs": ev_times,
                "nbprod_drifted": sorted(result.drifted_columns),
                "evidently_drifted_count": ev_count,
            }
        )
    )


if __name__ == "__main__":
    main()
