"""Cheaper second derivatives: three exact rewrites of common layers, for Hessian products.

A Hessian-vector product is a backward pass through the gradient's graph, so its cost is
set by how autograd differentiates each layer's *backward*.  Three layers that nearly every
model uses have backward-of-backward formulas that do more work than their mathematics
needs.  Inside :class:`CurvaturePrimitives` (a ``TorchFunctionMode``) they are evaluated
in an equivalent form whose second derivatives are cheaper.  The loss, the gradient and
the Hessian are unchanged up to floating-point rounding (the tests compare both forms in
float64 against the dense Hessian of the plain model):

* **Eval-mode BatchNorm after a convolution or linear layer** is folded into that layer:
  ``BN(conv(x, W) + c) = conv(x, W * s) + (c - mu) * s + beta`` with
  ``s = gamma / sqrt(var + eps)`` per output channel.  The per-activation normalization
  (and its first and second derivatives, about a third of a small CNN's product) becomes
  a per-channel scaling of the weights.  Only a BatchNorm call whose input *is* the output
  of the convolution or linear call just before it is folded (nothing can sit in between),
  and only with running statistics (``training=False``); train-mode BatchNorm is left
  alone.  The convolution's unfolded output stays in the graph, so a model that also uses
  it elsewhere still gets the right derivatives.
* **ReLU** as ``z * mask`` with ``mask = (z > 0)``, a constant.  Its derivative is a mask that does
  not depend on ``z`` (a.e.), but ``threshold_backward``'s own derivative materializes a zero
  gradient for ``z`` at every ReLU; the mask form has none.
* **Cross-entropy with class indices** as ``logsumexp(z) - z[y]``, whose double backward is
  cheaper than ``log_softmax``'s.  Only the plain case is rewritten: 2-D logits, no class
  weights, no label smoothing, no ignored targets.

The rewrites make a product cheaper, most with BatchNorm (``scripts/bench_probes.py``;
docs/measurements.md#probes-primitives).  The forward pays a little Python per call for the
mode, which the cached product (one backward per product) never
pays again.  ``HessianOperator(..., primitives=False)`` turns the rewrites off.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

# Layers whose output channel is dim 0 of the weight, for batched input (weight.dim() ==
# output.dim()).  Transposed convolutions keep output channels on dim 1: not folded.
_AFFINE: frozenset[Callable[..., Any]] = frozenset({F.conv1d, F.conv2d, F.conv3d, F.linear})
_RELU: frozenset[Callable[..., Any]] = frozenset({F.relu, torch.relu, Tensor.relu})
_BN_NAMES = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
             "eps")
_BN_DEFAULTS: dict[str, Any] = {"weight": None, "bias": None, "training": False,
                                "momentum": 0.1, "eps": 1e-5}
_CE_NAMES = ("input", "target", "weight", "size_average", "ignore_index", "reduce",
             "reduction", "label_smoothing")
_CE_DEFAULTS: dict[str, Any] = {"weight": None, "size_average": None, "ignore_index": -100,
                                "reduce": None, "reduction": "mean", "label_smoothing": 0.0}


def _bind(names: tuple[str, ...], defaults: dict[str, Any], args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Positional and keyword arguments by name; ``None`` when they do not fit ``names``."""
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return None
    bound = {**defaults, **dict(zip(names, args)), **kwargs}
    return bound if all(n in bound for n in names) else None


class CurvaturePrimitives(TorchFunctionMode):
    """While active, BatchNorm (eval), ReLU and cross-entropy calls run in the cheaper-to-
    differentiate forms described in the module docstring; every other call is unchanged.

    Use one instance per forward pass (it remembers the last convolution or linear call).
    """

    def __init__(self) -> None:
        super().__init__()
        self._last: Optional[tuple[Tensor, Callable[..., Any], tuple[Any, ...],
                                   dict[str, Any]]] = None
        self.n_folded = 0  # what was rewritten in this forward (tests, diagnostics)
        self.n_relu = 0
        self.n_cross_entropy = 0

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: tuple[Any, ...] = (), kwargs: Optional[dict[str, Any]] = None
                           ) -> Any:
        kwargs = kwargs or {}
        if func in _AFFINE:
            out = func(*args, **kwargs)
            self._last = (out, func, args, kwargs)
            return out
        rewritten: Any = None
        if func is F.batch_norm:
            rewritten = self._batch_norm(args, kwargs)
        elif func in _RELU:
            rewritten = self._relu(args, kwargs)
        elif func is F.cross_entropy:
            rewritten = self._cross_entropy(args, kwargs)
        return func(*args, **kwargs) if rewritten is None else rewritten

    # ------------------------------------------------------------------ BatchNorm
    def _batch_norm(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Tensor]:
        a = _bind(_BN_NAMES, _BN_DEFAULTS, args, kwargs)
        last, self._last = self._last, None
        if a is None or last is None or a["input"] is not last[0] or a["training"]:
            return None
        mean, var = a["running_mean"], a["running_var"]
        out, func, cargs, ckw = last
        if mean is None or var is None or len(cargs) < 2 or not isinstance(cargs[1], Tensor):
            return None
        weight: Tensor = cargs[1]
        channels = weight.shape[0]
        if (out.dim() != weight.dim() or out.dim() < 2 or out.shape[1] != channels
                or mean.numel() != channels or var.numel() != channels):
            return None  # unbatched input, or BatchNorm over another axis
        rest = list(cargs[2:])
        ckw = dict(ckw)
        bias = rest.pop(0) if rest else ckw.pop("bias", None)
        scale = torch.rsqrt(var + a["eps"])
        if a["weight"] is not None:
            scale = scale * a["weight"]
        shift = (-mean if bias is None else bias - mean) * scale
        if a["bias"] is not None:
            shift = shift + a["bias"]
        folded = weight * scale.view((channels,) + (1,) * (weight.dim() - 1))
        self.n_folded += 1
        return func(cargs[0], folded, shift, *rest, **ckw)

    # ------------------------------------------------------------------ ReLU
    def _relu(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Tensor]:
        if len(args) != 1 or not isinstance(args[0], Tensor) or kwargs.get("inplace", False):
            return None
        z = args[0]
        self.n_relu += 1
        # A multiplied mask: cheaper to differentiate twice than ``torch.where``
        # (docs/measurements.md#probes-primitives).
        # (An infinite pre-activation would give 0 * inf = nan, which the operator's
        # finiteness check reports; plain ReLU would give 0.)
        return z * (z > 0).to(z.dtype)

    # ------------------------------------------------------------------ cross-entropy
    def _cross_entropy(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                       ) -> Optional[Tensor]:
        a = _bind(_CE_NAMES, _CE_DEFAULTS, args, kwargs)
        if a is None:
            return None
        z, y = a["input"], a["target"]
        if (not isinstance(z, Tensor) or not isinstance(y, Tensor) or z.dim() != 2
                or y.dim() != 1 or y.dtype not in (torch.int64, torch.int32)
                or a["weight"] is not None or a["size_average"] is not None
                or a["reduce"] is not None or a["label_smoothing"] != 0.0
                or a["reduction"] not in ("mean", "sum", "none")
                or bool((y < 0).any())):  # negative targets: ignored ones (or invalid)
            return None
        per_sample = torch.logsumexp(z, 1) - z.gather(1, y.long().unsqueeze(1)).squeeze(1)
        self.n_cross_entropy += 1
        if a["reduction"] == "mean":
            return per_sample.mean()
        return per_sample.sum() if a["reduction"] == "sum" else per_sample
