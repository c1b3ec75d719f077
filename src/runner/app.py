"""Hydra entry point: ``python -m runner [overrides]`` / ``python -m runner -m [sweeps]``.

Thin by design: Hydra composes the config, :func:`landscope.jobs.run_job` does the
work, and :func:`main` turns the outcome into an exit code:

- 0  every job completed or diverged (divergence is a result);
- 1  some job failed (its traceback is in its directory; the others still ran);
- 2  bad input (unknown option, wrong type, impossible value, missing data,
     unwritable output): one ``error:`` line on stderr and nothing written.

The ``@hydra.main`` function lives here rather than in ``__main__`` so that job
names and pickling work with the joblib and submitit launchers.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from landscope.config import register_configs
from landscope.errors import one_line


def _conf_dir() -> str:
    env = os.environ.get("LANDSCOPE_CONF")
    if env:
        return str(Path(env).resolve())
    for candidate in (Path(__file__).resolve().parents[2] / "conf",
                      Path(__file__).resolve().parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    return str(Path.cwd() / "conf")


register_configs()
log = logging.getLogger("landscope")


class JobFailed(SystemExit):
    """Raised at the end of a single run whose job failed or was invalid."""


def _parallel_jobs() -> int:
    """How many jobs the launcher runs at once on this machine (joblib's n_jobs)."""
    from landscope.jobtrain import available_cores

    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs") if "n_jobs" in launcher else None
    if n_jobs is None:
        return 1
    n = int(n_jobs)
    return available_cores() + 1 + n if n < 0 else n  # joblib: -1 = all cores


@hydra.main(version_base="1.3", config_path=_conf_dir(), config_name="config")
def hydra_main(cfg: DictConfig) -> dict:
    from landscope.jobs import FAILED, INVALID, directory_conflict, run_job

    hc = HydraConfig.get()
    if hc.mode == RunMode.RUN:  # a sweep's jobs were checked up front by the sweeper
        conflict = directory_conflict(cfg, Path(hc.runtime.output_dir))
        if conflict is not None:  # Hydra only created the directory, which existed
            print(f"error: {conflict}", file=sys.stderr)
            raise JobFailed(2)
    summary = run_job(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task),
                      _parallel_jobs())
    if hc.mode == RunMode.RUN:
        if summary["status"] == INVALID:
            print(f"error: {summary['message']}", file=sys.stderr)
            raise JobFailed(2)
        if summary["status"] == FAILED:
            print(f"failed: {summary['dir']} (traceback.txt there has the details)",
                  file=sys.stderr)
            raise JobFailed(1)
        print(f"{summary['status']}: {summary['dir']} ({summary['message']})", flush=True)
    return summary


def main() -> None:
    from hydra_plugins.landscope_sweeper import landscope_sweeper
    from landscope.errors import LandscopeError

    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us; we print one line
    landscope_sweeper.LAST_SWEEP = None
    try:
        hydra_main()
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except LandscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if user_full_error:
            raise
        if isinstance(exc, OSError) and exc.filename:
            msg = f"cannot create output directory {exc.filename}: {exc.strerror}"
        else:
            msg = one_line(exc)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    sweep = landscope_sweeper.LAST_SWEEP
    if sweep is not None and any(s["status"] in ("failed", "invalid") for s in sweep):
        sys.exit(1)
