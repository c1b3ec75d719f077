"""Line and plane slices against an independent per-point computation (deepcopy +
vector_to_parameters + plain forward) in float64; exact centre, BatchNorm modes, resume,
workers, inputs."""

from __future__ import annotations

import copy
import math
import pickle
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import vector_to_parameters

from landscope.errors import LandscopeError
from landscope.geometry.directions import random_directions
from landscope.geometry.slices import (
    RISE_DELTA,
    LineSlice,
    PlaneSlice,
    line_slice,
    plane_slice,
    symmetric_grid,
)
from landscope.geometry.space import ParamSpace
from landscope.models import build_model
from landscope.probes.probe_data import ProbeData

pytestmark = pytest.mark.usefixtures("one_torch_thread")

META = types.SimpleNamespace(input_shape=(1, 10), num_classes=4)
TOL = 1e-12


def _model(kind: str = "mlp", dtype=torch.float64):
    torch.manual_seed(0)
    cfg = dict(name="mlp", width=16, depth=2) if kind == "mlp" else \
        dict(name="cnn", width=3, depth=1, norm="batch")
    model = build_model(cfg, META).to(dtype)
    if kind == "cnn":  # trained-looking running statistics
        with torch.no_grad():
            model.train()
            model(torch.randn(64, 1, 10, dtype=dtype) * 2 + 0.5)
    return model.eval()


def _data(n: int, seed: int, dtype=torch.float64, micro_batch: int = 25) -> ProbeData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 10, generator=g, dtype=dtype)
    y = torch.randint(0, 4, (n,), generator=g)
    return ProbeData.from_tensors(x, y, micro_batch)


