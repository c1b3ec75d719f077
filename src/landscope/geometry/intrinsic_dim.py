"""Intrinsic dimension of an objective landscape (Li, Farkhoor, Liu & Yosinski 2018,
"Measuring the intrinsic dimension of objective landscapes", ICLR).

Training happens in a random d-dimensional affine subspace of parameter space::

    theta = theta0 + P theta_d,        theta_d in R^d (starts at 0),  P in R^{D x d}

with ``theta0`` the model's own (normally freshly initialized) parameters and ``P`` fixed.
``d_int90`` is the smallest ``d`` whose subspace training reaches 90% of the full model's
test accuracy (the paper's convention; :func:`intrinsic_dimension` also reports the
absolute convention, test accuracy >= 0.90, and a value interpolated in log d).

The projections (``dense``, ``sparse``, ``fastfood``; each seeded, applied matrix-free,
columns of unit norm exactly or in expectation) are in :mod:`landscope.geometry.projections`.

Training (:func:`train_subspace`): Adam on ``theta_d`` alone (the paper trains its subspace
with standard optimizers; Adam needs no per-d learning-rate tuning), mini-batches in the
order :func:`landscope.train.epoch_generator` gives ``(seed, epoch)``. The forward pass is
``torch.func.functional_call`` of a private copy of the model with
``unflatten(theta0 + P theta_d)``, so the model passed in is never touched.
BatchNorm: during subspace training the copy runs in train mode (batch statistics; its
running averages follow as in ordinary training); for the final evaluation the running
statistics are re-estimated at the final point with one cumulative-average pass over
``bn_size`` training samples (``bn="recompute"``, default), or the averages accumulated
during training are kept (``bn="running"``). Evaluation is in eval mode on whole splits.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscope.data import TensorSplit
from landscope.errors import LandscopeError
from landscope.geometry.projections import PROJECTIONS, RandomProjection, check_dim, make_projection
from landscope.geometry.space import ParamSpace
from landscope.losses import n_correct, task_loss
from landscope.probes.probe_data import ProbeData
from landscope.progress import bar
from landscope.train import epoch_generator

SUBSPACE_BN = ("recompute", "running")


# ---------------------------------------------------------------------------- training
@dataclass
class SubspaceResult:
    """One subspace training run: final train/test loss and accuracy (eval mode, whole
    splits), gradient evaluations (mini-batch forward+backward passes), optimizer steps,
    ``||theta_d||``, whether the loss diverged (then the metrics are NaN), seconds."""

    d: int
    projection: str
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    grad_evals: int
    steps: int
    theta_d_norm: float
    diverged: bool
    seconds: float


class SubspaceModel:
    """``loss(theta_d, x, y)`` of the model at ``theta0 + P theta_d`` (differentiable in
    ``theta_d``), on a private copy of ``model``."""

    def __init__(self, model: nn.Module, projection: RandomProjection) -> None:
        self.space = ParamSpace(model)
        if projection.D != self.space.dim:
            raise LandscopeError(f"projection has D={projection.D}, the model "
                                 f"{self.space.dim} parameters")
        self.projection = projection
        self.work = copy.deepcopy(model)
        self.work.requires_grad_(False)
        self.theta0 = self.space.theta0

    def params(self, theta_d: Tensor) -> dict[str, Tensor]:
        return self.space.unflatten(self.theta0 + self.projection.apply(theta_d))

    def theta(self, theta_d: Tensor) -> Tensor:
        with torch.no_grad():
            return self.theta0 + self.projection.apply(theta_d)

    def loss(self, theta_d: Tensor, x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(self.work, self.params(theta_d), (x,))
        return task_loss(self.work, out, y)


def _eval_split(space: ParamSpace, split: Any, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy of the working copy over a Split or ProbeData (eval mode)."""
    if isinstance(split, ProbeData):
        ev = space.evaluate_current(split)
        return ev.loss, ev.acc
    work = space.working_model
    work.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in split.batches(batch_size, shuffle=False):
            out = work(x.to(space.device, space.dtype))
            y = y.to(space.device)
            total += float(task_loss(work, out, y, "sum"))
            correct += n_correct(work, out, y)
            n += len(y)
    return total / n, correct / n


