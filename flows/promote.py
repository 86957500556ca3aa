"""``nbprod promote`` and ``nbprod deploy``: from a checked notebook to a scheduled deployment.

Why a gate before promotion: a notebook that is scheduled runs unattended, so it has to pass
what a reviewer would check — ``nbprod lint`` (static) and ``nbprod repro`` (two fresh runs, same
outputs) — before it gets a deployment. A notebook that fails is not promoted and every problem
is reported at once, so one edit-and-retry loop fixes them all; ``--force`` promotes anyway and
records the findings in the spec, where a reviewer sees them.

Promotion writes two files, both atomically, both re-writable in place:

- ``deployments/<name>.yaml``: the pipeline spec (:mod:`flows.spec`) — notebooks, parameters,
  schedule, the warnings accepted, and the notebooks' content hashes;
- the ``<name>`` entry of ``prefect.yaml``: entrypoint, ``parameters: {spec: ...}``, schedule and
  work pool. Other deployments, hand-added keys and comments are kept (ruamel.yaml round-trip;
  ruamel is a dependency of Prefect). A re-promotion without ``--schedule``/``--interval`` keeps
  the existing schedule: re-checking a notebook must not silently unschedule it.

``nbprod deploy`` then registers the deployments with the Prefect server (``prefect deploy``),
creating the process work pool first if it is missing.

The project root is :func:`flows.spec.project_root` (``$NBPROD_PROJECT_DIR``, else this
checkout), or ``project_root=`` for tests that promote into a temporary copy of the project.

Only the standard library is imported at module level: ``register_commands`` runs for
``nbprod --help``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.errors import ConfigError, DeployError, NbprodError, ParameterError, PromotionError

PREFECT_FILE = "prefect.yaml"
DEFAULT_UPSTREAM = "notebooks/prepare.ipynb"
TRAINING_INPUTS = ("train_path", "test_path")
# Module entrypoints, not file paths: Prefect loads a file entrypoint with its folder first on
# sys.path, where flows/schema.py would shadow the `schema` package BentoML imports.
ENTRYPOINTS = {
    "training": "flows.pipeline:training_pipeline",
    "notebook": "flows.pipeline:notebook_pipeline",
}
# Parameters each flow sets itself; a promoted value would be silently overridden.
RESERVED = {"training": ("train_path", "test_path", "output_dir"), "notebook": ("output_dir",)}
# Resolved by `prefect deploy` from its environment, which `nbprod deploy` sets: the flow-run
# process then knows the project, so the pull step and the flows find it with a plain worker.
PROJECT_DIR_JOB_ENV = {"NBPROD_PROJECT_DIR": "{{ $NBPROD_PROJECT_DIR }}"}
PREFECT_FILE_TEMPLATE = """\
# Prefect project file: `prefect deploy --all` registers nbprod's pipelines, and
# `prefect worker start --pool nbprod-process` runs them. The working directory is the project.
# `nbprod promote` adds and updates deployments here; `nbprod deploy` registers them.
name: nbprod
prefect-version: 3.9.1

build: null
push: null
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{{ $NBPROD_PROJECT_DIR }}"

deployments: []
"""
HEALTH_TIMEOUT_S = 5.0


@dataclass
class PromotionResult:
    """What ``promote`` did: the spec written, the deployment entry, and what the checks found."""

    spec: Any  # flows.spec.PipelineSpec (typed loosely: pydantic loads only when promoting)
    spec_file: Path
    prefect_file: Path
    created: bool  # False when an existing spec and deployment entry were updated
    forced: bool = False
    problems: list[str] = field(default_factory=list)  # blocking findings (recorded if forced)
    notes: list[str] = field(default_factory=list)  # what was checked, skipped, kept

    @property
    def deployment(self) -> str:
        """``flow-name/deployment-name``, as ``prefect deployment run`` wants it."""
        flow_name = "training_pipeline" if self.spec.flow == "training" else "notebook_pipeline"
        return f"{flow_name}/{self.spec.name}"


# --------------------------------------------------------------------------- promotion


def slugify(text: str) -> str:
    """A deployment name from a notebook stem: ``Train_Model v2`` → ``train-model-v2``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug:
        raise ConfigError(f"cannot derive a pipeline name from {text!r}: pass --name")
    return slug