def _reference(model, theta, data, bn="keep", bn_data=None):
    """Loss and accuracy at theta: a fresh deepcopy, plain forward, F.cross_entropy."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        vector_to_parameters(theta.clone(), m.parameters())
        if bn == "recompute":
            norms = [mod for mod in m.modules()
                     if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
            for mod in norms:
                mod.reset_running_stats()
                mod.momentum = None
            m.train()
            for x, _ in (bn_data or data).batches:
                m(x)
        m.eval()
        out = torch.cat([m(x) for x, _ in data.batches])
    y = torch.cat([y for _, y in data.batches])
    return float(F.cross_entropy(out, y)), int((out.argmax(1) == y).sum()) / len(y)


@pytest.fixture
def setup():
    model = _model()
    space = ParamSpace(model)
    dirs = random_directions(space, 2, seed=1)
    return model, space, dirs, _data(60, 0), _data(40, 1)


def test_line_slice_matches_independent_evaluation(setup):
    model, space, dirs, train, test = setup
    coords = symmetric_grid(1.5, 5)
    res = line_slice(space, dirs, coords, train, test, meta={"normalization": "filter"})
    arrays = res.arrays()
    assert set(arrays) == {"coords", "train_loss", "train_acc", "test_loss", "test_acc"}
    assert arrays["train_loss"].shape == (2, 5) and arrays["coords"].shape == (5,)
    for k in range(2):
        for j, a in enumerate(coords):
            theta = space.theta0 + float(a) * dirs[k]
            for split, data in (("train", train), ("test", test)):
                loss, acc = _reference(model, theta, data)
                assert abs(arrays[f"{split}_loss"][k, j] - loss) <= TOL
                assert arrays[f"{split}_acc"][k, j] == acc
    assert res.n_points == 2 * 4 + 1 == res.n_evaluated  # the centre once
    assert res.metadata["normalization"] == "filter" and res.metadata["bn"] == "keep"
    assert set(line_slice(space, dirs, coords, train).arrays()) == \
        {"coords", "train_loss", "train_acc"}


def test_plane_slice_matches_independent_evaluation(setup):
    model, space, dirs, train, test = setup
    xs, ys = symmetric_grid(1.0, 5), symmetric_grid(0.5, 3)
    res = plane_slice(space, dirs[0], dirs[1], xs, ys, train, test)
    arrays = res.arrays()
    assert set(arrays) == {"x", "y", "train_loss", "train_acc", "test_loss", "test_acc"}
    assert arrays["train_loss"].shape == (5, 3)
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            theta = space.theta0 + float(a) * dirs[0] + float(b) * dirs[1]
            for split, data in (("train", train), ("test", test)):
                loss, acc = _reference(model, theta, data)
                assert abs(arrays[f"{split}_loss"][i, j] - loss) <= TOL
                assert arrays[f"{split}_acc"][i, j] == acc


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_centre_is_exact(dtype):
    model = _model(dtype=dtype)
    space = ParamSpace(model)
    dirs = random_directions(space, 3, seed=2)
    train, test = _data(50, 0, dtype), _data(30, 1, dtype)
    ref = space.evaluate(space.theta0, [train, test])
    line = line_slice(space, dirs, symmetric_grid(2.0, 7), train, test)
    plane = plane_slice(space, dirs[0], dirs[1], symmetric_grid(1.0, 5),
                        symmetric_grid(1.0, 3), train, test)
    for k in range(3):  # bit for bit
        assert line.train_loss[k, 3] == ref[0].loss and line.test_loss[k, 3] == ref[1].loss
        assert line.train_acc[k, 3] == ref[0].acc and line.test_acc[k, 3] == ref[1].acc
    assert plane.train_loss[2, 1] == ref[0].loss and plane.test_acc[2, 1] == ref[1].acc
    assert line.scalars()["line_train_loss_centre"] == ref[0].loss
    assert plane.scalars()["plane_test_loss_centre"] == ref[1].loss


def test_model_is_never_modified():
    model = _model("cnn").train()  # a model left in train mode stays so
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    space = ParamSpace(model)
    dirs = random_directions(space, 2, seed=0)
    train = _data(40, 0)
    line_slice(space, dirs, symmetric_grid(1.0, 3), train, bn="recompute")
    plane_slice(space, dirs[0], dirs[1], symmetric_grid(1.0, 3), symmetric_grid(1.0, 3), train)
    assert model.training
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    # the working copy is left at the model's own point with the model's own statistics
    assert torch.equal(torch.cat([p.reshape(-1) for p in space.working_model.parameters()]),
                       space.theta0)
    for n, b in space.working_model.named_buffers():
        assert torch.equal(b, buffers[n]), n


def test_batchnorm_recompute_matches_independent_reestimation():
    model = _model("cnn")
    space = ParamSpace(model)
    dirs = random_directions(space, 1, seed=4)
    train, test, bn_data = _data(48, 0, micro_batch=16), _data(30, 1), _data(36, 2, micro_batch=12)
    coords = symmetric_grid(1.0, 3)
    for data_for_bn in (None, bn_data):
        rec = line_slice(space, dirs, coords, train, test, bn="recompute", bn_data=data_for_bn)
        assert rec.metadata["bn"] == "recompute"
        for j, a in enumerate(coords):
            theta = space.theta0 + float(a) * dirs[0]
            for split, data in (("train", train), ("test", test)):
                loss, acc = _reference(model, theta, data, "recompute", data_for_bn or train)
                assert abs(getattr(rec, f"{split}_loss")[0, j] - loss) <= TOL
                assert getattr(rec, f"{split}_acc")[0, j] == acc
    keep = line_slice(space, dirs, coords, train, test, bn="keep")
    assert keep.metadata["bn"] == "keep"
    assert np.max(np.abs(keep.train_loss - rec.train_loss)) > 1e-6  # the modes differ
    loss, _ = _reference(model, space.theta0 + dirs[0], train, "keep")
    assert abs(keep.train_loss[0, 2] - loss) <= TOL


def _failing_after(space: ParamSpace, n_ok: int, counter: list):
    """Make space.measure raise after n_ok calls (one call per point and data set)."""
    real = space.measure

    def measure(batches, n):
        if len(counter) >= n_ok:
            raise KeyboardInterrupt("simulated interruption")
        counter.append(1)
        return real(batches, n)
    space.measure = measure  # type: ignore[method-assign]
    return real


def test_resume_after_interruption_evaluates_only_missing_points(setup, tmp_path):
    _, space, dirs, train, _ = setup
    xs = symmetric_grid(1.0, 5)
    full = plane_slice(space, dirs[0], dirs[1], xs, xs, train)
    store = tmp_path / "plane.npz"
    calls: list = []
    real = _failing_after(space, 7, calls)
    with pytest.raises(KeyboardInterrupt):
        plane_slice(space, dirs[0], dirs[1], xs, xs, train, store=store)
    assert store.exists() and len(calls) == 7
    space.measure = real  # type: ignore[method-assign]
    calls.clear()
    _failing_after(space, 10 ** 6, calls)  # count only
    resumed = plane_slice(space, dirs[0], dirs[1], xs, xs, train, store=store)
    assert len(calls) == 25 - 7 == resumed.n_evaluated
    assert resumed.metadata["n_from_store"] == 7
    for key, value in full.arrays().items():
        assert np.array_equal(resumed.arrays()[key], value), key
    calls.clear()  # a complete store makes the repeat free
    again = plane_slice(space, dirs[0], dirs[1], xs, xs, train, store=store)
    assert len(calls) == 0 and again.n_evaluated == 0
    assert np.array_equal(again.train_loss, full.train_loss)
    space.measure = real  # type: ignore[method-assign]


def test_line_resume_and_periodic_saves(setup, tmp_path):
    _, space, dirs, train, test = setup
    coords = symmetric_grid(1.0, 5)
    full = line_slice(space, dirs, coords, train, test)
    store = tmp_path / "line.npz"
    seen: list[int] = []
    real = space.measure

    def spy(batches, n):  # with save_every=0 the store holds every completed point
        if batches is space.prepared(train) and store.exists():
            with np.load(store) as z:
                seen.append(int(z["done"].sum()))
        if len(seen) == 5:
            raise RuntimeError("stop")
        return real(batches, n)
    space.measure = spy  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        line_slice(space, dirs, coords, train, test, store=store, save_every=0)
    assert seen == [1, 2, 3, 4, 5]
    space.measure = real  # type: ignore[method-assign]
    resumed = line_slice(space, dirs, coords, train, test, store=store)
    assert resumed.n_evaluated == 9 - 5
    for key, value in full.arrays().items():
        assert np.array_equal(resumed.arrays()[key], value), key


def test_store_from_another_scan_is_not_reused(setup, tmp_path):
    _, space, dirs, train, _ = setup
    store = tmp_path / "s.npz"
    coords = symmetric_grid(1.0, 5)
    line_slice(space, dirs, coords, train, store=store)
    variants = [dict(directions=dirs.flip(0)), dict(coords=symmetric_grid(0.5, 5)),
                dict(train=_data(60, 9)), dict(bn="recompute")]
    for change in variants:
        kwargs = {**dict(directions=dirs, coords=coords, train=train, bn="keep"), **change}
        fresh = line_slice(space, **kwargs)
        with pytest.warns(RuntimeWarning, match="different scan"):
            res = line_slice(space, **kwargs, store=store)
        assert res.n_evaluated == res.n_points
        assert np.array_equal(res.train_loss, fresh.train_loss)
    store.write_bytes(b"not an npz")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        res = line_slice(space, dirs, coords, train, store=store)
    assert res.n_evaluated == res.n_points


def test_same_parameters_different_forward_changes_the_key(tmp_path):
    # a CNN with and without skip connections has identical parameters
    torch.manual_seed(0)
    a = build_model(dict(name="cnn", width=3, depth=1, skip=False), META).double().eval()
    torch.manual_seed(0)
    b = build_model(dict(name="cnn", width=3, depth=1, skip=True), META).double().eval()
    sa, sb = ParamSpace(a), ParamSpace(b)
    assert torch.equal(sa.theta0, sb.theta0)
    dirs = random_directions(sa, 1, seed=0)
    train = _data(20, 0)
    store = tmp_path / "k.npz"
    line_slice(sa, dirs, symmetric_grid(1.0, 3), train, store=store)
    with pytest.warns(RuntimeWarning, match="different scan"):
        line_slice(sb, dirs, symmetric_grid(1.0, 3), train, store=store)


def test_workers_give_identical_results(setup, tmp_path):
    _, space, dirs, _, _ = setup
    train = _data(50, 0, micro_batch=7)  # odd micro-batches: offsets of every alignment
    xs = symmetric_grid(1.0, 5)
    one = plane_slice(space, dirs[0], dirs[1], xs, xs, train, bn="keep")
    two = plane_slice(space, dirs[0], dirs[1], xs, xs, train, bn="keep", workers=2,
                      store=tmp_path / "w.npz")
    for key, value in one.arrays().items():
        assert np.array_equal(two.arrays()[key], value), key
    line1 = line_slice(space, dirs, xs, train)
    line2 = line_slice(space, dirs, xs, train, workers=2)
    assert np.array_equal(line1.train_loss, line2.train_loss)
    assert np.array_equal(line1.train_acc, line2.train_acc)
    # BatchNorm re-estimated in the workers, and a serial scan resumed by workers
    cnn = ParamSpace(_model("cnn"))
    d = random_directions(cnn, 1, seed=3)
    full = line_slice(cnn, d, xs, train, bn="recompute")
    store = tmp_path / "cnn.npz"
    calls: list = []
    real = _failing_after(cnn, 2, calls)
    with pytest.raises(KeyboardInterrupt):
        line_slice(cnn, d, xs, train, bn="recompute", store=store)
    cnn.measure = real  # type: ignore[method-assign]
    resumed = line_slice(cnn, d, xs, train, bn="recompute", store=store, workers=2)
    assert resumed.n_evaluated == full.n_points - 2
    assert np.array_equal(resumed.train_loss, full.train_loss)
    assert np.array_equal(resumed.train_acc, full.train_acc)


def test_param_space_pickles_to_an_equivalent_space(setup):
    _, space, dirs, train, _ = setup
    clone = pickle.loads(pickle.dumps(space))
    assert torch.equal(clone.theta0, space.theta0)
    assert clone.evaluate(space.theta0 + dirs[0], train) == space.evaluate(
        space.theta0 + dirs[0], train)


def test_scalars_on_known_arrays():
    coords = symmetric_grid(1.0, 5)  # -1, -.5, 0, .5, 1
    # row 0 crosses 1.1 at -(0.5 + 0.5 * .05 / .25) and 0.5 + 0.5 * .02 / .42
    loss = np.array([[1.3, 1.05, 1.0, 1.08, 1.5],
                     [1.0, 1.0, 1.0, 1.02, 1.04]])  # never
    acc = np.array([[0.5, 0.8, 0.9, 0.8, 0.6], [0.9, 0.9, 0.9, 0.9, 0.8]])
    s = LineSlice(coords, loss, acc).scalars()
    rise = np.array([(1.3 + 1.5) / 2 - 1.0, (1.0 + 1.04) / 2 - 1.0])
    assert s["line_train_loss_centre"] == 1.0 and s["line_train_acc_centre"] == 0.9
    assert math.isclose(s["line_train_rise_mean"], rise.mean(), abs_tol=1e-15)
    assert math.isclose(s["line_train_rise_std"], rise.std(ddof=1), abs_tol=1e-15)
    assert s["line_train_loss_max"] == 1.5
    assert math.isclose(s["line_train_acc_drop_mean"], (0.9 - 0.55 + 0.9 - 0.85) / 2,
                        abs_tol=1e-15)
    left, right = 0.5 + 0.5 * 0.05 / 0.25, 0.5 + 0.5 * 0.02 / 0.42
    assert math.isclose(s["line_train_radius_min"], right, abs_tol=1e-12)
    assert math.isclose(s["line_train_radius_mean"], (left + right) / 2, abs_tol=1e-12)
    assert s["line_train_radius_reached"] == 0.5
    assert "line_test_loss_centre" not in s
    assert math.isnan(LineSlice(coords, loss[1:], acc[1:]).scalars()["line_train_radius_min"])

    x, y = symmetric_grid(1.0, 3), symmetric_grid(2.0, 3)
    grid = np.array([[1.2, 1.05, 1.3], [1.02, 1.0, 1.0 + RISE_DELTA], [0.99, 1.0, np.nan]])
    p = PlaneSlice(x, y, grid, np.full((3, 3), 0.5), grid + 1, np.zeros((3, 3))).scalars()
    assert p["plane_train_loss_centre"] == 1.0 and p["plane_test_loss_centre"] == 2.0
    assert p["plane_train_loss_min"] == 0.99 and p["plane_train_loss_max"] == math.inf
    assert math.isnan(p["plane_train_rise_border_mean"])  # a NaN on the border
    assert p["plane_train_radius"] == 2.0  # (0, 2): loss == centre + delta
    assert math.isclose(p["plane_train_basin_fraction"], 5 / 9)
    assert p["plane_train_centre_is_min"] == 0.0


def test_bad_inputs_raise_one_line_errors(setup):
    _, space, dirs, train, _ = setup
    g = symmetric_grid(1.0, 3)
    cases = [
        lambda: line_slice(space, torch.zeros(2, space.dim + 1, dtype=torch.float64), g, train),
        lambda: line_slice(space, dirs, np.array([-1.0, 0.0, 0.5, 1.0]), train),
        lambda: line_slice(space, dirs, np.array([-1.0, 0.0, 0.5]), train),
        lambda: line_slice(space, dirs, np.array([1.0, 0.0, -1.0]), train),
        lambda: line_slice(space, dirs, g, train, bn="frozen"),
        lambda: line_slice(space, dirs, g, train, workers=0),
        lambda: line_slice(space, dirs * math.nan, g, train),
        lambda: line_slice(space, dirs, g, "train"),  # type: ignore[arg-type]
        lambda: plane_slice(space, dirs, dirs[1], g, g, train),
        lambda: plane_slice(space, dirs[0], dirs[1], g, symmetric_grid(1.0, 3)[:2], train),
        lambda: symmetric_grid(1.0, 4),
        lambda: symmetric_grid(0.0, 5),
        lambda: random_directions(space, 1, 0, "unit"),
    ]
    for case in cases:
        with pytest.raises(LandscopeError) as err:
            case()
        assert str(err.value) and "\n" not in str(err.value)


def test_interrupted_parallel_scan_keeps_finished_chunks_and_stops_workers(tmp_path,
                                                                         monkeypatch):
    """The parent is interrupted while workers run: the chunks they finished (and the ones
    they held) are saved, the workers stop claiming, the temporary directory goes, and a
    resumed scan evaluates only the rest, with values identical to a serial scan."""
    import glob
    import tempfile

    from landscope.geometry import scan as scan_mod

    space = ParamSpace(_model())
    dirs = random_directions(space, 2, seed=1)
    train = _data(2000, 0, micro_batch=500)
    xs = symmetric_grid(1.0, 15)
    full = plane_slice(space, dirs[0], dirs[1], xs, xs, train)
    before = set(glob.glob(f"{tempfile.gettempdir()}/landscope-slice-*"))
    monkeypatch.setattr(scan_mod, "_POLL_S", 0.001)
    real_save, saves = scan_mod._save_store, []

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 1:
            raise KeyboardInterrupt("simulated interruption")
    monkeypatch.setattr(scan_mod, "_save_store", save_then_interrupt)
    store = tmp_path / "p.npz"
    with pytest.raises(KeyboardInterrupt):
        plane_slice(space, dirs[0], dirs[1], xs, xs, train, workers=2, store=store,
                    save_every=0.0)
    assert set(glob.glob(f"{tempfile.gettempdir()}/landscope-slice-*")) == before
    monkeypatch.setattr(scan_mod, "_save_store", real_save)
    resumed = plane_slice(space, dirs[0], dirs[1], xs, xs, train, workers=2, store=store)
    assert 0 < resumed.n_evaluated <= full.n_points - 32  # at least one 32-point chunk kept
    for key, value in full.arrays().items():
        assert np.array_equal(resumed.arrays()[key], value), key


def test_joblib_parallel_still_works_after_parallel_slices(setup):
    """Slices and joblib share loky's reusable pool; either may come first."""
    from joblib import Parallel, delayed
    _, space, dirs, train, _ = setup
    xs = symmetric_grid(1.0, 3)
    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
    first = line_slice(space, dirs, xs, train, workers=2)
    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
    again = line_slice(space, dirs, xs, train, workers=2)
    assert np.array_equal(first.train_loss, again.train_loss)


def test_parent_evaluates_its_share_and_late_workers_find_the_scan_over(setup, tmp_path,
                                                                        monkeypatch):
    """With workers=2 this process is one of the two (one torch thread while it computes, its
    setting restored after); a worker that starts after the scan ended returns nothing."""
    from landscope.geometry import scan as scan_mod
    _, space, dirs, train, _ = setup
    xs = symmetric_grid(1.0, 5)
    serial = plane_slice(space, dirs[0], dirs[1], xs, xs, train)
    real, seen = scan_mod.evaluate_points, []

    def counting(space_, scan, idx, *args, **kwargs):
        seen.append((len(idx), torch.get_num_threads()))
        return real(space_, scan, idx, *args, **kwargs)
    monkeypatch.setattr(scan_mod, "evaluate_points", counting)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = plane_slice(space, dirs[0], dirs[1], xs, xs, train, workers=2)
        assert seen and all(t == 1 for _, t in seen)  # chunks evaluated here, one thread
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(two.train_loss, serial.train_loss)
    gone = tmp_path / "ended"
    assert scan_mod._worker_scan("token", str(gone / "scan.pkl"), str(gone), False) == []
    assert scan_mod._claim(str(gone), 0) is False
