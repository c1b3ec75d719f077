"""Scalar objectives of a flat parameter vector, the common ground of the sharpness measures.

An :class:`Objective` has a probed point ``theta0`` and evaluates ``loss``, ``loss_and_grad``
and (optionally) ``accuracy`` at any flat vector; counters ``n_loss`` / ``n_grad`` / ``n_acc``
record every evaluation (and ``watch``, when set, hears of each before it runs: a progress
bar's tick, a time cap).  The value and gradient at ``theta0`` are needed by every measure of
:mod:`landscope.probes.sharpness`, so :meth:`Objective.origin` computes them once per
objective (or takes them precomputed: ``at_origin=(loss, grad)``, e.g. from
:meth:`landscope.probes.hvp.HessianOperator.loss` / ``.gradient()``, which the operator has
anyway), and :meth:`Objective.origin_accuracy` caches the accuracy there.

:class:`ModelObjective` evaluates a network without writing it: on a private copy whose probed
parameters are overwritten with each point (or, for a model that cannot be copied, through
``torch.func.functional_call``); with ``group`` (data-parallel ranks, each holding a shard of
the data as :class:`~landscope.probes.hvp.HessianOperator` does) every loss, gradient and count
of correct samples is summed over the ranks, so each rank sees the whole set's values and takes
the same steps. :class:`QuadraticObjective` is the closed-form oracle of the tests.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscope.errors import LandscopeError
from landscope.losses import n_correct, task_loss
from landscope.probes.hvp import MODES, Mode, fixed_tensors, forward_mode, resolve_params
from landscope.probes.probe_data import ProbeData, float_summed_over_ranks, summed_over_ranks

Origin = tuple[float, Tensor]


def loss_value(f: float) -> float:
    """The loss as a search compares it: a non-finite value (``inf``, ``-inf`` or ``NaN``,
    from a forward pass that overflowed) is ``+inf``, so a maximum never drops it."""
    f = float(f)
    return f if math.isfinite(f) else math.inf


class Objective:
    """A scalar objective of a flat parameter vector; ``theta0`` is the point probed.

    Subclasses implement :meth:`loss_and_grad`, :meth:`loss` and optionally
    :meth:`accuracy`; the counters ``n_loss``/``n_grad``/``n_acc`` record evaluations (a
    ``loss_and_grad`` call counts one loss and one gradient).  ``at_origin=(loss, grad)``:
    the value and gradient at ``theta0`` computed elsewhere on the same loss (then
    :meth:`origin` costs nothing); the caller vouches that they are.
    """

    theta0: Tensor
    #: called once per loss or accuracy evaluation before it starts and is counted (a
    #: progress bar's tick, as :meth:`~landscope.probes.cost.ProbeLedger.tick`); an exception
    #: it raises stops the evaluation uncounted (the probe run's time cap); None: nothing
    watch: Optional[Callable[[], None]] = None

    def __init__(self, at_origin: Optional[Origin] = None) -> None:
        self._n_loss = 0
        self.n_grad = 0
        self._n_acc = 0
        self._at_origin = at_origin
        self._origin: Optional[Origin] = None
        self._origin_loss: Optional[float] = None
        self._origin_acc: Optional[float] = None

    @property
    def n_loss(self) -> int:
        return self._n_loss

    @n_loss.setter
    def n_loss(self, n: int) -> None:
        if self.watch is not None:
            self.watch()
        self._n_loss = n

    @property
    def n_acc(self) -> int:
        return self._n_acc

    @n_acc.setter
    def n_acc(self, n: int) -> None:
        if self.watch is not None:
            self.watch()
        self._n_acc = n

    def _take_origin(self) -> None:
        """Validate and store ``at_origin`` (after the subclass has set ``theta0``)."""
        if self._at_origin is None:
            return
        loss, grad = self._at_origin
        grad = torch.as_tensor(grad).detach()
        if grad.shape != self.theta0.shape:
            raise LandscopeError(f"at_origin gradient has shape {tuple(grad.shape)}, expected "
                                 f"{tuple(self.theta0.shape)}")
        grad = grad.to(device=self.theta0.device, dtype=self.theta0.dtype).clone()
        self._origin = (float(loss), grad)
        self._at_origin = None

    def origin(self) -> Origin:
        """``(L(theta0), grad L(theta0))``, evaluated at most once per objective."""
        if self._origin is None:
            loss, grad = self.loss_and_grad(self.theta0)
            self._origin = (float(loss), grad.detach())
        return self._origin

    def origin_loss(self) -> float:
        """``L(theta0)``: from :meth:`origin` when known, else one loss evaluation (cached)."""
        if self._origin is not None:
            return self._origin[0]
        if self._origin_loss is None:
            self._origin_loss = float(self.loss(self.theta0))
        return self._origin_loss

    def origin_accuracy(self) -> Optional[float]:
        """``accuracy(theta0)``, evaluated at most once (``None`` without an accuracy)."""
        if self._origin_acc is None:
            self._origin_acc = self.accuracy(self.theta0)
        return self._origin_acc

    def loss(self, theta: Tensor) -> float:
        raise NotImplementedError

    def loss_and_grad(self, theta: Tensor) -> tuple[float, Tensor]:
        raise NotImplementedError

    def grad(self, theta: Tensor) -> Tensor:
        return self.loss_and_grad(theta)[1]

    def accuracy(self, theta: Tensor) -> Optional[float]:
        return None


class QuadraticObjective(Objective):
    """``L(theta) = 1/2 theta^T A theta + b^T theta + c`` (closed-form references)."""

    def __init__(self, A: Tensor, b: Optional[Tensor] = None, c: float = 0.0,
                 theta0: Optional[Tensor] = None, *, at_origin: Optional[Origin] = None) -> None:
        super().__init__(at_origin)
        self.A, self.c = A, float(c)
        self.b = torch.zeros(A.shape[0], dtype=A.dtype) if b is None else b
        self.theta0 = torch.zeros_like(self.b) if theta0 is None else theta0.detach().clone()
        self._take_origin()

    def loss(self, theta: Tensor) -> float:
        self.n_loss += 1
        return float(0.5 * theta @ (self.A @ theta) + self.b @ theta) + self.c

    def loss_and_grad(self, theta: Tensor) -> tuple[float, Tensor]:
        self.n_loss += 1
        self.n_grad += 1
        at = self.A @ theta
        return float(0.5 * theta @ at + self.b @ theta) + self.c, at + self.b


def _replica(model: nn.Module, names: list[str], dtype: torch.dtype, device: torch.device
             ) -> Optional[tuple[nn.Module, list[Tensor]]]:
    """A private copy of ``model`` (floating tensors in ``dtype`` on ``device``, as
    :func:`~landscope.probes.hvp.fixed_tensors` casts them) and its parameters ``names``, the
    only ones that require grad; None when the model cannot be deep-copied."""
    try:
        work = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - any model deepcopy refuses: functional_call instead
        return None
    work.to(device=device, dtype=dtype)
    named = dict(work.named_parameters())
    for p in work.parameters():
        p.requires_grad_(False)
        p.grad = None
    probed = [named[n] for n in names]
    for p in probed:
        p.requires_grad_(True)
    return work, probed


class ModelObjective(Objective):
    """Mean cross-entropy (exact micro-batch weights) and accuracy of ``model`` on ``data``
    at any flat vector of the probed parameters.

    The model is never written (its train/eval flags are restored; in ``mode="train"``
    BatchNorm uses batch statistics without updating running ones).  Each point is written into
    a private copy of the model, taken when the objective is made (``torch.func.functional_call``
    on the model itself when it cannot be deep-copied: the same values, bit for bit, at 0.1-0.5
    ms more per evaluation: docs/measurements.md#probes-objective).  ``params`` selects a
    subset as in :func:`landscope.probes.hvp.resolve_params`.  ``at_origin=(loss, grad)``
    skips the evaluation at ``theta0``: pass ``(op.loss(), op.gradient())`` of a
    :class:`~landscope.probes.hvp.HessianOperator` built on the same model, data, params and
    mode (its loss agrees up to rounding: float32 ~1e-7 relative). ``group``: a
    ``torch.distributed`` process group whose ranks each hold a shard of the data
    (:meth:`ProbeData.shard`); every evaluation is then a collective that every rank makes.
    """

    def __init__(self, model: nn.Module, data: ProbeData, params: Optional[dict[str, Tensor]]
                 = None, mode: Mode = "eval", *, at_origin: Optional[Origin] = None,
                 copy_model: bool = True, group: Optional[object] = None) -> None:
        super().__init__(at_origin)
        self.model, self.mode, self.group = model, mode, group
        self.names, values = resolve_params(model, params)
        self.dtype, self.device = values[0].dtype, values[0].device
        self._shapes = [v.shape for v in values]
        self._numels = [v.numel() for v in values]
        self.theta0 = torch.cat([v.reshape(-1) for v in values]).clone()
        self._fixed: dict[str, Tensor] = {}
        if mode not in MODES:
            raise LandscopeError(f"probe mode must be one of {', '.join(MODES)} (got {mode!r})")
        self._replica = _replica(model, self.names, self.dtype, self.device) if copy_model \
            else None
        if self._replica is not None:
            # the copy stays in the mode: no flags to set and restore per evaluation (in train
            # mode its BatchNorm layers update their own running statistics, which no
            # train-mode output reads)
            self._replica[0].train(mode == "train")
        if self._replica is None:
            self._fixed = fixed_tensors(model, self.names, self.dtype, self.device)
        if data.dtype != self.dtype or data.device != self.device:
            data = data.to(self.dtype, self.device)
        self.data = data
        self._take_origin()

    def _check(self, theta: Tensor) -> None:
        if theta.shape != self.theta0.shape:
            raise LandscopeError(f"expected a flat vector of shape {tuple(self.theta0.shape)}, "
                                 f"got {tuple(theta.shape)}")

    def _params(self, theta: Tensor) -> dict[str, Tensor]:
        self._check(theta)
        parts = torch.split(theta, self._numels)
        return {**self._fixed, **{n: p.view(s) for n, p, s in
                                  zip(self.names, parts, self._shapes)}}

    def _at(self, theta: Tensor):
        """The network at ``theta``: a callable of the inputs. The replica with ``theta``
        written into its probed parameters, else ``functional_call`` of the model."""
        if self._replica is None:
            params = self._params(theta)
            return lambda x: functional_call(self.model, params, (x,))
        self._check(theta)
        work, probed = self._replica
        with torch.no_grad():
            for p, t in zip(probed, torch.split(theta, self._numels)):
                p.copy_(t.view_as(p))
        return work

    def _mode(self) -> contextlib.AbstractContextManager:
        """The model in the mode for the block (the copy is in it already)."""
        return forward_mode(self.model, self.mode) if self._replica is None \
            else contextlib.nullcontext()

    def _sum(self, t: Tensor) -> Tensor:
        return summed_over_ranks(t, self.group)

    def _sum_float(self, x: float) -> float:
        return float_summed_over_ranks(x, self.group, self.device)

    def loss(self, theta: Tensor) -> float:
        self.n_loss += 1
        total = 0.0
        with torch.no_grad(), self._mode():
            net = self._at(theta.detach())
            for (x, y), w in zip(self.data.batches, self.data.weights):
                total += w * float(task_loss(self.model, net(x), y))
        return self._sum_float(total)

    def loss_and_grad(self, theta: Tensor) -> tuple[float, Tensor]:
        self.n_loss += 1
        self.n_grad += 1
        if self._replica is None:
            return self._functional_loss_and_grad(theta)
        _, probed = self._replica
        total, grads = 0.0, None
        with torch.enable_grad(), self._mode():
            net = self._at(theta.detach())
            for (x, y), w in zip(self.data.batches, self.data.weights):
                lb = w * task_loss(self.model, net(x), y)
                gs = torch.autograd.grad(lb, probed)
                grads = gs if grads is None else [a + b for a, b in zip(grads, gs)]
                total += float(lb.detach())
        assert grads is not None
        return self._sum_float(total), self._sum(torch.cat([g.reshape(-1) for g in grads]))

    def _functional_loss_and_grad(self, theta: Tensor) -> tuple[float, Tensor]:
        leaf = theta.detach().clone().requires_grad_(True)
        total, grad = 0.0, torch.zeros_like(leaf)
        with torch.enable_grad(), forward_mode(self.model, self.mode):
            params = self._params(leaf)
            for (x, y), w in zip(self.data.batches, self.data.weights):
                lb = w * task_loss(self.model, functional_call(self.model, params, (x,)), y)
                grad += torch.autograd.grad(lb, leaf)[0]
                total += float(lb.detach())
        return self._sum_float(total), self._sum(grad)

    def accuracy(self, theta: Tensor) -> float:
        """Exact fraction of correctly classified probe samples."""
        self.n_acc += 1
        correct = 0
        with torch.no_grad(), self._mode():
            net = self._at(theta.detach())
            for x, y in self.data.batches:
                correct += n_correct(self.model, net(x), y)
        if self.group is not None:
            correct = int(self._sum(torch.tensor([correct], dtype=torch.int64,
                                                 device=self.device)))
        return correct / self.data.n_total