def _adam_epochs(sub: SubspaceModel, theta_d: Tensor, opt: torch.optim.Optimizer,
                 train_split: Any, epochs: int, batch_size: int, seed: int
                 ) -> tuple[int, int, bool]:
    """``epochs`` shuffled passes of ``opt`` on ``theta_d``: (gradient evaluations, steps,
    diverged); a non-finite batch loss ends the training before its step."""
    grad_evals, steps, diverged = 0, 0, False
    for epoch in range(epochs):
        for x, y in train_split.batches(batch_size, shuffle=True,
                                        generator=epoch_generator(seed, epoch)):
            x, y = x.to(theta_d.device, theta_d.dtype), y.to(theta_d.device)
            opt.zero_grad(set_to_none=True)
            loss = sub.loss(theta_d, x, y)
            loss.backward()
            grad_evals += 1
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.step()
            steps += 1
        if diverged:
            break
    return grad_evals, steps, diverged


def _subspace(model: nn.Module, d: int, projection: Any, seed: int, lr: float
              ) -> tuple[SubspaceModel, Tensor, torch.optim.Optimizer]:
    """The d-dimensional subspace of ``model`` (``projection``: a name, built with seed
    ``(seed, d)``, or a :class:`RandomProjection`) in train mode, ``theta_d`` at 0 and its
    Adam(lr)."""
    first = next(iter(model.parameters()), None)
    if first is None:
        raise LandscopeError("the model has no parameters")
    D = sum(p.numel() for p in model.parameters())
    check_dim(d, D)
    if not isinstance(projection, RandomProjection):
        pseed = int(np.random.SeedSequence([int(seed), int(d)]).generate_state(1)[0])
        projection = make_projection(projection, D, d, pseed, first.dtype, first.device)
    elif projection.d != d:
        raise LandscopeError(f"projection has d={projection.d}, asked for d={d}")
    sub = SubspaceModel(model, projection)
    sub.work.train()
    theta_d = torch.zeros(d, dtype=first.dtype, device=first.device, requires_grad=True)
    return sub, theta_d, torch.optim.Adam([theta_d], lr=lr)


def step_seconds(model: nn.Module, d: int, projection: Any, train_split: Any,
                 batch_size: int, seed: int, lr: float = 0.01, steps: int = 3) -> float:
    """Seconds of one step of :func:`train_subspace` in the d-dimensional subspace: the first
    ``steps + 1`` mini-batches of its epoch 0 trained as it trains them, timed after the
    first one alone (warm); the model is left untouched."""
    sub, theta_d, opt = _subspace(model, d, projection, seed, lr)
    batches = list(itertools.islice(train_split.batches(
        batch_size, shuffle=True, generator=epoch_generator(seed, 0)), steps + 1))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    _adam_epochs(sub, theta_d, opt, TensorSplit(*batches[0]), 1, batch_size, seed)
    tic = time.perf_counter()
    _, done, _ = _adam_epochs(sub, theta_d, opt, TensorSplit(x, y), 1, batch_size, seed)
    return (time.perf_counter() - tic) / max(done, 1)


