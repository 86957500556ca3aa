"""The ``nbprod`` command line.

Only the standard library is imported at module level: ``nbprod --help`` must answer in well
under half a second, and Prefect, Evidently and BentoML each take seconds to import.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from flows import console
from flows.options import (
    UsageError,
    add_pipeline_option,
    add_store_option,
    join_durations,
    open_store,
    parse_assignment,
    resolve_pipeline,
)
from flows.paths import prepare_environment


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt_number(value: float) -> str:
    """A notebook's own metrics: counts stay counts (14400, not 14400.0000), scores get 4 places."""
    return f"{value:.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def notebook_parameters(assignments: list[str], stems: list[str]) -> dict[str, dict[str, Any]]:
    """``--param NAME=VALUE`` for the last notebook, ``--param STEM.NAME=VALUE`` for another."""
    by_stem: dict[str, dict[str, Any]] = {}
    for text in assignments:
        name, value = parse_assignment(text)
        stem, _, bare = name.rpartition(".")
        if stem and stem not in stems:
            raise UsageError(
                f"--param {text!r}: no notebook {stem!r} in this pipeline (notebooks: "
                f"{', '.join(stems)})"
            )
        by_stem.setdefault(stem or stems[-1], {})[bare] = value
    return by_stem


def precheck_parameters(
    spec: Any, parameters: dict[str, dict[str, Any]], grid: dict[str, list[Any]] | None = None
) -> None:
    """Fail in milliseconds, before a Prefect server or a kernel starts, on a parameter typo."""
    from flows.planning import plan_chain

    if spec.flow == "training":
        plan_chain(
            spec,
            overrides=parameters,
            grid=grid,
            first_inputs={"data_path": "."},
            shared={"target": spec.target},
        )
    else:
        plan_chain(spec, overrides=parameters)


# `nbprod run` options that only the training pipeline takes, and where a notebook spec says it.
TRAINING_ONLY_OPTIONS = {
    "data": ("--data", "give data files as notebook parameters (--param NAME_path=FILE)"),
    "reference": ("--reference", "give data files as notebook parameters (--param NAME_path=FILE)"),
    "start": ("--start", "give the window as notebook parameters, or in the spec's parameters"),
    "end": ("--end", "give the window as notebook parameters, or in the spec's parameters"),
    "grid": ("--grid", "write the grid in the spec (grid: {NOTEBOOK: {NAME: [V1, V2]}})"),
    "policy": ("--policy", "name the ranking policy in the spec (policy: FILE)"),
}


def run_spec_path(args: argparse.Namespace) -> str:
    """``--spec``, else ``--pipeline``'s spec, else the project's default pipeline's."""
    if args.spec:
        return str(args.spec)
    return f"deployments/{resolve_pipeline(args)}.yaml"


def load_run_spec(spec: str) -> Any:
    """The spec ``nbprod run`` runs, validated; a bad spec is a ConfigError."""
    from flows.spec import load_spec

    return load_spec(spec)


def training_options_given(args: argparse.Namespace) -> list[str]:
    """The training-only options on this command line, each with where a notebook spec says it."""
    return [
        f"{flag} ({fix})"
        for attr, (flag, fix) in TRAINING_ONLY_OPTIONS.items()
        if getattr(args, attr) not in (None, [])
    ]


