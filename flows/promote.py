"""``nbprod promote`` and ``nbprod deploy``: from checked notebooks to a scheduled deployment.

``nbprod promote a.ipynb [b.ipynb ...] --name N --target T --data FILE`` makes a training
pipeline of the notebooks, run in the order given: the first receives ``data_path`` (the data
window) and ``output_dir``, each later one ``output_dir`` and ``<stem>_path`` for the files the
earlier ones wrote. What the spec says about the data — task, id columns, time column — is
inferred from the data file where no flag says it (:mod:`flows.columns`), and printed. Without
``--target`` the notebooks are a plain notebook pipeline (``flow: notebook``).

Why a gate before promotion: a notebook that is scheduled runs unattended, so it has to pass
what a reviewer would check — ``nbprod lint`` (static) and ``nbprod repro`` (two fresh runs, same
outputs) — before it gets a deployment. A notebook that fails is not promoted and every problem
is reported at once, so one edit-and-retry loop fixes them all; ``--force`` promotes anyway and
records the findings in the spec, where a reviewer sees them.

Promotion writes, atomically and re-writably in place: the pipeline spec
``deployments/<name>.yaml`` (:mod:`flows.spec`); for a training pipeline its gate policy
``deployments/<name>.policy.yaml`` (the task's default, unless that file exists or ``--policy``
names another); and the pipeline's deployments in ``prefect.yaml`` (:mod:`flows.prefect_file`).
``nbprod deploy`` then registers the deployments with the Prefect server (``prefect deploy``),
creating the process work pool first if it is missing.

The project root is :func:`flows.paths.project_root`, or ``project_root=`` for tests that
promote into a temporary project. Only the standard library is imported at module level:
``register_commands`` runs for ``nbprod --help``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.deploy import check_server, cmd_deploy, deploy, ensure_work_pool
from flows.errors import ConfigError, PromotionError
from flows.prefect_file import ENTRYPOINTS, PREFECT_FILE, check_not_claimed, upsert_pipeline
from flows.readiness import (
    FIRST_INPUT,
    TARGET_PARAMETER,
    contract_problems,
    declared_or_empty,
    lint_findings,
    parameter_problems,
    repro_findings,
    route_parameters,
)

__all__ = [
    "ENTRYPOINTS",
    "PromotionResult",
    "check_server",
    "deploy",
    "ensure_work_pool",
    "promote",
    "register_commands",
    "render_promotion",
    "slugify",
]

TASK_CHOICES = ("classification", "regression")
# Flags that describe a training pipeline's data: they need --target.
TRAINING_FLAGS = {
    "data": "--data",
    "reference": "--reference",
    "task": "--task",
    "id_columns": "--id-column",
    "time_column": "--time-column",
    "start": "--start",
    "end": "--end",
}
POLICY_HEADER = (
    "# Gate policy of pipeline {name} ({task}), written by `nbprod promote`: edit freely.\n"
    "# floors: limits every candidate must meet; champion: how much worse than the current\n"
    "# champion a candidate may be on the same holdout rows (direction, max_regression).\n"
)


@dataclass
class PromotionResult:
    """What ``promote`` did: the spec written, the deployments, and what the checks found."""

    spec: Any  # flows.spec.PipelineSpec (typed loosely: pydantic loads only when promoting)
    spec_file: Path
    prefect_file: Path
    created: bool  # False when an existing spec and deployment entry were updated
    forced: bool = False
    problems: list[str] = field(default_factory=list)  # blocking findings (recorded if forced)
    notes: list[str] = field(default_factory=list)  # what was checked, skipped, kept
    inferred: list[str] = field(default_factory=list)  # task, ids, time: inferred or given
    deployments: list[str] = field(default_factory=list)  # prefect.yaml entries of the pipeline
    policy_written: Path | None = None

    @property
    def deployment(self) -> str:
        """``flow-name/deployment-name``, as ``prefect deployment run`` wants it."""
        flow_name = "training_pipeline" if self.spec.flow == "training" else "notebook_pipeline"
        return f"{flow_name}/{self.spec.name}"


# --------------------------------------------------------------------------- inputs


def slugify(text: str) -> str:
    """A pipeline name from a notebook stem: ``Train_Model v2`` → ``train-model-v2``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug:
        raise ConfigError(f"cannot derive a pipeline name from {text!r}: pass --name")
    return slug


