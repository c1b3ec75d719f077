"""Mode connectivity: loss and error along paths between two parameter vectors.

Two paths from ``theta_a`` (t = 0) to ``theta_b`` (t = 1), e.g. two seeds of one config:

* **linear**: ``theta(t) = (1 - t) theta_a + t theta_b`` (:func:`linear_path`);
* **quadratic Bezier** with one trained bend ``theta_c`` (Garipov et al. 2018, "Loss
  surfaces, mode connectivity, and fast ensembling of DNNs"):
  ``phi(t) = (1-t)^2 theta_a + 2t(1-t) theta_c + t^2 theta_b`` (:func:`train_bezier`, then
  :func:`bezier_path`).

The endpoints are evaluated exactly: at ``t = 0`` and ``t = 1`` the evaluated vector *is*
``theta_a`` / ``theta_b`` (bit for bit), not a rounded mixture.  ``ts`` must start at 0,
end at 1 and increase (:func:`path_ts` makes an evenly spaced grid with exact ends).

**BatchNorm.** ``bn="recompute"`` re-estimates the running statistics at every t on
``bn_data`` (default: the train data) with :meth:`ParamSpace.recompute_batchnorm`, as
Garipov et al. do: the default for Bezier curves and the right choice for BN models (a
mixture of two networks has neither network's activation statistics). ``bn="keep"`` uses
buffers interpolated linearly in t between ``buffers_a`` and ``buffers_b`` (default: the
space's model's own; floating buffers mixed as ``(1-t) b_a + t b_b``, integer ones such as
``num_batches_tracked``, unused in eval mode, from the nearer endpoint), so each endpoint
has its own model's statistics.  Models without BatchNorm ignore the option.

**Bend training** (:func:`train_bezier`): only ``theta_c`` is trained, from the midpoint
``(theta_a + theta_b) / 2`` (the curve starts as the straight line).  Each mini-batch draws
``t ~ U[0, 1]`` from a generator seeded with ``seed``; batch orders come from
:func:`landscope.train.epoch_generator` ``(seed, epoch)``.  The loss at ``phi(t)`` is the
task loss through ``torch.func.functional_call`` on a private copy of the model in train
mode, BatchNorm normalising by the batch statistics and writing no running statistics (the
model passed in is never modified).  Optimizer: Adam (default; insensitive to the loss's
scale, which differs a lot between tasks) or SGD with momentum 0.9, the learning rate
cosine-annealed from ``lr`` to 0 over all steps, so the bend settles instead of hovering at
the noise level of the random ``t``.  One mini-batch forward+backward is one gradient
evaluation.

**Scalars** (:meth:`PathResult.scalars`), for ``<split>`` in ``train``, ``test`` (test only
when test data were given) and ``<metric>`` in ``loss``, ``error`` (error = 1 - accuracy),
each computed over the evaluated ``ts`` (``M(t)`` is the metric at ``t``):

=======================================  ===================================================
``<prefix>_<split>_<metric>_barrier_mean``    ``max_t M(t) - (M(0) + M(1)) / 2`` (against the
                                              mean of the endpoints; Frankle et al. 2020)
``<prefix>_<split>_<metric>_barrier_interp``  ``max_t [M(t) - ((1-t) M(0) + t M(1))]``
                                              (against the linear interpolation of the
                                              endpoint values; Entezari et al. 2022)
``<prefix>_<split>_<metric>_max``             ``max_t M(t)``
``<prefix>_<split>_<metric>_argmax_t``        the t of that maximum (the first one)
``<prefix>_<split>_<metric>_mean``            mean of ``M`` over the evaluated points
``<prefix>_<split>_<metric>_integral``        trapezoid rule for ``int_0^1 M(t) dt``
``<prefix>_<split>_<metric>_start`` / ``_end``  ``M(0)``, ``M(1)``
``<prefix>_points``                           number of evaluated points
``<prefix>_grad_evals``                       bend-training gradient evaluations (0: linear)
=======================================  ===================================================

Both barriers are >= 0 because the endpoints are among the evaluated points.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from landscope.data import Split, TensorSplit
from landscope.errors import LandscopeError
from landscope.geometry.space import BN_MODES, ParamSpace
from landscope.losses import task_loss
from landscope.models.blocks import frozen_batchnorm_stats
from landscope.probes.probe_data import ProbeData
from landscope.progress import bar
from landscope.train import epoch_generator

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SPLITS: tuple[str, ...] = ("train", "test")
METRICS: tuple[str, ...] = ("loss", "error")
BendData = Union[Split, ProbeData, Sequence[tuple[Tensor, Tensor]]]


# ---------------------------------------------------------------------- path summaries
def path_ts(points: int) -> np.ndarray:
    """``points`` evenly spaced values in [0, 1]; the ends are exactly 0.0 and 1.0."""
    if int(points) < 2:
        raise LandscopeError(f"a path needs at least 2 points (got {points})")
    return np.arange(int(points), dtype=np.float64) / (int(points) - 1)


def check_ts(ts) -> np.ndarray:
    """``ts`` as float64 array; raise unless 1-D, increasing, from exactly 0 to exactly 1."""
    t = np.asarray(ts, dtype=np.float64)
    if t.ndim != 1 or len(t) < 2:
        raise LandscopeError(f"ts must be a 1-D sequence of at least 2 values (got shape "
                             f"{tuple(t.shape)})")
    if t[0] != 0.0 or t[-1] != 1.0 or not np.all(np.diff(t) > 0):
        raise LandscopeError("ts must increase strictly from exactly 0 to exactly 1 "
                             f"(got {t[0]!r} .. {t[-1]!r})")
    return t


def _path_values(values) -> np.ndarray:
    """The values along a path as float64, a non-finite one (a NaN loss where the path
    leaves the region the model can evaluate) as +inf: the barrier is then infinite, never
    dropped by ``max`` or read as flat."""
    v = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(v), np.inf, v)


def barrier_mean(values) -> float:
    """``max_t v(t) - (v(0) + v(1)) / 2``: barrier against the mean of the endpoints."""
    v = _path_values(values)
    return float(np.max(v) - 0.5 * (v[0] + v[-1]))


def barrier_interp(ts, values) -> float:
    """``max_t [v(t) - ((1-t) v(0) + t v(1))]``: barrier against the linear interpolation
    of the endpoint values."""
    t = np.asarray(ts, dtype=np.float64)
    v = _path_values(values)
    return float(np.max(v - ((1.0 - t) * v[0] + t * v[-1])))


def trapezoid(ts, values) -> float:
    """Trapezoid rule for ``int v(t) dt`` over the points ``ts``."""
    t = np.asarray(ts, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    return float(np.sum(0.5 * (v[1:] + v[:-1]) * np.diff(t)))


def path_stats(ts, values) -> dict[str, float]:
    """Barriers (both conventions), max, t of the max, mean, integral, start and end."""
    t = np.asarray(ts, dtype=np.float64)
    v = _path_values(values)
    return {"barrier_mean": barrier_mean(v), "barrier_interp": barrier_interp(t, v),
            "max": float(np.max(v)), "argmax_t": float(t[int(np.argmax(v))]),
            "mean": float(np.mean(v)), "integral": trapezoid(t, v),
            "start": float(v[0]), "end": float(v[-1])}


@dataclass(frozen=True)
class PathResult:
    """Loss and accuracy at each ``t`` of a path (test arrays only when test data were given).

    ``bn`` is the BatchNorm mode used and ``has_batchnorm`` whether it mattered;
    ``grad_evals`` counts bend-training gradient evaluations (0 for the linear path).
    """

    kind: str
    t: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: Optional[np.ndarray]
    test_acc: Optional[np.ndarray]
    bn: str
    has_batchnorm: bool
    grad_evals: int = 0

    def arrays(self) -> dict[str, np.ndarray]:
        """``t``, ``train_loss``, ``train_acc`` (and ``test_loss``, ``test_acc``), each (P,)."""
        out = {"t": self.t, "train_loss": self.train_loss, "train_acc": self.train_acc}
        if self.test_loss is not None and self.test_acc is not None:
            out.update(test_loss=self.test_loss, test_acc=self.test_acc)
        return out

    def scalars(self, prefix: Optional[str] = None) -> dict[str, float]:
        """Summary scalars named as in the module docstring (prefix default: ``kind``)."""
        p = self.kind if prefix is None else prefix
        arrays = self.arrays()
        out: dict[str, float] = {f"{p}_points": len(self.t), f"{p}_grad_evals": self.grad_evals}
        for split in SPLITS:
            if f"{split}_loss" not in arrays:
                continue
            series = {"loss": arrays[f"{split}_loss"], "error": 1.0 - arrays[f"{split}_acc"]}
            for metric in METRICS:
                for key, value in path_stats(self.t, series[metric]).items():
                    out[f"{p}_{split}_{metric}_{key}"] = value
        return out


# ---------------------------------------------------------------------- points on paths
def linear_point(theta_a: Tensor, theta_b: Tensor, t: float) -> Tensor:
    """``(1-t) theta_a + t theta_b``; exactly ``theta_a`` at t=0 and ``theta_b`` at t=1."""
    if t == 0.0:
        return theta_a.clone()
    if t == 1.0:
        return theta_b.clone()
    return (1.0 - t) * theta_a + t * theta_b


def bezier_point(theta_a: Tensor, theta_b: Tensor, theta_c: Tensor, t: float) -> Tensor:
    """``(1-t)^2 theta_a + 2t(1-t) theta_c + t^2 theta_b``; exact endpoints at t=0 and t=1."""
    if t == 0.0:
        return theta_a.clone()
    if t == 1.0:
        return theta_b.clone()
    return (1.0 - t) ** 2 * theta_a + 2.0 * t * (1.0 - t) * theta_c + t ** 2 * theta_b


def _mixed_buffers(space: ParamSpace, buffers_a: Optional[Mapping[str, Tensor]],
                   buffers_b: Optional[Mapping[str, Tensor]], t: float) -> dict[str, Tensor]:
    a = space.buffers0 if buffers_a is None else buffers_a
    b = space.buffers0 if buffers_b is None else buffers_b
    out = {}
    for name in space.buffers0:
        if name not in a or name not in b:
            raise LandscopeError(f"buffer {name} missing from buffers_a or buffers_b")
        ba, bb = a[name], b[name]
        if t == 0.0 or t == 1.0 or not ba.is_floating_point():
            out[name] = ba if t < 0.5 else bb
        else:
            out[name] = (1.0 - t) * ba + t * bb
    return out


def _vector(space: ParamSpace, theta: Tensor, what: str) -> Tensor:
    return _flat_vector(theta, what, dim=space.dim, device=space.device, dtype=space.dtype)


def _walk(space: ParamSpace, kind: str, point: Callable[[float], Tensor], ts,
          train: ProbeData, test: Optional[ProbeData], bn: str, bn_data: Optional[ProbeData],
          buffers_a, buffers_b, grad_evals: int = 0, progress: Optional[str] = None):
    t = check_ts(ts)
    if bn not in BN_MODES:
        raise LandscopeError(f"bn must be one of {', '.join(BN_MODES)} (got {bn!r})")
    if not isinstance(train, ProbeData) or not (test is None or isinstance(test, ProbeData)):
        raise LandscopeError("train (and test, when given) must be ProbeData")
    sets = [train] if test is None else [train, test]
    values = np.empty((len(t), len(sets), 2), dtype=np.float64)
    points = bar(progress, len(t), unit="point")
    for i, ti in enumerate(t.tolist()):
        if bn == "recompute":
            space.set_point(point(ti))
            space.recompute_batchnorm(train if bn_data is None else bn_data)
        else:
            space.set_point(point(ti), _mixed_buffers(space, buffers_a, buffers_b, ti))
        for j, data in enumerate(sets):
            ev = space.evaluate_current(data)
            values[i, j] = (ev.loss, ev.acc)
        points.update()
    points.close()
    space.set_point(space.theta0)  # leave the working copy at the model's own point
    has_test = test is not None
    return PathResult(kind=kind, t=t, train_loss=values[:, 0, 0], train_acc=values[:, 0, 1],
                      test_loss=values[:, 1, 0] if has_test else None,
                      test_acc=values[:, 1, 1] if has_test else None,
                      bn=bn, has_batchnorm=space.has_batchnorm, grad_evals=grad_evals)


def linear_path(space: ParamSpace, theta_a: Tensor, theta_b: Tensor, ts,
                train: ProbeData, test: Optional[ProbeData] = None, bn: str = "keep",
                bn_data: Optional[ProbeData] = None,
                buffers_a: Optional[Mapping[str, Tensor]] = None,
                buffers_b: Optional[Mapping[str, Tensor]] = None,
                progress: Optional[str] = None) -> PathResult:
    """Loss and accuracy along ``(1-t) theta_a + t theta_b`` at each of ``ts`` (exact means
    over ``train`` and ``test``, eval mode).  ``bn``: see the module docstring.
    ``progress``: the label of a tqdm bar over the points (None: no bar)."""
    a = _vector(space, theta_a, "theta_a")
    b = _vector(space, theta_b, "theta_b")
    return _walk(space, "linear", lambda t: linear_point(a, b, t), ts, train, test, bn,
                 bn_data, buffers_a, buffers_b, progress=progress)


def bezier_path(space: ParamSpace, theta_a: Tensor, theta_b: Tensor, theta_c: Tensor, ts,
                train: ProbeData, test: Optional[ProbeData] = None, bn: str = "recompute",
                bn_data: Optional[ProbeData] = None,
                buffers_a: Optional[Mapping[str, Tensor]] = None,
                buffers_b: Optional[Mapping[str, Tensor]] = None,
                grad_evals: int = 0, progress: Optional[str] = None) -> PathResult:
    """Loss and accuracy along the quadratic Bezier curve with bend ``theta_c`` at ``ts``
    (BatchNorm re-estimated at every t by default). ``grad_evals`` is recorded as given
    (pass the bend's :attr:`Bend.grad_evals`); ``progress`` as for :func:`linear_path`."""
    a = _vector(space, theta_a, "theta_a")
    b = _vector(space, theta_b, "theta_b")
    c = _vector(space, theta_c, "theta_c")
    return _walk(space, "bezier", lambda t: bezier_point(a, b, c, t), ts, train, test, bn,
                 bn_data, buffers_a, buffers_b, grad_evals, progress)


# ---------------------------------------------------------------------- bend training
@dataclass(frozen=True)
class Bend:
    """A trained Bezier bend: ``theta_c`` (flat, the model's dtype) and how it was trained.

    ``loss_history`` is the mean mini-batch loss at the sampled t of each epoch."""

    theta_c: Tensor
    grad_evals: int
    steps: int
    epochs: int
    optimizer: str
    lr: float
    seed: int
    loss_history: list[float] = field(default_factory=list)


def _as_split(data: BendData) -> Split:
    if isinstance(data, Split):
        return data
    batches = data.batches if isinstance(data, ProbeData) else list(data)
    if not batches:
        raise LandscopeError("bend training needs at least one batch of data")
    return TensorSplit(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))


