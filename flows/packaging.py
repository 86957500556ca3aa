"""Package an accepted model: a BentoML model store entry, then a bento pinned to exactly it.

``package_model`` is what the training flow calls; ``delete_package`` undoes it (a bento that
failed its infra check). The steps are public too: ``save_model``, ``build_bento``,
``delete_model``, ``delete_bento``.

Runtime: given the holdout rows, ``package_model`` converts the model to ONNX and stores the
conversion with it only if it answers those rows like the model (``flows.model_runtime``); the
model's metadata says which runtime serves and why under ``runtime`` (``{"name": "onnxruntime" |
"sklearn", "reason": ...}``), which the bento's /metadata shows and ``packaged_runtime`` reads.

BentoML reads ``BENTOML_HOME`` when it is first imported, so it is imported inside the functions:
importing this module must not fix the store location (nor cost the import time).

Pinning: the service in ``bentos/`` reads its model tag and pipeline from ``model_pin.json`` next
to it. ``build_bento`` copies ``bentos/`` to a temporary build context, writes the pin there and
builds from that copy, so the source directory never holds a pin and every bento carries its own.
``:latest`` is refused everywhere: the newest saved model is not necessarily the approved one.

Concurrency: every nbprod write to the store (save, build, delete) holds ``store_lock``, an
exclusive lock on ``.nbprod-store.lock`` in the store's folder. BentoML 1.4's store moves a
name's ``latest`` pointer with an unlocked read-compare-write, so a save that overlaps another
process's save or delete of the same name fails after the item is stored (docs/upstream/bentoml.md;
tests/test_packaging_concurrency.py checks the installed BentoML still does).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flows.atomic import exclusive_lock
from flows.errors import PackagingError
from flows.faults import checkpoint

if TYPE_CHECKING:
    import pandas as pd

# The notebook's model file is stored under this one name in every BentoML model (joblib reads
# plain pickles too); the service loads it from there (bentos/pinning.py MODEL_FILE).
MODEL_FILE = "model.joblib"
PIN_FILE = "model_pin.json"
# The model's ONNX conversion, when it serves (bentos/fast_runtime.py ONNX_FILE), and the metadata
# key naming the runtime (RUNTIME_KEY there).
ONNX_FILE = "model.onnx"
RUNTIME_KEY = "runtime"
BENTOFILE = "bentofile.yaml"
# In the store's folder; see store_lock.
STORE_LOCK_FILE = ".nbprod-store.lock"
# Metadata key the service reads to build its request schema (bentos/pinning.py).
FEATURE_SCHEMA_KEY = "feature_schema"
TASKS = ("classification", "regression")
# What the service imports at serve time. Pinned to the installed versions so the bento's
# model is unpickled by the scikit-learn that pickled it.
SERVE_TIME_PACKAGES = (
    "scikit-learn",
    "pandas",
    "numpy",
    "pydantic",
    "joblib",
    "threadpoolctl",
    "onnxruntime",
)


def package_model(
    model_path: Path,
    *,
    pipeline: str,
    model_name: str,
    version: str,
    metadata: dict[str, Any],
    feature_schema: dict[str, Any],
    bentos_dir: Path,
    holdout: pd.DataFrame | None = None,
) -> tuple[str, str]:
    """Save the model and build the pipeline's bento pinned to it; return (model_tag, bento_tag).

    ``metadata`` must hold ``task`` ("classification" | "regression"); the rest (run_version,
    target, classes, id_columns, time_column, metrics, data_sha256, lineage, ...) is stored as
    given, without its None values (BentoML refuses None), plus ``pipeline``, ``classes`` (the
    model's ``classes_`` as JSON values, for a classifier), ``model_file`` (the file's name) and
    ``runtime``: ONNX Runtime when the model's conversion answers ``holdout``'s rows (their
    feature columns; others are ignored) like the model, else scikit-learn, with the reason
    (``packaged_runtime`` reads it back). The bento is named after the pipeline and versioned
    ``version``. If the build fails the saved model is deleted again: no packaged model without
    its bento.
    """
    from flows.model_runtime import choose_runtime

    model_path = Path(model_path)
    full_metadata, model = _model_metadata(
        model_path, pipeline, metadata, feature_schema, model_name
    )
    runtime = choose_runtime(model, holdout, feature_schema, full_metadata["task"], bentos_dir)
    full_metadata[RUNTIME_KEY] = runtime.metadata(ONNX_FILE)
    labels = {"pipeline": pipeline, "run_version": version, "task": full_metadata["task"]}
    model_tag = save_model(
        model_path,
        name=model_name,
        labels=labels,
        metadata=full_metadata,
        feature_schema=feature_schema,
        extra_files={ONNX_FILE: runtime.onnx} if runtime.onnx is not None else None,
    )
    try:
        checkpoint("bento-build")
        bento_tag = build_bento(
            model_tag, pipeline=pipeline, bentos_dir=bentos_dir, version=version, labels=labels
        )
    except Exception as exc:
        try:
            delete_model(model_tag)
        except PackagingError as undo_exc:  # the build's own error is the one to report
            exc.add_note(f"{model_tag} stays in the store (nbprod gc removes it): {undo_exc}")
        raise
    return model_tag, bento_tag


def packaged_runtime(model_tag: str) -> dict[str, Any]:
    """Which runtime serves a packaged model and why: its metadata's ``runtime`` (``name``,
    ``reason``; for ONNX Runtime also ``file``, ``inputs`` and ``versions``)."""
    _require_exact_tag(model_tag)

    import bentoml

    runtime = bentoml.models.get(model_tag).info.metadata.get(RUNTIME_KEY)
    return dict(runtime) if runtime else {"name": "sklearn", "reason": "packaged without one"}


def delete_package(model_tag: str, bento_tag: str) -> None:
    """Undo ``package_model``: the bento first (it references the model), then the model.

    Idempotent, so an interrupted undo can be retried.
    """
    delete_bento(bento_tag)
    delete_model(model_tag)


def save_model(
    model_path: Path,
    *,
    name: str,
    labels: dict[str, str],
    metadata: dict[str, Any],
    feature_schema: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
) -> str:
    """Save the model file into the BentoML model store; return the exact tag 'name:version'.

    The file is copied byte for byte (not re-pickled) so the stored artifact is the one the
    notebook produced and the gate evaluated; ``extra_files`` (name -> bytes, such as the
    model's ONNX conversion) are written next to it. The feature schema goes into the metadata
    under ``feature_schema``: the service builds its request validation from it.
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
        with (
            store_lock(),
            bentoml.models.create(name, labels=dict(labels), metadata=full_metadata) as bento_model,
        ):
            shutil.copyfile(model_path, bento_model.path_of(MODEL_FILE))
            for file_name, content in (extra_files or {}).items():
                Path(bento_model.path_of(file_name)).write_bytes(content)
    except (bentoml.exceptions.BentoMLException, ValueError, TypeError, OSError) as exc:
        raise PackagingError(
            f"Saving model {name!r} from {model_path} to the BentoML store failed: {exc}; "
            "fix: metadata must be JSON-like without None, the name a valid BentoML tag "
            "(lowercase letters, digits, '-', '_', '.'; max 63)"
        ) from exc
    return str(bento_model.tag)


def build_bento(
    model_tag: str,
    *,
    pipeline: str,
    bentos_dir: Path,
    version: str,
    labels: dict[str, str] | None = None,
) -> str:
    """Build the bento ``<pipeline>:<version>`` from the service in bentos_dir, pinned to model_tag.

    The build runs in this process from a copy of ``bentos_dir`` holding the pin. BentoML imports
    the service to inspect it and briefly ``os.chdir``s into the build context meanwhile, so do
    not build concurrently with other threads that use relative paths. Python requirements are
    pinned to the installed versions and not locked with uv, so building needs no network.
    Rebuilding an existing bento returns it when it pins the same model (a retried flow), and
    fails otherwise.
    """
    with store_lock():
        return _build_pinned_bento(
            model_tag, pipeline=pipeline, bentos_dir=bentos_dir, version=version, labels=labels
        )


def _build_pinned_bento(
    model_tag: str,
    *,
    pipeline: str,
    bentos_dir: Path,
    version: str,
    labels: dict[str, str] | None,
) -> str:
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
    try:
        bentoml.Tag(pipeline, version)
    except (ValueError, bentoml.exceptions.BentoMLException) as exc:
        raise PackagingError(
            f"Cannot build a bento for model {model_tag}: {pipeline}:{version} is not a valid "
            f"BentoML tag ({exc}); fix: use letters, digits, '-', '_', '.' (max 63)"
        ) from exc
    existing = _existing_bento(f"{pipeline}:{version}")
    if existing is not None:
        pinned = sorted(str(m.tag) for m in existing.info.all_models)
        if pinned == [model_tag]:
            return str(existing.tag)
        raise PackagingError(
            f"Bento {existing.tag} already exists and pins {pinned}, not {model_tag}; "
            "fix: build with a new version"
        )

    build_config["name"] = pipeline
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
            pin = {"model_tag": model_tag, "pipeline": pipeline}
            (build_ctx / PIN_FILE).write_text(json.dumps(pin) + "\n", encoding="utf-8")
            (build_ctx / BENTOFILE).write_text(
                yaml.safe_dump(build_config, sort_keys=False), encoding="utf-8"
            )
            with _isolated_bento_modules(build_ctx):
                bento = bentoml.bentos.build_bentofile(
                    str(build_ctx / BENTOFILE),
                    version=version,
                    labels=dict(labels or {}),
                    build_ctx=str(build_ctx),
                )
    except Exception as exc:
        # BentoML surfaces build problems as BentoMLException, but importing the service runs
        # its code (ImportError, RuntimeError from the pin check, ...): name the tag either way.
        raise PackagingError(
            f"Building the bento {pipeline}:{version} for model {model_tag} from {bentos_dir} "
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

    Idempotent (an already-missing model is fine). Refuses ``:latest``, which could hit a model
    saved by someone else meanwhile, and a model a bento still references, because that bento
    could no longer be served.
    """
    _require_exact_tag(tag)

    import bentoml

    with store_lock():
        users = [
            str(bento.tag)
            for bento in bentoml.bentos.list()
            if tag in {str(m.tag) for m in bento.info.all_models}
        ]
        if users:
            raise PackagingError(
                f"Refusing to delete model {tag}: bentos {users} use it; fix: delete those first"
            )
        _delete_exact(bentoml.models.delete, tag, kind="model", by_hand="bentoml models delete")


def delete_bento(tag: str) -> None:
    """Delete one exact bento version. Idempotent; ``:latest`` is refused as in delete_model."""
    _require_exact_tag(tag)

    import bentoml

    with store_lock():
        _delete_exact(bentoml.bentos.delete, tag, kind="bento", by_hand="bentoml delete")


def _delete_exact(delete: Callable[[str], None], tag: str, *, kind: str, by_hand: str) -> None:
    """``delete(tag)``, where an already-missing item is fine (the caller holds the lock)."""
    import bentoml

    try:
        delete(tag)
    except bentoml.exceptions.NotFound:
        return
    except (bentoml.exceptions.BentoMLException, OSError) as exc:
        raise PackagingError(
            f"Deleting {kind} {tag} from the BentoML store failed: {exc}; "
            f"fix: check BENTOML_HOME permissions, or run `{by_hand}` by hand"
        ) from exc


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    """Hold the BentoML store's write lock for the block (``BENTOML_HOME``, else BentoML's
    default ``~/bentoml``). Not reentrant: no function holding it calls another that takes it."""
    home = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser()
    with exclusive_lock(home / STORE_LOCK_FILE):
        yield


def _json_value(value: Any) -> Any:
    """A label or metric as a JSON-native Python value (NumPy scalars unwrapped)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and type(value).__module__ == "numpy" else value


def _model_metadata(
    model_path: Path,
    pipeline: str,
    metadata: dict[str, Any],
    feature_schema: dict[str, Any],
    model_name: str,
) -> tuple[dict[str, Any], Any]:
    """The metadata to store, checked against the model itself, and the model (loaded once)."""
    full = _without_nones(copy.deepcopy(dict(metadata)))
    what = f"Cannot package model {model_name!r} of pipeline {pipeline!r}"
    if full.setdefault("pipeline", pipeline) != pipeline:
        raise PackagingError(f"{what}: metadata names pipeline {full['pipeline']!r}; fix it")
    task = full.get("task")
    if task not in TASKS:
        raise PackagingError(
            f"{what}: metadata 'task' is {task!r}, not one of {list(TASKS)}; fix the spec's task"
        )
    if not model_path.is_file():
        raise PackagingError(f"{what}: {model_path} does not exist; fix the notebook outputs")
    full["model_file"] = model_path.name
    model = _load_model(model_path, what)
    _check_model_columns(model, feature_schema, what)
    if task == "classification":
        classes = getattr(model, "classes_", None)
        if classes is None:
            raise PackagingError(
                f"{what}: {model_path.name} has no classes_ although the task is classification; "
                "fix: save a fitted classifier, or set task: regression in the spec"
            )
        model_classes = [_json_value(c) for c in list(classes)]
        given = full.get("classes")
        if given is not None and [_json_value(c) for c in given] != model_classes:
            raise PackagingError(
                f"{what}: metadata classes {given} differ from the model's classes_ "
                f"{model_classes}; fix the classes passed in"
            )
        full["classes"] = model_classes
    return full, model


def _load_model(model_path: Path, what: str) -> Any:
    from flows.errors import OutputContractError
    from flows.evaluation import load_model

    try:
        return load_model(model_path)
    except OutputContractError as exc:
        raise PackagingError(f"{what}: {exc}") from exc


def _check_model_columns(model: Any, schema: dict[str, Any], what: str) -> None:
    """Catch a schema/model mismatch now, not when the first request reaches the server."""
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is None or not isinstance(schema, dict):
        return
    expected = set(schema.get("numerical") or {}) | set(schema.get("categorical") or {})
    if {str(c) for c in fitted} != expected:
        raise PackagingError(
            f"{what}: feature_schema columns {sorted(expected)} differ from the columns the "
            f"model was fit on {sorted(str(c) for c in fitted)}; fix the schema or the notebook"
        )


def _without_nones(value: Any) -> Any:
    """Mappings without their None values, recursively: BentoML metadata refuses None."""
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


def _require_exact_tag(tag: str) -> None:
    """Reject tags that do not name one immutable version."""
    name, _, version = str(tag).partition(":")
    if not name or not version or version == "latest":
        raise PackagingError(
            f"Tag {tag!r} is not an exact 'name:version'; fix: use the tag packaging returned "
            "(':latest' is refused: the newest model is not necessarily the approved one)"
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
def _isolated_bento_modules(build_ctx: Path) -> Iterator[None]:
    """Make BentoML import *this* build context's modules (``service.py`` and its siblings).

    BentoML imports the service by module name and Python reuses ``sys.modules``, so a second
    build in the same process would silently reuse the first build's modules, and with them the
    first build's pin.
    """
    names = [path.stem for path in build_ctx.glob("*.py")]
    previous = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(previous)
