"""A job trained already in a sibling directory is not trained again.

A sweep over probe or landscape settings (``python -m runner -m probe.data_size=500,1000
seed=0,1``) puts each trained model in one directory per setting. Before a job trains from
scratch, :func:`take_training` looks in the directories beside it for a finished job of the
same training and, when one is found, starts this job from that job's checkpoints instead.
Resumed from a final checkpoint, training takes no step: the model, the metric history and
the final metrics are the other job's, and this job's probe and landscape stages run with
its own settings. ``result.json`` names the directory in ``trained_in``; so does
``trained_in.json`` (:data:`TAKEN_FILE`), written before the files are placed, so that a job
killed after the take and run again still says where its training was done
(:func:`taken_earlier`).

A directory is taken when all of these hold:

- its ``result.json`` is finished (completed or diverged), or failed after a finished
  training (its probes or landscape failed: :func:`landscope.jobcheck.finished_training`),
  and carries this job's training fingerprint (:func:`landscope.fingerprints.fingerprint`);
- its newest checkpoint is the final one (the epoch ``result.json`` completed) and was
  written under that fingerprint;
- it recorded during training what this job records (:func:`recorded_in_training`): the
  curvature every ``probe.every_n_epochs`` epochs, with the same probe settings, and the
  trajectory's snapshots, with the same snapshot settings (its ``trajectory.npz`` present).
  Training writes both, but the training fingerprint leaves the probe and landscape groups
  out.

Its checkpoints (and the trajectory) are hard-linked into this job's directory, or copied
where the file system cannot link (:func:`landscope.io.atomic_link`). Checkpoints and
snapshots are always written as new files that replace the old, never in place, so neither
job's later writes reach the other. Jobs that run at the same time (a parallel launcher) each
train: only a finished job is taken, and the sweeper puts each model's first job before the
others under such launchers.
``train.reuse_trained=false`` trains every job. What it saves: see
docs/measurements.md#jobreuse.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("landscope")

TAKEN_FILE = "trained_in.json"  # {"trained_in": the directory's name, "epoch": its final epoch}


def recorded_in_training(cfg: Any) -> dict:
    """What training writes under ``cfg`` beyond what the training fingerprint keys: the
    probe fingerprint of the curvature recorded every ``probe.every_n_epochs`` epochs (None
    when none is), and the trajectory's snapshot settings (None when it is off)."""
    from landscope.fingerprints import landscape_fingerprint, probe_fingerprint

    probe = probe_fingerprint(cfg)
    traj = cfg.landscape.trajectory
    on = landscape_fingerprint(cfg) is not None and bool(traj.enabled)
    return {"curvature": probe if probe and cfg.probe.every_n_epochs else None,
            "trajectory": [traj.snapshot_every_steps, str(traj.snapshot_dtype)] if on else None}


def _candidates(job_dir: Path, fp: str):
    """The jobs beside ``job_dir`` (:class:`~landscope.jobdir.JobDir`, by name) whose training
    finished under ``fp``, with their trainings' results."""
    from landscope.jobcheck import FINISHED, finished_training
    from landscope.jobdir import Sweep, screen

    try:
        siblings = [job for job in Sweep(job_dir.parent).job_dirs() if job.path != job_dir]
    except OSError:
        return
    for found in screen(siblings, FINISHED):
        trained = None if found.result is None else finished_training(found.result)
        if trained is not None and trained.get("fingerprint") == fp:
            yield found.job, trained


def _usable(job: Any, result: dict, fp: str, wanted: dict) -> Optional[list[tuple[Path, str]]]:
    """The files to take from the finished job ``job`` beside this one, as ``(file, its path
    in a job directory)``: its trajectory when this job records one, then its checkpoints,
    the final one last; None when it cannot stand in for this job."""
    from landscope.jobdir import CHECKPOINT_DIR
    from landscope.jobresults import TRAJECTORY_FILE

    try:
        if recorded_in_training(job.config()) != wanted:
            return None
        final, ckpt = job.final_checkpoint(result)
    except Exception as exc:  # noqa: BLE001 (config.yaml unreadable or off the schema, the
        log.debug("%s cannot stand in: %s", job, exc)  # checkpoint corrupt or not final)
        return None
    if ckpt.get("fingerprint") != fp:
        return None
    files = [(p, f"{CHECKPOINT_DIR}/{p.name}") for p in reversed(job.checkpoints())]
    if not files or files[-1][0] != final:
        return None
    if wanted["trajectory"] is None:
        return files
    trajectory = job.path / TRAJECTORY_FILE
    return [(trajectory, TRAJECTORY_FILE), *files] if trajectory.is_file() else None


def take_training(cfg: Any, job_dir: Path, fp: str) -> Optional[str]:
    """Start ``job_dir`` (locked, no checkpoint yet) from a finished job of the same training
    beside it; returns that directory's name, or None (nothing taken: the job trains).
    A file that cannot be taken leaves the job to train from whatever was placed (a
    checkpoint of the same training resumes as its own would)."""
    from landscope.checkpoint import list_checkpoints
    from landscope.io import atomic_link, write_json
    from landscope.jobdir import CHECKPOINT_DIR

    job_dir = Path(job_dir)
    if not cfg.resume or not cfg.train.reuse_trained or list_checkpoints(job_dir / CHECKPOINT_DIR):
        return None
    wanted = recorded_in_training(cfg)
    for job, result in _candidates(job_dir, fp):
        files = _usable(job, result, fp, wanted)
        if files is None:
            continue
        try:  # the record first: a kill between the files leaves it naming a final epoch
            write_json(job_dir / TAKEN_FILE,  # that the files placed do not reach
                       {"trained_in": job.name, "epoch": result["epochs_completed"]})
            for source, name in files:
                atomic_link(source, job_dir / name)
        except OSError as exc:
            log.warning("warning: %s: could not take the training of %s (%s); training",
                        job_dir, job.name, " ".join(str(exc).split()))
            (job_dir / TAKEN_FILE).unlink(missing_ok=True)
            return None
        log.info("%s: the same training as %s, finished there: its checkpoints are taken, "
                 "no step is trained", job_dir, job.name)
        return job.name
    return None


def taken_earlier(job_dir: Path, epoch: int) -> Optional[str]:
    """The directory whose training an earlier run of this job took (:data:`TAKEN_FILE`),
    when the job resumed from that training's final epoch ``epoch``; else None (nothing was
    taken, or the job resumed from an earlier checkpoint and trained the rest itself)."""
    from landscope.io import read_json

    try:
        taken = read_json(Path(job_dir) / TAKEN_FILE)
        name, final = taken["trained_in"], taken["epoch"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return name if isinstance(name, str) and final == epoch and epoch > 0 else None
