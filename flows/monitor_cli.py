"""The ``monitor`` and ``dashboard`` commands.

Only the standard library is imported at module level: ``register_commands`` runs for every
``nbprod --help``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from flows.options import (
    add_duration_option,
    add_pipeline_option,
    add_store_option,
    open_store,
    resolve_pipeline,
)


def cmd_monitor(args: argparse.Namespace) -> int:
    from flows.console import run_errors_on_console
    from flows.monitoring import monitoring_pipeline
    from flows.prefect_settings import command_flow_settings
    from flows.spec import spec_path

    pipeline = resolve_pipeline(args)
    verbose = getattr(args, "verbose", False)
    with run_errors_on_console(verbose), command_flow_settings():
        record = monitoring_pipeline(
            str(spec_path(pipeline)),
            args.start,
            args.end,
            source=args.source,
            triggered_by="cli",
            run_store_url=args.store,
            policy={"min_rows": args.min_rows} if args.min_rows is not None else None,
        )
    drift = record.get("drift") or {}
    print(f"monitoring {record['version']} ({pipeline}): {str(drift.get('verdict')).upper()}")
    print(f"  {drift.get('reason')}")
    if record.get("event"):
        print(f"  emitted {record['event']['event']} for pipeline {pipeline}")
    print(f"  stored at {open_store(args.store).uri(record['version'])}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from flows.dashboard import sync_dashboard
    from flows.settings import load_settings

    workspace = Path(args.workspace or load_settings().home / "evidently").expanduser()
    added = sync_dashboard(open_store(args.store), workspace)
    print(f"Evidently workspace {workspace}: {added} new report snapshot(s) added")
    command = [
        str(Path(sys.executable).with_name("evidently")),
        "ui",
        "--workspace",
        str(workspace),
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    if not args.serve:
        print(f"  open it: {' '.join(command)}")
        print(f"  (or `nbprod dashboard --serve`), then http://127.0.0.1:{args.port}")
        return 0
    print(f"serving it on http://127.0.0.1:{args.port} (Ctrl-C stops)", flush=True)
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's UI reports usage otherwise
    os.execv(command[0], command)  # signals reach the server directly
    return 0  # pragma: no cover


def register_commands(subparsers: Any) -> None:
    """Add ``monitor`` and ``dashboard`` to ``nbprod``'s parser."""
    monitor = add_pipeline_option(
        add_store_option(
            subparsers.add_parser(
                "monitor",
                help="check production inputs for drift against the pipeline champion's "
                "training data",
            )
        )
    )
    monitor.add_argument(
        "source",
        nargs="?",
        default=None,
        help="inference-log folder, or a batch .csv/.parquet file or fsspec URL (default: the "
        "service's inference log, $NBPROD_INFERENCE_LOG_DIR or $BENTOML_HOME/inference_logs)",
    )
    add_duration_option(
        monitor, "--start", help="window start, inclusive: a date (2024-10-01) or -24h, -7d"
    )
    add_duration_option(monitor, "--end", help="window end, exclusive: a date or a duration ago")
    monitor.add_argument(
        "--min-rows", type=int, default=None, help="fewer rows than this: no verdict"
    )
    monitor.set_defaults(func=cmd_monitor)

    dash = add_store_option(
        subparsers.add_parser(
            "dashboard",
            help="load stored Evidently reports into a workspace, a project per pipeline: "
            "drift over time, model metrics over versions (--serve: show it on 127.0.0.1)",
        )
    )
    dash.add_argument(
        "--workspace",
        default=None,
        metavar="DIR",
        help="Evidently workspace folder (default: $NBPROD_HOME/evidently)",
    )
    dash.add_argument(
        "--serve", action="store_true", help="then run `evidently ui` on it (127.0.0.1 only)"
    )
    dash.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000)")
    dash.set_defaults(func=cmd_dashboard)
