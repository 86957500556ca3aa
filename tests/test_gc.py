"""``nbprod gc`` on a run store and BentoML store built by hand: what goes and what stays.

A dead run's partial version, scratch folder, old temp files and packages go; a live run's, an
accepted run's, the champion's and another store's stay; ``--dry-run`` removes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from flows.gc import PROCESS_FILE, TEMP_FILE_MIN_AGE_S, collect, process_record
from flows.store import RunStore

PIPELINE = "churn"


def save_package(version: str) -> tuple[str, str]:
    """A BentoML model labelled with its run version (what packaging writes)."""
    import bentoml

    labels = {"pipeline": PIPELINE, "run_version": version}
    with bentoml.models.create(PIPELINE, labels=labels) as model:
        Path(model.path_of("model.joblib")).write_bytes(b"not a model")
    return str(model.tag), version


def models_of(version: str) -> list[str]:
    import bentoml

    return [
        str(m.tag)
        for m in bentoml.models.list(PIPELINE)
        if (m.info.labels or {}).get("run_version") == version
    ]


@pytest.fixture
def stores(tmp_path: Path) -> tuple[RunStore, Path]:
    store = RunStore(tmp_path / "runs")
    scratch = tmp_path / "scratch"
    dead = {"host": socket.gethostname(), "pid": 2**22 + 7, "process_started": 1.0}
    live = process_record(None)
    elsewhere = {**live, "host": "another-machine"}
    for version, status in (("v1-accepted", "accepted"), ("v2-failed", "failed")):
        store.begin(version)
        store.finalize(version, {"status": status, "pipeline": PIPELINE})
        save_package(version)
    store.set_champion(
        PIPELINE, {"version": "v1-accepted"}, expected=None, reason="gate", triggered_by="t"
    )
    for version, owner in (("v3-dead", dead), ("v4-live", live), ("v5-elsewhere", elsewhere)):
        store.begin(version)
        store.put_json(version, PROCESS_FILE, owner)
        (scratch / version).mkdir(parents=True)
        (scratch / version / PROCESS_FILE).write_text(json.dumps(owner))
        save_package(version)
    save_package("v9-other-store")
    old = time.time() - TEMP_FILE_MIN_AGE_S - 10
    for name in ("old.json.tmp-1", "new.json.tmp-2"):
        stray = tmp_path / "runs" / "pipelines" / PIPELINE / name
        stray.write_text("{")
        os.utime(stray, (old, old) if name.startswith("old") else None)
    return store, scratch


def test_gc_removes_what_dead_and_failed_runs_left_and_nothing_else(
    stores: tuple[RunStore, Path], nbprod_home: Path
) -> None:
    store, scratch = stores
    dry = collect(store, scratch, dry_run=True)
    assert dry.partial_versions == ["v3-dead"]
    assert dry.in_progress == ["v4-live"] and dry.elsewhere == ["v5-elsewhere"]
    assert [Path(p).name for p in dry.scratch] == ["v3-dead"]
    assert [Path(p).name for p in dry.temp_files] == ["old.json.tmp-1"]
    assert sorted(dry.models) == sorted(models_of("v2-failed") + models_of("v3-dead"))
    assert (scratch / "v3-dead").exists() and models_of("v3-dead")  # a dry run removes nothing

    done = collect(store, scratch, dry_run=False)
    assert done.partial_versions == ["v3-dead"]
    assert store.version_folders() == ["v1-accepted", "v2-failed", "v4-live", "v5-elsewhere"]
    assert sorted(p.name for p in scratch.iterdir()) == ["v4-live", "v5-elsewhere"]
    assert models_of("v2-failed") == [] and models_of("v3-dead") == []
    for kept in ("v1-accepted", "v4-live", "v5-elsewhere", "v9-other-store"):
        assert models_of(kept), kept
    pipeline_dir = Path(store.root) / "pipelines" / PIPELINE
    assert [p.name for p in pipeline_dir.glob("*.tmp-*")] == ["new.json.tmp-2"]
    assert store.champion(PIPELINE)["version"] == "v1-accepted"  # type: ignore[index]
    assert collect(store, scratch, dry_run=False).empty()
