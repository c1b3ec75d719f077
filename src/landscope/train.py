"""The training loop: pure and resumable, with no file I/O inside.

:func:`fit` runs epochs from ``state.epoch`` to ``epochs`` and hands every epoch's
metrics to a callback (the job layer checkpoints and writes files there).  All
randomness is explicit: the batch order of epoch ``e`` comes from a generator
seeded with ``(seed, e)``, so a run resumed from an epoch-boundary checkpoint
sees exactly the batches an uninterrupted run would.  An ``augment``
(:mod:`landscope.augment`) maps each training mini-batch, before its step, with draws from
its own generator seeded with ``(seed, e)`` (:func:`~landscope.augment.augment_generator`);
the step's every gradient (SAM's second, LLP's probes) sees that one augmented batch, and
evaluation the un-augmented splits.  Without one the loop is the code it was before.

``TrainState.amp`` selects the training arithmetic (:mod:`landscope.optim.precision`):
``None`` is float32 and runs the same code as before mixed precision existed; a
:class:`~landscope.optim.precision.MixedPrecision` runs the training forward/loss under
autocast (bf16, or fp16 with a gradient scaler).  Evaluation always runs in float32.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

from landscope.augment import augment_generator
from landscope.fingerprints import FINGERPRINT_VERSION
from landscope.losses import n_correct, task_loss
from landscope.optim import is_llp, is_sam
from landscope.optim.precision import MixedPrecision, check_precision

STOP_MAX_EPOCHS = "max_epochs"
STOP_TARGET_LOSS = "target_train_loss"
STOP_MAX_GRAD_EVALS = "max_grad_evals"
STOP_DIVERGED = "diverged"
OOD_KEYS = ("ood_test_loss", "ood_test_acc")  # metrics of the shifted test split

#: a training-batch map ``(x, generator) -> x'`` (:class:`landscope.augment.BasicAugment`)
Augment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epoch: int = 0  # completed epochs
    grad_evals: int = 0  # forward+backward passes over a mini-batch so far
    history: list = field(default_factory=list)  # one metrics dict per completed epoch
    # optimizer steps so far; on resume: sum(row["steps"] for row in history)
    step: int = 0
    amp: Optional[MixedPrecision] = None  # None = float32 training
    # The job layer's checkpoint state: training seconds of earlier processes (from the
    # checkpoint resumed), when this process started, when it saved last, the epoch resumed.
    prior_seconds: float = 0.0
    tic: float = field(default_factory=time.perf_counter)
    last_save: float = field(default_factory=time.perf_counter)
    resumed_from: Optional[int] = None
    # the older hash of this config that a checkpoint resumed from carries, under its result
    # key: fingerprint_v1 (before fingerprint version 2) or fingerprint_earlier (before
    # fingerprints.MARKED_LATER); the job's result keeps it, so that checkpoint still counts
    older_fingerprint: dict = field(default_factory=dict)
    # the sibling directory whose training this job took (landscope.jobreuse), else None
    trained_in: Optional[str] = None

    def seconds(self) -> float:
        """Training seconds so far, earlier processes included."""
        return self.prior_seconds + time.perf_counter() - self.tic

    def checkpoint(self, fingerprint: str) -> dict:
        """The checkpoint payload of this state (RNG states captured now)."""
        from landscope.checkpoint import capture_rng

        return {"epoch": self.epoch, "grad_evals": self.grad_evals, "history": self.history,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": capture_rng(),
                "seconds": self.seconds(), "fingerprint": fingerprint,
                "fingerprint_version": FINGERPRINT_VERSION,
                **({} if self.amp is None else {"precision": self.amp.state_dict()})}

    def restore(self, ckpt: dict, where: str = "the checkpoint") -> None:
        """Resume from a :meth:`checkpoint` payload (RNG states restored)."""
        from landscope.checkpoint import restore_rng
        from landscope.errors import CheckpointError

        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.amp is not None:  # the gradient scaler's scale and growth tracker (fp16)
            if "precision" not in ckpt:
                raise CheckpointError(f"{where} lacks the {self.amp.precision} state")
            self.amp.load_state_dict(ckpt["precision"])
        self.epoch, self.grad_evals = ckpt["epoch"], ckpt["grad_evals"]
        self.history = list(ckpt["history"])
        restore_rng(ckpt["rng"])
        self.prior_seconds, self.resumed_from = ckpt["seconds"], ckpt["epoch"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Generator for the batch order of one epoch, independent of any global RNG."""
    s = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(s)


