"""Running notebooks under the notebook contract.

The contract: a notebook declares its inputs in a cell tagged ``parameters`` (plain assignments
with literal defaults, one of them ``output_dir``) and, as its last step, writes its files plus
``outputs.json`` (``{"outputs": {name: file}, "metrics": {name: number}, "values": {...}}``) into
``output_dir``. nbprod checks parameters before a kernel starts, because papermill on its own
only warns about unknown names and never checks types.
"""

from __future__ import annotations

import ast
import fcntl
import json
import math
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.errors import NotebookExecutionError, OutputContractError, ParameterError

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
        tree = ast.parse(source)
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


def render_html(ipynb: Path) -> Path:
    """A static HTML copy so a run can be read without Jupyter (errors included)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(ipynb, as_version=4))
    html = ipynb.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


KERNEL_PORT_LOCK = Path(tempfile.gettempdir()) / "nbprod-kernel-ports.lock"
PORTS_BOUND_TIMEOUT_S = 60.0


def _port_is_bound(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, port))
        except OSError:
            return True
    return False


def locked_port_kernel_manager() -> type:
    """A kernel manager that holds a machine-wide lock from choosing ports until they are bound.

    jupyter_client picks free TCP ports, then the kernel binds them a moment later: kernels
    started in parallel (threads, or Dask worker processes, whose port caches are per process)
    can pick the same ports in that window — papermill's known race ("Address already in use",
    a kernel that never answers). The lock makes the window exclusive; execution stays parallel.
    """
    import asyncio

    from jupyter_client.manager import AsyncKernelManager

    class LockedPortKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kwargs: Any) -> None:  # type: ignore[override]
            with open(KERNEL_PORT_LOCK, "a") as lock_file:
                await asyncio.to_thread(fcntl.flock, lock_file, fcntl.LOCK_EX)
                try:
                    await super().start_kernel(**kwargs)
                    ports = [
                        self.shell_port,
                        self.iopub_port,
                        self.stdin_port,
                        self.hb_port,
                        self.control_port,
                    ]
                    deadline = time.monotonic() + PORTS_BOUND_TIMEOUT_S
                    while time.monotonic() < deadline and not all(
                        _port_is_bound(self.ip, p) for p in ports
                    ):
                        if not await self.is_alive():
                            break  # the kernel died at start; nbclient reports it
                        await asyncio.sleep(0.05)
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    return LockedPortKernelManager


def execute_notebook(
    notebook: Path,
    executed: Path,
    parameters: Mapping[str, Any],
    *,
    kernel_name: str = "python3",
    timeout_s: int = 600,
    cwd: Path | None = None,
) -> Path:
    """Run one notebook with papermill; keep the executed copy (and its HTML) even on failure.

    A cell error becomes NotebookExecutionError naming the cell. A dead kernel is re-raised as is,
    so the Prefect task can retry it.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    check_parameters(notebook, parameters)
    executed.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=dict(parameters),
            kernel_name=kernel_name,
            execution_timeout=timeout_s,
            cwd=str(cwd or notebook.parent),
            progress_bar=False,
            log_output=False,
            kernel_manager_class=locked_port_kernel_manager(),
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
    except Exception:
        if executed.exists():
            render_html(executed)
        raise
    render_html(executed)
    return executed


def read_outputs(
    notebook: str, output_dir: Path, *, required: tuple[str, ...] = ()
) -> NotebookOutputs:
    """Read outputs.json back and check every declared file exists."""
    manifest = output_dir / OUTPUTS_FILE
    if not manifest.exists():
        raise OutputContractError(
            f"notebook {notebook} wrote no {OUTPUTS_FILE} in its output_dir {output_dir}: "
            f"its last cell must write {{'outputs': ..., 'metrics': ..., 'values': ...}} there"
        )
    try:
        raw = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise OutputContractError(
            f"notebook {notebook}: {manifest} is not valid JSON: {exc}"
        ) from exc
    outputs = {name: output_dir / rel for name, rel in (raw.get("outputs") or {}).items()}
    missing_files = sorted(name for name, path in outputs.items() if not path.exists())
    missing_names = sorted(set(required) - set(outputs))
    if missing_files or missing_names:
        raise OutputContractError(
            f"notebook {notebook} broke the output contract: "
            + (f"declares {missing_files} but the files do not exist; " if missing_files else "")
            + (f"does not declare required outputs {missing_names}" if missing_names else "")
        )
    metrics = {
        k: float(v) for k, v in (raw.get("metrics") or {}).items() if isinstance(v, int | float)
    }
    return NotebookOutputs(notebook, output_dir, outputs, metrics, raw.get("values") or {})


RESERVED = {
    "prepare": ("data_path", "start_date", "end_date", "output_dir"),
    "train": ("train_path", "test_path", "output_dir"),
}


def check_not_reserved(
    prepare_params: dict[str, Any] | None, train_params: dict[str, Any] | None
) -> None:
    """Paths and windows are wired by the pipeline; a user value would be silently overridden."""
    clashes = [
        f"{nb}.{name}"
        for nb, given in (("prepare", prepare_params), ("train", train_params))
        for name in RESERVED[nb]
        if name in (given or {})
    ]
    if clashes:
        raise ParameterError(
            f"parameter(s) {', '.join(clashes)} are set by the pipeline itself: use the flow's "
            "data_path / start_date / end_date arguments (nbprod run --data/--start/--end)"
        )
