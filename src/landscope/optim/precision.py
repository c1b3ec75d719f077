"""Training arithmetic (``train.precision``): fp32, or autocast to bf16 / fp16.

* ``fp32`` -- :func:`make_precision` returns ``None`` and the training loop runs exactly the
  code it ran before this option existed (results bit-identical, checkpoints unchanged).
* ``bf16`` -- the training forward and loss run under ``torch.autocast(dtype=bfloat16)``:
  matmuls and convolutions in bfloat16, the ops autocast keeps in float32 (cross-entropy,
  softmax's reductions, norms where listed) in float32.  Parameters, gradients and optimizer
  state stay float32; no loss scaling (bfloat16 has float32's exponent range).
* ``fp16`` -- autocast to float16 plus dynamic loss scaling with ``torch.amp.GradScaler``
  (Micikevicius et al. 2018, "Mixed Precision Training", ICLR): the loss is multiplied by
  the scale ``S`` (initially 2**16) before ``backward``, gradients are divided by ``S``
  before clipping and the step; a step whose gradient is inf/NaN is skipped and ``S``
  halved, and ``S`` doubles after 2000 finite steps in a row.  The scaler's state is
  checkpointed (:meth:`MixedPrecision.state_dict`), so a resumed job is bit-identical.

Only the training forward/backward change.  Evaluation (the per-epoch train/test loss and
accuracy) runs in float32 at every precision: the recorded metrics are exact and comparable
across precisions, at the price of the evaluation not being accelerated.  Probes always run
in float32 too (they never enter autocast).

Optimizers with extra gradient evaluations:

* ``sam`` -- both gradients (at ``w`` and at ``w + e``) under autocast; with fp16 the first
  gradient is unscaled before the perturbation is computed from it (a non-finite one skips
  the whole step and halves ``S``), the second before clipping, and the base step is skipped
  when it is non-finite (``w`` is restored either way).
* ``llp`` -- refused with bf16/fp16 (:func:`check_precision`): its finite-difference probes
  measure gradient changes ``eps * |H d|`` with ``optimizer.llp.eps = 1e-4``, far below the
  rounding of a bf16 (relative 2**-8) or fp16 (2**-11) forward, so the curvature would be noise.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Optional

import torch

from landscope.errors import ConfigError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}



def check_precision(precision: Any, optimizer: Any) -> None:
    """One-line :class:`ConfigError` for an unknown precision or an unsupported optimizer."""
    precision, optimizer = str(precision), str(optimizer)
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)} "
                          f"(got {precision!r})")
    if precision != "fp32" and optimizer == "llp":
        raise ConfigError(f"optimizer=llp needs train.precision=fp32 (got {precision}): its "
                          "finite-difference curvature probes (optimizer.llp.eps) fall below "
                          f"{precision} rounding")


class MixedPrecision:
    """Autocast dtype and, for fp16, the gradient scaler of one training run."""

    def __init__(self, precision: str, device_type: str) -> None:
        if precision not in DTYPES:
            raise ConfigError(f"train.precision must be bf16 or fp16 here (got {precision!r})")
        if device_type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision=bf16 is not supported by this GPU; use fp16")
        self.precision, self.device_type = precision, device_type
        self.dtype = DTYPES[precision]
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(device_type) if precision == "fp16" else None)
        self.skipped = 0  # fp16: steps skipped for a non-finite gradient since pop_metrics()

    def autocast(self) -> AbstractContextManager:
        """The context the training forward and loss run in."""
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, of the scaled loss with fp16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by the scale (fp16; once per
        optimizer object and step, as GradScaler requires) and record whether any is inf/NaN."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def gradients_finite(self, params: list[torch.Tensor]) -> bool:
        """Whether every (unscaled) gradient is finite; always True without a scaler, where
        the step goes ahead as in fp32."""
        if self.scaler is None:
            return True
        grads = [p.grad for p in params if p.grad is not None]
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads \
            else True

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``, skipped by the scaler when a gradient is inf/NaN (fp16)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)

    def update(self) -> None:
        """End of a step: the scaler backs off after an inf/NaN (the step was skipped) or
        grows after its interval of finite steps."""
        if self.scaler is None:
            return
        before = self.scaler.get_scale()
        self.scaler.update()
        if self.scaler.get_scale() < before:
            self.skipped += 1

    def pop_metrics(self) -> dict[str, float]:
        """fp16: ``loss_scale`` now and ``skipped_steps`` since the last call; bf16: nothing."""
        if self.scaler is None:
            return {}
        out = {"loss_scale": float(self.scaler.get_scale()), "skipped_steps": self.skipped}
        self.skipped = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"precision": self.precision,
                "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("precision") != self.precision:
            raise ConfigError(f"the checkpoint was trained with train.precision="
                              f"{state.get('precision')}, not {self.precision}")
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def make_precision(precision: Any, optimizer: Any = "sgd",
                   device: Any = "cpu") -> Optional[MixedPrecision]:
    """``None`` for fp32 (the unchanged float32 loop), else a :class:`MixedPrecision` for the
    device type of ``device``; raises :func:`check_precision`'s errors."""
    check_precision(precision, optimizer)
    precision = str(precision)
    if precision == "fp32":
        return None
    return MixedPrecision(precision, torch.device(str(device)).type)

