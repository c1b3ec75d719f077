r"""Sharpness-aware minimization (SAM) and its adaptive variant (ASAM).

SAM (Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR) minimizes :math:`\max_{\|e\|_2 \le \rho} L(w + e)` with the
first-order solution of the inner problem:

.. math::

    e(w) = \rho \, \frac{g}{\|g\|_2}, \qquad g = \nabla L(w),

followed by a base-optimizer step that uses the gradient taken at the perturbed
point, :math:`w \leftarrow \mathrm{base}(w, \nabla L(w)|_{w + e(w)})`.

ASAM (Kwon et al. 2021, "ASAM: Adaptive Sharpness-Aware Minimization for
Scale-Invariant Learning of Deep Neural Networks", ICML) measures the
neighbourhood in the coordinates of a normalization operator :math:`T_w`:

.. math::

    e(w) = \rho \, \frac{T_w^2 \, g}{\|T_w \, g\|_2}, \qquad T_w = \mathrm{diag}(|w| + \eta).

Choice of :math:`\eta`: we follow the paper and its reference code
(``SamsungLabs/ASAM``) with :math:`\eta = 0.01` by default, which keeps the
perturbation non-zero for weights that are exactly zero.  Unlike the reference
code (which has parameter names and leaves biases with :math:`T_w = I`), the same
element-wise operator is applied to every parameter; ``eta=0`` gives the
:math:`T_w = |w|` variant of the popular ``davda54/sam`` implementation.

In both cases the norm is taken over *all* parameters together (every group, every
tensor with a gradient) and :math:`10^{-12}` is added to it, so a zero gradient
gives a zero perturbation instead of a division by zero.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch

_NORM_EPS = 1e-12


class SAM(torch.optim.Optimizer):
    """Two-step SAM / ASAM wrapped around a base optimizer.

    ``SAM(params, base_optimizer_cls, rho=0.05, adaptive=False, eta=0.01, **base_kwargs)``
    builds ``base_optimizer_cls(param_groups, **base_kwargs)`` over the *same*
    param-group dicts: ``self.param_groups is self.base_optimizer.param_groups``, so
    an LR scheduler attached to the SAM instance changes the base optimizer's lr,
    and every group carries both the base hyperparameters and ``rho``,
    ``adaptive``, ``eta`` (which may be set per group).

    Usage, either explicitly::

        loss_fn(model(x), y).backward()        # gradient at w
        opt.first_step(zero_grad=True)         # w -> w + e(w)
        loss_fn(model(x), y).backward()        # gradient at w + e(w)
        opt.second_step(zero_grad=True)        # restore w, base step

    or with a closure: the caller must already have computed the gradients at
    ``w`` (``loss.backward()``) before ``opt.step(closure)``; ``step`` perturbs,
    zeroes the gradients, calls ``closure`` exactly once at ``w + e(w)`` (it must
    recompute the loss and call ``backward``), restores ``w`` and takes the base
    step.  It returns the closure's loss, i.e. the loss at the perturbed point.

    Parameters whose ``grad`` is ``None`` are neither perturbed nor counted in the
    norm (and the base optimizer skips them as usual).

    ``state_dict()`` is the base optimizer's state dict (momentum buffers, Adam
    moments, param groups including ``rho``), so a checkpoint resumes bit-exactly.
    The perturbation lives in ``self.state`` only between ``first_step`` and
    ``second_step`` and is not checkpointed; save between full steps.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer_cls: Callable[..., torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        **base_kwargs: Any,
    ) -> None:
        if not rho >= 0.0:
            raise ValueError(f"SAM rho must be >= 0 (got {rho!r})")
        if not eta >= 0.0:
            raise ValueError(f"SAM eta must be >= 0 (got {eta!r})")
        defaults = dict(rho=rho, adaptive=adaptive, eta=eta, **base_kwargs)
        super().__init__(params, defaults)
        # The base optimizer appends the very same group dicts (filling in its own
        # defaults); sharing the list too makes schedulers and add_param_group
        # act on both optimizers at once.
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "base_optimizer" not in self.__dict__:  # during __init__
            super().add_param_group(param_group)
            return
        for key in ("rho", "adaptive", "eta"):
            param_group.setdefault(key, self.defaults[key])
        self.base_optimizer.add_param_group(param_group)

    def _grad_norm(self) -> Optional[torch.Tensor]:
        r""":math:`\|T_w g\|_2` over all parameters with a gradient (``T_w = I`` unless
        adaptive)."""
        norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["adaptive"]:
                    g = (p.abs() + group["eta"]) * g
                norms.append(torch.linalg.vector_norm(g, 2))
        if not norms:
            return None
        device = norms[0].device
        dtype = functools.reduce(torch.promote_types, (n.dtype for n in norms))
        return torch.linalg.vector_norm(torch.stack([n.to(device, dtype) for n in norms]), 2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        r"""Ascend: :math:`w \leftarrow w + e(w)` from the current gradients; keep :math:`w`,
        :math:`e(w)`."""
        norm = self._grad_norm()
        if norm is None:
            return
        for group in self.param_groups:
            scale = group["rho"] / (norm + _NORM_EPS)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale.to(p.device, p.dtype)
                if group["adaptive"]:
                    e_w.mul_((p.abs() + group["eta"]).square_())
                state = self.state[p]
                state["old_p"] = p.detach().clone()  # exact restore: (w + e) - e != w in floats
                state["e_w"] = e_w
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False,
                    base_step: Optional[Callable[[], Any]] = None) -> None:
        """Restore :math:`w` exactly, then ``base_optimizer.step()`` with the perturbed gradients
        (or ``base_step()`` instead, e.g. a gradient scaler's step that skips a non-finite one)."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "old_p" in state:
                    p.copy_(state.pop("old_p"))
                    state.pop("e_w", None)
        if base_step is None:
            self.base_optimizer.step()
        else:
            base_step()
        # Tell an attached LR scheduler that an optimizer step happened even when
        # first_step/second_step are used instead of step() (avoids its spurious
        # "lr_scheduler.step() before optimizer.step()" warning).
        self._opt_called = True
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        """One SAM step; gradients at ``w`` must already be in ``p.grad`` (see class doc)."""
        if closure is None:
            raise ValueError(
                "SAM.step needs a closure that recomputes the loss and calls backward; "
                "or call first_step() and second_step() yourself"
            )
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict; its param groups include
        ``rho``/``adaptive``/``eta``."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the base optimizer and re-share its (new) param groups."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:  # a plain base-optimizer state dict lacks these
            for key in ("rho", "adaptive", "eta"):
                group.setdefault(key, self.defaults[key])
        self.state.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)
