"""Environment rules: installs, shell commands and magics that change hidden state.

- ``pip-install``: error. ``%pip``/``!pip``/``%conda`` installs: dependencies belong in
  pyproject.toml and constraints.txt, where the run manifest records them.
- ``shell-command``: error. ``!cmd``, ``x = !cmd``, ``%sx``, ``%system``, ``%%bash``,
  ``%%script``...: machine-dependent and invisible to lineage.
- ``magic``: warning. Magics that change hidden state (``%cd``, ``%env``, ``%run``, ``%store``,
  ``%%writefile``, unknown ones). Display and timing magics (``%matplotlib inline``, ``%%time``,
  ``%%capture``, ``%autoreload``...) are fine and not reported; the code inside ``%%time``,
  ``%%timeit``, ``%%capture`` and ``%%prun`` cells is checked like any other code.
"""

from __future__ import annotations

import ast
import re

from flows.lint.cells import Magic
from flows.lint.context import CodeContext

# Magics that only display, time or configure display: reproducibility is unaffected.
_HARMLESS_MAGICS = frozenset(
    {"matplotlib", "time", "timeit", "capture", "prun", "config", "precision", "xmode"}
    | {"html", "markdown", "latex", "svg", "javascript", "js", "md"}
    | {"pinfo", "pinfo2", "psearch", "pdoc", "pdef", "psource", "pfile", "page"}
    | {"who", "whos", "who_ls", "lsmagic", "magic", "quickref", "autoreload", "aimport"}
)
_INSTALLER_MAGICS = frozenset({"pip", "conda", "mamba", "micromamba", "uv"})
_SHELL_LINE_MAGICS = frozenset({"sx", "system", "bash", "sh"})
_SHELL_CELL_MAGICS = frozenset(
    {"bash", "sh", "script", "system", "sx", "perl", "ruby", "python2", "python3", "pypy"}
    | {"powershell", "cmd", "zsh"}
)
_MAGIC_WHY = {
    "cd": "changes the working directory, so relative paths in later cells resolve elsewhere",
    "env": "sets environment variables the pipeline does not record",
    "set_env": "sets environment variables the pipeline does not record",
    "run": "runs another file in this namespace: its names are invisible to this notebook",
    "store": "reads or writes variables kept by IPython between sessions (hidden state)",
    "reset": "clears the namespace, so cells depend on where the reset happens",
    "writefile": "writes a file from the notebook outside output_dir",
    "load": "pastes a file's content into the cell at edit time",
    "load_ext": "loads an IPython extension that can change how cells run",
}
_INSTALL_COMMAND = re.compile(
    r"(?:^|[\s;&|(])(?:pip3?|conda|mamba|micromamba|python3?\s+-m\s+pip|uv\s+pip)\s+install\b"
    r"|(?:^|[\s;&|(])(?:uv|poetry)\s+add\b"
)


def check_subprocess(context: CodeContext, cell: int, call: ast.Call, qualname: str) -> None:
    """pip-install: ``os.system``, ``os.popen`` or ``subprocess`` running an installer."""
    if qualname in ("os.system", "os.popen") or qualname.startswith("subprocess."):
        for arg in ast.walk(call):
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                text = arg.value
                if _INSTALL_COMMAND.search(text) or text in ("pip", "conda"):
                    _install(context, cell, call, f"{qualname}(...)")
                    break


def _install(context: CodeContext, cell: int, node: ast.AST, what: str) -> None:
    context.add(
        "pip-install",
        "error",
        cell,
        node,
        f"installs packages from the notebook ({what}): each run may get different "
        "versions, and the run manifest does not record them",
        "add the package to pyproject.toml (and constraints.txt via `make lock`) and remove "
        "the install from the notebook",
    )


def check_magic(context: CodeContext, cell: int, node: ast.AST, magic: Magic) -> None:
    """pip-install, shell-command, magic: for one magic or shell escape."""
    if magic.kind == "shell":
        command = magic.line.strip()
        if _INSTALL_COMMAND.search(" " + command):
            _install(context, cell, node, f"!{command[:60]}")
            return
        _shell(context, cell, node, f"!{command[:60]}")
        return
    prefix = "%" if magic.kind == "line" else "%%"
    shown = f"{prefix}{magic.name} {magic.line}".strip()[:60]
    if magic.name in _INSTALLER_MAGICS:
        if re.search(r"\b(install|add)\b", magic.line):
            _install(context, cell, node, shown)
        else:
            context.add(
                "magic",
                "warning",
                cell,
                node,
                f"`{shown}` queries the package manager from the notebook",
                "remove it: the run manifest records package versions",
            )
    elif (magic.kind == "line" and magic.name in _SHELL_LINE_MAGICS) or (
        magic.kind == "cell" and magic.name in _SHELL_CELL_MAGICS
    ):
        body = magic.line + "\n" + magic.body
        if _INSTALL_COMMAND.search(" " + body):
            _install(context, cell, node, shown)
        else:
            _shell(context, cell, node, shown)
    elif magic.name in _HARMLESS_MAGICS or (
        magic.name == "load_ext" and magic.line.strip() == "autoreload"
    ):
        return
    else:
        why = _MAGIC_WHY.get(magic.name, "is an IPython magic the pipeline cannot reason about")
        context.add(
            "magic",
            "warning",
            cell,
            node,
            f"`{shown}` {why}",
            "replace it with plain Python (pathlib, os.environ in a parameter, an import), "
            "or remove it",
        )


def _shell(context: CodeContext, cell: int, node: ast.AST, shown: str) -> None:
    context.add(
        "shell-command",
        "error",
        cell,
        node,
        f"runs a shell command (`{shown}`): its result depends on the machine and is not "
        "part of the run's lineage",
        "do it in Python (pathlib, shutil, a pinned library), or as a pipeline step before "
        "the notebook",
    )
