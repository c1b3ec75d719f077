"""A job directory as one object, and a sweep of them: what commands and analysis ask of a job.

- :class:`JobDir`: a job's ``result.json`` (:meth:`~JobDir.result`), its config
  (:meth:`~JobDir.config` typed on the schema, :meth:`~JobDir.saved_config` as written,
  both with renamed options under their current names), its
  checkpoints and the final one checked against ``epochs_completed``
  (:meth:`~JobDir.final_checkpoint`), its model (:meth:`~JobDir.load_model`) and its keyed
  caches (:meth:`~JobDir.cache`).
- :class:`Cache`: one cached stage result, ``<name>.npz`` (arrays) then ``<name>.json`` (the
  record, written last: its presence marks a complete result), each written atomically.
- :class:`Sweep`: the job directories below a directory (:meth:`~Sweep.job_dirs`), those of
  some statuses (:meth:`~Sweep.jobs`); :func:`screen` says of each job why it is left out;
  :func:`find_jobs` resolves command-line paths (job or sweep directories) to jobs.

Importing this module does not load torch (the analysis reads job directories without it):
checkpoints, data and models are imported where they are used.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Optional

import numpy as np

from landscope.errors import CheckpointError, LandscopeError
from landscope.io import atomic_write_bytes, read_json, write_json

log = logging.getLogger("landscope")

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
# Files or folders that mark a directory as a job directory, whatever became of the job
# (the analysis counts a job killed before its result.json as a row).
JOB_MARKERS = (RESULT_FILE, CONFIG_FILE, "overrides.yaml", "metrics.jsonl", CHECKPOINT_DIR,
               "traceback.txt")


class FinalCheckpointError(CheckpointError):
    """A job's final checkpoint cannot be used. The message names the job and what was found;
    :attr:`problem` says the same in words that follow "its final checkpoint: "
    (``it is missing (...)``, ``it is corrupt (...)``)."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


# ------------------------------------------------------------------------------ caches
class Cache:
    """One cached stage result: ``DIR/<name>.npz`` (the arrays) and ``DIR/<name>.json`` (the
    record, with the names of its arrays), the npz written first and the JSON last, each
    atomically, so that a complete JSON file marks a complete result."""

    def __init__(self, directory: str | Path, name: str):
        self.json_path = Path(directory) / f"{name}.json"
        self.npz_path = Path(directory) / f"{name}.npz"

    def read(self, key: Optional[dict] = None, npz: str = "verified") -> Optional[dict]:
        """The record when it is a readable JSON object whose items match ``key``; None (a
        miss) otherwise. ``npz`` says what more is asked of the arrays: ``verified`` (the
        record has ``scalars`` and the list of its ``arrays``, and the npz loads and holds
        them), ``present`` (the npz file exists) or ``none`` (a JSON-only cache)."""
        try:
            record = read_json(self.json_path)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or any(record.get(k) != v for k, v in (key or {}).items()):
            return None
        if npz == "present":
            return record if self.npz_path.is_file() else None
        if npz == "none":
            return record
        names = record.get("arrays")
        if not isinstance(record.get("scalars"), dict) or not isinstance(names, list):
            return None
        try:
            with np.load(self.npz_path, allow_pickle=False) as z:
                if not set(names) <= set(z.files):
                    return None
        except Exception:  # noqa: BLE001 - any unreadable npz is a miss
            return None
        return record

    def arrays(self, names: Optional[Iterable[str]] = None) -> Optional[dict]:
        """The npz's arrays (of ``names``, those present; all when None), or None when the
        file is absent or unreadable."""
        try:
            with np.load(self.npz_path, allow_pickle=False) as z:
                return {n: z[n] for n in (z.files if names is None else names) if n in z.files}
        except Exception:  # noqa: BLE001
            return None

    def write(self, record: dict, arrays: Optional[dict] = None) -> dict:
        """Write ``arrays`` (when given) to the npz, then ``record`` (plus ``arrays``: their
        sorted names) to the JSON; returns the record as written."""
        if arrays is not None:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(self.npz_path, buf.getvalue())
            record = {**record, "arrays": sorted(arrays)}
        write_json(self.json_path, record)  # last: its presence marks a complete result
        return record


