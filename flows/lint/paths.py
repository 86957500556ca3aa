"""Path rules.

- ``absolute-path``: error. A file-system path only this machine has: an absolute path literal
  (``/``, ``~``, ``C:\\``) outside the project (the notebook's nearest ancestor with a
  pyproject.toml, else its folder), or a path built from the user's home (``Path.home()``,
  ``os.path.expanduser``, ``$HOME``) or from the root (``os.path.join("/", ...)``).
- ``absolute-path-in-project``: warning. An absolute path inside the project: works only in
  this checkout.

A string is judged by where it is used, as a reader would: an argument of ``open``, ``Path``,
``os.path``, ``read_*``/``to_*``/``load``/``save``... or assigned to a ``*_path``/``*_dir``
name is a path; a device (``tf.device("/cpu:0")``), a route (``@app.route("/predict")``, an
HTTP call), a regex (``re.*``), a string edit (``s.replace("gs://", "/gcs/")``), a comparison
or a dict key is not. Elsewhere, only a string that looks like a file path (two segments, an
extension, or a well-known root such as /home, /mnt, /data) is reported. A literal that continues
another string (``d + "/x.csv"``, ``f"{d}/x.csv"``) is a suffix, not an absolute path.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Literal

from flows.lint.context import CodeContext, callee_name

Use = Literal["path", "not-path", "unknown"]

_WINDOWS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\\w)")
_HOME = re.compile(r"^~[\w.-]*(?:[/\\]|$)")
_REGEX_ONLY = re.compile(r"[\s()^$|+\\<>\"']")
_GLOB = re.compile(r"[*?\[\]]")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_KNOWN_ROOTS = frozenset(
    {"home", "Users", "mnt", "media", "tmp", "data", "datasets", "kaggle", "content", "opt"}
    | {"srv", "var", "etc", "usr", "dbfs", "Volumes", "gcs", "workspace", "scratch", "root"}
)
_ROUTE_ROOTS = frozenset(
    {"api", "v1", "v2", "v3", "predict", "invocations", "ping", "health", "healthz", "readyz"}
    | {"livez", "metrics", "graphql", "docs", "openapi.json"}
)
_PATH_CALL = re.compile(
    r"^(?:open\w*|Path|PurePath|PosixPath|PurePosixPath|WindowsPath|read_\w+|to_\w+|load\w*"
    r"|save\w*|dump\w*|imread|imwrite|savefig|loadtxt|genfromtxt|fromfile|tofile|chdir|listdir"
    r"|scandir|walk|exists|isfile|isdir|mkdir|makedirs|remove|unlink|rmtree|copy\w*|move"
    r"|glob|iglob|ZipFile|TarFile|connect|File|expanduser|join|joinpath|abspath|realpath)$"
)
_NOT_PATH_CALL = re.compile(
    r"^(?:replace|startswith|endswith|split|rsplit|strip|lstrip|rstrip|removeprefix"
    r"|removesuffix|find|rfind|index|rindex|count|partition|rpartition|translate|encode"
    r"|device|route|get|post|put|patch|delete|head|options|websocket|add_url_rule"
    r"|add_api_route|api_route|mount|include_router|Blueprint|APIRouter|url_for|redirect"
    r"|urljoin|urlparse|urlsplit|quote|print|info|debug|warning|error|exception|critical|log"
    r"|set_title|set_xlabel|set_ylabel|title|xlabel|ylabel|suptitle|text|annotate|Markdown"
    r"|HTML|display|write|fullmatch|match|search|sub|subn|findall|finditer|compile|fnmatch)$"
)
_PATH_NAME = re.compile(
    r"(?:^|_)(?:path|paths|file|filename|fname|filepath|dir|dirname|directory|folder|root"
    r"|home|location|loc)$"
)
_NOT_PATH_NAME = re.compile(
    r"(?:^|_)(?:url|uri|urls|route|endpoint|prefix|pattern|regex|rule|device|sep|separator"
    r"|delimiter|href|link|mount_point)$"
)
_HOME_ENV = frozenset({"HOME", "USERPROFILE"})


def _name_use(name: str) -> Use:
    name = name.lower()
    if _NOT_PATH_NAME.search(name):
        return "not-path"
    return "path" if _PATH_NAME.search(name) else "unknown"


def _call_use(context: CodeContext, call: ast.Call) -> Use:
    qualname = context.qualname(call.func)
    if qualname.startswith(("re.", "regex.")):
        return "not-path"
    if qualname.startswith(("os.path.", "shutil.", "glob.", "pathlib.")) or qualname in (
        "sys.path.append",
        "sys.path.insert",
    ):
        return "path"
    name = callee_name(call)
    if _NOT_PATH_CALL.match(name):
        return "not-path"
    return "path" if _PATH_CALL.match(name) else "unknown"


def string_use(context: CodeContext, node: ast.AST) -> Use | None:
    """How a string literal is used; None when it only continues another string (a suffix)."""
    child, parent = node, context.parent(node)
    for _ in range(8):
        if isinstance(parent, ast.JoinedStr):
            if parent.values and parent.values[0] is not child:
                return None
        elif isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Add | ast.Mod):
            if parent.right is child:
                return None if isinstance(parent.op, ast.Add) else "unknown"
        elif isinstance(parent, ast.Attribute):  # "/x".format(...) builds a path; other
            grand = context.parent(parent)  # methods edit or test the string
            if parent.attr != "format" or not isinstance(grand, ast.Call):
                return "not-path"
            parent = grand
        elif isinstance(parent, ast.keyword):
            use = _name_use(parent.arg or "")
            if use != "unknown":
                return use
        elif isinstance(parent, ast.Call):
            if _is_decorator(context, parent):
                return "not-path"
            return _call_use(context, parent)
        elif isinstance(parent, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
            target = targets[0] if len(targets) == 1 else None
            name = target.id if isinstance(target, ast.Name) else ""
            name = target.attr if isinstance(target, ast.Attribute) else name
            return _name_use(name) if name else "unknown"
        elif isinstance(parent, ast.Compare | ast.Subscript | ast.Dict | ast.Set):
            if isinstance(parent, ast.Dict) and any(v is child for v in parent.values):
                return "unknown"
            return "not-path"
        elif not isinstance(parent, ast.List | ast.Tuple | ast.IfExp | ast.FormattedValue):
            return "unknown"
        child, parent = parent, context.parent(parent)
    return "unknown"


def _is_decorator(context: CodeContext, call: ast.Call) -> bool:
    owner = context.parent(call)
    decorators = getattr(owner, "decorator_list", [])
    return any(d is call for d in decorators)


def _looks_like_path(text: str, use: Use) -> bool:
    if "\n" in text or len(text) > 300:
        return False
    if _WINDOWS.match(text) or (_HOME.match(text) and (text != "~" or use == "path")):
        return True
    if not text.startswith("/") or text.startswith("//") or ":" in text:
        return False
    if _REGEX_ONLY.search(text) or (_GLOB.search(text) and use != "path"):
        return False
    if use == "path":
        return True
    segments = [s for s in text.split("/") if s]
    if not segments or segments[0] in _ROUTE_ROOTS:
        return False
    return len(segments) >= 2 or bool(_EXTENSION.search(text)) or segments[0] in _KNOWN_ROOTS


def check_string(context: CodeContext, cell: int, node: ast.Constant) -> None:
    """absolute-path, absolute-path-in-project: for one string literal, by how it is used."""
    text = str(node.value)
    if text in _HOME_ENV:
        _check_home_variable(context, cell, node)
        return
    use = string_use(context, node)
    if text in ("/", "\\") or use is None or use == "not-path":
        return  # the root alone: reported where a path is built from it (check_path_call)
    if not _looks_like_path(text, use):
        return
    candidate = Path(os.path.expanduser(text))
    inside = False
    if candidate.is_absolute() and not text.startswith("~"):
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
        _outside(context, cell, node, f"absolute path {text!r} is outside the project")


def _outside(context: CodeContext, cell: int, node: ast.AST, what: str) -> None:
    context.add(
        "absolute-path",
        "error",
        cell,
        node,
        f"{what} ({context.root}): it exists only on this machine",
        "put the file in the project (e.g. data/) and use a relative path, or make the path a "
        "parameter so the pipeline passes it",
    )


def _check_home_variable(context: CodeContext, cell: int, node: ast.Constant) -> None:
    parent = context.parent(node)
    owner = parent.value if isinstance(parent, ast.Subscript) else None
    owner = parent.func if isinstance(parent, ast.Call) else owner
    if owner is not None and context.qualname(owner) in (
        "os.environ",
        "os.getenv",
        "os.environ.get",
    ):
        _outside(context, cell, node, f"a path built from ${node.value} (the user's home)")


def check_path_call(context: CodeContext, cell: int, call: ast.Call, qualname: str) -> None:
    """absolute-path: ``Path.home()``, ``os.path.expanduser(...)``, ``os.path.join("/", ...)``."""
    literal = bool(call.args) and isinstance(call.args[0], ast.Constant)
    if qualname in ("pathlib.Path.home", "pathlib.PosixPath.home") or (
        qualname == "os.path.expanduser" and not literal  # a literal "~/x" is reported as such
    ):
        shown = qualname.removeprefix("pathlib.")
        _outside(context, cell, call, f"a path built with `{shown}()` (the user's home)")
    elif qualname in ("os.path.join", "pathlib.Path", "pathlib.PurePath") and call.args:
        first = call.args[0]
        root = isinstance(first, ast.Constant) and first.value in ("/", "\\")
        if root or context.qualname(first) == "os.sep":
            _outside(context, cell, call, f"a path built from the root with `{qualname}(...)`")
