"""Escape from a minimum under plain SGD (H3 of issue #5).

Zhu et al. 2019 ("The anisotropic noise in stochastic gradient descent: its behavior of
escaping from sharp minima and regularization effects", ICML) argue that SGD leaves sharp
minima faster than isotropic noise of the same size would, because its covariance Σ lines
up with the top Hessian eigendirections; their indicator is tr(HΣ) (see
:mod:`landscope.probes.noise` for the alignment measures).  This module measures the
escape itself: from a minimum θ0, run plain SGD (no momentum, no weight decay, constant
learning rate η, batch size B) and record when it leaves.

**Escape, defined.**  Every ``eval_every`` steps (and at step 0 and at ``max_steps``) the
train loss ``L_t`` is evaluated on a *fixed* seeded subset of the training split
(``eval_size`` samples drawn once with ``torch.randperm`` seeded by ``eval_seed``; ``None``
= the whole split), in eval mode, as the sample mean of :func:`landscope.losses.task_loss`.
With ``L_0 = L(θ0)`` on that subset, the threshold is::

    threshold = L_0 + max(delta_abs, delta_rel * |L_0|)

and the run *escaped* at ``escape_step`` = the first evaluated step ``t > 0`` with
``L_t > threshold`` that begins ``confirm`` consecutive evaluated steps all above the
threshold (``confirm = 1``: the first exceedance).  A non-finite loss counts as above the
threshold and ends the run at once (``diverged``; the escape is then confirmed by that
evaluation even when fewer than ``confirm`` evaluations remain).  The true crossing lies in
``(escape_step - eval_every, escape_step]``: the resolution is ``eval_every``.  A run that
has not escaped by ``max_steps`` is *censored*: ``escaped = False``, ``escape_step = None``
(an exceedance streak still shorter than ``confirm`` at ``max_steps`` does not count).

**Secondary definition (distance).**  With ``radius`` set, ``radius_step`` is the first
evaluated step with ``‖θ_t − θ0‖₂ > radius`` (trainable parameters, flattened; no
confirmation).  The run continues until every defined criterion has fired (or
``max_steps``), so ``radius_step`` is censored at ``max_steps`` like ``escape_step``.

**Batches.**  Step ``t`` uses mini-batch ``t`` of consecutive epochs of random reshuffling:
each epoch is ``torch.randperm`` of the training split drawn from one ``torch.Generator``
seeded with ``seed`` (through :class:`numpy.random.SeedSequence`), cut into batches of
``B``; the last incomplete batch of every epoch is dropped, so every step averages exactly
``B`` samples (the gradient noise is Σ/B up to the without-replacement factor).  ``B >=``
the split size means full-batch gradient descent (``batch_size`` then reports the split
size).  Training-mode forward passes (as :mod:`landscope.train`), evaluation in eval mode.

**Noise modes** (``noise``: ``"sgd"``, ``"isotropic"``, ``"topk"``): mini-batch SGD or the
full-batch gradient plus injected Gaussian noise of SGD's trace, :mod:`landscope.escape.noise`.

The caller's model is never modified: the run works on a :func:`copy.deepcopy`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from landscope.errors import ConfigError
from landscope.escape.noise import (
    NOISES,
    InjectedNoise,
    _noise_generator,
    minibatch_noise_trace,
    sgd_noise_trace,
)
from landscope.losses import task_loss
from landscope.probes.probe_data import ProbeData

__all__ = ["NOISES", "EscapeRule", "EscapeRun", "InjectedNoise", "minibatch_noise_trace",
           "run_escape", "sgd_noise_trace"]


@dataclass(frozen=True)
class EscapeRule:
    """When a run counts as escaped (module docstring): loss above
    ``L_0 + max(delta_abs, delta_rel * |L_0|)`` for ``confirm`` consecutive evaluations;
    ``radius`` (optional) for the secondary distance criterion."""

    delta_abs: float = 0.1
    delta_rel: float = 0.0
    confirm: int = 1
    radius: Optional[float] = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delta_abs) and self.delta_abs >= 0):
            raise ConfigError(f"escape delta_abs must be finite and >= 0 (got {self.delta_abs!r})")
        if not (math.isfinite(self.delta_rel) and self.delta_rel >= 0):
            raise ConfigError(f"escape delta_rel must be finite and >= 0 (got {self.delta_rel!r})")
        if self.delta_abs == 0 and self.delta_rel == 0:
            raise ConfigError("escape needs delta_abs > 0 or delta_rel > 0 (a zero margin "
                              "counts every fluctuation as an escape)")
        if int(self.confirm) != self.confirm or self.confirm < 1:
            raise ConfigError(f"escape confirm must be an integer >= 1 (got {self.confirm!r})")
        if self.radius is not None and not (math.isfinite(self.radius) and self.radius > 0):
            raise ConfigError(f"escape radius must be > 0 or None (got {self.radius!r})")

    def threshold(self, loss0: float) -> float:
        return loss0 + max(self.delta_abs, self.delta_rel * abs(loss0))

    def describe(self) -> str:
        margin = f"max({self.delta_abs:g}, {self.delta_rel:g}*|L0|)" if self.delta_rel \
            else f"{self.delta_abs:g}"
        text = f"train loss > L0 + {margin}"
        if self.confirm > 1:
            text += f" for {self.confirm} consecutive evaluations"
        if self.radius is not None:
            text += f"; secondary: ||theta - theta0|| > {self.radius:g}"
        return text


@dataclass
class EscapeRun:
    """The outcome of :func:`run_escape`.

    ``steps``, ``losses``, ``distances``: the trace at the evaluated steps (step 0 first).
    ``escape_step``/``radius_step``: None when censored (not reached by ``steps_run``).
    ``batch_size`` is the effective one (at most the split size); ``steps_run`` the SGD
    steps actually taken (the run stops once every criterion has fired)."""

    escaped: bool
    escape_step: Optional[int]
    radius_step: Optional[int]
    diverged: bool
    loss0: float
    threshold: float
    steps_run: int
    lr: float
    batch_size: int
    seed: int
    max_steps: int
    eval_every: int
    eval_size: int
    rule: EscapeRule
    noise: str = "sgd"
    noise_trace: Optional[float] = None  # T, the injected noise's covariance trace per step
    noise_k: Optional[int] = None  # the dimension of the top-k basis (topk mode)
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)

    @property
    def censored(self) -> bool:
        return not self.escaped

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the rule as a nested dict)."""
        d = asdict(self)
        d["rule"] = asdict(self.rule)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EscapeRun":
        """The inverse of :meth:`to_dict` (keys that are not fields, e.g. the ``eta_over_b``
        that ``runner.escape`` adds, are ignored)."""
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        d["rule"] = EscapeRule(**d["rule"])
        d["losses"] = [math.nan if v is None else float(v) for v in d.get("losses", [])]
        d["distances"] = [math.nan if v is None else float(v) for v in d.get("distances", [])]
        return cls(**d)


