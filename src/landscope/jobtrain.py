"""A job's training, in four steps: :func:`setup` (data, model, threads, optimizer) ->
:func:`resume` (from the newest valid checkpoint) -> :func:`fit_job` (the loop, with a
checkpoint, metrics.jsonl and the tracker at every epoch's end) -> :func:`finalize` (the
result, then the post-training stages of :mod:`landscope.jobresults`, which write
result.json and the figures). :func:`train` runs them on a job directory that exists
and is locked (:func:`landscope.jobs.train_job`). The checkpoint state (seconds so far,
last save, epoch resumed) lives on :class:`~landscope.train.TrainState`.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import socket
import subprocess
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig

from landscope import __version__
from landscope.augment import augment_fields, make_augment
from landscope.checkpoint import capture_rng, load_latest, restore_rng, save_checkpoint
from landscope.data import load_data
from landscope.errors import CheckpointError, LandscopeError
from landscope.fingerprints import (
    FINGERPRINT_VERSION,
    earlier_fingerprint,
    landscape_fingerprint,
    legacy_fingerprint,
    probe_fingerprint,
    same_config,
)
from landscope.geometry.snapshots import SnapshotRecorder
from landscope.io import append_jsonl, write_jsonl
from landscope.jobdir import JobDir
from landscope.jobresults import JOB_STAGES, TRAJECTORY_FILE, remove_traceback
from landscope.jobreuse import taken_earlier
from landscope.models import build_model, count_parameters
from landscope.optim import build_optimizer, build_scheduler, make_precision
from landscope.probes.step_curvature import StepCurvature
from landscope.probes.suite import curvature_during_training, probe_data
from landscope.progress import bar, wanted
from landscope.stages import StageContext, run_stages
from landscope.tracking import Tracker
from landscope.train import OOD_KEYS, STOP_DIVERGED, TrainState, evaluate, fit

log = logging.getLogger("landscope")

COMPLETED, DIVERGED = "completed", "diverged"


def precision_of(cfg: DictConfig) -> str:
    """``train.precision`` (fp32 for a config from before the field existed)."""
    value = getattr(cfg.train, "precision", "fp32")
    return str(value)


@lru_cache(maxsize=1)
def package_versions() -> dict:
    import hydra
    import torchvision

    return {"landscope": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "hydra": hydra.__version__}


@lru_cache(maxsize=1)
def git_commit() -> Optional[str]:
    """Commit of the checkout landscope runs from (``+dirty`` when modified), else None."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
        return sha + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def initial_model(cfg: DictConfig, data) -> torch.nn.Module:
    """The job's model at initialization, rebuilt exactly as :func:`setup` builds it
    (``seed_everything(cfg.seed)``, then ``build_model`` with the data's metadata): the
    data-independent prior mean of ``probe.pacbayes``. The global RNG states are restored."""
    state = capture_rng()
    try:
        seed_everything(cfg.seed)
        return build_model(cfg.model, data.meta, cfg.loss)
    finally:
        restore_rng(state)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads(n_params: int, n_parallel: int = 1) -> int:
    """Torch intra-op threads for a job when ``train.threads`` is null.

    Models under a million parameters get one thread: their kernels are too small
    to split, and a second thread mostly adds synchronisation (on a loaded 2-core
    machine a 40k-parameter MLP ran 5-50x slower with 2 threads than with 1).
    Larger models share the cores evenly among the ``n_parallel`` concurrent jobs.
    """
    if n_params < 1_000_000:
        return 1
    return max(1, available_cores() // max(1, n_parallel))


def train(cfg: DictConfig, job_dir: Path, overrides: list[str], n_parallel: int, fp: str,
          tracker: Tracker, previous: Optional[dict], trained_in: Optional[str] = None) -> dict:
    """Train the job in ``job_dir`` (existing, locked) and write its results; returns
    result.json's content. ``trained_in``: the sibling directory whose checkpoints were
    placed here (:func:`landscope.jobreuse.take_training`); its history goes to the
    tracker, which saw none of it."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tic = time.perf_counter()
    data = load_data(cfg.dataset)
    state = setup(cfg, data, n_parallel)
    state.tic = tic
    resume(cfg, job_dir, state, fp)
    if trained_in is not None:
        state.trained_in = trained_in
        for row in state.history:
            tracker.log_epoch(row)
    else:  # taken by a run killed since: that run's tracker had the history
        state.trained_in = taken_earlier(job_dir, state.epoch)
    write_jsonl(job_dir / "metrics.jsonl", state.history)
    stop = fit_job(cfg, job_dir, data, state, fp, tracker)
    return finalize(cfg, job_dir, overrides, data, state, stop, started, fp, previous)


def setup(cfg: DictConfig, data, n_parallel: int) -> TrainState:
    """The seeded model on its device, the thread count, optimizer, scheduler, precision."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model, data.meta, cfg.loss).to(cfg.train.device)
    torch.set_num_threads(cfg.train.threads or default_threads(count_parameters(model), n_parallel))
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.optimizer, cfg.train.epochs)
    # fp32: None, the float32 loop; bf16/fp16: autocast (+ fp16's gradient scaler)
    amp = make_precision(precision_of(cfg), cfg.optimizer.name, cfg.train.device)
    return TrainState(model, optimizer, scheduler, amp=amp)


