"""The determinism check the curvature operators run at construction: two products of one
vector, by two routes (a kept graph and a fresh one), must be finite and agree to rounding;
otherwise dropout or another random forward is baked into the operator and every estimate
built on it would be noise."""

from __future__ import annotations

import torch
from torch import Tensor

from landscope.errors import LandscopeError

#: relative tolerance of the two products' difference, by dtype
CHECK_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def same_products(first: Tensor, second: Tensor, operator: str, inputs: str,
                  randomness: str) -> None:
    """Raise :class:`LandscopeError` unless two products of one vector (the determinism check
    of an operator) are finite and agree to rounding (relative 1e-4 in float32, 1e-10 in
    float64). ``operator`` names it in the message, ``inputs`` where a NaN/inf would come from,
    ``randomness`` what would make the products differ."""
    if not (torch.isfinite(first).all() and torch.isfinite(second).all()):
        raise LandscopeError(f"{operator} product is not finite (NaN/inf in {inputs})")
    scale = max(float(first.norm()), float(second.norm()))
    diff = float((first - second).norm())
    rtol = CHECK_RTOL.get(first.dtype, CHECK_RTOL[torch.float32])
    if diff > rtol * scale:
        raise LandscopeError(
            f"{operator} operator is not deterministic: two products with the same vector "
            f"differ by {diff / scale:.1e} (relative, tolerance {rtol:.0e}); dropout or other "
            f"{randomness} between evaluations, so probe with mode='eval' or remove the "
            "randomness")
