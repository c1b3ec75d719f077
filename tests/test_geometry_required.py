"""The geometry checks that issue #4 requirement 10 names, each against an exact answer.

* filter-normalized 1-D curves are invariant to the ReLU rescaling ``W1 -> c W1, W2 -> W2 / c``;
* a slice at coordinate 0 is the model's own loss;
* the barrier of a path between identical endpoints is zero;
* the barrier on the synthetic two-basin surface is positive and equals its closed form;
* the trajectory PCA of a straight line has PC1 explained variance 1.

Everything runs in float64 on seeded models and data; each test's docstring states its
tolerance.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscope.config import DatasetConfig, ModelConfig
from landscope.data import load_data
from landscope.geometry.connectivity import barrier_interp, linear_path, path_ts
from landscope.geometry.directions import random_directions
from landscope.geometry.slices import line_slice, symmetric_grid
from landscope.geometry.space import ParamSpace
from landscope.geometry.trajectory import trajectory_pca
from landscope.models import build_model
from landscope.probes.probe_data import ProbeData
from landscope.synthetic import TwoBasinModel, two_basin_reference

EPS = float(np.finfo(np.float64).eps)


def _mlp(seed: int = 0) -> nn.Sequential:
    """A float64 ReLU MLP 6 -> 12 -> 12 -> 3 (indices 0, 2, 4 are the Linear layers)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                         nn.Linear(12, 3)).double()


def _data(n: int, micro_batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, ProbeData]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y, ProbeData.from_tensors(x, y, micro_batch)


def _curves(model: nn.Module, data: ProbeData, normalization: str, include_bias_norm: bool):
    space = ParamSpace(model)
    dirs = random_directions(space, 2, seed=7, normalization=normalization,
                             include_bias_norm=include_bias_norm)
    return line_slice(space, dirs, symmetric_grid(1.0, 11), data)


