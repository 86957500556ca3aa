"""P4: nbprod's drift check vs Evidently's DataDriftPreset, column by column, over several cases.

Usage: ``python benchmarks/bench_drift.py compare ROWS [--cases none,small,...]
[--evidently-cases ...] [--repeats N] [--batch]``; prints one JSON line (the last stdout line)
with per-case times, verdicts and memory, and the totals; progress goes to stderr.

The data are synthetic, ROWS rows x 20 columns for the reference and for every current window:

- 12 numerical columns of different kinds, so that Evidently's default test choice (by column
  type and number of distinct values, which nbprod's check reproduces) is exercised: normal
  (one with 2 % missing values), lognormal (skewed, three spreads), integer-valued with 3 and 5
  distinct values (Jensen-Shannon), integer counts (Poisson, ~15 values), an integer score with
  ~500 distinct values (exact counts in nbprod's profile) and integer amounts with many
  thousands of values (quantiles in nbprod's profile); all other numerical columns get the
  normed Wasserstein distance;
- 8 categorical columns: 2 to 30 levels, one with integer codes, one with rare levels.

The reference is undrifted (seed 1); each case (``CASES``) draws the current window (seed 2)
with some columns shifted by a given strength, some just below and some just above the drift
thresholds, so that the per-column verdicts are a real test. Agreement is the share of
(case, column) pairs on which nbprod's verdict (``check_drift(...).columns[c].drifted``) and
Evidently's (the per-column ``ValueDrift`` test: status FAIL = drift detected) are the same.

Every measurement runs in its own process, which reports its peak RSS (``ru_maxrss``) and its
RSS after imports and after the data frames are built:

- ``profile``: the one-off ``profile_reference`` on the reference, written to JSON;
- ``nbprod``: loads that JSON profile, builds the current window, runs ``check_drift`` REPEATS
  times (what monitoring pays per window: the reference frame is not loaded);
- ``evidently``: builds reference and current window, one
  ``Report([DataDriftPreset()], include_tests=True).run(current, reference)``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NUMERICAL = [
    "n_normal_0",
    "n_normal_1",
    "n_normal_2",
    "n_normal_nan",
    "n_lognormal_0",
    "n_lognormal_1",
    "n_lognormal_2",
    "n_int3",
    "n_int5",
    "n_poisson",
    "n_score",
    "n_amount",
]
CATEGORICAL = ["c_binary", "c_3", "c_4", "c_6", "c_8", "c_code", "c_30", "c_rare"]

# Case -> column -> shift strength (0 = drawn as in the reference). What a strength means per
# column kind is in ``numerical`` and ``categorical``; for a normal column it is the shift of
# the mean in standard deviations, which is also the normed Wasserstein distance (threshold 0.1).
CASES: dict[str, dict[str, float]] = {
    "none": {},
    "small": {
        "n_normal_0": 0.05,
        "n_normal_1": 0.08,
        "n_normal_2": 0.12,
        "n_normal_nan": 0.2,
        "n_lognormal_0": 0.04,
        "n_lognormal_1": 0.14,
        "n_lognormal_2": 0.3,
        "n_int3": 0.15,
        "n_int5": 0.4,
        "n_poisson": 0.03,
        "n_score": 0.15,
        "n_amount": 0.08,
    },
    "large": {
        **{name: 0.6 for name in NUMERICAL},
        **{name: 0.8 for name in CATEGORICAL[:5]},
    },
    "categorical": {
        "c_binary": 0.1,
        "c_3": 0.25,
        "c_4": 0.4,
        "c_6": 0.6,
        "c_8": 1.0,
        "c_code": 0.3,
        "c_30": 0.15,
        "c_rare": 0.5,
    },
    "half": {
        **{name: 0.4 for name in NUMERICAL[::2]},
        **{name: 0.7 for name in CATEGORICAL[1::2]},
    },
}


# --- data ----------------------------------------------------------------------------------------


def _mix(p: Any, strength: float) -> Any:
    """Move a distribution towards its mirror image: 0 = unchanged, 1 = reversed."""
    mixed = (1 - strength) * p + strength * p[::-1]
    return mixed / mixed.sum()


def numerical(name: str, rng: Any, rows: int, s: float) -> Any:
    import numpy as np

    if name.startswith("n_normal"):
        i = int(name[-1]) if name[-1].isdigit() else 3
        scale = 1.0 + i / 2
        values = rng.normal(10.0 * i + s * scale, scale, rows)
        if name == "n_normal_nan":
            values[rng.random(rows) < 0.02] = np.nan
        return values
    if name.startswith("n_lognormal"):  # incomes: s shifts the log, i.e. scales by e^s
        sigma = (0.5, 1.0, 1.5)[int(name[-1])]
        return rng.lognormal(10.0 + s, sigma, rows)
    if name == "n_int3":
        return rng.choice(3, size=rows, p=_mix(np.array([0.6, 0.3, 0.1]), s)).astype(np.int64)
    if name == "n_int5":
        p = np.array([0.35, 0.25, 0.2, 0.12, 0.08])
        return rng.choice(np.arange(1, 6), size=rows, p=_mix(p, s)).astype(np.int64)
    if name == "n_poisson":
        return rng.poisson(4.0 * (1 + s), rows).astype(np.int64)
    if name == "n_score":  # a credit score: integers 300..850
        return np.clip(np.round(rng.normal(680 + 60 * s, 60, rows)), 300, 850).astype(np.int64)
    if name == "n_amount":  # loan amounts in whole currency units: many thousand values
        return np.round(rng.gamma(2.0, 5000.0 * (1 + s), rows)).astype(np.int64)
    raise ValueError(name)


CATEGORY_WEIGHTS: dict[str, list[float]] = {
    "c_binary": [0.7, 0.3],
    "c_3": [0.5, 0.3, 0.2],
    "c_4": [0.4, 0.3, 0.2, 0.1],
    "c_6": [1, 2, 3, 4, 5, 6],
    "c_8": [8, 7, 6, 5, 4, 3, 2, 1],
    "c_code": [0.1, 0.4, 0.3, 0.15, 0.05],
    "c_30": [1 + j % 7 for j in range(30)],
    "c_rare": [1 / (j + 1) ** 2 for j in range(12)],
}


def categorical(name: str, rng: Any, rows: int, s: float) -> Any:
    import numpy as np

    weights = np.array(CATEGORY_WEIGHTS[name], dtype="float64")
    p = _mix(weights / weights.sum(), s)
    if name == "c_code":  # integer codes, declared categorical
        return rng.choice(np.arange(1, 6), size=rows, p=p).astype(np.int64)
    levels = np.array([f"{name}_{j}" for j in range(weights.size)], dtype=object)
    return levels[rng.choice(weights.size, size=rows, p=p)]


def make_frame(rows: int, seed: int, case: str) -> Any:
    import numpy as np
    import pandas as pd

    shifts = CASES[case]
    rng = np.random.default_rng(seed)
    data = {name: numerical(name, rng, rows, shifts.get(name, 0.0)) for name in NUMERICAL}
    data |= {name: categorical(name, rng, rows, shifts.get(name, 0.0)) for name in CATEGORICAL}
    return pd.DataFrame(data)


def reference_frame(rows: int) -> Any:
    return make_frame(rows, seed=1, case="none")


def current_frame(rows: int, case: str) -> Any:
    return make_frame(rows, seed=2, case=case)


# --- memory ---------------------------------------------------------------------------------------


def rss_kib() -> int:
    """This process's resident set size now, in KiB (Linux)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return peak_kib()


