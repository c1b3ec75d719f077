"""The Hessian of a model's loss as a linear :class:`~landscope.probes.operator.Operator`.

Hessian-vector products use Pearlmutter's identity (B. A. Pearlmutter, "Fast exact
multiplication by the Hessian", Neural Computation 6(1), 1994)::

    H v = grad_theta( grad_theta L(theta) . v )

so a product costs a small multiple of a gradient and ``H`` is never formed.  The loss is
the sample-weighted mean cross-entropy over a fixed :class:`ProbeData` (``L = sum_b w_b *
mean_b CE``, ``w_b = |b| / n``) through ``functional_call``: the model is never written.

Three ways to compute the same product (``method``):

* ``cached`` -- PyHessian's trick: each micro-batch's gradient graph is built once at
  construction (``create_graph=True``) and every product is one backward pass through it
  (``retain_graph=True``).  Fastest, but it keeps every micro-batch's forward and
  gradient graph alive, so memory grows with the number of micro-batches; above
  ``max_cached_batches`` the operator falls back to ``double_backward`` (``.method``
  says which one runs).
* ``double_backward`` -- per micro-batch, per product: forward, ``g = grad(loss,
  create_graph=True)``, then ``grad(g, grad_outputs=v)``.  Memory of one micro-batch.
* ``forward_over_reverse`` -- ``torch.func.jvp(torch.func.grad(loss), (params,), (v,))``.

On CPU ``cached`` is the cheapest and ``forward_over_reverse`` the slowest on every model family
measured (docs/measurements.md#probes-hvp): ``cached`` is the default.

With ``primitives=True`` (the default) the loss is evaluated inside
:class:`~landscope.probes.primitives.CurvaturePrimitives`: eval-mode BatchNorm folded into
the convolution or linear layer before it, ReLU as a mask, cross-entropy as
``logsumexp - gather``.  Same loss and Hessian up to rounding, cheaper second derivatives.

``mode="eval"`` evaluates with the model in eval mode (BatchNorm uses running statistics);
``mode="train"`` uses batch statistics over the fixed micro-batch partition without
updating the running statistics (:func:`landscope.models.frozen_batchnorm_stats`); the
flags are restored after every evaluation.  At construction a
curvlinops-style determinism check computes two products with one seeded vector and
refuses the operator when they differ (dropout, other randomness in the forward).

Data-parallel (``group``, a ``torch.distributed`` process group): each rank holds a shard of
the probe data (:meth:`ProbeData.shard`, weights over the whole set's size) and every
product, :meth:`loss` and :meth:`gradient` is the sum (``all_reduce``) of the ranks' weighted
partial results, so it equals the one-process operator on the whole data up to rounding and
is the same on every rank.  Construction checks (one ``all_gather``) that the ranks probe the
same parameters and that their weights add up to 1; the determinism check compares reduced
products, so every rank accepts or refuses together.  :mod:`landscope.probes.distributed`
shards and builds in one call.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Literal, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call

from landscope.errors import LandscopeError
from landscope.losses import task_loss
from landscope.models import frozen_batchnorm_stats
from landscope.probes.cost import warm_autograd
from landscope.probes.determinism import same_products
from landscope.probes.lanczos import start_vector
from landscope.probes.memory import activation_checkpointing
from landscope.probes.primitives import CurvaturePrimitives
from landscope.probes.probe_data import ProbeData, float_summed_over_ranks, summed_over_ranks

Method = Literal["cached", "double_backward", "forward_over_reverse"]
Mode = Literal["eval", "train"]
METHODS: tuple[str, ...] = ("cached", "double_backward", "forward_over_reverse")
MODES: tuple[str, ...] = ("eval", "train")
DEFAULT_METHOD: str = "cached"  # the cheapest on CPU (docs/measurements.md#probes-hvp)
MAX_CACHED_BATCHES = 8
# Relative tolerance of the determinism check, by dtype (anything else: float32's).


def resolve_params(model: nn.Module, params: Optional[dict[str, Tensor]]
                   ) -> tuple[list[str], list[Tensor]]:
    """Names and (detached) values of the differentiated parameters, in model order.

    ``params=None`` takes every parameter with ``requires_grad``; otherwise ``params`` maps
    a subset of ``model.named_parameters()`` names to values of the same shapes.
    """
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
        values = [named[n].detach() for n in names]
    else:
        unknown = sorted(set(params) - set(named))
        if unknown:
            raise LandscopeError(f"params has names the model does not have: {unknown[:3]}")
        names = [n for n in named if n in params]
        values = [params[n].detach() for n in names]
        for n, v in zip(names, values):
            if v.shape != named[n].shape:
                raise LandscopeError(f"params[{n!r}] has shape {tuple(v.shape)}, the model's "
                                     f"parameter {tuple(named[n].shape)}")
    if not names:
        raise LandscopeError("the model has no trainable parameters to probe")
    dtypes = {v.dtype for v in values}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        found = ", ".join(sorted(map(str, dtypes)))
        raise LandscopeError(f"probed parameters need one floating dtype (got {found})")
    return names, values


def fixed_tensors(model: nn.Module, names: Sequence[str], dtype: torch.dtype,
                  device: torch.device) -> dict[str, Tensor]:
    """Every non-probed parameter and buffer, detached, floating ones cast to ``dtype``."""
    skip = set(names)
    out: dict[str, Tensor] = {}
    for n, t in [*model.named_parameters(), *model.named_buffers()]:
        if n not in skip:
            t = t.detach()
            out[n] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
    return out


@contextlib.contextmanager
def forward_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Run the block with ``model`` in ``mode``; restore every module's flag afterwards.
    ``train`` also freezes BatchNorm running statistics (batch statistics, no writes)."""
    if mode not in MODES:
        raise LandscopeError(f"probe mode must be one of {', '.join(MODES)} (got {mode!r})")
    train = mode == "train"
    # only the modules not yet in mode are set and restored (none inside run_probes)
    flags = [(m, m.training) for m in model.modules() if m.training is not train]
    try:
        if flags:
            model.train(train)
        with frozen_batchnorm_stats(model) if train else contextlib.nullcontext():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