def _batch_generator(seed: int) -> torch.Generator:
    s = int(np.random.SeedSequence([int(seed), 0x3E5C]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(s)


def _full_gradient(work: nn.Module, params: list[Tensor], train_split, n: int,
                   dtype: torch.dtype, device: torch.device, chunk: int) -> list[Tensor]:
    """The gradient of the mean task loss over the whole split (train mode)."""
    grads = [torch.zeros_like(p) for p in params]
    for x, y in train_split.batches(chunk, shuffle=False):
        x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
        part = torch.autograd.grad(task_loss(work, work(x), y.to(device), "sum"), params)
        for acc, g in zip(grads, part):
            acc.add_(g)
    return [g / n for g in grads]


def _flat(params: list[Tensor]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def _eval_loss(model: nn.Module, data: ProbeData, dtype: torch.dtype,
               device: torch.device) -> float:
    model.eval()
    total = 0.0
    for x, y in data.batches:
        x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
        total += float(task_loss(model, model(x), y.to(device), "sum"))
    return total / data.n


def run_escape(model: nn.Module, train_split, *, lr: float, batch_size: int, seed: int = 0,
               max_steps: int = 2000, eval_every: int = 10,
               rule: EscapeRule = EscapeRule(), eval_size: Optional[int] = 1000,
               eval_seed: int = 0, eval_batch: int = 4096, noise: str = "sgd",
               sigma_trace: Optional[float] = None, noise_basis=None) -> EscapeRun:
    """Run plain SGD from the model's parameters (θ0) and return when it escaped.

    ``train_split``: a :class:`landscope.data.Split` (the data SGD samples from and the
    evaluation subset is drawn from).  ``lr`` η > 0, ``batch_size`` B >= 1 (>= split size:
    full batch), ``seed`` the batch order, ``max_steps`` the censoring point, ``eval_every``
    the evaluation interval, ``rule`` the escape definition, ``eval_size``/``eval_seed``
    the fixed evaluation subset (``eval_batch`` samples per forward pass).  See the module
    docstring for the exact definitions.  ``model`` is left untouched (deep copy).

    ``noise``: ``"sgd"`` (mini-batch SGD), ``"isotropic"`` or ``"topk"`` (full-batch gradient
    plus Gaussian noise of trace ``tr Σ/B·(n−B)/(n−1)``; ``sigma_trace`` = tr Σ is required,
    ``noise_basis`` the D × k top-k Hessian eigenvectors for ``"topk"``, in the flat order of
    the trainable parameters); module docstring."""
    _check_escape(noise, sigma_trace, lr, batch_size, max_steps, eval_every)
    n = len(train_split)
    if n < 1:
        raise ConfigError("escape needs a non-empty training split")
    b = min(int(batch_size), n)
    work = copy.deepcopy(model)
    params = [p for p in work.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("escape needs a model with trainable parameters")
    dtype, device = params[0].dtype, params[0].device
    data = ProbeData.from_split(train_split, eval_size, eval_seed, eval_batch)
    theta0 = _flat(params)
    gen, injected, step_trace = _batch_generator(seed), None, None
    if noise != "sgd":
        step_trace = minibatch_noise_trace(sigma_trace, batch_size, n)
        injected = InjectedNoise(noise, step_trace, int(theta0.numel()), noise_basis,
                                 _noise_generator(seed))
    gradient = _Gradient(work, params, train_split, b, gen, injected, eval_batch)
    loss0 = _eval_loss(work, data, dtype, device)
    if not math.isfinite(loss0):
        raise ConfigError(f"the loss at the starting point is not finite ({loss0})")
    watch, step = _Watch(rule, loss0), 0
    while step < max_steps:
        work.train()
        grads = gradient()
        # plain SGD: torch.optim.SGD imports torch._dynamo (docs/measurements.md#escape-dynamics)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(g, alpha=-float(lr))
        step += 1
        if step % eval_every and step != max_steps:
            continue
        if watch.record(step, _eval_loss(work, data, dtype, device),
                        float((_flat(params) - theta0).norm())):
            break
    return EscapeRun(escaped=watch.escape_step is not None, escape_step=watch.escape_step,
                     radius_step=watch.radius_step, diverged=watch.diverged, loss0=loss0,
                     threshold=watch.threshold, steps_run=step, lr=float(lr), batch_size=b,
                     seed=int(seed), max_steps=int(max_steps), eval_every=int(eval_every),
                     eval_size=data.n, rule=rule, noise=noise, noise_trace=step_trace,
                     noise_k=None if injected is None else injected.k, steps=watch.steps,
                     losses=watch.losses, distances=watch.distances)


def _check_escape(noise: str, sigma_trace: Optional[float], lr: float, batch_size: int,
                  max_steps: int, eval_every: int) -> None:
    if noise not in NOISES:
        raise ConfigError(f"escape noise must be one of {', '.join(NOISES)} (got {noise!r})")
    if noise != "sgd" and (sigma_trace is None or not math.isfinite(sigma_trace)
                           or sigma_trace < 0):
        raise ConfigError(f"escape noise={noise} needs sigma_trace = tr Σ >= 0 "
                          f"(got {sigma_trace!r})")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"escape lr must be finite and > 0 (got {lr!r})")
    for name, value in (("batch_size", batch_size), ("max_steps", max_steps),
                        ("eval_every", eval_every)):
        if int(value) != value or value < 1:
            raise ConfigError(f"escape {name} must be an integer >= 1 (got {value!r})")


class _Gradient:
    """A step's gradient: mini-batch ``t`` of the reshuffled epochs (``injected`` None) or the
    full-batch gradient plus one draw of the injected noise."""

    def __init__(self, work: nn.Module, params: list[Tensor], train_split, b: int,
                 gen: torch.Generator, injected: Optional[InjectedNoise], chunk: int) -> None:
        self.work, self.params, self.split, self.b, self.gen = work, params, train_split, b, gen
        self.injected, self.chunk, self.n = injected, chunk, len(train_split)
        self.dtype, self.device = params[0].dtype, params[0].device
        self.shapes = [p.shape for p in params]
        self.sizes = [p.numel() for p in params]
        self.stream = self._batches()

    def _batches(self):
        while True:
            for x, y in self.split.batches(self.b, shuffle=True, generator=self.gen):
                if len(y) == self.b:
                    yield x, y

    def __call__(self) -> list[Tensor]:
        work, params, dtype, device = self.work, self.params, self.dtype, self.device
        if self.injected is None:
            x, y = next(self.stream)
            x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
            return list(torch.autograd.grad(task_loss(work, work(x), y.to(device)), params))
        grads = _full_gradient(work, params, self.split, self.n, dtype, device, self.chunk)
        xi = self.injected.sample().to(device=device, dtype=dtype).split(self.sizes)
        return [g + e.reshape(shape) for g, e, shape in zip(grads, xi, self.shapes)]


class _Watch:
    """The evaluated steps of a run and its escape criteria (module docstring)."""

    def __init__(self, rule: EscapeRule, loss0: float) -> None:
        self.rule, self.threshold = rule, rule.threshold(loss0)
        self.steps, self.losses, self.distances = [0], [loss0], [0.0]
        self.escape_step: Optional[int] = None
        self.radius_step: Optional[int] = None
        self.streak_start: Optional[int] = None
        self.streak, self.diverged = 0, False

    def record(self, step: int, loss: float, dist: float) -> bool:
        """Record the evaluation at ``step``; whether the run is over."""
        rule = self.rule
        self.steps.append(step)
        self.losses.append(loss)
        self.distances.append(dist)
        if rule.radius is not None and self.radius_step is None and not dist <= rule.radius:
            self.radius_step = step
        bad = not (math.isfinite(loss) and math.isfinite(dist))
        above = bad or not loss <= self.threshold  # NaN and inf count as above
        if self.escape_step is None:
            if above:
                self.streak_start = step if self.streak == 0 else self.streak_start
                self.streak += 1
            else:
                self.streak, self.streak_start = 0, None
            if bad or self.streak >= rule.confirm:
                self.escape_step = self.streak_start
        if bad:
            self.diverged = True
            return True
        return self.escape_step is not None and (rule.radius is None
                                                 or self.radius_step is not None)