def run_flow_from_cli(args: argparse.Namespace, flow_name: str, **arguments: Any) -> int:
    """Start one of flows.pipeline's flows as ``nbprod run`` does, then print its record.

    Warm kernels start before Prefect is imported (not under Dask, which runs the kernels in
    its own worker processes); heartbeats as flows.prefect_settings says. An unchanged re-run
    is a run like any other: Prefect's cache answers its notebook tasks (``Cached`` task runs)
    and it is stored as a new version.
    """
    if args.dask is None:
        prestart_kernels(args.spec, flow_name, arguments.get("parameters"), args.no_cache)
    from flows import pipeline, progress
    from flows.prefect_settings import command_flow_settings

    flow_fn = getattr(pipeline, flow_name)
    if args.dask is not None:
        flow_fn = flow_fn.with_options(task_runner=dask_task_runner(args.dask))
    verbose = getattr(args, "verbose", False)
    show_live = progress.wanted() and not getattr(args, "json", False)
    with (
        console.run_errors_on_console(verbose),
        command_flow_settings(),
        progress.live_status(show_live),
    ):
        record = flow_fn(
            spec=args.spec,
            no_cache=args.no_cache,
            run_store_url=args.store,
            triggered_by="cli",
            **arguments,
        )
    print(render_run(record, open_store(args.store)))
    return console.EXIT_REJECTED if record.get("status") == "rejected" else 0


def run_notebook_spec(args: argparse.Namespace, spec: Any) -> int:
    """A notebook spec runs ``notebook_pipeline``, as its deployment does, not the training flow.

    Why refuse the training options rather than ignore them: a window or data file the user gave
    and the run silently did not use would be recorded as if it had.
    """
    given = training_options_given(args)
    if given:
        raise UsageError(
            f"{args.spec} is a notebook spec (flow: notebook), which the training options do not "
            f"apply to: {'; '.join(given)}"
        )
    params = notebook_parameters(args.param, spec.stems)
    precheck_parameters(spec, params)
    # The last notebook's alone stay a flat dict, as a deployment run's parameters are given.
    flat = set(params) <= {spec.stems[-1]}
    given = params.get(spec.stems[-1]) if flat else params
    return run_flow_from_cli(args, "notebook_pipeline", parameters=given or None)