def _in_project(path: Path, root: Path) -> Path:
    """A path as given from the working directory, else relative to the project root; absolute."""
    path = Path(path).expanduser()
    return (path if path.is_absolute() or path.exists() else root / path).resolve()


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


def _spec_path_of(path: Path, root: Path) -> str:
    """A data or policy file as the spec stores it: project-relative when inside, else absolute."""
    resolved = path.expanduser().resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def _notebooks(given: Sequence[Path], root: Path) -> list[tuple[str, Path]]:
    """(project path, absolute path) per notebook, in the order given; stems unique."""
    chain: list[tuple[str, Path]] = []
    for raw in given:
        path = _in_project(Path(raw), root)
        if not path.is_file():
            raise ConfigError(f"notebook {path} not found")
        chain.append((_relative(path, root), path.resolve()))
    stems = [p.stem for _, p in chain]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ConfigError(
            f"notebooks share the stem {', '.join(repeated)}: parameters are keyed by stem, "
            "rename one"
        )
    return chain


# --------------------------------------------------------------------------- promotion


@dataclass
class _Training:
    """A training pipeline's data, as promote resolved and checked it."""

    domain: Any  # flows.columns.Domain
    data: dict[str, str]
    data_file: Path
    target_values: Any  # pandas Series: the default policy's thresholds


def _training_inputs(
    *,
    root: Path,
    target: str,
    task: str | None,
    data: Path | None,
    reference: Path | None,
    id_columns: Sequence[str] | None,
    time_column: str | None,
    start: str | None,
    end: str | None,
) -> _Training:
    """Read the data, infer what the flags do not say, check the window and the reference."""
    from flows.columns import check_reference, check_window, infer_domain, read_data

    if data is None:
        raise ConfigError("--data: a training pipeline needs its data file (--data FILE)")
    data_file = _in_project(data, root)
    if not data_file.is_file():
        raise ConfigError(f"--data {data}: file not found (looked for {data_file})")
    frame = read_data(data_file, "--data", Path(data))
    domain = infer_domain(
        frame,
        source=Path(data),  # as the user wrote it
        target=target,
        task=task,  # type: ignore[arg-type]
        id_columns=id_columns,
        time_column=time_column,
    )
    check_window(frame, domain.time_column, start, end, Path(data))
    spec_data = {"data_path": _spec_path_of(data_file, root)}
    if reference is not None:
        reference_file = _in_project(reference, root)
        if not reference_file.is_file():
            raise ConfigError(
                f"--reference {reference}: file not found (looked for {reference_file})"
            )
        roles = [target, *domain.id_columns, *filter(None, [domain.time_column])]
        check_reference(reference_file, roles, Path(reference))
        spec_data["reference_path"] = _spec_path_of(reference_file, root)
    if start is not None:
        spec_data["start_date"] = start
    if end is not None:
        spec_data["end_date"] = end
    return _Training(domain, spec_data, data_file, frame[target])