def _relative(path: Path, root: Path) -> str:
    """The project-relative POSIX path a spec stores (workers resolve it in their checkout)."""
    resolved = path.expanduser().resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError as exc:
        raise ConfigError(
            f"{path} is outside the project {root}: move the notebook into the project (e.g. "
            "notebooks/) so the workers, which run from the project, find it"
        ) from exc


def _declared(notebook: Path) -> dict[str, Any]:
    """Declared parameters, or {} when the notebook has none (lint reports why)."""
    from flows.notebook import declared_parameters

    try:
        return declared_parameters(notebook)
    except ParameterError:
        return {}


def detect_flow(notebook: Path) -> str:
    """``training`` when the notebook takes ``train_path`` and ``test_path``, else ``notebook``."""
    return "training" if set(TRAINING_INPUTS) <= set(_declared(notebook)) else "notebook"


def _check_params(flow: str, stem: str, notebook: Path, params: dict[str, Any]) -> list[str]:
    """Reserved names and unknown names / wrong types, checked statically (no kernel)."""
    from flows.notebook import check_parameters

    problems = []
    reserved = sorted(set(params) & set(RESERVED[flow]))
    if reserved:
        problems.append(
            f"parameters: {', '.join(reserved)} of {stem} are set by the {flow} flow itself "
            "and cannot be promoted"
        )
    try:
        check_parameters(notebook, {k: v for k, v in params.items() if k not in reserved})
    except ParameterError as exc:
        problems.append(f"parameters: {exc}")
    return problems


def _lint(chain: list[tuple[str, Path]]) -> tuple[list[str], list[str]]:
    """(errors, warnings), one line per finding, prefixed with the notebook's project path."""
    from flows.lint import lint_notebook

    errors, warnings = [], []
    for rel, path in chain:
        report = lint_notebook(path)
        for f in report.findings:
            line = f"lint {rel} {f.location}: [{f.rule}] {f.message} (fix: {f.fix})"
            (errors if f.severity == "error" else warnings).append(line)
    return errors, warnings


def _repro(
    flow: str,
    chain: list[tuple[str, Path]],
    params: dict[str, dict[str, Any]],
    progress: Callable[[str], None] | None,
    first_inputs: dict[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """(problems, notes) from running each notebook twice in fresh kernels.

    A training chain is checked step by step, as the flow runs it: the upstream notebook with its
    defaults, then the training notebook on the upstream's first run's ``train``/``test``
    outputs. Checking only the last step would skip the upstream; re-running the whole chain per
    repetition would double the (slow) training runs for no extra information.
    """
    from flows.notebook import read_outputs
    from flows.repro import check_reproducibility, render_repro
    from flows.settings import load_settings

    settings = load_settings()
    problems: list[str] = []
    notes: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="nbprod-promote-"))
    wired: dict[str, Any] = dict(first_inputs or {})  # the training flow's data window
    for index, (rel, path) in enumerate(chain):
        stem = path.stem
        run_params = {**params.get(stem, {}), **wired}
        run_params.pop("output_dir", None)

        def step(message: str, rel: str = rel) -> None:
            if progress:
                progress(f"repro {rel}: {message}")

        try:
            report = check_reproducibility(
                path,
                run_params,
                kernel_name=settings.kernel_name,
                timeout_s=settings.execution_timeout_s,
                workdir=base / stem,
                progress=step,
            )
        except NbprodError as exc:  # bad parameters, no output_dir: a finding, not a crash
            problems.append(f"repro {rel}: not run: {exc}")
            break
        # render_repro names the notebook by its absolute path; the spec uses project paths.
        text = f"repro {rel}: " + render_repro(report).removeprefix(f"{report.notebook}: ")
        if report.ok:
            notes.append(text.splitlines()[0])
        else:
            problems.append(text.replace("\n", "\n    "))
        if flow == "training" and index < len(chain) - 1:
            if report.failures:
                notes.append(f"repro {chain[-1][0]}: not run, its upstream {rel} failed")
                break
            outputs = read_outputs(path.name, base / stem / "run-1" / "outputs")
            missing = [n for n in ("train", "test") if n not in outputs.outputs]
            if missing:
                problems.append(
                    f"repro {rel}: declares no {missing} output(s), which the training notebook "
                    "needs as train_path/test_path"
                )
                break
            wired = {
                "train_path": str(outputs.outputs["train"]),
                "test_path": str(outputs.outputs["test"]),
            }
    if not problems:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    else:
        notes.append(f"repro runs kept for inspection in {base}")
    return problems, notes


