"""The task loss and the correctness criterion, in one place for every caller.

Classification models (all of :mod:`landscope.models`) use cross-entropy on logits and
``argmax == label``. A model may define its own task instead (the synthetic problems in
:mod:`landscope.synthetic` do) by providing two methods:

* ``task_loss(out, y, reduction)`` -- per-sample losses reduced by ``"mean"``, ``"sum"``
  or ``"none"`` (must work under ``torch.func`` transforms: ``vmap``, ``grad``);
* ``task_correct(out, y)`` -- a boolean tensor, one entry per sample.

Training, probes, verification and geometry all call :func:`task_loss` and
:func:`n_correct`, so a model with its own task runs through the same code.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


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
