"""Where the project and nbprod's state are, from the environment alone (standard library only).

Why a module of its own: ``nbprod run`` answers an unchanged re-run (flows.uptodate) before it
imports pydantic, YAML or Prefect, and must find the project and the state folder exactly as the
typed settings (flows.settings) and the spec loader (flows.spec) do; both take these from here.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_DIR_ENV = "NBPROD_PROJECT_DIR"
# The typed settings' default for NBPROD_HOME (flows.settings.NbprodSettings.home).
DEFAULT_HOME = PROJECT_ROOT / ".nbprod"
SETTINGS_ENV_PREFIX = "NBPROD_"
# The fields of flows.settings.NbprodSettings (tests/test_uptodate.py keeps the two in step).
SETTINGS_FIELDS = (
    "home",
    "run_store_url",
    "notebooks_dir",
    "bentos_dir",
    "policy_path",
    "kernel_name",
    "execution_timeout_s",
    "warm_kernels",
    "model_name",
)


def project_root() -> Path:
    """``$NBPROD_PROJECT_DIR`` if set, else this checkout: tests and workers can point elsewhere."""
    configured = os.environ.get(PROJECT_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else PROJECT_ROOT


def resolve_project_path(path: str | Path, root: Path | None = None) -> Path:
    """A spec's project-relative path as an absolute path (absolute paths pass through)."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (root or project_root()) / candidate


def home_dir() -> Path:
    """``NBPROD_HOME`` as the typed settings read it (a plain path), else their default."""
    configured = os.environ.get(f"{SETTINGS_ENV_PREFIX}HOME")
    return Path(configured) if configured else DEFAULT_HOME


def settings_environment() -> dict[str, str]:
    """The variables the typed settings are read from (no .env file), by their upper-case name.

    Only the settings' own: other ``NBPROD_*`` variables may hold secrets (a notebook's token
    given as ``{env: NBPROD_TOKEN}``), and what this returns is written to disk.
    """
    names = {f"{SETTINGS_ENV_PREFIX}{name}".upper() for name in SETTINGS_FIELDS}
    return {k.upper(): v for k, v in sorted(os.environ.items()) if k.upper() in names}


def write_atomic(file: Path, text: str) -> None:
    """Replace ``file`` with ``text`` in one rename, keeping no partial file on failure."""
    import tempfile

    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if file.exists():
            os.chmod(tmp, file.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
