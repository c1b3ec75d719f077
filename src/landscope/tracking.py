"""Experiment tracking: one Weights & Biases run per job (``logger=wandb``), or nothing.

A job talks to a :class:`Tracker` (:func:`make_tracker` picks it from ``cfg.logger``):

- ``start``: ``wandb.init`` with project and entity from the config, ``group`` = the sweep
  name (``cfg.name``), ``job_type`` (``train`` by default), a readable run name (the job
  directory's name, i.e. its overrides such as ``optimizer=adam,seed=3``), tags (the config's
  ``logger.tags`` plus dataset, model and optimizer names) and ``config`` = the resolved
  Hydra config. The run id is kept in the job directory (``wandb_run_id``), so a resumed job
  continues its own run (``resume="allow"``; online the history continues where it stopped).
  Under ``wandb agent`` the agent's run id is used instead.
- ``log_epoch``: every row of ``metrics.jsonl`` (losses, accuracies, learning rate, and the
  curvature through training when ``probe.every_n_epochs`` is set), against ``epoch``; a job
  that took its training from a job beside it (:mod:`landscope.jobreuse`) logs that job's
  rows, and its summary names it (``trained_in``).
- ``log_result``: the final metrics, probe and landscape scalars as the run summary (keys
  ``final/…``, ``probe/…``, ``landscape/…``) and the job's ``figures/*.png`` as images.
- ``finish``: always called (also when the job raises); a failed or diverged job finishes
  with exit code 1 and shows as failed in the dashboard.

Mode (``logger.mode``): ``auto`` (default) is ``online`` when an API key is configured
(``WANDB_API_KEY`` or a ``wandb login`` entry in ``~/.netrc``) and ``offline`` otherwise, so a
job never waits on a network it cannot reach; ``WANDB_MODE`` in the environment wins over
``auto``. Offline runs are written under ``<job>/wandb/offline-run-*`` and uploaded later with
``wandb sync <job>/wandb/offline-run-*``. Tracking is a side channel: when W&B cannot start,
the job logs one warning line and trains untracked.

:func:`log_report` stores the analysis report of a sweep as a W&B artifact (type
``report``) in a run of job type ``report`` in the sweep's group, and says where it went:
uploaded (online) or saved for a later ``wandb sync`` (offline).
"""

from __future__ import annotations

import logging
import math
import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

log = logging.getLogger("landscope")

RUN_ID_FILE = "wandb_run_id"



