"""Plain helpers behind the notebook tasks: cache keys, parameter grids and secrets.

Caching: a notebook's result is reused when its source (outputs and metadata stripped), its
parameters, the content of every input file it is given, and the environment are unchanged. The
key is computed here; Prefect's task cache (persisted results) does the lookup, so a hit shows as
a ``Cached`` task run in the UI, across flow runs and processes that share ``PREFECT_HOME``.

Secrets: a parameter can name an environment variable or a Prefect Secret block instead of a
value. The value is resolved only inside the task that runs the kernel, and scrubbed from the
executed notebook and every text output before anything is stored or rendered.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flows.errors import ConfigError
from flows.manifest import file_sha256, notebook_content_hash, package_versions

REDACTED = "***"
CACHE_DIRNAME = "cache"
# Parameters that only say where to write: they never change what a notebook computes.
LOCATION_PARAMETERS = ("output_dir",)
TEXT_SUFFIXES = {".ipynb", ".html", ".json", ".csv", ".txt", ".md", ".yaml", ".yml", ".log"}


def environment_fingerprint(kernel_name: str) -> str:
    """Python and package versions: a library upgrade invalidates the cache."""
    blob = json.dumps(
        {"python": sys.version, "kernel": kernel_name, "packages": package_versions()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _value_identity(value: Any) -> Any:
    """Paths to existing files stand for their content, so moving a file keeps the cache warm."""
    if isinstance(value, str) and len(value) < 4096:
        path = Path(value)
        try:
            if path.is_absolute() and path.is_file():
                return {"file_sha256": file_sha256(path)}
        except OSError:
            return value
    return value


def notebook_cache_key(
    notebook: Path,
    parameters: Mapping[str, Any],
    kernel_name: str,
    secret_names: Iterable[str] = (),
) -> str:
    """Content-addressed identity of one notebook execution."""
    secrets = set(secret_names)
    identity = {
        "notebook": notebook_content_hash(notebook),
        # A secret's value must never be hashed into a key that is stored; its reference is.
        "parameters": {
            k: (f"<secret:{k}>" if k in secrets else _value_identity(v))
            for k, v in sorted(parameters.items())
            if k not in LOCATION_PARAMETERS
        },
        "environment": environment_fingerprint(kernel_name),
    }
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def call_cache_key(
    notebook: Path,
    parameters: Mapping[str, Any],
    secrets: Mapping[str, Mapping[str, str]],
    kernel_name: str,
) -> str:
    """The key of one planned notebook call: its parameters, secrets by reference only.

    The ``run_notebook`` task's Prefect cache key (flows.execution), whoever starts the flow.
    """
    params = {**parameters, **{k: secret_reference(ref) for k, ref in secrets.items()}}
    return notebook_cache_key(notebook, params, kernel_name, secret_names=secrets)


def cache_dir(home: Path, notebook: Path, key: str) -> Path:
    return home / CACHE_DIRNAME / notebook.stem / key


def expand_grid(grid: Mapping[str, list[Any]] | None) -> list[dict[str, Any]]:
    """Cartesian product of a parameter grid, in a stable order; [{}] when there is no grid."""
    if not grid:
        return [{}]
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"grid parameter {name!r} needs a non-empty list of values, got {values!r}"
            )
    names = sorted(grid)
    return [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(grid[n] for n in names))
    ]


def secret_reference(ref: Mapping[str, str]) -> str:
    """How a secret is written in stored parameters: where it comes from, never its value."""
    if "env" in ref:
        return f"<secret from env {ref['env']}>"
    return f"<secret from Prefect Secret block {ref.get('block')}>"


def resolve_secret(name: str, ref: Mapping[str, str]) -> str:
    """Read a secret at run time from an environment variable or a Prefect Secret block."""
    if "env" in ref:
        value = os.environ.get(ref["env"])
        if value is None:
            raise ConfigError(
                f"secret parameter {name!r}: environment variable {ref['env']} is "
                "not set: export it where the flow runs (worker or CLI)"
            )
        return value
    if "block" in ref:
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(ref["block"]).get())
        except ValueError as exc:
            raise ConfigError(
                f"secret parameter {name!r}: Prefect Secret block "
                f"{ref['block']!r} not found: create it with "
                f"Secret(value=...).save({ref['block']!r})"
            ) from exc
    raise ConfigError(
        f"secret parameter {name!r}: give {{'env': NAME}} or {{'block': NAME}}, got {dict(ref)!r}"
    )


def scrub_text(text: str, values: Iterable[str]) -> str:
    """``text`` with every secret value (and its JSON-escaped form) replaced by ``***``."""
    for secret in (v for v in values if v):
        text = text.replace(secret, REDACTED).replace(json.dumps(secret)[1:-1], REDACTED)
    return text


def scrub_secrets(paths: Iterable[Path], values: Iterable[str]) -> list[Path]:
    """Replace every secret value in text files, in place, before they are stored or rendered."""
    secrets = [v for v in values if v]
    changed: list[Path] = []
    if not secrets:
        return changed
    for path in paths:
        if not path.is_file() or path.suffix.lower() not in TEXT_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        scrubbed = scrub_text(text, secrets)  # the .ipynb stores strings JSON-escaped too
        if scrubbed != text:
            path.write_text(scrubbed, encoding="utf-8", errors="surrogateescape")
            changed.append(path)
    return changed
