"""Notebook calls as planned: where each execution writes, its cache key, whether it is done.

Plain data and file checks, no Prefect: ``nbprod run`` asks :func:`is_cached` before it imports
Prefect, to know whether a kernel started ahead of need would be used at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.runner import cache_dir, call_cache_key, secret_reference
from flows.settings import NbprodSettings

# Written next to a cached call's outputs once the notebook finished: the folder is complete.
COMPLETE_MARKER = "complete"


@dataclass(frozen=True)
class NotebookCall:
    """One notebook execution as the flow plans it: where it writes, and how it is cached."""

    name: str
    notebook: Path
    executed: Path
    parameters: dict[str, Any]
    cache_key: str
    secrets: dict[str, dict[str, str]]

    @property
    def output_dir(self) -> Path:
        return Path(self.parameters["output_dir"])

    @property
    def marker(self) -> Path:
        return self.output_dir.parent / COMPLETE_MARKER

    def task_arguments(self, settings: NbprodSettings) -> dict[str, Any]:
        """The ``run_notebook`` task's arguments, the same for a direct call and a submit."""
        return {
            "name": self.name,
            "notebook": self.notebook,
            "executed": self.executed,
            "parameters": self.parameters,
            "kernel_name": settings.kernel_name,
            "timeout_s": settings.execution_timeout_s,
            "cache_key": self.cache_key,
            "secrets": self.secrets or None,
            "warm_kernel": settings.warm_kernels,
        }

    def stored_parameters(self) -> dict[str, Any]:
        """Parameters as recorded: secrets by reference, never by value."""
        return {
            **self.parameters,
            **{k: secret_reference(ref) for k, ref in self.secrets.items()},
        }


def plan_notebook(
    name: str,
    notebook: Path,
    parameters: dict[str, Any],
    *,
    home: Path,
    kernel_name: str,
    secrets: dict[str, dict[str, str]] | None = None,
) -> NotebookCall:
    """A call writes under a content-addressed cache folder that outlives the run."""
    secrets = secrets or {}
    key = call_cache_key(notebook, parameters, secrets, kernel_name)
    base = cache_dir(home, notebook, key)
    return NotebookCall(
        name,
        notebook,
        base / "executed" / f"{notebook.stem}.ipynb",
        {**parameters, "output_dir": str(base / "outputs")},
        key,
        secrets,
    )


def is_complete(marker: Path, executed: Path, cache_key: str) -> bool:
    """The folder's notebook finished for this key (its marker names it) and was kept."""
    try:
        return marker.read_text(encoding="utf-8") == cache_key and executed.exists()
    except OSError:
        return False


def is_cached(call: NotebookCall) -> bool:
    """This home already holds the call's complete outputs: a re-run will not execute it."""
    return is_complete(call.marker, call.executed, call.cache_key)
