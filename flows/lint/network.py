"""``network-read``: error. The notebook reads data over the network, which can change between
runs and is not hashed into the run manifest: a read of an ``http(s)://``, ``s3://``, ``gs://``...
URL; an HTTP client (requests, httpx, urllib.request...); a cloud storage or warehouse client
(``google.cloud.storage.Client``, BigQuery, boto3, gcsfs, s3fs, Azure blobs); a dataset
download (scikit-learn's ``fetch_*``, ``keras.datasets.*.load_data``, ``keras.utils.get_file``,
``seaborn.load_dataset``, Hugging Face, torchvision with ``download=True``...). Commands that
download (``!wget``, ``os.system("curl ...")``) are reported by flows.lint.shell."""

from __future__ import annotations

import ast
import re

from flows.lint.cells import Cell
from flows.lint.context import CodeContext, callee_name

_URL = re.compile(
    r"^(?:https?|s3a?|s3n|gs|gcs|az|abfss?|adl|wasbs?|ftp|sftp|hdfs|hf)://", re.IGNORECASE
)
_READ_CALL = re.compile(r"^(?:read\w*|load\w*|open\w*|urlopen|urlretrieve|fetch\w*|get)$")
# Calls that reach the network, by the dotted name the notebook's imports resolve them to.
_NETWORK_CALL = re.compile(
    r"^(?:requests|httpx|urllib3|aiohttp|boto3|botocore|wget|ftplib|gdown|gcsfs|s3fs|adlfs"
    r"|kaggle|openml|yfinance|pandas_datareader|huggingface_hub|tensorflow_datasets)\."
    r"|^urllib\.request\.(?:urlopen|urlretrieve|Request)$|^http\.client\."
    r"|^google\.cloud\.(?:storage|bigquery)\.|^azure\.storage\."
    r"|^torch\.hub\.(?:load|download\w*)|^sklearn\.datasets\.fetch_\w+$"
    r"|^datasets\.load_dataset$|^seaborn\.load_dataset$|^statsmodels\.datasets\.get_rdataset$"
    r"|^(?:tensorflow\.)?(?:tf_)?keras\.datasets\.\w+\.load_data$"
    r"|^(?:tensorflow\.)?(?:tf_)?keras\.utils\.(?:data_utils\.)?get_file$"
)
_NOT_NETWORK = re.compile(r"^(?:requests|httpx)\.(?:exceptions|codes|status_codes)\b")
_DOWNLOAD_FLAG = re.compile(r"^torchvision\.datasets\.\w+$")


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


def _report(context: CodeContext, cell: int, call: ast.Call, what: str) -> None:
    context.add(
        "network-read",
        "error",
        cell,
        call,
        f"{what} reads from the network: the data can change between runs and is not hashed "
        "into the run manifest",
        "download the data once into the project (e.g. data/), read the local file and pass "
        "its path as a parameter",
    )


def _url_argument(context: CodeContext, call: ast.Call) -> str | None:
    for arg in (*call.args, *(k.value for k in call.keywords)):
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _URL.match(arg.value):
            return arg.value
        if isinstance(arg, ast.Name) and arg.id in context.url_names:
            return context.url_names[arg.id]
        if isinstance(arg, ast.JoinedStr) and arg.values:
            first = arg.values[0]
            if isinstance(first, ast.Constant) and _URL.match(str(first.value)):
                return str(first.value)
    return None


def check_network(context: CodeContext, cell: int, call: ast.Call, qualname: str) -> None:
    """network-read: a network client or dataset download, or a read of a URL."""
    if qualname and _NETWORK_CALL.search(qualname) and not _NOT_NETWORK.match(qualname):
        _report(context, cell, call, f"`{qualname}(...)`")
    elif qualname and _DOWNLOAD_FLAG.match(qualname):
        download = next((k.value for k in call.keywords if k.arg == "download"), None)
        if isinstance(download, ast.Constant) and download.value is True:
            _report(context, cell, call, f"`{qualname}(..., download=True)`")
    elif _READ_CALL.match(callee_name(call)):
        url = _url_argument(context, call)
        if url:
            _report(context, cell, call, f"`{callee_name(call)}({url[:70]!r})`")