def _policy(
    name: str,
    root: Path,
    given: Path | None,
    existing: Any,
    training: _Training | None,
) -> tuple[str | None, str | None, str | None]:
    """(spec's policy path, text of a default policy to write, a note), nothing written yet.

    ``--policy`` wins, then the existing spec's, then ``deployments/<name>.policy.yaml`` when it
    exists; otherwise, for a training pipeline, the task's default policy is written there. A
    training pipeline's policy is loaded now: one naming a metric the task lacks is refused.
    """
    from flows.spec import SPECS_DIR

    default = f"{SPECS_DIR}/{name}.policy.yaml"
    if given is not None:
        file = _in_project(given, root)
        if not file.is_file():
            raise ConfigError(f"--policy {given}: file not found")
        path, note = _spec_path_of(file, root), "--policy"
    elif existing is not None and existing.policy:
        path, note = existing.policy, "kept from the spec"
    elif training is None:
        return None, None, None
    elif (root / default).exists():
        path, note = default, "existing file kept"
    else:
        import yaml

        from flows.tasks import default_policy

        task = training.domain.task
        body = yaml.safe_dump(
            default_policy(task, training.target_values), sort_keys=False, default_flow_style=False
        )
        text = POLICY_HEADER.format(name=name, task=task) + body
        return default, text, f"policy: {default} (the {task} default, written)"
    if training is not None:
        from flows.gate import load_policy
        from flows.paths import resolve_project_path

        load_policy(resolve_project_path(path, root), training.domain.task)
    return path, None, f"policy: {path} ({note})"


