"""Typed settings, read from ``NBPROD_*`` environment variables.

One place decides where runs, scratch space and the policy live, so the CLI, the flow and the
tests agree without passing paths through every call.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.paths import DEFAULT_HOME, PROJECT_ROOT, SETTINGS_ENV_PREFIX

__all__ = ["PROJECT_ROOT", "NbprodSettings", "load_settings"]


class NbprodSettings(BaseSettings):
    """Where nbprod keeps its state. Every field can be set as ``NBPROD_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=SETTINGS_ENV_PREFIX, extra="ignore")

    home: Path = Field(
        default=DEFAULT_HOME,
        description="Root of local state: the default run store and scratch space.",
    )
    run_store_url: str | None = Field(
        default=None,
        description="Run store location: a local folder or any fsspec URL (memory://, s3://...). "
        "Defaults to <home>/runs.",
    )
    notebooks_dir: Path = Field(
        default=PROJECT_ROOT / "notebooks", description="Where the pipeline's notebooks live."
    )
    bentos_dir: Path = Field(
        default=PROJECT_ROOT / "bentos",
        description="The BentoML service source packaged per model.",
    )
    policy_path: Path = Field(
        default=PROJECT_ROOT / "deployments" / "policy.yaml",
        description="Acceptance-gate policy (floors and champion-change thresholds).",
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
        description="Start notebook kernels as forks of a process that has already imported "
        "ipykernel and the notebooks' installed imports (flows.kernels): saves each kernel "
        "seconds of CPU. Off: every kernel is a fresh interpreter.",
    )
    model_name: str = Field(
        default="nbprod_loan_default", description="Name of the model in the BentoML model store."
    )

    @property
    def resolved_run_store_url(self) -> str:
        return self.run_store_url or str(self.home / "runs")

    @property
    def training_notebooks(self) -> tuple[Path, Path]:
        """The training pipeline's prepare and train notebooks when no spec names others."""
        return self.notebooks_dir / "prepare.ipynb", self.notebooks_dir / "train.ipynb"

    @property
    def scratch_dir(self) -> Path:
        return self.home / "scratch"


def load_settings() -> NbprodSettings:
    """Read settings fresh each call so tests and the CLI can change the environment."""
    return NbprodSettings()
