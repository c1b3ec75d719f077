"""Atomic, checksummed checkpoints with full RNG state.

File format (``checkpoints/epoch_000012.pt``)::

    b"LSCKPT1\\n" | sha256(payload) (32 bytes) | payload (torch.save bytes)

The checksum turns a truncated or bit-flipped file into a one-line
:class:`CheckpointError` instead of a pickle/zip traceback, and the payload is
loaded with ``weights_only=True`` so a checkpoint can never execute code.
Writes are atomic (temporary file + ``os.replace``), so a job killed with
SIGKILL leaves either the previous checkpoint set or the new one.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from landscope.errors import CheckpointError
from landscope.io import atomic_write_bytes

MAGIC = b"LSCKPT1\n"
_NAME = re.compile(r"^epoch_(\d+)\.pt$")


def capture_rng() -> dict:
    """Python, NumPy and torch (CPU, and CUDA when present) generator states."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def checkpoint_path(ckpt_dir: Path, epoch: int) -> Path:
    return Path(ckpt_dir) / f"epoch_{epoch:06d}.pt"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint files, newest epoch first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(ckpt_dir: Path, epoch: int, state: dict, keep: int = 2) -> Path:
    """Write ``state`` for ``epoch`` atomically and prune to the newest ``keep`` files."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    path = checkpoint_path(ckpt_dir, epoch)
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload)
    for old in list_checkpoints(ckpt_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    """Read and verify one checkpoint; raise :class:`CheckpointError` on any defect."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror}") from None
    head = len(MAGIC) + 32
    if len(raw) < head or not raw.startswith(MAGIC):
        raise CheckpointError(f"checkpoint {path} is not a landscope checkpoint or is truncated "
                              f"({len(raw)} bytes)")
    digest, payload = raw[len(MAGIC):head], raw[head:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupted (checksum mismatch, "
                              f"{len(payload)} payload bytes)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # verified bytes that still do not unpickle: wrong content
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be decoded: {msg}") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError(f"checkpoint {path} has no training state")
    return state


def payload_digest(path: Path) -> str:
    """Hex SHA-256 of a checkpoint's payload, read from its header (only the header is read;
    :func:`load_checkpoint` is what verifies it against the payload)."""
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC) + 32)
    return head[len(MAGIC):].hex()


def newest_valid(ckpt_dir: Path) -> Optional[tuple[Path, dict]]:
    """``(path, state)`` of the newest checkpoint that verifies, or None; read-only (unlike
    :func:`load_latest`, a defective file is skipped but not moved aside)."""
    for path in list_checkpoints(ckpt_dir):
        try:
            return path, load_checkpoint(path)
        except CheckpointError:
            continue
    return None


def load_latest(ckpt_dir: Path, warn: Optional[Callable[[str], None]] = None) -> Optional[dict]:
    """Newest checkpoint that verifies, or ``None`` when none is usable.

    A defective file is reported through ``warn`` in one line, renamed to
    ``*.corrupt`` (kept for inspection, never loaded again) and skipped, falling
    back to the previous checkpoint (the message says when none remains). A file that
    vanishes between the listing and the reading (pruned by a newer save) is no defect:
    the listing is read again."""
    for _ in range(100):  # each pass ends at a usable file, or after a vanished one
        paths = list_checkpoints(ckpt_dir)
        for i, path in enumerate(paths):
            try:
                return load_checkpoint(path)
            except CheckpointError as exc:
                if not path.exists():  # pruned meanwhile: list again
                    break
                try:
                    path.replace(path.with_name(path.name + ".corrupt"))
                except FileNotFoundError:
                    break
                if warn is not None:
                    rest = paths[i + 1:]
                    warn(f"{exc}; moved aside, falling back to {rest[0].name}" if rest else
                         f"{exc}; moved aside, and no valid checkpoint remains")
        else:
            return None
    return None
