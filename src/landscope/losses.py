"""The task loss and the correctness criterion, in one place for every caller.

Classification models (all of :mod:`landscope.models`) use cross-entropy on logits and
``argmax == label`` unless the job's ``loss`` group says otherwise: :func:`attach` gives the
model a :class:`ClassificationLoss` (label-smoothed cross-entropy, or the squared error on
one-hot targets), so the Hessian every probe sees is that of the training objective.
A model may define its own task instead (the synthetic problems in
:mod:`landscope.synthetic` do) by providing two methods:

* ``task_loss(out, y, reduction)`` -- per-sample losses reduced by ``"mean"``, ``"sum"``
  or ``"none"`` (must work under ``torch.func`` transforms: ``vmap``, ``grad``);
* ``task_correct(out, y)`` -- a boolean tensor, one entry per sample.

Training, probes, verification and geometry all call :func:`task_loss` and
:func:`n_correct`, so a model with its own task runs through the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscope.errors import ConfigError

LOSS_NAMES = ("cross_entropy", "mse")


@dataclass(frozen=True)
class ClassificationLoss:
    """A classification objective on logits ``out`` (``(B, C)``, or ``(C,)`` for one sample
    under ``vmap``) against class indices ``y``; reduced by ``"mean"``, ``"sum"`` or
    ``"none"``.

    * ``cross_entropy``: ``-log softmax(out)_y``; with ``label_smoothing = s`` the target is
      ``(1 - s) onehot(y) + s / C`` (Szegedy et al. 2016).
    * ``mse``: ``1/2 sum_c (out_c - onehot_c(y))^2`` per sample (the squared loss of Cohen et
      al. 2021's edge-of-stability experiments; its Gauss-Newton part is ``J^T J / n``).

    Works under ``torch.func`` transforms (the one-hot is a comparison with ``arange``).

    >>> mse = ClassificationLoss("mse")
    >>> float(mse(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])))
    0.25
    """

    name: str = "cross_entropy"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in LOSS_NAMES:
            raise ConfigError(f"loss.name must be one of {', '.join(LOSS_NAMES)} "
                              f"(got {self.name!r})")

    @property
    def plain(self) -> bool:
        """Plain cross-entropy: what a model without a task of its own uses anyway."""
        return self.name == "cross_entropy" and self.label_smoothing == 0.0

    @property
    def error_bound_scale(self) -> float:
        """``k`` with ``k * loss >= 1`` on every misclassified sample, so ``k * loss`` is a
        differentiable upper bound of the 0-1 error (the PAC-Bayes surrogate): a wrong argmax
        means ``p_y <= 1/2``, cross-entropy ``>= ln 2`` (smoothed too: the smoothing term is
        ``>= ln C``), so ``k = 1/ln 2``; for ``mse`` some ``out_c >= out_y``, and
        ``1/2 ((out_y - 1)^2 + out_c^2) >= 1/4``, so ``k = 4``."""
        return 4.0 if self.name == "mse" else 1.0 / math.log(2.0)

    def __call__(self, out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        if self.name == "cross_entropy":
            return F.cross_entropy(out, y, reduction=reduction,
                                   label_smoothing=self.label_smoothing)
        classes = torch.arange(out.shape[-1], device=out.device)
        onehot = (y.unsqueeze(-1) == classes).to(out.dtype)
        per_sample = 0.5 * (out - onehot).pow(2).sum(-1)
        if reduction == "none":
            return per_sample
        return per_sample.sum() if reduction == "sum" else per_sample.mean()


def loss_of(cfg: Any) -> ClassificationLoss:
    """The :class:`ClassificationLoss` of a ``loss`` config node (a
    :class:`~landscope.config.LossConfig`, a DictConfig, a mapping; None = cross-entropy)."""
    if cfg is None:
        return ClassificationLoss()
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d: getattr(cfg, k, d))
    return ClassificationLoss(str(get("name", "cross_entropy")),
                              float(get("label_smoothing", 0.0) or 0.0))


def attach(model: nn.Module, loss: Optional[ClassificationLoss]) -> nn.Module:
    """Give ``model`` the task loss ``loss`` (returns the model). Plain cross-entropy, or a
    model with a task of its own (the synthetic problems), is left as it is."""
    if loss is None or loss.plain:
        return model
    if hasattr(model, "task_loss"):
        raise ConfigError(f"loss={loss.name} does not apply to {type(model).__name__}, "
                          "which defines its own task loss")
    model.task_loss = loss  # an instance attribute: no parameters, state_dict unchanged
    return model


def task_loss(model: nn.Module, out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """The model's task loss of outputs ``out`` against targets ``y`` (default cross-entropy)."""
    custom = getattr(model, "task_loss", None)
    if custom is not None:
        return custom(out, y, reduction)
    return F.cross_entropy(out, y, reduction=reduction)


def correct(model: nn.Module, out: Tensor, y: Tensor) -> Tensor:
    """Boolean per sample: is the output right? (default ``argmax(out) == y``)."""
    custom = getattr(model, "task_correct", None)
    if custom is not None:
        return custom(out, y)
    return out.argmax(-1) == y


def n_correct(model: nn.Module, out: Tensor, y: Tensor) -> int:
    """Number of correct samples in a batch."""
    return int(correct(model, out, y).sum())


def error_surrogate(model: nn.Module, out: Tensor, y: Tensor) -> Tensor:
    """The mean of ``k * loss`` over the batch, an upper bound of the 0-1 error
    (:attr:`ClassificationLoss.error_bound_scale`): the job's loss where the model carries
    one, cross-entropy / ln 2 otherwise (Dziugaite & Roy 2017's surrogate)."""
    loss = getattr(model, "task_loss", None)
    if isinstance(loss, ClassificationLoss):
        return loss(out, y) * loss.error_bound_scale
    return F.cross_entropy(out, y) / math.log(2.0)
