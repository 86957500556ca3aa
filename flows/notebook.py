"""Running notebooks under the notebook contract.

The contract: a notebook declares its inputs in a cell tagged ``parameters`` (plain assignments
with literal defaults, one of them ``output_dir``) and writes its files into ``output_dir``;
an ``outputs.json`` there (``{"outputs": {name: file}, "metrics": {...}, "values": {...}}``) is
optional. nbprod checks parameters before a kernel starts, because papermill on its own
only warns about unknown names and never checks types.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.errors import (
    KernelDiedError,
    NotebookExecutionError,
    NotebookTimeoutError,
    OutputContractError,
    ParameterError,
)
from flows.kernels import kernel_environment, kernel_for, stop_kernel
from flows.progress import cell_counter
from flows.pysource import parse_source
from flows.warmup import warm_up

OUTPUTS_FILE = "outputs.json"
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list": (list, tuple),
    "dict": (dict,),
}


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    type_name: str  # int | float | str | bool | list | dict | any
    default: Any


@dataclass(frozen=True)
class NotebookOutputs:
    """What a notebook produced, read back from its outputs.json."""

    notebook: str
    output_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    executed: Path | None = None  # the executed .ipynb (its .html sits beside it)


def _parameters_cell(path: Path) -> str:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ParameterError(f"notebook {path} not found: check the path") from exc
    except json.JSONDecodeError as exc:
        raise ParameterError(f"notebook {path} is not valid .ipynb JSON: {exc}") from exc
    for cell in raw.get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell.get("source", "")
            return "".join(src) if isinstance(src, list) else src
    raise ParameterError(
        f"notebook {path.name} has no cell tagged 'parameters': in Jupyter, select the cell "
        "holding the defaults, open the property inspector and add the tag 'parameters'"
    )


def declared_parameters(path: str | Path) -> dict[str, ParameterSpec]:
    """Names, types and defaults from the parameters cell, by static analysis (no kernel)."""
    path = Path(path)
    source = _parameters_cell(path)
    try:
        tree = parse_source(source)
    except SyntaxError as exc:
        raise ParameterError(
            f"notebook {path.name}: parameters cell does not parse: {exc}"
        ) from exc
    specs: dict[str, ParameterSpec] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value, annotation = node.targets[0], node.value, None
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value, annotation = node.target, node.value, node.annotation
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        try:
            default = ast.literal_eval(value)
        except ValueError:
            default = ast.unparse(value)
            type_name = "any"
        else:
            type_name = type(default).__name__ if default is not None else "any"
            type_name = "list" if type_name == "tuple" else type_name
        if isinstance(annotation, ast.Name) and annotation.id in _TYPES:
            type_name = annotation.id
        specs[target.id] = ParameterSpec(target.id, type_name, default)
    return specs


def check_parameters(path: str | Path, parameters: Mapping[str, Any]) -> dict[str, ParameterSpec]:
    """Refuse unknown names and wrong types, listing every problem and the declared parameters."""
    path = Path(path)
    specs = declared_parameters(path)
    problems: list[str] = []
    unknown = sorted(set(parameters) - set(specs))
    if unknown:
        declared = ", ".join(f"{s.name}: {s.type_name}" for s in specs.values())
        problems.append(f"unknown parameter(s) {', '.join(unknown)} (declared: {declared})")
    for name, value in parameters.items():
        spec = specs.get(name)
        if spec is None or spec.type_name == "any":
            continue
        allowed = _TYPES.get(spec.type_name, (object,))
        is_bool = isinstance(value, bool)
        ok = isinstance(value, allowed) and (spec.type_name == "bool" or not is_bool)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            problems.append(
                f"parameter {name!r} expects {spec.type_name} (default "
                f"{spec.default!r}), got {type(value).__name__} {value!r}"
            )
    if problems:
        raise ParameterError(f"notebook {path.name}: " + "; ".join(problems))
    return specs


_HTML_WARM_UP = "html-rendering"


def warm_up_html_rendering() -> None:
    """Import nbconvert and build its HTML exporter, once per process (flows.warmup).

    Why: the import is slow; started while the kernel runs the notebook, where this process
    mostly waits, it leaves the run's critical path. No sample is rendered: a first render's
    template and regex compilation would compete with the notebook's own threads for the cores
    (docs/performance.md); after the notebook it runs alongside the kernel's exit instead.
    Once: a grid's parallel tasks must not each start one.
    """

    def warm() -> None:
        with _HTML_RENDERING:
            _html_exporter()

    # nbconvert imports what running a notebook imports (nbclient, jupyter_client): this thread
    # imports it first (papermill brings both), so no notebook task or kernel start imports those
    # packages while the warm-up thread does (CPython then hands one of them a half-initialised
    # module: "cannot import name 'AsyncKernelManager' ... partially initialized module").
    import papermill  # noqa: F401

    warm_up(_HTML_WARM_UP, warm)


# One exporter per process: a new HTMLExporter loads and compiles its Jinja templates again.
# Exporters register filters on themselves while rendering, so renders from a grid's threads
# take turns.
_HTML_RENDERING = threading.Lock()


@functools.cache
def _html_exporter() -> Any:
    """nbconvert's HTMLExporter; its warnings about the page (an image without alt text: every
    plot) are not the run's, so only its errors are logged."""
    import logging

    from nbconvert import HTMLExporter

    quiet = logging.getLogger(f"{__name__}.html")
    quiet.setLevel(logging.ERROR)
    return HTMLExporter(log=quiet)


