"""The code's shape: small modules, no import cycles, no private names across modules, no demo
names in the product, the bento independent of the package."""

from __future__ import annotations

import ast
import re
import sys
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


OWN_PACKAGES = ("flows", "bentos", "__future__")


def is_dependency(module: str) -> bool:
    """A third-party package: not nbprod's own, not the standard library."""
    top = module.split(".")[0]
    return not module.startswith(OWN_PACKAGES) and top not in sys.stdlib_module_names


def dependency_private_uses(source: str) -> list[str]:
    """A dependency's private module or attribute (a ``_name`` reached through an imported
    package) used, or an attribute of an imported package assigned, in one module's source."""
    tree = ast.parse(source)
    bound: set[str] = set()  # local names of imported dependency modules and objects
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_dependency(alias.name):
                    bound.add((alias.asname or alias.name).split(".")[0])
                    if any(p.startswith("_") for p in alias.name.split(".")):
                        found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not is_dependency(node.module):
                continue
            private_module = any(p.startswith("_") for p in node.module.split("."))
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if private_module or (alias.name.startswith("_") and alias.name != "__version__"):
                    found.append(f"from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            root, chain = node, []
            while isinstance(root, ast.Attribute):
                chain.append(root.attr)
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                private = [a for a in chain if a.startswith("_") and not a.startswith("__")]
                if private:
                    found.append(f"{root.id}.{'.'.join(reversed(chain))}")
                if isinstance(node.ctx, ast.Store):
                    found.append(f"assigns {root.id}.{'.'.join(reversed(chain))}")
    return found


def test_no_private_api_of_a_dependency_outside_compat_modules() -> None:
    """Issue 19: public APIs only; a workaround lives in a compat module (compat_*.py)."""
    offenders = [
        f"{path.relative_to(ROOT)}: {use}"
        for path in sources()
        if not path.name.startswith("compat_")
        for use in dependency_private_uses(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_the_private_api_check_sees_each_kind_of_use() -> None:
    source = (
        "import os\nimport bentoml\nfrom prefect import flow_engine\n"
        "from bentoml._internal.context import trace_context\n"
        "from jupyter_client import _version\n"
        "flow_engine._send_heartbeats = None\nbentoml.models.x = 1\n"
        "y = bentoml._internal\nos._exit\n"
    )
    assert dependency_private_uses(source) == [
        "from bentoml._internal.context import trace_context",
        "from jupyter_client import _version",
        "flow_engine._send_heartbeats",
        "assigns flow_engine._send_heartbeats",
        "assigns bentoml.models.x",
        "bentoml._internal",
    ]