# ----------------------------------------------------------------------- ReLU rescaling
@pytest.mark.parametrize("include_bias_norm", [False, True])
@pytest.mark.parametrize("c", [5.0, 0.2])
def test_filter_normalized_line_invariant_to_relu_rescaling(c, include_bias_norm):
    """Multiplying the middle ReLU layer's weight and bias by ``c`` and dividing the next
    layer's weight by ``c`` leaves the network's function unchanged; with filter-normalized
    directions from the same seed (2 directions, 11 points on [-1, 1]) the train-loss curves
    of the two models must agree to 1e-10 absolute (float64) and the accuracy curves exactly.
    The check is meaningful: each curve varies by more than 1e-2 along the line, and with
    ``normalization="none"`` the two models' curves differ by more than 1e-2 somewhere (the
    invariance comes from the normalization, not from the slice)."""
    _, _, data = _data(200, 64, seed=1)
    model = _mlp()
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[2].weight.mul_(c)
        scaled[2].bias.mul_(c)
        scaled[4].weight.div_(c)

    a = _curves(model, data, "filter", include_bias_norm)
    b = _curves(scaled, data, "filter", include_bias_norm)
    assert a.train_loss.shape == (2, 11)
    np.testing.assert_allclose(b.train_loss, a.train_loss, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(b.train_acc, a.train_acc)
    span = a.train_loss.max(axis=1) - a.train_loss.min(axis=1)
    assert np.all(span > 1e-2), span  # not a flat curve: the equality above says something

    raw_a = _curves(model, data, "none", include_bias_norm)
    raw_b = _curves(scaled, data, "none", include_bias_norm)
    assert raw_a.train_loss[:, 5] == pytest.approx(raw_b.train_loss[:, 5], rel=1e-12)  # same centre
    assert np.abs(raw_a.train_loss - raw_b.train_loss).max() > 1e-2


# ----------------------------------------------------------------------- slice centre
def test_slice_at_zero_equals_the_models_loss():
    """The value at coordinate 0 of a 1-D slice (3 filter-normalized directions, 7 points)
    equals ``F.cross_entropy(model(x), y)`` on all the data, for train and test, to 1e-12
    relative (float64), and the accuracy ``mean(argmax == y)`` exactly; micro-batches of 32
    over 100 and 90 samples (ragged last batch) check the exact mean over batches. The model
    passed in is left with its parameters unchanged (bit for bit)."""
    model = _mlp(seed=3)
    before = [p.detach().clone() for p in model.parameters()]
    x, y, train = _data(100, 32, seed=4)
    xt, yt, test = _data(90, 32, seed=5)
    space = ParamSpace(model)
    dirs = random_directions(space, 3, seed=11)
    res = line_slice(space, dirs, symmetric_grid(0.5, 7), train, test)
    assert res.coords[3] == 0.0
    with torch.no_grad():
        for (xs, ys), loss, acc in ((x, y), res.train_loss, res.train_acc), \
                                   ((xt, yt), res.test_loss, res.test_acc):
            out = model(xs)
            want = F.cross_entropy(out, ys).item()
            want_acc = (out.argmax(-1) == ys).double().mean().item()
            for k in range(3):
                assert loss[k, 3] == pytest.approx(want, rel=1e-12, abs=0)
                assert acc[k, 3] == want_acc
    assert res.scalars()["line_train_loss_centre"] == pytest.approx(
        res.train_loss[0, 3], rel=0, abs=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


# ----------------------------------------------------------------------- barriers
def test_barrier_zero_for_identical_endpoints():
    """``linear_path`` from theta to an equal copy of theta: both barrier conventions
    (``barrier_mean``, ``barrier_interp``) are exactly 0 for train/test error, and exactly 0
    for train/test loss on the grid t in {0, 1/2, 1} (where ``(1-t) theta + t theta == theta``
    bit for bit). On a 21-point grid the interior points are ``(1-t) theta + t theta``, which
    float64 rounding moves by about one ulp per entry, so there the loss barriers are only
    ``>= 0`` and at most ``8 eps |L(theta)|`` (a few ulps of the loss); the error barriers
    stay exactly 0."""
    model = _mlp(seed=5)
    _, _, train = _data(120, 64, seed=6)
    _, _, test = _data(80, 64, seed=7)
    space = ParamSpace(model)
    theta = space.theta0.clone()

    exact = linear_path(space, theta, theta.clone(), [0.0, 0.5, 1.0], train, test).scalars("p")
    keys = [f"p_{s}_{m}_barrier_{c}" for s in ("train", "test") for m in ("loss", "error")
            for c in ("mean", "interp")]
    assert {k: exact[k] for k in keys} == {k: 0.0 for k in keys}

    dense = linear_path(space, theta, theta.clone(), path_ts(21), train, test).scalars("p")
    for s in ("train", "test"):
        level = dense[f"p_{s}_loss_start"]
        assert dense[f"p_{s}_loss_end"] == level
        for conv in ("mean", "interp"):
            assert dense[f"p_{s}_error_barrier_{conv}"] == 0.0
            assert 0.0 <= dense[f"p_{s}_loss_barrier_{conv}"] <= 8 * EPS * abs(level)


@pytest.mark.parametrize("tilt", [0.0, 0.3])
def test_barrier_on_two_basin_surface_matches_closed_form(tilt):
    """``linear_path`` on the synthetic two-basin model (float64, 256 train samples, barrier
    0.2) from the sharp minimum ``(-1, 0)`` to the flat one ``(1, 0)`` on ``path_ts(21)``:

    * the loss barrier against the mean of the endpoints equals the reference's closed form
      ``TwoBasinReference.linear_barrier`` (the saddle loss minus the mean of the minima's
      losses; = ``dataset.barrier``) to 1e-12 absolute, and is positive;
    * the maximum sits at the saddle ``u = tilt``, i.e. ``t = (1 + tilt) / 2`` (a grid point);
    * the endpoint losses equal ``TwoBasinReference.minimum_losses`` to 1e-12 absolute;
    * the barrier against the linear interpolation of the endpoint values equals
      ``barrier_interp`` of the reference's closed-form loss at the same points to 1e-12
      absolute (with tilt 0 both conventions equal ``linear_barrier``)."""
    cfg = DatasetConfig(name="two_basin", normalize=False, barrier=0.2, tilt=tilt)
    data = load_data(cfg)
    ref = two_basin_reference(cfg)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="two_basin"), data.meta).double()
    assert isinstance(model, TwoBasinModel)
    assert ref.linear_barrier == pytest.approx(0.2, rel=1e-14)
    train = ProbeData.from_tensors(data.train.x, data.train.y, len(data.train))

    space = ParamSpace(model)
    sharp, flat = ref.minima[0], ref.minima[1]
    ts = path_ts(21)
    res = linear_path(space, sharp, flat, ts, train)
    s = res.scalars("lin")

    assert s["lin_train_loss_barrier_mean"] > 0.1
    assert s["lin_train_loss_barrier_mean"] == pytest.approx(ref.linear_barrier, rel=0, abs=1e-12)
    assert s["lin_train_loss_argmax_t"] == pytest.approx((1 + tilt) / 2, abs=1e-15)
    assert s["lin_train_loss_max"] == pytest.approx(ref.saddle_loss, rel=0, abs=1e-12)
    assert (s["lin_train_loss_start"], s["lin_train_loss_end"]) == pytest.approx(
        ref.minimum_losses, rel=0, abs=1e-12)
    closed = [ref.loss((1 - t) * sharp + t * flat) for t in ts]
    assert s["lin_train_loss_barrier_interp"] == pytest.approx(barrier_interp(ts, closed),
                                                               rel=0, abs=1e-12)
    if tilt == 0.0:
        assert s["lin_train_loss_barrier_interp"] == pytest.approx(ref.linear_barrier, rel=0,
                                                                   abs=1e-12)


# ----------------------------------------------------------------------- trajectory PCA
def test_pca_of_straight_line_trajectory():
    """Snapshots ``final + alpha_k u`` (8 unevenly spaced alpha from -3 to -0.1, then the
    final point itself; D = 30; no noise): the PCA about the final point has PC1 explained
    variance ratio 1 and PC2 0, both to 1e-12 absolute; ``d1 = u/|u|`` up to 1e-12 (sign
    fixed by the convention that the first snapshot has coordinate <= 0), the PC1
    coordinates are ``alpha_k |u|`` and the off-plane residuals 0, to 1e-12 relative to
    ``|u|``."""
    g = np.random.default_rng(0)
    final = g.standard_normal(30)
    u = g.standard_normal(30)
    alphas = np.array([-3.0, -2.2, -1.7, -1.0, -0.8, -0.45, -0.2, -0.1, 0.0])
    snapshots = final + np.outer(alphas, u)
    pca = trajectory_pca(snapshots, final)
    norm_u = float(np.linalg.norm(u))

    assert pca.pc1 == pytest.approx(1.0, rel=0, abs=1e-12)
    assert abs(float(pca.explained_variance_ratio[1])) <= 1e-12
    np.testing.assert_allclose(pca.d1.numpy(), u / norm_u, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pca.coords[:, 0].numpy(), alphas * norm_u, rtol=0,
                               atol=1e-12 * norm_u)
    assert float(pca.off_plane.abs().max()) <= 1e-12 * norm_u
