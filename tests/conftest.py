"""Test isolation: every session gets its own Prefect home, BentoML store and nbprod home.

Environment is set in pytest_configure, before any test module imports Prefect or BentoML
(both read their homes at import time).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fault_projects import PromotedProject

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    base = Path(tempfile.mkdtemp(prefix="nbprod-tests-"))
    os.environ.update(
        {
            "PREFECT_HOME": str(base / "prefect"),
            "BENTOML_HOME": str(base / "bentoml"),
            "NBPROD_HOME": str(base / "nbprod"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "BENTOML_DO_NOT_TRACK": "true",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        }
    )
    os.environ.pop("PREFECT_API_URL", None)
    # The tests check nbprod's defaults, ONNX Runtime on among them, whatever the shell set.
    os.environ.pop("NBPROD_ONNX_RUNTIME", None)
    for sub in ("prefect", "bentoml", "nbprod"):
        (base / sub).mkdir()
    # Prefect binds its console log handler to sys.stderr when first imported. Importing it here,
    # under pytest's session-wide capture, keeps it off a test's capsys stream, which is closed
    # after that test (later log lines would then fail and recurse through log_prints).
    import prefect  # noqa: F401


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A real temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def nbprod_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh run store and scratch space per test: no test sees another's champion."""
    home = tmp_path / "nbprod"
    monkeypatch.setenv("NBPROD_HOME", str(home))
    monkeypatch.delenv("NBPROD_RUN_STORE_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def promoted_fault_project(
    tmp_path_factory: pytest.TempPathFactory, prefect_server: None
) -> PromotedProject:
    """The fault project (tests/fault_projects.py), promoted, with its first champion: built
    once per session; a fault module copies it (``fault_projects.copy_project``), never edits it.
    """
    from fault_projects import build_promoted_project

    return build_promoted_project(tmp_path_factory.mktemp("fault-template") / "churn-project")
