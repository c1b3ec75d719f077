r"""LLP, the "bore-hole" optimizer: curvature from a few finite-difference gradient probes.

Every ``every`` (k) steps LLP draws N directions :math:`d_i` uniform on the unit sphere of
the D trainable parameters (a seeded :class:`torch.Generator` of its own, never the global
RNG), evaluates the mini-batch gradient at :math:`\theta + \varepsilon d_i` and forms the
finite-difference gradient change

.. math::

    h_i = \frac{\nabla L(\theta + \varepsilon d_i) - \nabla L(\theta)}{\varepsilon}
        \approx H d_i ,

which is exact for a quadratic and, on a network, the Hessian-vector product smoothed over
a "bore hole" of depth :math:`\varepsilon` (on ReLU networks it includes the kinks the hole
crosses, so it differs from the HVP at the point: a curvature *at scale* ε).  Choice of
ε = 1e-4 (default): a larger ε lets more directions cross a ReLU kink, and a kink adds a
gradient jump divided by ε; a smaller one drowns the difference in float32 round-off (the
comparison against the exact HVP: docs/measurements.md#optim-llp).  Per probe step it records

* the gradient-change curvature :math:`\|h_i\|` (mean and max over the N directions;
  ``curv_mean``, ``curv_max``), with :math:`\mathbb{E}\|Hd\|^2 = \operatorname{tr}(H^2)/D`
  for d uniform on the sphere;
* the directional curvature :math:`d_i^\top h_i \approx d_i^\top H d_i` (``dir_curv_mean``),
  with :math:`\mathbb{E}\, d^\top H d = \operatorname{tr}(H)/D`, so ``D * dir_curv_mean``
  (``trace_est``) is an unbiased estimate of the trace (Hutchinson with sphere vectors);
* the curvature scale :math:`\kappa` that drives the rule (``curvature``):

  - ``frobenius`` (default): :math:`\kappa = \sqrt{D \cdot \mathrm{agg}_i \|h_i\|^2}`.  With
    ``aggregate=mean`` :math:`\kappa^2` is an unbiased estimate of
    :math:`\operatorname{tr}(H^2) = \|H\|_F^2 \ge \lambda_{max}^2`, so :math:`\kappa` is on
    the scale of (and in expectation above) the top eigenvalue; ``aggregate=max`` is more
    conservative still.  ``aggregate=median`` (default) is robust to the rare direction
    that crosses a ReLU kink (with ``mean``, such directions pushed the step down in a
    MNIST-1D run: docs/measurements.md#optim-llp), at a
    bias: when one eigenvalue dominates, :math:`D\|Hd\|^2/\lambda^2` is a
    :math:`\chi^2_1`-like variable whose median is 0.45 of its mean, so :math:`\kappa`
    can be down to ~0.67 :math:`\|H\|_F`; with a spread spectrum the ratio tends to 1.
  - ``raw``: :math:`\kappa = \mathrm{agg}_i \|h_i\|`, the literal gradient change.  In D
    dimensions it is about :math:`\lambda_{max}\sqrt{k/D}` for k outlier eigenvalues, far
    below :math:`\lambda_{max}`: the constant ``c`` must then be tuned per model.

  :math:`\kappa` is smoothed across probe steps by an exponential moving average
  (``ema``; 0 = the latest estimate only), because N random directions see
  :math:`\operatorname{tr}(H^2)` with a relative standard deviation near
  :math:`\sqrt{2/N}` when a few eigenvalues dominate.

**Learning-rate rule** (``rule=inverse``): the step of every update is

.. math::

    \eta_t = \min\left(\eta_{max},\ \frac{c\, s}{\kappa_t}\right),

with :math:`\eta_{max}` the configured (and scheduled) ``lr`` -- the cap in flat regions --
and :math:`s = 1 + \mu` for the heavy-ball base (momentum :math:`\mu`), else 1.  Motivation:
gradient descent on a quadratic is stable iff :math:`\eta < 2/\lambda_{max}`
(:math:`2(1+\mu)/\lambda_{max}` with heavy-ball momentum), and Cohen et al. 2021 ("Gradient
Descent on Neural Networks Typically Occurs at the Edge of Stability", ICLR) show that with
a fixed step the sharpness rises until it hovers at that limit.  Since
:math:`\kappa \ge \lambda_{max}` in expectation (``frobenius``), ``c = 1`` keeps
:math:`\eta_t\lambda_{max} \le s` -- a margin of 2 below the limit -- so training stays
below the edge of stability instead of being regularized by it.  A non-positive or
non-finite :math:`\kappa` gives :math:`\eta_{max}`.  With an Adam base the same cap is
applied to Adam's lr; it is *not* a stability bound there (Adam's threshold is on the
preconditioned Hessian; Cohen et al. 2022) and rarely binds at Adam's usual step sizes.
``rule=none`` keeps :math:`\eta_t = \eta_{max}` (probes only logged, damping if asked).

**Damping** (``damping`` :math:`\gamma \in [0, 1]`, 0 = off): the gradient changes
:math:`h_i \approx H d_i` are one power-iteration step from random directions, so they
lean toward the top Hessian eigenvectors (random :math:`d_i` themselves carry only about
1/D of any vector, so damping along them would do nothing).  With :math:`Q` an
orthonormal basis of :math:`\mathrm{span}\{h_i\}` from the latest probe step, the gradient
handed to the base optimizer (after clipping) is
:math:`g \leftarrow g - \gamma\, Q Q^\top g`: its components along the high-curvature
probe directions are multiplied by :math:`1 - \gamma`.

Cost: a probe step evaluates N extra mini-batch gradients (:meth:`LLP.probe` returns the
count; the training loop adds it to ``grad_evals``), so the average cost is
:math:`1 + N/k` gradient evaluations per step.  The loss, the BatchNorm mode and the
mini-batch of the probes are the caller's (the training loop freezes BatchNorm running
statistics during the probes).  Weight decay is not part of the probed curvature.

**Meta-model** (``meta``, a :class:`~landscope.optim.llp_meta.MetaModel`; off by default):
LLP hands it every step's mini-batch loss (:meth:`LLP.observe`) and, at each probe step, the
probe's features; it learns online to predict the relative loss decrease over the next steps
and multiplies :math:`\eta_t` by a factor in ``[min_scale, 1]`` until the next probe step
(:mod:`landscope.optim.llp_meta`).  Without it nothing changes (no loss is even read).

``state_dict()`` holds the base optimizer's state plus an ``"llp"`` entry: the generator
state, the step counter, the smoothed curvature, the damping basis and the epoch
accumulators (and the meta-model's state when it is on), so a checkpoint resumes exactly.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Optional

import torch

from landscope.optim.llp_meta import MetaModel, features

RULES = ("inverse", "none")
CURVATURES = ("frobenius", "raw")
AGGREGATES = ("median", "mean", "max")
# Per-epoch metrics (averages over the probe steps of the epoch; lr over every step, the
# meta-model's factor included; with the meta-model also llp_meta.EPOCH_KEYS).
EPOCH_KEYS = ("llp_curv_mean", "llp_curv_max", "llp_dir_curv_mean", "llp_trace_est",
              "llp_curvature", "llp_lr", "llp_probe_steps", "llp_probe_evals")


class LLP(torch.optim.Optimizer):
    """Curvature-probing wrapper around a base optimizer (see the module docstring).

    ``LLP(params, base_optimizer_cls, n_probes=4, probe_eps=1e-4, every=10, rule="inverse",
    c=1.0, curvature="frobenius", aggregate="median", ema=0.9, damping=0.0, seed=0,
    momentum_scale=1.0, meta=None, **base_kwargs)`` (``meta``: a
    :class:`~landscope.optim.llp_meta.MetaModel` or None); ``base_kwargs["lr"]`` is the cap
    :math:`\\eta_{max}`.  Param groups are shared with the base optimizer (as in
    :class:`~landscope.optim.sam.SAM`), so an LR scheduler moves the cap.

    Usage: gradients at θ in ``p.grad``, then ``n = opt.probe(closure)`` (``closure``
    recomputes the loss on the same mini-batch and calls ``backward``; it runs N times
    on probe steps, never otherwise; ``n`` is the number of extra gradient evaluations),
    optional gradient clipping, then ``opt.step()``.  ``opt.step(closure)`` does both.  With a
    meta-model, ``opt.observe(loss)`` with the mini-batch loss at θ first (no-op without one).
    """

    def __init__(self, params: Any, base_optimizer_cls: Callable[..., torch.optim.Optimizer],
                 n_probes: int = 4, probe_eps: float = 1e-4, every: int = 10, rule: str = "inverse",
                 c: float = 1.0, curvature: str = "frobenius", aggregate: str = "median",
                 ema: float = 0.9, damping: float = 0.0, seed: int = 0,
                 momentum_scale: float = 1.0, meta: Optional[MetaModel] = None,
                 **base_kwargs: Any) -> None:
        if n_probes < 1:
            raise ValueError(f"LLP n_probes must be >= 1 (got {n_probes!r})")
        if not (math.isfinite(probe_eps) and probe_eps > 0):
            raise ValueError(f"LLP probe_eps must be > 0 (got {probe_eps!r})")
        if every < 1:
            raise ValueError(f"LLP every must be >= 1 (got {every!r})")
        if rule not in RULES or curvature not in CURVATURES or aggregate not in AGGREGATES:
            raise ValueError(f"LLP rule/curvature/aggregate must be in {RULES}/{CURVATURES}/"
                             f"{AGGREGATES} (got {rule!r}/{curvature!r}/{aggregate!r})")
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"LLP c must be > 0 (got {c!r})")
        if not 0 <= ema < 1:
            raise ValueError(f"LLP ema must be in [0, 1) (got {ema!r})")
        if not 0 <= damping <= 1:
            raise ValueError(f"LLP damping must be in [0, 1] (got {damping!r})")
        super().__init__(params, dict(base_kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.n_probes, self.eps, self.every = int(n_probes), float(probe_eps), int(every)
        self.rule, self.c, self.curvature, self.aggregate = rule, float(c), curvature, aggregate
        self.ema, self.damping = float(ema), float(damping)
        self.momentum_scale = float(momentum_scale)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.n_steps = 0  # completed steps
        self.kappa: Optional[float] = None  # smoothed curvature scale
        self.last: dict[str, float] = {}  # the latest probe step's estimates
        self.basis: Optional[torch.Tensor] = None  # (r, D) orthonormal damping basis
        self._probed_at = -1  # n_steps at the latest probe
        self._acc: dict[str, float] = {}
        self.meta = meta

    # ------------------------------------------------------------------ helpers
    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    @staticmethod
    def _flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.grad.reshape(-1) for p in params])

    def probe_due(self) -> bool:
        """Whether the next step is a probe step (every k-th, the first included)."""
        return self.n_steps % self.every == 0 and self._probed_at != self.n_steps

    def lr_for(self, cap: float) -> float:
        """The step size :math:`\\min(\\eta_{max}, c s / \\kappa)` for the cap ``cap``."""
        k = self.kappa
        if self.rule == "none" or k is None or not math.isfinite(k) or k <= 0:
            return cap
        return min(cap, self.c * self.momentum_scale / k)

    def observe(self, loss: Any) -> None:
        """The mini-batch loss at θ of the coming step (before :meth:`probe`), for the
        meta-model; nothing happens (the value is not even read) without one."""
        if self.meta is not None:
            self.meta.observe(float(loss))

    # ------------------------------------------------------------------ probes
    @torch.no_grad()
    def probe(self, closure: Callable[[], Any]) -> int:
        """Probe the curvature if a probe step is due; returns the extra gradient evaluations.

        ``p.grad`` must hold the gradient at θ; on return θ and ``p.grad`` are exactly as
        before.  ``closure()`` must recompute the loss on the same mini-batch and call
        ``backward`` (it runs with gradients enabled)."""
        if not self.probe_due():
            return 0
        params = self._params()
        if not params:
            return 0
        self._probed_at = self.n_steps
        g0 = self._flat_grad(params)
        saved_grads = [p.grad.detach().clone() for p in params]
        theta = [p.detach().clone() for p in params]
        dim = g0.numel()
        changes, curv, dirc = [], [], []
        for _ in range(self.n_probes):
            d = torch.randn(dim, generator=self.generator, dtype=torch.float64)
            d = (d / torch.linalg.vector_norm(d)).to(g0.device, g0.dtype)
            h = self._gradient_change(params, theta, g0, d, closure)
            changes.append(h)
            curv.append(float(torch.linalg.vector_norm(h)))
            dirc.append(float(torch.dot(d.double(), h.double())))
        for p, g in zip(params, saved_grads):
            p.grad = g
        kappa = self._probe_curvature(curv, dim)
        if self.kappa is None or not math.isfinite(self.kappa):
            self.kappa = kappa
        else:
            self.kappa = self.ema * self.kappa + (1.0 - self.ema) * kappa
        self.last = {"curv_mean": sum(curv) / len(curv), "curv_max": max(curv),
                     "dir_curv_mean": sum(dirc) / len(dirc),
                     "trace_est": dim * sum(dirc) / len(dirc), "curvature": self.kappa}
        if self.damping > 0:
            mat = torch.stack(changes).double()  # (N, D)
            q, r = torch.linalg.qr(mat.T)  # (D, N)
            keep = r.diagonal().abs() > 1e-12 * max(float(r.diagonal().abs().max()), 1e-300)
            self.basis = q.T[keep].to(g0.dtype).contiguous()
        if self.meta is not None:
            self.meta.decide(features(
                self.kappa, self.last["curv_mean"], self.last["curv_max"],
                self.last["dir_curv_mean"], self.lr_for(self.param_groups[0]["lr"]),
                float(torch.linalg.vector_norm(g0)), self.meta.loss_now, self.meta.prev))
        for key, value in self.last.items():
            self._acc[f"llp_{key}"] = self._acc.get(f"llp_{key}", 0.0) + value
        self._acc["llp_probe_steps"] = self._acc.get("llp_probe_steps", 0.0) + 1
        self._acc["llp_probe_evals"] = self._acc.get("llp_probe_evals", 0.0) + self.n_probes
        return self.n_probes

    def _gradient_change(self, params: list[torch.Tensor], theta: list[torch.Tensor],
                         g0: torch.Tensor, d: torch.Tensor, closure: Callable[[], Any]
                         ) -> torch.Tensor:
        """``(g(θ + εd) − g(θ)) / ε`` from one ``closure()`` at ``θ + εd``; θ restored exactly."""
        offset = 0
        for p in params:
            n = p.numel()
            p.add_(d[offset:offset + n].view_as(p), alpha=self.eps)
            offset += n
        for p in params:
            p.grad = None
        with torch.enable_grad():
            closure()
        gi = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                        for p in params])
        h = (gi - g0) / self.eps
        for p, t in zip(params, theta):
            p.copy_(t)  # exact restore: (θ + εd) − εd != θ in floats
        return h

    def _probe_curvature(self, curv: list[float], dim: int) -> float:
        """The curvature of the current probe from the directions' ``‖H d‖`` (``aggregate``,
        ``curvature``)."""
        agg = {"max": max, "median": statistics.median,
               "mean": lambda v: sum(v) / len(v)}[self.aggregate]
        if self.curvature == "frobenius":
            return math.sqrt(dim * agg([x * x for x in curv]))
        return agg(curv)

    # ------------------------------------------------------------------ the step
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        """Damp (if asked), take the base step at :math:`\\eta_t`, restore the cap.

        With ``closure``, :meth:`probe` runs first (``p.grad`` must hold the gradient at θ)."""
        if closure is not None:
            self.probe(closure)
        if self.basis is not None and self.damping > 0:
            params = self._params()
            if params:
                with torch.no_grad():
                    g = self._flat_grad(params)
                    if g.numel() == self.basis.shape[1]:
                        g = g - self.damping * (self.basis.T @ (self.basis @ g))
                        offset = 0
                        for p in params:
                            n = p.numel()
                            p.grad.copy_(g[offset:offset + n].view_as(p))
                            offset += n
        caps = [group["lr"] for group in self.param_groups]
        lrs = [self.lr_for(cap) for cap in caps]
        if self.meta is not None:
            lrs = [lr * self.meta.factor for lr in lrs]
            self.meta.count_step()
        for group, lr in zip(self.param_groups, lrs):
            group["lr"] = lr
        try:
            self.base_optimizer.step()
        finally:
            for group, cap in zip(self.param_groups, caps):
                group["lr"] = cap
        self._opt_called = True  # an attached LR scheduler sees an optimizer step
        self.n_steps += 1
        self._acc["llp_lr_sum"] = self._acc.get("llp_lr_sum", 0.0) + lrs[0]
        self._acc["llp_steps"] = self._acc.get("llp_steps", 0.0) + 1
        return None

    def pop_epoch_metrics(self) -> dict[str, float]:
        """Averages since the last call (the probe steps' estimates, the step size over every
        step) under :data:`EPOCH_KEYS`; NaN where nothing happened. Resets the accumulators."""
        acc, self._acc = self._acc, {}
        probes = acc.get("llp_probe_steps", 0.0)
        out = {}
        for key in ("llp_curv_mean", "llp_curv_max", "llp_dir_curv_mean", "llp_trace_est",
                    "llp_curvature"):
            out[key] = acc[key] / probes if probes else math.nan
        steps = acc.get("llp_steps", 0.0)
        out["llp_lr"] = acc["llp_lr_sum"] / steps if steps else math.nan
        out["llp_probe_steps"] = int(probes)
        out["llp_probe_evals"] = int(acc.get("llp_probe_evals", 0))
        if self.meta is not None:
            out.update(self.meta.pop_epoch_metrics())
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict plus ``"llp"`` (generator, counters, curvature,
        damping basis, epoch accumulators)."""
        sd = self.base_optimizer.state_dict()
        sd["llp"] = {"generator": self.generator.get_state(), "n_steps": self.n_steps,
                     "probed_at": self._probed_at,
                     "kappa": self.kappa, "last": dict(self.last),
                     "basis": None if self.basis is None else self.basis.detach().clone(),
                     "acc": dict(self._acc)}
        if self.meta is not None:
            sd["llp"]["meta"] = self.meta.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("llp", None)
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        if extra is not None:
            self.generator.set_state(extra["generator"])
            self.n_steps = int(extra["n_steps"])
            self._probed_at = int(extra.get("probed_at", -1))
            self.kappa = extra["kappa"]
            self.last = dict(extra["last"])
            self.basis = extra["basis"]
            self._acc = dict(extra["acc"])
            if self.meta is not None and "meta" in extra:
                self.meta.load_state_dict(extra["meta"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)
