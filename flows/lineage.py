"""What a run version stores besides its record: outputs, data window, reports, lineage.

Everything here is written before ``run.json`` (flows.runs.conclude), so a listed version always
holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flows.manifest import build_manifest, data_fingerprint
from flows.paths import project_root

if TYPE_CHECKING:
    from flows.evaluation import Evaluation
    from flows.inputs import DataWindow
    from flows.notebook import NotebookOutputs
    from flows.runs import Run

WINDOW_FILE = "inputs/data.parquet"
PROFILE_FILE = "reference_profile.json"


def store_reports(run: Run, written: dict[str, Any]) -> dict[str, Any]:
    """Copy the Evidently reports into the version; returns the drift summary for run.json."""
    for name, files in written.items():
        for path in (files.html, files.json):
            run.put_file(f"reports/{path.name}", path)
        run.links[f"{name} report"] = run.store.uri(run.version, f"reports/{files.html.name}")
    run.put_json("reports/summaries.json", {n: r.summary for n, r in written.items()})
    drift = written.get("data_drift")
    return {k: v for k, v in drift.summary.items() if k != "per_column"} if drift else {}


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
