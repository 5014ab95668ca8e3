"""One job per recovery directory: an exclusive lock on ``<dir>/firstmile-<process>.lock``.

Two jobs resuming from the same snapshots would each send the same outputs and their
decisions would diverge. ``flock`` is released by the kernel when the process dies, so a
SIGKILLed job never leaves a stale lock behind; the file names the holder's pid.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from firstmile.operators.errors import ConfigError


@contextmanager
def recovery_lock(directory: Path, process_id: int = 0) -> Iterator[None]:
    path = directory / f"firstmile-{process_id}.lock"
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(
                "recovery.dir",
                f"another firstmile job (pid {holder}) is running on {directory}; "
                "one job per recovery directory",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock
