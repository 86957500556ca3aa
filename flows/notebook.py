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
import fcntl
import functools
import json
import math
import os
import re
import socket
import tempfile
import threading
import time
import uuid
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
from flows.kernel_server import THREAD_VARIABLES
from flows.kernels import KernelServer, forking_provisioner, start_kernel_server
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
    """Import nbconvert and render an empty notebook, once per process (flows.warmup).

    Why: the first HTML render of a process pays ~1.5 s of imports and template compilation
    (nbconvert, jinja2, pygments, mistune). Started while the kernel runs the notebook, where
    this process mostly waits, that cost leaves the run's critical path. Once: a grid's
    parallel tasks must not each start one.
    """

    def warm() -> None:
        import nbformat

        with _HTML_RENDERING:
            _html_exporter().from_notebook_node(nbformat.v4.new_notebook())

    warm_up(_HTML_WARM_UP, warm)


# One exporter per process: a new HTMLExporter loads and compiles its Jinja templates again
# (~0.15 s of CPU per render). Exporters register filters on themselves while rendering, so
# renders from a grid's threads take turns.
_HTML_RENDERING = threading.Lock()


# What nbconvert's HTMLExporter adds after rendering, for keyboard and screen-reader users.
_FOCUSABLE = re.compile(
    r'(<div (?:id="[^"]*" )?class="(?:jp-Cell-inputWrapper|[^"]*\bjp-OutputArea-output\b[^"]*)")'
)
_IMG_WITHOUT_ALT = re.compile(r"<img(?![^>]*\balt=)")
IMG_ALT = 'alt="No description has been provided for this image"'


@functools.cache
def _html_exporter() -> Any:
    """nbconvert's HTMLExporter without its BeautifulSoup pass.

    Why: after rendering, HTMLExporter parses the whole page with BeautifulSoup only to add
    ``tabindex`` to cells and ``alt`` to images, and serializes it again: ~0.45 s of a ~0.7 s
    render for the train notebook, on every run's critical path. The same attributes are added
    here to the tags the lab template writes.
    """
    from nbconvert import HTMLExporter
    from nbconvert.exporters.templateexporter import TemplateExporter
    from nbconvert.filters.highlight import Highlight2HTML
    from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter

    class NotebookHTMLExporter(HTMLExporter):  # type: ignore[misc]
        def from_notebook_node(  # type: ignore[override]
            self, nb: Any, resources: dict[str, Any] | None = None, **kw: Any
        ) -> tuple[str, dict[str, Any]]:
            # HTMLExporter.from_notebook_node up to its BeautifulSoup step (nbconvert 7.16+).
            langinfo = nb.metadata.get("language_info", {})
            lexer = langinfo.get("pygments_lexer", langinfo.get("name", None))
            highlight_code = self.filters.get(
                "highlight_code", Highlight2HTML(pygments_lexer=lexer, parent=self)
            )
            resources = self._init_resources(resources)
            filter_data_type = WidgetsDataTypeFilter(
                notebook_metadata=self._nb_metadata, parent=self, resources=resources
            )
            self.register_filter("highlight_code", highlight_code)
            self.register_filter("filter_data_type", filter_data_type)
            html, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
            html = _FOCUSABLE.sub(r'\1 tabindex="0"', html)
            return _IMG_WITHOUT_ALT.sub(f"<img {IMG_ALT}", html), resources

    return NotebookHTMLExporter()


def render_html(ipynb: Path) -> Path:
    """A static HTML copy so a run can be read without Jupyter (errors included)."""
    import nbformat

    notebook = nbformat.read(ipynb, as_version=4)
    with _HTML_RENDERING:
        body, _ = _html_exporter().from_notebook_node(notebook)
    html = ipynb.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


KERNEL_PORT_LOCK = Path(tempfile.gettempdir()) / "nbprod-kernel-ports.lock"
KERNEL_PORT_REGISTRY = Path(tempfile.gettempdir()) / "nbprod-kernel-ports.json"
# Long enough for any kernel to bind its ports; short enough that ports are not hoarded.
PORT_RESERVATION_S = 120.0


def _free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((ip, 0))
        return int(probe.getsockname()[1])


def reserve_kernel_ports(ip: str, count: int = 5) -> list[int]:
    """Pick free ports no other nbprod kernel on this machine has been given recently.

    jupyter_client picks free TCP ports and the kernel binds them a moment later; its port cache
    is per process, so kernels started in parallel by threads of different processes (Dask
    workers, two flows) can pick the same ports in that window: papermill's known race
    ("Address already in use", a kernel that never answers). A registry shared through a file
    lock closes the window; the lock is held for milliseconds, so startups stay parallel.
    """
    with open(KERNEL_PORT_LOCK, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            now = time.time()
            try:
                taken = {
                    int(p): t
                    for p, t in json.loads(KERNEL_PORT_REGISTRY.read_text()).items()
                    if t > now
                }
            except (OSError, ValueError):
                taken = {}
            ports: list[int] = []
            while len(ports) < count:
                port = _free_port(ip)
                if port not in taken and port not in ports:
                    ports.append(port)
            taken.update(dict.fromkeys(ports, now + PORT_RESERVATION_S))
            tmp = KERNEL_PORT_REGISTRY.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(taken))
            os.replace(tmp, KERNEL_PORT_REGISTRY)
            return ports
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


