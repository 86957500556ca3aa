"""Is a notebook chain ready to be scheduled? The checks ``nbprod promote`` runs before it writes.

- the notebook contract of a training pipeline, statically: the first notebook declares
  ``data_path`` and ``output_dir``, every later one ``output_dir``;
- the promoted parameters: not one the flow sets itself, not a ``target`` that differs from the
  pipeline's, declared by the notebook and of its type (:func:`flows.notebook.check_parameters`);
- ``nbprod lint`` findings, and ``nbprod repro``: each notebook run twice in fresh kernels.

Each check returns one line per problem, prefixed with what it is about, so ``promote`` can list
them all at once. Only the standard library is imported at module level.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flows.errors import NbprodError, ParameterError

FIRST_INPUT = "data_path"
OUTPUT_DIR = "output_dir"
TARGET_PARAMETER = "target"
Chain = list[tuple[str, Path]]  # (project path, absolute path) per notebook, in run order


def declared_or_empty(notebook: Path) -> dict[str, Any]:
    """Declared parameters, or {} when the notebook has none (lint reports why)."""
    from flows.notebook import declared_parameters

    try:
        return declared_parameters(notebook)
    except ParameterError:
        return {}


def route_parameters(
    params: Mapping[str, Any], chain: Chain, declared: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``--param`` values per notebook stem: to every notebook declaring the name; a name no
    notebook declares goes to the last one, whose check then reports it as unknown."""
    routed: dict[str, dict[str, Any]] = {path.stem: {} for _, path in chain}
    last = chain[-1][1].stem
    for key, value in params.items():
        takers = [path.stem for _, path in chain if key in declared[path.stem]] or [last]
        for stem in takers:
            routed[stem][key] = value
    return routed


def contract_problems(flow: str, chain: Chain, declared: dict[str, dict[str, Any]]) -> list[str]:
    """The training flow's notebook contract, checked statically: one line per miss."""
    if flow != "training":
        return []
    problems = []
    first_rel, first = chain[0]
    if FIRST_INPUT not in declared[first.stem]:
        problems.append(
            f"contract: {first_rel} declares no {FIRST_INPUT} parameter: the first notebook of "
            f"a training pipeline receives the data window as {FIRST_INPUT} (add "
            f'`{FIRST_INPUT} = "data.csv"` to its parameters cell)'
        )
    for rel, path in chain:
        if OUTPUT_DIR not in declared[path.stem]:
            problems.append(
                f"contract: {rel} declares no {OUTPUT_DIR} parameter: every notebook writes its "
                f'files (model, holdout) there (add `{OUTPUT_DIR} = "out"` to its parameters cell)'
            )
    return problems


def parameter_problems(
    flow: str, index: int, notebook: Path, params: dict[str, Any], target: str | None
) -> list[str]:
    """Names the flow sets, the target, unknown names and wrong types, checked statically."""
    from flows.notebook import check_parameters

    problems = []
    stem = notebook.stem
    own = {OUTPUT_DIR} | ({FIRST_INPUT} if flow == "training" and index == 0 else set())
    reserved = sorted(set(params) & own)
    if reserved:
        problems.append(
            f"parameters: {', '.join(reserved)} of {stem} are set by the {flow} flow itself "
            "and cannot be promoted"
        )
    given = params.get(TARGET_PARAMETER)
    if target is not None and given is not None and given != target:
        problems.append(
            f"parameters: --param {TARGET_PARAMETER}={given} for {stem} differs from the "
            f"pipeline's target {target!r} (--target): nbprod passes the target to notebooks "
            f"declaring `{TARGET_PARAMETER}`; drop the --param"
        )
    try:
        check_parameters(notebook, {k: v for k, v in params.items() if k not in reserved})
    except ParameterError as exc:
        problems.append(f"parameters: {exc}")
    return problems


def lint_findings(chain: Chain) -> tuple[list[str], list[str]]:
    """(errors, warnings), one line per finding, prefixed with the notebook's project path."""
    from flows.lint import lint_notebook

    errors, warnings = [], []
    for rel, path in chain:
        report = lint_notebook(path)
        for f in report.findings:
            line = f"lint {rel} {f.location}: [{f.rule}] {f.message} (fix: {f.fix})"
            (errors if f.severity == "error" else warnings).append(line)
    return errors, warnings


def repro_findings(
    flow: str,
    chain: Chain,
    params: dict[str, dict[str, Any]],
    progress: Callable[[str], None] | None,
    first_inputs: dict[str, Any],
    shared: dict[str, Any],
) -> tuple[list[str], list[str]]:
    """(problems, notes) from running each notebook twice in fresh kernels.

    A training chain is checked step by step, as the flow runs it: the first notebook on the
    data file, each later one on the files its predecessors wrote in their first run (as
    ``<stem>_path`` when it declares it). ``shared`` values (the target) go to every notebook
    declaring them. Re-running the whole chain per repetition would multiply the (slow)
    training runs for no extra information.
    """
    from flows.notebook import read_outputs
    from flows.repro import check_reproducibility, render_repro
    from flows.settings import load_settings

    settings = load_settings()
    problems: list[str] = []
    notes: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="nbprod-promote-"))
    written: dict[str, Path] = {}  # files earlier notebooks wrote, by stem
    for index, (rel, path) in enumerate(chain):
        declared = declared_or_empty(path)
        wired = dict(first_inputs) if index == 0 else {}
        wired.update({k: v for k, v in shared.items() if k in declared})
        wired.update({f"{s}_path": str(p) for s, p in written.items() if f"{s}_path" in declared})
        run_params = {**params.get(path.stem, {}), **wired}
        run_params.pop(OUTPUT_DIR, None)

        def step(message: str, rel: str = rel) -> None:
            if progress:
                progress(f"repro {rel}: {message}")

        try:
            report = check_reproducibility(
                path,
                run_params,
                kernel_name=settings.kernel_name,
                timeout_s=settings.execution_timeout_s,
                workdir=base / path.stem,
                progress=step,
            )
        except NbprodError as exc:  # bad parameters, no output_dir: a finding, not a crash
            problems.append(f"repro {rel}: not run: {exc}")
            break
        # render_repro names the notebook by its absolute path; the spec uses project paths.
        text = f"repro {rel}: " + render_repro(report).removeprefix(f"{report.notebook}: ")
        if report.ok:
            notes.append(text.splitlines()[0])
        else:
            problems.append(text.replace("\n", "\n    "))
        if flow == "training" and index < len(chain) - 1:
            if report.failures:
                notes.append(f"repro: {', '.join(r for r, _ in chain[index + 1 :])} not run")
                break
            outputs = read_outputs(path.name, base / path.stem / "run-1" / "outputs")
            written.update({stem: file for stem, file in outputs.outputs.items()})
    if not problems:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    else:
        notes.append(f"repro runs kept for inspection in {base}")
    return problems, notes
