"""Fully connected network.

Definition (``width`` = hidden units per layer, ``depth`` = number of hidden layers)::

    flatten(x)                                   # (B, prod(input_shape))
    h = act(norm(Linear(in, width)(x)))          # hidden layer 1
    repeat depth - 1 times:                      # hidden layers 2 .. depth
        block = [Linear(width, width), norm, act]
        h = h + block(h)   if skip else   block(h)
    logits = Linear(width, num_classes)(h)

``norm``: ``batch`` = ``BatchNorm1d(width)`` over features, ``layer`` = ``LayerNorm(width)``,
``none`` = identity.  Every hidden layer (the first included) carries one norm, so a model
has exactly ``depth`` norm modules when ``norm != none``.  Hidden ``Linear`` layers have a
bias only when ``norm`` is ``none`` (a bias before a norm is redundant); the output layer
always has one.  ``skip`` cannot apply to the first layer (``in != width``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from landscope.models.blocks import make_activation, make_vector_norm


class MLPBlock(nn.Module):
    """``Linear -> norm -> act``, optionally residual (``x + block(x)``)."""

    def __init__(self, fin: int, fout: int, norm: Any, activation: Any,
                 residual: bool = False) -> None:
        super().__init__()
        if residual and fin != fout:
            raise ValueError("a residual MLP block needs fin == fout")
        self.residual = residual
        self.linear = nn.Linear(fin, fout, bias=str(norm) == "none")
        self.norm = make_vector_norm(norm, fout)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm(self.linear(x)))
        return x + out if self.residual else out


class MLP(nn.Module):
    """Multi-layer perceptron on flattened inputs of any shape."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 128,
                 depth: int = 3, norm: Any = "none", skip: bool = False,
                 activation: Any = "relu") -> None:
        super().__init__()
        in_features = math.prod(int(s) for s in input_shape)
        self.input_layer = MLPBlock(in_features, width, norm, activation)
        self.hidden = nn.Sequential(*[
            MLPBlock(width, width, norm, activation, residual=skip) for _ in range(depth - 1)
        ])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(x.flatten(1))
        return self.head(self.hidden(h))
