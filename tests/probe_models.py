"""Small float64 models for the probe tests: seeded, in eval mode, with BatchNorm running
statistics estimated on shifted inputs so they differ from any batch's own statistics."""

from __future__ import annotations

import types

import torch
from torch import nn

from landscope.models import build_model


def seeded_model(cfg: dict, shape: tuple[int, ...], classes: int, n: int, shift: float = 0.5,
                 seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``(model, x, y)``: ``build_model(cfg)`` in float64 after ``torch.manual_seed(seed)``,
    ``n`` standard-normal inputs and uniform labels; one train-mode forward on ``x + shift``
    sets the running statistics, then the model is put in eval mode."""
    torch.manual_seed(seed)
    model = build_model(cfg, types.SimpleNamespace(input_shape=shape, num_classes=classes))
    model = model.double()
    x = torch.randn(n, *shape, dtype=torch.float64)
    y = torch.randint(0, classes, (n,))
    with torch.no_grad():
        model.train()
        model(x + shift)
    return model.eval(), x, y
