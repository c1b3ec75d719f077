"""A model's parameter space as one flat vector, and exact evaluation at any point of it.

Every geometry measure (slices, interpolation paths, trajectories on a plane, subspace
training) evaluates one architecture at many parameter vectors. :class:`ParamSpace` makes
that cheap and safe:

* it builds **one** private working copy of the model whose parameters are views into a
  single flat buffer, so moving to a point is one vector copy (``set_point``) and the
  forward pass that follows is a bare ``model(x)``: no per-point model copies, no
  ``functional_call`` re-parametrization, no Python loop over parameters;
* the model passed in is never modified (not its parameters, buffers or train/eval mode);
* the centre point is the model's own vector, so a coordinate of exactly 0 evaluates the
  model exactly (``theta0 + 0 * d == theta0`` bit for bit);
* BatchNorm running statistics either stay those of the trained model (``bn="keep"``) or
  are re-estimated at every point (``bn="recompute"``): reset, then one cumulative-average
  pass in train mode over a fixed data set (PyTorch's ``momentum=None``), as Garipov et
  al. (2018) do along connecting curves. Models without BatchNorm ignore the option.

Losses are the exact mean over all samples of the data (batches weighted by their sizes),
with the model's task loss from :mod:`landscope.losses`.

Speed: evaluation runs under ``torch.inference_mode`` and, for the default task
(cross-entropy on ``(B, C)`` logits), computes loss and accuracy with a handful of cheap
ops (row max, gather, exp, a matrix-vector product for the row sums, one host sync per
batch). The working copy's activations are in-place where that is provably safe
(:mod:`landscope.geometry.inplace`), its eval forward is one flat function without
per-module call overhead (:mod:`landscope.geometry.flat_forward`), and on a scan the layers
that read the data directly can be served as linear combinations
(:mod:`landscope.geometry.input_layers`); hot loops call :meth:`ParamSpace.measure` inside
one ``inference_mode`` context. A grid point of the default MLP costs little more than a
bare forward pass of the model (``scripts/bench_geometry.py``;
docs/measurements.md#geometry-space). A :class:`ParamSpace`
pickles (for worker processes) as the model plus ``theta0``/``buffers0``; unpickling
rebuilds the working copy.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Optional

import torch
from torch import Tensor, nn

from landscope.errors import LandscopeError
from landscope.geometry.flat_forward import FlatForward
from landscope.geometry.inplace import make_activations_inplace
from landscope.geometry.input_layers import InputLayers
from landscope.losses import n_correct, task_loss
from landscope.probes.probe_data import ProbeData

BNMode = Literal["keep", "recompute"]
BN_MODES: tuple[str, ...] = ("keep", "recompute")


@dataclass(frozen=True)
class Evaluation:
    """Mean task loss and accuracy of one parameter vector on one data set."""

    loss: float
    acc: float


def batchnorm_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class ParamSpace:
    """The trainable parameters of ``model`` as a flat vector of length :attr:`dim`.

    ``names``/``shapes``/``numels`` follow ``model.named_parameters()`` order (the order
    of :func:`flatten` and :meth:`unflatten`). :attr:`theta0` is the model's own point
    (a detached copy). The working copy has the model's dtype and device.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        named = [(n, p) for n, p in model.named_parameters()]
        if not named:
            raise LandscopeError("the model has no parameters")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.dim = sum(self.numels)
        self.dtype = named[0][1].dtype
        self.device = named[0][1].device
        self.theta0 = flatten(p for _, p in named).detach().clone()
        self.buffers0 = {n: b.detach().clone() for n, b in model.named_buffers()}

        work = copy.deepcopy(model)
        work.requires_grad_(False)
        self._flat = self.theta0.clone()
        views = self.unflatten(self._flat)
        for name, view in views.items():
            owner, leaf = _owner(work, name)
            owner._parameters[leaf] = nn.Parameter(view, requires_grad=False)
        work.eval()
        self.n_inplace = make_activations_inplace(work)  # safe ones only: see geometry.inplace
        self._work = work
        self.input_layers = InputLayers(work, self._flat, lambda: self.theta0)
        # eval-mode forward without per-module call overhead: see geometry.flat_forward
        self._forward = FlatForward(work, keep=self.input_layers.modules)
        self._norms = batchnorm_modules(work)
        self._custom_task = hasattr(model, "task_loss")
        self._buffers = list(work.named_buffers())
        self._scratch: dict[torch.Size, tuple[Tensor, Tensor, Tensor]] = {}
        self._prepared: "weakref.WeakKeyDictionary[ProbeData, list]" = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        """The model and the reference point; the working copy is rebuilt on unpickling."""
        return {"model": self.model, "theta0": self.theta0, "buffers0": self.buffers0}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"])  # type: ignore[misc]
        self.theta0 = state["theta0"]
        self.buffers0 = state["buffers0"]
        self.set_point(self.theta0)

    # ------------------------------------------------------------------ vectors
    @property
    def has_batchnorm(self) -> bool:
        return bool(self._norms)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """``{name: view}`` of a flat vector (views share its storage)."""
        if flat.shape != (self.dim,):
            raise LandscopeError(f"expected a flat vector of shape ({self.dim},), "
                                 f"got {tuple(flat.shape)}")
        parts = torch.split(flat, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes)}

    def flatten_params(self, params: Mapping[str, Tensor]) -> Tensor:
        """A parameter dict (e.g. a checkpoint's ``state_dict``) as a flat vector."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise LandscopeError(f"parameters missing: {', '.join(missing[:5])}")
        for n, s in zip(self.names, self.shapes):
            if tuple(params[n].shape) != s:
                raise LandscopeError(f"parameter {n} has shape {tuple(params[n].shape)}, "
                                     f"expected {s}")
        return flatten(params[n] for n in self.names).detach().to(self.dtype, copy=True)

    # ------------------------------------------------------------------ evaluation
    @property
    def working_model(self) -> nn.Module:
        """The private copy whose parameters are views of the current point (read-only use)."""
        return self._work

    def set_point(self, theta: Tensor, buffers: Optional[Mapping[str, Tensor]] = None) -> None:
        """Move the working copy to ``theta`` (and to ``buffers``, default the model's own)."""
        if theta.shape != (self.dim,):
            raise LandscopeError(f"expected a flat vector of shape ({self.dim},), "
                                 f"got {tuple(theta.shape)}")
        self.input_layers.declare(None)
        with torch.no_grad():
            self._flat.copy_(theta)
            src = self.buffers0 if buffers is None else buffers
            for name, buf in self._buffers:
                if name in src:
                    buf.copy_(src[name])

    def set_affine(self, base: Tensor, direction: Optional[Tensor] = None,
                   alpha: float = 0.0) -> None:
        """Move the working copy's *parameters* to ``base + alpha * direction``, written in
        place into the flat buffer (no allocation); buffers are left as they are.

        ``alpha == 0`` (or no direction) copies ``base`` exactly, so ``set_affine(theta0)``
        is bit for bit the model's own point. ``base`` and ``direction`` are flat vectors
        of the space's dtype and device (not checked here: this is the hot path of grid
        scans; see :meth:`set_point` for the checked version)."""
        self.input_layers.declare(None)
        with torch.no_grad():
            if direction is None or alpha == 0:
                self._flat.copy_(base)
            else:
                torch.add(base, direction, alpha=alpha, out=self._flat)

    @torch.no_grad()
    def recompute_batchnorm(self, data: ProbeData) -> dict[str, Tensor]:
        """Re-estimate BatchNorm running statistics at the current point: reset them, then
        average the batch statistics of ``data`` over all its batches (cumulative mean).
        Returns the new buffers (copies)."""
        if not self._norms:
            return {}
        saved = [m.momentum for m in self._norms]
        self._work.train()
        try:
            for m in self._norms:
                m.reset_running_stats()
                m.momentum = None
            for x, _, _ in self.prepared(data):
                self._work(x)
        finally:
            for m, momentum in zip(self._norms, saved):
                m.momentum = momentum
            self._work.eval()
        return {n: b.detach().clone() for n, b in self._work.named_buffers()}

    def evaluate_current(self, data: ProbeData) -> Evaluation:
        """Loss and accuracy of the working copy as it stands (eval mode).

        Default task, logits ``out`` (B, C): ``nll_i = log sum_j exp(out_ij - m_i) + m_i -
        out_iy`` with the row maximum ``m_i`` (stable); ``max(1)`` gives ``m`` and the
        predictions (first maximal index, as :func:`landscope.losses.correct`) in one pass,
        the row sums are one matrix product with a ones column (a row reduction over C
        entries is slower on CPU), everything stays in ``(B, 1)`` columns written into
        reused buffers, and there is one host sync per batch and value. This costs a fraction
        of ``F.cross_entropy`` + ``argmax`` (docs/measurements.md#geometry-space).
        """
        if self._work.training:
            self._work.eval()
        with torch.inference_mode():
            loss, acc = self.measure(self.prepared(data), data.n)
        return Evaluation(loss, acc)

    def measure(self, batches: list[tuple[Tensor, Tensor, Tensor]], n: int
                ) -> tuple[float, float]:
        """Mean loss and accuracy over ``batches`` (from :meth:`prepared`; ``n`` samples in
        all) of the working copy as it stands: the body of :meth:`evaluate_current` for hot
        loops, which must run it in eval mode under ``torch.inference_mode``."""
        work, forward, custom = self._work, self._forward, self._custom_task
        total, correct = 0.0, 0
        for x, y, yv in batches:
            out = forward(x)
            if custom or out.dim() != 2 or y.dim() != 1 or not out.is_floating_point():
                total += float(task_loss(work, out, y, "sum"))
                correct += n_correct(work, out, y)
                continue
            scratch = self._scratch.get(out.shape)
            if scratch is None or scratch[0].dtype != out.dtype:
                scratch = self._scratch[out.shape] = (
                    torch.empty_like(out), out.new_empty(out.shape[0], 1),
                    out.new_ones(out.shape[1], 1))
            z, s, ones = scratch
            top, pred = out.max(1, keepdim=True)
            torch.mm(torch.sub(out, top, out=z).exp_(), ones, out=s)
            total += s.log_().add_(top).sub_(out.gather(1, yv)).sum().item()
            correct += int(torch.count_nonzero(pred.eq(yv)))
        return total / n, correct / n

    def prepared(self, data: ProbeData) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``(x, y, y as a column)`` per batch of ``data``, as :meth:`evaluate_current`
        feeds them to the model."""
        batches = self._prepared.get(data)
        return self._prepare(data) if batches is None else batches

    def _prepare(self, data: ProbeData) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``data``'s batches on the model's device and dtype (no copy when they already
        are), with the labels as a column for ``gather``; cached per ProbeData (weakly)."""
        out = []
        for x, y in data.batches:
            y = y.to(self.device)
            out.append((x.to(self.device, self.dtype), y, y.view(-1, 1)))
        self._prepared[data] = out
        return out

    def evaluate(self, theta: Tensor, data: ProbeData | Iterable[ProbeData],
                 bn: BNMode = "keep", bn_data: Optional[ProbeData] = None
                 ) -> list[Evaluation]:
        """Evaluate ``theta`` on one or several data sets (eval mode, exact means).

        ``bn="recompute"`` re-estimates BatchNorm statistics at ``theta`` on ``bn_data``
        first (default: the first data set). Returns one :class:`Evaluation` per data set.
        """
        sets = [data] if isinstance(data, ProbeData) else list(data)
        if bn not in BN_MODES:
            raise LandscopeError(f"bn must be one of {', '.join(BN_MODES)} (got {bn!r})")
        self.set_point(theta)
        if bn == "recompute" and self._norms:
            self.recompute_batchnorm(bn_data if bn_data is not None else sets[0])
        return [self.evaluate_current(d) for d in sets]


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf
