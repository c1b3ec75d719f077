"""Trajectories: snapshot recording (counts, atomic files, resume), PCA about the final
point, and the path on the PC-plane contour (exact answers in float64)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from landscope.data import TensorSplit
from landscope.errors import LandscopeError
from landscope.geometry.snapshots import SnapshotRecorder, Trajectory, load
from landscope.geometry.space import ParamSpace
from landscope.geometry.trajectory import (
    bilinear,
    plane_axis,
    trajectory_landscape,
    trajectory_on_plane,
    trajectory_pca,
)
from landscope.probes.probe_data import ProbeData
from landscope.train import TrainState, fit

N, BATCH = 64, 16  # 4 optimizer steps per epoch


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 5, generator=g)
    y = torch.randint(0, 3, (N,), generator=g)
    return TensorSplit(x, y)


def _state(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return TrainState(model, opt, sched)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def _fit(state, split, epochs, rec=None, on_step=None):
    def step_hook(st):
        if rec is not None:
            rec.on_step(st)
        if on_step is not None:
            on_step(st)

    fit(state, split, split, epochs=epochs, batch_size=BATCH, seed=0,
        on_step=step_hook, on_epoch_end=(rec.on_epoch_end if rec is not None else None))


# ---------------------------------------------------------------------------- recorder
def test_per_epoch_recording_counts_and_values(tmp_path):
    split, state = _data(), _state()
    theta_init = _flat(state.model)
    rec = SnapshotRecorder(tmp_path / "traj.npz")
    rec.begin(state)
    _fit(state, split, 3, rec)
    t = load(tmp_path / "traj.npz")
    assert t.steps.tolist() == [0, 4, 8, 12] and t.epochs.tolist() == [0, 1, 2, 3]
    assert t.epoch_end_steps.tolist() == [0, 4, 8, 12] and t.every_steps is None
    assert state.step == 12
    assert t.snapshots.dtype == np.float32 and t.snapshots.shape == (4, theta_init.size)
    np.testing.assert_array_equal(t.snapshots[0], theta_init)
    np.testing.assert_array_equal(t.snapshots[-1], _flat(state.model))


def test_every_n_steps_records_those_steps(tmp_path):
    split, state = _data(), _state()
    seen = {}
    rec = SnapshotRecorder(tmp_path / "traj.npz", every_steps=3)
    rec.begin(state)
    _fit(state, split, 3, rec, on_step=lambda st: seen.__setitem__(st.step, _flat(st.model)))
    t = load(tmp_path / "traj.npz")
    # steps 1-4 are epoch 1, 5-8 epoch 2, 9-12 epoch 3
    assert t.steps.tolist() == [0, 3, 6, 9, 12] and t.epochs.tolist() == [0, 1, 2, 3, 3]
    assert t.epoch_end_steps.tolist() == [0, 4, 8, 12] and t.every_steps == 3
    for k, s in enumerate(t.steps[1:], 1):
        np.testing.assert_array_equal(t.snapshots[k], seen[int(s)])


def test_atomic_float16_round_trip_and_killed_job_keeps_finished_epochs(tmp_path):
    split, state = _data(), _state()
    path = tmp_path / "traj.npz"
    rec = SnapshotRecorder(path, every_steps=2, dtype="float16")
    rec.begin(state)

    def die(st):
        if st.step == 10:  # in epoch 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(state, split, 5, rec, on_step=die)
    assert [p.name for p in tmp_path.iterdir()] == ["traj.npz"]  # no temporary files left
    t = load(path)
    assert t.snapshots.dtype == np.float16
    # on disk: everything up to the end of epoch 2 (step 8); in memory also steps 10
    assert t.steps.tolist() == [0, 2, 4, 6, 8] and t.epoch_end_steps.tolist() == [0, 4, 8]
    mem = rec.trajectory
    assert mem.steps.tolist() == [0, 2, 4, 6, 8, 10]
    np.testing.assert_array_equal(t.snapshots, mem.snapshots[:5])
    assert isinstance(t, Trajectory) and len(t) == 5


@pytest.mark.parametrize("every", [None, 3])
def test_resume_truncates_to_an_uninterrupted_recording(tmp_path, every):
    split = _data()
    # uninterrupted: 5 epochs
    ref_state = _state()
    ref = SnapshotRecorder(tmp_path / "ref.npz", every_steps=every)
    ref.begin(ref_state)
    _fit(ref_state, split, 5, ref)

    # interrupted: checkpoint at epoch 2 only, epoch 3 finished and flushed, killed in epoch 4
    state, ckpt = _state(), {}
    path = tmp_path / "run.npz"
    rec = SnapshotRecorder(path, every_steps=every)
    rec.begin(state)

    def on_epoch_end(st, row):
        rec.on_epoch_end(st, row)
        if st.epoch == 2:
            ckpt.update(model=copy.deepcopy(st.model.state_dict()),
                        opt=copy.deepcopy(st.optimizer.state_dict()),
                        sched=copy.deepcopy(st.scheduler.state_dict()),
                        history=copy.deepcopy(st.history))

    def on_step(st):
        rec.on_step(st)
        if st.step == 14:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(state, split, split, epochs=5, batch_size=BATCH, seed=0, on_step=on_step,
            on_epoch_end=on_epoch_end)
    assert load(path).epoch_end_steps.tolist() == [0, 4, 8, 12]  # beyond the checkpoint

    # resume from the epoch-2 checkpoint with a fresh recorder (state.step not restored:
    # begin() takes it from the history)
    new = _state()
    new.model.load_state_dict(ckpt["model"])
    new.optimizer.load_state_dict(ckpt["opt"])
    new.scheduler.load_state_dict(ckpt["sched"])
    new.epoch, new.history = 2, ckpt["history"]
    rec2 = SnapshotRecorder(path, every_steps=every)
    rec2.begin(new)
    assert new.step == 8 and load(path).epoch_end_steps.tolist() == [0, 4, 8]
    _fit(new, split, 5, rec2)

    a, b = load(path), load(tmp_path / "ref.npz")
    for key in ("steps", "epochs", "snapshots", "epoch_end_steps"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert len(a) == (6 if every is None else 7)


def test_recorder_refuses_what_cannot_continue(tmp_path):
    state = _state()
    state.epoch = 2
    with pytest.raises(LandscopeError, match="no trajectory file"):
        SnapshotRecorder(tmp_path / "missing.npz").begin(state)
    fresh = _state()
    SnapshotRecorder(tmp_path / "t.npz").begin(fresh)
    with pytest.raises(LandscopeError, match="every_steps"):
        SnapshotRecorder(tmp_path / "t.npz", every_steps=5).begin(state)
    with pytest.raises(LandscopeError, match="cannot continue from epoch 2"):
        SnapshotRecorder(tmp_path / "t.npz").begin(state)
    with pytest.raises(LandscopeError):
        SnapshotRecorder(tmp_path / "t.npz", every_steps=0)
    with pytest.raises(LandscopeError):
        SnapshotRecorder(tmp_path / "t.npz", dtype="int8")


# ---------------------------------------------------------------------------- PCA
def _planar(S=12, D=50, seed=0, final=None):
    """S points in a random 2-D plane through ``final`` (random when None)."""
    g = np.random.default_rng(seed)
    u, _ = np.linalg.qr(g.standard_normal((D, 2)))
    final = g.standard_normal(D) if final is None else final
    ab = g.standard_normal((S, 2)) * [3.0, 1.0]
    return final + ab @ u.T, final, u


def test_pca_of_a_planar_trajectory_is_exact():
    snaps, final, u = _planar()
    p = trajectory_pca(snaps, final)
    assert abs(float(p.explained_variance_ratio[:2].sum()) - 1) < 1e-10
    assert float(p.off_plane.max()) < 1e-12 * float(p.distance.max())
    assert float(p.off_plane_relative.max()) < 1e-12
    dirs = torch.stack([p.d1, p.d2]).numpy()
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(dirs.T @ dirs, u @ u.T, atol=1e-10)  # same plane
    np.testing.assert_allclose(final + p.coords.numpy() @ dirs, snaps, atol=1e-10)
    assert p.coords[0, 0] <= 0 and p.coords[0, 1] <= 0  # sign convention


def test_pca_matches_numpy_svd():
    g = np.random.default_rng(1)
    snaps, final = g.standard_normal((8, 30)), g.standard_normal(30)
    p = trajectory_pca(torch.from_numpy(snaps).float(), torch.from_numpy(final).float())
    M = snaps.astype(np.float32).astype(np.float64) - final.astype(np.float32)
    _, s, vt = np.linalg.svd(M, full_matrices=False)
    for i, d in enumerate((p.d1.numpy(), p.d2.numpy())):
        sign = np.sign(d @ vt[i])
        np.testing.assert_allclose(d, sign * vt[i], atol=1e-10)
    np.testing.assert_allclose(p.explained_variance_ratio.numpy(), s ** 2 / (s ** 2).sum(),
                               rtol=1e-12)
    assert p.pc1 == pytest.approx(s[0] ** 2 / (s ** 2).sum(), rel=1e-12)
    res = M - p.coords.numpy() @ np.stack([p.d1.numpy(), p.d2.numpy()])
    np.testing.assert_allclose(p.off_plane.numpy(), np.linalg.norm(res, axis=1), atol=1e-12)


def test_pca_rejects_bad_input():
    with pytest.raises(LandscopeError):
        trajectory_pca(np.zeros((1, 5)), np.zeros(5))
    with pytest.raises(LandscopeError):
        trajectory_pca(np.full((3, 5), np.nan), np.zeros(5))
    with pytest.raises(LandscopeError):
        trajectory_pca(np.zeros((3, 5)), np.zeros(4))


# ---------------------------------------------------------------------------- plane
def test_plane_axis_and_bilinear():
    for lo, hi, margin in [(-3.0, 1.0, 0.2), (0.0, 2.0, 0.0), (-1.0, 0.0, 0.0),
                           (-0.1, 5.0, 0.1), (0.0, 0.0, 0.2)]:
        ax = plane_axis(lo, hi, 21, margin)
        span = hi - lo
        assert len(ax) == 21 and 0.0 in ax
        assert ax[0] <= lo - margin * span + 1e-12 and ax[-1] >= hi + margin * span - 1e-12
        np.testing.assert_allclose(np.diff(ax), ax[1] - ax[0], rtol=1e-12)
    gx, gy = plane_axis(-1, 2, 7, 0.1), plane_axis(-2, 1, 5, 0.1)
    f = lambda x, y: 1.5 + 2 * x - 3 * y + 0.7 * x * y  # noqa: E731  (bilinear: exact)
    X, Y = np.meshgrid(gx, gy)
    pts = np.random.default_rng(0).uniform(-1, 1, (20, 2))
    np.testing.assert_allclose(bilinear(gx, gy, f(X, Y), pts[:, 0], pts[:, 1]),
                               f(pts[:, 0], pts[:, 1]), atol=1e-12)


class LinearRegression(nn.Module):
    """out = x w + b, loss 1/2 (out - y)^2: exactly quadratic in the parameters."""

    def __init__(self, dim):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(1, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x @ self.w + self.b

    def task_loss(self, out, y, reduction="mean"):
        per = 0.5 * (out - y) ** 2
        return {"mean": per.mean, "sum": per.sum}.get(reduction, lambda: per)()

    def task_correct(self, out, y):
        return (out - y).abs() < 0.5


def test_contour_error_on_a_quadratic_is_the_closed_form():
    dim = 6
    model = LinearRegression(dim)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, dim, generator=g, dtype=torch.float64)
    y = torch.randn(40, generator=g, dtype=torch.float64)
    data = ProbeData.from_tensors(x, y, 16)
    space = ParamSpace(model)
    final = space.theta0.numpy()
    snaps, _, _ = _planar(S=9, D=dim + 1, seed=4, final=final)
    p = trajectory_pca(snaps, final)
    res = trajectory_on_plane(space, p, data, points=11, margin=0.1, snapshots=snaps)
    Xa = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1)  # (w, b) order
    A = (Xa.T @ Xa / 40).numpy()  # Hessian of the mean loss
    r = Xa.numpy() @ snaps.T - y.numpy()[:, None]
    np.testing.assert_allclose(res.path_loss, 0.5 * (r ** 2).mean(0), rtol=1e-12)
    a, c = p.d1.numpy() @ A @ p.d1.numpy(), p.d2.numpy() @ A @ p.d2.numpy()

    def gap(axis, t):  # (t - t0)(t1 - t) on t's grid cell
        i = np.clip(np.searchsorted(axis, t, side="right") - 1, 0, len(axis) - 2)
        return (t - axis[i]) * (axis[i + 1] - t)

    xs, ys = res.pc_coords[:, 0], res.pc_coords[:, 1]
    expected = 0.5 * a * gap(res.grid_x, xs) + 0.5 * c * gap(res.grid_y, ys)
    assert expected.max() > 1e-2  # the interpolation error is real, and predicted exactly
    np.testing.assert_allclose(res.path_contour_loss - res.path_loss, expected, atol=1e-10)
    assert res.off_plane.max() < 1e-12
    i0, j0 = list(res.grid_x).index(0.0), list(res.grid_y).index(0.0)
    r0 = Xa.numpy() @ final - y.numpy()
    assert res.grid_loss[j0, i0] == pytest.approx(0.5 * (r0 ** 2).mean(), rel=1e-14)


def test_mlp_trajectory_landscape_contract(tmp_path):
    split, state = _data(), _state()
    rec = SnapshotRecorder(tmp_path / "traj.npz")
    rec.begin(state)
    _fit(state, split, 4, rec)
    model = state.model
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space = ParamSpace(model)
    data = ProbeData.from_tensors(split.x, split.y, 32)
    res = trajectory_landscape(space, load(tmp_path / "traj.npz"), data, points=5)
    assert model.training and all(torch.equal(before[k], v)
                                  for k, v in model.state_dict().items())
    assert set(res.arrays()) == {"steps", "epochs", "pc_coords", "explained_variance_ratio",
                                 "grid_x", "grid_y", "grid_loss", "path_loss",
                                 "path_contour_loss", "off_plane"}
    shapes = {k: v.shape for k, v in res.arrays().items()}
    assert shapes["grid_loss"] == (5, 5) and shapes["pc_coords"] == (5, 2)
    exact = space.evaluate(space.theta0, data)[0].loss
    i0, j0 = list(res.grid_x).index(0.0), list(res.grid_y).index(0.0)
    assert res.grid_loss[j0, i0] == exact  # the origin is the final model, bit for bit
    # the last snapshot is the final point: projected at the origin, no contour error
    assert res.path_loss[-1] == exact and res.path_contour_loss[-1] == exact
    assert res.off_plane[-1] == 0 and res.pc_coords[-1].tolist() == [0.0, 0.0]
    sc = res.scalars()
    assert set(sc) == {"trajectory_snapshots", "trajectory_pc1_explained_variance",
                       "trajectory_pc2_explained_variance", "trajectory_contour_error_max",
                       "trajectory_contour_error_mean", "trajectory_off_plane_max",
                       "trajectory_off_plane_mean", "trajectory_final_loss"}
    assert sc["trajectory_snapshots"] == 5 and sc["trajectory_final_loss"] == exact
    assert all(math.isfinite(v) for v in sc.values())
    assert 0 < sc["trajectory_pc1_explained_variance"] <= 1
    traj = load(tmp_path / "traj.npz")
    off_centre = trajectory_pca(traj.snapshots, space.theta0 + 1.0)
    with pytest.raises(LandscopeError, match="PCA centre"):
        trajectory_on_plane(space, off_centre, data, snapshots=traj)
