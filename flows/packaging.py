"""Package an accepted model: BentoML model store entry, then a bento pinned to exactly that model.

BentoML reads ``BENTOML_HOME`` when it is first imported, so it is imported inside the functions:
importing this module must not fix the store location (nor cost the import time).

Pinning: the service in ``bentos/`` reads its model tag from ``model_pin.json`` next to it.
``build_bento`` copies ``bentos/`` to a temporary build context, writes the pin there and builds
from that copy, so the source directory never holds a pin and every bento carries its own.
``:latest`` is refused everywhere: the newest saved model is not necessarily the approved one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import yaml

from flows.errors import PackagingError

MODEL_FILE = "model.joblib"
PIN_FILE = "model_pin.json"
BENTOFILE = "bentofile.yaml"
# The module bentoml imports from the build context; see _isolated_service_module.
SERVICE_MODULE = "service"
# Metadata key the service reads to build its request schema (bentos/service.py).
FEATURE_SCHEMA_KEY = "feature_schema"
# What the service imports at serve time. Pinned to the installed versions so the bento's
# pipeline is unpickled by the scikit-learn that pickled it.
SERVE_TIME_PACKAGES = ("scikit-learn", "pandas", "numpy", "pydantic", "joblib", "threadpoolctl")


def save_model(
    model_path: Path,
    *,
    name: str,
    labels: dict[str, str],
    metadata: dict[str, Any],
    feature_schema: dict[str, Any],
) -> str:
    """Save the joblib'd pipeline into the BentoML model store; return the exact tag 'name:version'.

    The joblib file is copied byte for byte (not re-pickled) so the stored artifact is the one the
    notebook produced and the gate evaluated. The feature schema goes into the model metadata
    under ``feature_schema``: the service builds its request validation from it at start-up, and
    ``bentoml models get`` shows it.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise PackagingError(
            f"Cannot save model {name!r}: {model_path} does not exist; fix the notebook outputs"
        )
    if ":" in name:
        raise PackagingError(
            f"Cannot save model {name!r}: pass a bare name, BentoML generates the version"
        )
    _require_str_labels(labels, what=f"model {name!r}")
    _validate_feature_schema(feature_schema, name=name)
    _check_schema_matches_pipeline(model_path, feature_schema, name=name)
    # Deep copies: bentoml validates metadata in place (numpy scalars become Python numbers).
    full_metadata = copy.deepcopy(dict(metadata))
    if FEATURE_SCHEMA_KEY in full_metadata and full_metadata[FEATURE_SCHEMA_KEY] != feature_schema:
        raise PackagingError(
            f"Cannot save model {name!r}: metadata already has a different {FEATURE_SCHEMA_KEY!r}; "
            "fix: pass the schema only as feature_schema"
        )
    full_metadata[FEATURE_SCHEMA_KEY] = copy.deepcopy(feature_schema)

    import bentoml

    try:
        with bentoml.models.create(
            name, labels=dict(labels), metadata=full_metadata
        ) as bento_model:
            shutil.copyfile(model_path, bento_model.path_of(MODEL_FILE))
    except (bentoml.exceptions.BentoMLException, ValueError, TypeError, OSError) as exc:
        raise PackagingError(
            f"Saving model {name!r} from {model_path} to the BentoML store failed: {exc}; "
            "fix: metadata must be JSON-like, the name a valid BentoML tag "
            "(lowercase letters, digits, '-', '_', '.'; max 63)"
        ) from exc
    return str(bento_model.tag)


