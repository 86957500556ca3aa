"""The inference log: one append-only JSON-lines file per worker process.

Every successful /predict is one line: ``{"request_id", "timestamp", "model_tag", "run_version",
"latency_ms", "request": {"records": [...]}, "response": [...]}`` (the response as sent: per
record its prediction, and for a classifier with probabilities its ``probabilities``). Files go
to ``$NBPROD_INFERENCE_LOG_DIR``, else ``$BENTOML_HOME/inference_logs`` (``~/bentoml`` being
BentoML's own default home). ``flows.serving.read_inference_log`` reads them back as one row per
record.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

LOG_DIR_ENV_VAR = "NBPROD_INFERENCE_LOG_DIR"
LOG_SUBDIR = "inference_logs"


def inference_log_dir(env: dict[str, str] | None = None) -> Path:
    """Where inference logs go: $NBPROD_INFERENCE_LOG_DIR, else $BENTOML_HOME/inference_logs."""
    env = dict(os.environ) if env is None else env
    if env.get(LOG_DIR_ENV_VAR):
        return Path(env[LOG_DIR_ENV_VAR]).expanduser()
    home = env.get("BENTOML_HOME") or str(Path("~/bentoml"))
    return Path(home).expanduser() / LOG_SUBDIR


class InferenceLog:
    """Append-only JSONL file owned by one worker process.

    One file per process: no two writers share a file, so no locking and no interleaving across
    processes. Each line goes to the kernel in a single ``write`` on an ``O_APPEND`` descriptor,
    so a record survives a worker crash as soon as ``write`` returns; fsync only at shutdown.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path: Path | None = None
        self._fd: int | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def open(self) -> Path:
        """Open this process's file (again after a fork); fail now if the folder is unusable."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid() and self.path is not None:
                return self.path
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            name = f"inference-{stamp}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
            self.path = self.directory / f"{name}.jsonl"
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._pid = os.getpid()
            return self.path

    def write(self, line: bytes) -> None:
        """Append one complete line; loops on short writes so a line is never cut."""
        if self._fd is None or self._pid != os.getpid():
            self.open()
        assert self._fd is not None
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        """Flush to disk and close; safe to call twice."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                try:
                    os.fsync(self._fd)
                finally:
                    os.close(self._fd)
            self._fd = None


_INFERENCE_LOG: InferenceLog | None = None


def inference_log() -> InferenceLog:
    """The per-process inference log shared by the request guard and the service's hooks."""
    global _INFERENCE_LOG
    if _INFERENCE_LOG is None:
        _INFERENCE_LOG = InferenceLog(inference_log_dir())
    return _INFERENCE_LOG
