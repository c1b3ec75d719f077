"""Job directories named by an earlier release, moved to their current names once.

A job directory's name is made of its overrides (Hydra's ``override_dirname``), so an option
renamed since (:data:`landscope.config.renames.RENAMED`) renames the directory too: the
sweep ``optimizer.llp.c=2`` runs in ``.../optimizer.llp.c=2`` where the release before the
rename wrote ``.../optimizer.llp_c=2``. Before a job runs, the runner (the landscope sweeper
for a multirun, :class:`runner.callbacks.CheckInputs` for a single run) asks
:func:`legacy_job_dir` whether such an old directory is there for it and, once every check
passed, :func:`adopt_legacy_dir` renames it (one atomic ``os.rename``), so the job is resumed
or skipped there rather than trained again beside it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from landscope.config.renames import legacy_dirname

log = logging.getLogger("landscope")


def separators(cfg: Any) -> tuple[str, str]:
    """``(item_sep, kv_sep)`` of the job directory names of ``cfg`` (a job config with its
    ``hydra`` node; Hydra's defaults ``","`` and ``"="`` without one)."""
    try:
        names = cfg.hydra.job.config.override_dirname
        return str(names.item_sep), str(names.kv_sep)
    except Exception:  # noqa: BLE001 - no hydra node: Hydra's defaults
        return ",", "="


def legacy_job_dir(job_dir: Path, item_sep: str = ",", kv_sep: str = "=") -> Optional[Path]:
    """The directory an earlier release gave the job now in ``job_dir`` (every current
    option name in its path spelled the old way), when there is one to move: it differs from
    ``job_dir``, is a directory, and ``job_dir`` is absent or an empty directory. Else None.
    Reads only."""
    job_dir = Path(job_dir)
    old = Path(*(legacy_dirname(part, item_sep, kv_sep) for part in job_dir.parts))
    if old == job_dir or not old.is_dir():
        return None
    if job_dir.exists() and (not job_dir.is_dir() or any(job_dir.iterdir())):
        return None
    return old


def adopt_legacy_dir(job_dir: Path, legacy: Path) -> bool:
    """Rename ``legacy`` to ``job_dir`` (an empty ``job_dir`` is replaced) and log one line.
    False, and nothing changed, when a process holds ``legacy``'s job lock (a runner of the
    earlier release still running it) or the rename fails (another process got there
    first); the job then runs in ``job_dir`` as a new one."""
    from landscope.joblock import holds_lock

    job_dir, legacy = Path(job_dir), Path(legacy)
    if holds_lock(legacy):
        log.warning("warning: %s is running in %s: not renamed to %s", legacy.name, legacy,
                    job_dir.name)
        return False
    try:
        job_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(legacy, job_dir)
    except OSError as exc:
        log.warning("warning: %s not renamed to %s (%s)", legacy, job_dir.name,
                    exc.strerror or exc)
        return False
    log.info("%s: renamed from %s (an option name changed since it was written)", job_dir,
             legacy.name)
    return True