# THREAD_VARIABLES: the thread pools a kernel's numeric libraries size from; left alone when the
# user set them. (The kernel server applies them to libraries it loaded before they were set.)
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


@functools.cache
def _ready_on_idle_client() -> type:
    """jupyter_client's async kernel client, told apart from a ready kernel sooner.

    Its ``wait_for_ready`` flushes IOPub until 0.2 s pass without a message: a fixed 0.2 s at
    every kernel start. IOPub is ordered, so the kernel's ``idle`` status for our last
    ``kernel_info`` request marks the same point: everything before it has been read. Silence
    (0.2 s, as before) still ends the wait if that status was lost to a slow subscription.
    """
    from queue import Empty

    from jupyter_client.asynchronous.client import AsyncKernelClient

    class ReadyOnIdleKernelClient(AsyncKernelClient):  # type: ignore[misc]
        async def _iopub_flushed_through(self, request_id: str) -> bool:
            """Read IOPub up to the kernel's idle for ``request_id``; False if IOPub is silent."""
            received = False
            while True:
                try:
                    msg = await self.iopub_channel.get_msg(timeout=0.2)
                except Empty:
                    return received
                received = True
                if (
                    msg["msg_type"] == "status"
                    and msg["content"].get("execution_state") == "idle"
                    and msg["parent_header"].get("msg_id") == request_id
                ):
                    return True

        async def wait_for_ready(self, timeout: float | None = None) -> None:  # type: ignore[override]
            deadline = time.monotonic() + (math.inf if timeout is None else timeout)
            while True:
                request_id = self.kernel_info()
                try:
                    reply = await self.shell_channel.get_msg(timeout=1)
                except Empty:
                    pass
                else:
                    if reply["msg_type"] == "kernel_info_reply" and (
                        await self._iopub_flushed_through(request_id)
                    ):
                        self._handle_kernel_info_reply(reply)
                        return
                if not await self.is_alive():
                    raise RuntimeError("Kernel died before replying to kernel_info")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")

    return ReadyOnIdleKernelClient


def reserved_port_kernel_manager(server: KernelServer | None = None) -> type:
    """A kernel manager whose ports come from :func:`reserve_kernel_ports`, whose kernels get a
    share of the cores (:func:`kernel_threads`) unless the environment says otherwise, and that
    start as forks of ``server`` when one is given (:mod:`flows.kernels`)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class ReservedPortKernelManager(AsyncKernelManager):
        @default("client_factory")
        def _client_factory_default(self) -> type:
            return _ready_on_idle_client()

        async def start_kernel(self, **kwargs: Any) -> None:  # type: ignore[override]
            if server is not None and server.alive and self.provisioner is None:
                self.kernel_id = self.kernel_id or str(uuid.uuid4())
                self.provisioner = forking_provisioner(self, server)
            self.cache_ports = False  # use the reserved ports, not the per-process cache
            (self.shell_port, self.iopub_port, self.stdin_port, self.hb_port, self.control_port) = (
                reserve_kernel_ports(self.ip)
            )
            env = dict(kwargs.get("env") or os.environ)
            if not any(name in os.environ for name in THREAD_VARIABLES):
                threads = str(kernel_threads())
                env.update(dict.fromkeys(THREAD_VARIABLES, threads))
            kwargs["env"] = env
            await super().start_kernel(**kwargs)

    return ReservedPortKernelManager


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


def execute_notebook(
    notebook: Path,
    executed: Path,
    parameters: Mapping[str, Any],
    *,
    kernel_name: str = "python3",
    timeout_s: int = 600,
    cwd: Path | None = None,
    warm_kernel: bool = False,
) -> Path:
    """Run one notebook with papermill; keep the executed copy (and its HTML) even on failure.

    A cell error becomes NotebookExecutionError naming the cell; a dead kernel KernelDiedError
    (which the Prefect task retries) and a cell over ``timeout_s`` NotebookTimeoutError, both
    naming the notebook and the cell that was running. ``warm_kernel``: start the kernel as a
    fork of this process's kernel server (:mod:`flows.kernels`); checks of reproducibility leave
    it off, so each run there gets a fresh interpreter.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    check_parameters(notebook, parameters)
    executed.parent.mkdir(parents=True, exist_ok=True)
    warm_up_html_rendering()
    try:
        with counted_kernel():
            in_own_event_loop(
                papermill.execute_notebook,
                str(notebook),
                str(executed),
                parameters=dict(parameters),
                kernel_name=kernel_name,
                execution_timeout=timeout_s,
                cwd=str(cwd or notebook.parent),
                progress_bar=False,
                log_output=False,
                kernel_manager_class=reserved_port_kernel_manager(
                    start_kernel_server([notebook]) if warm_kernel else None
                ),
            )
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
    render_html(executed)
    return executed


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