def peak_kib() -> int:
    """This process's peak resident set size so far, in KiB (ru_maxrss is in KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# --- the workers (one process each) -----------------------------------------------------------


def work_profile(rows: int, out: Path) -> dict[str, Any]:
    import numpy  # noqa: F401  (imported before the first RSS reading, as by the other workers)
    import pandas  # noqa: F401

    from flows.drift import profile_reference

    imports = rss_kib()
    reference = reference_frame(rows)
    data = rss_kib()
    started = time.perf_counter()
    profile = profile_reference(reference, NUMERICAL, CATEGORICAL)
    profile_s = time.perf_counter() - started
    out.write_text(json.dumps(profile.to_dict()))
    return {
        "profile_s": profile_s,
        "profile_kb": out.stat().st_size / 1000,
        "rss_imports_kib": imports,
        "rss_data_kib": data,
        "peak_kib": peak_kib(),
    }


def work_nbprod(rows: int, case: str, profile_path: Path, repeats: int) -> dict[str, Any]:
    import numpy  # noqa: F401  (imported before the first RSS reading)
    import pandas  # noqa: F401

    # check_drift imports scipy lazily: import it here, so that no timed run pays for it.
    import scipy.spatial.distance
    import scipy.stats  # noqa: F401

    from flows.drift import ReferenceProfile, check_drift

    imports = rss_kib()
    started = time.perf_counter()
    profile = ReferenceProfile.from_dict(json.loads(profile_path.read_text()))
    load_s = time.perf_counter() - started
    current = current_frame(rows, case)
    data = rss_kib()
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = check_drift(profile, current)
        times.append(time.perf_counter() - started)
    assert result is not None
    columns = {
        name: {
            "drifted": c.drifted,
            "method": c.method_name,
            "score": c.score,
            "threshold": c.threshold,
        }
        for name, c in result.columns.items()
    }
    return {
        "s": statistics.median(times),
        "runs": times,
        "profile_load_s": load_s,
        "verdict": result.verdict,
        "columns": columns,
        "rss_imports_kib": imports,
        "rss_data_kib": data,
        "peak_kib": peak_kib(),
    }


def evidently_verdict(method: str, score: float, threshold: float) -> bool:
    """Evidently 0.7's rule (legacy/calculations/stattests): K-S p <= t, other p-values p < t,
    distances >= t. Only used when the snapshot carries no per-column test."""
    if "p_value" in method:
        return score <= threshold if method.startswith("K-S") else score < threshold
    return score >= threshold


def evidently_columns(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-column method, score, threshold and verdict from a DataDriftPreset snapshot dict."""
    columns: dict[str, dict[str, Any]] = {}
    by_id: dict[str, str] = {}
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith(":ValueDrift"):
            continue
        name = config["column"]
        by_id[metric["id"]] = name
        columns[name] = {
            "method": config.get("method"),
            "score": metric.get("value"),
            "threshold": config.get("threshold"),
            "drifted": evidently_verdict(config["method"], metric["value"], config["threshold"]),
            "verdict_from": "rule",
        }
    for test in snapshot.get("tests", []):
        name = by_id.get(test.get("metric_config", {}).get("metric_id"))
        if name is not None and test.get("id") == "drift":
            drifted = test["status"] == "FAIL"
            same = drifted == columns[name]["drifted"]
            columns[name] |= {"drifted": drifted, "verdict_from": "test" if same else "test!=rule"}
    return columns


