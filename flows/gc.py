"""``nbprod gc``: remove what failed, rejected, killed or unlisted runs left behind.

What goes: scratch folders of runs no live process owns, version folders that never got a
``run.json`` (partial versions), stray temp files of interrupted writes, and the BentoML bentos
and models of runs that are not listed as accepted. A run in progress (its process, recorded in
``process.json`` by :func:`flows.runs.begin`, is alive) is never touched, nor is an accepted
version's or a champion's bento. Prefect flow runs of dead processes still shown as running are
set to Crashed. BentoML recomputes a name's ``latest`` when a version is deleted, so after gc it
names an accepted model.

Only the standard library is imported at module level: ``register_commands`` runs for every
``nbprod --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flows.atomic import TEMP_MARKER
from flows.options import add_store_option, open_store

# Written into every version folder when its run begins: who runs it (flows.runs.begin).
PROCESS_FILE = "process.json"

# A store write's temp file lives for a moment; one this old was left by a killed process.
TEMP_FILE_MIN_AGE_S = 60.0


@dataclass
class Garbage:
    """What one gc pass found (and, unless a dry run, removed)."""

    scratch: list[str] = field(default_factory=list)
    partial_versions: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    bentos: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    crashed_flow_runs: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    # Versions begun on another machine: only that machine knows if they are running.
    elsewhere: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not any(
            (
                self.scratch,
                self.partial_versions,
                self.temp_files,
                self.bentos,
                self.models,
                self.crashed_flow_runs,
            )
        )


def process_record(flow_run_id: str | None) -> dict[str, Any]:
    """This process, as a version's ``process.json`` names it."""
    import psutil

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_started": psutil.Process().create_time(),
        "flow_run_id": flow_run_id,
    }


