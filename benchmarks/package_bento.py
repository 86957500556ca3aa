"""Package the benchmark's trained model as the champion bento would be packaged; print tags.

Usage: ``python benchmarks/package_bento.py MODEL_JOBLIB OUT_JSON`` with BENTOML_HOME set.
Same calls as the training pipeline's package-model task (flows.packaging.save_model and
build_bento from bentos/, feature schema derived from data/reference.csv).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    from flows.packaging import build_bento, save_model
    from flows.schema import derive_schema, read_table

    model_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    reference = read_table(
        REPO / "data" / "reference.csv", dataset="reference", datetime_column="application_date"
    )
    schema = derive_schema(reference, target="defaulted", datetime_column="application_date")
    labels = {"run_version": "v-bench"}
    model_tag = save_model(
        model_path,
        name="nbprod_loan_default",
        labels=labels,
        metadata={"run_version": "v-bench", "metrics": {}},
        feature_schema=schema.feature_schema(),
    )
    bento_tag = build_bento(model_tag, bentos_dir=REPO / "bentos", version="v-bench", labels=labels)
    features = [*schema.feature_schema()["numerical"], *schema.feature_schema()["categorical"]]
    out.write_text(
        json.dumps({"model_tag": model_tag, "bento_tag": bento_tag, "features": features})
    )


if __name__ == "__main__":
    main()
