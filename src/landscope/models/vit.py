"""Small vision transformer for 1-D ``(C, L)`` and image ``(C, H, W)`` inputs.

Definition (``width`` = token dimension ``D``, ``depth`` = number of transformer blocks)::

    x = zero-pad x at the end (1-D) / bottom-right (images) to multiples of patch_size
    tokens = Conv(C -> D, kernel = stride = patch_size)(x), flattened to (B, T, D)
             (Conv1d: patches run along the sequence; Conv2d: square patches)
    h = concat(cls, tokens) + pos_embedding          # learned, (1, 1 + T, D)
    repeat depth times (pre-norm block):
        h = h + attn(norm1(h))   if skip else   attn(norm1(h))
        h = h + mlp(norm2(h))    if skip else   mlp(norm2(h))
    logits = Linear(D, num_classes)(final_norm(h)[:, 0])    # CLS token

``attn`` is multi-head self-attention with ``heads`` heads (``D % heads == 0``), written
out with matmuls and softmax so that every op supports ``torch.func`` (vmap, jvp, hessian);
``mlp`` is ``Linear(D, rD) -> act -> Linear(rD, D)`` with ``r = mlp_ratio`` (2 for ``vit``, 4 for
``vit_small``: ViT-S of Touvron et al. 2021 / Dosovitskiy et al. 2021, at patch 4, D = 384,
depth 12, 6 heads on 3x32x32 inputs it has 21,342,346 parameters for 10 classes).  ``norm``:
``layer`` = ``LayerNorm(D)``, ``batch`` = ``BatchNorm1d(D)`` over the batch and tokens, ``none`` =
identity.  No dropout.  The CLS token and positional embedding start as N(0, 0.02^2)
(truncated at 2 std) and, being ``dim > 1`` parameters, are scaled by ``init_scale``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from landscope.models.blocks import TokenNorm, make_activation, spatial_dims_of

MLP_RATIO = 2  # vit
MLP_RATIO_SMALL = 4  # vit_small (ViT-S)


class PatchEmbed(nn.Module):
    """Zero-pad to a multiple of ``patch_size``, then a strided Conv1d/Conv2d to ``dim``."""

    def __init__(self, input_shape: Sequence[int], patch_size: int, dim: int) -> None:
        super().__init__()
        spatial_dims = spatial_dims_of(input_shape, "vit")
        sizes = [int(s) for s in input_shape[1:]]
        padded = [math.ceil(s / patch_size) * patch_size for s in sizes]
        # F.pad lists (before, after) pairs from the last dimension backwards.
        pad: list[int] = []
        for s, p in zip(reversed(sizes), reversed(padded)):
            pad += [0, p - s]
        self.pad = tuple(pad) if any(pad) else None
        self.num_patches = math.prod(p // patch_size for p in padded)
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        self.proj = conv(int(input_shape[0]), dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.proj(x).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention on ``(B, T, D)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, T, head_dim)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm block: attention then MLP, each residual when ``skip``."""

    def __init__(self, dim: int, heads: int, norm: Any, activation: Any, skip: bool,
                 mlp_ratio: int = MLP_RATIO) -> None:
        super().__init__()
        self.skip = skip
        self.norm1 = TokenNorm(norm, dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = TokenNorm(norm, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), make_activation(activation),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + a if self.skip else a
        m = self.mlp(self.norm2(x))
        return x + m if self.skip else m


class ViT(nn.Module):
    """Patch embedding, CLS token, ``depth`` pre-norm blocks of dim ``width``, linear head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 128,
                 depth: int = 3, norm: Any = "layer", skip: bool = True,
                 activation: Any = "gelu", patch_size: int = 4, heads: int = 4,
                 mlp_ratio: int = MLP_RATIO) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.patch_embed = PatchEmbed(input_shape, patch_size, width)
        self.cls_token = nn.Parameter(torch.empty(1, 1, width))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + self.patch_embed.num_patches, width))
        for p in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
        self.blocks = nn.Sequential(*[
            TransformerBlock(width, heads, norm, activation, skip, mlp_ratio) for _ in range(depth)
        ])
        self.norm = TokenNorm(norm, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1) + self.pos_embed
        h = self.norm(self.blocks(h))
        return self.head(h[:, 0])
