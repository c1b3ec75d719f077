"""1-D and 2-D slices of the loss landscape through a model's point.

``line_slice`` evaluates ``theta0 + a d_k`` for K directions ``d_k`` (a band of random
directions, eigenvectors, or the way to another checkpoint) and coordinates ``a``;
``plane_slice`` evaluates ``theta0 + x d1 + y d2`` on a grid (Li et al. 2018, "Visualizing
the Loss Landscape of Neural Nets"; use filter-normalized directions from
:mod:`landscope.geometry.directions` to compare models). Each point gets the exact mean loss
and accuracy on the train data and, optionally, the test data.

Grids are symmetric with an odd number of points, so the centre is a grid point, and it is
evaluated *exactly*: the working copy is set to ``theta0`` itself (no ``theta0 + 0 * d``), so
its values equal ``space.evaluate(space.theta0, ...)`` bit for bit. :func:`symmetric_grid`
builds such coordinates. A line's centre is shared by all its directions and evaluated once.

Data. The caller builds the :class:`~landscope.probes.probe_data.ProbeData`: a seeded subset
(``ProbeData.from_split(split, size, seed, batch_size)``) or the whole split (``size=None``);
values are exact means over all its samples, independent of the micro-batch size.

BatchNorm. ``bn="keep"`` evaluates every point with the trained running statistics;
``bn="recompute"`` re-estimates them at every point on ``bn_data`` (default: the train data),
see :meth:`ParamSpace.recompute_batchnorm`. The mode is recorded in the result's metadata.

Speed. One working copy of the model (the :class:`ParamSpace`'s) is moved from point to point
by writing ``theta0 + a d1 (+ b d2)`` into its flat parameter buffer in place (``torch.add(...,
out=)``; a plane row's ``theta0 + a d1`` is computed once per row); no model copies, no
allocation of parameter vectors per point; the forward pass is the working copy's flat
eval forward (:mod:`landscope.geometry.flat_forward`); loss and accuracy take a few cheap ops
(see :meth:`ParamSpace.evaluate_current`). On the default MLP a point costs little more than
a bare forward pass of the model (``scripts/bench_geometry.py``;
docs/measurements.md#geometry-space).

Workers and resume. ``workers > 1`` spreads the points over this process and ``workers - 1``
joblib (loky) processes with identical results; ``store=Path`` keeps the completed points in an
atomically written ``.npz`` with a key, so an interrupted scan resumes with only the missing points
(and a store from a different scan is never reused, with a ``RuntimeWarning``). Both are the scan
engine's, see :mod:`landscope.geometry.scan`. The speedup needs free cores; CUDA models are
evaluated in the calling process (with a warning).

Scalars (``scalars()``; ``{s}`` is ``train`` and, when test data is given, ``test``;
``delta`` = :data:`RISE_DELTA` = 0.1 nats):

line_ (K directions, coordinates ``a`` in ``[-r, r]``):
    ``line_{s}_loss_centre``, ``line_{s}_acc_centre``: values at ``a = 0``;
    ``line_{s}_rise_mean`` / ``line_{s}_rise_std``: mean / sample std (ddof 1; NaN for K = 1)
    over directions of ``(L(-r) + L(r)) / 2 - L(0)``;
    ``line_{s}_loss_max``: largest loss anywhere on the band;
    ``line_{s}_acc_drop_mean``: mean over directions of ``A(0) - (A(-r) + A(r)) / 2``;
    ``line_train_radius_min``: over the 2K half-lines (each direction, each sign), the smallest
    ``|a|`` at which the train loss, linearly interpolated between grid points, first reaches
    ``L(0) + delta`` (NaN if no half-line reaches it inside the range);
    ``line_train_radius_mean``: mean of those first-crossing ``|a|`` over the half-lines that
    reach it (NaN if none); ``line_train_radius_reached``: fraction of half-lines that reach it.
plane_ (grid ``x`` by ``y``):
    ``plane_{s}_loss_centre``, ``plane_{s}_acc_centre``: values at ``(0, 0)``;
    ``plane_{s}_loss_min``, ``plane_{s}_loss_max``: extremes over the grid;
    ``plane_{s}_rise_border_mean``: mean loss over the grid's border points minus the centre's;
    ``plane_train_radius``: smallest ``sqrt(x^2 + y^2)`` of a grid point whose train loss is
    ``>= L(0) + delta`` (NaN if none); ``plane_train_basin_fraction``: fraction of grid points
    with train loss ``< L(0) + delta``; ``plane_train_centre_is_min``: 1.0 when no grid point
    has a lower train loss than the centre, else 0.0.
A non-finite loss (a diverged point) counts as above every threshold.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from landscope.errors import LandscopeError
from landscope.geometry.scan import SAVE_EVERY_S, Scan, run_scan
from landscope.geometry.scan_store import store_path
from landscope.geometry.space import BN_MODES, ParamSpace
from landscope.probes.probe_data import ProbeData

RISE_DELTA = 0.1  # loss rise (nats) that defines the radius / basin scalars

__all__ = ["LineSlice", "PlaneSlice", "line_slice", "plane_slice", "symmetric_grid",
           "RISE_DELTA"]


# ----------------------------------------------------------------------------- results
@dataclass
class LineSlice:
    """Losses/accuracies along K lines ``theta0 + a d_k``: arrays ``(K, P)`` over ``coords``."""

    coords: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: Optional[np.ndarray] = None
    test_acc: Optional[np.ndarray] = None
    metadata: dict = field(default_factory=dict)
    n_points: int = 0  # distinct points of the scan (the centre counted once)
    n_evaluated: int = 0  # points evaluated by this call (the others came from the store)

    def arrays(self) -> dict[str, np.ndarray]:
        """``coords (P,)``, ``train_loss``/``train_acc`` ``(K, P)`` and, with test data,
        ``test_loss``/``test_acc``."""
        out = {"coords": self.coords, "train_loss": self.train_loss, "train_acc": self.train_acc}
        if self.test_loss is not None and self.test_acc is not None:
            out["test_loss"], out["test_acc"] = self.test_loss, self.test_acc
        return out

    def scalars(self) -> dict[str, float]:
        """Summary numbers prefixed ``line_`` (defined in the module docstring)."""
        c = len(self.coords) // 2
        out: dict[str, float] = {}
        for s, loss, acc in _splits(self):
            rise = (loss[:, 0] + loss[:, -1]) / 2 - loss[:, c]
            out[f"line_{s}_loss_centre"] = float(loss[0, c])
            out[f"line_{s}_acc_centre"] = float(acc[0, c])
            out[f"line_{s}_rise_mean"] = float(np.mean(rise))
            out[f"line_{s}_rise_std"] = float(np.std(rise, ddof=1)) if len(rise) > 1 else math.nan
            out[f"line_{s}_loss_max"] = _nanmax(loss)
            drop = acc[:, c] - (acc[:, 0] + acc[:, -1]) / 2
            out[f"line_{s}_acc_drop_mean"] = float(np.mean(drop))
        radii = []
        for row in self.train_loss:
            for side in (row[c:], row[c::-1]):
                radii.append(_first_crossing(self.coords[c:], side, side[0] + RISE_DELTA))
        r = np.asarray(radii)
        reached = r[np.isfinite(r)]
        out["line_train_radius_min"] = float(reached.min()) if len(reached) else math.nan
        out["line_train_radius_mean"] = float(reached.mean()) if len(reached) else math.nan
        out["line_train_radius_reached"] = float(len(reached) / len(r))
        return out


@dataclass
class PlaneSlice:
    """Losses/accuracies on the grid ``theta0 + x[i] d1 + y[j] d2``: arrays ``(P, Q)``
    indexed ``[i, j]`` (``x`` along the first axis)."""

    x: np.ndarray
    y: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: Optional[np.ndarray] = None
    test_acc: Optional[np.ndarray] = None
    metadata: dict = field(default_factory=dict)
    n_points: int = 0
    n_evaluated: int = 0

    def arrays(self) -> dict[str, np.ndarray]:
        """``x (P,)``, ``y (Q,)``, ``train_loss``/``train_acc`` ``(P, Q)`` and, with test
        data, ``test_loss``/``test_acc``."""
        out = {"x": self.x, "y": self.y, "train_loss": self.train_loss,
               "train_acc": self.train_acc}
        if self.test_loss is not None and self.test_acc is not None:
            out["test_loss"], out["test_acc"] = self.test_loss, self.test_acc
        return out

    def scalars(self) -> dict[str, float]:
        """Summary numbers prefixed ``plane_`` (defined in the module docstring)."""
        ci, cj = len(self.x) // 2, len(self.y) // 2
        border = np.ones(self.train_loss.shape, bool)
        border[1:-1, 1:-1] = False
        out: dict[str, float] = {}
        for s, loss, acc in _splits(self):
            out[f"plane_{s}_loss_centre"] = float(loss[ci, cj])
            out[f"plane_{s}_acc_centre"] = float(acc[ci, cj])
            out[f"plane_{s}_loss_min"] = _nanmin(loss)
            out[f"plane_{s}_loss_max"] = _nanmax(loss)
            out[f"plane_{s}_rise_border_mean"] = float(np.mean(loss[border]) - loss[ci, cj])
        loss = self.train_loss
        centre = loss[ci, cj]
        above = ~(loss < centre + RISE_DELTA)  # NaN counts as above
        radius = np.hypot(self.x[:, None], self.y[None, :])
        out["plane_train_radius"] = float(radius[above].min()) if above.any() else math.nan
        out["plane_train_basin_fraction"] = float(1.0 - above.mean())
        out["plane_train_centre_is_min"] = float(not bool((loss < centre).any()))
        return out


def _splits(res: Union[LineSlice, PlaneSlice]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = [("train", res.train_loss, res.train_acc)]
    if res.test_loss is not None and res.test_acc is not None:
        out.append(("test", res.test_loss, res.test_acc))
    return out


def _nanmax(a: np.ndarray) -> float:
    return math.inf if not np.all(np.isfinite(a)) else float(a.max())


def _nanmin(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite.min()) if len(finite) else math.nan


def _first_crossing(a: np.ndarray, loss: np.ndarray, target: float) -> float:
    """Smallest ``|a|`` where the piecewise-linear ``loss(a)`` (``a`` increasing in ``|a|``,
    ``a[0] = 0``) reaches ``target``; NaN if it never does. Non-finite losses count as
    above the target (the crossing is then placed at that grid point)."""
    a = np.abs(a)
    for j in range(1, len(loss)):
        lj = loss[j]
        if not math.isfinite(lj):
            return float(a[j])
        if lj >= target:
            lo = loss[j - 1]
            return float(a[j - 1] + (target - lo) / (lj - lo) * (a[j] - a[j - 1]))
    return math.nan


# ----------------------------------------------------------------------------- inputs
def symmetric_grid(radius: float, points: int) -> np.ndarray:
    """``points`` (odd, >= 3) coordinates from ``-radius`` to ``radius``, evenly spaced and
    exactly symmetric (``g[i] == -g[-1 - i]``), with an exact 0 in the middle."""
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 3 \
            or points % 2 == 0:
        raise LandscopeError(f"slice grids need an odd number of points >= 3 so that the "
                             f"centre is a grid point (got {points!r})")
    if not (isinstance(radius, (int, float, np.floating)) and math.isfinite(radius)
            and radius > 0):
        raise LandscopeError(f"slice range must be finite and > 0 (got {radius!r})")
    m = (int(points) - 1) // 2
    half = float(radius) * np.arange(1, m + 1, dtype=np.float64) / m
    return np.concatenate([-half[::-1], [0.0], half])


def _check_axis(coords: Any, what: str) -> np.ndarray:
    try:
        a = np.array(coords, dtype=np.float64)
    except (TypeError, ValueError):
        raise LandscopeError(f"{what} must be a 1-D array of numbers") from None
    if a.ndim != 1 or len(a) < 3 or len(a) % 2 == 0:
        raise LandscopeError(f"{what} must be a 1-D grid with an odd number (>= 3) of points "
                             f"so that the centre is a grid point (got shape {a.shape})")
    if not np.all(np.isfinite(a)) or not np.all(np.diff(a) > 0):
        raise LandscopeError(f"{what} must be finite and strictly increasing")
    if not np.array_equal(a, -a[::-1]):
        raise LandscopeError(f"{what} must be symmetric about 0 (c[i] == -c[-1-i]); build it "
                             "with landscope.geometry.slices.symmetric_grid(range, points)")
    a[len(a) // 2] = 0.0  # -0.0 -> 0.0
    return a


def _check_directions(space: ParamSpace, directions: Any, what: str) -> Tensor:
    try:
        if isinstance(directions, Tensor):
            d = directions
        elif isinstance(directions, (list, tuple)) and directions \
                and all(isinstance(v, Tensor) for v in directions):
            d = torch.stack([v.reshape(-1) for v in directions])
        else:
            d = torch.as_tensor(np.asarray(directions))
    except (TypeError, ValueError, RuntimeError):
        raise LandscopeError(f"{what} must be a tensor or array of shape "
                             f"(K, {space.dim})") from None
    if d.dim() == 1:
        d = d.unsqueeze(0)
    if d.dim() != 2 or d.shape[0] < 1 or d.shape[1] != space.dim:
        raise LandscopeError(f"{what} must have length {space.dim} (the model's parameter "
                             f"count), got shape {tuple(d.shape)}")
    if not d.is_floating_point() or not bool(torch.isfinite(d).all()):
        raise LandscopeError(f"{what} must be finite floating-point vectors")
    return d.detach().to(space.device, space.dtype).contiguous()


def _check_common(space: Any, train: Any, test: Any, bn: Any, bn_data: Any, workers: Any,
                  save_every: Any) -> str:
    if not isinstance(space, ParamSpace):
        raise LandscopeError(f"slices need a ParamSpace (got {type(space).__name__})")
    if not isinstance(train, ProbeData):
        raise LandscopeError(f"train data must be a ProbeData (got {type(train).__name__})")
    if test is not None and not isinstance(test, ProbeData):
        raise LandscopeError(f"test data must be a ProbeData or None "
                             f"(got {type(test).__name__})")
    if bn_data is not None and not isinstance(bn_data, ProbeData):
        raise LandscopeError(f"bn_data must be a ProbeData or None "
                             f"(got {type(bn_data).__name__})")
    mode = str(bn)
    if mode not in BN_MODES:
        raise LandscopeError(f"bn must be one of {', '.join(BN_MODES)} (got {bn!r})")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise LandscopeError(f"workers must be an integer >= 1 (got {workers!r})")
    if not (isinstance(save_every, (int, float)) and save_every >= 0):
        raise LandscopeError(f"save_every must be a number of seconds >= 0 (got {save_every!r})")
    return str(mode)


# ----------------------------------------------------------------------------- the scan


def line_slice(space: ParamSpace, directions: Any, coords: Any, train: ProbeData,
               test: Optional[ProbeData] = None, bn: str = "keep",
               bn_data: Optional[ProbeData] = None, workers: int = 1,
               store: Optional[Union[str, os.PathLike]] = None, *,
               save_every: float = SAVE_EVERY_S,
               meta: Optional[Mapping[str, Any]] = None,
               progress: Optional[str] = None) -> LineSlice:
    """Loss and accuracy at ``theta0 + a d_k`` for every direction ``d_k`` (rows of
    ``directions``, shape ``(K, D)`` or ``(D,)``) and coordinate ``a`` in ``coords``
    (symmetric, odd count, see :func:`symmetric_grid`).

    Evaluates ``K (P - 1) + 1`` points (the centre once). ``meta`` (e.g. normalization, seed,
    direction source) is copied into the result's metadata. See the module docstring for
    ``bn``, ``workers``, ``store`` (resume) and ``save_every`` (seconds between store writes);
    ``progress`` labels a tqdm bar of the points (None: no bar).
    """
    mode = _check_common(space, train, test, bn, bn_data, workers, save_every)
    dirs = _check_directions(space, directions, "line directions")
    a = _check_axis(coords, "line coordinates")
    k, p, c = dirs.shape[0], len(a), len(a) // 2
    rows = [[-1.0, 0.0, -1.0, 0.0]]  # the centre, shared by every direction
    index = np.zeros((k, p), np.int64)
    for kk in range(k):
        for j in range(p):
            if j != c:
                index[kk, j] = len(rows)
                rows.append([-1.0, 0.0, float(kk), float(a[j])])
    sets = [train] if test is None else [train, test]
    scan = Scan("line", dirs, np.asarray(rows, np.float64), [a], sets, mode,
                 bn_data if mode == "recompute" else None)
    values, n_new = run_scan(space, scan, int(workers), store_path(store), float(save_every),
                             progress)
    grid = values[index]  # (K, P, width)
    md = _metadata(space, scan, train, test, n_new, directions=k, points=p,
                   range=float(a[-1]), meta=meta)
    return LineSlice(coords=a, train_loss=grid[..., 0].copy(), train_acc=grid[..., 1].copy(),
                     test_loss=None if test is None else grid[..., 2].copy(),
                     test_acc=None if test is None else grid[..., 3].copy(),
                     metadata=md, n_points=len(rows), n_evaluated=n_new)


def plane_slice(space: ParamSpace, d1: Any, d2: Any, xs: Any, ys: Any, train: ProbeData,
                test: Optional[ProbeData] = None, bn: str = "keep",
                bn_data: Optional[ProbeData] = None, workers: int = 1,
                store: Optional[Union[str, os.PathLike]] = None, *,
                save_every: float = SAVE_EVERY_S,
                meta: Optional[Mapping[str, Any]] = None,
                progress: Optional[str] = None) -> PlaneSlice:
    """Loss and accuracy at ``theta0 + xs[i] d1 + ys[j] d2`` on the full grid (``P x Q``
    points, arrays indexed ``[i, j]``). ``xs``/``ys`` are symmetric with odd counts (see
    :func:`symmetric_grid`), so ``(0, 0)`` is evaluated exactly. Other arguments as in
    :func:`line_slice`.
    """
    mode = _check_common(space, train, test, bn, bn_data, workers, save_every)
    v1 = _check_directions(space, d1, "plane direction d1")
    v2 = _check_directions(space, d2, "plane direction d2")
    if v1.shape[0] != 1 or v2.shape[0] != 1:
        raise LandscopeError("plane directions d1 and d2 must each be one flat vector")
    x = _check_axis(xs, "plane x coordinates")
    y = _check_axis(ys, "plane y coordinates")
    ii, jj = np.meshgrid(x, y, indexing="ij")
    terms = np.stack([np.zeros(ii.size), ii.ravel(), np.ones(ii.size), jj.ravel()], axis=1)
    sets = [train] if test is None else [train, test]
    scan = Scan("plane", torch.cat([v1, v2]), terms, [x, y], sets, mode,
                 bn_data if mode == "recompute" else None)
    values, n_new = run_scan(space, scan, int(workers), store_path(store), float(save_every),
                             progress)
    grid = values.reshape(len(x), len(y), scan.width)
    md = _metadata(space, scan, train, test, n_new, points=(len(x), len(y)),
                   range=(float(x[-1]), float(y[-1])), meta=meta)
    return PlaneSlice(x=x, y=y, train_loss=grid[..., 0].copy(), train_acc=grid[..., 1].copy(),
                      test_loss=None if test is None else grid[..., 2].copy(),
                      test_acc=None if test is None else grid[..., 3].copy(),
                      metadata=md, n_points=len(terms), n_evaluated=n_new)


def _metadata(space: ParamSpace, scan: Scan, train: ProbeData, test: Optional[ProbeData],
              n_new: int, meta: Optional[Mapping[str, Any]], **extra: Any) -> dict:
    md: dict[str, Any] = {
        "kind": scan.kind, "bn": scan.bn, "has_batchnorm": space.has_batchnorm,
        "bn_data": ("train" if scan.bn_data is None else f"{scan.bn_data.n} samples")
        if scan.bn == "recompute" else None,
        "n_train": train.n, "n_test": None if test is None else test.n, "dim": space.dim,
        "dtype": str(space.dtype).replace("torch.", ""), "n_points": len(scan.terms),
        "n_from_store": len(scan.terms) - n_new, "rise_delta": RISE_DELTA, **extra}
    if meta:
        md.update(dict(meta))
    return md
