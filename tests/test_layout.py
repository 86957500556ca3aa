"""The code's shape: small modules, no import cycles, no private names across modules, no demo
names in the product, the bento independent of the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flows"
MAX_LINES = 600
# The bundled example's own files may name its data; nothing else in the product may.
DEMO_FILES = {"flows/data.py", "flows/demo.py"}
DEMO_NAMES = re.compile(
    r"defaulted|application_|loan|prepare\.ipynb|train\.ipynb|\"(?:prepare|train)\"", re.IGNORECASE
)


def sources() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "bentos").rglob("*.py")])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import in the file, wherever it is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def test_modules_are_small() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in sources()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert big == {}


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: from {module} import {name}"
        for path in sources()
        for module, names in imports(path)
        if module.startswith(("flows", "bentos"))
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert offenders == []


def test_command_modules_do_not_import_the_cli() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if path.name != "cli.py"
        for module, _ in imports(path)
        if module == "flows.cli"
    ]
    assert offenders == []


def test_bentos_import_nothing_from_the_package() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "bentos").rglob("*.py")
        for module, _ in imports(path)
        if module == "flows" or module.startswith("flows.")
    ]
    assert offenders == []


def test_no_import_cycles_in_the_package() -> None:
    """Module-level imports only: a function-level import runs later and cannot cycle at import."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flows"):
                edges.add(node.module)
                edges.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith("flows"))
        graph[module_name(path)] = edges
    known = set(graph)
    graph = {m: {e for e in edges if e in known and e != m} for m, edges in graph.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, nxt]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m))]
    assert cycles == []


def test_the_product_names_no_demo_column_dataset_or_model() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources()
        if str(path.relative_to(ROOT)) not in DEMO_FILES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if DEMO_NAMES.search(line)
    ]
    found += [
        str(path.relative_to(ROOT))
        for path in (ROOT / "bentos").glob("*.yaml")
        if DEMO_NAMES.search(path.read_text(encoding="utf-8"))
    ]
    assert found == []


def test_each_flow_reads_in_at_most_sixty_lines() -> None:
    """A flow is the README's list of steps over step functions, not the steps themselves."""
    lengths = {}
    for name in ("pipeline.py", "monitoring.py"):
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        for node in tree.body:
            decorated = any(
                isinstance(d, ast.Call) and getattr(d.func, "id", "") == "flow"
                for d in getattr(node, "decorator_list", [])
            )
            if isinstance(node, ast.FunctionDef) and decorated:
                lengths[node.name] = node.end_lineno - node.lineno + 1  # type: ignore[operator]
    assert set(lengths) == {"training_pipeline", "notebook_pipeline", "monitoring_pipeline"}
    assert max(lengths.values()) <= 60, lengths
