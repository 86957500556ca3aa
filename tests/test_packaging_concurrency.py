"""Processes sharing one BentoML store: nbprod's writes take turns (flows.packaging.store_lock).

BentoML 1.4's store moves a name's ``latest`` pointer with an unlocked read-compare-write, so a
save that overlaps another process's save or delete of the same name raises after the item is
stored (docs/upstream/bentoml.md). As in test_packaging, BentoML runs only in subprocesses with
their own ``BENTOML_HOME``: this file is also the script they run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bento_scripts import isolated_bentoml_env, run_script

pytestmark = pytest.mark.integration

MODEL_NAME = "shared-name"
WRITERS = 4
ROUNDS_EACH = 15
SCHEMA = {"numerical": {"x": {"dtype": "float"}}, "categorical": {}, "target": "y"}


def test_installed_bentoml_still_fails_a_save_that_meets_a_half_written_latest(
    tmp_path: Path,
) -> None:
    """Upstream's defect, made deterministic: ``latest`` as another writer's ``open("w")`` leaves
    it for a moment. If this fails, BentoML fixed its store: re-check docs/upstream/bentoml.md
    (nbprod's lock stays harmless)."""
    observed = run_script(__file__, tmp_path, isolated_bentoml_env(tmp_path / "bentoml"))
    assert observed["raised"].startswith("BentoMLException"), observed
    assert observed["stored_versions"] == 2, observed


def test_concurrent_saves_and_deletes_of_one_model_name_all_succeed(tmp_path: Path) -> None:
    """Four processes each save and delete versions of one model name: no call fails and no
    version is left (without the lock about 40 % of BentoML's own calls fail here)."""
    env = isolated_bentoml_env(tmp_path / "bentoml")
    writers = [
        subprocess.Popen(
            [sys.executable, __file__, str(tmp_path), "writer"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WRITERS)
    ]
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        assert json.loads(out) == {"failed": []}, err
    assert not list((tmp_path / "bentoml" / "models" / MODEL_NAME).glob("*/model.yaml"))


def _half_written_latest(workdir: Path) -> None:
    """Save twice, the second time with ``latest`` empty; write what happened to result.json."""
    import bentoml

    def save() -> None:
        with bentoml.models.create(MODEL_NAME) as model:
            Path(model.path_of("model.joblib")).write_bytes(b"model")

    save()
    store = workdir / "bentoml" / "models" / MODEL_NAME
    (store / "latest").write_text("")
    try:
        save()
        raised = ""
    except Exception as exc:
        raised = f"{type(exc).__name__}: {exc}"
    stored = len(list(store.glob("*/model.yaml")))
    result = {"raised": raised, "stored_versions": stored}
    (workdir / "result.json").write_text(json.dumps(result), encoding="utf-8")


def _save_and_delete_rounds(workdir: Path) -> None:
    """Save and delete one version of MODEL_NAME per round; print the failures as JSON."""
    from flows.errors import PackagingError
    from flows.packaging import delete_model, save_model

    model_file = workdir / f"model-{os.getpid()}.joblib"
    model_file.write_bytes(b"model")
    failed = []
    for _ in range(ROUNDS_EACH):
        try:
            tag = save_model(
                model_file, name=MODEL_NAME, labels={}, metadata={}, feature_schema=SCHEMA
            )
            delete_model(tag)
        except PackagingError as exc:
            failed.append(str(exc))
    print(json.dumps({"failed": failed}))


if __name__ == "__main__":
    if sys.argv[2:] == ["writer"]:
        _save_and_delete_rounds(Path(sys.argv[1]))
    else:
        _half_written_latest(Path(sys.argv[1]))