def build_bento(
    model_tag: str,
    *,
    bentos_dir: Path,
    version: str,
    labels: dict[str, str] | None = None,
) -> str:
    """Build a bento from the service in bentos_dir pinned to exactly model_tag; return its tag.

    The build runs in this process from a copy of ``bentos_dir`` holding the pin. BentoML imports
    ``service.py`` to inspect it and briefly ``os.chdir``s into the build context meanwhile, so do
    not build concurrently with other threads that use relative paths. Python requirements are
    pinned to the installed versions and not locked with uv, so building needs no network.
    Rebuilding an existing ``name:version`` returns it when it pins the same model (a retried
    flow), and fails otherwise.
    """
    _require_exact_tag(model_tag)
    _require_str_labels(labels or {}, what=f"the bento for model {model_tag}")
    bentos_dir = Path(bentos_dir)
    bentofile = bentos_dir / BENTOFILE
    if not bentofile.is_file():
        raise PackagingError(
            f"Cannot build a bento for model {model_tag}: {bentofile} is missing; fix bentos_dir"
        )
    build_config = yaml.safe_load(bentofile.read_text(encoding="utf-8")) or {}

    import bentoml

    try:
        bentoml.models.get(model_tag)
    except bentoml.exceptions.NotFound as exc:
        raise PackagingError(
            f"Cannot build a bento for model {model_tag}: it is not in the BentoML store "
            f"({exc}); fix: save it with save_model first, or check BENTOML_HOME"
        ) from exc

    bento_name = build_config.get("name")
    try:
        bentoml.Tag(bento_name or "bento", version)
    except (ValueError, bentoml.exceptions.BentoMLException) as exc:
        raise PackagingError(
            f"Cannot build a bento for model {model_tag}: version {version!r} is not a valid "
            f"BentoML tag version ({exc}); fix: use letters, digits, '-', '_', '.' (max 63)"
        ) from exc
    if bento_name:
        existing = _existing_bento(f"{bento_name}:{version}")
        if existing is not None:
            pinned = sorted(str(m.tag) for m in existing.info.all_models)
            if pinned == [model_tag]:
                return str(existing.tag)
            raise PackagingError(
                f"Bento {existing.tag} already exists and pins {pinned}, not {model_tag}; "
                "fix: build with a new version"
            )

    build_config["models"] = [model_tag]
    python = dict(build_config.get("python") or {})
    python["packages"] = _serve_time_requirements()
    python["lock_packages"] = False  # uv lock would resolve against PyPI
    build_config["python"] = python

    try:
        with tempfile.TemporaryDirectory(prefix="nbprod-bento-") as tmp:
            build_ctx = Path(tmp) / "ctx"
            shutil.copytree(
                bentos_dir,
                build_ctx,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", PIN_FILE),
            )
            (build_ctx / PIN_FILE).write_text(
                json.dumps({"model_tag": model_tag}) + "\n", encoding="utf-8"
            )
            (build_ctx / BENTOFILE).write_text(
                yaml.safe_dump(build_config, sort_keys=False), encoding="utf-8"
            )
            with _isolated_service_module():
                bento = bentoml.bentos.build_bentofile(
                    str(build_ctx / BENTOFILE),
                    version=version,
                    labels=dict(labels or {}),
                    build_ctx=str(build_ctx),
                )
    except Exception as exc:
        # BentoML surfaces build problems as BentoMLException, but importing the service runs
        # user code (ImportError, RuntimeError from the pin check, ...): name the tag either way.
        raise PackagingError(
            f"Building the bento for model {model_tag} (version {version!r}) from {bentos_dir} "
            f"failed: {exc}; fix the service or bentofile, or choose a valid version "
            "(letters, digits, '-', '_', '.')"
        ) from exc

    pinned = sorted(str(m.tag) for m in bento.info.all_models)
    if pinned != [model_tag]:
        with contextlib.suppress(Exception):
            bentoml.bentos.delete(str(bento.tag))
        raise PackagingError(
            f"Bento {bento.tag} pins {pinned} instead of exactly {model_tag}; "
            "fix: the service must reference the model only through model_pin.json"
        )
    return str(bento.tag)


def delete_model(tag: str) -> None:
    """Delete one exact model version, to undo a half-done packaging step.

    Idempotent (an already-missing model is fine, so undo can be retried). Refuses ``:latest``,
    which could hit a model saved by someone else meanwhile, and refuses a model a bento still
    references, because that bento could no longer be served.
    """
    _require_exact_tag(tag)

    import bentoml

    users = [
        str(bento.tag)
        for bento in bentoml.bentos.list()
        if tag in {str(m.tag) for m in bento.info.all_models}
    ]
    if users:
        raise PackagingError(
            f"Refusing to delete model {tag}: bentos {users} use it; fix: delete those first"
        )
    try:
        bentoml.models.delete(tag)
    except bentoml.exceptions.NotFound:
        return
    except (bentoml.exceptions.BentoMLException, OSError) as exc:
        raise PackagingError(
            f"Deleting model {tag} from the BentoML store failed: {exc}; "
            "fix: check BENTOML_HOME permissions, or run `bentoml models delete` by hand"
        ) from exc


def delete_bento(tag: str) -> None:
    """Delete one exact bento version, e.g. one that failed infra validation, before its model.

    Idempotent (an already-missing bento is fine, so undo can be retried); ``:latest`` is refused
    for the same reason as in ``delete_model``.
    """
    _require_exact_tag(tag)

    import bentoml

    try:
        bentoml.bentos.delete(tag)
    except bentoml.exceptions.NotFound:
        return
    except (bentoml.exceptions.BentoMLException, OSError) as exc:
        raise PackagingError(
            f"Deleting bento {tag} from the BentoML store failed: {exc}; "
            "fix: check BENTOML_HOME permissions, or run `bentoml delete` by hand"
        ) from exc


def _require_exact_tag(tag: str) -> None:
    """Reject tags that do not name one immutable model version."""
    name, _, version = str(tag).partition(":")
    if not name or not version or version == "latest":
        raise PackagingError(
            f"Model tag {tag!r} is not an exact 'name:version'; fix: use the tag save_model "
            "returned (':latest' is refused: the newest model is not necessarily the approved one)"
        )


