"""Environment rules: installs, shell commands and magics that change hidden state.

- ``pip-install``: error. ``%pip``/``!pip``/``%conda`` installs: dependencies belong in
  pyproject.toml and constraints.txt, where the run manifest records them.
- ``shell-command``: error. ``!cmd``, ``x = !cmd``, ``%sx``, ``%system``, ``%%bash``,
  ``%%script``..., ``os.system``, ``subprocess.*``: machine-dependent and invisible to lineage.
  A command that downloads (``wget``, ``curl``, ``gsutil``, ``aws s3``, ``git clone``...) is
  reported as ``network-read`` instead (flows.lint.network).
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
    r"|(?:^|[\s;&|(])(?:uv|poetry)\s+add\b|(?:^|[\s;&|(])apt(?:-get)?\s+install\b"
)
_DOWNLOAD_COMMAND = re.compile(
    r"(?:^|[\s;&|(])(?:wget|curl|gsutil|azcopy|kaggle|gdown|scp|huggingface-cli"
    r"|gcloud\s+storage|aws\s+s3|hf\s+download|git\s+(?:clone|pull|fetch)|dvc\s+(?:pull|get))"
    r"(?:\s|$)"
)
_RUNNERS = re.compile(
    r"^(?:os\.(?:system|popen|spawn\w*|exec\w*)"
    r"|subprocess\.(?:run|call|check_call|check_output|Popen|getoutput|getstatusoutput))$"
)


def _command_text(call: ast.Call) -> str:
    """The command a ``subprocess``/``os.system`` call runs, as far as literals tell."""
    if not call.args:
        return ""
    first = call.args[0]
    parts = first.elts if isinstance(first, ast.List | ast.Tuple) else [first]
    words = []
    for part in parts:
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            words.append(part.value)
        elif isinstance(part, ast.JoinedStr):
            words.append(
                "".join(str(v.value) if isinstance(v, ast.Constant) else "..." for v in part.values)
            )
        elif isinstance(part, ast.Attribute) and part.attr == "executable":
            words.append("python")
        else:
            words.append("...")
    return " ".join(words)


def check_subprocess(context: CodeContext, cell: int, call: ast.Call, qualname: str) -> None:
    """pip-install, network-read, shell-command: ``os.system``, ``subprocess.*``..."""
    if _RUNNERS.match(qualname):
        _command(
            context, cell, call, _command_text(call), f"{qualname}({_command_text(call)[:40]!r})"
        )


def _command(context: CodeContext, cell: int, node: ast.AST, command: str, shown: str) -> None:
    """Report one command by what it does: install, download, or any other shell command."""
    if _INSTALL_COMMAND.search(" " + command) or command.strip() in ("pip", "conda"):
        what = f"installs packages from the notebook ({shown}): each run may get other versions, "
        context.add("pip-install", "error", cell, node, what + "which no manifest records")
    elif _DOWNLOAD_COMMAND.search(" " + command):
        what = f"`{shown}` downloads from the network: the data can change between runs and "
        context.add("network-read", "error", cell, node, what + "no manifest hashes it")
    else:
        what = f"runs a shell command (`{shown}`): its result depends on the machine and is "
        context.add("shell-command", "error", cell, node, what + "not part of the run's lineage")


def check_magic(context: CodeContext, cell: int, node: ast.AST, magic: Magic) -> None:
    """pip-install, network-read, shell-command, magic: for one magic or shell escape."""
    if magic.kind == "shell":
        _command(context, cell, node, magic.line, f"!{magic.line.strip()[:60]}")
        return
    shown = f"{'%' if magic.kind == 'line' else '%%'}{magic.name} {magic.line}".strip()[:60]
    if magic.name in _INSTALLER_MAGICS:
        if re.search(r"\b(install|add)\b", magic.line):
            _command(context, cell, node, "pip install", shown)
        else:
            what = f"`{shown}` queries the package manager from the notebook"
            context.add("magic", "warning", cell, node, what, "remove it: the run records versions")
    elif (magic.kind == "line" and magic.name in _SHELL_LINE_MAGICS) or (
        magic.kind == "cell" and magic.name in _SHELL_CELL_MAGICS
    ):
        _command(context, cell, node, magic.line + "\n" + magic.body, shown)
    elif magic.name not in _HARMLESS_MAGICS and f"{magic.name} {magic.line}".strip() != (
        "load_ext autoreload"
    ):
        why = _MAGIC_WHY.get(magic.name, "is an IPython magic the pipeline cannot reason about")
        context.add("magic", "warning", cell, node, f"`{shown}` {why}")
