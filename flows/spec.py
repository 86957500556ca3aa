"""Pipeline specs: one YAML file per promoted pipeline, ``deployments/<name>.yaml``.

Why a spec file and not deployment parameters: a deployment in ``prefect.yaml`` should only say
*which* pipeline to run (``parameters: {spec: deployments/<name>.yaml}``); what the pipeline is —
its notebooks, their parameters, data window, gate policy, schedule, grid, secrets, and the lint
warnings and notebook hashes recorded when it was promoted — lives in a reviewed, versioned file
that ``nbprod promote`` writes and the flows read with :func:`load_spec`. Editing a parameter is
then a one-line diff in git, and the flow refuses a malformed spec with the file and field named.

Paths inside a spec are relative to the project root: :func:`project_root` (``$NBPROD_PROJECT_DIR``
when set — the variable ``prefect.yaml``'s pull step also uses — else the checkout holding
``flows/``), so the same spec works in any checkout and on any worker.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.atomic import write_atomic
from flows.drift_policy import DriftPolicy
from flows.errors import ConfigError
from flows.paths import (
    PROJECT_DIR_ENV,
    PROJECT_ROOT,
    project_root,
    resolve_project_path,
)

__all__ = [
    "PROJECT_DIR_ENV",
    "PROJECT_ROOT",
    "project_root",
    "resolve_project_path",
    "write_atomic",
]
SPECS_DIR = "deployments"
NAME_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
TRAINING_DATA_KEYS = ("data_path", "reference_path", "start_date", "end_date")
DEFAULT_PIPELINE = "training"
Task = Literal["classification", "regression"]


def spec_path(name: str, root: Path | None = None) -> Path:
    """Where the spec of pipeline ``name`` lives: ``<project>/deployments/<name>.yaml``."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(
            f"pipeline name {name!r} is not a slug: use lowercase letters, digits and dashes "
            "(e.g. churn-model)"
        )
    return (root or project_root()) / SPECS_DIR / f"{name}.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Schedule(_Strict):
    """When the deployment runs: a cron expression or a fixed interval, never both."""

    cron: str | None = Field(
        default=None, description="Cron expression, e.g. '0 6 * * 1' (Mondays 06:00)."
    )
    interval_seconds: int | None = Field(
        default=None, gt=0, description="Run every N seconds (instead of cron)."
    )
    timezone: str = Field(
        default="UTC", description="IANA timezone the cron expression is read in."
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # Prefect's own schedule model checks it, so a spec that loads also deploys. Imported
        # only when a cron is given: it pulls in prefect.
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=value)
        except ValidationError as exc:
            detail = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(detail) from exc
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r} (use an IANA name such as UTC)") from exc
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Schedule:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of cron or interval_seconds")
        return self

    def to_prefect(self) -> dict[str, Any]:
        """The ``schedules:`` entry of ``prefect.yaml`` for this schedule."""
        if self.cron is not None:
            return {"cron": self.cron, "timezone": self.timezone}
        return {"interval": self.interval_seconds, "timezone": self.timezone}

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron '{self.cron}' ({self.timezone})"
        return f"every {self.interval_seconds} s"


class SecretRef(_Strict):
    """Where a secret parameter comes from at run time — never its value, which stays out of git."""

    env: str | None = Field(
        default=None, description="Name of an environment variable on the worker."
    )
    block: str | None = Field(default=None, description="Name of a Prefect Secret block.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.block is None):
            raise ValueError("give exactly one of env or block")
        return self

    def resolve(self) -> str:
        """The secret's value, read when the run starts (so rotation needs no re-promotion)."""
        if self.env is not None:
            try:
                return os.environ[self.env]
            except KeyError as exc:
                raise ConfigError(
                    f"secret environment variable {self.env} is not set on this worker"
                ) from exc
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(self.block).get())
        except ValueError as exc:
            raise ConfigError(
                f"Prefect Secret block {self.block!r} not found: create it with "
                f"`prefect block create secret` or Secret(value=...).save({self.block!r})"
            ) from exc