def dask_task_runner(address: str) -> Any:
    """prefect-dask's runner: the scheduler at ``address``, or a local in-process cluster.

    Locally, threads are enough: every notebook runs in its own kernel process anyway, and worker
    processes would not inherit this process's Prefect API settings.
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 1,
            "threads_per_worker": 4,
            "processes": False,
            # Even without a dashboard, distributed serves HTTP (health, metrics) on 0.0.0.0:8787
            # and on a worker port: keep both on the loopback, on free ports.
            "dashboard_address": "127.0.0.1:0",
            "worker_dashboard_address": "127.0.0.1:0",
        }
    )


def prestart_kernels(
    spec: str, flow_name: str, parameters: dict[str, Any] | None, no_cache: bool
) -> None:
    """Start the spec's notebook kernels ahead of need (flows.kernels), before Prefect is imported.

    Why here: importing Prefect and starting a flow run take seconds of this process's time;
    meanwhile the first kernel starts and imports its notebook's libraries on the other core, so
    the notebook starts with them loaded. The pool expects one run per notebook (one per point
    of its grid). None starts for a notebook spec whose first notebook is already in the cache
    (an unchanged re-run: the kernel would only compete with the run for the cores). A spec that
    does not load is the flow's to report.
    """
    from flows.errors import NbprodError
    from flows.kernels import start_kernel_pool, stop_kernel_pool
    from flows.settings import load_settings

    settings = load_settings()
    if not settings.warm_kernels:
        return
    from flows.calls import is_cached
    from flows.planning import first_call
    from flows.runner import expand_grid
    from flows.spec import load_spec, resolve_project_path

    try:
        loaded = load_spec(resolve_project_path(spec))
        if flow_name == "notebook_pipeline" and not no_cache:
            call = first_call(loaded, parameters, settings)
            if call is not None and is_cached(call):
                return
        start_kernel_pool([None])  # a kernel starts now; the notebook it serves is named below
        runs = [
            notebook
            for stem, notebook in zip(loaded.stems, loaded.notebook_paths(), strict=True)
            for _ in expand_grid(loaded.grid.get(stem))
        ]
    except (NbprodError, OSError, ValueError):
        stop_kernel_pool()
        return
    start_kernel_pool(runs, settings.kernel_name)


def cmd_run(args: argparse.Namespace) -> int:
    args.spec = run_spec_path(args)
    spec = load_run_spec(args.spec)
    if spec.flow == "notebook":
        return run_notebook_spec(args, spec)
    params = notebook_parameters(args.param, spec.stems)
    grid = dict(parse_assignment(p) for p in args.grid)
    for name, values in grid.items():
        if not isinstance(values, list):
            raise UsageError(f"--grid {name}: give a list, e.g. --grid {name}=[3,6]")
    precheck_parameters(spec, params, grid or None)
    return run_flow_from_cli(
        args,
        "training_pipeline",
        parameters=params or None,
        grid=grid or None,
        data_path=args.data,
        reference_path=args.reference,
        start_date=args.start,
        end_date=args.end,
        policy_path=args.policy,
    )


def render_run(record: dict[str, Any], store: Any) -> str:
    from flows.run_records import flow_of

    kind = record.get("kind") or (
        "notebook" if flow_of(record) == "notebook_pipeline" else "training"
    )
    lines = [f"run {record['version']} ({kind}): {record['status'].upper()}"]
    lines.append(f"  triggered by {record.get('triggered_by')}")
    for reason in record.get("reasons") or []:
        lines.append(f"  - {reason}")
    if record.get("error"):
        lines.append(f"  error in {record.get('failed_step')}: {record['error']}")
    if kind == "monitoring":
        window = record.get("window") or [None, None]
        lines.append(
            f"  window {window[0] or 'start'} → {window[1] or 'end'} of {record.get('source')}; "
            f"champion {record.get('champion_version')}"
        )
        if record.get("event"):
            lines.append(f"  emitted {record['event'].get('event')} ({record['event'].get('id')})")
        for later in store.followups(record["version"]):
            reasons = "; ".join(later.get("reasons") or [])
            lines.append(
                f"  → {later.get('kind')} {later['version']}: {str(later.get('status')).upper()}"
                f"{' — ' + reasons if reasons else ''}"
            )
    elif kind == "notebook":
        cache = ", ".join(f"{nb} {status}" for nb, status in (record.get("cache") or {}).items())
        lines.append(f"  spec {record.get('spec')}" + (f"; cache: {cache}" if cache else ""))
        metrics = (record.get("metrics") or {}).get("candidate") or {}
        shown = [f"{k} {_fmt_number(v)}" for k, v in metrics.items() if _is_number(v)]
        if shown:
            lines.append("  " + "  ".join(shown))
    else:
        lines.append(
            f"  {record.get('pipeline')} ({record.get('task')}): {_metrics_summary(record)}"
        )
    if record.get("bento_tag"):
        lines.append(f"  model {record['model_tag']}  bento {record['bento_tag']}")
    runtime = record.get("runtime") or {}
    if runtime.get("name"):
        lines.append(f"  served by {runtime['name']}: {runtime.get('reason')}")
    lines.append(f"  stored at {store.uri(record['version'])}")
    return "\n".join(lines)


def _metrics_summary(record: dict[str, Any], limit: int = 4) -> str:
    """A run's first numeric candidate metrics (not ``rows``), whatever its task; ``—`` if none."""
    metrics = (record.get("metrics") or {}).get("candidate") or {}
    shown = [f"{k} {_fmt_number(v)}" for k, v in metrics.items() if k != "rows" and _is_number(v)]
    return "  ".join(shown[:limit]) or "—"


def _why_not_accepted(record: dict[str, Any]) -> str:
    """A failed run's error (not a gate check that passed before it failed), else the first
    reason of a run that was not accepted."""
    if record["status"] == "failed" and record.get("error"):
        return str(record["error"])
    if record["status"] == "accepted":
        return ""
    return str((record.get("reasons") or [record.get("error") or ""])[0])


