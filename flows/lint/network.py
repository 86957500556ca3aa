"""``network-read``: error. Reading ``http(s)://``, ``s3://``, ``gs://``... URLs, or calling
requests/httpx/urllib.request/boto3/sklearn's ``fetch_*``: the data can change between runs."""

from __future__ import annotations

import ast
import re

from flows.lint.cells import Cell
from flows.lint.context import CodeContext

_URL = re.compile(
    r"^(?:https?|s3a?|s3n|gs|gcs|az|abfss?|adl|wasbs?|ftp|sftp|hdfs|hf)://", re.IGNORECASE
)
_READ_CALL = re.compile(r"^(?:read\w*|load\w*|open\w*|urlopen|urlretrieve|fetch\w*|get)$")
_NETWORK_MODULES = (
    "requests.",
    "httpx.",
    "urllib.request.",
    "urllib3.",
    "aiohttp.",
    "boto3.",
    "botocore.",
    "wget.",
    "http.client.",
    "ftplib.",
    "gdown.",
    "torch.hub.",
    "sklearn.datasets.fetch_",
    "datasets.load_dataset",
)


def url_names(cells: list[Cell]) -> dict[str, str]:
    """Names assigned a URL literal anywhere in the notebook (``URL = "https://..."``)."""
    names: dict[str, str] = {}
    for cell in cells:
        if cell.tree is None:
            continue
        for node in ast.walk(cell.tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
                if (
                    isinstance(target, ast.Name)
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                    and _URL.match(value.value)
                ):
                    names[target.id] = value.value
    return names


def _callee_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def check_network(context: CodeContext, cell: int, call: ast.Call, qualname: str) -> None:
    """network-read: a network library's call, or a read of a URL (literal or URL-valued name)."""
    if qualname and any(
        qualname.startswith(m) or qualname == m.rstrip(".") for m in _NETWORK_MODULES
    ):
        context.add(
            "network-read",
            "error",
            cell,
            call,
            f"`{qualname}(...)` reads from the network: the data can change between runs "
            "and is not hashed into the run manifest",
            "download the data once into the project (e.g. data/), read the local file and "
            "pass its path as a parameter",
        )
        return
    if not _READ_CALL.match(_callee_name(call)):
        return
    for arg in (*call.args, *(k.value for k in call.keywords)):
        url = None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            url = arg.value if _URL.match(arg.value) else None
        elif isinstance(arg, ast.Name):
            url = context.url_names.get(arg.id)
        elif isinstance(arg, ast.JoinedStr) and arg.values:
            first = arg.values[0]
            if isinstance(first, ast.Constant) and _URL.match(str(first.value)):
                url = str(first.value)
        if url:
            context.add(
                "network-read",
                "error",
                cell,
                call,
                f"`{_callee_name(call)}(...)` reads {url[:70]!r} from the network: the data "
                "can change between runs and is not hashed into the run manifest",
                "download it once into the project (e.g. data/), read the local copy and "
                "pass its path as a parameter",
            )
            return
