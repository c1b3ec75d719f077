"""Hydra callbacks of the runner."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write


class CheckInputs(Callback):
    """Check a single run's config and data before Hydra creates its output directory,
    so bad input leaves nothing behind (multiruns are checked by the landscope sweeper).
    Then a directory an earlier release gave this job under an option's old name is renamed
    to the current one (:mod:`landscope.legacy_dirs`), unless it holds another config's job.

    Hydra turns exceptions raised by callbacks into warnings and carries on, so a
    failed check prints its one line and exits here (SystemExit passes through)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from landscope.errors import LandscopeError
        from landscope.jobs import check_inputs, directory_conflict
        from landscope.legacy_dirs import adopt_legacy_dir, legacy_job_dir, separators

        try:
            check_inputs(config)
            job_dir = Path(str(config.hydra.run.dir))
            legacy = legacy_job_dir(job_dir, *separators(config))
            if legacy is not None:
                conflict = directory_conflict(_task_config(config), legacy)
                if conflict is not None:
                    raise LandscopeError(conflict)
                adopt_legacy_dir(job_dir, legacy)
        except LandscopeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)


def _task_config(config: DictConfig) -> DictConfig:
    """The job's config as its task function receives it (Hydra's ``run_job``: no ``hydra``)."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task