def promote(
    notebooks: Sequence[Path] | Path,
    *,
    name: str | None = None,
    target: str | None = None,
    task: str | None = None,
    data: Path | None = None,
    reference: Path | None = None,
    id_columns: Sequence[str] | None = None,
    time_column: str | None = None,
    start: str | None = None,
    end: str | None = None,
    policy: Path | None = None,
    cron: str | None = None,
    interval_seconds: int | None = None,
    timezone: str = "UTC",
    params: dict[str, Any] | None = None,
    force: bool = False,
    skip_repro: bool = False,
    project_root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> PromotionResult:
    """Check ``notebooks`` (run in the order given) and write the pipeline's files.

    With ``target``: a training pipeline on ``data``, whose task, id and time columns are taken
    from the arguments or inferred from the data (``result.inferred``, one line each). Without:
    a notebook pipeline. Raises ConfigError for an unusable argument (one line naming its flag)
    and PromotionError listing every problem (contract, parameters, lint errors, reproducibility
    differences) unless ``force``; contract and parameter problems block even with ``force``,
    since every run would fail on them. Nothing is written on refusal. Re-promotion updates the
    files in place: parameters merge into the existing ones; hand-edited fields (grid, secrets,
    policy, model name and files, drift, description) are kept, and so is the schedule unless
    a new one is given.
    """
    from flows.atomic import write_atomic
    from flows.manifest import notebook_content_hash
    from flows.paths import project_root as default_root
    from flows.spec import PipelineSpec, Schedule, load_spec, save_spec, spec_path

    if cron is not None and interval_seconds is not None:
        raise ConfigError("give either a cron schedule or an interval, not both")
    root = (project_root or default_root()).resolve()
    given = [Path(notebooks)] if isinstance(notebooks, str | Path) else list(notebooks)
    if not given:
        raise ConfigError("name at least one notebook to promote")
    flow = "training" if target else "notebook"
    if flow == "notebook":
        values = {
            "data": data, "reference": reference, "task": task, "id_columns": id_columns,
            "time_column": time_column, "start": start, "end": end,
        }  # fmt: skip
        stray = [TRAINING_FLAGS[k] for k, v in values.items() if v not in (None, [], ())]
        if stray:
            raise ConfigError(
                f"{', '.join(stray)}: apply to a training pipeline; name the column to predict "
                "with --target"
            )
    chain = _notebooks(given, root)
    rels = [rel for rel, _ in chain]
    name = name or slugify(chain[-1][1].stem)
    spec_file = spec_path(name, root)
    check_not_claimed(root / PREFECT_FILE, name, training=flow == "training")
    training = None
    if target:
        training = _training_inputs(
            root=root, target=target, task=task, data=data, reference=reference,
            id_columns=id_columns, time_column=time_column, start=start, end=end,
        )  # fmt: skip
    existing = load_spec(spec_file) if spec_file.exists() else None
    notes: list[str] = [f"flow: {flow} ({len(chain)} notebook{'s' * (len(chain) != 1)} in order)"]
    if existing:
        notes.append(f"updating existing spec {spec_file.relative_to(root)}")
    policy_path, policy_text, policy_note = _policy(name, root, policy, existing, training)

    declared = {path.stem: declared_or_empty(path) for _, path in chain}
    stems = list(declared)
    old_params = existing.parameters if existing else {}
    routed = route_parameters(params or {}, chain, declared)
    parameters = {s: {**old_params.get(s, {}), **routed.get(s, {})} for s in stems}
    problems = contract_problems(flow, chain, declared)
    for index, (_, path) in enumerate(chain):
        problems += parameter_problems(flow, index, path, parameters[path.stem], target)
    if target:  # nbprod passes the target itself: an equal --param is redundant
        for values in parameters.values():
            if values.get(TARGET_PARAMETER) == target:
                del values[TARGET_PARAMETER]
    parameters = {k: v for k, v in parameters.items() if v}
    blocking = list(problems)  # never forced: every run would fail on them

    lint_errors, lint_warnings = lint_findings(chain)
    problems += lint_errors
    if skip_repro:
        notes.append("reproducibility check skipped (--skip-repro)")
    elif blocking:
        notes.append("reproducibility check not run: fix the contract and parameters first")
    else:
        first = {FIRST_INPUT: str(training.data_file)} if training else {}
        shared = {TARGET_PARAMETER: target} if target else {}
        repro_problems, repro_notes = repro_findings(
            flow, chain, parameters, progress, first, shared
        )
        problems += repro_problems
        notes += repro_notes

    if blocking or (problems and not force):
        listed = "\n".join(f"  - {p}" for p in problems)
        hint = (
            "fix the contract and parameters (they are refused even with --force)"
            if blocking
            else "fix them, or promote anyway with --force (the findings are recorded in the spec)"
        )
        raise PromotionError(
            f"{', '.join(rels)} not promoted: {len(problems)} problem"
            f"{'s' * (len(problems) != 1)}\n{listed}\n{hint}",
            problems=problems,
        )

    if cron is not None or interval_seconds is not None:
        schedule = Schedule(cron=cron, interval_seconds=interval_seconds, timezone=timezone)
    else:
        schedule = existing.schedule if existing else None
    keep = existing.model_dump(exclude_none=True) if existing else {}
    fields: dict[str, Any] = {
        "name": name,
        "flow": flow,
        "description": (existing and existing.flow == flow and existing.description)
        or _description(flow, rels, training),
        "notebooks": rels,
        "parameters": parameters,
        "policy": policy_path,
        "schedule": schedule,
        "warnings": (problems if force else []) + lint_warnings,
        "promoted_at": datetime.now(UTC).replace(microsecond=0),
        "notebook_hashes": {r: notebook_content_hash(p) for r, p in chain},
        "grid": {k: v for k, v in keep.get("grid", {}).items() if k in stems},
        "secrets": {k: v for k, v in keep.get("secrets", {}).items() if k in stems},
        **{k: keep[k] for k in ("work_pool", "drift") if k in keep},
    }
    if training is not None:
        domain = training.domain
        fields.update(
            task=domain.task,
            target=domain.target,
            id_columns=domain.id_columns,
            time_column=domain.time_column,
            data=training.data,
            **{k: keep[k] for k in ("model_name", "model_file", "holdout_file") if k in keep},
        )
    spec = _validated(PipelineSpec, fields, spec_file)
    save_spec(spec, spec_file)
    if policy_text is not None and policy_path is not None:
        write_atomic(root / policy_path, policy_text)
    prefect_file = root / PREFECT_FILE
    names = upsert_pipeline(prefect_file, spec, new_schedule=schedule is not None)
    if policy_note:
        notes.append(policy_note)
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
        inferred=list(training.domain.messages) if training else [],
        deployments=names,
        policy_written=root / policy_path if policy_text and policy_path else None,
    )