def train_subspace(model: nn.Module, d: int, projection: Any, train_split: Any, test_split: Any,
                   epochs: int = 10, lr: float = 0.01, batch_size: int = 128, seed: int = 0, *,
                   eval_batch_size: int = 2048, bn: str = "recompute",
                   bn_size: Optional[int] = 2048) -> SubspaceResult:
    """Train ``theta_d`` (from 0) with Adam(lr) for ``epochs`` passes over ``train_split``
    (a :class:`~landscope.data.Split`), then evaluate on ``train_split`` and ``test_split``
    (Splits or :class:`ProbeData`). ``projection`` is a name (built with seed
    ``(seed, d)``) or a :class:`RandomProjection`. See the module doc for BatchNorm."""
    if epochs < 0 or not lr > 0 or batch_size < 1:
        raise LandscopeError(f"subspace training needs epochs >= 0, lr > 0, batch_size >= 1 "
                             f"(got {epochs}, {lr}, {batch_size})")
    if bn not in SUBSPACE_BN:
        raise LandscopeError(f"subspace bn must be one of {', '.join(SUBSPACE_BN)} (got {bn!r})")
    tic = time.perf_counter()
    sub, theta_d, opt = _subspace(model, d, projection, seed, lr)
    projection = sub.projection
    grad_evals, steps, diverged = _adam_epochs(sub, theta_d, opt, train_split, epochs,
                                               batch_size, seed)
    theta = sub.theta(theta_d.detach())
    nan = float("nan")
    if diverged or not torch.isfinite(theta).all():
        metrics = (nan, nan, nan, nan)
        diverged = True
    else:
        space = sub.space
        buffers = {n: b.detach().clone() for n, b in sub.work.named_buffers()}
        space.set_point(theta, buffers)
        if bn == "recompute" and space.has_batchnorm:
            bn_data = ProbeData.from_split(train_split, bn_size, seed, eval_batch_size) \
                if not isinstance(train_split, ProbeData) else train_split
            space.recompute_batchnorm(bn_data)
        metrics = (*_eval_split(space, train_split, eval_batch_size),
                   *_eval_split(space, test_split, eval_batch_size))
    return SubspaceResult(int(d), projection.name, *metrics, grad_evals=grad_evals,
                          steps=steps, theta_d_norm=float(theta_d.detach().norm()),
                          diverged=diverged, seconds=time.perf_counter() - tic)


# ---------------------------------------------------------------------------- search
@dataclass
class IntrinsicDimResult:
    """Subspace training over a grid of ``d`` and the d_int90 estimates.

    ``d90_relative``: smallest ``d`` with ``test_acc >= fraction * reference_acc`` (Li et
    al.'s d_int90, ``reference_acc`` = the full model's test accuracy);
    ``d90_relative_interp``: that crossing interpolated linearly in ``log d`` between it and
    the grid point below it (``= dims[0]`` when already the first point crosses);
    ``d90_absolute`` / ``d90_absolute_interp``: the same with the threshold ``absolute``
    (0.90). ``None`` / NaN when no ``d`` reaches the threshold. Scanned in ascending ``d``;
    the first crossing counts.

    Arrays (:meth:`arrays`): ``dims``, ``test_acc``, ``train_acc``, ``test_loss``,
    ``train_loss``, ``grad_evals``. Scalars (:meth:`scalars`, all prefixed ``intrinsic_``):
    ``d90_relative``, ``d90_relative_interp``, ``d90_absolute``, ``d90_absolute_interp``,
    ``reference_acc``, ``threshold_relative`` (``fraction * reference_acc``),
    ``best_test_acc``, ``dims_evaluated``, ``grad_evals`` (total).
    """

    dims: list[int]
    runs: list[SubspaceResult]
    reference_acc: float
    fraction: float = 0.9
    absolute: float = 0.9
    projection: str = ""
    d90_relative: Optional[int] = None
    d90_relative_interp: Optional[float] = None
    d90_absolute: Optional[int] = None
    d90_absolute_interp: Optional[float] = None

    def arrays(self) -> dict[str, np.ndarray]:
        col = lambda k: np.array([getattr(r, k) for r in self.runs], np.float64)  # noqa: E731
        return {"dims": np.array(self.dims, np.int64), "test_acc": col("test_acc"),
                "train_acc": col("train_acc"), "test_loss": col("test_loss"),
                "train_loss": col("train_loss"),
                "grad_evals": np.array([r.grad_evals for r in self.runs], np.int64)}

    def scalars(self) -> dict[str, float]:
        f = lambda v: float("nan") if v is None else float(v)  # noqa: E731
        acc = [r.test_acc for r in self.runs if math.isfinite(r.test_acc)]
        return {"intrinsic_d90_relative": f(self.d90_relative),
                "intrinsic_d90_relative_interp": f(self.d90_relative_interp),
                "intrinsic_d90_absolute": f(self.d90_absolute),
                "intrinsic_d90_absolute_interp": f(self.d90_absolute_interp),
                "intrinsic_reference_acc": float(self.reference_acc),
                "intrinsic_threshold_relative": self.fraction * float(self.reference_acc),
                "intrinsic_best_test_acc": max(acc) if acc else float("nan"),
                "intrinsic_dims_evaluated": len(self.runs),
                "intrinsic_grad_evals": sum(r.grad_evals for r in self.runs)}


