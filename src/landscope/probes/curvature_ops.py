"""Curvature matrices beside the Hessian: Gauss-Newton, Fisher and the NTK Gram matrix, as
linear operators the Lanczos, trace and SLQ estimators take unchanged.

With ``f_b = f(theta; x_b)`` the outputs of micro-batch ``b`` (``(B, C)``), ``J_b = d f_b / d
theta`` and the probe loss ``L = sum_b w_b (1/|b|) sum_i l(f_i, y_i)`` (``w_b = |b| / n``, the
weighting of :class:`~landscope.probes.hvp.HessianOperator`), every parameter-space matrix here
is ``M = sum_b (w_b / |b|) J_b^T Q_b J_b`` with a block-diagonal output-space matrix ``Q_b``
(one ``C x C`` block per sample):

* :class:`GGNOperator` -- the generalized Gauss-Newton (Schraudolph 2002; Martens 2020,
  "New insights and perspectives on the natural gradient method"), ``Q_i = d^2 l / d f_i^2``
  of the job's loss: ``diag(p) - p p^T`` (``p = softmax f_i``) for cross-entropy, label-smoothed
  or not (the target's mass is 1 either way); the identity for ``mse = 1/2 ||f - onehot||^2``;
  for a model with a task loss of its own (the synthetic problems), the output Hessian by
  autograd. ``H = G + sum_i (d l / d f_i) . d^2 f_i / d theta^2`` (the residual, Sagun et al.
  2017; Papyan 2020).
* :class:`FisherOperator` ``kind="empirical"`` -- ``Q_i = r_i r_i^T``, ``r_i = d l(f_i, y_i) /
  d f_i``: ``F_emp = (1/n) sum_i g_i g_i^T`` with ``g_i`` the per-sample gradient (Kunstner et
  al. 2019 on why it is not the Fisher). ``kind="true"`` -- the Monte Carlo Fisher of the
  model's predictive distribution: labels drawn once at construction from a seeded generator,
  ``mc_samples`` per input, ``Q_i = (1/M) sum_m r_im r_im^T`` with ``r_im`` the gradient of the
  negative log-likelihood at the drawn label: ``p - onehot(y_m)``, ``y_m ~ Categorical(p)``
  for cross-entropy (also with label smoothing: the likelihood is the model's, not the
  smoothed target's), ``f - y_m = -eps_m``, ``y_m ~ N(f, I)`` for mse. Its expectation is the
  GGN's ``Q`` in both cases (the Fisher of an exponential family in its natural parameter).
  A model with its own task has no predictive distribution here: refused.
* :class:`NTKOperator` -- the empirical neural tangent kernel (Jacot et al. 2018) on the first
  ``samples`` probe samples: the ``nC x nC`` Gram ``K = J J^T`` of the stacked output Jacobian,
  unscaled, index ``i * C + c``. Its nonzero eigenvalues are those of ``J^T J`` (for mse on
  the same samples, ``n`` times the GGN's).

Products, without forming J: each micro-batch's output graph ``f_b(theta)`` and the graph of
``g(u0) = J_b^T u0`` (``create_graph``, linear in a dummy ``u0``) are built once and kept (as
the cached Hessian keeps its gradient graph); then ``J_b v = d (g . v) / d u0`` is one backward
through the backward graph and ``J_b^T h`` one backward through the forward graph. Above
``max_cached_batches`` micro-batches the graphs are rebuilt per product (one forward and one
backward more each). ``primitives``, ``mode`` (eval / train with frozen BatchNorm statistics)
and the private parameter snapshot follow the Hessian operator; at construction two products
with one seeded vector (cached graph against a fresh one) must agree, or the operator is
refused (dropout).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscope.config.probe import CURVATURE_KINDS
from landscope.errors import LandscopeError
from landscope.losses import ClassificationLoss, task_loss
from landscope.probes.hvp import (
    MAX_CACHED_BATCHES,
    Mode,
    fixed_tensors,
    forward_mode,
    resolve_params,
    same_products,
)
from landscope.probes.primitives import CurvaturePrimitives
from landscope.probes.probe_data import ProbeData

KINDS: tuple[str, ...] = CURVATURE_KINDS  # ggn, fisher, fisher_empirical, ntk
FISHER_KINDS: tuple[str, ...] = ("true", "empirical")


def output_loss(model: nn.Module) -> str:
    """Which output loss the model trains on: ``cross_entropy`` (also label-smoothed), ``mse``,
    or ``custom`` (a ``task_loss`` of the model's own)."""
    custom = getattr(model, "task_loss", None)
    if custom is None:
        return "cross_entropy"
    return custom.name if isinstance(custom, ClassificationLoss) else "custom"


def head(data: ProbeData, n: int) -> ProbeData:
    """The first ``n`` samples of ``data`` (its micro-batches cut at ``n``)."""
    batches, left = [], int(n)
    for x, y in data.batches:
        if left <= 0:
            break
        batches.append((x[:left], y[:left]))
        left -= len(y)
    return ProbeData(batches)


class _Jacobian:
    """``J_b v`` and ``J_b^T u`` per micro-batch on kept (or rebuilt) graphs (module docstring)."""

    def __init__(self, model: nn.Module, data: ProbeData, *, params: Optional[dict[str, Tensor]],
                 mode: Mode, primitives: bool, max_cached_batches: int) -> None:
        self.model, self.mode, self.primitives = model, mode, bool(primitives)
        self.param_names, values = resolve_params(model, params)
        self.dtype: torch.dtype = values[0].dtype
        self.device: torch.device = values[0].device
        self._shapes = [v.shape for v in values]
        self._numels = [v.numel() for v in values]
        self.n_params = sum(self._numels)
        self._theta = torch.cat([v.detach().reshape(-1) for v in values]).requires_grad_(True)
        self._fixed = fixed_tensors(model, self.param_names, self.dtype, self.device)
        if data.dtype != self.dtype or data.device != self.device:
            data = data.to(self.dtype, self.device)
        self.data = data
        self.cached = len(data.batches) <= max_cached_batches
        self._graphs = [self._graph(x) for x, _ in data.batches] if self.cached else None

    def _graph(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(f_b, u0, J_b^T u0)`` with their graphs."""
        theta = self._theta
        views = {n: c.view(s) for n, c, s in zip(self.param_names, theta.split(self._numels),
                                                  self._shapes)}
        prim = CurvaturePrimitives() if self.primitives else contextlib.nullcontext()
        with torch.enable_grad(), forward_mode(self.model, self.mode), prim:
            out = functional_call(self.model, {**self._fixed, **views}, (x,))
            u0 = torch.zeros_like(out, requires_grad=True)
            (jt,) = torch.autograd.grad(out, theta, u0, create_graph=True)
        return out, u0, jt

    def graphs(self, fresh: bool = False):
        """Each micro-batch's graph, in order: the kept ones, or rebuilt (``fresh``)."""
        for b, (x, _) in enumerate(self.data.batches):
            yield (self._graphs[b] if self._graphs is not None and not fresh
                   else self._graph(x))

    @staticmethod
    def jvp(graph: tuple[Tensor, Tensor, Tensor], v: Tensor) -> Tensor:
        """``J_b v`` (shape of ``f_b``) for a flat ``v``."""
        _, u0, jt = graph
        with torch.enable_grad():
            (jv,) = torch.autograd.grad(jt, u0, v, retain_graph=True)
        return jv

    def vjp(self, graph: tuple[Tensor, Tensor, Tensor], u: Tensor) -> Tensor:
        """``J_b^T u`` (flat) for ``u`` of the shape of ``f_b``."""
        with torch.enable_grad():
            (g,) = torch.autograd.grad(graph[0], self._theta, u, retain_graph=True)
        return g

    def outputs(self) -> list[Tensor]:
        """``f_b`` at the snapshot, detached."""
        return [g[0].detach() for g in self.graphs()]


class _ParameterSpace:
    """``M = sum_b (w_b/|b|) J_b^T Q_b J_b`` (module docstring); subclasses give ``Q_b``."""

    name = "curvature"

    def __init__(self, model: nn.Module, data: ProbeData, *,
                 params: Optional[dict[str, Tensor]] = None, mode: Mode = "eval",
                 check_determinism: bool = True, max_cached_batches: int = MAX_CACHED_BATCHES,
                 seed: int = 0, primitives: bool = True) -> None:
        self.jac = _Jacobian(model, data, params=params, mode=mode, primitives=primitives,
                             max_cached_batches=max_cached_batches)
        self.model, self.mode, self.data = model, mode, self.jac.data
        self.param_names = self.jac.param_names
        self.dim: int = self.jac.n_params
        self.dtype, self.device = self.jac.dtype, self.jac.device
        self.loss_name = output_loss(model)
        self.n_matvecs = 0
        self.n_check_matvecs = 0
        self.seed = int(seed)
        scale = [w / len(y) for w, (_, y) in zip(self.data.weights, self.data.batches)]
        self._states = [self._prepare(f, y) for f, (_, y) in zip(self.jac.outputs(),
                                                                 self.data.batches)]
        self._scale = scale
        if check_determinism:
            _check_determinism(self, seed)

    def _prepare(self, f: Tensor, y: Tensor) -> object:
        raise NotImplementedError

    def _apply(self, state: object, u: Tensor) -> Tensor:
        raise NotImplementedError

    def _product(self, v: Tensor, fresh: bool = False) -> Tensor:
        if v.shape != (self.dim,):
            raise LandscopeError(f"expected a vector of shape ({self.dim},), got {tuple(v.shape)}")
        v = v.detach().to(device=self.device, dtype=self.dtype)
        out = torch.zeros_like(v)
        for graph, state, s in zip(self.jac.graphs(fresh), self._states, self._scale):
            out += self.jac.vjp(graph, s * self._apply(state, self.jac.jvp(graph, v)))
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """``M v`` for a flat ``v`` of shape ``(dim,)``; increments ``n_matvecs``."""
        out = self._product(v)
        self.n_matvecs += 1
        return out

    __matmul__ = matvec


def _loss_grad(model: nn.Module, f: Tensor, y: Tensor) -> Tensor:
    """``d l(f_i, y_i) / d f_i`` per sample (the summed loss's gradient), detached."""
    leaf = f.detach().requires_grad_(True)
    with torch.enable_grad():
        (r,) = torch.autograd.grad(task_loss(model, leaf, y, reduction="sum"), leaf)
    return r.detach()


class GGNOperator(_ParameterSpace):
    """The generalized Gauss-Newton ``G = sum_b (w_b/|b|) J_b^T (d^2 l / d f^2) J_b`` of the
    job's loss (module docstring). Symmetric positive semi-definite for a loss convex in the
    outputs (cross-entropy, mse)."""

    name = "ggn"

    def _prepare(self, f: Tensor, y: Tensor) -> object:
        if self.loss_name == "cross_entropy":
            return torch.softmax(f, dim=-1)
        if self.loss_name == "mse":
            return None
        leaf = f.detach().requires_grad_(True)  # a task of the model's own: autograd
        with torch.enable_grad():
            (g,) = torch.autograd.grad(task_loss(self.model, leaf, y, reduction="sum"), leaf,
                                       create_graph=True)
        return leaf, g

    def _apply(self, state: object, u: Tensor) -> Tensor:
        if self.loss_name == "cross_entropy":
            p = state
            return p * u - p * (p * u).sum(-1, keepdim=True)
        if self.loss_name == "mse":
            return u
        leaf, g = state
        with torch.enable_grad():
            (h,) = torch.autograd.grad(g, leaf, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(u) if h is None else h


class FisherOperator(_ParameterSpace):
    """The Fisher: ``kind="true"`` (Monte Carlo, ``mc_samples`` labels per input drawn from the
    model's predictive distribution with a generator seeded by ``seed``) or ``"empirical"``
    (the training labels). See the module docstring for the conventions."""

    def __init__(self, model: nn.Module, data: ProbeData, *, kind: str = "true",
                 mc_samples: int = 1, **kw) -> None:
        if kind not in FISHER_KINDS:
            raise LandscopeError(f"Fisher kind must be one of {', '.join(FISHER_KINDS)} "
                                 f"(got {kind!r})")
        if mc_samples < 1:
            raise LandscopeError(f"mc_samples must be >= 1 (got {mc_samples})")
        self.kind, self.mc_samples = kind, int(mc_samples)
        self.name = "fisher" if kind == "true" else "fisher_empirical"
        loss = output_loss(model)
        if kind == "true" and loss == "custom":
            raise LandscopeError(f"the true Fisher needs the model's predictive distribution; "
                                 f"{type(model).__name__} defines its own task loss: use "
                                 "fisher_empirical or ggn")
        self._gen = torch.Generator().manual_seed(int(kw.get("seed", 0)))
        self.sampled: list[Tensor] = []  # per micro-batch: drawn labels (CE) or noise (mse)
        super().__init__(model, data, **kw)

    def _prepare(self, f: Tensor, y: Tensor) -> Tensor:
        """The gradients ``r`` as ``(B, M, C)`` (empirical: ``M = 1``)."""
        if self.kind == "empirical":
            return _loss_grad(self.model, f, y).reshape(len(y), 1, -1)
        m = self.mc_samples
        if self.loss_name == "cross_entropy":
            p = torch.softmax(f.to(torch.float64), -1).cpu()
            labels = torch.multinomial(p, m, replacement=True, generator=self._gen)  # (B, M)
            self.sampled.append(labels)
            onehot = torch.nn.functional.one_hot(labels, f.shape[-1]).to(f.dtype).to(f.device)
            return torch.softmax(f, -1).unsqueeze(1) - onehot
        eps = torch.randn((f.shape[0], m, f.shape[-1]), generator=self._gen, dtype=f.dtype)
        self.sampled.append(eps)
        return -eps.to(f.device)

    def _apply(self, state: object, u: Tensor) -> Tensor:
        r = state  # (B, M, C)
        return (r * (r * u.unsqueeze(1)).sum(-1, keepdim=True)).sum(1) / r.shape[1]


class NTKOperator:
    """The empirical NTK Gram ``K = J J^T`` on the first ``samples`` samples of ``data``: an
    ``nC x nC`` operator in output space, index ``i * C + c`` (module docstring)."""

    name = "ntk"

    def __init__(self, model: nn.Module, data: ProbeData, *, samples: Optional[int] = None,
                 params: Optional[dict[str, Tensor]] = None, mode: Mode = "eval",
                 check_determinism: bool = True, max_cached_batches: int = MAX_CACHED_BATCHES,
                 seed: int = 0, primitives: bool = True) -> None:
        sub = data if samples is None else head(data, samples)
        self.jac = _Jacobian(model, sub, params=params, mode=mode, primitives=primitives,
                             max_cached_batches=max_cached_batches)
        self.model, self.mode, self.data = model, mode, self.jac.data
        self.dtype, self.device = self.jac.dtype, self.jac.device
        self._shapes = [f.shape for f in self.jac.outputs()]
        self._numels = [s.numel() for s in self._shapes]
        self.dim: int = sum(self._numels)
        self.n_params = self.jac.n_params
        self.n_matvecs = 0
        self.n_check_matvecs = 0
        if check_determinism:
            _check_determinism(self, seed)

    def _product(self, v: Tensor, fresh: bool = False) -> Tensor:
        if v.shape != (self.dim,):
            raise LandscopeError(f"expected a vector of shape ({self.dim},), got {tuple(v.shape)}")
        v = v.detach().to(device=self.device, dtype=self.dtype)
        graphs = list(self.jac.graphs(fresh))
        parts = [p.view(s) for p, s in zip(v.split(self._numels), self._shapes)]
        w = sum(self.jac.vjp(g, p) for g, p in zip(graphs, parts))
        return torch.cat([self.jac.jvp(g, w).reshape(-1) for g in graphs])

    def matvec(self, v: Tensor) -> Tensor:
        """``K v`` for ``v`` of shape ``(dim,)``; increments ``n_matvecs``."""
        out = self._product(v)
        self.n_matvecs += 1
        return out

    __matmul__ = matvec


class DifferenceOperator:
    """``A - B`` for two operators on the same space (e.g. the residual ``H - G``); a product
    costs one of each, counted in ``n_matvecs`` here and in each operand's own counter."""

    def __init__(self, a, b) -> None:
        if a.dim != b.dim:
            raise LandscopeError(f"operators of sizes {a.dim} and {b.dim} cannot be subtracted")
        self.a, self.b = a, b
        self.dim, self.dtype, self.device = a.dim, a.dtype, a.device
        self.n_matvecs = 0

    def matvec(self, v: Tensor) -> Tensor:
        self.n_matvecs += 1
        return self.a.matvec(v) - self.b.matvec(v)

    __matmul__ = matvec


def _check_determinism(op, seed: int) -> None:
    """Refuse ``op`` when a product on the kept graphs differs from one on fresh graphs."""
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(op.dim, generator=g, dtype=op.dtype).to(op.device)
    first, second = op._product(v), op._product(v, fresh=True)
    op.n_check_matvecs += 2
    same_products(first, second, f"the {op.name}", "the outputs, their derivatives or the "
                  "parameters", "randomness in the forward makes the outputs change")


def curvature_operator(kind: str, model: nn.Module, data: ProbeData, *,
                       ntk_samples: Optional[int] = None, mc_samples: int = 1, **kw):
    """The operator of ``kind`` (one of :data:`KINDS`); ``ntk_samples`` only reaches the NTK,
    ``mc_samples`` only the true Fisher."""
    if kind == "ggn":
        return GGNOperator(model, data, **kw)
    if kind == "fisher":
        return FisherOperator(model, data, kind="true", mc_samples=mc_samples, **kw)
    if kind == "fisher_empirical":
        return FisherOperator(model, data, kind="empirical", **kw)
    if kind == "ntk":
        return NTKOperator(model, data, samples=ntk_samples, **kw)
    raise LandscopeError(f"curvature kind must be one of {', '.join(KINDS)} (got {kind!r})")
