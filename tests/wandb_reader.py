"""A small reader for W&B offline run files (``run-<id>.wandb``), for the tests.

wandb ships no public reader for them. The file is a 7-byte header (``:W&B``, a 2-byte
magic and a version byte) followed by records in the LevelDB log format: 32 KiB blocks, each
record a 7-byte header (crc32, 2-byte little-endian length, type: 1 full, 2 first, 3 middle,
4 last) and its payload; a payload (or the joined first..last pieces) is one serialized
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list:
    """Every ``Record`` protobuf message in the file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        else:
            raise ValueError(f"{path}: bad record type {kind}")
        rec = pb.Record()
        rec.ParseFromString(pending)
        out.append(rec)
        pending = b""
    return out


@dataclass
class OfflineRun:
    """What a run logged: history rows, config, summary, exit code, run info."""

    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None
    run: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)


def _key(item) -> str:
    return item.key if item.key else ".".join(item.nested_key)


def read_run(path: str | Path) -> OfflineRun:
    """Parse ``run-<id>.wandb`` (or an ``offline-run-*`` directory) into an :class:`OfflineRun`."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("run-*.wandb"))
        if not found:
            raise FileNotFoundError(f"no run-*.wandb in {path}")
        path = found[0]
    run = OfflineRun()
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "config":
            for i in rec.config.update:
                run.config[_key(i)] = json.loads(i.value_json)
        elif kind == "summary":
            for i in rec.summary.update:
                run.summary[_key(i)] = json.loads(i.value_json)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
        elif kind == "run":
            r = rec.run
            run.run = {"id": r.run_id, "project": r.project, "entity": r.entity,
                       "group": r.run_group, "job_type": r.job_type,
                       "name": r.display_name, "tags": list(r.tags)}
            for i in r.config.update:
                run.config[_key(i)] = json.loads(i.value_json)
        elif kind == "files":
            run.files += [f.path for f in rec.files.files]
        elif kind == "artifact":
            run.artifacts.append(rec.artifact.name)
    return run


def read_finished_run(path: str | Path, timeout: float = 60.0) -> OfflineRun:
    """:func:`read_run` once the run's exit record is on disk: in-process, ``run.finish()``
    can return before wandb's service process has flushed the last records."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            run = read_run(path)
            if run.exit_code is not None:
                return run
        except (FileNotFoundError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout} s")
        time.sleep(0.1)