def render_html(ipynb: Path) -> Path:
    """A static HTML copy so a run can be read without Jupyter (errors included)."""
    import nbformat

    notebook = nbformat.read(ipynb, as_version=4)
    with _HTML_RENDERING:
        body, _ = _html_exporter().from_notebook_node(notebook)
    html = ipynb.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


_running_lock = threading.Lock()
_running_kernels = 0


@contextlib.contextmanager
def counted_kernel() -> Iterator[None]:
    """Count this process's notebook executions in flight (see :func:`kernel_threads`)."""
    global _running_kernels
    with _running_lock:
        _running_kernels += 1
    try:
        yield
    finally:
        with _running_lock:
            _running_kernels -= 1


def kernel_threads(cores: int | None = None, running: int | None = None) -> int:
    """Threads per kernel so that the kernels running at once share the cores, at least one.

    Why: OpenMP libraries (scikit-learn's HistGradientBoosting) start one thread per core in
    every kernel; a grid of 4 kernels on 2 cores then runs 8 spinning threads, and OpenMP's
    barriers make that several times slower than running the points one after another.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    running = running if running is not None else _running_kernels
    return max(1, cores // max(1, running))


PRESTARTED_ENGINE = "nbprod-prestarted"


@functools.cache
def prestarted_kernel_engine() -> str:
    """Register, once, papermill's engine for a kernel started before the notebook; its name.

    papermill's own nbclient engine, given ``km=``, runs the notebook in that kernel and leaves
    the client nbclient opened on it running; this one closes the client. The kernel is the
    caller's to stop (:func:`flows.kernels.stop_kernel`).
    """
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger

    class PrestartedKernelEngine(NBClientEngine):  # type: ignore[misc]
        @classmethod
        def execute_managed_notebook(  # type: ignore[override]
            cls,
            nb_man: Any,
            kernel_name: str,
            *,
            km: Any,
            log_output: bool = False,
            stdout_file: Any = None,
            stderr_file: Any = None,
            start_timeout: int = 60,
            execution_timeout: int | None = None,
            **kwargs: Any,
        ) -> Any:
            client = PapermillNotebookClient(
                nb_man,
                km=km,
                kernel_name=kernel_name,
                timeout=execution_timeout,
                startup_timeout=start_timeout,
                log=logger,
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
                on_cell_executed=kwargs.get("on_cell_executed"),
            )
            try:
                return client.execute()
            finally:
                if client.kc is not None:
                    client.kc.stop_channels()

    papermill_engines.register(PRESTARTED_ENGINE, PrestartedKernelEngine)
    return PRESTARTED_ENGINE


def in_own_event_loop(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` in an empty context, and close the event loop it made there afterwards.

    jupyter_core keeps the event loop papermill/nbclient run on in a ContextVar. Prefect copies
    the flow's context into every task thread, so once the flow thread has run one notebook,
    parallel tasks all find that same loop and fail with "This event loop is already running".
    An empty context gives each execution its own loop.
    """
    import asyncio
    import contextvars

    context = contextvars.Context()
    try:
        return context.run(fn, *args, **kwargs)
    finally:
        for value in context.values():
            if isinstance(value, asyncio.AbstractEventLoop) and not value.is_running():
                value.close()