def _require_str_labels(labels: dict[str, str], *, what: str) -> None:
    """BentoML would silently stringify non-str labels (1 -> '1'), breaking exact round-trips."""
    bad = {k: v for k, v in labels.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise PackagingError(
            f"Cannot package {what}: labels must map str to str, got {bad!r}; "
            "fix: convert them to str, or put structured values in metadata"
        )


def _validate_feature_schema(schema: dict[str, Any], *, name: str) -> None:
    """Fail at packaging time on a schema the service could not turn into request validation."""
    problems: list[str] = []
    if not isinstance(schema, dict):
        raise PackagingError(f"Cannot save model {name!r}: feature_schema must be a dict")
    numerical = schema.get("numerical")
    categorical = schema.get("categorical")
    if not isinstance(numerical, dict) or not isinstance(categorical, dict):
        problems.append("'numerical' and 'categorical' must be dicts of column -> spec")
    else:
        if not numerical and not categorical:
            problems.append("no feature columns")
        for column, spec in numerical.items():
            if not isinstance(spec, dict) or spec.get("dtype") not in ("int", "float"):
                problems.append(f"{column}: dtype must be 'int' or 'float'")
                continue
            bounds = [spec.get(key) for key in ("min", "max")]
            for bound in bounds:
                if bound is not None and (
                    isinstance(bound, bool)
                    or not isinstance(bound, int | float)
                    or not math.isfinite(bound)
                ):
                    problems.append(f"{column}: min/max must be finite numbers, got {bound!r}")
            if None not in bounds and bounds[0] > bounds[1]:
                problems.append(f"{column}: min {bounds[0]} > max {bounds[1]}")
        for column, spec in categorical.items():
            categories = spec.get("categories") if isinstance(spec, dict) else None
            if (
                not isinstance(categories, list)
                or not categories
                or not all(isinstance(c, str) for c in categories)
            ):
                problems.append(f"{column}: categories must be a non-empty list of str")
        overlap = set(numerical) & set(categorical)
        if overlap:
            problems.append(f"columns both numerical and categorical: {sorted(overlap)}")
        target = schema.get("target")
        if not isinstance(target, str) or target in numerical or target in categorical:
            problems.append("'target' must be a column name that is not a feature")
    if problems:
        raise PackagingError(
            f"Cannot save model {name!r}: invalid feature_schema: {'; '.join(problems)}; "
            "fix the schema the notebook writes"
        )


def _check_schema_matches_pipeline(model_path: Path, schema: dict[str, Any], *, name: str) -> None:
    """Catch a schema/pipeline mismatch now, not when the first request hits the server."""
    import joblib

    try:
        pipeline = joblib.load(model_path)
    except Exception as exc:  # unpickling runs arbitrary code paths; any failure means unusable
        raise PackagingError(
            f"Cannot save model {name!r}: {model_path} does not load with joblib ({exc}); "
            "fix the notebook's model output"
        ) from exc
    if not hasattr(pipeline, "predict_proba"):
        raise PackagingError(
            f"Cannot save model {name!r}: {model_path} has no predict_proba; "
            "the service needs a probabilistic classifier"
        )
    fitted = getattr(pipeline, "feature_names_in_", None)
    if fitted is None:
        return
    expected = set(schema["numerical"]) | set(schema["categorical"])
    if set(fitted) != expected:
        raise PackagingError(
            f"Cannot save model {name!r}: feature_schema columns {sorted(expected)} differ from "
            f"the columns the pipeline was fit on {sorted(fitted)}; fix the schema or the notebook"
        )


def _serve_time_requirements() -> list[str]:
    """Pin the packages the service imports at serve time to the versions installed here."""
    try:
        return [f"{pkg}=={importlib_metadata.version(pkg)}" for pkg in SERVE_TIME_PACKAGES]
    except importlib_metadata.PackageNotFoundError as exc:
        raise PackagingError(
            f"Cannot pin the bento's requirements: {exc.name} is not installed; fix the venv"
        ) from exc


def _existing_bento(tag: str) -> Any:
    """Return the stored bento with this tag, or None."""
    import bentoml

    try:
        return bentoml.bentos.get(tag)
    except bentoml.exceptions.NotFound:
        return None


@contextlib.contextmanager
def _isolated_service_module() -> Iterator[None]:
    """Make BentoML import *this* build context's ``service.py``.

    BentoML imports the service by module name and reuses ``sys.modules``, so a second build in
    the same process would silently reuse the first build's module, and with it the first pin.
    """
    previous = sys.modules.pop(SERVICE_MODULE, None)
    try:
        yield
    finally:
        sys.modules.pop(SERVICE_MODULE, None)
        if previous is not None:
            sys.modules[SERVICE_MODULE] = previous
