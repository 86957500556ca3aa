"""Typed settings, read from ``NBPROD_*`` environment variables.

One place decides where runs, scratch space and the notebooks live, so the CLI, the flow and the
tests agree without passing paths through every call. Defaults are under the project
(:func:`flows.paths.project_root`), computed when the settings are read.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.paths import CHECKOUT_ROOT, SETTINGS_ENV_PREFIX, default_home, project_root

__all__ = ["NbprodSettings", "load_settings", "project_root"]


class NbprodSettings(BaseSettings):
    """Where nbprod keeps its state. Every field can be set as ``NBPROD_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=SETTINGS_ENV_PREFIX, extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="Root of local state: the default run store and scratch space "
        "(default <project>/.nbprod).",
    )
    run_store_url: str | None = Field(
        default=None,
        description="Run store location: a local folder or any fsspec URL (memory://, s3://...). "
        "Defaults to <home>/runs.",
    )
    bentos_dir: Path = Field(
        default=CHECKOUT_ROOT / "bentos",
        description="The BentoML service source packaged per model (nbprod's own, in its "
        "checkout).",
    )
    policy_path: Path = Field(
        default_factory=lambda: project_root() / "deployments" / "policy.yaml",
        description="Project-wide gate policy for a notebook spec that names none (used when "
        "the file exists); a training spec without one gets its task's built-in policy.",
    )
    kernel_name: str = Field(
        default="python3",
        description="Jupyter kernel for papermill; 'python3' resolves to this venv's interpreter.",
    )
    execution_timeout_s: int = Field(
        default=600, gt=0, description="Per-cell execution timeout for notebooks, in seconds."
    )
    warm_kernels: bool = Field(
        default=True,
        description="Start notebook kernels ahead of need (fresh processes from a pool, "
        "flows.kernels) with the notebooks' installed imports already done and an empty "
        "namespace: saves each run seconds. Off: every kernel starts when its notebook does.",
    )
    parallel_notebooks: int | None = Field(
        default=None,
        gt=0,
        description="Grid points executed at once (default: the CPU count). More kernels than "
        "cores only share the cores, each with its libraries' memory.",
    )

    @property
    def resolved_run_store_url(self) -> str:
        return self.run_store_url or str(self.home / "runs")

    @property
    def scratch_dir(self) -> Path:
        return self.home / "scratch"

    @property
    def notebooks_at_once(self) -> int:
        """How many notebooks of a grid run at once: ``parallel_notebooks`` or the CPU count."""
        return self.parallel_notebooks or os.cpu_count() or 1


def load_settings() -> NbprodSettings:
    """Read settings fresh each call so tests and the CLI can change the environment."""
    return NbprodSettings()


def __getattr__(name: str) -> Path:
    """``PROJECT_ROOT``: :func:`flows.paths.project_root` when read (kept for importers)."""
    if name == "PROJECT_ROOT":
        return project_root()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
