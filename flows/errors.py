"""Domain errors. Each names the artifact at fault and the fix, so the CLI can print one line.

Lower-level exceptions are re-raised with ``from exc`` so the cause stays in the logs.
"""

from __future__ import annotations

from typing import Any


class NbprodError(Exception):
    """Base class: anything a user can fix. The CLI prints ``str(exc)`` and exits non-zero.

    Pickles with its keyword attributes (Prefect persists a failed task's exception, Dask sends
    it between processes): the default pickling calls ``cls(*args)`` and loses them, or fails
    when a subclass requires them.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[NbprodError], args: tuple[Any, ...], state: dict[str, Any]) -> NbprodError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class ConfigError(NbprodError):
    """A settings value, policy file or pipeline spec is malformed."""


class DataValidationError(NbprodError):
    """Input data does not match the schema derived from the reference data."""

    def __init__(self, message: str, *, dataset: str, columns: list[str] | None = None) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.columns = sorted(columns or [])


class ParameterError(NbprodError):
    """A notebook parameter is unknown or of the wrong type (raised before any kernel starts)."""


class NotebookExecutionError(NbprodError):
    """A notebook raised while executing; the executed copy is kept with the failing cell marked."""

    def __init__(
        self,
        message: str,
        *,
        notebook: str,
        cell_index: int | None = None,
        executed_path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.notebook = notebook
        self.cell_index = cell_index
        self.executed_path = executed_path


class OutputContractError(NbprodError):
    """A notebook did not write the outputs the notebook contract requires."""


class RunStoreError(NbprodError):
    """The run store is unreadable, a version is missing, or a write would overwrite history."""


class PackagingError(NbprodError):
    """Saving the model to the BentoML store or building the bento failed."""


class LintError(NbprodError):
    """A notebook cannot be linted at all: the file is missing or is not nbformat-4 JSON."""


class ContainerizeError(NbprodError):
    """Docker is missing or unreachable, or building the bento's container image failed."""


class ServingError(NbprodError):
    """A run cannot be served, or a running service cannot be used (`nbprod serve`/`predict`)."""


class InferenceLogError(NbprodError):
    """An inference log is missing or holds a line that is not a logged prediction."""


class PromotionError(NbprodError):
    """A notebook failed the checks ``nbprod promote`` runs; ``problems`` lists every one."""

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class DeployError(NbprodError):
    """``nbprod deploy`` could not register deployments: no server, no pool, or Prefect failed."""


class DriftError(NbprodError):
    """A drift check cannot run: columns missing, a method that does not fit a column."""


class MonitoringError(NbprodError):
    """A monitoring run cannot start: no champion, no reference data, or an unreadable source."""


class RollbackError(NbprodError):
    """A rollback target does not exist, was not accepted, or its bento is gone."""


class KernelDiedError(NotebookExecutionError):
    """The notebook's kernel died (killed, out of memory, a crash in native code).

    The one notebook failure worth retrying: the Prefect task retries it (flows.execution).
    """


class NotebookTimeoutError(NotebookExecutionError):
    """A cell ran longer than the execution timeout (``NBPROD_EXECUTION_TIMEOUT_S``)."""
