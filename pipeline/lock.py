"""One edgeport process at a time per run folder. The lock is an flock on `<run>/.lock`, which
holds the owner's pid for the message a second run prints; the kernel releases it when the owner
ends however it ends, so a lock left by a killed run (its pid dead) is simply taken over."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from edgeport.errors import RunFolderBusyError

LOCK = ".lock"
_held: set[Path] = set()  # run folders this process holds: a nested lock of the same folder is a no-op


@contextmanager
def run_lock(run_dir: Path):
    """Hold the run folder for the duration; a second process is refused at once with the owner's pid."""
    key = run_dir.resolve()
    if key in _held:
        yield
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderBusyError(
                f"{run_dir} is in use by another edgeport process (pid {owner}); wait for it to finish or stop it, "
                "or give this run another name (--name)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
