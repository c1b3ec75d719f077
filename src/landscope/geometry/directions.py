"""Directions in parameter space for loss-landscape slices.

Every function returns flat vectors in the order of :class:`~landscope.geometry.space.ParamSpace`
(``space.dim`` entries, ``model.named_parameters()`` order), in the space's dtype and device.
A slice then evaluates ``theta0 + a d`` (lines) or ``theta0 + a d1 + b d2`` (planes).

Random directions
    ``d ~ N(0, I)`` drawn from a ``torch.Generator`` seeded with ``seed`` (the global RNG is
    neither used nor advanced), always in float64 and then cast, so a float32 model and its
    float64 copy get the same direction up to rounding. :func:`random_directions` draws
    ``k`` directions one after another from one generator, so the first of ``k`` equals
    :func:`random_direction` with the same seed (a band of k directions extends the line).

Normalization (Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the Loss Landscape of
Neural Nets", NeurIPS), with ``theta`` the model's point and ``p`` one parameter tensor:

* ``"filter"`` -- for every parameter with ``p.dim() > 1`` each filter (output row /
  output channel: the slice ``p[f]`` along dim 0) is rescaled to the norm of the
  corresponding filter of the weights: ``d_f <- d_f * ||theta_f|| / ||d_f||``. This removes
  the scale invariance of ReLU (and normalized) networks from the picture, so that slices of
  different models are comparable.
* ``"layer"`` -- every parameter tensor as a whole: ``d_p <- d_p * ||theta_p|| / ||d_p||``.
* ``"model"`` -- the whole vector: ``d <- d * ||theta|| / ||d||``.
* ``"none"`` -- raw ``N(0, 1)`` entries.

Biases and norm parameters (parameters with ``p.dim() <= 1`` that are named ``bias`` or belong
to a normalization layer) get a zero component under ``"filter"`` and ``"layer"`` by default,
as in Li et al. (their ``ignore='biasbn'``): moving them adds little and their scale is not
comparable to that of the filters. Any other 1-D parameter (a weight vector, such as the
``theta`` of the synthetic problems in :mod:`landscope.synthetic`) is one filter, scaled to its
own norm. (Li et al.'s code zeroes every 1-D tensor; for a model whose weights are all 1-D
that would make every direction zero.) With ``include_bias_norm=True`` each bias or norm
tensor is also treated as a single filter and scaled to its own norm,
``d_p <- d_p * ||theta_p|| / ||d_p||`` (Li et al.'s code copies ``theta_p`` itself instead; a random
direction scaled the same way keeps the direction random). A filter or tensor whose weights are all
zero gets a zero component. ``"model"`` and ``"none"`` always keep every component.

Eigen directions
    :func:`eigen_directions` returns the columns of the probes' ``eigenvectors_top`` array
    ``(D, k)`` (unit vectors of the top Hessian eigenvalues) as rows ``(k, D)``. Their scale is
    unit norm, so a coordinate ``a`` is the Euclidean distance ``||a d||`` moved in parameter
    space (unlike filter-normalized directions, whose coordinate 1 is "one model norm away").

Towards another checkpoint
    :func:`direction_to` gives ``d = theta_b - theta_a``: coordinate 0 is ``theta_a``, 1
    reaches ``theta_b`` exactly (up to the rounding of ``theta_a + 1 * d``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from landscope.errors import LandscopeError
from landscope.geometry.space import ParamSpace

NORMALIZATIONS: tuple[str, ...] = ("filter", "layer", "model", "none")

__all__ = ["NORMALIZATIONS", "random_direction", "random_directions", "normalize_direction",
           "eigen_directions", "direction_to", "check_normalization"]


def check_normalization(normalization: Any) -> str:
    """The normalization name (enum members allowed), or a one-line :class:`LandscopeError`.

    >>> check_normalization("filter")
    'filter'
    >>> check_normalization("sideways")
    Traceback (most recent call last):
        ...
    landscope.errors.LandscopeError: direction normalization must be one of ... (got 'sideways')
    """
    name = str(normalization)
    if name not in NORMALIZATIONS:
        raise LandscopeError(f"direction normalization must be one of "
                             f"{', '.join(NORMALIZATIONS)} (got {normalization!r})")
    return str(name)


def _theta(space: ParamSpace, theta: Optional[Tensor]) -> Tensor:
    if theta is None:
        return space.theta0
    if not isinstance(theta, Tensor) or tuple(theta.shape) != (space.dim,):
        shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
        raise LandscopeError(f"theta must be a flat vector of shape ({space.dim},), got {shape}")
    return theta


def normalize_direction(direction: Tensor, space: ParamSpace, normalization: str = "filter",
                        include_bias_norm: bool = False,
                        theta: Optional[Tensor] = None) -> Tensor:
    """``direction`` (flat, length ``space.dim``) normalized to the weights ``theta``
    (default ``space.theta0``) as described in the module docstring. Computed in float64,
    returned as a new tensor in the space's dtype and device."""
    norm = check_normalization(normalization)
    if not isinstance(direction, Tensor) or tuple(direction.shape) != (space.dim,):
        shape = tuple(direction.shape) if isinstance(direction, Tensor) \
            else type(direction).__name__
        raise LandscopeError(f"a direction must be a flat vector of length {space.dim} "
                             f"(the model's parameter count), got {shape}")
    d = direction.detach().to("cpu", torch.float64, copy=True)
    w = _theta(space, theta).detach().to("cpu", torch.float64)
    if norm == "model":
        d.mul_(_ratio(w.norm(), d.norm()))
    elif norm in ("filter", "layer"):
        d_parts = space.unflatten(d)  # views into d: scaled in place
        w_parts = space.unflatten(w)
        for name in space.names:
            dp, wp = d_parts[name], w_parts[name]
            if dp.dim() <= 1:
                if include_bias_norm or not _bias_or_norm(space, name):
                    dp.mul_(_ratio(wp.norm(), dp.norm()))
                else:
                    dp.zero_()
            elif norm == "layer":
                dp.mul_(_ratio(wp.norm(), dp.norm()))
            else:  # one norm per slice along dim 0
                wf = wp.reshape(wp.shape[0], -1).norm(dim=1)
                df = dp.reshape(dp.shape[0], -1).norm(dim=1)
                scale = torch.where(df > 0, wf / torch.where(df > 0, df, 1.0), 0.0)
                dp.mul_(scale.view(-1, *([1] * (dp.dim() - 1))))
    return d.to(space.device, space.dtype)


