"""Running the ``nbprod`` command in a subprocess, as a user's shell would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_nbprod(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m flows.cli ARGS`` (the console script's entry point) from the project root."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
