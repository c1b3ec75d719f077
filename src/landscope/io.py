"""Atomic file writes and JSON helpers.

Every file the runner writes goes through :func:`atomic_write_bytes`: the data
goes to a temporary file in the target directory and ``os.replace`` swaps it in.
A reader (or a job killed with SIGKILL at any
moment) therefore sees either the old file or the new one, never a torn write.
The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask,
e.g. 0644), not the 0600 of a temporary file: results are for collaborators to read.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically.

    The swap is atomic with respect to the writing process dying (SIGKILL, OOM):
    readers see the old or the new content.  ``durable=True`` also fsyncs the file
    before the swap, which guards against power loss at a cost of milliseconds per
    write on this kind of disk; the runner does not need it because checkpoints carry
    checksums and every other file is rebuilt from the newest valid checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_OWNER}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            _write(fh, data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_HOST = socket.gethostname().replace(".", "_") or "host"
_OWNER = f"{_HOST}-{os.getpid()}"  # in every temporary name: whose write it is


def _owner_is_gone(name: str) -> bool:
    """Whether the temporary file ``name`` (``.<target>.<host>-<pid>.<random>.tmp``) was left
    by a process of this host that no longer exists (killed mid-write). A file of another
    host, of a live process or of unknown owner is never judged gone."""
    owner = name[:-len(".tmp")].rsplit(".", 2)
    if len(owner) != 3:
        return False
    host, _, pid = owner[1].rpartition("-")
    if host != _HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists (another user's process) or cannot tell
        return False
    return False


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Remove the temporary files that killed writes left in ``directory`` (their process is
    gone); returns their names. Called before every atomic write, so a rerun after a SIGKILL
    leaves no ``.<name>.*.tmp`` behind."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and \
                _owner_is_gone(entry.name):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except OSError:
                pass
    return removed


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make ``path`` a hard link to ``source``, a copy where the file system cannot link, swapped
    in as :func:`atomic_write_bytes` swaps a file (the same temporaries, removed once their
    writer is gone). For files that are only ever replaced, never written in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = path.parent / f".{path.name}.{_OWNER}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write(fh: Any, data: bytes) -> None:
    """The one write of :func:`atomic_write_bytes` (a seam for tests that fill the disk)."""
    fh.write(data)


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux reports it
    in /proc/self/status; elsewhere it is set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(value: Any) -> Any:
    """Convert to strict JSON: non-finite floats become null, tuples become lists.

    >>> import json
    >>> import numpy as np
    >>> json.dumps(jsonable({"a": (1, float("nan")), 2: np.float64(0.5)}))
    '{"a": [1, null], "2": 0.5}'
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return jsonable(value.item())
    return value


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Rewrite a whole JSON-lines file atomically (one compact object per line)."""
    atomic_write_text(path, _jsonl_text(rows))


def _jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(jsonable(r), sort_keys=True) + "\n" for r in rows)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows to a JSON-lines file (as :func:`write_jsonl` writes them) in one
    ``write(2)`` on an ``O_APPEND`` descriptor: the lines already there are not rewritten (a
    job's metrics grow by one row per epoch; rewriting them all made a 1,500-epoch job spend
    12 s on it), and a reader or a killed writer sees whole lines in practice (a torn last line
    is what :func:`landscope.jobcheck.metrics_intact` detects and the checkpoint repairs)."""
    data = _jsonl_text(rows).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]