def _description(flow: str, rels: list[str], training: _Training | None) -> str:
    if training is None:
        return f"{flow} pipeline for {', '.join(rels)}"
    return f"{training.domain.task} of {training.domain.target} from {', '.join(rels)}"


def _validated(model: Any, fields: dict[str, Any], spec_file: Path) -> Any:
    """The spec, or one ConfigError naming the file and each field at fault."""
    from pydantic import ValidationError

    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = [
            f"field '{'.'.join(str(p) for p in err['loc'])}': "
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        ]
        raise ConfigError(f"pipeline spec {spec_file}: " + "; ".join(problems)) from exc


# --------------------------------------------------------------------------- command line


def render_promotion(result: PromotionResult) -> str:
    spec = result.spec
    verb = "promoted" if result.created else "updated"
    lines = [f"{verb} {', '.join(spec.notebooks)} as {result.deployment}"]
    lines += [f"  {line}" for line in result.inferred]
    lines.append(f"  spec:     {result.spec_file}")
    lines.append(f"  prefect:  {result.prefect_file} (deployments {', '.join(result.deployments)})")
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
    if spec.flow == "training":
        lines.append(f"next: nbprod run --spec {spec.relative_path()}   (or: nbprod deploy)")
    else:
        lines.append(f"next: nbprod deploy {spec.name}")
    return "\n".join(lines)


def cmd_promote(args: argparse.Namespace) -> int:
    from flows.options import parse_assignment

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = promote(
        args.notebooks,
        name=args.name,
        target=args.target,
        task=args.task,
        data=args.data,
        reference=args.reference,
        id_columns=args.id_column or None,
        time_column=args.time_column,
        start=args.start,
        end=args.end,
        policy=args.policy,
        cron=args.schedule,
        interval_seconds=args.interval,
        timezone=args.timezone,
        params=dict(parse_assignment(p) for p in args.param),
        force=args.force,
        skip_repro=args.skip_repro,
        progress=progress,
    )
    print(render_promotion(result))
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
        help="check notebooks (lint + reproducibility) and write their pipeline spec, gate "
        "policy and prefect.yaml deployments",
    )
    promote_p.add_argument(
        "notebooks", nargs="+", type=Path, metavar="NOTEBOOK",
        help="the .ipynb files, inside the project, in the order they run",
    )  # fmt: skip
    promote_p.add_argument(
        "--name", default=None, help="pipeline name (default: the last notebook's stem as a slug)"
    )
    data = promote_p.add_argument_group(
        "training pipeline (with --target; inferred from --data where not given)"
    )
    data.add_argument("--target", default=None, metavar="COLUMN", help="the column to predict")
    data.add_argument("--task", choices=TASK_CHOICES, default=None, help="default: inferred")
    data.add_argument("--data", type=Path, default=None, metavar="FILE", help=".csv or .parquet")
    data.add_argument(
        "--reference", type=Path, default=None, metavar="FILE",
        help="schema and drift baseline (default: the data)",
    )  # fmt: skip
    data.add_argument(
        "--id-column", action="append", default=[], metavar="COLUMN",
        help="a column identifying a row, never a feature; repeatable (default: inferred)",
    )  # fmt: skip
    data.add_argument(
        "--time-column", default=None, metavar="COLUMN",
        help="the column the data window and monitoring use (default: inferred)",
    )  # fmt: skip
    data.add_argument("--start", default=None, metavar="DATE", help="data window start")
    data.add_argument("--end", default=None, metavar="DATE", help="data window end (exclusive)")
    promote_p.add_argument(
        "--policy", type=Path, default=None, metavar="FILE",
        help="gate policy YAML (default: deployments/NAME.policy.yaml, written from the task's "
        "default when missing)",
    )  # fmt: skip
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
        help="notebook parameter stored in the spec, for every notebook declaring NAME; "
        "repeatable; checked against the notebooks",
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
