"""What a run version stores besides its record: outputs, data window, reports, lineage.

Everything here is written before ``run.json`` (flows.runs.conclude), so a listed version always
holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flows.links import public_url
from flows.manifest import build_manifest, data_fingerprint
from flows.paths import project_root

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from flows.evaluation import Evaluation
    from flows.inputs import DataWindow
    from flows.notebook import NotebookOutputs
    from flows.runs import Run

WINDOW_FILE = "inputs/data.parquet"
PROFILE_FILE = "reference_profile.json"
DRIFT_TABLE_LIMIT = 50  # per-column drift rows kept in run.json; the report has every column


def store_reports(
    run: Run,
    written: dict[str, Any],
    scored: Evaluation | None = None,
    data: DataWindow | None = None,
) -> dict[str, Any]:
    """Copy the Evidently reports into the version and link them; with ``scored`` and
    ``data``, also record the data validation and store the pictures (flows.figures).

    Returns the drift summary for run.json, with its per-column table (most drifted first).
    """
    from flows.artifacts import drift_table

    for name, files in written.items():
        for path in (files.html, files.json):
            run.put_file(f"reports/{path.name}", path)
        rel = f"reports/{files.html.name}"
        run.links[f"{name} report"] = public_url(run.store, run.version, rel)
    run.put_json("reports/summaries.json", {n: r.summary for n, r in written.items()})
    drift = written.get("data_drift")
    summary = {k: v for k, v in drift.summary.items() if k != "per_column"} if drift else {}
    if drift:
        summary["table"] = drift_table(drift.summary["per_column"])[:DRIFT_TABLE_LIMIT]
    if data is not None:
        run.record["validation"] = validation_record(data, written.get("data_summary"))
    if scored is not None and data is not None:
        store_figures(run, scored, data, summary.get("table") or [])
    return summary


def validation_record(data: DataWindow, profile: Any) -> dict[str, Any]:
    """What the data validation checked, for the run summary (it passed: the run got here)."""
    found = profile.summary if profile is not None else {}
    return {
        "passed": True,
        "rows": len(data.frame),
        "reference_rows": len(data.reference),
        "window": list(data.window),
        "numerical": len(data.schema.numerical),
        "categorical": len(data.schema.categorical),
        **{k: found.get(k) for k in ("missing_share", "duplicated_rows", "constant_columns")},
    }


def store_figures(
    run: Run, scored: Evaluation, data: DataWindow, table: list[dict[str, Any]]
) -> None:
    """The model picture and the most drifted columns' picture, stored and linked.

    A picture that cannot be drawn is logged and left out: drawing never fails the run (storing
    it fails like any other store write).
    """
    from flows.figures import model_figure

    run.record["figures"] = []
    drawn = _drawn(
        run,
        "model",
        lambda: model_figure(
            str(run.record.get("task")),
            scored.candidate,
            scored.champion,
            run.workdir / "figures" / "model.png",
        ),
    )
    if drawn:
        _store_figure(run, "model", *drawn)
    store_drift_figure(run, data.reference, data.frame, table, ("reference", "training window"))


def store_drift_figure(
    run: Run,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    table: list[dict[str, Any]],
    labels: tuple[str, str],
) -> None:
    """The distributions of the most drifted columns (``table``: flows.artifacts.drift_table),
    ``labels`` naming the two sides; none drifted, no picture."""
    from flows.figures import drift_figure

    drifted = [row["column"] for row in table if row.get("drifted")]
    out = run.workdir / "figures" / "drift.png"
    path = _drawn(run, "drift", lambda: drift_figure(reference, current, drifted, out, labels))
    if path is not None:
        _store_figure(run, "drift", f"Most drifted columns: {labels[0]} vs {labels[1]}", path)


def _drawn(run: Run, kind: str, draw: Callable[[], Any]) -> Any:
    try:
        return draw()
    except Exception as exc:  # a picture is an aid: the run's outcome does not depend on it
        logging.getLogger("nbprod").warning("run %s: no %s picture: %s", run.version, kind, exc)
        return None


def _store_figure(run: Run, kind: str, title: str, path: Path) -> None:
    rel = f"figures/{path.name}"
    run.put_file(rel, path, link=title)
    run.record.setdefault("figures", []).append({"kind": kind, "title": title, "path": rel})


def store_lineage(
    run: Run,
    outputs: dict[str, NotebookOutputs],
    data: DataWindow | None,
    scored: Evaluation | None,
) -> dict[str, Any]:
    """Store the notebooks' outputs, the data window and its profile, and the manifest."""
    for stem, out in outputs.items():
        run.store.put_tree(run.version, f"outputs/{stem}", out.output_dir)
        for name, path in out.outputs.items():
            if path.is_file():
                run.fingerprints[f"{stem}.{name}"] = data_fingerprint(path)
    if data is not None and scored is not None:
        from flows.drift import profile_reference

        window = run.workdir / "window.parquet"  # not inputs/: the notebooks' copy lives there
        data.frame.to_parquet(window, index=False)
        run.put_file(WINDOW_FILE, window)
        features = set(scored.features)
        run.put_json(
            PROFILE_FILE,
            profile_reference(
                data.frame,
                [c for c in data.schema.numerical if c in features],
                [c for c in data.schema.categorical if c in features],
            ).to_dict(),
        )
    run.put_json("parameters.json", run.parameters)
    run.put_json("fingerprints.json", run.fingerprints)
    manifest = build_manifest(
        version=run.version,
        notebooks=run.notebooks,
        parameters=run.parameters,
        inputs=run.fingerprints,
        champion=run.record.get("champion_before"),
        project_root=project_root(),
    )
    run.put_json("manifest.json", manifest)
    if "grid" in run.record:
        run.put_json("grid.json", run.record["grid"])
    return manifest