# ------------------------------------------------------------------------------ one job
class JobDir:
    """One job directory (the results contract of :mod:`landscope.jobs`). Reads only, except
    through its caches; every read is fresh (another process may be updating the job)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"JobDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def has_result(self) -> bool:
        """Whether the directory holds a ``result.json`` file."""
        return (self.path / RESULT_FILE).is_file()

    def holds(self, markers: Iterable[str]) -> bool:
        """Whether any of ``markers`` (names, or glob patterns such as ``escape/*.json``)
        exists in the directory."""
        return any(next(iter(self.path.glob(m)), None) is not None if "*" in m
                   else (self.path / m).exists() for m in markers)

    def result(self) -> Any:
        """``result.json`` as parsed (OSError when unreadable, ValueError when not JSON)."""
        return read_json(self.path / RESULT_FILE)

    def config(self, typed: bool = True):
        """The job's config on the typed schema (:class:`landscope.config.Config` merged
        with its ``config.yaml``, so fields added since keep their defaults); ``typed=False``:
        the file as OmegaConf loads it, untouched by the schema. Either way an option renamed
        since the job was written is read under its current name
        (:func:`landscope.config.renames.to_current`)."""
        from omegaconf import DictConfig, OmegaConf

        from landscope.config import Config
        from landscope.config.renames import to_current

        saved = OmegaConf.load(self.path / CONFIG_FILE)
        if isinstance(saved, DictConfig):
            saved = OmegaConf.create(to_current(OmegaConf.to_container(saved, resolve=False)))
        return OmegaConf.merge(OmegaConf.structured(Config), saved) if typed else saved

    def saved_config(self) -> Any:
        """``config.yaml`` as plain data, as written (YAML's safe loader; None for an empty
        file) except that an option renamed since is under its current name; raises OSError
        or a YAML error when unreadable."""
        import yaml

        from landscope.config.renames import to_current

        saved = yaml.safe_load((self.path / CONFIG_FILE).read_text(encoding="utf-8"))
        return to_current(saved) if isinstance(saved, dict) else saved

    def checkpoints(self) -> list[Path]:
        """The checkpoint files, newest epoch first."""
        from landscope.checkpoint import list_checkpoints

        return list_checkpoints(self.path / CHECKPOINT_DIR)

    def newest_checkpoint(self) -> Path:
        """The newest checkpoint file (not read); :class:`FinalCheckpointError` when none."""
        found = self.checkpoints()
        if not found:
            raise FinalCheckpointError(
                f"{self.name} has no checkpoint",
                f"it is missing ({self.path / CHECKPOINT_DIR} holds no checkpoint)")
        return found[0]

    def final_checkpoint(self, result: Optional[dict] = None,
                         fallback: bool = False) -> tuple[Path, dict]:
        """``(path, state)`` of the job's final checkpoint: the newest file, which must load
        and be of epoch ``epochs_completed`` (of ``result``, read when None); otherwise
        :class:`FinalCheckpointError`. Reads only.

        ``fallback``: the newest checkpoint that verifies instead, a defective newer file
        moved aside with a warning (:func:`landscope.checkpoint.load_latest`); it must also be
        of the job's config fingerprint; otherwise one CheckpointError line that says how to
        rebuild it."""
        from landscope.checkpoint import load_checkpoint

        result = self.result() if result is None else result
        epochs = result.get("epochs_completed")
        if fallback:
            return self._fallback_checkpoint(epochs, result)
        path = self.newest_checkpoint()
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            raise FinalCheckpointError(str(exc),
                                       f"it is corrupt ({' '.join(str(exc).split())})") from None
        if ckpt.get("epoch") != epochs:
            raise FinalCheckpointError(
                f"{self.name}: newest checkpoint is epoch {ckpt.get('epoch')}, the job "
                f"completed {epochs}",
                f"it is missing (the newest checkpoint, {path.name}, is of epoch "
                f"{ckpt.get('epoch')}; the job completed {epochs})")
        return path, ckpt

    def _fallback_checkpoint(self, epochs: Any, result: dict) -> tuple[Path, dict]:
        from landscope.checkpoint import checkpoint_path, load_latest
        from landscope.fingerprints import checkpoint_of

        ckpt = load_latest(self.path / CHECKPOINT_DIR,
                           warn=lambda m: log.warning("warning: %s", m))
        if ckpt is None or ckpt.get("epoch") != epochs or not checkpoint_of(ckpt, result):
            why = ("no valid checkpoint remains" if ckpt is None else
                   f"the newest valid one is epoch {ckpt.get('epoch')}"
                   if ckpt.get("epoch") != epochs
                   else "the newest valid one was written by another config")
            raise CheckpointError(f"{self.path}: its final checkpoint (epoch {epochs}) is "
                                  f"missing or corrupt ({why}); rerun the training with "
                                  "resume=false (the same command otherwise) to rebuild it")
        return checkpoint_path(self.path / CHECKPOINT_DIR, ckpt["epoch"]), ckpt

    def load_model(self, state: Optional[dict] = None, cfg=None):
        """``(model, data)``: the job's dataset and its model with the weights ``state`` (by
        default the final checkpoint's), both built from ``cfg`` (by default
        :meth:`config`; a caller that replaced a config group passes its own)."""
        from landscope.data import load_data
        from landscope.models import build_model

        cfg = self.config() if cfg is None else cfg
        if state is None:
            state = self.final_checkpoint()[1]["model"]
        data = load_data(cfg.dataset)
        model = build_model(cfg.model, data.meta, cfg.loss)
        model.load_state_dict(state)
        return model, data

    def cache(self, kind: str, name: str) -> Cache:
        """The cache ``<job>/<kind>/<name>.json`` (+ ``.npz``), e.g. ``cache("probes", pfp)``."""
        return Cache(self.path / kind, name)


# ------------------------------------------------------------------------------ many jobs
@dataclass(frozen=True)
class Screened:
    """One job as :func:`screen` found it: ``ok`` when its status is one asked for; else
    ``error`` (why result.json is unreadable) or the ``status`` it has."""

    job: JobDir
    result: Any = None
    status: Any = None
    error: Optional[BaseException] = None
    ok: bool = False


def screen(jobs: Iterable[JobDir], status: Collection[str]) -> Iterator[Screened]:
    """Each job with its result and whether its status is in ``status``, in order."""
    for job in jobs:
        try:
            result = job.result()
            found = result.get("status")
        except (OSError, ValueError, AttributeError) as exc:  # AttributeError: not an object
            yield Screened(job, error=exc)
            continue
        yield Screened(job, result, found, ok=found in status)


class Sweep:
    """A directory whose subdirectories are job directories."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def job_dirs(self, markers: Iterable[str] = (RESULT_FILE,), hidden: bool = True,
                 required: bool = False) -> list[JobDir]:
        """The subdirectories that hold any of ``markers`` (:meth:`JobDir.holds`), sorted by
        path; ``hidden=False`` leaves out those whose name starts with a dot. ``required``:
        none is a one-line LandscopeError."""
        markers = tuple(markers)
        found = [JobDir(p) for p in sorted(self.path.iterdir())
                 if p.is_dir() and (hidden or not p.name.startswith("."))
                 and JobDir(p).holds(markers)] if self.path.is_dir() else []
        if required and not found:
            raise LandscopeError(f"{self.path} holds no job directories "
                                 f"(no {' or '.join('*/' + m for m in markers)})")
        return found

    def jobs(self, status: Optional[Collection[str]] = None) -> list[JobDir]:
        """The jobs (subdirectories with ``result.json``), only those whose status is in
        ``status`` when given (unreadable results left out)."""
        if status is None:
            return self.job_dirs()
        return [s.job for s in screen(self.job_dirs(), status) if s.ok]


def find_jobs(paths: Iterable[str | Path], not_found: str = "{path} is neither a sweep nor a "
              "job directory", unique: bool = False, markers: Iterable[str] = (RESULT_FILE,),
              hidden: bool = True, required: bool = True) -> list[JobDir]:
    """The jobs of command-line paths, each a job directory (it holds any of ``markers``) or
    a sweep directory (its jobs, :meth:`Sweep.job_dirs`; with ``required``, none is a
    LandscopeError). Anything else raises LandscopeError(``not_found`` with ``{path}``).
    ``unique``: a job named twice is listed once."""
    markers = tuple(markers)
    out: list[JobDir] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if JobDir(p).holds(markers):
            found = [JobDir(p)]
        elif p.is_dir():
            found = Sweep(p).job_dirs(markers, hidden, required)
        else:
            raise LandscopeError(not_found.format(path=p))
        for job in found:
            if unique and job.path.resolve() in seen:
                continue
            seen.add(job.path.resolve())
            out.append(job)
    return out