def _prepare_inputs(data: dict[str, str], root: Path) -> dict[str, Any]:
    """The spec's data window as the upstream notebook's parameters, as the training flow sets."""
    from flows.spec import resolve_project_path

    inputs: dict[str, Any] = {k: data[k] for k in ("start_date", "end_date") if k in data}
    if "data_path" in data:
        inputs["data_path"] = str(resolve_project_path(data["data_path"], root))
    return inputs


def promote(
    notebook: Path,
    *,
    name: str | None = None,
    cron: str | None = None,
    interval_seconds: int | None = None,
    timezone: str = "UTC",
    params: dict[str, Any] | None = None,
    force: bool = False,
    upstream: list[Path] | None = None,
    skip_repro: bool = False,
    project_root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> PromotionResult:
    """Check ``notebook`` and write its spec and ``prefect.yaml`` deployment entry.

    Raises PromotionError listing every problem (parameters, lint errors, reproducibility
    differences) unless ``force``; parameter problems block even with ``force``, since every run
    would fail on them. Re-promotion updates both files in place: parameters merge into the
    existing ones, hand-edited fields (grid, secrets, data, policy, description) are kept, and so
    is the schedule unless a new one is given.
    """
    from flows.manifest import notebook_content_hash
    from flows.spec import PipelineSpec, Schedule, load_spec, save_spec, spec_path
    from flows.spec import project_root as default_root

    if cron is not None and interval_seconds is not None:
        raise ConfigError("give either a cron schedule or an interval, not both")
    root = (project_root or default_root()).resolve()
    notebook = Path(notebook)
    if not notebook.is_absolute() and not notebook.exists():
        notebook = root / notebook  # a project-relative path given from another directory
    if not notebook.is_file():
        raise ConfigError(f"notebook {notebook} not found")
    rel = _relative(notebook, root)
    flow = detect_flow(notebook)
    name = name or slugify(notebook.stem)
    spec_file = spec_path(name, root)
    if (root / PREFECT_FILE).exists():  # before any check runs: nothing is written on refusal
        entries = read_prefect_file(root / PREFECT_FILE)["deployments"]
        found = next((d for d in entries if d.get("name") == name), None)
        _check_not_claimed(found, name, root / PREFECT_FILE)

    chain: list[tuple[str, Path]] = [(rel, notebook.resolve())]
    notes: list[str] = [f"flow: {flow}"]
    if flow == "training":
        ups = upstream if upstream is not None else [root / DEFAULT_UPSTREAM]
        if len(ups) != 1:
            raise ConfigError(
                "a training notebook has exactly one upstream notebook (the one writing its "
                f"train/test data); got {len(ups)}"
            )
        up = Path(ups[0])
        up = up if up.is_absolute() or up.exists() else root / up
        if not up.is_file():
            raise ConfigError(
                f"upstream notebook {up} not found: a training notebook (it takes train_path "
                "and test_path) needs the notebook preparing its data: pass --upstream"
            )
        chain.insert(0, (_relative(up, root), up.resolve()))
        notes.append(f"upstream: {chain[0][0]} (its train/test outputs feed {rel})")
    elif upstream:
        raise ConfigError(
            f"{rel} is not a training notebook (it does not take train_path and test_path): "
            "--upstream applies to training notebooks only"
        )

    existing = None
    if spec_file.exists():
        existing = load_spec(spec_file)
        notes.append(f"updating existing spec {spec_file.relative_to(root)}")
    stems = [p.stem for _, p in chain]

    def kept(section: str) -> dict[str, Any]:
        old = getattr(existing, section) if existing else {}
        return {k: v for k, v in old.items() if k in stems}

    parameters = kept("parameters")
    parameters[notebook.stem] = {**parameters.get(notebook.stem, {}), **(params or {})}
    parameters = {k: v for k, v in parameters.items() if v}

    problems: list[str] = []
    for _, path in chain:
        problems += _check_params(flow, path.stem, path, parameters.get(path.stem, {}))
    blocking = list(problems)  # never forced: every run would fail on them

    lint_errors, lint_warnings = _lint(chain)
    problems += lint_errors
    if skip_repro:
        notes.append("reproducibility check skipped (--skip-repro)")
    elif blocking:
        notes.append("reproducibility check not run: fix the parameters first")
    else:
        inputs = {}
        if flow == "training" and existing is not None and existing.flow == "training":
            inputs = _prepare_inputs(existing.data, root)
        repro_problems, repro_notes = _repro(flow, chain, parameters, progress, inputs)
        problems += repro_problems
        notes += repro_notes

    if blocking or (problems and not force):
        listed = "\n".join(f"  - {p}" for p in problems)
        hint = (
            "fix the parameters (they are refused even with --force)"
            if blocking
            else "fix them, or promote anyway with --force (the findings are recorded in the spec)"
        )
        raise PromotionError(
            f"{rel} was not promoted: {len(problems)} problem{'s' * (len(problems) != 1)}\n"
            f"{listed}\n{hint}",
            problems=problems,
        )

    if cron is not None or interval_seconds is not None:
        schedule = Schedule(cron=cron, interval_seconds=interval_seconds, timezone=timezone)
    else:
        schedule = existing.schedule if existing else None
    fields: dict[str, Any] = {
        "name": name,
        "flow": flow,
        "description": existing.description if existing else f"{flow} pipeline for {rel}",
        "notebooks": [r for r, _ in chain],
        "parameters": parameters,
        "schedule": schedule,
        "warnings": (problems if force else []) + lint_warnings,
        "promoted_at": datetime.now(UTC).replace(microsecond=0),
        "notebook_hashes": {r: notebook_content_hash(p) for r, p in chain},
        "grid": kept("grid"),
        "secrets": kept("secrets"),
    }
    if existing:
        fields.update(work_pool=existing.work_pool, policy=existing.policy)
        if flow == existing.flow:
            fields["data"] = existing.data
    spec = PipelineSpec.model_validate(fields)
    save_spec(spec, spec_file)
    prefect_file = root / PREFECT_FILE
    upsert_deployment(prefect_file, spec, new_schedule=schedule is not None)
    if schedule is not None and existing and schedule == existing.schedule:
        notes.append(f"schedule kept: {schedule.describe()}")
    return PromotionResult(
        spec=spec,
        spec_file=spec_file,
        prefect_file=prefect_file,
        created=existing is None,
        forced=bool(force and problems),
        problems=problems,
        notes=notes,
    )


# --------------------------------------------------------------------------- prefect.yaml


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100
    # Write `build: null` as the file had it, not ruamel's bare `build:`.
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def read_prefect_file(path: Path) -> Any:
    """The round-trip document (comments and order kept); a fresh template if there is none."""
    import io

    yaml = _yaml()
    text = path.read_text(encoding="utf-8") if path.exists() else PREFECT_FILE_TEMPLATE
    try:
        doc = yaml.load(io.StringIO(text))
    except Exception as exc:  # ruamel's errors share no public base worth importing
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must be a YAML mapping with a 'deployments' list")
    if doc.get("deployments") is None:
        doc["deployments"] = []
    if not isinstance(doc["deployments"], list):
        raise ConfigError(f"{path}: field 'deployments' must be a list")
    return doc


def _check_not_claimed(entry: Any, name: str, path: Path) -> None:
    """Refuse to turn a hand-written deployment (e.g. ``monitoring``) into a notebook's."""
    entrypoint = str(entry.get("entrypoint")) if entry is not None else ""
    as_module = entrypoint.replace(".py:", ":").replace("/", ".")  # older file-path entries
    if entry is not None and as_module not in ENTRYPOINTS.values():
        raise ConfigError(
            f"deployment {name!r} in {path} runs {entry.get('entrypoint')}, not a promoted "
            "notebook: promote under another name (--name)"
        )


def deployment_names(path: Path) -> list[str]:
    """Names of the deployments in ``prefect.yaml``, in file order."""
    return [str(d.get("name")) for d in read_prefect_file(path)["deployments"]]


def upsert_deployment(path: Path, spec: Any, *, new_schedule: bool) -> None:
    """Add or update (by name) the deployment entry for ``spec``; everything else is kept.

    Schedules: the spec's schedule when it has one; otherwise an existing entry keeps its
    ``schedules`` (possibly hand-written), and a new entry gets none.
    """
    import io

    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    from flows.spec import write_atomic

    doc = read_prefect_file(path)
    entries = doc["deployments"]
    entry = next((d for d in entries if d.get("name") == spec.name), None)
    _check_not_claimed(entry, spec.name, path)
    if entry is None:
        entry = CommentedMap()
        entries.append(entry)
    tags = CommentedSeq(["nbprod", spec.flow])
    tags.fa.set_flow_style()
    # Both flows take triggered_by: the run record says a deployment started it.
    parameters = {"spec": spec.relative_path(), "triggered_by": "deployment"}
    entry["name"] = spec.name
    entry["description"] = spec.description or entry.get("description") or ""
    entry["entrypoint"] = ENTRYPOINTS[spec.flow]
    entry.setdefault("tags", tags)
    entry["parameters"] = CommentedMap(parameters)
    pool = entry.get("work_pool")
    if not isinstance(pool, dict):
        pool = CommentedMap()
        entry["work_pool"] = pool
    pool["name"] = spec.work_pool
    pool.setdefault("work_queue_name", "default")
    job_variables = pool.get("job_variables")
    if not isinstance(job_variables, dict):
        job_variables = CommentedMap()
        pool["job_variables"] = job_variables
    env = job_variables.get("env")
    if not isinstance(env, dict):
        env = CommentedMap()
        job_variables["env"] = env
    for key, value in PROJECT_DIR_JOB_ENV.items():
        env[key] = DoubleQuotedScalarString(value)
    if spec.schedule is not None and (new_schedule or not entry.get("schedules")):
        entry["schedules"] = [CommentedMap(spec.schedule.to_prefect())]
    elif "schedules" not in entry:
        entry["schedules"] = []
    buffer = io.StringIO()
    _yaml().dump(doc, buffer)
    write_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------- deploy


def _api_url() -> str:
    """The configured Prefect API (environment or profile); deploying needs a real server."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise DeployError(
            "no Prefect server configured: deployments are registered with a running server. "
            "Start one (prefect server start --host 127.0.0.1 --port 4200) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    return str(url).rstrip("/")


def check_server(url: str) -> None:
    """One GET of ``/health``: a clear one-line error instead of Prefect's retry traceback."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=HEALTH_TIMEOUT_S) as response:
            if response.status != 200:
                raise DeployError(f"Prefect server at {url} is unhealthy (HTTP {response.status})")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeployError(
            f"no Prefect server reachable at {url} ({reason}): start it "
            "(prefect server start --host 127.0.0.1) or fix PREFECT_API_URL"
        ) from exc


def _prefect(
    args: Sequence[str], *, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The venv's own Prefect CLI, non-interactive."""
    return subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 12) -> str:
    text = (proc.stdout or "") + (proc.stderr or "")
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_work_pool(name: str) -> bool:
    """Create the process work pool unless it exists; True when it was created.

    In-process, as ``prefect work-pool create NAME --type process`` does it (the process worker's
    default job template comes from the local worker class, no registry lookup), without paying
    another Prefect CLI start-up.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        except ObjectAlreadyExists:  # created concurrently: what we wanted
            return False
        except Exception as exc:
            raise DeployError(f"could not create work pool {name!r}: {exc}") from exc
    return True


def deploy(
    names: Sequence[str] | None = None,
    *,
    project_root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Register ``names`` (default: every deployment in prefect.yaml) with the Prefect server.

    Returns the deployment names registered. Runs from the project root with
    ``NBPROD_PROJECT_DIR`` set, which ``prefect.yaml`` resolves into each deployment's
    environment, so a plain ``prefect worker start --pool nbprod-process`` runs them.
    """
    from flows.spec import project_root as default_root

    root = (project_root or default_root()).resolve()
    prefect_file = root / PREFECT_FILE
    if not prefect_file.exists():
        raise DeployError(f"{prefect_file} not found: promote a notebook first (nbprod promote)")
    doc = read_prefect_file(prefect_file)
    entries = {str(d.get("name")): d for d in doc["deployments"]}
    if not entries:
        raise DeployError(f"{prefect_file} has no deployments: promote a notebook first")
    wanted = list(names) if names else list(entries)
    unknown = [n for n in wanted if n not in entries]
    if unknown:
        raise DeployError(
            f"no deployment named {', '.join(unknown)} in {prefect_file} "
            f"(there are: {', '.join(entries)})"
        )
    url = _api_url()
    check_server(url)
    env = {**os.environ, "NBPROD_PROJECT_DIR": str(root), "PREFECT_API_URL": url}
    pools = sorted({str((entries[n].get("work_pool") or {}).get("name")) for n in wanted})
    for pool in pools:
        if pool != "None" and ensure_work_pool(pool) and progress:
            progress(f"created process work pool {pool!r}")
    args = ["deploy", "--prefect-file", str(prefect_file)]
    if names:
        for n in wanted:
            args += ["--name", n]
    else:
        args.append("--all")
    if progress:
        progress(f"registering {', '.join(wanted)} with {url}")
    proc = _prefect(args, cwd=root, env=env)
    if proc.returncode != 0:
        raise DeployError(f"prefect deploy failed (exit {proc.returncode}):\n{_tail(proc)}")
    return wanted


# --------------------------------------------------------------------------- command line


def render_promotion(result: PromotionResult) -> str:
    spec = result.spec
    verb = "promoted" if result.created else "updated"
    lines = [f"{verb} {', '.join(spec.notebooks)} as {result.deployment}"]
    lines.append(f"  spec:     {result.spec_file}")
    lines.append(f"  prefect:  {result.prefect_file} (deployment {spec.name!r})")
    lines.append(
        f"  schedule: {spec.schedule.describe() if spec.schedule else 'none (run on demand)'}"
    )
    if result.forced:
        lines.append(f"  FORCED past {len(result.problems)} problem(s), recorded in the spec:")
        lines += [f"    - {p}" for p in result.problems]
    other = [w for w in spec.warnings if w not in result.problems]
    if other:
        lines.append(f"  warnings ({len(other)}, recorded in the spec):")
        lines += [f"    - {w}" for w in other]
    lines += [f"  {note}" for note in result.notes]
    lines.append(f"next: nbprod deploy {spec.name}")
    return "\n".join(lines)


def cmd_promote(args: argparse.Namespace) -> int:
    from flows.options import parse_assignment

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = promote(
        args.notebook,
        name=args.name,
        cron=args.schedule,
        interval_seconds=args.interval,
        timezone=args.timezone,
        params=dict(parse_assignment(p) for p in args.param),
        force=args.force,
        upstream=[args.upstream] if args.upstream else None,
        skip_repro=args.skip_repro,
        progress=progress,
    )
    print(render_promotion(result))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    names = deploy(None if args.all or not args.name else [args.name], progress=progress)
    print(f"deployed {', '.join(names)}")
    print(
        "run them with a worker: prefect worker start --pool nbprod-process --type process; "
        "trigger one: prefect deployment run 'FLOW/NAME'"
    )
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("the interval is a positive number of seconds")
    return value


def register_commands(subparsers: Any) -> None:
    """Add ``promote`` and ``deploy`` to the ``nbprod`` parser (stdlib only: --help stays fast)."""
    promote_p = subparsers.add_parser(
        "promote",
        help="check a notebook (lint + reproducibility) and write its pipeline spec and "
        "prefect.yaml deployment",
    )
    promote_p.add_argument("notebook", type=Path, help="the .ipynb file, inside the project")
    promote_p.add_argument(
        "--name", default=None, help="deployment name (default: the notebook's stem as a slug)"
    )
    when = promote_p.add_mutually_exclusive_group()
    when.add_argument("--schedule", default=None, metavar="CRON", help="cron, e.g. '0 6 * * *'")
    when.add_argument(
        "--interval", type=_positive_int, default=None, metavar="SECONDS", help="run every N s"
    )
    promote_p.add_argument(
        "--timezone", default="UTC", help="IANA timezone of the schedule (default UTC)"
    )
    promote_p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="notebook parameter stored in the spec, repeatable; checked against the notebook",
    )
    promote_p.add_argument(
        "--upstream",
        type=Path,
        default=None,
        metavar="NOTEBOOK",
        help="for a training notebook: the notebook writing its train/test data "
        f"(default {DEFAULT_UPSTREAM})",
    )
    promote_p.add_argument(
        "--force",
        action="store_true",
        help="promote despite lint errors or reproducibility differences (recorded in the spec)",
    )
    promote_p.add_argument(
        "--skip-repro", action="store_true", help="skip the reproducibility runs (lint only)"
    )
    promote_p.set_defaults(func=cmd_promote)

    deploy_p = subparsers.add_parser(
        "deploy",
        help="register prefect.yaml's deployments with the Prefect server (PREFECT_API_URL)",
    )
    which = deploy_p.add_mutually_exclusive_group()
    which.add_argument("name", nargs="?", default=None, help="one deployment (default: all)")
    which.add_argument("--all", action="store_true", help="every deployment (the default)")
    deploy_p.set_defaults(func=cmd_deploy)
