"""Hidden-state rules: what a fresh top-to-bottom run sees that the author's kernel hid.

- ``execution-order``: warning. Stored execution counts are not increasing top to bottom: the
  saved outputs came from an out-of-order session. A warning, not an error, because the pipeline
  always runs the notebook fresh; the name rules below catch what would actually break.
- ``used-before-defined``: error. A cell uses a name that only a later cell (or a later line)
  defines, or that an earlier top-level ``del`` removed.
- ``undefined-name``: error. No cell defines the name at all (nor builtins, nor IPython).
- ``star-import``: warning. ``from m import *`` hides which names exist; names it might provide
  are not reported as undefined.
"""

from __future__ import annotations

import builtins
import re

from flows.lint.cells import Cell, Notebook
from flows.lint.findings import Finding
from flows.lint.scope import Event, NameWalker

# Names a Jupyter kernel defines before the first cell runs.
_IPYTHON_NAMES = frozenset(
    {"display", "get_ipython", "In", "Out", "exit", "quit", "_", "__", "___"}
    | {"_i", "_ii", "_iii", "_ih", "_oh", "_dh", "_sh"}
    | {"__name__", "__doc__", "__builtins__", "__spec__", "__loader__", "__package__"}
)
_IPYTHON_NAME_PATTERN = re.compile(r"^_(?:i?\d+)$")
_BUILTIN_NAMES = frozenset(dir(builtins)) | _IPYTHON_NAMES


def check_execution_order(notebook: Notebook) -> list[Finding]:
    """execution-order."""
    out: list[Finding] = []
    previous: Cell | None = None
    for cell in notebook.cells:
        if cell.execution_count is None:
            continue
        if previous is not None and cell.execution_count <= (previous.execution_count or 0):
            out.append(
                Finding(
                    "execution-order",
                    "warning",
                    cell.index,
                    f"stored as In [{cell.execution_count}] below cell {previous.index} "
                    f"(In [{previous.execution_count}]): the saved outputs come from an "
                    "out-of-order session and may not be reproducible",
                    "restart the kernel, run all cells top to bottom (Kernel > Restart Kernel "
                    "and Run All) and save",
                )
            )
        previous = cell
    return out


def _is_builtin(name: str) -> bool:
    return name in _BUILTIN_NAMES or bool(_IPYTHON_NAME_PATTERN.match(name))


def check_names(notebook: Notebook) -> list[Finding]:
    """used-before-defined, undefined-name, star-import."""
    out: list[Finding] = []
    events: list[Event] = []
    for cell in notebook.cells:
        if cell.tree is not None:
            NameWalker(cell.index, events).statements(cell.tree.body, top=True)
        else:
            # Unparseable: assume it defines every identifier it mentions, so one syntax error
            # does not cascade into undefined-name noise (the syntax error is reported).
            for name in sorted(set(re.findall(r"[A-Za-z_]\w*", cell.source))):
                events.append(Event("def", name, cell.index, None))
    definitions: dict[str, list[tuple[int, Event]]] = {}
    for position, event in enumerate(events):
        if event.kind == "def":
            definitions.setdefault(event.name, []).append((position, event))

    def later_definition(position: int, use: Event) -> Event | None:
        """The next definition after a use, not counting the using line itself (`x += 1`)."""
        for where, definition in definitions.get(use.name, []):
            same_line = (definition.cell, definition.line) == (use.cell, use.line)
            if where > position and not same_line:
                return definition
        return None

    star_seen = any(e.kind == "star" for e in events)
    current: set[str] = set()
    deleted_in: dict[str, int] = {}
    star_before = False
    reported: set[tuple[str, str, int]] = set()

    def report(rule: str, event: Event, message: str, fix: str) -> None:
        if (rule, event.name, event.cell) not in reported:
            reported.add((rule, event.name, event.cell))
            out.append(Finding(rule, "error", event.cell, message, fix, event.line))

    for position, event in enumerate(events):
        name = event.name
        if event.kind == "star":
            star_before = True
            out.append(
                Finding(
                    "star-import",
                    "warning",
                    event.cell,
                    f"`from {name} import *` hides which names this cell defines, so undefined "
                    "names cannot be checked",
                    f"import the names you use: `from {name} import a, b`",
                    event.line,
                )
            )
        elif event.kind == "def":
            current.add(name)
            deleted_in.pop(name, None)
        elif event.kind == "del":
            current.discard(name)
            deleted_in[name] = event.cell
        elif _is_builtin(name) or name in current:
            continue
        elif event.kind == "deferred":
            if name not in definitions and not star_seen:
                report(
                    "undefined-name",
                    event,
                    f"`{name}` is used inside a function but no cell defines it",
                    f"define or import `{name}` in a cell above, or pass it as an argument",
                )
        elif name in deleted_in:
            report(
                "used-before-defined",
                event,
                f"`{name}` is used after `del {name}` in cell {deleted_in[name]}: it only exists "
                "if cells ran out of order",
                f"remove the `del` or define `{name}` again before this use",
            )
        elif (later := later_definition(position, event)) and not star_before:
            where = "later in this cell" if later.cell == event.cell else f"in cell {later.cell}"
            report(
                "used-before-defined",
                event,
                f"`{name}` is used before it is defined ({where}): run top to bottom in a fresh "
                "kernel, this raises NameError",
                f"move the definition of `{name}` ({where}) above this use",
            )
        elif not star_before:
            report(
                "undefined-name",
                event,
                f"`{name}` is used but no cell defines it: it exists only in a kernel that "
                "ran code no longer in the notebook",
                f"define or import `{name}` in a cell above; if it is an input, add it to the "
                "parameters cell",
            )
    return out
