"""Package the benchmark's trained model as the training flow packages a champion; print tags.

Usage: ``python benchmarks/package_bento.py MODEL_JOBLIB OUT_JSON SPEC [HOLDOUT [VERSION]]`` with
BENTOML_HOME and NBPROD_PROJECT_DIR set (SPEC is project-relative, e.g.
``deployments/training.yaml``; HOLDOUT the prepare notebook's ``holdout.parquet``; VERSION the
bento's version, default ``v-bench``). The same call as the flow's release step
(``flows.packaging.package_model``, bento named for the pipeline, the model's ONNX conversion
checked on the holdout rows, with nbprod's defaults: ONNX Runtime unless
``NBPROD_ONNX_RUNTIME=off``): the feature schema is derived from the spec's reference data with
its target, id and time columns, restricted to the columns the model was fit on. OUT_JSON gets
the model and bento tags, the task, the feature columns (what a request record carries) and the
runtime packaging chose.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT_VERSION = "v-bench"


def main() -> None:
    import joblib
    import pandas as pd

    from flows.packaging import package_model, packaged_runtime
    from flows.schema import derive_schema, read_table
    from flows.settings import load_settings
    from flows.spec import load_spec, resolve_project_path

    model_path, out, spec_file = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    holdout = pd.read_parquet(sys.argv[4]) if len(sys.argv) > 4 else None
    version = sys.argv[5] if len(sys.argv) > 5 else DEFAULT_VERSION
    spec = load_spec(resolve_project_path(spec_file))
    reference_path = spec.data.get("reference_path") or spec.data["data_path"]
    reference = read_table(
        resolve_project_path(reference_path), dataset="reference", datetime_column=spec.time_column
    )
    schema = derive_schema(
        reference, target=spec.target, datetime_column=spec.time_column, id_columns=spec.id_columns
    )
    features = [str(c) for c in joblib.load(model_path).feature_names_in_]
    feature_schema = schema.feature_schema(features)
    metadata = {
        "run_version": version,
        "pipeline": spec.name,
        "task": spec.task,
        "target": spec.target,
        "id_columns": list(spec.id_columns),
        "time_column": spec.time_column,
        "metrics": {},
    }
    model_tag, bento_tag = package_model(
        model_path,
        pipeline=spec.name,
        model_name=spec.resolved_model_name,
        version=version,
        metadata=metadata,
        feature_schema=feature_schema,
        bentos_dir=load_settings().bentos_dir,
        holdout=holdout,
    )
    out.write_text(
        json.dumps(
            {
                "model_tag": model_tag,
                "bento_tag": bento_tag,
                "task": spec.task,
                "features": [*feature_schema["numerical"], *feature_schema["categorical"]],
                "non_features": list(spec.non_feature_columns),
                "data_path": str(resolve_project_path(spec.data["data_path"])),
                "runtime": packaged_runtime(model_tag),
            }
        )
    )


if __name__ == "__main__":
    main()