class PipelineSpec(_Strict):
    """One promoted pipeline: what to run, with which parameters and data, and when."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Deployment name and spec file stem: lowercase letters, digits, dashes.",
    )
    flow: Literal["training", "notebook"] = Field(
        description="'training': the prepare → train chain with reports, gate and bento; "
        "'notebook': one notebook (or a chain: an upstream output X feeds a parameter X_path), "
        "run and versioned."
    )
    description: str = Field(default="", description="Shown on the Prefect deployment.")
    notebooks: list[str] = Field(
        min_length=1,
        description="Project-relative notebook paths in run order.",
    )
    task: Task | None = Field(
        default=None,
        description="Training: 'classification' (binary or multiclass, from the target's "
        "values) or 'regression'.",
    )
    target: str | None = Field(default=None, description="Training: the target column.")
    id_columns: list[str] = Field(
        default_factory=list,
        description="Columns that identify a row: never features, kept in predictions.",
    )
    time_column: str | None = Field(
        default=None,
        description="Column the data window and monitoring read time from; none: all rows.",
    )
    model_name: str | None = Field(
        default=None, description="BentoML model name; default the pipeline name."
    )
    model_file: str | None = Field(
        default=None,
        description="The fitted model a notebook writes to its output_dir; default "
        "model.joblib or model.pkl.",
    )
    holdout_file: str | None = Field(
        default=None,
        description="The holdout rows (features and target) a notebook writes to its "
        "output_dir; default holdout.parquet or holdout.csv.",
    )
    parameters: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Notebook parameters per notebook stem, e.g. {'train': {'max_depth': 6}}.",
    )
    data: dict[str, str] = Field(
        default_factory=dict,
        description="Training inputs: data_path, reference_path (schema and drift baseline; "
        "default the data), start_date, end_date (the window on time_column).",
    )
    policy: str | None = Field(
        default=None,
        description="Gate policy YAML (project-relative); default the task's built-in policy.",
    )
    schedule: Schedule | None = Field(default=None, description="None: run on demand only.")
    work_pool: str = Field(default="nbprod-process", description="Prefect work pool to run on.")
    grid: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict,
        description="Parameter grid per notebook stem: parameter → values to try.",
    )
    secrets: dict[str, dict[str, SecretRef]] = Field(
        default_factory=dict,
        description="Secret parameters per notebook stem: parameter → {env: NAME} or "
        "{block: NAME}, resolved on the worker at run time.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Lint and reproducibility findings accepted with `nbprod promote --force`.",
    )
    promoted_at: datetime | None = Field(default=None, description="When it was last promoted.")
    drift: DriftPolicy | None = Field(
        default=None, description="When monitoring counts the production inputs as drifted."
    )
    notebook_hashes: dict[str, str] = Field(
        default_factory=dict,
        description="Notebook path → content hash (flows.manifest.notebook_content_hash) at "
        "promotion: a run can tell the notebook changed since it was checked.",
    )

    @field_validator("notebooks")
    @classmethod
    def _relative_notebooks(cls, value: list[str]) -> list[str]:
        for path in value:
            if Path(path).is_absolute() or path.startswith("~"):
                raise ValueError(
                    f"{path!r} is absolute: notebook paths are relative to the project root"
                )
            if not path.endswith(".ipynb"):
                raise ValueError(f"{path!r} is not a .ipynb file")
        stems = [PurePosixPath(p).stem for p in value]
        if len(set(stems)) != len(stems):
            raise ValueError(
                f"notebook stems must be unique (parameters are keyed by stem): {value}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        if self.flow == "training":
            self._check_training()
        else:
            training_only = [
                f
                for f in ("task", "target", "time_column", "model_file", "holdout_file")
                if getattr(self, f) is not None
            ]
            if self.data or self.id_columns or training_only:
                raise ValueError(
                    f"{['data', 'id_columns', *training_only]} apply to training pipelines "
                    "only: put a notebook's inputs in parameters"
                )
        stems = set(self.stems)
        for section in ("parameters", "grid", "secrets"):
            unknown = sorted(set(getattr(self, section)) - stems)
            if unknown:
                raise ValueError(
                    f"{section} for unknown notebook(s) {unknown}: keys are notebook stems "
                    f"{sorted(stems)}"
                )
        for stem, refs in self.secrets.items():
            both = sorted(set(refs) & set(self.parameters.get(stem, {})))
            if both:
                raise ValueError(f"{stem}: {both} given both as parameters and as secrets")
        return self

    def _check_training(self) -> None:
        if self.task is None:
            raise ValueError(
                "a training pipeline needs 'task': classification or regression "
                "(nbprod promote --task)"
            )
        if not self.target:
            raise ValueError(
                "a training pipeline needs 'target': the column to predict (nbprod promote "
                "--target)"
            )
        unknown = sorted(set(self.data) - set(TRAINING_DATA_KEYS))
        if unknown:
            raise ValueError(f"unknown data key(s) {unknown}: expected {list(TRAINING_DATA_KEYS)}")
        if "data_path" not in self.data:
            raise ValueError("a training pipeline needs data.data_path (nbprod promote --data)")
        if ("start_date" in self.data or "end_date" in self.data) and not self.time_column:
            raise ValueError(
                "data.start_date/end_date need 'time_column' (nbprod promote --time-column)"
            )
        roles = [self.target, *self.id_columns, *([self.time_column] if self.time_column else [])]
        if len(set(roles)) != len(roles):
            raise ValueError(f"target, id_columns and time_column overlap: {roles}")
        for stem, params in self.parameters.items():
            given = params.get("target")
            if given is not None and given != self.target:
                raise ValueError(
                    f"parameters.{stem}.target is {given!r} but the pipeline's target is "
                    f"{self.target!r}: nbprod passes the spec's target to notebooks that "
                    "declare it; remove the parameter or change 'target'"
                )

    @property
    def resolved_model_name(self) -> str:
        """The BentoML model name: ``model_name``, else the pipeline name."""
        return self.model_name or self.name

    @property
    def non_feature_columns(self) -> list[str]:
        """Columns that are never model features: ids, time and target."""
        columns = [*self.id_columns]
        if self.time_column:
            columns.append(self.time_column)
        if self.target:
            columns.append(self.target)
        return columns

    @property
    def stems(self) -> list[str]:
        """Notebook stems in run order: the keys of parameters, grid and secrets."""
        return [PurePosixPath(p).stem for p in self.notebooks]

    def notebook_paths(self, root: Path | None = None) -> list[Path]:
        """The notebooks as absolute paths under the project root."""
        return [resolve_project_path(p, root) for p in self.notebooks]

    def parameters_for(self, stem: str) -> dict[str, Any]:
        """A copy of one notebook's parameters (callers add wired paths without mutating)."""
        return dict(self.parameters.get(stem, {}))

    def resolved_secrets(self, stem: str) -> dict[str, str]:
        """One notebook's secret parameters with their values, read now (on the worker)."""
        return {name: ref.resolve() for name, ref in self.secrets.get(stem, {}).items()}

    def relative_path(self) -> str:
        """``deployments/<name>.yaml``: what a deployment passes as its ``spec`` parameter."""
        return f"{SPECS_DIR}/{self.name}.yaml"


