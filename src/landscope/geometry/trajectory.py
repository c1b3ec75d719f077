"""Optimization trajectories: parameter snapshots during training, their PCA, and the
path drawn on a loss contour of the top-two-PC plane (Li et al. 2018, "Visualizing the
loss landscape of neural nets", section 7).

Recording (:class:`~landscope.geometry.snapshots.SnapshotRecorder`, in
:mod:`landscope.geometry.snapshots`)
    Flat copies of the parameters every ``every_steps`` optimizer steps or once per epoch,
    plus the initial point, in one ``.npz`` (:func:`~landscope.geometry.snapshots.load`).

Plane (:func:`trajectory_pca`, :func:`trajectory_on_plane`)
    PCA of the snapshots *relative to the final point* ``theta_f`` (the centre is
    ``theta_f``, not the snapshots' mean, as Li et al. do: the plane passes through the
    final point, drawn at the origin). With ``M = snapshots - theta_f`` (S x D) and the thin
    SVD ``M = U diag(s) V^T``, the directions are the first two rows of ``V^T``, the
    coordinates of snapshot ``k`` are ``(M_k . d1, M_k . d2)`` and the explained-variance
    ratios are ``s_i^2 / sum_j s_j^2`` (second moments about ``theta_f``). The loss is then
    evaluated on a grid ``theta_f + x d1 + y d2`` over the path's bounding box, and the
    fidelity of the picture is reported: each snapshot's true loss against the contour's
    bilinear interpolation at its projected point, and its distance from the plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from landscope.errors import LandscopeError
from landscope.geometry.snapshots import Trajectory
from landscope.geometry.space import BNMode, ParamSpace
from landscope.probes.probe_data import ProbeData
from landscope.progress import bar


# ---------------------------------------------------------------------------- PCA
@dataclass(frozen=True)
class TrajectoryPCA:
    """PCA of snapshots about a centre (float64 throughout).

    ``centre`` (D,): the final point; ``d1``, ``d2`` (D,): orthonormal top-two principal
    directions; ``coords`` (S, 2): ``((theta_k - centre) . d1, (theta_k - centre) . d2)``;
    ``singular_values`` and ``explained_variance_ratio`` (k,), ``k = min(S, D)``;
    ``distance`` (S,): ``||theta_k - centre||``; ``off_plane`` (S,): the norm of the part of
    ``theta_k - centre`` outside span(d1, d2). Sign convention: the first snapshot (the
    initial point) has coordinates <= 0 (ties: the largest entry of the direction > 0).
    """

    centre: Tensor
    d1: Tensor
    d2: Tensor
    coords: Tensor
    singular_values: Tensor
    explained_variance_ratio: Tensor
    distance: Tensor
    off_plane: Tensor

    @property
    def pc1(self) -> float:
        return float(self.explained_variance_ratio[0])

    @property
    def pc2(self) -> float:
        return float(self.explained_variance_ratio[1])

    @property
    def off_plane_relative(self) -> Tensor:
        """``off_plane / distance`` (0 for a snapshot at the centre)."""
        return torch.where(self.distance > 0, self.off_plane / self.distance.clamp_min(1e-300),
                           torch.zeros_like(self.distance))


def _as_float64(a: Any) -> Tensor:
    return torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a.detach()
                           ).to("cpu", torch.float64)


def trajectory_pca(snapshots: Any, final: Any) -> TrajectoryPCA:
    """Top-two PCA directions of ``snapshots`` (S, D) about ``final`` (D,), by a thin SVD
    of the (S, D) matrix ``snapshots - final`` (cheap: S is small). See the module doc."""
    X = _as_float64(snapshots)
    c = _as_float64(final)
    if X.dim() != 2 or c.shape != (X.shape[1],):
        raise LandscopeError(f"snapshots must be (S, D) and final (D,), got {tuple(X.shape)} "
                             f"and {tuple(c.shape)}")
    if X.shape[0] < 2 or X.shape[1] < 2:
        raise LandscopeError(f"trajectory PCA needs at least 2 snapshots of >= 2 parameters "
                             f"(got {tuple(X.shape)})")
    if not (torch.isfinite(X).all() and torch.isfinite(c).all()):
        raise LandscopeError("trajectory snapshots contain non-finite values (diverged run)")
    M = X - c
    _, s, Vh = torch.linalg.svd(M, full_matrices=False)
    dirs = Vh[:2].clone()
    coords = M @ dirs.T
    for i in range(2):
        first = coords[0, i]
        flip = first > 0 if first != 0 else dirs[i, dirs[i].abs().argmax()] < 0
        if flip:
            dirs[i].neg_()
            coords[:, i].neg_()
    total = (s ** 2).sum()
    ratio = s ** 2 / total if total > 0 else torch.full_like(s, float("nan"))
    off = torch.linalg.vector_norm(M - coords @ dirs, dim=1)
    return TrajectoryPCA(c, dirs[0], dirs[1], coords, s, ratio,
                         torch.linalg.vector_norm(M, dim=1), off)


# ---------------------------------------------------------------------------- plane
@dataclass
class TrajectoryPlane:
    """The path on the PC plane and its fidelity diagnostics.

    Arrays (:meth:`arrays`):

    * ``steps``, ``epochs`` (S,): of each snapshot (see :class:`Trajectory`);
    * ``pc_coords`` (S, 2): snapshot coordinates in the (d1, d2) plane, final point at 0;
    * ``explained_variance_ratio`` (k,): of every principal component;
    * ``grid_x`` (P,), ``grid_y`` (P,): uniform axes covering the path's bounding box (and
      the origin) plus ``margin`` of its extent on each side; 0 is a node of each;
    * ``grid_loss`` (P, P): ``grid_loss[j, i] = L(final + grid_x[i] d1 + grid_y[j] d2)``
      (rows are y: ``contour(grid_x, grid_y, grid_loss)``);
    * ``path_loss`` (S,): the true loss of each snapshot;
    * ``path_contour_loss`` (S,): the contour's bilinear interpolation at its projection;
    * ``off_plane`` (S,): ``||theta_s - final - proj_s|| / ||theta_s - final||`` (0 at the
      final point).

    Scalars (:meth:`scalars`): ``trajectory_snapshots``,
    ``trajectory_pc1_explained_variance``, ``trajectory_pc2_explained_variance``,
    ``trajectory_contour_error_max`` / ``_mean`` (of ``|path_loss - path_contour_loss|``),
    ``trajectory_off_plane_max`` / ``_mean`` (relative residual), ``trajectory_final_loss``
    (grid value at the origin = the final point's loss).
    """

    steps: np.ndarray
    epochs: np.ndarray
    pc_coords: np.ndarray
    explained_variance_ratio: np.ndarray
    grid_x: np.ndarray
    grid_y: np.ndarray
    grid_loss: np.ndarray
    path_loss: np.ndarray
    path_contour_loss: np.ndarray
    off_plane: np.ndarray
    off_plane_abs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grid_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    path_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_evals: int = 0  # parameter vectors evaluated (grid + snapshots)
    bn: str = "keep"

    def arrays(self) -> dict[str, np.ndarray]:
        keys = ("steps", "epochs", "pc_coords", "explained_variance_ratio", "grid_x", "grid_y",
                "grid_loss", "path_loss", "path_contour_loss", "off_plane")
        return {k: np.asarray(getattr(self, k)) for k in keys}

    def scalars(self) -> dict[str, float]:
        err = np.abs(self.path_loss - self.path_contour_loss)
        evr = self.explained_variance_ratio
        i0 = int(np.flatnonzero(self.grid_x == 0)[0])
        j0 = int(np.flatnonzero(self.grid_y == 0)[0])
        return {
            "trajectory_snapshots": int(len(self.steps)),
            "trajectory_pc1_explained_variance": float(evr[0]),
            "trajectory_pc2_explained_variance": float(evr[1]) if len(evr) > 1 else 0.0,
            "trajectory_contour_error_max": float(err.max()),
            "trajectory_contour_error_mean": float(err.mean()),
            "trajectory_off_plane_max": float(self.off_plane.max()),
            "trajectory_off_plane_mean": float(self.off_plane.mean()),
            "trajectory_final_loss": float(self.grid_loss[j0, i0]),
        }


def plane_axis(lo: float, hi: float, points: int, margin: float) -> np.ndarray:
    """``points`` uniform values covering ``[lo, hi]`` widened by ``margin * (hi - lo)`` on
    each side, with 0 (which must lie in ``[lo, hi]``) exactly one of them."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    span = hi - lo
    if span == 0.0:
        lo, hi, span = -0.5, 0.5, 1.0
    lo, hi = lo - margin * span, hi + margin * span
    n_neg = int(round((points - 1) * (-lo) / (hi - lo)))
    n_neg = min(max(n_neg, 1 if lo < 0 else 0), points - 2 if hi > 0 else points - 1)
    h = max(-lo / n_neg if n_neg > 0 else 0.0,
            hi / (points - 1 - n_neg) if n_neg < points - 1 else 0.0)
    return h * (np.arange(points, dtype=np.float64) - n_neg)


def bilinear(grid_x: np.ndarray, grid_y: np.ndarray, values: np.ndarray,
             x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``values[j, i]`` (at ``(grid_x[i], grid_y[j])``) at the
    points ``(x, y)`` (inside the grid; outside, the edge cell is extrapolated)."""
    def cell(axis: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.clip(np.searchsorted(axis, t, side="right") - 1, 0, len(axis) - 2)
        return i, (t - axis[i]) / (axis[i + 1] - axis[i])

    i, tx = cell(np.asarray(grid_x), np.asarray(x, np.float64))
    j, ty = cell(np.asarray(grid_y), np.asarray(y, np.float64))
    v = np.asarray(values, np.float64)
    return ((1 - tx) * (1 - ty) * v[j, i] + tx * (1 - ty) * v[j, i + 1]
            + (1 - tx) * ty * v[j + 1, i] + tx * ty * v[j + 1, i + 1])


def _check_centre(pca: TrajectoryPCA, theta0: Tensor) -> None:
    gap = float((pca.centre - theta0.to("cpu", torch.float64)).abs().max())
    scale = float(theta0.abs().max()) + 1.0
    if gap > 1e-5 * scale:
        raise LandscopeError(f"the PCA centre is not the model's point (max difference "
                             f"{gap:.3g}); compute the PCA with final=space.theta0")


def _plane_grid(space: ParamSpace, pca: TrajectoryPCA, gx: np.ndarray, gy: np.ndarray,
                train: ProbeData, bn: BNMode, bn_data: Optional[ProbeData], shown: Any
                ) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy ``[j, i]`` at ``theta0 + gx[i] d1 + gy[j] d2`` (``shown``: a
    :func:`~landscope.progress.bar` moved once per point)."""
    theta0 = space.theta0
    d1 = pca.d1.to(theta0.device)
    d2 = pca.d2.to(theta0.device)
    points_y, points_x = len(gy), len(gx)
    loss = np.empty((points_y, points_x))
    acc = np.empty((points_y, points_x))
    for j, y in enumerate(gy):
        for i, x in enumerate(gx):
            theta = theta0 + (float(x) * d1 + float(y) * d2).to(space.dtype)
            ev = space.evaluate(theta, train, bn, bn_data)[0]
            loss[j, i], acc[j, i] = ev.loss, ev.acc
            shown.update(1)
    return loss, acc


def _path(space: ParamSpace, snaps: Tensor, train: ProbeData, bn: BNMode,
          bn_data: Optional[ProbeData], shown: Any) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy of each snapshot (``shown``: a bar moved once per snapshot)."""
    path_loss, path_acc = np.empty(len(snaps)), np.empty(len(snaps))
    for k in range(len(snaps)):
        theta = snaps[k].to(space.theta0.device, space.dtype)
        ev = space.evaluate(theta, train, bn, bn_data)[0]
        path_loss[k], path_acc[k] = ev.loss, ev.acc
        shown.update(1)
    return path_loss, path_acc


def trajectory_on_plane(space: ParamSpace, pca: TrajectoryPCA, train: ProbeData,
                        points: int = 21, margin: float = 0.2, *, snapshots: Any,
                        steps: Optional[Sequence[int]] = None,
                        epochs: Optional[Sequence[int]] = None,
                        bn: BNMode = "keep", bn_data: Optional[ProbeData] = None,
                        progress: Optional[str] = None) -> TrajectoryPlane:
    """Loss contour of the PC plane through the final point and the path on it.

    ``space`` is the final model's parameter space: the grid point ``(x, y)`` is
    ``space.theta0 + (x d1 + y d2)`` (so the origin evaluates the final model exactly),
    evaluated on ``train`` with :meth:`ParamSpace.evaluate` (``bn``/``bn_data`` as there;
    ``"recompute"`` re-estimates BatchNorm statistics at every point). ``pca.centre`` must
    be that same point. ``snapshots`` (S, D) (array, tensor or :class:`Trajectory`, whose
    steps and epochs are then used) are the points ``pca`` was computed from; each is
    evaluated itself for ``path_loss``. Costs ``points**2 + S`` evaluations of ``train``;
    ``progress`` labels a tqdm bar of them (None: no bar).
    """
    if isinstance(snapshots, Trajectory):
        steps = snapshots.steps if steps is None else steps
        epochs = snapshots.epochs if epochs is None else epochs
        snapshots = snapshots.snapshots
    if points < 3:
        raise LandscopeError(f"trajectory grid needs points >= 3 (got {points})")
    if not margin >= 0:
        raise LandscopeError(f"trajectory margin must be >= 0 (got {margin})")
    S = pca.coords.shape[0]
    snaps = torch.as_tensor(np.asarray(snapshots) if not isinstance(snapshots, Tensor)
                            else snapshots)
    if tuple(snaps.shape) != (S, space.dim) or pca.centre.shape != (space.dim,):
        raise LandscopeError(f"snapshots {tuple(snaps.shape)} and PCA ({S} x "
                             f"{pca.centre.shape[0]}) do not match the model's {space.dim} "
                             "parameters")
    theta0 = space.theta0
    _check_centre(pca, theta0)
    steps_a = np.arange(S) if steps is None else np.asarray(steps, np.int64)
    epochs_a = np.zeros(S, np.int64) if epochs is None else np.asarray(epochs, np.int64)
    if len(steps_a) != S or len(epochs_a) != S:
        raise LandscopeError(f"steps/epochs need {S} entries")

    coords = pca.coords.numpy()
    gx = plane_axis(coords[:, 0].min(), coords[:, 0].max(), points, margin)
    gy = plane_axis(coords[:, 1].min(), coords[:, 1].max(), points, margin)
    shown = bar(progress, points * points + S, unit="pt")
    try:
        loss, acc = _plane_grid(space, pca, gx, gy, train, bn, bn_data, shown)
        path_loss, path_acc = _path(space, snaps, train, bn, bn_data, shown)
    finally:
        shown.close()
    contour = bilinear(gx, gy, loss, coords[:, 0], coords[:, 1])
    return TrajectoryPlane(
        steps=steps_a, epochs=epochs_a, pc_coords=coords.copy(),
        explained_variance_ratio=pca.explained_variance_ratio.numpy().copy(),
        grid_x=gx, grid_y=gy, grid_loss=loss, path_loss=path_loss, path_contour_loss=contour,
        off_plane=pca.off_plane_relative.numpy().copy(), off_plane_abs=pca.off_plane.numpy().copy(),
        grid_acc=acc, path_acc=path_acc, n_evals=points * points + S, bn=bn)


def trajectory_landscape(space: ParamSpace, trajectory: Trajectory, train: ProbeData,
                         points: int = 21, margin: float = 0.2, bn: BNMode = "keep",
                         bn_data: Optional[ProbeData] = None,
                         progress: Optional[str] = None) -> TrajectoryPlane:
    """PCA of ``trajectory`` about the final model (``space.theta0``), then
    :func:`trajectory_on_plane`: the whole analysis of one recorded run."""
    pca = trajectory_pca(trajectory.snapshots, space.theta0)
    return trajectory_on_plane(space, pca, train, points, margin, snapshots=trajectory,
                               bn=bn, bn_data=bn_data, progress=progress)