def crossing(dims: Sequence[int], acc: Sequence[float], threshold: float
             ) -> tuple[Optional[int], Optional[float]]:
    """First ``d`` (ascending) with ``acc >= threshold`` and the log-d interpolated
    crossing between it and its predecessor; ``(None, None)`` when none reaches it."""
    for i, (d, a) in enumerate(zip(dims, acc)):
        if math.isfinite(a) and a >= threshold:
            if i == 0:
                return int(d), float(d)
            d0, a0 = dims[i - 1], acc[i - 1]
            if not math.isfinite(a0) or a == a0:
                return int(d), float(d)
            t = (threshold - a0) / (a - a0)
            return int(d), float(math.exp(math.log(d0) + t * (math.log(d) - math.log(d0))))
    return None, None


def intrinsic_dimension(model: nn.Module, dims: Sequence[int], reference_acc: float,
                        train_split: Any, test_split: Any, projection: Any = "sparse",
                        epochs: int = 10, lr: float = 0.01, batch_size: int = 128,
                        seed: int = 0, *, fraction: float = 0.9, absolute: float = 0.9,
                        progress: Optional[str] = None, **kwargs: Any) -> IntrinsicDimResult:
    """:func:`train_subspace` for every ``d`` in ``dims`` (sorted, deduplicated) from the
    same ``theta0`` (``model``: for Li et al.'s measure, the *initialized*, untrained model
    with the training run's seed) and the d_int90 estimates (see
    :class:`IntrinsicDimResult`). ``reference_acc``: the fully trained model's test accuracy.
    ``progress`` labels a tqdm bar of the subspace trainings (None: no bar); ``kwargs`` go to
    :func:`train_subspace`."""
    grid = sorted({int(d) for d in dims}) if dims else []
    if not grid or any(d <= 0 for d in grid):
        raise LandscopeError(f"intrinsic dims must be positive integers (got {list(dims)})")
    if not 0 < float(reference_acc) <= 1:
        raise LandscopeError(f"reference_acc must be in (0, 1] (got {reference_acc})")
    if not 0 < fraction <= 1 or not 0 < absolute <= 1:
        raise LandscopeError(f"fraction and absolute thresholds must be in (0, 1] "
                             f"(got {fraction}, {absolute})")
    name = str(projection)
    if name not in PROJECTIONS:
        raise LandscopeError(f"unknown projection {name!r}; choose one of "
                             f"{', '.join(PROJECTIONS)}")
    D = sum(p.numel() for p in model.parameters())
    if grid[-1] > D:
        raise LandscopeError(f"subspace dimension d={grid[-1]} exceeds the {D} parameters")
    shown = bar(progress, len(grid), unit="subspace")
    runs = []
    try:
        for d in grid:
            runs.append(train_subspace(model, d, name, train_split, test_split, epochs, lr,
                                       batch_size, seed, **kwargs))
            shown.update(1)
    finally:
        shown.close()
    acc = [r.test_acc for r in runs]
    rel, rel_i = crossing(grid, acc, fraction * float(reference_acc))
    ab, ab_i = crossing(grid, acc, absolute)
    return IntrinsicDimResult(grid, runs, float(reference_acc), fraction, absolute, name,
                              rel, rel_i, ab, ab_i)