def api_key_configured() -> bool:
    """True when W&B has an API key: ``WANDB_API_KEY`` or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")  # where wandb looks
    try:
        return netrc.netrc(path).authenticators(host or "api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _settings(wandb: Any, logger_cfg: Any) -> Any:
    """Quiet, and bounded in how long an online start may wait for the server (configs saved
    before ``init_timeout`` existed get its default)."""
    return wandb.Settings(silent=True, init_timeout=float(getattr(logger_cfg, "init_timeout",
                                                                  30.0)))


def resolve_mode(mode: Any) -> str:
    """``online``/``offline``/``disabled`` for ``logger.mode`` (``auto``: see module doc)."""
    mode = str(mode)
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    return "online" if api_key_configured() else "offline"


def run_name(job_dir: Path, overrides: list[str]) -> str:
    """The job directory's name (its overrides) or, for a run without overrides, the
    overrides joined (or ``default``)."""
    name = Path(job_dir).name
    if "=" in name:
        return name
    return ",".join(overrides) or "default"


def _numeric(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float)) and (not isinstance(value, float)
                                                  or math.isfinite(value)):
            out[key] = value
    return out


def _run_id(job_dir: Path) -> Optional[str]:
    """The job's W&B run id, created once and kept in the job directory; None under a
    ``wandb agent`` (which sets the run id itself)."""
    if os.environ.get("WANDB_SWEEP_ID"):
        return None
    from landscope.io import atomic_write_text

    path = Path(job_dir) / RUN_ID_FILE
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text
    import secrets

    run_id = secrets.token_hex(6)
    atomic_write_text(path, run_id + "\n")
    return run_id


class Tracker:
    """No tracking (``logger=none``); the interface every tracker implements."""

    def start(self, cfg: Any, job_dir: Path, overrides: list[str]) -> None:
        pass

    def log_epoch(self, row: dict) -> None:
        pass

    def log_result(self, result: dict, job_dir: Path) -> None:
        pass

    def finish(self, failed: bool) -> None:
        pass


class WandbTracker(Tracker):
    """One W&B run per job (module docstring)."""

    def __init__(self, logger_cfg: Any) -> None:
        self.cfg = logger_cfg
        self.run = None

    def start(self, cfg: Any, job_dir: Path, overrides: list[str]) -> None:
        from landscope.config import plain

        job_dir = Path(job_dir)
        lc = self.cfg
        mode = resolve_mode(lc.mode)
        try:
            import wandb

            tags = [*map(str, lc.tags), f"dataset:{cfg.dataset.name}",
                    f"model:{cfg.model.name}", f"optimizer:{cfg.optimizer.name}"]
            wdir = Path(lc.dir) if lc.dir else job_dir
            wdir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=lc.project, entity=lc.entity, group=str(cfg.name),
                job_type=lc.job_type, name=run_name(job_dir, overrides), tags=tags,
                config=plain(cfg),
                dir=str(wdir), mode=mode, id=_run_id(job_dir), resume="allow",
                settings=_settings(wandb, lc))
            self.run.define_metric("epoch")
            self.run.define_metric("*", step_metric="epoch")
            self.run.config.update({"overrides": list(overrides)}, allow_val_change=True)
        except Exception as exc:  # noqa: BLE001 - tracking must never cost a job
            log.warning("warning: W&B tracking off for %s (%s: %s)", job_dir.name,
                        type(exc).__name__, " ".join(str(exc).split())[:200])
            self.run = None

    def log_epoch(self, row: dict) -> None:
        if self.run is not None:
            self.run.log(_numeric(row))

    def log_result(self, result: dict, job_dir: Path) -> None:
        if self.run is None:
            return
        summary: dict[str, Any] = {"status": result.get("status"),
                                   "stop_reason": result.get("stop_reason"),
                                   "n_params": result.get("n_params"),
                                   "wall_time_s": result.get("wall_time_s"),
                                   "trained_in": result.get("trained_in")}
        for section, prefix in (("final", "final"), ("probes", "probe"),
                                ("landscape", "landscape")):
            values = result.get(section)
            if isinstance(values, dict):
                summary.update({f"{prefix}/{k}": v for k, v in _numeric(values).items()})
        self.run.summary.update({k: v for k, v in summary.items() if v is not None})
        figures = sorted((Path(job_dir) / "figures").glob("*.png"))
        if self.cfg.log_figures and figures:
            import wandb

            self.run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in figures})

    def finish(self, failed: bool) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=1 if failed else 0)


def make_tracker(cfg: Any) -> Tracker:
    """The tracker ``cfg.logger`` asks for."""
    name = str(cfg.logger.name) if getattr(cfg, "logger", None) is not None else "none"
    if name == "wandb" and resolve_mode(cfg.logger.mode) != "disabled":
        return WandbTracker(cfg.logger)
    return Tracker()


@dataclass(frozen=True)
class ReportLog:
    """Where :func:`log_report` put the report: ``mode`` ``online`` (uploaded; ``url`` the
    run's page), ``offline`` (saved in ``sync_dir``, uploaded only by ``wandb sync
    <sync_dir>``) or ``disabled`` (not logged at all)."""

    mode: str
    run_dir: Optional[str] = None
    sync_dir: Optional[str] = None
    url: Optional[str] = None


def log_report(out_dir: Path, group: str, logger_cfg: Any,
               sources: list[str]) -> Optional[ReportLog]:
    """Store the report in ``out_dir`` as a W&B artifact of type ``report`` from a run of job
    type ``report`` in ``group``. Returns where it went (:class:`ReportLog`; nothing is
    started for ``disabled``), or None when W&B is unavailable (a warning line instead)."""
    out_dir = Path(out_dir)
    mode = resolve_mode(logger_cfg.mode)
    if mode == "disabled":
        return ReportLog("disabled")
    try:
        import wandb

        from landscope.analysis.doc import safe_name

        wdir = Path(logger_cfg.dir) if logger_cfg.dir else out_dir
        run = wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, group=group,
                         job_type="report", name=f"report {group}", dir=str(wdir),
                         mode=mode, config={"sources": sources},
                         settings=_settings(wandb, logger_cfg))
        try:
            art = wandb.Artifact(f"report-{safe_name(group)}", type="report",
                                 description=f"landscope report of {', '.join(sources)}")
            for path in sorted(out_dir.iterdir()):
                if path.is_file() and path.suffix in (".html", ".md", ".csv", ".parquet",
                                                      ".json"):
                    art.add_file(str(path))
            if (out_dir / "figures").is_dir():
                art.add_dir(str(out_dir / "figures"), name="figures")
            run.log_artifact(art)
            offline = bool(getattr(run, "offline", mode == "offline"))
            logged = ReportLog("offline" if offline else "online", run_dir=str(run.dir),
                               sync_dir=str(run.settings.sync_dir) if offline else None,
                               url=None if offline else getattr(run, "url", None))
        finally:
            run.finish()
        return logged
    except Exception as exc:  # noqa: BLE001
        log.warning("warning: report not logged to W&B (%s: %s)", type(exc).__name__,
                    " ".join(str(exc).split())[:200])
        return None