@contextmanager
def _running_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Batch statistics still normalize, but running averages are not updated (momentum 0)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, split, batch_size: int) -> tuple[float, float]:
    """Mean task loss (the job's ``loss``) and accuracy over a whole split, in eval mode
    (always float32)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    total_loss, correct, n = 0.0, 0, 0
    for x, y in split.batches(batch_size, shuffle=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        total_loss += task_loss(model, logits, y, "sum").item()
        correct += n_correct(model, logits, y)
        n += y.numel()
    model.train(was_training)
    return total_loss / n, correct / n


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   grad_clip: Optional[float] = None,
                   amp: Optional[MixedPrecision] = None) -> tuple[Tensor, int]:
    """One optimizer step on the mini-batch ``(x, y)`` (model in train mode, data on its
    device): the task loss and its gradient, then SAM's second gradient at ``w + e`` or
    LLP's finite-difference probes (both with BatchNorm statistics frozen at ``w``), gradient
    clipping, the update (LLP first gets the loss for its meta-model: ``opt.observe``,
    a no-op when it is off). Returns the mini-batch loss at ``w`` (detached) and the gradient
    evaluations spent. With ``amp`` the same under autocast (:func:`mixed_precision_step`)."""
    if amp is not None:
        return mixed_precision_step(model, opt, x, y, amp, grad_clip)
    params = [p for p in model.parameters() if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    loss = task_loss(model, model(x), y)
    loss.backward()
    grad_evals = 1
    if is_sam(opt):
        opt.first_step()
        opt.zero_grad(set_to_none=True)
        with _running_stats_frozen(model):  # BatchNorm statistics come from w, not w + e
            task_loss(model, model(x), y).backward()
        grad_evals += 1
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(params, grad_clip)
        opt.second_step()
    else:
        if is_llp(opt):  # finite-difference probes at w + eps d on this batch, before clipping
            opt.observe(loss.detach())  # the meta-model's loss stream (read only when it is on)
            with _running_stats_frozen(model):
                grad_evals += opt.probe(lambda: task_loss(model, model(x), y).backward())
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
    return loss.detach(), grad_evals


def mixed_precision_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                         amp: MixedPrecision,
                         grad_clip: Optional[float] = None) -> tuple[Tensor, int]:
    """:func:`optimizer_step` with the forward and loss under ``amp.autocast()``. With fp16
    the loss is scaled before ``backward`` and the gradients unscaled before SAM's
    perturbation, clipping and the step; a non-finite gradient skips the step (see
    :mod:`landscope.optim.precision`). LLP is refused before training starts."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    with amp.autocast():
        loss = task_loss(model, model(x), y)
    amp.backward(loss)
    grad_evals = 1
    if is_sam(opt):
        amp.unscale(opt)  # the perturbation is computed from the true gradient
        if amp.gradients_finite(params):  # else: no perturbation, no step, the scale backs off
            opt.first_step()
            opt.zero_grad(set_to_none=True)
            with _running_stats_frozen(model), amp.autocast():
                amp.backward(task_loss(model, model(x), y))
            grad_evals += 1
            amp.unscale(opt.base_optimizer)  # a second optimizer object: its own inf check
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            opt.second_step(base_step=lambda: amp.step(opt.base_optimizer))
    else:
        if is_llp(opt):  # refused up front by make_precision; a direct caller gets the same
            check_precision(amp.precision, "llp")
        if grad_clip is not None:
            amp.unscale(opt)
            nn.utils.clip_grad_norm_(params, grad_clip)
        amp.step(opt)
    amp.update()
    return loss.detach(), grad_evals


def train_epoch(state: TrainState, split, batch_size: int, generator: torch.Generator,
                grad_clip: Optional[float] = None, progress: Any = None,
                on_step: Optional[Callable[[TrainState], None]] = None,
                max_grad_evals: Optional[int] = None, augment: Optional[Augment] = None,
                augment_rng: Optional[torch.Generator] = None) -> dict:
    """One pass over ``split``. Returns the running (mini-batch mean) loss and the
    number of steps; the loss is non-finite if training diverged (stops early).
    ``augment(x, augment_rng)`` maps each mini-batch (on the model's device) before its step.
    ``on_step(state)`` runs after every optimizer step (``state.step`` already counts it).
    Stops after the step that brings ``state.grad_evals`` to ``max_grad_evals``.
    With LLP the epoch's averaged probe metrics are under ``"optimizer"``, with fp16 the loss
    scale and the skipped steps under ``"precision"``."""
    model, opt = state.model, state.optimizer
    model.train()
    device = _device_of(model)
    loss_sum, n_seen, steps = 0.0, 0, 0
    for x, y in split.batches(batch_size, shuffle=True, generator=generator):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if augment is not None:
            x = augment(x, augment_rng)
        loss, grad_evals = optimizer_step(model, opt, x, y, grad_clip, state.amp)
        state.grad_evals += grad_evals
        state.step += 1
        if on_step is not None:
            on_step(state)
        value = loss.item()
        steps += 1
        loss_sum += value * y.numel()
        n_seen += y.numel()
        if progress is not None:
            progress.update(1)
        if not math.isfinite(value):
            break
        if max_grad_evals is not None and state.grad_evals >= max_grad_evals:
            break
    out = {"running_loss": loss_sum / max(n_seen, 1), "steps": steps}
    if is_llp(opt):
        out["optimizer"] = opt.pop_epoch_metrics()
    if state.amp is not None:
        out["precision"] = state.amp.pop_metrics()
    return out