def cmd_runs(args: argparse.Namespace) -> int:
    """Every pipeline's runs, or one's with ``--pipeline``; a PIPELINE column when several show."""
    from flows.run_records import pipeline_of

    runs = open_store(args.store).list_runs(args.pipeline)
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    if not runs:
        scope = f" for pipeline {args.pipeline}" if args.pipeline else ""
        print(f"no runs yet{scope}: start one with `nbprod run`")
        return 0
    rows = [
        {
            "pipeline": pipeline_of(r),
            "version": r["version"],
            "status": r["status"],
            "started": r.get("started_at") or "—",
            "metrics": _metrics_summary(r),
            "reason": _why_not_accepted(r)[:80],
        }
        for r in runs
    ]
    columns = ["version", "status", "started", "metrics", "reason"]
    if len({row["pipeline"] for row in rows}) > 1:
        columns.insert(0, "pipeline")
    from flows.tables import print_table

    print_table(columns, [[row[c] for c in columns] for row in rows])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    record = store.get_run(args.version)
    if args.json:
        print(json.dumps(record, indent=2, default=str))
        return 0
    from flows.run_records import pipeline_of

    print(render_run(record, store))
    print(f"  pipeline {pipeline_of(record)}")
    from flows.tables import print_table

    print_table(["file"], [[rel] for rel in store.files(args.version)])
    return 0


def cmd_champion(args: argparse.Namespace) -> int:
    """The pipeline's champion (``--pipeline``, else the project's default); JSON null if none."""
    pipeline = resolve_pipeline(args)
    champion = open_store(args.store).champion(pipeline)
    if args.json:
        print(json.dumps(champion, indent=2, default=str))
        return 0
    if champion is None:
        print(
            f"no champion yet for pipeline {pipeline}: its first accepted `nbprod run` becomes "
            "the champion"
        )
        return 0
    metrics = champion.get("metrics") or {}
    print(
        f"champion of {pipeline}: {champion['version']} since {champion.get('since')} "
        f"({champion.get('reason')})"
    )
    print(f"  model {champion.get('model_tag')}  bento {champion.get('bento_tag')}")
    print("  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return 0


# The commands defined in this module; every other command is registered by its own module.
OWN_COMMANDS = ("run", "runs", "show", "champion")


def build_parser(command: str | None = None, json_errors: bool = False) -> argparse.ArgumentParser:
    """The full parser; for one of :data:`OWN_COMMANDS`, that command's part only.

    Why: registering the other modules' commands imports them (~0.1 s), which the commands
    defined here do not need. ``nbprod --help`` and every other command get the full parser.
    With ``json_errors``, a usage error is JSON on stdout.
    """
    parser = console.CommandLineParser(
        prog="nbprod",
        description="Run notebooks as a versioned, gated Prefect pipeline and package the "
        "accepted model as a BentoML bento.",
        epilog=console.EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        json_errors=json_errors,
    )
    from flows import __version__

    parser.add_argument("--version", action="version", version=f"nbprod {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = add_store_option(
        sub.add_parser(
            "run",
            help="run a pipeline from its spec: training (gate, reports, bento) or notebook "
            "(embedded Prefect server unless PREFECT_API_URL is set)",
        )
    )
    add_pipeline_option(run)
    run.add_argument(
        "--spec",
        default=None,
        metavar="YAML",
        help="pipeline spec written by `nbprod promote` (deployments/NAME.yaml)",
    )
    run.add_argument("--data", default=None, help="input data file (default: the spec's)")
    run.add_argument(
        "--reference",
        default=None,
        help="reference data: schema and drift baseline (default: the spec's)",
    )
    run.add_argument(
        "--start", default=None, help="window start on the time column, inclusive (2024-01-01)"
    )
    run.add_argument("--end", default=None, help="window end, exclusive (2024-10-01)")
    run.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=[V1,V2]",
        help="train parameter grid, repeatable; points run in parallel and the best "
        "by the gate metric is kept",
    )
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="re-execute notebooks even when their inputs are unchanged",
    )
    run.add_argument(
        "--dask",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run notebook tasks on Dask (a local cluster, or the scheduler at ADDRESS)",
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="notebook parameter, repeatable: NAME=VALUE for the last notebook, "
        "STEM.NAME=VALUE for another (e.g. --param max_depth=4 --param prepare.test_fraction=0.3)",
    )
    run.add_argument("--policy", default=None, help="gate policy YAML (default: the spec's policy)")
    run.set_defaults(func=cmd_run)

    runs = add_store_option(
        sub.add_parser("runs", help="list run versions with status and metrics")
    )
    runs.add_argument(
        "--pipeline",
        default=None,
        metavar="NAME",
        help="only this pipeline's runs (default: every pipeline's)",
    )
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.set_defaults(func=cmd_runs)

    show = add_store_option(sub.add_parser("show", help="show one run version and its files"))
    show.add_argument("version")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_show)

    champ = add_pipeline_option(
        add_store_option(sub.add_parser("champion", help="show a pipeline's current champion"))
    )
    champ.add_argument("--json", action="store_true", help="machine-readable output")
    champ.set_defaults(func=cmd_champion)
    if command not in OWN_COMMANDS:
        register_other_commands(sub)
    console.add_verbose_option(parser, sub)
    return parser


