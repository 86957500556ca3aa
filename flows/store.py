"""The run store: one immutable folder per run version, and the champion pointer.

A version is listed only once its ``run.json`` exists, and that file is written last, in one
atomic step. So a crashed or running pipeline is never listed, and a listed run is never
half-written. Any fsspec URL works; a plain path is a local folder.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from flows.errors import RunStoreError

# accepted/rejected: a training run's gate decision; completed: a plain notebook pipeline run.
RunStatus = Literal["accepted", "rejected", "completed", "failed"]
RUN_RECORD = "run.json"
CHAMPION = "champion.json"
HISTORY_DIR = "champion_history"
# Runs started because of an earlier run (a retraining caused by a monitoring run's drift):
# kept outside the immutable version folders, append-only, one file per follow-up.
FOLLOWUPS_DIR = "followups"
# Unchanged re-runs answered by an existing version (flows.uptodate): append-only, like follow-ups.
RERUNS_DIR = "reruns"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_version_id() -> str:
    """Sortable by time (UTC, to the millisecond), unique across concurrent runs, and a valid
    BentoML tag version. Milliseconds: two runs that fail at once within a second (a bad
    parameter, then bad data) must still list in the order they ran."""
    now = datetime.now(UTC)
    return f"v{now:%Y%m%d-%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


def plain_local_root(url: str) -> str | None:
    """The folder a plain POSIX path names, as fsspec's local filesystem spells it, else None.

    Why not ask fsspec: importing it takes 0.1-0.17 s, more than an unchanged re-run answered
    by flows.uptodate costs in all; a plain path needs none of it until files are listed or
    copied. Same result as ``fsspec.core.url_to_fs(url)[1]`` (tests/test_store.py compares).
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


class RunStore:
    """Versioned run outputs on any fsspec filesystem."""

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        self._fs: Any = None
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
        return sorted(self.fs.ls(path, detail=False))

    # -- paths -------------------------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *[p.strip("/") for p in parts]])

    def version_path(self, version: str, *parts: str) -> str:
        return self._join("versions", version, *parts)

    def uri(self, version: str, *parts: str) -> str:
        """An address a person can open: file:// for local stores, the fsspec URL otherwise."""
        path = self.version_path(version, *parts)
        if self.is_local:
            return Path(path).resolve().as_uri()
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
        return f"{protocol}://{path.lstrip('/')}" if "://" not in path else path

    # -- writing -----------------------------------------------------------------------------
    def _atomic_write(self, path: str, data: bytes) -> None:
        parent = path.rsplit("/", 1)[0]
        if self.is_local:
            os.makedirs(parent, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
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

    def finalize(self, version: str, record: dict[str, Any]) -> dict[str, Any]:
        """Write run.json last: from this moment the version is listed, and frozen."""
        if record.get("status") not in ("accepted", "rejected", "completed", "failed"):
            raise RunStoreError(
                f"run {version}: status must be accepted, rejected, completed or failed"
            )
        self._writable(version)
        full = {**record, "version": version, "finished_at": utc_now()}
        self._atomic_write(
            self.version_path(version, RUN_RECORD),
            json.dumps(full, indent=2, sort_keys=True, default=str).encode(),
        )
        return full

    # -- reading -----------------------------------------------------------------------------
    def read_json(self, path: str) -> Any:
        with open(path, "rb") if self.is_local else self.fs.open(path, "rb") as fh:
            return json.loads(fh.read())

    def list_runs(self) -> list[dict[str, Any]]:
        """Finalised runs, oldest first. Folders without run.json are in progress or crashed."""
        base = self._join("versions")
        if not self.fs.exists(base):
            return []
        runs = []
        for entry in sorted(self.fs.ls(base, detail=False)):
            record = f"{entry.rstrip('/')}/{RUN_RECORD}"
            if self.fs.exists(record):
                runs.append(self.read_json(record))
        return sorted(runs, key=lambda r: r["version"])

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
    def champion(self) -> dict[str, Any] | None:
        path = self._join(CHAMPION)
        return self.read_json(path) if self.fs.exists(path) else None

    def set_champion(
        self,
        record: dict[str, Any],
        *,
        expected: str | None,
        reason: str,
        triggered_by: str,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Move the pointer in one atomic write, after recording the change in the history.

        ``expected`` is the champion version the caller saw when it started: if another run
        moved the pointer meanwhile, refuse rather than silently overwrite its decision.
        """
        current = self.champion()
        current_version = current["version"] if current else None
        if current_version != expected:
            raise RunStoreError(
                f"champion moved from {expected} to {current_version} while this run was going: "
                "re-run the pipeline against the new champion"
            )
        event = {
            "at": utc_now(),
            "from_version": current_version,
            "to_version": record["version"],
            "reason": reason,
            "note": note,
            "triggered_by": triggered_by,
            "model_tag": record.get("model_tag"),
            "bento_tag": record.get("bento_tag"),
        }
        # A sequence number, not a timestamp, orders the history: two changes can share a second.
        sequence = len(self.champion_history()) + 1
        history_path = self._join(HISTORY_DIR, f"{sequence:06d}-{new_version_id()}.json")
        self._atomic_write(history_path, json.dumps(event, indent=2).encode())
        pointer = {**record, "since": event["at"], "reason": reason}
        self._atomic_write(self._join(CHAMPION), json.dumps(pointer, indent=2).encode())
        return pointer

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
        path = self._join(FOLLOWUPS_DIR, version, f"{child}.json")
        if self.fs.exists(path):
            raise RunStoreError(f"run {child} is already recorded as a follow-up of {version}")
        self._atomic_write(path, json.dumps(followup, indent=2, default=str).encode())
        return path

    def followups(self, version: str) -> list[dict[str, Any]]:
        """Runs recorded as caused by ``version``, oldest first."""
        return [self.read_json(p) for p in self._ls(self._join(FOLLOWUPS_DIR, version))]

    # -- re-runs -----------------------------------------------------------------------------
    def add_rerun(self, version: str, rerun: dict[str, Any]) -> str:
        """Record that ``version`` answered a re-run whose inputs had not changed since it ran.

        Why not a new version: nothing was executed, so the outputs are this version's own; the
        re-run itself (when, by whom, its Prefect flow run) is what there is to keep.
        """
        self.get_run(version)  # only a listed run can answer a re-run
        # A sequence number orders them, as in the champion history: two can share a millisecond.
        sequence = len(self._ls(self._join(RERUNS_DIR, version))) + 1
        path = self._join(RERUNS_DIR, version, f"{sequence:06d}-{new_version_id()}.json")
        self._atomic_write(path, json.dumps(rerun, indent=2, default=str).encode())
        return path

    def reruns(self, version: str) -> list[dict[str, Any]]:
        """Re-runs ``version`` answered, oldest first."""
        return [self.read_json(p) for p in self._ls(self._join(RERUNS_DIR, version))]

    def champion_history(self) -> list[dict[str, Any]]:
        return [self.read_json(p) for p in self._ls(self._join(HISTORY_DIR))]