def fit(state: TrainState, train_split, test_split, *, epochs: int, batch_size: int, seed: int,
        eval_batch_size: int = 2048, grad_clip: Optional[float] = None,
        target_train_loss: Optional[float] = None, max_grad_evals: Optional[int] = None,
        on_epoch_end: Optional[Callable[[TrainState, dict], None]] = None,
        on_step: Optional[Callable[[TrainState], None]] = None,
        progress_factory: Optional[Callable[[int, int], Any]] = None,
        augment: Optional[Augment] = None, ood_split: Any = None) -> str:
    """Train until ``epochs``, the target train loss, the gradient-evaluation budget
    ``max_grad_evals`` (checked after every step, so the last epoch may be partial and the
    budget overshot by at most one step's evaluations), or divergence; return the stop reason.

    ``batch_size`` larger than the training set means full-batch gradient descent.
    Metrics per epoch: train/test loss and accuracy (exact, eval mode, whole splits),
    the running mini-batch loss, learning rate, steps, gradient evaluations, seconds;
    with LLP also its epoch averages (``llp_*``: curvature estimates, mean step size); with
    fp16 the loss scale at the epoch's end and the steps skipped for an inf/NaN gradient
    (``loss_scale``, ``skipped_steps``); with an ``ood_split`` (the shifted test split of
    :mod:`landscope.data_shift`) its loss and accuracy (``ood_test_loss``, ``ood_test_acc``),
    which change nothing else.
    ``on_step(state)`` runs after every optimizer step, ``on_epoch_end(state, row)``
    after every epoch; ``augment`` maps the training mini-batches (see the module docstring).
    """
    if state.history:
        last = state.history[-1]
        if last.get("stop_reason"):
            return last["stop_reason"]
    for epoch in range(state.epoch, epochs):
        tic = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]
        bar = progress_factory(epoch, epochs) if progress_factory else None
        try:
            run = train_epoch(state, train_split, batch_size, epoch_generator(seed, epoch),
                              grad_clip, bar, on_step, max_grad_evals, augment,
                              None if augment is None else augment_generator(seed, epoch))
        finally:
            if bar is not None:
                bar.close()
        state.scheduler.step()
        metrics = _epoch_metrics(state.model, (train_split, test_split, ood_split),
                                 eval_batch_size, not math.isfinite(run["running_loss"]))
        diverged = not math.isfinite(metrics["train_loss"])
        stop = _stop_reason(diverged, metrics["train_loss"], target_train_loss,
                            epoch + 1 == epochs, state.grad_evals, max_grad_evals)
        state.epoch = epoch + 1
        row = {"epoch": state.epoch, "lr": lr, **metrics,
               "running_loss": run["running_loss"], "steps": run["steps"],
               "grad_evals": state.grad_evals, **run.get("optimizer", {}),
               **run.get("precision", {}),
               "seconds": time.perf_counter() - tic, "stop_reason": stop}
        state.history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(state, row)
        if stop is not None:
            return stop
    return STOP_MAX_EPOCHS


def _epoch_metrics(model: nn.Module, splits: tuple, batch_size: int, diverged: bool) -> dict:
    """Loss and accuracy in eval mode on the train, test and (when not None) shifted test
    splits (``train_loss``, ``train_acc``, ``test_*``, ``ood_test_*``); NaN after a divergence."""
    out: dict = {}
    for prefix, split in zip(("train", "test", "ood_test"), splits):
        if split is not None:
            nan = (float("nan"), float("nan"))
            out[f"{prefix}_loss"], out[f"{prefix}_acc"] = nan if diverged else evaluate(
                model, split, batch_size)
    return out


def _stop_reason(diverged: bool, train_loss: float, target_train_loss: Optional[float],
                 last_epoch: bool, grad_evals: int, max_grad_evals: Optional[int]) -> Optional[str]:
    """Why training stops after an epoch (None: it goes on), in order of precedence."""
    if diverged:
        return STOP_DIVERGED
    if target_train_loss is not None and train_loss <= target_train_loss:
        return STOP_TARGET_LOSS
    if last_epoch:
        return STOP_MAX_EPOCHS
    if max_grad_evals is not None and grad_evals >= max_grad_evals:
        return STOP_MAX_GRAD_EVALS
    return None
