"""Names and records of the run store: version ids, pipeline names, what a run record says.

Standard library only: the CLI and the store import it before anything heavy.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from flows.errors import RunStoreError

# accepted/rejected: a training run's gate decision; completed: a plain notebook pipeline run.
RunStatus = Literal["accepted", "rejected", "completed", "failed"]
# What older records hold in "pipeline" (the flow's name), and the pipeline they belong to
# when they name no spec: the one pipeline there was.
FLOW_NAMES = ("training_pipeline", "notebook_pipeline", "monitoring_pipeline")
LEGACY_PIPELINE = "training"
# A pipeline name, as flows.spec.NAME_PATTERN (tests/test_store.py keeps the two equal; the
# store does not import the spec module, which needs pydantic and YAML).
PIPELINE_NAME_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
# A run version: one path segment, no dots (new_version_id's ids, and older shorter ones).
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_version_id() -> str:
    """Sortable by time (UTC, to the millisecond), unique across concurrent runs, and a valid
    BentoML tag version. Milliseconds: two runs that fail at once within a second (a bad
    parameter, then bad data) must still list in the order they ran."""
    now = datetime.now(UTC)
    return f"v{now:%Y%m%d-%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


def check_version(version: str) -> str:
    """``version`` if it is a plain run version id, else a RunStoreError (no path can escape)."""
    if not isinstance(version, str) or not re.fullmatch(VERSION_PATTERN, version):
        raise RunStoreError(
            f"{version!r} is not a run version: give a version id as `nbprod runs` lists it "
            "(letters, digits, dashes; no '/' or '..')"
        )
    return version


def check_pipeline_name(name: str) -> str:
    """``name`` if it is a valid pipeline name, else a RunStoreError naming the rule."""
    if not isinstance(name, str) or not re.fullmatch(PIPELINE_NAME_PATTERN, name):
        raise RunStoreError(
            f"{name!r} is not a pipeline name: lowercase letters, digits and dashes, as in "
            "deployments/NAME.yaml (see `nbprod runs`)"
        )
    return name


def pipeline_of(record: dict[str, Any]) -> str:
    """The pipeline a run record belongs to.

    Records name it in ``pipeline``; older ones held the flow's name there and the pipeline in
    ``spec`` (a run started with ``--spec``), or nothing (the one ``training`` pipeline).
    """
    name = record.get("pipeline")
    if name and name not in FLOW_NAMES:
        return str(name)
    return str(record.get("spec") or LEGACY_PIPELINE)


def flow_of(record: dict[str, Any]) -> str | None:
    """The flow that wrote a run record (``training_pipeline``, ...), also for older records."""
    flow = record.get("flow") or (
        record.get("pipeline") if record.get("pipeline") in FLOW_NAMES else None
    )
    if flow is None and record.get("kind") == "monitoring":
        flow = "monitoring_pipeline"
    return str(flow) if flow else None
