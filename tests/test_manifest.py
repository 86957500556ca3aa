from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nbformat
import pandas as pd

from flows.manifest import (
    build_manifest,
    data_fingerprint,
    file_sha256,
    git_state,
    notebook_content_hash,
)


def write_notebook(path: Path, source: str, *, outputs: bool = False) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(source)
    if outputs:
        cell.execution_count = 7
        cell.outputs = [nbformat.v4.new_output("stream", text="hello\n")]
        nb.metadata["widgets"] = {"anything": 1}
    nb.cells = [cell]
    nbformat.write(nb, path)
    return path


def test_notebook_hash_ignores_outputs_and_metadata(tmp_path: Path) -> None:
    clean = write_notebook(tmp_path / "a.ipynb", "x = 1")
    executed = write_notebook(tmp_path / "b.ipynb", "x = 1", outputs=True)
    changed = write_notebook(tmp_path / "c.ipynb", "x = 2")
    assert notebook_content_hash(clean) == notebook_content_hash(executed)
    assert notebook_content_hash(clean) != notebook_content_hash(changed)


def test_data_fingerprint_shape_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}).to_csv(path, index=False)
    fp = data_fingerprint(path)
    assert fp["rows"] == 3 and fp["columns"] == ["a", "b"]
    assert fp["sha256"] == file_sha256(path) and len(fp["sha256"]) == 64
    path.write_text(path.read_text() + "4,w\n")
    assert data_fingerprint(path)["sha256"] != fp["sha256"]


def test_only_tables_get_a_shape(tmp_path: Path) -> None:
    """A notebook's other outputs (a model, a note) are hashed, never parsed as CSV."""
    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    for name in ("t.parquet", "t.tsv"):
        fp = data_fingerprint(tmp_path / name)
        assert (fp["rows"], fp["columns"]) == (2, ["a", "b"]), name
    note = tmp_path / "notes.txt"
    note.write_text("a,b\n1,2\n")  # CSV-like text in a file that is not a table
    model = tmp_path / "model.joblib"
    model.write_bytes(b"\x80\x04binary")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    for path in (note, model, broken):
        fp = data_fingerprint(path)
        assert fp["rows"] is None and fp["columns"] is None, path.name
        assert fp["sha256"] == file_sha256(path) and fp["bytes"] == path.stat().st_size


def test_git_state_inside_and_outside_a_repo(tmp_path: Path) -> None:
    assert git_state(tmp_path) is None
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "f"], cwd=tmp_path, check=True
    )
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "m"],
        cwd=tmp_path,
        check=True,
    )
    state = git_state(tmp_path)
    assert state is not None and len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "f").write_text("2")
    assert git_state(tmp_path)["dirty"] is True  # type: ignore[index]


def test_build_manifest_has_full_lineage(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "train.ipynb", "seed = 1")
    data = tmp_path / "d.csv"
    data.write_text("a\n1\n")
    manifest = build_manifest(
        version="v1",
        notebooks={"train": nb},
        parameters={"train": {"seed": 1}},
        inputs={"data": data_fingerprint(data)},
        champion={"version": "v0", "model_tag": "m:abc", "metrics": {}},
        project_root=tmp_path,
    )
    assert manifest["notebooks"]["train"]["content_sha256"] == notebook_content_hash(nb)
    assert manifest["parameters"] == {"train": {"seed": 1}}
    assert manifest["inputs"]["data"]["sha256"] == file_sha256(data)
    assert manifest["environment"]["packages"]["pandas"] == pd.__version__
    assert manifest["environment"]["packages"]["prefect"]
    assert manifest["champion_at_start"] == {"version": "v0", "model_tag": "m:abc"}
    assert manifest["git"] is None
    json.dumps(manifest)  # serialisable as stored
