"""Champion history and rollback.

Each pipeline has its own champion and history in the run store (flows.store); every function
here works on one pipeline. Why a rollback goes through ``RunStore.set_champion`` like any
promotion: the history stays one append-only sequence of champion changes (gate, retrain,
rollback), and the same compare-and-swap on the pointer refuses a rollback that races a
training run.

Only the standard library is imported at module level: ``register_commands`` runs for every
``nbprod --help``.
"""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from flows.errors import RollbackError, RunStoreError
from flows.options import add_pipeline_option, add_store_option, open_store, resolve_pipeline

# A training run's triggered_by starting with one of these was started by drift monitoring.
RETRAIN_TRIGGERS = ("drift", "automation", "nbprod.drift")


def _why(event: dict[str, Any], run: dict[str, Any] | None) -> str:
    """gate (a training run passed the gate), retrain (one started by drift), or rollback."""
    reason = str(event.get("reason") or "")
    if reason == "gate" and run and str(run.get("triggered_by") or "").startswith(RETRAIN_TRIGGERS):
        return "retrain"
    return reason or "unknown"


def history_rows(store: Any, pipeline: str) -> list[dict[str, Any]]:
    """Every change of the pipeline's champion, oldest first, with why and what triggered it."""
    rows = []
    for event in store.champion_history(pipeline):
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


def previous_champion(store: Any, pipeline: str, current: str) -> str | None:
    """The pipeline's champion before ``current``: where the latest move to it came from."""
    for event in reversed(store.champion_history(pipeline)):
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


def rollback(
    store: Any, version: str | None, *, pipeline: str, reason: str, triggered_by: str
) -> dict[str, Any]:
    """Point the pipeline's champion back at one of its accepted versions whose bento exists.

    Every check runs before the pointer moves; on any problem nothing changes. A version that
    is not a plain version id, or a run of another pipeline, is refused.
    """
    from flows.run_records import check_version, pipeline_of

    if not reason.strip():
        raise RollbackError("a rollback needs a reason: --reason 'what went wrong'")
    if version is not None:
        try:
            check_version(version)
        except RunStoreError as exc:
            raise RollbackError(f"cannot roll back: {exc}") from exc
    current = store.champion(pipeline)
    if current is None:
        raise RollbackError(
            f"pipeline {pipeline} has no champion yet: there is nothing to roll back"
        )
    target = version or previous_champion(store, pipeline, current["version"])
    if target is None:
        raise RollbackError(
            f"champion {current['version']} of pipeline {pipeline} has no previous champion: "
            f"name a VERSION (see `nbprod history --pipeline {pipeline}` and `nbprod runs`)"
        )
    if target == current["version"]:
        raise RollbackError(f"{target} is already the champion of pipeline {pipeline}")
    try:
        run = store.get_run(target)
    except RunStoreError as exc:
        raise RollbackError(f"cannot roll back to {target}: {exc}") from exc
    if pipeline_of(run) != pipeline:
        raise RollbackError(
            f"cannot roll back pipeline {pipeline} to {target}: it is a run of pipeline "
            f"{pipeline_of(run)} (see `nbprod runs --pipeline {pipeline}`)"
        )
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
        pipeline,
        record,
        expected=current["version"],
        reason="rollback",
        triggered_by=triggered_by,
        note=reason,
    )


# -- command line ------------------------------------------------------------------------------
def cmd_history(args: argparse.Namespace) -> int:
    pipeline = resolve_pipeline(args)
    rows = history_rows(open_store(args.store), pipeline)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(
            f"no champion changes yet for pipeline {pipeline}: its first accepted `nbprod run` "
            "becomes the champion"
        )
        return 0
    from flows.tables import print_table

    print_table(
        ["when", "from", "to", "why", "triggered by", "note"],
        [
            [r["at"], r["from_version"], r["to_version"], r["why"], r["triggered_by"], r["note"]]
            for r in rows
        ],
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    pipeline = resolve_pipeline(args)
    before = store.champion(pipeline)
    pointer = rollback(
        store,
        args.version,
        pipeline=pipeline,
        reason=args.reason,
        triggered_by=f"cli ({getpass.getuser()})",
    )
    print(
        f"champion of {pipeline} rolled back: {before['version'] if before else None} -> "
        f"{pointer['version']}"
        f"\n  bento {pointer['bento_tag']}  reason: {args.reason}"
    )
    return 0


def register_commands(subparsers: Any) -> None:
    """Add ``history`` and ``rollback`` to ``nbprod``'s parser."""

    history = add_pipeline_option(
        add_store_option(
            subparsers.add_parser(
                "history", help="every change of a pipeline's champion: when, from, to, why"
            )
        )
    )
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.set_defaults(func=cmd_history)

    back = add_pipeline_option(
        add_store_option(
            subparsers.add_parser(
                "rollback",
                help="re-point a pipeline's champion to one of its previous accepted versions "
                "(default: the previous champion)",
            )
        )
    )
    back.add_argument("version", nargs="?", default=None, metavar="VERSION")
    back.add_argument("--reason", required=True, help="why: recorded in the champion history")
    back.set_defaults(func=cmd_rollback)
