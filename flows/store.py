"""The run store: one immutable folder per run version, and one champion pointer per pipeline.

A version is listed only once its ``run.json`` exists, and that file is written last, in one
atomic step. So a crashed or running pipeline is never listed, and a listed run is never
half-written. Any fsspec URL works; a plain path is a local folder.

Layout::

    versions/<version>/...                       shared by every pipeline (ids are unique)
    pipelines/<name>/champion.json               the pipeline's champion pointer
    pipelines/<name>/champion_history/NNNNNN-<id>.json   its changes, numbered from 000001
    pipelines/<name>/.lock                       local stores: held while the champion moves
    followups/<version>/                         append-only notes about finalised runs

Stores written before pipelines had their own champion (``champion.json`` and
``champion_history/`` at the root) are moved to this layout the first time a champion is read
or written (:meth:`RunStore.migrate_legacy_champion`); their run records, immutable, are read
as they are (:func:`pipeline_of`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.atomic import exclusive_lock, write_atomic
from flows.errors import RunStoreError
from flows.faults import checkpoint
from flows.run_records import (
    LEGACY_PIPELINE,
    PIPELINE_NAME_PATTERN,
    check_pipeline_name,
    check_version,
    new_version_id,
    pipeline_of,
    utc_now,
)

RUN_RECORD = "run.json"
CHAMPION = "champion.json"
HISTORY_DIR = "champion_history"
PIPELINES_DIR = "pipelines"
LOCK_FILE = ".lock"
# Runs started because of an earlier run (a retraining caused by a monitoring run's drift):
# kept outside the immutable version folders, append-only, one file per follow-up.
FOLLOWUPS_DIR = "followups"


@dataclass(frozen=True)
class ChampionMove:
    """A move of ``pipeline``'s champion to ``record`` (version, model and bento tags, ...)."""

    pipeline: str
    record: dict[str, Any]
    expected: str | None
    reason: str
    triggered_by: str
    note: str | None = None