def code_cell_count(notebook: Path) -> int:
    """The notebook's code cells (papermill adds its injected-parameters cell to these)."""
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return 0
    return sum(1 for cell in cells if cell.get("cell_type") == "code")


def execute_notebook(
    notebook: Path,
    executed: Path,
    parameters: Mapping[str, Any],
    *,
    kernel_name: str = "python3",
    timeout_s: int = 600,
    cwd: Path | None = None,
    warm_kernel: bool = False,
    threads: int | None = None,
) -> Path:
    """Run one notebook with papermill; keep the executed copy (and its HTML) even on failure.

    A cell error becomes NotebookExecutionError naming the cell; a dead kernel KernelDiedError
    (which the Prefect task retries) and a cell over ``timeout_s`` NotebookTimeoutError, both
    naming the notebook and the cell that was running. ``warm_kernel``: take the kernel this
    process's pool started ahead for the notebook, its imports done (:mod:`flows.kernels`);
    checks of reproducibility leave it off, so each run there gets a cold kernel. ``threads``:
    the numeric libraries' threads in the kernel (default: the cores shared by the notebooks
    this process runs at that moment, :func:`kernel_threads`).
    """
    import papermill

    check_parameters(notebook, parameters)
    executed.parent.mkdir(parents=True, exist_ok=True)
    warm_up_html_rendering()
    workdir = cwd or notebook.parent
    with contextlib.ExitStack() as after:
        with _notebook_errors(notebook, executed, timeout_s), counted_kernel():
            manager = kernel_for(
                notebook,
                kernel_name=kernel_name,
                cwd=workdir,
                env=kernel_environment(threads or kernel_threads()),
                warm=warm_kernel,
            )
            try:
                in_own_event_loop(
                    papermill.execute_notebook,
                    str(notebook),
                    str(executed),
                    parameters=dict(parameters),
                    engine_name=prestarted_kernel_engine(),
                    km=manager,
                    kernel_name=kernel_name,
                    execution_timeout=timeout_s,
                    cwd=str(workdir),
                    progress_bar=False,
                    log_output=False,
                    on_cell_executed=cell_counter(notebook.name, code_cell_count(notebook) + 1),
                )
            finally:
                # The kernel exits (gracefully: the notebook's open files are flushed) while this
                # process renders the HTML copy; leaving the stack waits for its exit.
                after.callback(stop_kernel(manager).result)
        render_html(executed)
    return executed