def work_evidently(rows: int, cases: list[str]) -> dict[str, Any]:
    """One Report per case against the same reference; peaks are this process's so far."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    imports = rss_kib()
    reference = reference_frame(rows)
    definition = DataDefinition(numerical_columns=NUMERICAL, categorical_columns=CATEGORICAL)
    results: dict[str, Any] = {}
    for case in cases:
        current = current_frame(rows, case)
        data = rss_kib()
        started = time.perf_counter()
        snapshot = Report([DataDriftPreset()], include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
        elapsed = time.perf_counter() - started
        results[case] = {
            "s": elapsed,
            "columns": evidently_columns(snapshot.dict()),
            "rss_imports_kib": imports,
            "rss_data_kib": data,
            "peak_kib": peak_kib(),
        }
        del snapshot, current
    return results


# --- the driver ------------------------------------------------------------------------------


def run_worker(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"bench_drift {' '.join(args)} failed (rc {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def log(message: str) -> None:
    print(f"[bench_drift] {message}", file=sys.stderr, flush=True)


def compare_case(nb: dict[str, Any], ev: dict[str, Any] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "nbprod": nb,
        "evidently": ev,
        "nbprod_drifted": sorted(c for c, v in nb["columns"].items() if v["drifted"]),
    }
    if ev is None:
        return entry
    compared = [c for c in nb["columns"] if c in ev["columns"]]
    differ = [c for c in compared if nb["columns"][c]["drifted"] != ev["columns"][c]["drifted"]]
    return entry | {
        "evidently_drifted": sorted(c for c, v in ev["columns"].items() if v["drifted"]),
        "compared": len(compared),
        "agree": len(compared) - len(differ),
        "same_method": sum(
            nb["columns"][c]["method"] == ev["columns"][c]["method"] for c in compared
        ),
        "disagreements": [
            {"column": c, "nbprod": nb["columns"][c], "evidently": ev["columns"][c]} for c in differ
        ],
    }


def compare(
    rows: int, cases: list[str], ev_cases: list[str], repeats: int, batch: bool = False
) -> dict[str, Any]:
    """Profile once; per case nbprod, then Evidently, each in its own process (interleaved).

    With ``batch``, one Evidently process runs all its cases after nbprod's (saves Evidently's
    ~9 s import per case; its peak is then the largest over its cases).
    """
    with tempfile.TemporaryDirectory(prefix="nbprod-drift-") as tmp:
        profile_path = Path(tmp) / "profile.json"
        profile = run_worker(["profile", str(rows), str(profile_path)])
        log(f"{rows} rows: profile_reference {profile['profile_s']:.2f} s")
        nb_runs: dict[str, Any] = {}
        ev_runs: dict[str, Any] = {}
        for case in cases:
            nb_runs[case] = run_worker(["nbprod", str(rows), case, str(profile_path), str(repeats)])
            log(f"{case}: nbprod {nb_runs[case]['s']:.3f} s")
            if case in ev_cases and not batch:
                ev_runs |= run_worker(["evidently", str(rows), case])
                log(f"{case}: Evidently {ev_runs[case]['s']:.2f} s")
        if batch and ev_cases:
            ev_runs = run_worker(["evidently", str(rows), ",".join(ev_cases)])
            log("Evidently " + ", ".join(f"{c} {r['s']:.2f} s" for c, r in ev_runs.items()))
    per_case = {case: compare_case(nb_runs[case], ev_runs.get(case)) for case in cases}
    for case, entry in per_case.items():
        if entry["evidently"] is not None:
            log(
                f"{case}: drifted columns nbprod {len(entry['nbprod_drifted'])}, Evidently "
                f"{len(entry['evidently_drifted'])}; verdicts agree {entry['agree']}/"
                f"{entry['compared']}"
            )
    both = [c for c in cases if per_case[c]["evidently"] is not None]
    agree = sum(per_case[c]["agree"] for c in both)
    compared = sum(per_case[c]["compared"] for c in both)
    nbprod_s = sum(per_case[c]["nbprod"]["s"] for c in both)
    evidently_s = sum(per_case[c]["evidently"]["s"] for c in both)
    return {
        "rows": rows,
        "columns": len(NUMERICAL) + len(CATEGORICAL),
        "cases": cases,
        "evidently_cases": both,
        "repeats": repeats,
        "profile": profile,
        "per_case": per_case,
        "agree": agree,
        "compared": compared,
        "agreement": agree / compared if compared else None,
        "same_method": sum(per_case[c]["same_method"] for c in both),
        # Speed over the cases both ran: the sum of nbprod's per-case medians vs Evidently's.
        "nbprod_s": nbprod_s,
        "evidently_s": evidently_s,
        "speedup": evidently_s / nbprod_s if both and nbprod_s else None,
        "speedup_min": min(
            (per_case[c]["evidently"]["s"] / per_case[c]["nbprod"]["s"] for c in both),
            default=None,
        ),
        "nbprod_case_s": {c: per_case[c]["nbprod"]["s"] for c in cases},
        "nbprod_peak_kib": max(per_case[c]["nbprod"]["peak_kib"] for c in cases),
        "nbprod_data_kib": max(per_case[c]["nbprod"]["rss_data_kib"] for c in cases),
        "nbprod_imports_kib": max(per_case[c]["nbprod"]["rss_imports_kib"] for c in cases),
        "evidently_peak_kib": max(
            (per_case[c]["evidently"]["peak_kib"] for c in both), default=None
        ),
        "evidently_data_kib": max(
            (per_case[c]["evidently"]["rss_data_kib"] for c in both), default=None
        ),
        "evidently_imports_kib": max(
            (per_case[c]["evidently"]["rss_imports_kib"] for c in both), default=None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmp_ = sub.add_parser("compare", help="the whole measurement (what benchmarks/run.py calls)")
    cmp_.add_argument("rows", type=int)
    cmp_.add_argument("--cases", default=",".join(CASES))
    cmp_.add_argument("--evidently-cases", default=None, help="default: all --cases; '' = none")
    cmp_.add_argument("--repeats", type=int, default=3, help="check_drift runs per case")
    cmp_.add_argument("--batch", action="store_true", help="one Evidently process for all cases")
    prof = sub.add_parser("profile")
    prof.add_argument("rows", type=int)
    prof.add_argument("out", type=Path)
    nb = sub.add_parser("nbprod")
    nb.add_argument("rows", type=int)
    nb.add_argument("case", choices=list(CASES))
    nb.add_argument("profile", type=Path)
    nb.add_argument("repeats", type=int)
    ev = sub.add_parser("evidently")
    ev.add_argument("rows", type=int)
    ev.add_argument("cases", help="comma-separated")
    args = parser.parse_args()

    if args.command == "compare":
        cases = [c for c in args.cases.split(",") if c]
        ev_cases = cases if args.evidently_cases is None else args.evidently_cases.split(",")
        unknown = sorted(set(cases + [c for c in ev_cases if c]) - set(CASES))
        if unknown:
            sys.exit(f"unknown cases {unknown}: choose from {list(CASES)}")
        ev_cases = [c for c in ev_cases if c in cases]
        result = compare(args.rows, cases, ev_cases, args.repeats, batch=args.batch)
    elif args.command == "profile":
        result = work_profile(args.rows, args.out)
    elif args.command == "nbprod":
        result = work_nbprod(args.rows, args.case, args.profile, args.repeats)
    else:
        result = work_evidently(args.rows, args.cases.split(","))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
