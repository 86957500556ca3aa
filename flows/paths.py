"""Where the project and nbprod's state are, from the environment alone (standard library only).

The project root is, in this order: ``$NBPROD_PROJECT_DIR`` when set (what deployments pass to
their flow runs); else the nearest directory holding ``prefect.yaml``, from the working directory
upward (as git finds its repository); else the checkout holding ``flows/``. nbprod's state — run
store, Prefect home, BentoML store — defaults under ``<project>/.nbprod/`` whatever the entry
point: ``make`` exports the same values that :func:`apply_state_defaults` sets for a plain
``nbprod`` command.

Why a module of its own: commands find the project and the state folder before they import
pydantic, YAML or Prefect, exactly as the typed settings (flows.settings) and the spec loader
(flows.spec) do; both take these from here.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

# nbprod's own files (bentos/, the bundled example): the project when no other is found.
CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILE = "prefect.yaml"
PROJECT_DIR_ENV = "NBPROD_PROJECT_DIR"
STATE_DIRNAME = ".nbprod"
SETTINGS_ENV_PREFIX = "NBPROD_"
HOME_ENV = f"{SETTINGS_ENV_PREFIX}HOME"
# Homes of the libraries that keep state, under nbprod's home; read when they are first imported.
STATE_HOMES = {"PREFECT_HOME": "prefect", "BENTOML_HOME": "bentoml"}


def find_project(start: Path | None = None) -> Path | None:
    """The nearest directory from ``start`` (default: the working directory) upward holding
    ``prefect.yaml``, or None."""
    try:
        here = (start or Path.cwd()).resolve()
    except OSError:  # the working directory was deleted
        return None
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder
    return None


def project_root() -> Path:
    """``$NBPROD_PROJECT_DIR``, else the project found from the working directory, else the
    checkout. Read on every call: tests and workers change the environment and directory."""
    configured = os.environ.get(PROJECT_DIR_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return find_project() or CHECKOUT_ROOT


def default_home() -> Path:
    """``<project>/.nbprod``: the typed settings' default for ``NBPROD_HOME``."""
    return project_root() / STATE_DIRNAME


def home_dir() -> Path:
    """``NBPROD_HOME`` as the typed settings read it (a plain path), else :func:`default_home`."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else default_home()


def state_defaults() -> dict[str, str]:
    """``PREFECT_HOME`` and ``BENTOML_HOME`` under nbprod's home, as the Makefile sets them."""
    home = home_dir()
    return {key: str(home / folder) for key, folder in STATE_HOMES.items()}


def apply_state_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set ``PREFECT_HOME``/``BENTOML_HOME`` where unset (or empty) and create both folders.

    Call before Prefect or BentoML is imported: both read their home once, at import. Returns
    the homes in effect. Values already set (by ``make``, a test, the user) are kept.
    """
    env = os.environ if environ is None else environ
    for key, value in state_defaults().items():
        if not env.get(key):
            env[key] = value
    homes = {key: env[key] for key in STATE_HOMES}
    for folder in homes.values():
        os.makedirs(os.path.expanduser(folder), exist_ok=True)
    return homes


def resolve_project_path(path: str | Path, root: Path | None = None) -> Path:
    """A spec's project-relative path as an absolute path (absolute paths pass through)."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (root or project_root()) / candidate


def __getattr__(name: str) -> Path:
    """``PROJECT_ROOT`` and ``DEFAULT_HOME``, computed when read (kept for existing importers;
    prefer :func:`project_root` and :func:`default_home`, which follow later changes)."""
    if name == "PROJECT_ROOT":
        return project_root()
    if name == "DEFAULT_HOME":
        return default_home()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Telemetry off and a patient embedded server: every entry point (nbprod, make demo) sets these.
QUIET_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    # The embedded server needs 15-25 s to start on small machines; Prefect's default is 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def prepare_environment() -> None:
    """Quiet, patient defaults, and state under the project whatever the entry point.

    ``PREFECT_HOME`` and ``BENTOML_HOME`` default to ``<project>/.nbprod/{prefect,bentoml}``
    (as ``make`` sets them) and exist: Prefect cannot open its SQLite file otherwise. Runs
    before Prefect or BentoML is imported, since both read their home once, at import.
    """
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    apply_state_defaults()


def default_bentoml_home() -> None:
    """``BENTOML_HOME`` under the project when unset: a flow run a worker started has not been
    through :func:`prepare_environment`, and BentoML reads it when first imported."""
    if not os.environ.get("BENTOML_HOME"):
        os.environ["BENTOML_HOME"] = state_defaults()["BENTOML_HOME"]
