"""One job = validate -> train (resumable) -> results contract -> status.

Results contract of a job directory (see README):

- ``config.yaml``      the resolved config; ``overrides.yaml`` the command-line overrides
- ``metrics.jsonl``    one JSON object per completed epoch
- ``result.json``      status, stop reason, final metrics, wall time, parameter count,
                       seed, package versions, git commit, config fingerprint
- ``checkpoints/``     ``epoch_NNNNNN.pt`` (atomic, checksummed, newest few kept)
- ``traceback.txt``    only when the job failed (removed when it later completes)
- ``probes/``, ``landscape/``, ``figures/`` post-training caches and figures (see jobresults)
- ``.lock``            the advisory lock of the process working on the job (see joblock)

Statuses: ``completed`` (stopped at max epochs or the target train loss),
``diverged`` (the loss became non-finite: a result, not a failure), ``failed``
(an exception; traceback saved) and ``invalid`` (bad input, detected before
anything was written).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import random
import socket
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from landscope import __version__
from landscope.checkpoint import (capture_rng, load_checkpoint, load_latest, payload_digest,
                                 restore_rng, save_checkpoint)
from landscope.config import ProbeConfig, validate
from landscope.data import check_available, load_data
from landscope.errors import CheckpointError, ConfigError, LandscopeError, one_line
from landscope.geometry.snapshots import SnapshotRecorder
from landscope.jobcheck import FINISHED, JobRefused, conflict_reason, read_result
from landscope.jobdir import JobDir
from landscope.joblock import JobLocked, job_lock
from landscope.jobresults import (cached_probes, draw_figures, probe_fingerprints_of, probe_results,
                                  remove_traceback, repair_finished,
                                  landscape_results)
from landscope.io import atomic_write_text, read_jsonl, write_json, write_jsonl
from landscope.models import build_model, check_named_model, count_parameters
from landscope.optim import build_optimizer, build_scheduler, check_precision, make_precision
from landscope.probes.suite import curvature_during_training, probe_data
from landscope.synthetic import DATASET_FIELDS, SYNTHETIC
from landscope.tracking import Tracker, make_tracker
from landscope.train import STOP_DIVERGED, TrainState, evaluate, fit

log = logging.getLogger("landscope")

COMPLETED, DIVERGED, FAILED, INVALID = "completed", "diverged", "failed", "invalid"
SKIPPED = "skipped"  # a run summary's status only: another process holds the job directory
# Keys that do not change what a job computes; excluded from the fingerprint.
# Probes are run (and cached) separately from training: see probe_fingerprint.
TRAJECTORY_FILE = "trajectory.npz"  # landscape.trajectory snapshots in the job directory
_NON_RESULT_KEYS = ("name", "resume", "logger", "probe", "landscape", "train.progress", "train.threads",
                    "train.checkpoint_every", "train.checkpoint_interval_s",
                    "train.keep_checkpoints", "dataset.data_dir",
                    "dataset.download")


def check_inputs(cfg: DictConfig) -> None:
    """Every check that can run before a job writes anything (raises LandscopeError)."""
    validate(cfg)
    check_precision(_precision(cfg), cfg.optimizer.name)
    check_named_model(cfg.model)  # resnet18/34's fixed depth, vit_small's heads
    device = str(cfg.train.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LandscopeError(f"train.device={device!r} but no CUDA device is available here; "
                             "use train.device=cpu")
    check_available(cfg.dataset)


def _precision(cfg: DictConfig) -> str:
    """``train.precision`` (fp32 for a config from before the field existed)."""
    value = cfg.train.get("precision", "fp32")
    return str(getattr(value, "value", value))


def probe_fingerprint(cfg: DictConfig) -> Optional[str]:
    """Hash of the probe config (None when probes are off): a completed job whose
    result.json carries another one gets its probes (re)computed, without retraining."""
    if str(getattr(cfg.probe.name, "value", cfg.probe.name)) == "none":
        return None
    c = OmegaConf.to_container(cfg.probe, resolve=True, enum_to_str=True)
    c.pop("progress", None)  # drawing a bar or not changes no result
    c.pop("ranks", None)  # nor does the number of processes (beyond rounding)
    for key, default in (("max_products", None), ("budget_s", None), ("checkpointing", False)):
        if c.get(key, default) == default:  # added later: jobs probed before keep their hash
            c.pop(key, None)
    if not c.get("pacbayes"):  # its settings change nothing when it is off: old hashes stay
        c = {k: v for k, v in c.items() if not k.startswith("pacbayes")}
    else:
        if c.get("pacbayes_beta_grid") == ProbeConfig().pacbayes_beta_grid:
            c.pop("pacbayes_beta_grid")  # added later: jobs probed before keep their hash
        if c.get("pacbayes_posterior") == "grid":  # the grid search reads none of these
            for key in ("pacbayes_posterior", "pacbayes_steps", "pacbayes_lr_mean",
                        "pacbayes_lr_var", "pacbayes_batch_size", "pacbayes_n_match"):
                c.pop(key, None)
    text = OmegaConf.to_yaml(OmegaConf.create(c), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def landscape_fingerprint(cfg: DictConfig) -> Optional[str]:
    """Hash of the landscape config (None when it is off), like :func:`probe_fingerprint`."""
    if str(getattr(cfg.landscape.name, "value", cfg.landscape.name)) == "none":
        return None
    c = OmegaConf.to_container(cfg.landscape, resolve=True, enum_to_str=True)
    c.pop("figures", None)  # drawing or not changes no result
    if c.get("snapshot_dtype") == "float32":  # added later: jobs scanned before keep their hash
        c.pop("snapshot_dtype")
    text = OmegaConf.to_yaml(OmegaConf.create(c), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _records_trajectory(cfg: DictConfig) -> bool:
    return landscape_fingerprint(cfg) is not None and bool(cfg.landscape.trajectory)


def fingerprint(cfg: DictConfig) -> str:
    """Hash of the training-relevant part of the resolved config."""
    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in _NON_RESULT_KEYS:
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    if c.get("dataset", {}).get("name") not in SYNTHETIC:  # fields only synthetic data read
        for key in DATASET_FIELDS:
            c["dataset"].pop(key, None)
    # Fields added later that change nothing at their defaults stay out of the hash, so jobs
    # run before they existed keep their fingerprint (and are skipped or resumed, not refused).
    opt = c.get("optimizer", {})
    if opt.get("name") != "llp":  # only LLP reads its settings
        for key in [k for k in opt if k.startswith("llp_")]:
            opt.pop(key)
    if c.get("dataset", {}).get("classes", None) is None:  # added later (H4's binary preset)
        c.get("dataset", {}).pop("classes", None)
    if c.get("train", {}).get("max_grad_evals", None) is None:
        c.get("train", {}).pop("max_grad_evals", None)
    if c.get("train", {}).get("precision", "fp32") == "fp32":  # added later, as above
        c.get("train", {}).pop("precision", None)
    text = OmegaConf.to_yaml(OmegaConf.create(c), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def directory_conflict(cfg: DictConfig, job_dir: Path) -> Optional[str]:
    """One line when ``job_dir`` already holds a job of another config (by its result.json,
    else its newest valid checkpoint, else its config.yaml), None when it is absent, empty,
    holds this job or only unreadable leftovers. Reads only: call it before writing."""
    return conflict_reason(Path(job_dir), fingerprint(cfg), fingerprint)


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
    """The job's model at initialization, rebuilt exactly as :func:`train_job` builds it
    (``seed_everything(cfg.seed)``, then ``build_model`` with the data's metadata): the
    data-independent prior mean of ``probe.pacbayes``. The global RNG states are restored."""
    state = capture_rng()
    try:
        seed_everything(cfg.seed)
        return build_model(cfg.model, data.meta)
    finally:
        restore_rng(state)


def _progress_factory(cfg: DictConfig, steps_per_epoch: int):
    show = cfg.train.progress
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return lambda epoch, epochs: tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                                      leave=False, dynamic_ncols=True)


def _final_metrics(row: dict) -> dict:
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "grad_evals")
    out = {k: row.get(k) for k in keys}
    if out["train_acc"] is not None and out["test_acc"] is not None:
        out["generalization_gap"] = out["train_acc"] - out["test_acc"]
    return out


def train_job(cfg: DictConfig, job_dir: Path, overrides: list[str], n_parallel: int = 1) -> dict:
    """Train one job in ``job_dir`` (resuming or skipping as the directory says) and
    write its results contract. Returns ``result.json``'s content.

    A directory holding another config's job is refused (:class:`JobRefused`) before
    anything is written; one held by another process raises :class:`JobLocked`."""
    job_dir = Path(job_dir)
    fp = fingerprint(cfg)
    reason = conflict_reason(job_dir, fp, fingerprint)
    if reason is not None:
        raise JobRefused(reason)
    job_dir.mkdir(parents=True, exist_ok=True)
    with job_lock(job_dir):
        return _train_locked(cfg, job_dir, overrides, n_parallel, fp)


def _train_locked(cfg: DictConfig, job_dir: Path, overrides: list[str], n_parallel: int,
                  fp: str) -> dict:
    reason = conflict_reason(job_dir, fp, fingerprint)  # written meanwhile by another process
    if reason is not None:
        raise JobRefused(reason)
    previous = read_result(job_dir / "result.json")
    if previous is not None and previous["status"] in FINISHED and cfg.resume:
        if probe_fingerprint(cfg) not in (None, *probe_fingerprints_of(previous)) or \
                landscape_fingerprint(cfg) not in (None, previous.get("landscape_fingerprint")):
            return _probe_finished(cfg, job_dir, previous)
        repair_finished(cfg, job_dir, previous)
        log.info("%s: already %s, skipped", job_dir, previous["status"])
        return {**previous, "skipped": True}

    atomic_write_text(job_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(job_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
    tracker = make_tracker(cfg)
    tracker.start(cfg, job_dir, overrides)
    failed = True  # finished as failed unless the job completes (diverged counts as failed)
    try:
        result = _train(cfg, job_dir, overrides, n_parallel, fp, tracker, previous)
        failed = result["status"] != COMPLETED
        tracker.log_result(result, job_dir)
        return result
    finally:
        tracker.finish(failed)


def _train(cfg: DictConfig, job_dir: Path, overrides: list[str], n_parallel: int, fp: str,
           tracker: Tracker, previous: Optional[dict]) -> dict:
    """The body of :func:`train_job` once the job directory exists."""
    result_path = job_dir / "result.json"
    ckpt_dir = job_dir / "checkpoints"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tic = time.perf_counter()

    data = load_data(cfg.dataset)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, data.meta).to(cfg.train.device)
    torch.set_num_threads(cfg.train.threads or default_threads(count_parameters(model), n_parallel))
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.optimizer, cfg.train.epochs)
    # fp32: None, the float32 loop; bf16/fp16: autocast (+ fp16's gradient scaler)
    amp = make_precision(_precision(cfg), cfg.optimizer.name, cfg.train.device)
    state = TrainState(model, optimizer, scheduler, amp=amp)
    prior_seconds, resumed_from = 0.0, None

    ckpt = load_latest(ckpt_dir, warn=lambda m: log.warning("warning: %s", m)) \
        if cfg.resume else None
    if ckpt is not None:
        if ckpt.get("fingerprint") != fp:
            raise CheckpointError(f"checkpoint in {ckpt_dir} was written by a different config")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if amp is not None:  # the gradient scaler's scale and growth tracker (fp16)
            if "precision" not in ckpt:
                raise CheckpointError(f"checkpoint in {ckpt_dir} lacks the {amp.precision} state")
            amp.load_state_dict(ckpt["precision"])
        state.epoch, state.grad_evals = ckpt["epoch"], ckpt["grad_evals"]
        state.history = list(ckpt["history"])
        restore_rng(ckpt["rng"])
        prior_seconds, resumed_from = ckpt["seconds"], ckpt["epoch"]
        log.info("%s: resuming from epoch %d", job_dir, ckpt["epoch"])
    write_jsonl(job_dir / "metrics.jsonl", state.history)
    recorder = _trajectory_recorder(cfg, job_dir, state)

    last_save = [time.perf_counter()]
    every = cfg.probe.every_n_epochs if probe_fingerprint(cfg) else 0
    curvature_data = probe_data(data.train, cfg.probe) if every else None

    def on_epoch_end(st: TrainState, row: dict) -> None:
        last = row["stop_reason"] is not None or st.epoch == cfg.train.epochs
        if recorder is not None:  # before the checkpoint: a resume truncates to it
            recorder.on_epoch_end(st, row)
        if every and st.epoch % every == 0 and row["stop_reason"] != STOP_DIVERGED:
            row.update(curvature_during_training(st.model, curvature_data, cfg.probe))
        due = (st.epoch % cfg.train.checkpoint_every == 0 and
               time.perf_counter() - last_save[0] >= cfg.train.checkpoint_interval_s)
        if last or due:
            last_save[0] = time.perf_counter()
            save_checkpoint(ckpt_dir, st.epoch, {
                "epoch": st.epoch, "grad_evals": st.grad_evals, "history": st.history,
                "model": st.model.state_dict(), "optimizer": st.optimizer.state_dict(),
                "scheduler": st.scheduler.state_dict(), "rng": capture_rng(),
                "seconds": prior_seconds + time.perf_counter() - tic, "fingerprint": fp,
                **({} if st.amp is None else {"precision": st.amp.state_dict()}),
            }, keep=cfg.train.keep_checkpoints)
        write_jsonl(job_dir / "metrics.jsonl", st.history)
        tracker.log_epoch(row)
        log.info("epoch %d/%d  train_loss %.4f  train_acc %.4f  test_loss %.4f  test_acc %.4f",
                 st.epoch, cfg.train.epochs, row["train_loss"], row["train_acc"],
                 row["test_loss"], row["test_acc"])

    n_train = len(data.train)
    batch_size = n_train if cfg.train.full_batch else min(cfg.train.batch_size, n_train)
    stop = fit(state, data.train, data.test, epochs=cfg.train.epochs, batch_size=batch_size,
               seed=cfg.seed, eval_batch_size=cfg.train.eval_batch_size,
               grad_clip=cfg.train.grad_clip, target_train_loss=cfg.train.target_train_loss,
               max_grad_evals=cfg.train.max_grad_evals,
               on_epoch_end=on_epoch_end,
               on_step=None if recorder is None else recorder.on_step,
               progress_factory=_progress_factory(cfg, -(-n_train // batch_size)))

    if state.history:
        final = _final_metrics(state.history[-1])
    else:  # epochs=0: report the initial model
        train_loss, train_acc = evaluate(model, data.train, cfg.train.eval_batch_size)
        test_loss, test_acc = evaluate(model, data.test, cfg.train.eval_batch_size)
        final = _final_metrics({"epoch": 0, "train_loss": train_loss, "train_acc": train_acc,
                                "test_loss": test_loss, "test_acc": test_acc, "grad_evals": 0})
    result = {
        "status": DIVERGED if stop == STOP_DIVERGED else COMPLETED,
        "stop_reason": stop, "final": final, "epochs_completed": state.epoch,
        "wall_time_s": prior_seconds + time.perf_counter() - tic,
        "resumed_from_epoch": resumed_from, "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_params": count_parameters(model), "seed": cfg.seed, "overrides": overrides,
        "dataset": {"name": data.meta.name, "train_size": data.meta.train_size,
                    "test_size": data.meta.test_size},
        "fingerprint": fp, "versions": package_versions(), "git_commit": git_commit(),
        "host": socket.gethostname(), "torch_threads": torch.get_num_threads(),
    }
    result.update(probe_results(cfg, job_dir, model, data, result["status"],
                                probe_fingerprint(cfg), previous))
    result.update(landscape_results(cfg, job_dir, model, data, result, landscape_fingerprint(cfg)))
    write_json(result_path, result)
    draw_figures(cfg, job_dir, result)
    remove_traceback(job_dir)
    return result


def _trajectory_recorder(cfg: DictConfig, job_dir: Path, state: TrainState):
    """The snapshot recorder of ``landscape.trajectory`` (None when off), started at the
    state's epoch (a resumed job drops the snapshots after its checkpoint)."""
    if not _records_trajectory(cfg):
        return None
    recorder = SnapshotRecorder(job_dir / TRAJECTORY_FILE, cfg.landscape.snapshot_every_steps,
                                dtype=str(cfg.landscape.get("snapshot_dtype", "float32")))
    try:
        recorder.begin(state)
    except LandscopeError as exc:  # e.g. resumed with the trajectory newly switched on
        log.warning("warning: %s: no trajectory recorded (%s)", job_dir, exc)
        return None
    return recorder


def probe_checkpoint(cfg: DictConfig, ckpt_path: Path) -> dict:
    """Run the configured probes on one checkpoint file of a job (any epoch, e.g. one
    kept during training); ``result.json`` is left alone.

    Results go to ``probes/<pfp>_<checkpoint stem>.json/.npz`` in the job directory,
    keyed by the checkpoint's SHA-256, so asking again costs nothing.
    Returns ``{"epoch", "checkpoint", "probes", "probe_fingerprint"}``."""
    ckpt_path = Path(ckpt_path)
    job_dir = ckpt_path.parent.parent
    pfp = probe_fingerprint(cfg)
    if pfp is None:
        raise ConfigError("probe=none switches every probe off; choose probe=basic, standard, "
                          "full or pacbayes")
    ckpt = load_checkpoint(ckpt_path)
    model, data = JobDir(job_dir).load_model(ckpt["model"], cfg)
    key = {"checkpoint": ckpt_path.name, "checkpoint_sha256": payload_digest(ckpt_path)}
    scalars = cached_probes(cfg, job_dir, model, data, f"{pfp}_{ckpt_path.stem}", key)
    return {"epoch": ckpt.get("epoch"), "checkpoint": str(ckpt_path), "probes": scalars,
            "probe_fingerprint": pfp}


def probe_finished_job(cfg: DictConfig, job_dir: Path, previous: dict) -> dict:
    """Run the configured probes and landscape on a finished job's final checkpoint (no
    retraining; cached results are reused) and update its result.json and figures, holding
    the job directory's lock (:class:`JobLocked` when another process has it)."""
    job_dir = Path(job_dir)
    with job_lock(job_dir):
        current = read_result(job_dir / "result.json")  # another process may have updated it
        return _probe_finished(cfg, job_dir, current if current is not None else previous)


def _probe_finished(cfg: DictConfig, job_dir: Path, previous: dict) -> dict:
    job = JobDir(job_dir)
    _, ckpt = job.final_checkpoint(previous, fallback=True)
    model, data = job.load_model(ckpt["model"], cfg)
    result = {**previous, **probe_results(cfg, job_dir, model, data, previous["status"],
                                          probe_fingerprint(cfg), previous)}
    result.update(landscape_results(cfg, job_dir, model, data, result, landscape_fingerprint(cfg)))
    write_json(job_dir / "result.json", result)
    draw_figures(cfg, job_dir, result)
    remove_traceback(job_dir)
    return result


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
        problem = record_failure(cfg, job_dir, overrides, message,
                                 isinstance(exc, LandscopeError))
        if problem is not None:  # one line says both
            message += ("; the failure could not be recorded either" if problem == message
                        else f"; the failure could not be recorded ({problem})")
        log.error("error: %s: %s", name, message)
        return {**summary, "status": FAILED, "message": message}
    final = result.get("final", {})
    note = "skipped: already done" if result.get("skipped") else result.get("stop_reason", "")
    return {**summary, "status": result["status"], "message": note,
            "epochs": result.get("epochs_completed"), "test_acc": final.get("test_acc"),
            "train_loss": final.get("train_loss")}


def record_failure(cfg: DictConfig, job_dir: Path, overrides: list[str], message: str,
                   user_error: bool) -> Optional[str]:
    """traceback.txt, and a failed result.json unless one is there that must stay (a finished
    job's, of this config: a failed probe pass or checkpoint read does not undo the training;
    or any, for a user error). A write that fails (a full disk) is never raised: its one-line
    reason is returned for the caller's message (None when everything was recorded)."""
    if not job_dir.is_dir():
        return None
    previous = read_result(job_dir / "result.json", warn=False)
    keep = (user_error and (job_dir / "result.json").exists()) or (
        previous is not None and previous["status"] in FINISHED
        and previous["fingerprint"] == fingerprint(cfg))
    try:
        atomic_write_text(job_dir / "traceback.txt", traceback.format_exc())
        if not keep:
            write_json(job_dir / "result.json", {
                "status": FAILED, "error": message, "seed": cfg.seed,
                "overrides": overrides, "fingerprint": fingerprint(cfg),
                "versions": package_versions(), "git_commit": git_commit()})
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


def format_status_table(summaries: list[dict]) -> str:
    """Plain-text table of job statuses for the end of a multirun."""
    rows = [("job", "status", "epochs", "test_acc", "note")]
    for s in summaries:
        acc = s.get("test_acc")
        rows.append((s["job"], s["status"], "" if s.get("epochs") is None else str(s["epochs"]),
                     "" if acc is None else f"{acc:.4f}", s.get("message") or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    counts: dict[str, int] = {}
    for s in summaries:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    total = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], f"{len(summaries)} jobs: {total}"])


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


def metrics_of(job_dir: Path) -> list[dict]:
    return read_jsonl(Path(job_dir) / "metrics.jsonl")
