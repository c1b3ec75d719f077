"""ResNet with BasicBlocks for 1-D ``(C, L)`` and image ``(C, H, W)`` inputs.

Definition (``width`` = channels of the stem and the first stage, ``depth`` = number of
BasicBlocks; the net has ``1 + 2 * depth`` convs plus any 1x1 projections)::

    h = act(norm(conv_k(C_in -> width)(x)))                      # stem
    the depth blocks are split over min(depth, 3) stages as evenly as possible
    (earlier stages take the remainder: depth 4 -> 2, 1, 1); stage s has
    width * 2 ** s channels and its first block has stride 2 when s > 0 and the
    feature map is still >= 4 on every side.
    BasicBlock(cin -> cout, stride):
        r = norm(conv_k(cout -> cout)(act(norm(conv_k(cin -> cout, stride)(h)))))
        h = act(r + shortcut(h))   if skip else   act(r)
        shortcut = identity, or norm(conv_1x1(cin -> cout, stride)) when shapes change
    logits = Linear(c_last, num_classes)(global_avg_pool(h))

Named ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", CVPR; the
CIFAR variant of their section 4.2 stem): ``resnet18`` and ``resnet34`` pass ``stages`` =
:data:`NAMED_STAGES` -- ``[2, 2, 2, 2]`` and ``[3, 4, 6, 3]`` BasicBlocks, channels ``width *
2 ** s`` (64/128/256/512 at width 64), stride 2 in the first block of stages 2-4 with a 1x1
projection shortcut -- after a stride-1 ``kernel_size`` stem conv and no max-pool.  Their depth
(weighted layers: stem + 2 per block + head) is fixed by the name.  With ``norm=batch``,
``skip=true`` and 10 classes on 3x32x32 inputs, resnet18 has 11,173,962 parameters, as the
usual CIFAR ResNet-18.

``skip=false`` removes the shortcut entirely (no projection modules either): a plain deep
net with the same main-path layers.  ``norm``: ``batch`` = ``BatchNorm1d/2d``, ``layer`` =
``GroupNorm(1, C)``, ``none`` = identity; convs carry a bias only when ``norm`` is ``none``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from landscope.models.blocks import (
    can_downsample,
    conv_nd,
    conv_norm_act,
    global_avg_pool,
    halve_strided,
    make_activation,
    make_feature_norm,
    spatial_dims_of,
)

NAMED_STAGES: dict[str, tuple[int, ...]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def named_depth(name: str) -> int:
    """Weighted layers of a named ResNet: stem + two convs per block + the head (18, 34)."""
    return 2 + 2 * sum(NAMED_STAGES[name])


def blocks_per_stage(depth: int, max_stages: int = 3) -> list[int]:
    """Split ``depth`` blocks over ``min(depth, max_stages)`` stages, remainder first."""
    n = min(depth, max_stages)
    return [depth // n + (1 if s < depth % n else 0) for s in range(n)]


class BasicBlock(nn.Module):
    """Two ``kernel_size`` convs with norms; identity/projection shortcut when ``skip``."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, kernel_size: int, stride: int,
                 norm: Any, activation: Any, skip: bool) -> None:
        super().__init__()
        bias = str(norm) == "none"
        self.conv1 = conv_norm_act(spatial_dims, cin, cout, kernel_size, norm, activation,
                                   stride=stride)
        self.conv2 = conv_nd(spatial_dims, cout, cout, kernel_size, bias=bias)
        self.norm2 = make_feature_norm(norm, cout, spatial_dims)
        self.act = make_activation(activation)
        self.shortcut: Optional[nn.Module] = None
        if skip:
            if cin == cout and stride == 1:
                self.shortcut = nn.Identity()
            else:
                self.shortcut = nn.Sequential(
                    conv_nd(spatial_dims, cin, cout, 1, stride=stride, bias=bias),
                    make_feature_norm(norm, cout, spatial_dims),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.norm2(self.conv2(self.conv1(x)))
        if self.shortcut is not None:
            r = r + self.shortcut(x)
        return self.act(r)


class ResNet(nn.Module):
    """Stem, ``depth`` BasicBlocks in up to 3 stages (or the blocks per stage ``stages``, which
    then replaces ``depth``), global average pool, linear head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 128,
                 depth: int = 3, norm: Any = "none", skip: bool = True,
                 activation: Any = "relu", kernel_size: int = 3,
                 stages: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        spatial_dims = spatial_dims_of(input_shape, "resnet")
        size: tuple[int, ...] = tuple(int(s) for s in input_shape[1:])
        self.stem = conv_norm_act(spatial_dims, int(input_shape[0]), width, kernel_size, norm,
                                  activation)
        blocks = []
        cin = width
        layout = blocks_per_stage(depth) if stages is None else [int(n) for n in stages]
        for s, n_blocks in enumerate(layout):
            cout = width * 2 ** s
            for b in range(n_blocks):
                stride = 2 if (s > 0 and b == 0 and can_downsample(size)) else 1
                if stride == 2:
                    size = halve_strided(size)
                blocks.append(BasicBlock(spatial_dims, cin, cout, kernel_size, stride, norm,
                                         activation, skip))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(global_avg_pool(self.blocks(self.stem(x))))
