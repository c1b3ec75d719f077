"""Optimization trajectories: parameter snapshots during training, their PCA, and the
path drawn on a loss contour of the top-two-PC plane (Li et al. 2018, "Visualizing the
loss landscape of neural nets", section 7).

Recording (:class:`SnapshotRecorder`)
    Flat float32 (optionally float16) copies of the model's parameters (``named_parameters``
    order, as :class:`~landscope.geometry.space.ParamSpace`), every ``every_steps`` optimizer
    steps or once per epoch (``every_steps=None``), plus the initial point (step 0). Each
    snapshot carries its step (optimizer steps taken) and its epoch: 0 for the initial point,
    otherwise the 1-based epoch during (or at the end of) which it was taken, so the
    snapshots of a run stopped after ``e`` completed epochs are exactly those with
    ``epoch <= e``. Everything lives in one ``.npz`` rewritten atomically (temp file +
    ``os.replace``) at every epoch end, so a killed job loses at most the current epoch.

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

import io
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscope.errors import LandscopeError
from landscope.geometry.space import BNMode, ParamSpace
from landscope.io import atomic_write_bytes
from landscope.probes.probe_data import ProbeData

SNAPSHOT_DTYPES = ("float32", "float16")
_FORMAT = 1


# ---------------------------------------------------------------------------- recording
@dataclass(frozen=True)
class Trajectory:
    """A recorded trajectory (see :func:`load`).

    ``steps`` (S,) int64: optimizer steps taken at each snapshot; ``epochs`` (S,) int64:
    0 for the initial point, else the 1-based epoch the snapshot belongs to; ``snapshots``
    (S, D) float32 or float16; ``epoch_end_steps`` (E+1,) int64: steps taken after
    ``e`` completed epochs (entry 0 is 0); ``every_steps``: the recording interval (None =
    once per epoch).
    """

    steps: np.ndarray
    epochs: np.ndarray
    snapshots: np.ndarray
    epoch_end_steps: np.ndarray
    every_steps: Optional[int] = None

    def __len__(self) -> int:
        return len(self.steps)


def load(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory written by :class:`SnapshotRecorder`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            every = int(f["every_steps"])
            traj = Trajectory(steps=f["steps"].astype(np.int64),
                              epochs=f["epochs"].astype(np.int64),
                              snapshots=f["snapshots"],
                              epoch_end_steps=f["epoch_end_steps"].astype(np.int64),
                              every_steps=every if every > 0 else None)
    except FileNotFoundError:
        raise LandscopeError(f"no trajectory file at {path}") from None
    except (OSError, KeyError, ValueError) as exc:
        raise LandscopeError(f"unreadable trajectory file {path}: {exc}") from None
    return traj


load_trajectory = load


def flat_parameters(model: nn.Module) -> Tensor:
    """The model's parameters as one detached flat vector (``named_parameters`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class SnapshotRecorder:
    """Records parameter snapshots during :func:`landscope.train.fit` into one ``.npz``.

    Use (the job layer wires it)::

        rec = SnapshotRecorder(job_dir / "trajectory.npz", every_steps=None)
        rec.begin(state)                      # fresh run or after restoring a checkpoint
        fit(state, ..., on_step=rec.on_step,
            on_epoch_end=lambda st, row: (rec.on_epoch_end(st), save_checkpoint(...)))

    ``on_epoch_end`` must run *before* the epoch's checkpoint is saved: a job resumed from
    the checkpoint of epoch ``e`` then finds every snapshot up to ``e`` on disk, and
    :meth:`begin` drops the ones recorded after it (:meth:`truncate`), so the stored
    trajectory equals an uninterrupted run's (training itself being deterministic).

    Storage: ``S x D`` values of ``dtype`` (``"float32"``, or ``"float16"`` for half the
    size at ~1e-3 relative precision); the whole file is rewritten at every epoch end.
    """

    def __init__(self, path: str | os.PathLike, every_steps: Optional[int] = None,
                 dtype: str = "float32") -> None:
        if every_steps is not None and int(every_steps) < 1:
            raise LandscopeError(f"snapshot every_steps must be >= 1 or None (got {every_steps})")
        if dtype not in SNAPSHOT_DTYPES:
            raise LandscopeError(f"snapshot dtype must be one of {', '.join(SNAPSHOT_DTYPES)} "
                                 f"(got {dtype!r})")
        self.path = os.fspath(path)
        self.every_steps = None if every_steps is None else int(every_steps)
        self.dtype = np.dtype(dtype)
        self._steps: list[int] = []
        self._epochs: list[int] = []
        self._snaps: list[np.ndarray] = []
        self._epoch_end_steps: list[int] = [0]

    # -------------------------------------------------------------- training hooks
    def begin(self, state: Any) -> None:
        """Start (``state.epoch == 0``: any old file is discarded and the initial point
        recorded) or continue after a resume at epoch ``e = state.epoch`` (the file is read
        and cut back to epoch ``e``). On resume ``state.step`` is checked against the steps
        of ``state.history`` (and set from them when it is still 0).
        Raises :class:`LandscopeError` when the file cannot continue the run (missing,
        recorded with other settings, or not reaching epoch ``e``)."""
        if state.epoch == 0:
            self._steps, self._epochs, self._snaps, self._epoch_end_steps = [], [], [], [0]
            state_step = int(getattr(state, "step", 0))
            if state_step != 0:
                raise LandscopeError(f"recording starts at epoch 0 but state.step={state_step}")
            self.record(state.model, 0, 0)
            self.flush()
            return
        traj = load(self.path)
        if traj.every_steps != self.every_steps or traj.snapshots.dtype != self.dtype:
            raise LandscopeError(
                f"{self.path} was recorded with every_steps={traj.every_steps}, "
                f"dtype={traj.snapshots.dtype}; this run uses every_steps={self.every_steps}, "
                f"dtype={self.dtype}")
        dim = sum(p.numel() for p in state.model.parameters())
        if traj.snapshots.shape[1] != dim:
            raise LandscopeError(f"{self.path} holds {traj.snapshots.shape[1]} parameters, "
                                 f"the model has {dim}")
        self._steps, self._epochs = traj.steps.tolist(), traj.epochs.tolist()
        self._snaps = list(traj.snapshots)
        self._epoch_end_steps = traj.epoch_end_steps.tolist()
        self.truncate(state.epoch)
        expected = self._epoch_end_steps[state.epoch]
        history_steps = sum(int(r.get("steps", 0)) for r in getattr(state, "history", []))
        if history_steps and history_steps != expected:
            raise LandscopeError(f"{self.path}: epoch {state.epoch} ended at step {expected} "
                                 f"but the training history says {history_steps}")
        if getattr(state, "step", 0) == 0:
            state.step = expected
        elif state.step != expected:
            raise LandscopeError(f"state.step={state.step} but {self.path} says epoch "
                                 f"{state.epoch} ended at step {expected}")

    def on_step(self, state: Any) -> None:
        """Hook for ``fit(on_step=...)``: records every ``every_steps`` optimizer steps."""
        if self.every_steps is not None and state.step % self.every_steps == 0:
            self.record(state.model, state.step, state.epoch + 1)

    def on_epoch_end(self, state: Any, row: Optional[dict] = None) -> None:
        """Hook for the end of an epoch (``state.epoch`` already counts it): records the
        per-epoch snapshot (``every_steps=None``), notes the epoch's last step, flushes."""
        if state.epoch != len(self._epoch_end_steps):
            raise LandscopeError(f"epoch {state.epoch} ended but the recording is at epoch "
                                 f"{len(self._epoch_end_steps) - 1} (call begin() first)")
        if self.every_steps is None:
            self.record(state.model, state.step, state.epoch)
        self._epoch_end_steps.append(int(state.step))
        self.flush()

    # -------------------------------------------------------------- storage
    def record(self, model: nn.Module, step: int, epoch: int) -> None:
        """Append the model's current parameters as a snapshot (not yet flushed)."""
        vec = flat_parameters(model).to("cpu", torch.float32).numpy().astype(self.dtype)
        if self._snaps and vec.shape != self._snaps[0].shape:
            raise LandscopeError(f"snapshot of {vec.size} parameters, earlier ones had "
                                 f"{self._snaps[0].size}")
        self._steps.append(int(step))
        self._epochs.append(int(epoch))
        self._snaps.append(vec)

    def truncate(self, epoch: int) -> None:
        """Drop everything recorded after ``epoch`` completed epochs and rewrite the file."""
        if epoch < 0 or epoch >= len(self._epoch_end_steps):
            raise LandscopeError(f"{self.path} reaches epoch {len(self._epoch_end_steps) - 1}, "
                                 f"cannot continue from epoch {epoch} (flush it before the "
                                 "checkpoint, or restart the job with resume=false)")
        keep = [i for i, e in enumerate(self._epochs) if e <= epoch]
        self._steps = [self._steps[i] for i in keep]
        self._epochs = [self._epochs[i] for i in keep]
        self._snaps = [self._snaps[i] for i in keep]
        self._epoch_end_steps = self._epoch_end_steps[:epoch + 1]
        self.flush()

    def flush(self) -> None:
        """Write the whole recording atomically to :attr:`path`."""
        t = self.trajectory
        buf = io.BytesIO()
        np.savez(buf, steps=t.steps, epochs=t.epochs, snapshots=t.snapshots,
                 epoch_end_steps=t.epoch_end_steps,
                 every_steps=np.int64(self.every_steps or 0), format=np.int64(_FORMAT))
        atomic_write_bytes(self.path, buf.getvalue())

    @property
    def trajectory(self) -> Trajectory:
        """The recording so far, in memory."""
        snaps = (np.stack(self._snaps) if self._snaps else np.zeros((0, 0), self.dtype))
        return Trajectory(np.asarray(self._steps, np.int64), np.asarray(self._epochs, np.int64),
                          snaps, np.asarray(self._epoch_end_steps, np.int64), self.every_steps)

    def __len__(self) -> int:
        return len(self._steps)


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


