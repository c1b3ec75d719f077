"""Small VGG-like convolutional network for 1-D ``(C, L)`` and image ``(C, H, W)`` inputs.

Definition (``width`` = channels of the first stage, ``depth`` = number of conv stages;
each stage has two convs, so the net has ``2 * depth`` conv layers)::

    for stage i in 0 .. depth-1, with c_i = width * 2 ** min(i, 2):
        h = act(norm(conv_k(c_{i-1} -> c_i)(h)))             # channel change
        r = act(norm(conv_k(c_i -> c_i)(h)))                 # second conv
        h = h + r   if skip else   r                         # residual around conv 2
        h = max_pool_2(h)   if min(spatial size of h) >= 4   # so 8x8 and length 40 work
    logits = Linear(c_last, num_classes)(global_avg_pool(h))

Convs use ``kernel_size`` (odd) with 'same' padding; ``Conv1d`` / ``MaxPool1d`` for 1-D
inputs and ``Conv2d`` / ``MaxPool2d`` for images.  ``norm``: ``batch`` = ``BatchNorm1d/2d``,
``layer`` = ``GroupNorm(1, C)`` (over channels and positions of each sample), ``none`` =
identity; convs carry a bias only when ``norm`` is ``none``.  ``skip`` changes only the
computation, never the parameters: skip and no-skip models from the same seed share
identical weights.  Channel growth is capped at ``4 * width``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from landscope.models.blocks import (
    can_downsample,
    conv_norm_act,
    global_avg_pool,
    halve,
    max_pool_nd,
    spatial_dims_of,
)


class CNNStage(nn.Module):
    """``conv(in->out) -> conv(out->out)`` with an optional identity skip around the second."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, kernel_size: int, norm: Any,
                 activation: Any, skip: bool, pool: bool) -> None:
        super().__init__()
        self.skip = skip
        self.conv1 = conv_norm_act(spatial_dims, cin, cout, kernel_size, norm, activation)
        self.conv2 = conv_norm_act(spatial_dims, cout, cout, kernel_size, norm, activation)
        self.pool: nn.Module = max_pool_nd(spatial_dims) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        r = self.conv2(h)
        return self.pool(h + r if self.skip else r)


class CNN(nn.Module):
    """VGG-like conv net: ``depth`` two-conv stages, max-pools, global average pool, linear."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 128,
                 depth: int = 3, norm: Any = "none", skip: bool = False,
                 activation: Any = "relu", kernel_size: int = 3) -> None:
        super().__init__()
        spatial_dims = spatial_dims_of(input_shape, "cnn")
        size: tuple[int, ...] = tuple(int(s) for s in input_shape[1:])
        cin = int(input_shape[0])
        stages = []
        for i in range(depth):
            cout = width * 2 ** min(i, 2)
            pool = can_downsample(size)
            stages.append(CNNStage(spatial_dims, cin, cout, kernel_size, norm, activation,
                                   skip, pool))
            if pool:
                size = halve(size)
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(global_avg_pool(self.stages(x)))
