"""Plan a chain of notebooks from a spec, checking every parameter before any kernel starts.

Each notebook gets the spec's parameters for its stem, then the caller's overrides; the values
nbprod wires itself (``output_dir``, the first notebook's ``data_path``, ``<stem>_path`` of files
earlier notebooks write, the spec's ``target``) are checked as placeholders of the right type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.calls import NotebookCall, plan_notebook
from flows.errors import ParameterError
from flows.notebook import check_parameters, declared_parameters
from flows.runner import expand_grid
from flows.settings import NbprodSettings
from flows.spec import PipelineSpec, resolve_project_path


@dataclass(frozen=True)
class NotebookPlan:
    """One notebook of the chain: its parameters, secrets by reference, and its grid points."""

    path: Path
    parameters: dict[str, Any]
    secrets: dict[str, dict[str, str]]
    points: list[dict[str, Any]]

    @property
    def stem(self) -> str:
        return self.path.stem


def split_overrides(given: dict[str, Any] | None, stems: list[str]) -> dict[str, dict[str, Any]]:
    """``{stem: {...}}`` addresses notebooks by name; a flat dict is for the last notebook."""
    given = dict(given or {})
    if given and all(k in stems and isinstance(v, dict) for k, v in given.items()):
        return given
    return {stems[-1]: given} if given else {}


def plan_chain(
    spec: PipelineSpec,
    *,
    overrides: dict[str, Any] | None = None,
    grid: dict[str, list[Any]] | None = None,
    first_inputs: dict[str, Any] | None = None,
    shared: dict[str, Any] | None = None,
) -> list[NotebookPlan]:
    """The spec's notebooks in run order, every parameter checked against its notebook.

    ``grid`` overrides the spec's grid of the last notebook; ``first_inputs`` are wired into the
    first notebook (``data_path``); ``shared`` into every notebook that declares them (``target``).
    """
    notebooks = [resolve_project_path(nb).resolve() for nb in spec.notebooks]
    stems = [nb.stem for nb in notebooks]
    by_stem = split_overrides(overrides, stems)
    first_inputs = first_inputs or {}
    shared = shared or {}
    plans = []
    for index, nb in enumerate(notebooks):
        declared = declared_parameters(nb)
        params = {**spec.parameters.get(nb.stem, {}), **by_stem.get(nb.stem, {})}
        wired = {**(first_inputs if index == 0 else {}), "output_dir": "."}
        missing = [p for p in wired if p not in declared]
        if missing:
            raise ParameterError(
                f"{nb.name} does not declare {missing} in its parameters cell: every notebook "
                "writes its files to output_dir, and the first one of a training pipeline reads "
                "the data window from data_path"
            )
        wired.update({k: v for k, v in shared.items() if k in declared})
        if index > 0:  # files earlier notebooks write: known only once they ran
            wired.update({p: "." for p in declared if p.endswith("_path") and p not in params})
        secrets = {
            p: ref.model_dump(exclude_none=True) for p, ref in spec.secrets.get(nb.stem, {}).items()
        }
        last = index == len(notebooks) - 1
        points = expand_grid(grid if (last and grid) else spec.grid.get(nb.stem))
        for point in points:
            check_not_wired(nb, {**params, **point}, wired, shared)
            check_parameters(nb, {**params, **point, **wired, **dict.fromkeys(secrets, "")})
        fixed = {k: v for k, v in shared.items() if k in declared}
        plans.append(NotebookPlan(nb, {**params, **fixed}, secrets, points))
    return plans


def check_not_wired(
    notebook: Path, given: dict[str, Any], wired: dict[str, Any], shared: dict[str, Any]
) -> None:
    """A value the pipeline sets itself, or a shared value given differently, is an error."""
    for name, value in shared.items():
        if name in given and given[name] != value:
            raise ParameterError(
                f"{notebook.name}: parameter {name}={given[name]!r} disagrees with the spec's "
                f"{name} {value!r}: nbprod passes the spec's value; remove the parameter"
            )
    clashes = sorted(set(given) & (set(wired) - set(shared)))
    if clashes:
        raise ParameterError(
            f"{notebook.name}: parameter(s) {clashes} are set by the pipeline itself (the data "
            "window and the output folder): change the spec's data instead"
        )


def first_call(
    spec: PipelineSpec, overrides: dict[str, Any] | None, settings: NbprodSettings
) -> NotebookCall | None:
    """The first notebook's call as ``notebook_pipeline`` plans it in a cached run (None: a grid,
    whose points are planned one by one). Nothing is wired into a notebook spec's first notebook.
    """
    first = plan_chain(spec, overrides=overrides)[0]
    if len(first.points) != 1:
        return None
    return plan_notebook(
        first.stem,
        first.path,
        {**first.parameters, **first.points[0]},
        home=settings.home,
        kernel_name=settings.kernel_name,
        secrets=first.secrets,
    )