def trajectory_on_plane(space: ParamSpace, pca: TrajectoryPCA, train: ProbeData,
                        points: int = 21, margin: float = 0.2, *, snapshots: Any,
                        steps: Optional[Sequence[int]] = None,
                        epochs: Optional[Sequence[int]] = None,
                        bn: BNMode = "keep", bn_data: Optional[ProbeData] = None
                        ) -> TrajectoryPlane:
    """Loss contour of the PC plane through the final point and the path on it.

    ``space`` is the final model's parameter space: the grid point ``(x, y)`` is
    ``space.theta0 + (x d1 + y d2)`` (so the origin evaluates the final model exactly),
    evaluated on ``train`` with :meth:`ParamSpace.evaluate` (``bn``/``bn_data`` as there;
    ``"recompute"`` re-estimates BatchNorm statistics at every point). ``pca.centre`` must
    be that same point. ``snapshots`` (S, D) (array, tensor or :class:`Trajectory`, whose
    steps and epochs are then used) are the points ``pca`` was computed from; each is
    evaluated itself for ``path_loss``. Costs ``points**2 + S`` evaluations of ``train``.
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
    gap = float((pca.centre - theta0.to("cpu", torch.float64)).abs().max())
    scale = float(theta0.abs().max()) + 1.0
    if gap > 1e-5 * scale:
        raise LandscopeError(f"the PCA centre is not the model's point (max difference "
                             f"{gap:.3g}); compute the PCA with final=space.theta0")
    steps_a = np.arange(S) if steps is None else np.asarray(steps, np.int64)
    epochs_a = np.zeros(S, np.int64) if epochs is None else np.asarray(epochs, np.int64)
    if len(steps_a) != S or len(epochs_a) != S:
        raise LandscopeError(f"steps/epochs need {S} entries")

    coords = pca.coords.numpy()
    gx = plane_axis(coords[:, 0].min(), coords[:, 0].max(), points, margin)
    gy = plane_axis(coords[:, 1].min(), coords[:, 1].max(), points, margin)
    d1 = pca.d1.to(theta0.device)
    d2 = pca.d2.to(theta0.device)
    loss = np.empty((points, points))
    acc = np.empty((points, points))
    for j, y in enumerate(gy):
        for i, x in enumerate(gx):
            theta = theta0 + (float(x) * d1 + float(y) * d2).to(space.dtype)
            ev = space.evaluate(theta, train, bn, bn_data)[0]
            loss[j, i], acc[j, i] = ev.loss, ev.acc
    path_loss = np.empty(S)
    path_acc = np.empty(S)
    for k in range(S):
        ev = space.evaluate(snaps[k].to(theta0.device, space.dtype), train, bn, bn_data)[0]
        path_loss[k], path_acc[k] = ev.loss, ev.acc
    contour = bilinear(gx, gy, loss, coords[:, 0], coords[:, 1])
    return TrajectoryPlane(
        steps=steps_a, epochs=epochs_a, pc_coords=coords.copy(),
        explained_variance_ratio=pca.explained_variance_ratio.numpy().copy(),
        grid_x=gx, grid_y=gy, grid_loss=loss, path_loss=path_loss, path_contour_loss=contour,
        off_plane=pca.off_plane_relative.numpy().copy(), off_plane_abs=pca.off_plane.numpy().copy(),
        grid_acc=acc, path_acc=path_acc, n_evals=points * points + S, bn=bn)


def trajectory_landscape(space: ParamSpace, trajectory: Trajectory, train: ProbeData,
                         points: int = 21, margin: float = 0.2, bn: BNMode = "keep",
                         bn_data: Optional[ProbeData] = None) -> TrajectoryPlane:
    """PCA of ``trajectory`` about the final model (``space.theta0``), then
    :func:`trajectory_on_plane`: the whole analysis of one recorded run."""
    pca = trajectory_pca(trajectory.snapshots, space.theta0)
    return trajectory_on_plane(space, pca, train, points, margin, snapshots=trajectory,
                               bn=bn, bn_data=bn_data)
