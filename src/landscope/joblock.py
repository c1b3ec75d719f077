"""One process per job directory at a time: an advisory lock on ``<job>/.lock``.

Two runners started on the same sweep (or a sweep and ``runner.probe`` on one of its
jobs) would otherwise both train, probe and write the same job. The lock is
``fcntl.flock`` (exclusive, non-blocking) on a small file in the job directory that
records the holder's pid; the kernel releases it when the process ends however it ends
(SIGKILL included), so a stale file never blocks anyone. The file itself is left in place:
removing it would let a third process lock a new inode while a second still waits on the
old one.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from landscope.errors import LandscopeError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]


class JobLocked(LandscopeError):
    """The job directory is held by another process (its pid in ``pid`` when known)."""

    def __init__(self, job_dir: Path, pid: int | None):
        self.pid = pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"{job_dir} is locked by another process ({who}); skipped")


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


@contextmanager
def job_lock(job_dir: Path) -> Iterator[None]:
    """Hold ``job_dir``'s lock for the ``with`` block; raise :class:`JobLocked` at once when
    another process holds it. Re-entrant within a process is not supported (nor needed)."""
    job_dir = Path(job_dir)
    if fcntl is None:
        yield
        return
    fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobLocked(job_dir, _holder(fd)) from None
        try:
            pid = str(os.getpid()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)
        except OSError:  # a full disk: the lock holds all the same, only the pid is unknown
            pass
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def holds_lock(job_dir: Path) -> bool:
    """Whether some process holds ``job_dir``'s lock now (for tests and status reports)."""
    path = Path(job_dir) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
