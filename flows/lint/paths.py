"""Path rules.

- ``absolute-path``: error. A string literal is an absolute path (``/``, ``~``, ``C:\\``) outside
  the project (the notebook's nearest ancestor with a pyproject.toml, else its folder).
- ``absolute-path-in-project``: warning. An absolute path inside the project: works only in this
  checkout.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from flows.lint.context import CodeContext

_PATH_LITERAL = re.compile(r"^(?:/(?=[^/\s])|~[\w.-]*[/\\]|[A-Za-z]:[\\/])")


def check_path(context: CodeContext, cell: int, node: ast.AST, text: str) -> None:
    """absolute-path, absolute-path-in-project: for a string (or an f-string's start)."""
    if "\n" in text or not _PATH_LITERAL.match(text):
        return
    candidate = Path(os.path.expanduser(text))
    inside = False
    if candidate.is_absolute():
        resolved = Path(os.path.normpath(candidate))
        inside = resolved.is_relative_to(context.root) or resolved.is_relative_to(
            context.root.resolve()
        )
    if inside:
        context.add(
            "absolute-path-in-project",
            "warning",
            cell,
            node,
            f"absolute path {text!r} works only in this checkout of the project",
            "use a path relative to the notebook's folder (the pipeline runs notebooks "
            "from there), or make it a parameter",
        )
    else:
        context.add(
            "absolute-path",
            "error",
            cell,
            node,
            f"absolute path {text!r} is outside the project ({context.root}): it exists only "
            "on this machine",
            "put the file in the project (e.g. data/) and use a relative path, or make the "
            "path a parameter so the pipeline passes it",
        )
