"""The one way nbprod replaces a local file: temp file in the same folder, fsync, rename.

Readers see the old content or the new, never a part; a failure (a full disk, a kill between
the steps aside) leaves no temp file. The temp file's name holds ``.tmp-`` so ``nbprod gc``
finds one a killed process left. ``exclusive_lock`` is the one way processes take turns.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_MARKER = ".tmp-"


def write_atomic(file: str | Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Replace ``file`` with ``data`` (text as UTF-8) in one rename.

    ``mode``: the new file's permissions; default: the replaced file's, else 0o644.
    """
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if mode is None:
        mode = file.stat().st_mode & 0o777 if file.exists() else 0o644
    tmp = file.with_name(f"{file.name}{TEMP_MARKER}{uuid.uuid4().hex}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # os.open's mode is filtered by the umask
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(file.parent)


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def exclusive_lock(lock_file: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing) for the block.

    The kernel releases it when the process dies. Another thread waits its turn as another
    process does; the thread holding it must not take it again (that waits forever).
    """
    import fcntl

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
