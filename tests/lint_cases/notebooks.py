"""The case format and the generator that writes a case as a small .ipynb file.

A case is a notebook written for these tests (no third-party notebook or code is copied): its
cells, the pattern of real notebooks it reproduces, and the findings expected, each labelled
``"rule severity cell"`` (cell numbered from 0 over all cells, ``-`` for the whole notebook).
Run ``python tests/lint_cases/notebooks.py OUT_DIR`` to write every case for a look in Jupyter.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARAMS = 'data_path = "../data/rows.csv"\noutput_dir = "out"\nseed = 7'
PYTHON = {"name": "python3", "display_name": "Python 3", "language": "python"}
Expected = tuple[str, str, int | None]


@dataclass(frozen=True)
class Markdown:
    """A markdown cell (it still counts in the cell numbering)."""

    text: str


@dataclass(frozen=True)
class Code:
    """A code cell with metadata of its own: tags (a list, or a string as some tools write
    them), a stored execution count, saved outputs."""

    source: str
    tags: list[str] | str | None = None
    count: int | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)


Cell = str | Markdown | Code


@dataclass(frozen=True)
class Case:
    """One notebook and what lint must say about it.

    ``params``: the source of a first cell tagged ``parameters`` (None: no such cell).
    ``expect``: the findings, as ``"rule severity cell"`` strings. ``skipped``: lint must skip
    the notebook (a non-Python kernel). ``{project}`` in a source is the project's folder.
    """

    name: str
    pattern: str
    cells: list[Cell]
    expect: list[str] = field(default_factory=list)
    params: str | None = PARAMS
    kernel: dict[str, Any] | None = field(default_factory=lambda: dict(PYTHON))
    language_info: dict[str, Any] | None = None
    skipped: bool = False

    def expected(self) -> set[Expected]:
        """The expected findings as (rule, severity, cell)."""
        out = set()
        for label in self.expect:
            rule, severity, cell = label.split()
            out.add((rule, severity, None if cell == "-" else int(cell)))
        return out


def _code(
    source: str,
    tags: list[str] | str | None = None,
    count: int | None = None,
    outputs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {} if tags is None else {"tags": tags}
    return {
        "cell_type": "code",
        "execution_count": count,
        "metadata": metadata,
        "outputs": outputs or [],
        "source": source.splitlines(keepends=True),
    }


def notebook_json(case: Case, project: Path) -> str:
    """The case as .ipynb text (nbformat 4.5, one-space indent, non-ASCII escaped)."""
    cells: list[dict[str, Any]] = []
    if case.params is not None:
        cells.append(_code(case.params, ["parameters"]))
    for cell in case.cells:
        if isinstance(cell, Markdown):
            cells.append({"cell_type": "markdown", "metadata": {}, "source": cell.text})
        elif isinstance(cell, Code):
            cells.append(_code(cell.source, cell.tags, cell.count, cell.outputs))
        else:
            cells.append(_code(cell))
    for number, cell in enumerate(cells):
        cell["id"] = f"cell-{number}"
        if cell["cell_type"] == "code":
            text = "".join(cell["source"]).replace("{project}", str(project))
            cell["source"] = text.splitlines(keepends=True)
    metadata: dict[str, Any] = {}
    if case.kernel is not None:
        metadata["kernelspec"] = case.kernel
    if case.language_info is not None:
        metadata["language_info"] = case.language_info
    notebook = {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(notebook, indent=1) + "\n"


def write_case(case: Case, folder: Path) -> Path:
    """Write the case as ``folder/<name>/notebooks/<name>.ipynb`` in a project of its own
    (``folder/<name>`` holds a pyproject.toml); return the notebook's path."""
    project = folder / case.name
    (project / "notebooks").mkdir(parents=True, exist_ok=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'case'\n")
    path = project / "notebooks" / f"{case.name}.ipynb"
    path.write_text(notebook_json(case, project.resolve()), encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from lint_cases import notebooks  # this file as the module the cases import
    from lint_cases.cases import CASES

    for item in CASES:
        print(notebooks.write_case(item, Path(sys.argv[1])))