def _check_bend(epochs: int, lr: float, batch_size: int, optimizer: str) -> None:
    if int(epochs) < 1:
        raise LandscopeError(f"bend training needs epochs >= 1 (got {epochs})")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise LandscopeError(f"bend training needs a learning rate > 0 (got {lr!r})")
    if int(batch_size) < 1:
        raise LandscopeError(f"bend training needs batch_size >= 1 (got {batch_size})")
    if optimizer not in OPTIMIZERS:
        raise LandscopeError(f"optimizer must be one of {', '.join(OPTIMIZERS)} "
                             f"(got {optimizer!r})")


def _flat_vector(v: Optional[Tensor], what: str, *, dim: int, device: torch.device,
                 dtype: torch.dtype) -> Tensor:
    if not isinstance(v, Tensor) or v.shape != (dim,):
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise LandscopeError(f"{what} must be a flat vector of shape ({dim},), got {shape}")
    return v.detach().to(device, dtype)


def _loss_at(work: nn.Module, names: list[str], shapes: list[torch.Size], numels: list[int],
             phi: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The task loss of ``work`` at the flat parameters ``phi`` (differentiable in ``phi``)."""
    params = {nm: p.view(s) for nm, p, s in zip(names, torch.split(phi, numels), shapes)}
    out = torch.func.functional_call(work, params, (x,))
    return task_loss(work, out, y)


def train_bezier(model: nn.Module, theta_a: Tensor, theta_b: Tensor, data: BendData, *,
                 epochs: int, lr: float, batch_size: int, seed: int,
                 optimizer: str = "adam", theta_c: Optional[Tensor] = None,
                 progress: Optional[str] = None) -> Bend:
    """Train the bend of the quadratic Bezier curve from ``theta_a`` to ``theta_b``.

    ``data`` is a split (shuffled per epoch), :class:`ProbeData` or a list of ``(x, y)``
    batches (concatenated, then treated like a split). ``theta_c`` is the starting bend
    (default: the midpoint).  ``model`` supplies the architecture and the task loss and is
    left untouched.  Deterministic given ``seed`` (on CPU).  See the module docstring.
    ``progress``: the label of a tqdm bar over the steps (None: no bar).
    """
    _check_bend(epochs, lr, batch_size, optimizer)
    named = list(model.named_parameters())
    if not named:
        raise LandscopeError("the model has no parameters")
    names, shapes, numels = map(list, zip(*[(n, p.shape, p.numel()) for n, p in named]))
    dim, dtype, device = sum(numels), named[0][1].dtype, named[0][1].device
    flat = functools.partial(_flat_vector, dim=dim, device=device, dtype=dtype)
    a, b = flat(theta_a, "theta_a"), flat(theta_b, "theta_b")
    start = 0.5 * (a + b) if theta_c is None else flat(theta_c, "theta_c")
    c = start.clone().requires_grad_(True)
    split = _as_split(data)
    n = len(split)
    if n < 1:
        raise LandscopeError("bend training needs at least one sample")
    bs = min(int(batch_size), n)
    total = int(epochs) * (-(-n // bs))
    opt = (torch.optim.Adam([c], lr=lr) if optimizer == "adam"
           else torch.optim.SGD([c], lr=lr, momentum=0.9))
    work = copy.deepcopy(model).requires_grad_(False).train()
    t_gen = torch.Generator().manual_seed(int(seed))
    history: list[float] = []
    step, steps = 0, bar(progress, total, unit="step")
    with frozen_batchnorm_stats(work):
        for epoch in range(int(epochs)):
            loss_sum, seen = 0.0, 0
            for x, y in split.batches(bs, shuffle=True, generator=epoch_generator(seed, epoch)):
                x, y = x.to(device, dtype), y.to(device)
                t = float(torch.rand((), generator=t_gen, dtype=torch.float64))
                for group in opt.param_groups:  # cosine annealing from lr to 0
                    group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total))
                phi = (1.0 - t) ** 2 * a + 2.0 * t * (1.0 - t) * c + t ** 2 * b
                loss = _loss_at(work, names, shapes, numels, phi, x, y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise LandscopeError(f"bend training diverged at step {step + 1} (loss "
                                         f"{value}); lower the learning rate (now {lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                steps.update()
                loss_sum += value * len(y)
                seen += len(y)
            history.append(loss_sum / seen)
    steps.close()
    return Bend(theta_c=c.detach().clone(), grad_evals=step, steps=step, epochs=int(epochs),
                optimizer=optimizer, lr=float(lr), seed=int(seed), loss_history=history)
