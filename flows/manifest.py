"""Lineage: what a run was made from, so any version can be explained and reproduced.

Hashes cover content, not file metadata: a notebook's hash ignores outputs and execution counts,
so re-saving it in Jupyter after a run does not change its identity.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = (
    "nbprod",
    "prefect",
    "papermill",
    "nbformat",
    "ipykernel",
    "evidently",
    "bentoml",
    "scikit-learn",
    "pandas",
    "numpy",
    "pyarrow",
    "pydantic",
    "fsspec",
)
_CHUNK = 1 << 20
# Files read as tables for their shape, with their field separator (parquet has none).
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": ""}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def notebook_content_hash(path: str | Path) -> str:
    """Hash of cell types and sources only: outputs, counts and metadata do not count."""
    raw = json.loads(Path(path).read_text())
    cells = [
        {
            "type": c.get("cell_type"),
            "source": "".join(c["source"])
            if isinstance(c.get("source"), list)
            else c.get("source"),
        }
        for c in raw.get("cells", [])
    ]
    canonical = json.dumps(cells, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def data_fingerprint(path: str | Path) -> dict[str, Any]:
    """Content hash and size of any file; rows and columns too for a table.

    Only ``.csv``, ``.tsv`` and ``.parquet`` files are read as tables: a notebook's other outputs
    (a pickled model, a plot, a text note) have no rows, and parsing them as CSV would invent
    some. pandas (~1 s to import) is imported for tables only.
    """
    path = Path(path)
    info: dict[str, Any] = {
        "path": str(path),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "rows": None,
        "columns": None,
    }
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        return info
    import pandas as pd

    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep=TABLE_SUFFIXES[suffix])
        info.update(rows=len(frame), columns=list(map(str, frame.columns)))
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        pass  # unreadable as a table: the hash still identifies it
    return info


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    # Imported here: importlib.metadata costs ~40 ms, which commands that never compute a
    # cache key or a manifest need not pay.
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(repo: Path) -> dict[str, Any] | None:
    """Commit and dirty flag of the project, or None outside a git checkout."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain"],
                cwd=repo,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            != ""
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def build_manifest(
    *,
    version: str,
    notebooks: Mapping[str, Path],
    parameters: Mapping[str, Mapping[str, Any]],
    inputs: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Any] | None,
    project_root: Path,
) -> dict[str, Any]:
    """The lineage record stored as ``manifest.json`` with every run version."""
    import platform

    return {
        "version": version,
        "notebooks": {
            name: {"path": str(path), "content_sha256": notebook_content_hash(path)}
            for name, path in notebooks.items()
        },
        "parameters": {name: dict(values) for name, values in parameters.items()},
        "inputs": {name: dict(fp) for name, fp in inputs.items()},
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
        },
        "git": git_state(project_root),
        "champion_at_start": (
            {"version": champion.get("version"), "model_tag": champion.get("model_tag")}
            if champion
            else None
        ),
    }
