"""Champion history, rollback, and the ``monitor`` command.

Why a rollback goes through ``RunStore.set_champion`` like any promotion: the history stays one
append-only sequence of champion changes (gate, retrain, rollback), and the same
compare-and-swap on the pointer refuses a rollback that races a training run.

Only the standard library is imported at module level: ``register_commands`` runs for every
``nbprod --help``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

from flows.errors import RollbackError, RunStoreError
from flows.options import add_store_option, open_store

# A training run's triggered_by starting with one of these was started by drift monitoring.
RETRAIN_TRIGGERS = ("drift", "automation", "nbprod.drift")


def _why(event: dict[str, Any], run: dict[str, Any] | None) -> str:
    """gate (a training run passed the gate), retrain (one started by drift), or rollback."""
    reason = str(event.get("reason") or "")
    if reason == "gate" and run and str(run.get("triggered_by") or "").startswith(RETRAIN_TRIGGERS):
        return "retrain"
    return reason or "unknown"


def history_rows(store: Any) -> list[dict[str, Any]]:
    """Every champion change, oldest first, with why and what triggered it."""
    rows = []
    for event in store.champion_history():
        to_version = event.get("to_version")
        try:
            run = store.get_run(to_version) if to_version else None
        except RunStoreError:
            run = None
        rows.append(
            {
                "at": event.get("at"),
                "from_version": event.get("from_version"),
                "to_version": to_version,
                "why": _why(event, run),
                "reason": event.get("reason"),
                "note": event.get("note"),
                "triggered_by": event.get("triggered_by"),
                "run_triggered_by": run.get("triggered_by") if run else None,
                "bento_tag": event.get("bento_tag"),
            }
        )
    return rows


def previous_champion(store: Any, current: str) -> str | None:
    """The champion before ``current``: where the latest move to ``current`` came from."""
    for event in reversed(store.champion_history()):
        if event.get("to_version") == current:
            return event.get("from_version")
    return None


def bento_exists(tag: str) -> bool:
    """Whether the bento is still in the BentoML store ($BENTOML_HOME): serving needs it."""
    import bentoml

    try:
        bentoml.bentos.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True


def rollback(store: Any, version: str | None, *, reason: str, triggered_by: str) -> dict[str, Any]:
    """Point the champion back at an accepted version whose bento still exists.

    Every check runs before the pointer moves; on any problem nothing changes.
    """
    if not reason.strip():
        raise RollbackError("a rollback needs a reason: --reason 'what went wrong'")
    current = store.champion()
    if current is None:
        raise RollbackError("no champion yet: there is nothing to roll back")
    target = version or previous_champion(store, current["version"])
    if target is None:
        raise RollbackError(
            f"champion {current['version']} has no previous champion: name a VERSION "
            "(see `nbprod history` and `nbprod runs`)"
        )
    if target == current["version"]:
        raise RollbackError(f"{target} is already the champion")
    try:
        run = store.get_run(target)
    except RunStoreError as exc:
        raise RollbackError(f"cannot roll back to {target}: {exc}") from exc
    if run.get("status") != "accepted":
        raise RollbackError(
            f"cannot roll back to {target}: it was {run.get('status')}, only an accepted "
            "training run can be champion"
        )
    bento_tag = run.get("bento_tag")
    if not bento_tag or not bento_exists(bento_tag):
        raise RollbackError(
            f"cannot roll back to {target}: its bento {bento_tag} is no longer in the BentoML "
            "store (BENTOML_HOME); re-run training for that configuration instead"
        )
    record = {
        "version": target,
        "model_tag": run.get("model_tag"),
        "bento_tag": bento_tag,
        "metrics": ((run.get("metrics") or {}).get("candidate")) or {},
        "note": reason,
    }
    return store.set_champion(
        record,
        expected=current["version"],
        reason="rollback",
        triggered_by=triggered_by,
        note=reason,
    )


# -- command line ------------------------------------------------------------------------------
def cmd_history(args: argparse.Namespace) -> int:
    rows = history_rows(open_store(args.store))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("no champion changes yet: the first accepted `nbprod run` becomes the champion")
        return 0
    # Columns as wide as the longest version plus one, so a version never runs into the next
    # column whatever the version format (ids grew milliseconds once).
    width = 1 + max(len(v) for row in rows for v in (row["from_version"] or "", row["to_version"]))
    print(f"{'WHEN':<26} {'FROM':<{width}} {'TO':<{width}} {'WHY':<9} TRIGGERED BY")
    for row in rows:
        print(
            f"{row['at'] or '':<26} {row['from_version'] or '—':<{width}} "
            f"{row['to_version']:<{width}} "
            f"{row['why']:<9} {row['triggered_by'] or ''}"
            + (f"  ({row['note']})" if row.get("note") else "")
        )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    before = store.champion()
    pointer = rollback(
        store,
        args.version,
        reason=args.reason,
        triggered_by=f"cli ({getpass.getuser()})",
    )
    print(
        f"champion rolled back: {before['version'] if before else None} -> {pointer['version']}"
        f"\n  bento {pointer['bento_tag']}  reason: {args.reason}"
    )
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from flows.monitoring import monitoring_pipeline
    from flows.prefect_fixes import apply_prefect_fixes

    apply_prefect_fixes()
    record = monitoring_pipeline(
        args.source,
        args.start,
        args.end,
        spec=args.spec,
        run_store_url=args.store,
        triggered_by="cli",
        policy={"min_rows": args.min_rows} if args.min_rows is not None else None,
    )
    drift = record.get("drift") or {}
    print(f"monitoring {record['version']}: {str(drift.get('verdict')).upper()}")
    print(f"  {drift.get('reason')}")
    if record.get("event"):
        print(f"  emitted {record['event']['event']} for {record['spec']}")
    print(f"  stored at {open_store(args.store).uri(record['version'])}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flows.monitoring import sync_dashboard
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
    """Add ``history``, ``rollback``, ``monitor`` and ``dashboard`` to ``nbprod``'s parser."""

    history = add_store_option(
        subparsers.add_parser("history", help="every champion change: when, from, to, why")
    )
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.set_defaults(func=cmd_history)

    back = add_store_option(
        subparsers.add_parser(
            "rollback",
            help="re-point the champion to a previous accepted version (default: the previous "
            "champion)",
        )
    )
    back.add_argument("version", nargs="?", default=None, metavar="VERSION")
    back.add_argument("--reason", required=True, help="why: recorded in the champion history")
    back.set_defaults(func=cmd_rollback)

    monitor = add_store_option(
        subparsers.add_parser(
            "monitor",
            help="check production inputs for drift against the champion's training data",
        )
    )
    monitor.add_argument(
        "source", help="inference-log folder, or a batch .csv/.parquet file or fsspec URL"
    )
    monitor.add_argument("--start", default=None, help="window start, inclusive (2024-10-01)")
    monitor.add_argument("--end", default=None, help="window end, exclusive (2025-01-01)")
    monitor.add_argument(
        "--spec",
        default="deployments/training.yaml",
        metavar="YAML",
        help="pipeline spec: its name labels the drift event, its drift policy applies",
    )
    monitor.add_argument(
        "--min-rows", type=int, default=None, help="fewer rows than this: no verdict"
    )
    monitor.set_defaults(func=cmd_monitor)

    dash = add_store_option(
        subparsers.add_parser(
            "dashboard",
            help="load stored Evidently reports into a workspace: drift over time, model "
            "metrics over versions (--serve: show it on 127.0.0.1)",
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