def training_specs(root: Path | None = None) -> list[str]:
    """Names of the project's training pipelines (``deployments/*.yaml`` with flow training)."""
    folder = (root or project_root()) / SPECS_DIR
    names = []
    for file in sorted(folder.glob("*.yaml")):
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(raw, dict) and raw.get("flow") == "training" and raw.get("name") == file.stem:
            names.append(file.stem)
    return names


def default_pipeline(root: Path | None = None) -> str:
    """The project's only training pipeline, else ``training``."""
    names = training_specs(root)
    return names[0] if len(names) == 1 else DEFAULT_PIPELINE


def _format_errors(path: Path, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        problems.append(f"field '{where}': {message}")
    return f"pipeline spec {path}: " + "; ".join(problems)


def load_spec(path: str | Path, *, root: Path | None = None) -> PipelineSpec:
    """Read and validate a spec; a relative path is relative to the project root.

    Every problem is named with the file and the field, in one ConfigError.
    """
    file = resolve_project_path(path, root)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"pipeline spec {file} not found: promote a notebook with `nbprod promote` to create it"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"pipeline spec {file} cannot be read: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline spec {file} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"pipeline spec {file} must be a YAML mapping of fields, not {raw!r}")
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(file, exc)) from exc
    if spec.name != file.stem:
        raise ConfigError(
            f"pipeline spec {file}: field 'name': {spec.name!r} differs from the file name: "
            f"rename the file to {spec.name}.yaml or fix the name"
        )
    return spec


SPEC_HEADER = (
    "# nbprod pipeline spec, written by `nbprod promote` and read by the Prefect flows.\n"
    "# Paths are relative to the project root. Edit by hand or re-run `nbprod promote`.\n"
)


def dump_spec(spec: PipelineSpec) -> str:
    """The spec as YAML, fields in model order, unset optional fields left out."""
    data = spec.model_dump(mode="json", exclude_none=True)
    return SPEC_HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def save_spec(
    spec: PipelineSpec, path: str | Path | None = None, *, root: Path | None = None
) -> Path:
    """Write atomically (temp file + rename): a worker never reads a half-written spec."""
    file = resolve_project_path(path, root) if path is not None else spec_path(spec.name, root)
    write_atomic(file, dump_spec(spec))
    return file
