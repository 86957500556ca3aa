"""``make demo``: the whole idea in two runs on the bundled data.

Run 1 trains on January–September 2024 and, with no champion yet, is accepted, packaged as a
bento and becomes the champion. Run 2 trains a deliberately weakened configuration on the same
window; the gate compares it with the champion on the same holdout rows and rejects it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from flows.cli import prepare_environment

DEGRADED = {"n_estimators": 5, "max_depth": 1, "learning_rate": 0.05, "train_fraction": 0.05}


def _say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def _bento_path(tag: str) -> str:
    import bentoml

    return str(bentoml.get(tag).path)


def run_demo() -> int:
    prepare_environment()
    from flows.errors import NbprodError
    from flows.pipeline import training_pipeline
    from flows.settings import load_settings
    from flows.store import RunStore

    settings = load_settings()
    store = RunStore(settings.resolved_run_store_url)
    try:
        _say("Run 1: train on 2024-01..2024-09 with the notebook defaults")
        first: dict[str, Any] = training_pipeline(triggered_by="demo")
        _say(f"Run 1 {first['status']}: " + "; ".join(first.get("reasons") or []))
        _say(f"Run 2: a degraded configuration {DEGRADED}")
        second: dict[str, Any] = training_pipeline(train_params=DEGRADED, triggered_by="demo")
        _say(f"Run 2 {second['status']}: " + "; ".join(second.get("reasons") or []))
    except NbprodError as exc:
        print(f"nbprod demo: error: {exc}", file=sys.stderr)
        return 1

    champion = store.champion()
    print("\nWhat was stored:")
    for record in (first, second):
        v = record["version"]
        print(f"  run {v} [{record['status']}]")
        print(
            f"    reports:    {store.uri(v, 'reports')}/"
            "{data_summary,data_drift,model_performance}.html"
        )
        print(f"    notebooks:  {store.uri(v, 'notebooks')}/{{prepare,train}}.html (and .ipynb)")
        print(f"    lineage:    {store.uri(v, 'manifest.json')}")
    if champion:
        print(f"\nChampion: {champion['version']}  model {champion['model_tag']}")
        print(f"  bento:    {champion['bento_tag']}  at {_bento_path(champion['bento_tag'])}")
        print("\nServe it (answers on http://127.0.0.1:3000, POST /predict):")
        print(
            f"  BENTOML_HOME={os.environ.get('BENTOML_HOME', '~/bentoml')} "
            f".venv/bin/bentoml serve {champion['bento_tag']} --host 127.0.0.1 --port 3000"
        )
    print("\nList runs: .venv/bin/nbprod runs    Inspect one: .venv/bin/nbprod show VERSION")
    ok = first["status"] == "accepted" and second["status"] == "rejected"
    if not ok:
        print("demo: expected run 1 accepted and run 2 rejected", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_demo())