def resume(cfg: DictConfig, job_dir: Path, state: TrainState, fp: str) -> None:
    """Continue from the newest valid checkpoint of this config (with ``resume``)."""
    ckpt_dir = job_dir / "checkpoints"
    ckpt = load_latest(ckpt_dir, warn=lambda m: log.warning("warning: %s", m)) \
        if cfg.resume else None
    if ckpt is None:
        return
    if not same_config(ckpt, fp, legacy_fingerprint(cfg), earlier_fingerprint(cfg)):
        raise CheckpointError(f"checkpoint in {ckpt_dir} was written by a different config")
    if ckpt["fingerprint"] != fp:  # written before version 2, or before MARKED_LATER
        key = "fingerprint_v1" if ckpt.get("fingerprint_version", 1) < 2 else \
            "fingerprint_earlier"
        state.older_fingerprint = {key: ckpt["fingerprint"]}
    state.restore(ckpt, f"checkpoint in {ckpt_dir}")
    log.info("%s: resuming from epoch %d", job_dir, ckpt["epoch"])


def fit_job(cfg: DictConfig, job_dir: Path, data, state: TrainState, fp: str,
            tracker: Tracker) -> str:
    """Train to the end; at every epoch's end the trajectory snapshots, the curvature
    during training, a checkpoint when due (always the last), metrics.jsonl and the tracker.
    Returns the stop reason."""
    recorder = _trajectory_recorder(cfg, job_dir, state)
    state.last_save = time.perf_counter()
    every = cfg.probe.every_n_epochs if probe_fingerprint(cfg) else 0
    curvature_data = probe_data(data.train, cfg.probe) if every else None
    per_step = _step_curvature(cfg, data, state)
    written = len(state.history)  # the rows metrics.jsonl holds (train() wrote them)

    def on_epoch_end(st: TrainState, row: dict) -> None:
        nonlocal written
        last = row["stop_reason"] is not None or st.epoch == cfg.train.epochs
        if recorder is not None:  # before the checkpoint: a resume truncates to it
            recorder.on_epoch_end(st, row)
        if every and st.epoch % every == 0 and row["stop_reason"] != STOP_DIVERGED:
            row.update(curvature_during_training(st.model, curvature_data, cfg.probe))
        if per_step is not None:  # the epoch's lambda_max every probe.every_n_steps steps
            row.update(per_step.pop())
        due = (st.epoch % cfg.train.checkpoint_every == 0 and
               time.perf_counter() - st.last_save >= cfg.train.checkpoint_interval_s)
        if last or due:
            st.last_save = time.perf_counter()
            save_checkpoint(job_dir / "checkpoints", st.epoch, st.checkpoint(fp),
                            keep=cfg.train.keep_checkpoints)
        if len(st.history) == written + 1 and st.history[-1] is row:  # the new epoch's row
            append_jsonl(job_dir / "metrics.jsonl", [row])
        else:
            write_jsonl(job_dir / "metrics.jsonl", st.history)
        written = len(st.history)
        tracker.log_epoch(row)
        log.info("epoch %d/%d  train_loss %.4f  train_acc %.4f  test_loss %.4f  test_acc %.4f",
                 st.epoch, cfg.train.epochs, row["train_loss"], row["train_acc"],
                 row["test_loss"], row["test_acc"])

    n_train = len(data.train)
    batch_size = n_train if cfg.train.full_batch else min(cfg.train.batch_size, n_train)
    return fit(state, data.train, data.test, epochs=cfg.train.epochs, batch_size=batch_size,
               seed=cfg.seed, eval_batch_size=cfg.train.eval_batch_size,
               grad_clip=cfg.train.grad_clip, target_train_loss=cfg.train.target_train_loss,
               max_grad_evals=cfg.train.max_grad_evals, on_epoch_end=on_epoch_end,
               on_step=_on_step(recorder, per_step),
               progress_factory=_progress_factory(cfg, -(-n_train // batch_size)),
               augment=make_augment(cfg.augment), ood_split=data.ood)


def finalize(cfg: DictConfig, job_dir: Path, overrides: list[str], data, state: TrainState,
             stop: str, started: str, fp: str, previous: Optional[dict]) -> dict:
    """The result of the training, then the post-training stages (which write result.json
    and the figures); a traceback of an earlier attempt is removed. An exception of a stage
    carries the training's result as ``landscope_trained``."""
    model = state.model
    result = {
        "status": DIVERGED if stop == STOP_DIVERGED else COMPLETED,
        "stop_reason": stop, "final": _final_metrics(cfg, data, state),
        "epochs_completed": state.epoch, "wall_time_s": state.seconds(),
        "resumed_from_epoch": state.resumed_from, "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_params": count_parameters(model), "seed": cfg.seed, "overrides": overrides,
        "dataset": {"name": data.meta.name, "train_size": data.meta.train_size,
                    "test_size": data.meta.test_size},
        "fingerprint": fp, "fingerprint_version": FINGERPRINT_VERSION,
        **state.older_fingerprint,
        **({"trained_in": state.trained_in} if state.trained_in else {}),
        "versions": package_versions(), "git_commit": git_commit(),
        "host": socket.gethostname(), "torch_threads": torch.get_num_threads(),
        **augment_fields(cfg.augment),  # augment=none: nothing (the result as before)
    }
    trained = dict(result)
    ctx = StageContext(cfg, JobDir(job_dir), model, data, result, previous)
    try:
        run_stages(ctx, JOB_STAGES)
    except Exception as exc:
        exc.landscope_trained = trained  # the failure's record keeps it (jobs.record_failure)
        raise
    remove_traceback(job_dir)
    return ctx.result


def _final_metrics(cfg: DictConfig, data, state: TrainState) -> dict:
    """The last epoch's metrics (epochs=0: the initial model's); the shifted split's
    (``ood_test_loss``, ``ood_test_acc``) only when ``dataset.ood`` is on."""
    if state.history:
        row = state.history[-1]
    else:
        train_loss, train_acc = evaluate(state.model, data.train, cfg.train.eval_batch_size)
        test_loss, test_acc = evaluate(state.model, data.test, cfg.train.eval_batch_size)
        row = {"epoch": 0, "train_loss": train_loss, "train_acc": train_acc,
               "test_loss": test_loss, "test_acc": test_acc, "grad_evals": 0}
        if data.ood is not None:
            row.update(zip(OOD_KEYS, evaluate(state.model, data.ood, cfg.train.eval_batch_size)))
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "grad_evals")
    if data.ood is not None:
        keys = (*keys, *OOD_KEYS)
    out = {k: row.get(k) for k in keys}
    if out["train_acc"] is not None and out["test_acc"] is not None:
        out["generalization_gap"] = out["train_acc"] - out["test_acc"]
    return out


def _progress_factory(cfg: DictConfig, steps_per_epoch: int):
    if not wanted(cfg.train.progress):
        return None
    return lambda epoch, epochs: bar(f"epoch {epoch + 1}/{epochs}", steps_per_epoch)


def _step_curvature(cfg: DictConfig, data, state: TrainState) -> Optional[StepCurvature]:
    """The ``probe.every_n_steps`` hook (None when 0 or the probe stage is off), begun on the
    state (a resumed job continues the global step count)."""
    every = cfg.probe.every_n_steps if probe_fingerprint(cfg) else 0
    if not every:
        return None
    hook = StepCurvature(probe_data(data.train, cfg.probe), every, mode=str(cfg.probe.mode),
                         seed=cfg.probe.seed)
    hook.begin(state)
    return hook


def _on_step(*hooks):
    """One ``on_step`` callback running the hooks that are not None in order (None if none)."""
    live = [h.on_step for h in hooks if h is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]

    def every_hook(st: TrainState) -> None:
        for hook in live:
            hook(st)
    return every_hook


def _trajectory_recorder(cfg: DictConfig, job_dir: Path, state: TrainState):
    """The snapshot recorder of ``landscape.trajectory`` (None when off), started at the
    state's epoch (a resumed job drops the snapshots after its checkpoint)."""
    traj = cfg.landscape.trajectory
    if landscape_fingerprint(cfg) is None or not traj.enabled:
        return None
    recorder = SnapshotRecorder(job_dir / TRAJECTORY_FILE, traj.snapshot_every_steps,
                                dtype=str(traj.snapshot_dtype))
    try:
        recorder.begin(state)
    except LandscopeError as exc:  # e.g. resumed with the trajectory newly switched on
        log.warning("warning: %s: no trajectory recorded (%s)", job_dir, exc)
        return None
    return recorder