@contextlib.contextmanager
def _notebook_errors(notebook: Path, executed: Path, timeout_s: int) -> Iterator[None]:
    """papermill's and nbclient's errors as nbprod's (see :func:`execute_notebook`), with the
    executed notebook rendered to HTML."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    try:
        yield
    except PapermillExecutionError as exc:
        render_html(executed)
        first_line = (exc.source or "").strip().splitlines()[:1]
        raise NotebookExecutionError(
            f"notebook {notebook.name} failed in cell In [{exc.exec_count}] "
            f"(cell #{exc.cell_index}: {first_line[0] if first_line else ''!s}): "
            f"{exc.ename}: {exc.evalue}. The executed notebook with the failing cell marked is "
            f"kept at {executed}",
            notebook=notebook.name,
            cell_index=exc.cell_index,
            executed_path=str(executed),
        ) from exc
    except (DeadKernelError, CellTimeoutError) as exc:
        raise _interrupted(notebook, executed, exc, timeout_s) from exc
    except Exception:
        if executed.exists():
            render_html(executed)
        raise


def _running_cell(executed: Path) -> tuple[int | None, str]:
    """The index and first source line of the last cell papermill started in ``executed``.

    papermill records a ``start_time`` on each cell it starts and saves the notebook as it goes,
    so after a dead kernel or a timeout the last started cell is the one that was running.
    """
    import nbformat

    try:
        cells = nbformat.read(executed, as_version=4).cells
    except (OSError, ValueError):
        return None, ""
    started = [i for i, c in enumerate(cells) if c.metadata.get("papermill", {}).get("start_time")]
    if not started:
        return None, ""
    lines = cells[started[-1]].source.strip().splitlines()
    return started[-1], lines[0] if lines else ""


def _interrupted(
    notebook: Path, executed: Path, exc: BaseException, timeout_s: int
) -> NotebookExecutionError:
    """A dead kernel or a cell timeout as one line naming the notebook, the cell and the fix."""
    kept = ""
    if executed.exists():
        render_html(executed)
        kept = f"; the executed notebook is kept at {executed}"
    index, first_line = _running_cell(executed) if executed.exists() else (None, "")
    cell = f"cell #{index} ({first_line})" if index is not None else "a cell"
    details = {"notebook": notebook.name, "cell_index": index, "executed_path": str(executed)}
    if isinstance(exc, TimeoutError):  # nbclient's CellTimeoutError
        return NotebookTimeoutError(
            f"notebook {notebook.name}: {cell} ran longer than the {timeout_s} s execution "
            f"timeout{kept}. Make the cell faster or raise NBPROD_EXECUTION_TIMEOUT_S",
            **details,
        )
    return KernelDiedError(
        f"notebook {notebook.name}: the kernel died while running {cell} (out of memory, a crash "
        f"in native code, or the process was killed){kept}. Reduce the cell's memory use or fix "
        "the crash, then run again",
        **details,
    )


def read_outputs(notebook: str, output_dir: Path) -> NotebookOutputs:
    """The files a notebook wrote into ``output_dir``, by stem, plus its optional outputs.json.

    ``outputs.json`` (``{"outputs": {name: file}, "metrics": {...}, "values": {...}}``) may name
    outputs (each must exist) and add metrics and values; without it every top-level file is an
    output named by its stem (``holdout.parquet`` -> ``holdout``).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise OutputContractError(
            f"notebook {notebook} has no output_dir {output_dir}: it must write its files there"
        )
    outputs: dict[str, Path] = {}
    for path in sorted(output_dir.iterdir()):
        if path.is_file() and path.name != OUTPUTS_FILE and not path.name.startswith("."):
            outputs.setdefault(path.stem, path)
    raw: dict[str, Any] = {}
    manifest = output_dir / OUTPUTS_FILE
    if manifest.exists():
        try:
            raw = json.loads(manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OutputContractError(
                f"notebook {notebook}: {manifest} is not valid JSON: {exc}"
            ) from exc
        if not isinstance(raw, dict):
            raise OutputContractError(
                f"notebook {notebook}: {manifest} must be a mapping with outputs, metrics, values"
            )
    declared = {name: output_dir / rel for name, rel in (raw.get("outputs") or {}).items()}
    missing_files = sorted(name for name, path in declared.items() if not path.exists())
    if missing_files:
        raise OutputContractError(
            f"notebook {notebook} broke the output contract: its {OUTPUTS_FILE} declares "
            f"{missing_files} but the files do not exist in {output_dir}"
        )
    outputs.update(declared)
    metrics = {
        k: float(v)
        for k, v in (raw.get("metrics") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return NotebookOutputs(notebook, output_dir, outputs, metrics, raw.get("values") or {})
