"""Test modules that package bentos as scripts: their own BentoML store, their JSON result.

Why a script: packaging imports BentoML and builds a bento, which must happen in a process whose
BentoML home is the test's own (BentoML reads ``BENTOML_HOME`` once, at import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def isolated_bentoml_env(bentoml_home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with a private BentoML store, no telemetry, the repo importable
    and no model pinned (``NBPROD_MODEL_TAG``); ``extra`` set on top."""
    env = {k: v for k, v in os.environ.items() if k != "NBPROD_MODEL_TAG"}
    env.update(
        BENTOML_HOME=str(bentoml_home),
        BENTOML_DO_NOT_TRACK="true",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **extra,
    )
    return env


def run_script(
    script: str,
    workdir: Path,
    env: dict[str, str],
    *,
    result: str = "result.json",
    timeout: float = 600,
) -> Any:
    """Run ``script`` (a test module's ``__main__``) with ``workdir`` as its argument; the JSON it
    wrote to ``workdir / result``. Its output is in the failure message."""
    proc = subprocess.run(
        [sys.executable, script, str(workdir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{Path(script).name} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads((workdir / result).read_text())