def process_alive(owner: dict[str, Any]) -> bool:
    """Is the process a ``process.json`` names still running on this machine?"""
    import psutil

    try:
        process = psutil.Process(int(owner["pid"]))
        # A pid can be reused: the same pid with another start time is another process.
        return abs(process.create_time() - float(owner["process_started"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def read_owner(read: Any, path: str) -> dict[str, Any] | None:
    try:
        return dict(read(path))
    except (OSError, ValueError, TypeError):
        return None


def owner_state(owner: dict[str, Any] | None) -> str:
    """ "live", "elsewhere" (begun on another machine) or "dead" (also: no owner recorded)."""
    if owner and owner.get("host") != socket.gethostname():
        return "elsewhere"
    return "live" if owner and process_alive(owner) else "dead"


def find_garbage(store: Any, scratch_dir: Path) -> tuple[Garbage, list[dict[str, Any]]]:
    """What gc would remove, and the owners of the dead partial versions (for Prefect)."""
    found = Garbage()
    listed = {run["version"]: run for run in store.list_runs()}
    dead_owners = []
    for version in store.version_folders():
        if version in listed:
            continue
        path = store.version_path(version, PROCESS_FILE)
        owner = read_owner(store.read_json, path) if store.fs.exists(path) else None
        state = owner_state(owner)
        if state == "dead":
            found.partial_versions.append(version)
            dead_owners.extend([owner] if owner else [])
        else:
            (found.in_progress if state == "live" else found.elsewhere).append(version)
    for folder in sorted(scratch_dir.iterdir()) if scratch_dir.is_dir() else []:
        owner = read_owner(lambda p: json.loads(Path(p).read_text()), str(folder / PROCESS_FILE))
        if owner_state(owner) == "dead":
            found.scratch.append(str(folder))
    found.temp_files = stray_temp_files(store, busy=found.in_progress + found.elsewhere)
    champions = {(store.champion(p) or {}).get("version") for p in store.pipelines()}
    unapproved = {v for v, run in listed.items() if run.get("status") != "accepted"}
    found.bentos, found.models = packages_of((unapproved | set(found.partial_versions)) - champions)
    return found, dead_owners


def stray_temp_files(store: Any, busy: list[str]) -> list[str]:
    """Temp files of interrupted writes: outside running versions, and older than a write takes."""
    import time

    if not store.fs.exists(store.root):
        return []
    busy_paths = tuple(store.version_path(v) + "/" for v in busy)
    cutoff = time.time() - TEMP_FILE_MIN_AGE_S
    stray = []
    for path in store.fs.find(store.root):
        if TEMP_MARKER in path.rsplit("/", 1)[-1] and not path.startswith(busy_paths):
            modified = store.fs.modified(path).timestamp()
            if modified < cutoff:
                stray.append(path)
    return sorted(stray)


def packages_of(versions: set[str]) -> tuple[list[str], list[str]]:
    """The bentos and models nbprod built (labelled with their run version) for ``versions``."""
    from flows.bento_server import use_bentoml_home
    from flows.packaging import store_lock

    use_bentoml_home()
    import bentoml

    def built_for(items: Any) -> list[str]:
        return sorted(
            str(item.tag)
            for item in items
            if (item.info.labels or {}).get("run_version") in versions
        )

    with store_lock():  # a listing meeting another process's delete fails
        return built_for(bentoml.list()), built_for(bentoml.models.list())


def collect(store: Any, scratch_dir: Path, *, dry_run: bool) -> Garbage:
    """Find the garbage and, unless ``dry_run``, remove it (Prefect flow runs first)."""
    found, dead_owners = find_garbage(store, scratch_dir)
    stale = [o["flow_run_id"] for o in dead_owners if o.get("flow_run_id")]
    found.crashed_flow_runs = mark_crashed(stale, dry_run=dry_run) if stale else []
    if dry_run:
        return found
    import shutil

    from flows.packaging import delete_bento, delete_model

    for tag in found.bentos:
        delete_bento(tag)
    for tag in found.models:
        delete_model(tag)
    for version in found.partial_versions:
        store.fs.rm(store.version_path(version), recursive=True)
    for path in found.temp_files:
        if store.fs.exists(path):
            store.fs.rm(path)
    for folder in found.scratch:
        shutil.rmtree(folder, ignore_errors=True)
    return found


def mark_crashed(flow_run_ids: list[str], *, dry_run: bool) -> list[str]:
    """Set the still-running Prefect flow runs among ``flow_run_ids`` to Crashed; their ids."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    marked = []
    with get_client(sync_client=True) as client:
        for flow_run_id in flow_run_ids:
            try:
                flow_run = client.read_flow_run(UUID(flow_run_id))
            except (ObjectNotFound, ValueError):
                continue
            if flow_run.state is None or flow_run.state.is_final():
                continue
            if not dry_run:
                client.set_flow_run_state(
                    flow_run.id,
                    Crashed(message="the process running this flow died (found by nbprod gc)"),
                    force=True,
                )
            marked.append(flow_run_id)
    return marked


def cmd_gc(args: argparse.Namespace) -> int:
    from flows.settings import load_settings

    found = collect(open_store(args.store), load_settings().scratch_dir, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **asdict(found)}, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    if found.empty():
        print("nothing to remove")
    for label, items in (
        ("scratch folders", found.scratch),
        ("partial versions", found.partial_versions),
        ("temp files", found.temp_files),
        ("bentos", found.bentos),
        ("models", found.models),
    ):
        if items:
            print(f"{verb} {len(items)} {label}: {', '.join(Path(i).name for i in items)}")
    if found.crashed_flow_runs:
        verb_crash = "would mark" if args.dry_run else "marked"
        print(f"{verb_crash} {len(found.crashed_flow_runs)} Prefect flow runs crashed")
    if found.in_progress:
        print(f"left alone, in progress: {', '.join(found.in_progress)}")
    if found.elsewhere:
        print(f"left alone, begun on another machine: {', '.join(found.elsewhere)}")
    return 0


def register_commands(subparsers: Any) -> None:
    """Add ``gc`` to ``nbprod``'s parser."""
    gc = add_store_option(
        subparsers.add_parser(
            "gc",
            help="remove scratch folders, partial versions, and the bentos and models of "
            "failed, rejected or unlisted runs (never a champion's or an accepted version's)",
        )
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    gc.add_argument("--json", action="store_true", help="machine-readable output")
    gc.set_defaults(func=cmd_gc)
