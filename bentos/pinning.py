"""Which model this bento serves, and the service's identity derived from its pipeline.

The model is pinned by an exact ``name:version`` tag in ``model_pin.json``, which
``flows.packaging`` writes into the build context next to this file: ``{"model_tag":
"name:version", "pipeline": "<pipeline>"}``. Never ``:latest``: the newest saved model is not
necessarily the approved one. ``$NBPROD_MODEL_TAG`` replaces the pin file only to run the service
from a checkout in development.

This module (like every module of the bento) imports nothing from ``flows``: a bento only holds
this directory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml

PIN_FILE = Path(__file__).with_name("model_pin.json")
PIN_ENV_VAR = "NBPROD_MODEL_TAG"
# Metadata key of the feature schema (stored by flows.packaging) the request model is built from.
FEATURE_SCHEMA_KEY = "feature_schema"
# The file, inside the BentoML model, holding the notebook's model byte for byte (joblib or pickle).
MODEL_FILE = "model.joblib"
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Pin:
    """The exact model tag, and the pipeline it was packaged for (None in development)."""

    model_tag: str
    pipeline: str | None


@dataclass(frozen=True)
class ServiceIdentity:
    """Names the service takes from its pipeline: BentoML service name and Python class name."""

    pipeline: str
    service_name: str
    class_name: str


def read_pin(pin_file: Path = PIN_FILE, env: dict[str, str] | None = None) -> Pin:
    """The pin this bento was built with; ``$NBPROD_MODEL_TAG`` when there is no pin file.

    Raises RuntimeError naming the fix when there is no pin, or it is not an exact tag.
    """
    env = dict(os.environ) if env is None else env
    pipeline: str | None = None
    if pin_file.is_file():
        try:
            pinned = json.loads(pin_file.read_text(encoding="utf-8"))
            tag = pinned["model_tag"]
            pipeline = pinned.get("pipeline")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RuntimeError(
                f"{pin_file} is not JSON of the form {{'model_tag': 'name:version', "
                "'pipeline': 'name'}: rebuild the bento with flows.packaging.package_model"
            ) from exc
        source = str(pin_file)
    elif env.get(PIN_ENV_VAR):
        tag, source = env[PIN_ENV_VAR], f"${PIN_ENV_VAR}"
    else:
        raise RuntimeError(
            f"No model pinned: neither {pin_file} nor ${PIN_ENV_VAR} exists. Build the bento with "
            f"flows.packaging.package_model, or export {PIN_ENV_VAR}=name:version to serve "
            "from a checkout."
        )
    name, _, version = str(tag).partition(":")
    if not name or not version or version == "latest":
        raise RuntimeError(
            f"Model pin {tag!r} from {source} is not an exact 'name:version' tag; "
            "':latest' is refused because the newest model is not necessarily the approved one."
        )
    return Pin(model_tag=str(tag), pipeline=str(pipeline) if pipeline else None)


def load_model_metadata(tag: str) -> dict[str, Any]:
    """The pinned model's metadata, read from the local model store without loading the model.

    ``bentoml.models.get`` looks only at the local store, so a missing model fails here with a
    clear message instead of BentoML trying to pull it from BentoCloud.
    """
    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as exc:
        raise RuntimeError(
            f"Model {tag} is not in the BentoML model store under $BENTOML_HOME "
            f"({os.environ.get('BENTOML_HOME', '~/bentoml')}): import it, or serve with the "
            "BENTOML_HOME the bento was built with"
        ) from exc
    metadata = dict(stored.info.metadata)
    if not isinstance(metadata.get(FEATURE_SCHEMA_KEY), dict):
        raise RuntimeError(
            f"Model {tag} has no {FEATURE_SCHEMA_KEY!r} metadata: "
            "package it with flows.packaging.package_model"
        )
    task = metadata.get("task")
    if task is not None and task not in TASKS:
        raise RuntimeError(
            f"Model {tag} has task {task!r} in its metadata, not one of {list(TASKS)}: "
            "re-package it with the pipeline spec's task"
        )
    return metadata


def service_identity(pin: Pin, metadata: dict[str, Any]) -> ServiceIdentity:
    """The service's names from its pipeline (pin, else model metadata, else the model name).

    The BentoML service name is the pipeline name (a slug: lowercase letters, digits, dashes);
    the class name is its CamelCase plus ``Service``: ``churn-v2`` serves as ``ChurnV2Service``.
    """
    pipeline = pin.pipeline or metadata.get("pipeline") or pin.model_tag.partition(":")[0]
    words = [w for w in re.split(r"[^0-9A-Za-z]+", str(pipeline)) if w]
    class_name = "".join(w[:1].upper() + w[1:] for w in words) + "Service"
    if not class_name[0].isalpha():
        class_name = f"Pipeline{class_name}"
    service_name = "-".join(w.lower() for w in words) or "pipeline"
    return ServiceIdentity(pipeline=str(pipeline), service_name=service_name, class_name=class_name)
