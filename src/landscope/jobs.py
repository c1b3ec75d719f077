"""One job = validate -> train (resumable) -> results contract -> status.

A job directory's files are described in the README ("Where the results go"). Statuses:
``completed`` (max epochs or the target train loss reached), ``diverged`` (the loss became
non-finite: a result, not a failure), ``failed`` (an exception; traceback saved) and
``invalid`` (bad input, detected before anything was written)."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from landscope.config import typed, validate
from landscope.data import check_available
from landscope.errors import LandscopeError, one_line
from landscope.fingerprints import (  # noqa: F401
    FINGERPRINT_VERSION,
    fingerprint,
    landscape_fingerprint,
    legacy_fingerprint,
    probe_fingerprint,
    same_config,
    training_fingerprints,
)
from landscope.io import atomic_write_text, write_json
from landscope.jobcheck import FINISHED, TRAINED, JobRefused, conflict_reason, read_result
from landscope.joblock import JobLocked, job_lock

# Re-exported: commands, scripts and tests import these from here.
from landscope.jobresults import (  # noqa: F401
    JOB_STAGES,
    TRAJECTORY_FILE,
    probe_checkpoint,
    probe_finished,
    probe_finished_job,
    repair_finished,
)
from landscope.jobreuse import take_training
from landscope.jobtrain import (  # noqa: F401
    COMPLETED,
    DIVERGED,
    available_cores,
    default_threads,
    git_commit,
    initial_model,
    package_versions,
    precision_of,
    seed_everything,
    train,
)
from landscope.migrate import migrate_job
from landscope.models import check_named_model
from landscope.optim import check_precision
from landscope.stages import missing
from landscope.tracking import make_tracker

log = logging.getLogger("landscope")

FAILED, INVALID, SKIPPED = "failed", "invalid", "skipped"  # skipped: a summary's only (locked)
# what a failure after training adds to its line (the failed result.json keeps the training)
KEPT_TRAINING = ("; the training is kept: runner.probe on this job, or the runner with the "
                 "setting changed, finishes it without training again")


def check_inputs(cfg: DictConfig) -> None:
    """Every check that can run before a job writes anything (raises LandscopeError)."""
    validate(cfg)
    check_precision(precision_of(cfg), cfg.optimizer.name)
    check_named_model(cfg.model)  # resnet18/34's fixed depth, vit_small's heads
    device = str(cfg.train.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LandscopeError(f"train.device={device!r} but no CUDA device is available here; "
                             "use train.device=cpu")
    check_available(cfg.dataset)


def directory_conflict(cfg: DictConfig, job_dir: Path) -> Optional[str]:
    """One line when ``job_dir`` already holds a job of another config (by its result.json,
    else its newest valid checkpoint, else its config.yaml), None when it is absent, empty,
    holds this job or only unreadable leftovers. Reads only: call it before writing."""
    fp, earlier = training_fingerprints(cfg)
    return conflict_reason(Path(job_dir), fp, fingerprint, legacy_fingerprint(cfg), earlier)


def train_job(cfg: DictConfig, job_dir: Path, overrides: list[str], n_parallel: int = 1) -> dict:
    """Train one job in ``job_dir`` (resuming or skipping as the directory says) and
    write its results contract. Returns ``result.json``'s content.

    A directory holding another config's job is refused (:class:`JobRefused`) before
    anything is written; one held by another process raises :class:`JobLocked`."""
    job_dir, fp = Path(job_dir), fingerprint(cfg)
    reason = directory_conflict(cfg, job_dir)
    if reason is not None:
        raise JobRefused(reason)
    job_dir.mkdir(parents=True, exist_ok=True)
    with job_lock(job_dir):
        return _train_locked(cfg, job_dir, overrides, n_parallel, fp)


def _train_locked(cfg: DictConfig, job_dir: Path, overrides: list[str], n_parallel: int,
                  fp: str) -> dict:
    reason = directory_conflict(cfg, job_dir)  # written meanwhile by another process?
    if reason is not None:
        raise JobRefused(reason)
    migrate_job(job_dir, cfg)  # written before fingerprint version 2: records moved, once
    previous = read_result(job_dir / "result.json")
    config_yaml, cfg = OmegaConf.to_yaml(cfg, resolve=True), typed(cfg)  # dataclasses below
    if previous is not None and previous["status"] in FINISHED and cfg.resume:
        if missing(cfg, previous, JOB_STAGES):  # e.g. another probe preset: no retraining
            return probe_finished(cfg, job_dir, previous)
        repair_finished(cfg, job_dir, previous)
        log.info("%s: already %s, skipped", job_dir, previous["status"])
        return {**previous, "skipped": True}

    atomic_write_text(job_dir / "config.yaml", config_yaml)
    atomic_write_text(job_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
    trained_in = take_training(cfg, job_dir, fp)  # a sibling's finished training, if any
    tracker = make_tracker(cfg)
    tracker.start(cfg, job_dir, overrides)
    failed = True  # finished as failed unless the job completes (diverged counts as failed)
    try:
        result = train(cfg, job_dir, overrides, n_parallel, fp, tracker, previous, trained_in)
        failed = result["status"] != COMPLETED
        tracker.log_result(result, job_dir)
        return result
    finally:
        tracker.finish(failed)


def run_job(cfg: DictConfig, job_dir: Path, overrides: list[str], n_parallel: int = 1) -> dict:
    """Run one job and never raise (except KeyboardInterrupt): returns a summary
    ``{"job", "dir", "status", "message", ...}`` for the sweep's status table.
    ``n_parallel`` is how many jobs share this machine (for the thread count)."""
    job_dir = Path(job_dir)
    name = job_dir.name  # the override-derived subdirectory
    summary = {"job": name, "dir": str(job_dir)}
    existed = job_dir.exists() and any(job_dir.iterdir())
    try:
        check_inputs(cfg)
    except LandscopeError as exc:
        _remove_if_empty(job_dir, existed)
        return {**summary, "status": INVALID, "message": str(exc)}
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        result = train_job(cfg, job_dir, overrides, n_parallel)
    except KeyboardInterrupt:
        raise
    except JobLocked as exc:  # another runner has this job: neither redo nor touch it
        log.warning("warning: %s", exc)
        pid = f"pid {exc.pid}" if exc.pid else "pid unknown"
        return {**summary, "status": SKIPPED, "message": f"locked by another process ({pid})"}
    except JobRefused as exc:  # decided before anything was written: nothing to record
        _remove_if_empty(job_dir, existed)
        return {**summary, "status": INVALID, "message": str(exc)}
    except Exception as exc:
        message = one_line(exc, typed=True, plain=True)
        trained = getattr(exc, "landscope_trained", None)  # the stages after training failed
        problem = record_failure(cfg, job_dir, overrides, message,
                                 isinstance(exc, LandscopeError), trained)
        if problem is not None:  # one line says both
            message += ("; the failure could not be recorded either" if problem == message
                        else f"; the failure could not be recorded ({problem})")
        elif trained is not None:
            message += KEPT_TRAINING
        log.error("error: %s: %s", name, message)
        return {**summary, "status": FAILED, "message": message}
    final = result.get("final", {})
    note = "skipped: already done" if result.get("skipped") else result.get("stop_reason", "")
    if result.get("trained_in") and not result.get("skipped"):
        note += " (the training of a job beside it)"
    return {**summary, "status": result["status"], "message": note,
            "epochs": result.get("epochs_completed"), "test_acc": final.get("test_acc"),
            "train_loss": final.get("train_loss")}


def record_failure(cfg: DictConfig, job_dir: Path, overrides: list[str], message: str,
                   user_error: bool, trained: Optional[dict] = None) -> Optional[str]:
    """traceback.txt, and a failed result.json unless one is there that must stay (a finished
    job's, of this config: a failed probe pass or checkpoint read does not undo the training;
    or any, for a user error before training finished). ``trained``: the result of a training
    that finished before a later stage failed, kept in the failed result.json (``trained``,
    read by :func:`landscope.jobcheck.finished_training`). A write that fails (a full disk) is
    never raised: its one-line reason is returned for the caller's message (None when
    everything was recorded)."""
    if not job_dir.is_dir():
        return None
    previous = read_result(job_dir / "result.json", warn=False)
    fp, earlier = training_fingerprints(cfg)
    keep = (user_error and trained is None and (job_dir / "result.json").exists()) or (
        previous is not None and previous["status"] in FINISHED
        and same_config(previous, fp, legacy_fingerprint(cfg), earlier))
    try:
        atomic_write_text(job_dir / "traceback.txt", traceback.format_exc())
        if not keep:
            write_json(job_dir / "result.json", {
                "status": FAILED, "error": message, "seed": cfg.seed,
                "overrides": overrides, "fingerprint": fp,
                "fingerprint_version": FINGERPRINT_VERSION,
                "versions": package_versions(), "git_commit": git_commit(),
                **({TRAINED: trained} if trained is not None else {})})
    except OSError as exc:
        return one_line(exc, typed=True, plain=True)
    return None


def _remove_if_empty(job_dir: Path, existed: bool) -> None:
    """Undo the empty directory a launcher created for a job that never started."""
    if not existed:
        try:
            job_dir.rmdir()
        except OSError:
            pass
