"""Shared building blocks for every architecture in :mod:`landscope.models`.

* :func:`make_activation` -- ``relu | gelu | tanh | silu | elu | leaky_relu`` (never
  ``inplace``: curvature probes run the forward under ``torch.func`` transforms).
* :func:`make_feature_norm` -- norm for conv feature maps ``(B, C, L)`` / ``(B, C, H, W)``:
  ``batch`` = ``BatchNorm1d/2d``, ``layer`` = ``GroupNorm(1, C)`` (normalizes over channels
  *and* spatial positions of each sample), ``none`` = ``Identity``.
* :func:`make_vector_norm` -- norm for feature vectors ``(B, F)``: ``batch`` =
  ``BatchNorm1d(F)``, ``layer`` = ``LayerNorm(F)``, ``none`` = ``Identity``.
* :class:`TokenNorm` -- norm for token sequences ``(B, T, D)``: ``layer`` = ``LayerNorm(D)``,
  ``batch`` = ``BatchNorm1d(D)`` with statistics over batch and tokens.
* :func:`scale_weights` -- the ``init_scale`` rule: every parameter with ``dim() > 1``
  (linear/conv kernels, ViT positional embedding and CLS token) is multiplied by the
  factor after its default initialisation; biases and norm affine parameters are untouched.
* :func:`conv_nd` / :func:`max_pool_nd` / :func:`global_avg_pool` -- 1-D vs 2-D helpers:
  ``spatial_dims = len(input_shape) - 1`` picks ``Conv1d``/``Conv2d`` etc.
* :func:`frozen_batchnorm_stats` -- context in which train-mode BatchNorm normalizes with
  batch statistics but does not update its running statistics, so the forward is pure
  and works under ``torch.func`` transforms (grad/jvp/hessian/vmap).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from landscope.errors import ConfigError

ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "tanh", "silu", "elu", "leaky_relu")
NORMS: tuple[str, ...] = ("none", "batch", "layer")
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
                                           nn.GroupNorm)

# Conv stacks downsample (max-pool or stride 2) only while every spatial side is >= this.
MIN_DOWNSAMPLE_SIZE = 4



def make_activation(name: Any) -> nn.Module:
    """A fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    name = str(name)
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    if name == "silu":
        return nn.SiLU()
    if name == "elu":
        return nn.ELU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    raise ConfigError(f"model.activation must be one of {', '.join(ACTIVATIONS)} (got {name!r})")


def _check_norm(norm: Any) -> str:
    norm = str(norm)
    if norm not in NORMS:
        raise ConfigError(f"model.norm must be one of {', '.join(NORMS)} (got {norm!r})")
    return norm


def make_feature_norm(norm: Any, channels: int, spatial_dims: int) -> nn.Module:
    """Norm for ``(B, C, *spatial)`` feature maps with ``spatial_dims`` in ``{1, 2}``."""
    norm = _check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm1d(channels) if spatial_dims == 1 else nn.BatchNorm2d(channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def make_vector_norm(norm: Any, features: int) -> nn.Module:
    """Norm for ``(B, F)`` feature vectors."""
    norm = _check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm1d(features)
    if norm == "layer":
        return nn.LayerNorm(features)
    return nn.Identity()


class TokenNorm(nn.Module):
    """Norm over the feature dim ``D`` of tokens ``(B, T, D)``.

    ``batch`` transposes to ``(B, D, T)`` so ``BatchNorm1d(D)`` pools statistics over the
    batch and the tokens; ``layer`` is ``LayerNorm(D)``; ``none`` is the identity.
    """

    def __init__(self, norm: Any, dim: int) -> None:
        super().__init__()
        self.kind = _check_norm(norm)
        self.norm: nn.Module
        if self.kind == "batch":
            self.norm = nn.BatchNorm1d(dim)
        elif self.kind == "layer":
            self.norm = nn.LayerNorm(dim)
        else:
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "batch":
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x)


def scale_weights(model: nn.Module, scale: float) -> None:
    """Multiply every parameter with ``dim() > 1`` by ``scale`` (biases/norm params kept)."""
    if scale == 1.0:
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(scale)


@contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, BatchNorm layers leave running stats (and their counter) untouched.

    Train-mode BatchNorm still normalizes with the batch statistics (the loss being
    trained), eval-mode BatchNorm still uses the running statistics.  Without this, a
    train-mode forward writes to buffers in place, which ``torch.func.grad``/``jvp``/``vmap``
    reject.  The previous ``track_running_stats`` flags are restored on exit.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.track_running_stats for bn in bns]
    try:
        for bn in bns:
            bn.track_running_stats = False
        yield model
    finally:
        for bn, flag in zip(bns, saved):
            bn.track_running_stats = flag


def spatial_dims_of(input_shape: Sequence[int], model: str) -> int:
    """``1`` for ``(C, L)`` inputs, ``2`` for ``(C, H, W)``; anything else is a ConfigError."""
    if len(input_shape) not in (2, 3) or any(int(s) < 1 for s in input_shape):
        raise ConfigError(f"model {model} needs input_shape (C, L) or (C, H, W) "
                          f"(got {tuple(input_shape)})")
    return len(input_shape) - 1


def conv_nd(spatial_dims: int, cin: int, cout: int, kernel_size: int, stride: int = 1,
            bias: bool = True) -> nn.Module:
    """``Conv1d``/``Conv2d`` with 'same' padding ``kernel_size // 2`` (odd kernels)."""
    cls = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
    return cls(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


def max_pool_nd(spatial_dims: int) -> nn.Module:
    """Max-pool of window and stride 2 (floor on odd sizes)."""
    return nn.MaxPool1d(2) if spatial_dims == 1 else nn.MaxPool2d(2)


def can_downsample(size: Sequence[int]) -> bool:
    """Whether a feature map of spatial ``size`` is still large enough to halve."""
    return min(size) >= MIN_DOWNSAMPLE_SIZE


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial) -> (B, C)`` mean over all spatial positions."""
    return x.flatten(2).mean(dim=2)


def conv_norm_act(spatial_dims: int, cin: int, cout: int, kernel_size: int, norm: Any,
                  activation: Any, stride: int = 1) -> nn.Sequential:
    """``conv -> norm -> act``; the conv has a bias only when ``norm`` is ``none``.

    A bias right before a norm is (partly) cancelled by it and would only add exactly
    flat directions to the loss landscape.
    """
    norm = _check_norm(norm)
    return nn.Sequential(
        conv_nd(spatial_dims, cin, cout, kernel_size, stride=stride, bias=norm == "none"),
        make_feature_norm(norm, cout, spatial_dims),
        make_activation(activation),
    )


def halve(size: Sequence[int]) -> tuple[int, ...]:
    """Spatial size after a max-pool of 2 (floor)."""
    return tuple(s // 2 for s in size)


def halve_strided(size: Sequence[int]) -> tuple[int, ...]:
    """Spatial size after a stride-2 conv with 'same' padding and an odd kernel (ceil)."""
    return tuple(math.ceil(s / 2) for s in size)