def register_other_commands(sub: Any) -> None:
    """The commands every other module registers (each imports its module)."""
    from flows.serving import register_commands as register_serving

    register_serving(sub)

    from flows.lint import register_commands as register_lint

    register_lint(sub)
    from flows.promote import register_commands as register_promote

    register_promote(sub)
    from flows.container import register_commands as register_container_commands

    register_container_commands(sub)
    from flows.history import register_commands as register_history_commands

    register_history_commands(sub)
    from flows.monitor_cli import register_commands as register_monitor_commands

    register_monitor_commands(sub)
    from flows.gc import register_commands as register_gc_command

    register_gc_command(sub)
    from flows.ui import register_commands as register_ui_command

    register_ui_command(sub)


def main(argv: Sequence[str] | None = None) -> int:
    prepare_environment()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None, json_errors="--json" in argv)
    args = parser.parse_args(join_durations(argv))
    from flows.errors import NbprodError

    try:
        return int(args.func(args) or 0)
    except (NbprodError, UsageError) as exc:
        console.report_failure(args, exc, "error", str(exc))
        return console.EXIT_USAGE if isinstance(exc, UsageError) else console.EXIT_ERROR
    except KeyboardInterrupt:
        print("nbprod: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nbprod runs | head`: the reader left, nothing went wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        console.report_failure(args, exc, "unexpected error", f"{type(exc).__name__}: {exc}")
        return console.EXIT_ERROR


def run_without_teardown(command: Callable[[], int]) -> NoReturn:
    """Run ``command`` and exit with its code, skipping the interpreter's teardown.

    Why: after a run, CPython's finalization (clearing modules and collecting the heap that
    Prefect, pandas and scikit-learn built) takes ~1 s here, for nothing: the process is ending.
    The handler below is registered before anything else, so it runs last: Prefect's log and
    event flushing (thread shutdown hooks, which run before atexit) and every atexit handler
    registered later (logging, the kernel server, Prefect's clients) have all finished.
    """
    import atexit

    exit_code = [1]  # an uncaught exception: its traceback is printed before atexit runs

    def end_process() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader that left, or a closed stream
                pass
        os._exit(exit_code[0])

    atexit.register(end_process)
    try:
        exit_code[0] = command()
    except SystemExit as exc:  # argparse's usage errors (2), --help and --version (0)
        exit_code[0] = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        raise
    sys.exit(exit_code[0])


def entrypoint() -> NoReturn:
    """The ``nbprod`` console script."""
    run_without_teardown(main)


if __name__ == "__main__":
    entrypoint()