_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _bias_or_norm(space: ParamSpace, name: str) -> bool:
    """Whether parameter ``name`` is a bias or belongs to a normalization layer."""
    owner, _, leaf = name.rpartition(".")
    return leaf == "bias" or isinstance(space.model.get_submodule(owner), _NORM_LAYERS)


def _ratio(num: Tensor, den: Tensor) -> float:
    return float(num / den) if float(den) > 0 else 0.0


def random_directions(space: ParamSpace, k: int, seed: int, normalization: str = "filter",
                      include_bias_norm: bool = False,
                      theta: Optional[Tensor] = None) -> Tensor:
    """``k`` independent seeded Gaussian directions, normalized, as a ``(k, space.dim)``
    tensor. Row ``i`` is the ``i``-th draw of ``torch.randn(D, dtype=float64)`` from
    ``torch.Generator().manual_seed(seed)``; the global RNG is untouched."""
    norm = check_normalization(normalization)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise LandscopeError(f"the number of directions must be an integer >= 1 (got {k!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise LandscopeError(f"the direction seed must be an integer (got {seed!r})")
    gen = torch.Generator().manual_seed(int(seed))
    rows = [normalize_direction(torch.randn(space.dim, generator=gen, dtype=torch.float64),
                                space, norm, include_bias_norm, theta) for _ in range(int(k))]
    return torch.stack(rows)


def random_direction(space: ParamSpace, seed: int, normalization: str = "filter",
                     include_bias_norm: bool = False, theta: Optional[Tensor] = None) -> Tensor:
    """One seeded Gaussian direction (flat, length ``space.dim``); equals
    ``random_directions(space, k, seed, ...)[0]`` for any ``k``."""
    return random_directions(space, 1, seed, normalization, include_bias_norm, theta)[0]


def eigen_directions(eigenvectors: Union[np.ndarray, Tensor, Mapping[str, Any]],
                     space: ParamSpace, k: Optional[int] = None) -> Tensor:
    """The first ``k`` (default all) columns of a ``(D, k_saved)`` eigenvector array as
    ``(k, D)`` directions of unit norm (coordinate = Euclidean distance).

    ``eigenvectors`` is the probes' ``eigenvectors_top`` array, or a mapping holding it (e.g.
    the ``np.load`` of a job's ``probes/<fingerprint>.npz``). Columns are used as saved (unit
    norm to the precision of the eigensolver), cast to the space's dtype.
    """
    if isinstance(eigenvectors, Mapping) or hasattr(eigenvectors, "files"):
        if "eigenvectors_top" not in eigenvectors:
            raise LandscopeError("no eigenvectors_top in the probe results (run the probes "
                                 "with probe.top_k > 0)")
        eigenvectors = eigenvectors["eigenvectors_top"]
    v = torch.as_tensor(np.asarray(eigenvectors) if not isinstance(eigenvectors, Tensor)
                        else eigenvectors).detach()
    if v.dim() != 2 or v.shape[0] != space.dim:
        raise LandscopeError(f"eigenvectors must have shape ({space.dim}, k) for this model, "
                             f"got {tuple(v.shape)}")
    saved = v.shape[1]
    k = saved if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= saved:
        raise LandscopeError(f"asked for {k} eigen directions but {saved} eigenvectors are "
                             "saved (raise probe.top_k)")
    out = v[:, :int(k)].t().to(space.device, space.dtype).contiguous()
    if not bool(torch.isfinite(out).all()):
        raise LandscopeError("the saved eigenvectors contain NaN or inf")
    return out


def direction_to(space: ParamSpace, other: Union[Tensor, Mapping[str, Tensor]],
                 origin: Optional[Union[Tensor, Mapping[str, Tensor]]] = None) -> Tensor:
    """``d = theta_b - theta_a`` from ``origin`` (``theta_a``, default ``space.theta0``) to
    ``other`` (``theta_b``): coordinate 1 of a line along ``d`` from ``theta_a`` is
    ``theta_b``. Points are flat vectors or parameter dicts (e.g. a checkpoint's
    ``state_dict``; buffers are ignored)."""
    b = _as_flat(space, other, "other")
    a = space.theta0 if origin is None else _as_flat(space, origin, "origin")
    return (b - a).to(space.device, space.dtype)


def _as_flat(space: ParamSpace, point: Union[Tensor, Mapping[str, Tensor]], what: str) -> Tensor:
    if isinstance(point, Mapping):
        return space.flatten_params(point).to(space.device)
    if not isinstance(point, Tensor) or tuple(point.shape) != (space.dim,):
        shape = tuple(point.shape) if isinstance(point, Tensor) else type(point).__name__
        raise LandscopeError(f"{what} must be a flat vector of length {space.dim} or a "
                             f"parameter dict, got {shape}")
    return point.detach().to(space.device, space.dtype)