class HessianOperator:
    """``H = d^2 L / d theta^2`` of the mean cross-entropy over ``data`` (Pearlmutter 1994).

    Implements the Operator protocol on flat vectors of length ``dim`` (the number of
    probed parameter scalars, in ``param_names`` order) in the parameters' ``dtype``.
    ``n_matvecs`` counts products requested through :meth:`matvec`, the determinism check's
    in ``n_check_matvecs``; its first is on the top-k's start vector and serves that run's
    first step (:meth:`prime`)."""

    def __init__(self, model: nn.Module, data: ProbeData, *,
                 params: Optional[dict[str, Tensor]] = None, mode: Mode = "eval",
                 method: Optional[Method] = None, check_determinism: bool = True,
                 max_cached_batches: int = MAX_CACHED_BATCHES, seed: int = 0,
                 primitives: bool = True, group: Optional[Any] = None,
                 checkpointing: bool = False) -> None:
        if mode not in MODES:
            raise LandscopeError(f"probe mode must be one of {', '.join(MODES)} (got {mode!r})")
        chosen: str = DEFAULT_METHOD if method is None else method
        # Activation checkpointing (landscope.probes.memory): the cached graph keeps every
        # activation anyway, so it forces double_backward; torch.func refuses its hooks.
        self.checkpointing = bool(checkpointing)
        if self.checkpointing and chosen == "forward_over_reverse":
            raise LandscopeError("probe.checkpointing needs the double_backward product "
                                 "(torch.func refuses checkpoint hooks)")
        if self.checkpointing and chosen == "cached":
            chosen = "double_backward"
        if chosen not in METHODS:
            raise LandscopeError(f"HVP method must be one of {', '.join(METHODS)} "
                                 f"(got {chosen!r})")
        self.model, self.mode, self.requested_method = model, mode, chosen
        self.primitives = bool(primitives)
        self.param_names, values = resolve_params(model, params)
        self.dtype: torch.dtype = values[0].dtype
        self.device: torch.device = values[0].device
        # Private copies: the operator is a snapshot, immune to later in-place updates.
        self._leaves = [v.clone().requires_grad_(True) for v in values]
        self._shapes = [v.shape for v in values]
        self._numels = [v.numel() for v in values]
        self.dim: int = sum(self._numels)
        self._fixed = fixed_tensors(model, self.param_names, self.dtype, self.device)
        if data.dtype != self.dtype or data.device != self.device:
            data = data.to(self.dtype, self.device)
        self.data = data
        self._weights = data.weights
        self.group = group  # a torch.distributed ProcessGroup: products are all-reduced
        if group is not None:
            self._check_ranks()
        self.n_matvecs = 0
        self.n_check_matvecs = 0
        self.first_product_seconds: Optional[float] = None  # the check's first product, timed
        self._kept: Optional[tuple[Tensor, Tensor]] = None  # (q, H q) from prime()
        self._cache: Optional[Tensor] = None  # cached method: the flat gradient graph
        self._theta: Optional[Tensor] = None
        self._cached_loss: Optional[float] = None
        self._cached_grad: Optional[Tensor] = None
        self.method: str = chosen
        if chosen == "cached":
            if len(data.batches) > max_cached_batches:
                self.method = "double_backward"
            else:
                self._build_cache()
        if check_determinism:
            self._check_determinism(seed)

    # ----------------------------------------------------------------- ranks
    def _reduce(self, t: Tensor) -> Tensor:
        return summed_over_ranks(t, self.group)

    def _reduce_float(self, x: float) -> float:
        return float_summed_over_ranks(x, self.group, self.device)

    def _check_ranks(self) -> None:
        """Every rank probes the same parameters and the shards' weights add up to 1."""
        flat = self.flat_params().to(torch.float64)
        mine = torch.tensor([float(self.dim), float(sum(self._weights)), float(flat.sum()),
                             float(flat.square().sum())], dtype=torch.float64, device=self.device)
        world = dist.get_world_size(self.group)
        every = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(every, mine, group=self.group)
        stats = torch.stack(every).cpu()
        dims = sorted({int(d) for d in stats[:, 0]})
        if len(dims) > 1:
            raise LandscopeError(f"the {world} ranks probe models of different sizes "
                                 f"({', '.join(map(str, dims))} parameters); every rank needs "
                                 "the same model")
        spread = (stats[:, 2:].max(0).values - stats[:, 2:].min(0).values).abs()
        if bool((spread > 1e-9 * stats[:, 2:].abs().max(0).values.clamp_min(1e-300)).any()):
            raise LandscopeError(f"the {world} ranks hold different parameter values; every "
                                 "rank must load the same model")
        total = float(stats[:, 1].sum())
        if abs(total - 1.0) > 1e-9:
            raise LandscopeError(
                f"the {world} ranks' probe-data weights add up to {total:.6g}, not 1: give each "
                "rank its shard of the same data (ProbeData.shard(rank, world)), not the whole set")

    # ----------------------------------------------------------------- parameters
    def flat_params(self) -> Tensor:
        """The probed parameters as one flat vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self._leaves])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """``{name: view}`` of a flat vector of length ``dim`` (views share its storage)."""
        if flat.shape != (self.dim,):
            raise LandscopeError(f"expected a flat vector of shape ({self.dim},), "
                                 f"got {tuple(flat.shape)}")
        parts = torch.split(flat, self._numels)
        return {n: p.view(s) for n, p, s in zip(self.param_names, parts, self._shapes)}

    def _flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    # ----------------------------------------------------------------- loss pieces
    def _batch_loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        with CurvaturePrimitives() if self.primitives else contextlib.nullcontext(), \
                activation_checkpointing(self.model) if self.checkpointing \
                else contextlib.nullcontext():
            logits = functional_call(self.model, {**self._fixed, **params}, (x,))
            return task_loss(self.model, logits, y)

    def _leaf_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.param_names, self._leaves))

    def _grads(self, out: Tensor | Sequence[Tensor], **kw: Any) -> list[Tensor]:
        """``d out / d leaves`` with zeros for parameters the loss does not touch."""
        gs = torch.autograd.grad(out, self._leaves, allow_unused=True, **kw)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, self._leaves)]

    def loss(self) -> float:
        """The probe loss ``sum_b w_b * mean_b CE`` at the operator's parameters."""
        if self._cached_loss is not None:
            return self._cached_loss
        total = 0.0
        with torch.no_grad(), forward_mode(self.model, self.mode):
            for (x, y), w in zip(self.data.batches, self._weights):
                total += w * float(self._batch_loss(self._leaf_dict(), x, y))
        return self._reduce_float(total)

    def gradient(self) -> Tensor:
        """The flat gradient of the probe loss."""
        if self._cached_grad is not None:
            return self._cached_grad.clone()
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with torch.enable_grad(), forward_mode(self.model, self.mode):
            for (x, y), w in zip(self.data.batches, self._weights):
                total += self._flatten(self._grads(w * self._batch_loss(self._leaf_dict(), x, y)))
        return self._reduce(total)

    # ----------------------------------------------------------------- products
    def _build_cache(self) -> None:
        """The weighted gradient graph of every micro-batch, summed and kept for reuse.

        The parameters enter the graph as views of one flat leaf ``theta`` (one split), so the
        cached gradient is one flat tensor and a product is a single backward pass from flat
        ``v`` to flat ``H v``: the split of ``v`` and the concatenation of ``H v`` run inside
        autograd instead of per parameter in Python."""
        theta = self.flat_params().requires_grad_(True)
        views = {n: c.view(s) for n, c, s in zip(self.param_names, theta.split(self._numels),
                                                  self._shapes)}
        graph: Optional[Tensor] = None
        loss = 0.0
        with torch.enable_grad(), forward_mode(self.model, self.mode):
            for (x, y), w in zip(self.data.batches, self._weights):
                lb = self._batch_loss(views, x, y)
                lb = lb if w == 1.0 else w * lb
                (g,) = torch.autograd.grad(lb, theta, create_graph=True, allow_unused=True)
                if g is not None:
                    graph = g if graph is None else graph + g
                loss += float(lb.detach())
        self._theta = theta
        self._cache = graph if graph is not None and graph.requires_grad else None
        self._cached_loss = self._reduce_float(loss)
        self._cached_grad = self._reduce(
            torch.zeros(self.dim, dtype=self.dtype, device=self.device) if graph is None
            else graph.detach().clone())

    def _cached_product(self, v: Tensor) -> Tensor:
        if self._cache is None:  # the gradient does not depend on the parameters: H = 0
            return torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(self._cache, self._theta, grad_outputs=v,
                                        retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv  # a new tensor (the split's backward)

    def _double_backward_product(self, vs: list[Tensor]) -> list[Tensor]:
        out = [torch.zeros_like(p) for p in self._leaves]
        with torch.enable_grad(), forward_mode(self.model, self.mode):
            for (x, y), w in zip(self.data.batches, self._weights):
                lb = w * self._batch_loss(self._leaf_dict(), x, y)
                gs = torch.autograd.grad(lb, self._leaves, create_graph=True, allow_unused=True)
                pairs = [(g, v) for g, v in zip(gs, vs) if g is not None and g.requires_grad]
                if not pairs:
                    continue
                hv = self._grads([g for g, _ in pairs], grad_outputs=[v for _, v in pairs])
                for o, h in zip(out, hv):
                    o.add_(h)
        return out

    def _forward_over_reverse_product(self, vs: list[Tensor]) -> list[Tensor]:
        primals = {n: p.detach() for n, p in zip(self.param_names, self._leaves)}
        tangents = dict(zip(self.param_names, vs))
        out = [torch.zeros_like(p) for p in self._leaves]
        with forward_mode(self.model, self.mode):
            for (x, y), w in zip(self.data.batches, self._weights):
                def grad_fn(p: dict[str, Tensor], x: Tensor = x, y: Tensor = y,
                            w: float = w) -> dict[str, Tensor]:
                    return torch.func.grad(lambda q: w * self._batch_loss(q, x, y))(p)
                hv = torch.func.jvp(grad_fn, (primals,), (tangents,))[1]
                for o, n in zip(out, self.param_names):
                    o.add_(hv[n])
        return out

    def _product(self, v: Tensor, method: str) -> Tensor:
        if v.shape != (self.dim,):
            raise LandscopeError(f"expected a vector of shape ({self.dim},), got {tuple(v.shape)}")
        v = v.detach().to(device=self.device, dtype=self.dtype)
        if method == "cached":
            return self._reduce(self._cached_product(v))
        vs = list(self.unflatten(v).values())
        if method == "double_backward":
            hv = self._double_backward_product(vs)
        else:
            hv = self._forward_over_reverse_product(vs)
        return self._reduce(self._flatten(hv))

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat ``v`` of shape ``(dim,)`` (the first call: :meth:`prime`'s kept
        product when ``v`` is exactly its vector); increments ``n_matvecs``."""
        kept, self._kept = self._kept, None
        same = kept is not None and v.dtype == kept[0].dtype and v.device == kept[0].device
        out = kept[1] if same and torch.equal(v, kept[0]) else self._product(v, self.method)
        self.n_matvecs += 1
        return out

    def prime(self, seed: int) -> float:
        """Keep ``H q`` for the unit vector ``q`` that ``lanczos_eigs(seed=seed)`` starts from
        (a seeded Gaussian, normalized) for its first step; the product's seconds, one-time
        work aside (:func:`warm_autograd`). Not in ``n_matvecs`` until a :meth:`matvec` reads it."""
        q = start_vector(self, seed)
        warm_autograd(self.device, self.dtype)
        tic = time.perf_counter()
        self._kept = (q, self._product(q, self.method))
        return time.perf_counter() - tic

    __matmul__ = matvec

    def _check_determinism(self, seed: int) -> None:
        """Refuse the operator when two products with the same vector differ (the cached
        method against a fresh double backward: a dropout baked into the graph is caught)."""
        second = self._product(start_vector(self, seed),  # first: it warms the timed one
                               "double_backward" if self.method == "cached" else self.method)
        self.first_product_seconds = self.prime(seed)  # kept for the top-k's first step
        v, first = self._kept  # type: ignore[misc]
        self.n_check_matvecs += 2
        same_products(first, second, "the Hessian", "the loss, its derivatives or the "
                      "parameters", "randomness in the forward (or train-mode BatchNorm with "
                      "shuffled batches) makes the loss change")
