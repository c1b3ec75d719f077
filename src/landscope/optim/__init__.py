r"""Optimizers and learning-rate schedules built from an ``OptimizerConfig``.

``cfg`` is :class:`landscope.config.OptimizerConfig` or the matching omegaconf
``DictConfig``; enum fields are str-Enums (or plain strings) and are compared by
value.

Optimizers (:func:`build_optimizer`), with :math:`g_t` the gradient plus
:math:`\lambda w` when ``weight_decay`` :math:`\lambda` is an L2 penalty:

* ``sgd``: plain SGD, :math:`w \leftarrow w - \eta\, g_t`.  Momentum is always 0
  and ``nesterov`` is ignored, whatever the config says (a preset that inherits a
  non-zero ``momentum`` still means plain SGD under this name).
* ``momentum``: heavy ball (Polyak 1964) as in ``torch.optim.SGD``,
  :math:`b_t = \mu b_{t-1} + g_t`, :math:`w \leftarrow w - \eta\, b_t`; with
  ``nesterov`` (Sutskever et al. 2013) the step uses :math:`g_t + \mu b_t`.
  ``momentum == 0`` is a :class:`~landscope.errors.ConfigError` (use ``sgd``).
* ``adam``: Adam (Kingma & Ba 2015), ``betas``, ``eps``; weight decay is the
  coupled L2 penalty added to the gradient.
* ``adamw``: AdamW (Loshchilov & Hutter 2019), decoupled weight decay
  :math:`w \leftarrow w - \eta\lambda w` next to the Adam step.
* ``sam``: :class:`~landscope.optim.sam.SAM` (Foret et al. 2021; ASAM of Kwon et
  al. 2021 when ``adaptive``) with radius ``rho`` around the base optimizer
  ``cfg.base`` in {sgd, momentum, adam, adamw}, built with the rules above.
* ``llp``: :class:`~landscope.optim.llp.LLP`, the curvature-probing "bore-hole"
  optimizer around the base optimizer ``cfg.base`` (same rules): every ``llp.every``
  steps ``llp.probes`` finite-difference gradient probes at distance ``llp.eps``; step
  :math:`\eta_t = \min(\eta, c\,s/\kappa_t)` with ``c = llp.c``, :math:`s = 1 + \mu`
  for the momentum base (else 1) and :math:`\kappa_t` the smoothed curvature scale
  (``llp.curvature``, ``llp.aggregate``, ``llp.ema``); optional ``llp.damping``.  The
  directions' generator is seeded with ``llp.seed``, or when null with
  ``torch.initial_seed()`` (the job seed: the runner seeds torch with it before building
  the optimizer); the global RNG is never drawn from.  ``llp.meta=true`` adds the
  meta-model :class:`~landscope.optim.llp_meta.MetaModel` (``llp.meta_*`` options).

Training precision (``train.precision``: fp32, bf16 autocast, fp16 autocast with a gradient
scaler; LLP only in fp32): :mod:`landscope.optim.precision`.

Schedules (:func:`build_scheduler`), stepped once per *epoch*, :math:`e` the epoch:

* ``constant``: :math:`\eta_e = \eta_0` (``ConstantLR`` with factor 1).
* ``cosine``: :math:`\eta_e = \eta_{min} + \tfrac12(\eta_0 - \eta_{min})(1 + \cos(\pi e / T))`,
  :math:`T = \max(\text{epochs}, 1)` (Loshchilov & Hutter 2017, SGDR without restarts).
* ``step``: :math:`\eta_e = \eta_0\, \gamma^{\lfloor e / \text{step\_size} \rfloor}`.

All three are torch schedulers whose ``state_dict`` holds only plain data, so a
checkpoint round-trips.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LRScheduler, StepLR

from landscope.errors import ConfigError
from landscope.optim.llp import LLP
from landscope.optim.llp_meta import MetaModel
from landscope.optim.precision import MixedPrecision, check_precision, make_precision
from landscope.optim.sam import SAM

__all__ = ["LLP", "SAM", "MixedPrecision", "build_optimizer", "build_scheduler",
           "check_precision", "is_llp", "is_sam", "make_precision"]



def _base_spec(name: str, cfg: Any, key: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``(class, kwargs)`` for a non-SAM optimizer; ``key`` names the config field in errors."""
    lr, wd = float(cfg.lr), float(cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD, dict(lr=lr, momentum=0.0, nesterov=False, weight_decay=wd)
    if name == "momentum":
        momentum = float(cfg.momentum)
        if momentum == 0.0:
            raise ConfigError(
                f"optimizer.momentum must be > 0 when {key}=momentum (got {momentum!r}); "
                f"use {key}=sgd for plain SGD"
            )
        return torch.optim.SGD, dict(lr=lr, momentum=momentum, nesterov=bool(cfg.nesterov),
                                     weight_decay=wd)
    if name in ("adam", "adamw"):
        betas = tuple(float(b) for b in cfg.betas)
        if len(betas) != 2:
            raise ConfigError(f"optimizer.betas must be two values (got {list(betas)!r})")
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls, dict(lr=lr, betas=betas, eps=float(cfg.eps), weight_decay=wd)
    allowed = "sgd, momentum, adam, adamw" + (", sam, llp" if key == "optimizer.name" else "")
    raise ConfigError(f"{key} must be one of {allowed} (got {name!r})")


def build_optimizer(params: Any, cfg: Any) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` over ``params`` (tensors or param groups)."""
    name = str(cfg.name)
    if name == "sam":
        cls, kwargs = _base_spec(str(cfg.base), cfg, "optimizer.base")
        return SAM(params, cls, rho=float(cfg.rho), adaptive=bool(cfg.adaptive), **kwargs)
    if name == "llp":
        base = str(cfg.base)
        cls, kwargs = _base_spec(base, cfg, "optimizer.base")
        llp = cfg.llp
        seed = llp.seed if llp.seed is not None else torch.initial_seed()
        return LLP(params, cls, n_probes=int(llp.probes), probe_eps=float(llp.eps),
                   every=int(llp.every), rule=str(llp.rule), c=float(llp.c),
                   curvature=str(llp.curvature), aggregate=str(llp.aggregate),
                   ema=float(llp.ema), damping=float(llp.damping),
                   seed=int(seed) % 2**63,
                   momentum_scale=1.0 + float(kwargs.get("momentum", 0.0)),
                   meta=_meta_model(llp), **kwargs)
    cls, kwargs = _base_spec(name, cfg, "optimizer.name")
    return cls(params, **kwargs)


def _meta_model(llp: Any) -> Optional[MetaModel]:
    """LLP's meta-model from ``optimizer.llp.meta*`` (None when ``meta`` is off)."""
    if not getattr(llp, "meta", False):
        return None
    return MetaModel(ridge=float(llp.meta_ridge), warmup=int(llp.meta_warmup),
                     horizon=int(llp.meta_horizon), action=str(llp.meta_action),
                     min_scale=float(llp.meta_min_scale))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, epochs: int) -> LRScheduler:
    """The per-epoch LR schedule named by ``cfg.schedule`` (call ``.step()`` once per epoch)."""
    schedule = str(cfg.schedule)
    if schedule == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    if schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(int(epochs), 1), eta_min=float(cfg.min_lr))
    if schedule == "step":
        return StepLR(optimizer, step_size=int(cfg.step_size), gamma=float(cfg.gamma))
    raise ConfigError("optimizer.schedule must be one of constant, cosine, step "
                      f"(got {schedule!r})")


def is_llp(optimizer: Any) -> bool:
    """Whether ``optimizer`` is an :class:`LLP` (the training loop runs its probes)."""
    return isinstance(optimizer, LLP)


def is_sam(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a two-step :class:`SAM` (the training loop needs a closure)."""
    return isinstance(optimizer, SAM)