def plain_local_root(url: str) -> str | None:
    """The folder a plain POSIX path names, as fsspec's local filesystem spells it, else None.

    Why not ask fsspec: importing it takes 0.1-0.17 s, which ``nbprod runs`` or ``champion``
    on a plain path need not pay until files are listed or copied. Same result as
    ``fsspec.core.url_to_fs(url)[1]`` (tests/test_store.py compares).
    """
    if os.sep != "/" or "://" in url or "::" in url or url.startswith(("file:", "local:")):
        return None
    if url.startswith("~"):
        path = os.path.expanduser(url)
    elif url.startswith("/"):
        path = url
    else:
        relative = url[2:] if url.startswith("./") else ("" if url == "." else url)
        path = f"{os.getcwd()}/{relative}"
    return path.rstrip("/") or "/"


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class RunStore:
    """Versioned run outputs on any fsspec filesystem, and each pipeline's champion."""

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        self._fs: Any = None
        self._legacy_checked = False
        local_root = plain_local_root(self.url)
        if local_root is not None:
            self.root, self.is_local = local_root, True
            return
        import fsspec

        self._fs, self.root = fsspec.core.url_to_fs(self.url)
        self.is_local = "file" in (
            self._fs.protocol if isinstance(self._fs.protocol, tuple) else (self._fs.protocol,)
        )

    @property
    def fs(self) -> Any:
        """The fsspec filesystem; for a plain local path, created on first use."""
        if self._fs is None:
            import fsspec

            self._fs = fsspec.core.url_to_fs(self.url)[0]
        return self._fs

    def _exists(self, path: str) -> bool:
        return os.path.exists(path) if self.is_local else self.fs.exists(path)

    def _ls(self, path: str) -> list[str]:
        """A folder's entries as full paths, sorted; none when it does not exist."""
        if not self._exists(path):
            return []
        if self.is_local:
            return sorted(f"{path}/{name}" for name in os.listdir(path))
        return sorted(p.rstrip("/") for p in self.fs.ls(path, detail=False))

    def _read_bytes(self, path: str) -> bytes:
        with open(path, "rb") if self.is_local else self.fs.open(path, "rb") as fh:
            return fh.read()

    def _remove(self, path: str) -> None:
        """Delete a file or a folder with what it holds; nothing to delete is fine."""
        try:
            if not self.is_local:
                self.fs.rm(path, recursive=True)
            elif os.path.isdir(path):
                import shutil

                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            pass

    # -- paths -------------------------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *[p.strip("/") for p in parts]])

    def version_path(self, version: str, *parts: str) -> str:
        """Where a version's file is; a version that is not a plain id is refused."""
        return self._join("versions", check_version(version), *parts)

    def pipeline_path(self, pipeline: str, *parts: str) -> str:
        """Where a pipeline's champion state is; a name that is not a pipeline name is refused."""
        return self._join(PIPELINES_DIR, check_pipeline_name(pipeline), *parts)

    def uri(self, version: str, *parts: str) -> str:
        """An address a person can open: file:// for local stores, the fsspec URL otherwise."""
        path = self.version_path(version, *parts)
        if self.is_local:
            return Path(path).resolve().as_uri()
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
        return f"{protocol}://{path.lstrip('/')}" if "://" not in path else path

    # -- writing -----------------------------------------------------------------------------
    def _atomic_write(self, path: str, data: bytes) -> None:
        """Temp file, fsync, rename: readers see the old file or the new one, never a part."""
        parent = path.rsplit("/", 1)[0]
        checkpoint(f"write:{_name(path)}")
        if self.is_local:
            write_atomic(path, data)
        else:
            self.fs.makedirs(parent, exist_ok=True)
            # One object PUT is atomic on object stores and in-memory filesystems.
            self.fs.pipe_file(path, data)

    def begin(self, version: str) -> None:
        """Reserve a version folder; refuses to reuse one (versions are immutable)."""
        path = self.version_path(version)
        if self.fs.exists(path):
            raise RunStoreError(
                f"run version {version} already exists in {self.url}: "
                "versions are immutable, start a new run"
            )
        self.fs.makedirs(path, exist_ok=False)

    def _writable(self, version: str) -> None:
        if self.fs.exists(self.version_path(version, RUN_RECORD)):
            raise RunStoreError(
                f"run version {version} is finalised and immutable: write to a new version instead"
            )

    def put_file(self, version: str, rel: str, local: Path) -> str:
        self._writable(version)
        checkpoint(f"write:{_name(rel)}")
        dest = self.version_path(version, rel)
        self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), dest)
        return dest

    def put_tree(self, version: str, rel: str, local_dir: Path) -> list[str]:
        written = []
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                written.append(self.put_file(version, f"{rel}/{path.relative_to(local_dir)}", path))
        return written

    def put_json(self, version: str, rel: str, obj: Any) -> str:
        self._writable(version)
        dest = self.version_path(version, rel)
        self._atomic_write(dest, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
        return dest

    def finalize(
        self, version: str, record: dict[str, Any], *, crown: ChampionMove | None = None
    ) -> dict[str, Any]:
        """Write run.json last: from this moment the version is listed, and frozen.

        With ``crown``, the version also becomes its pipeline's champion, in this order under
        the pipeline's lock: the history change, run.json (``champion_after``: the new
        pointer), the pointer. So the pointer never names an unlisted version; if the pointer
        cannot be written, run.json is removed again and the error raised (the caller records
        the run as failed).
        """
        if record.get("status") not in ("accepted", "rejected", "completed", "failed"):
            raise RunStoreError(
                f"run {version}: status must be accepted, rejected, completed or failed"
            )
        self._writable(version)
        path = self.version_path(version, RUN_RECORD)
        if crown is None:
            return self._write_record(path, {**record, "version": version})
        written: list[dict[str, Any]] = []

        def listing(pointer: dict[str, Any]) -> None:
            written.append(
                self._write_record(path, {**record, "version": version, "champion_after": pointer})
            )

        try:
            self._move_champion(crown, listing)
        except BaseException:
            if written:
                self._remove(path)  # unlisted again: the run did not become champion
            raise
        return written[0]

    def _write_record(self, path: str, record: dict[str, Any]) -> dict[str, Any]:
        full = {**record, "finished_at": utc_now()}
        self._atomic_write(path, json.dumps(full, indent=2, sort_keys=True, default=str).encode())
        return full

    # -- reading -----------------------------------------------------------------------------
    def read_json(self, path: str) -> Any:
        return json.loads(self._read_bytes(path))

    def list_runs(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Finalised runs of ``pipeline`` (None: of every pipeline), oldest first.

        Folders without run.json are in progress or crashed, and are not listed.
        """
        if pipeline is not None:
            check_pipeline_name(pipeline)
        runs = []
        for entry in self._ls(self._join("versions")):
            record = f"{entry}/{RUN_RECORD}"
            if self._exists(record):
                run = self.read_json(record)
                if pipeline is None or pipeline_of(run) == pipeline:
                    runs.append(run)
        return sorted(runs, key=lambda r: r["version"])

    def version_folders(self) -> list[str]:
        """Every version folder, listed or not (in progress, crashed), sorted."""
        return [_name(p) for p in self._ls(self._join("versions"))]

    def pipelines(self) -> list[str]:
        """Every pipeline with a listed run or a champion, sorted by name."""
        self.migrate_legacy_champion()
        names = {pipeline_of(run) for run in self.list_runs()}
        for entry in self._ls(self._join(PIPELINES_DIR)):
            name = _name(entry)
            if re.match(PIPELINE_NAME_PATTERN, name) and (
                self._exists(f"{entry}/{CHAMPION}") or self._exists(f"{entry}/{HISTORY_DIR}")
            ):
                names.add(name)
        return sorted(names)

    def get_run(self, version: str) -> dict[str, Any]:
        record = self.version_path(version, RUN_RECORD)
        if not self._exists(record):
            known = [r["version"] for r in self.list_runs()][-5:]
            hint = f"recent versions: {', '.join(known)}" if known else "no runs stored yet"
            raise RunStoreError(f"run version {version!r} not found in {self.url} ({hint})")
        return self.read_json(record)

    def files(self, version: str) -> list[str]:
        base = self.version_path(version)
        return sorted(p[len(base) + 1 :] for p in self.fs.find(base))

    def fetch(self, version: str, rel: str, local: Path) -> Path:
        """Copy a stored file to a local path (papermill, joblib and Evidently need local files)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self.version_path(version, rel), str(local))
        return local

    # -- champion ----------------------------------------------------------------------------
    def champion(self, pipeline: str) -> dict[str, Any] | None:
        """The pipeline's champion pointer (its version, model and bento tags), or None.

        A move killed after its run record was written, before the pointer, is completed
        first: the record says the run became champion, so it does.
        """
        self.migrate_legacy_champion()
        pointer = self._pointer(pipeline)
        if self._interrupted_move(pipeline, pointer) is not None:
            with self._champion_lock(pipeline):
                pointer = self._complete_interrupted_move(pipeline)
        return pointer

    def _pointer(self, pipeline: str) -> dict[str, Any] | None:
        path = self.pipeline_path(pipeline, CHAMPION)
        return self.read_json(path) if self._exists(path) else None

    def _interrupted_move(
        self, pipeline: str, pointer: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The pointer that a run-record move cut short before the pointer write meant to set."""
        files = self._history_files(pipeline)
        if not files:
            return None
        event = self.read_json(files[-1])
        to_version = event.get("to_version")
        if not event.get("with_run_record") or (pointer or {}).get("version") == to_version:
            return None
        record = self.version_path(to_version, RUN_RECORD)
        if not self._exists(record):
            return None
        after = self.read_json(record).get("champion_after") or {}
        return after if after.get("version") == to_version else None

    def _complete_interrupted_move(self, pipeline: str) -> dict[str, Any] | None:
        """Under the lock: write the pointer an interrupted move left unwritten, if any."""
        pointer = self._pointer(pipeline)
        pending = self._interrupted_move(pipeline, pointer)
        if pending is None:
            return pointer
        path = self.pipeline_path(pipeline, CHAMPION)
        self._atomic_write(path, json.dumps(pending, indent=2).encode())
        return pending

    def champion_history(self, pipeline: str) -> list[dict[str, Any]]:
        """The pipeline's champion changes, oldest first; the history ends at the champion.

        Skipped: temp files of failed writes, and a last change the pointer never reached (a
        move cut short before its run record or pointer; the next move replaces it).
        """
        return [event for _, event in self._settled_history(pipeline, self.champion(pipeline))]

    def _history_files(self, pipeline: str) -> list[str]:
        entries = self._ls(self.pipeline_path(pipeline, HISTORY_DIR))
        return [p for p in entries if re.match(r"^\d{6}-.*\.json$", _name(p))]

    def _settled_history(
        self, pipeline: str, pointer: dict[str, Any] | None
    ) -> list[tuple[str, dict[str, Any]]]:
        """(file, change) pairs up to the one that made ``pointer`` the champion."""
        events = [(path, self.read_json(path)) for path in self._history_files(pipeline)]
        if events and events[-1][1].get("to_version") != (pointer["version"] if pointer else None):
            events.pop()
        return events

    @contextmanager
    def _champion_lock(self, pipeline: str) -> Iterator[None]:
        """Hold ``pipelines/<name>/.lock`` on a local store; object stores are not locked."""
        if not self.is_local:
            yield
            return
        with exclusive_lock(self.pipeline_path(pipeline, LOCK_FILE)):
            yield

    def set_champion(
        self,
        pipeline: str,
        record: dict[str, Any],
        *,
        expected: str | None,
        reason: str,
        triggered_by: str,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Move the pipeline's pointer to a listed version (a rollback, a test's champion)."""
        move = ChampionMove(pipeline, record, expected, reason, triggered_by, note)
        return self._move_champion(move, listing=None)

    def _move_champion(
        self, move: ChampionMove, listing: Callable[[dict[str, Any]], None] | None
    ) -> dict[str, Any]:
        """Record the change, call ``listing`` with the new pointer, then move the pointer.

        ``expected`` is the champion version the caller saw when it started: if another run
        moved the pointer meanwhile, refuse rather than silently overwrite its decision. On a
        local store the check and every write hold the pipeline's lock file, so racing
        processes move the champion once per expectation and number the history without gaps
        or repeats. Object stores are not locked: one writer per pipeline at a time. A crash
        before the pointer write leaves the champion as it was (an unsettled change is skipped
        by readers and replaced by the next move).
        """
        pipeline, record = move.pipeline, move.record
        self.migrate_legacy_champion()
        with self._champion_lock(pipeline):
            current = self._complete_interrupted_move(pipeline)
            current_version = current["version"] if current else None
            if current_version != move.expected:
                raise RunStoreError(
                    f"champion of pipeline {pipeline} moved from {move.expected} to "
                    f"{current_version} while this run was going: re-run the pipeline against "
                    "the new champion"
                )
            event = {
                "at": utc_now(),
                "pipeline": pipeline,
                "from_version": current_version,
                "to_version": record["version"],
                "reason": move.reason,
                "note": move.note,
                "triggered_by": move.triggered_by,
                "model_tag": record.get("model_tag"),
                "bento_tag": record.get("bento_tag"),
                "with_run_record": listing is not None,
            }
            # A sequence number, not a timestamp, orders the history: two changes can share
            # a second. After the last settled change: a move cut short leaves no gap.
            settled = self._settled_history(pipeline, current)
            for path in self._history_files(pipeline)[len(settled) :]:
                self._remove(path)
            sequence = int(_name(settled[-1][0])[:6]) + 1 if settled else 1
            change = self.pipeline_path(
                pipeline, HISTORY_DIR, f"{sequence:06d}-{new_version_id()}.json"
            )
            pointer = {
                **record,
                "pipeline": pipeline,
                "since": event["at"],
                "reason": move.reason,
            }
            try:
                self._atomic_write(change, json.dumps(event, indent=2).encode())
                if listing is not None:
                    listing(pointer)
                checkpoint("champion-move")
                self._atomic_write(
                    self.pipeline_path(pipeline, CHAMPION), json.dumps(pointer, indent=2).encode()
                )
            except OSError as exc:
                self._remove(change)
                raise RunStoreError(
                    f"moving the champion of pipeline {pipeline} to {record['version']} in "
                    f"{self.url} failed ({exc}): it is unchanged; fix the store and re-run"
                ) from exc
        return pointer

    # -- the previous layout -------------------------------------------------------------------
    def migrate_legacy_champion(self) -> str | None:
        """Move a root ``champion.json`` and ``champion_history/`` under ``pipelines/<name>/``.

        ``<name>`` is the pipeline of the champion's run (``training`` for records older than
        pipeline names). History files are copied first, the pointer last, then the old files
        are removed: a move cut short is finished by the next call, and a finished one makes
        this a no-op. Says so in one line on stderr; returns the pipeline moved to, or None.
        """
        if self._legacy_checked:
            return None
        old_pointer, old_history = self._join(CHAMPION), self._join(HISTORY_DIR)
        if not (self._exists(old_pointer) or self._exists(old_history)):
            self._legacy_checked = True
            return None
        try:
            moved = self._move_legacy_champion(old_pointer, old_history)
        except OSError as exc:
            raise RunStoreError(
                f"run store {self.url} has a champion in the previous layout and moving it under "
                f"{PIPELINES_DIR}/ failed ({exc}): make the store writable and retry"
            ) from exc
        self._legacy_checked = True
        return moved

    def _legacy_target(self, old_pointer: str) -> str:
        if not self._exists(old_pointer):
            return LEGACY_PIPELINE
        try:
            version = self.read_json(old_pointer)["version"]
            return check_pipeline_name(pipeline_of(self.get_run(version)))
        except (RunStoreError, KeyError, TypeError, ValueError):
            return LEGACY_PIPELINE

    def _move_legacy_champion(self, old_pointer: str, old_history: str) -> str | None:
        target = self._legacy_target(old_pointer)
        with self._champion_lock(target):
            # Another process may have finished the move while this one waited for the lock.
            if not (self._exists(old_pointer) or self._exists(old_history)):
                return None
            events = [p for p in self._ls(old_history) if re.match(r"^\d{6}-.*\.json$", _name(p))]
            for path in events:
                dest = self.pipeline_path(target, HISTORY_DIR, _name(path))
                if not self._exists(dest):
                    self._atomic_write(dest, self._read_bytes(path))
            dest = self.pipeline_path(target, CHAMPION)
            if self._exists(old_pointer) and not self._exists(dest):
                pointer = {**self.read_json(old_pointer), "pipeline": target}
                self._atomic_write(dest, json.dumps(pointer, indent=2).encode())
            self._remove(old_history)
            self._remove(old_pointer)
        print(
            f"nbprod: run store {self.url}: moved the champion and its history ({len(events)} "
            f"changes) to {PIPELINES_DIR}/{target}/ (one champion per pipeline)",
            file=sys.stderr,
        )
        return target

    # -- follow-ups ---------------------------------------------------------------------------
    def add_followup(self, version: str, followup: dict[str, Any]) -> str:
        """Link a later run to the finalised run ``version`` that caused it, without touching it.

        Why not in the version folder: a finalised run is frozen, yet its consequences (the
        retraining a monitoring run triggered, and that run's outcome) come later.
        """
        self.get_run(version)  # only a listed run can have follow-ups
        child = str(followup.get("version") or "")
        if not child:
            raise RunStoreError(f"follow-up of run {version} needs the follow-up run's version")
        path = self._join(FOLLOWUPS_DIR, version, f"{check_version(child)}.json")
        if self.fs.exists(path):
            raise RunStoreError(f"run {child} is already recorded as a follow-up of {version}")
        self._atomic_write(path, json.dumps(followup, indent=2, default=str).encode())
        return path

    def followups(self, version: str) -> list[dict[str, Any]]:
        """Runs recorded as caused by ``version``, oldest first."""
        folder = self._join(FOLLOWUPS_DIR, check_version(version))
        return [self.read_json(p) for p in self._ls(folder) if p.endswith(".json")]
