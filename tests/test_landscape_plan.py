"""The landscape's cost made visible: the plan line a job logs before its landscape (points per
part, from the suite's own counts, and the time), a bar per part whose count is the part's
points, and neither changes a value."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

from landscope.config.landscape import LandscapeConfig
from landscope.data import load_data
from landscope.geometry.directions import random_directions
from landscope.geometry.plan import plan_line, planned_points
from landscope.geometry.slices import line_slice, plane_slice, symmetric_grid
from landscope.geometry.snapshots import load as load_trajectory
from landscope.geometry.space import ParamSpace
from landscope.geometry.suite import run_landscape
from landscope.jobs import train_job
from landscope.models import build_model
from landscope.probes.probe_data import ProbeData

TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=64",
        "model.width=16", "model.depth=2", "landscape.data_size=64", "landscape.line.points=5",
        "landscape.line.directions=2", "probe=none"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_planned_points_are_the_suites_counts():
    cfg = LandscapeConfig()
    cfg.line.enabled, cfg.line.directions, cfg.line.points, cfg.line.eigen = True, 3, 51, 2
    cfg.plane.enabled, cfg.plane.points = True, 21
    cfg.trajectory.enabled, cfg.trajectory.points = True, 21
    # each direction's 50 points off the shared centre, plus the centre once
    assert planned_points(cfg, n_eig=5, snapshots=11) == {
        "line": 151, "eigline": 101, "plane": 441, "trajectory": 452}
    # parts the suite skips are not planned: too few eigenvectors, no recorded snapshots
    assert planned_points(cfg, n_eig=1, snapshots=None) == {"line": 151, "plane": 441}
    cfg.line.enabled = cfg.plane.enabled = cfg.trajectory.enabled = False
    assert planned_points(cfg, n_eig=5, snapshots=11) == {}


def test_plan_line_time_is_points_times_seconds():
    plan = {"line": 151, "plane": 441, "trajectory": 452}
    line = plan_line(plan, (0.1, 0.04), (1000, 500), workers=1)
    # (151 + 441) slice points at 0.1 s, 452 trajectory points at 0.04 s
    assert "1044 points (line 151, plane 441, trajectory 452)" in line
    assert "1000 train + 500 test samples" in line and line.endswith("~77 s")
    two = plan_line(plan, (0.1, 0.04), (1000, 500), workers=2, intrinsic=(5, 20, 75.4))
    # 592 × 0.1 / 2 + 452 × 0.04 if the processes halve the slices' time, else 592 × 0.1 + 18
    assert "~48 s with the slices over 2 processes, up to ~77 s if they gain nothing" in two
    assert two.endswith("5 subspace trainings of 20 epochs, ~75 s of training steps")
    # a short plan keeps a decimal rather than reading as 0 s
    assert plan_line({"line": 151}, (0.0027, 0.0), (1000, 1000), workers=1).endswith(
        "~2.7 ms a slice point, so ~0.4 s")
    # points an interrupted run stored are planned but cost no time: (592 - 92) × 0.1
    kept = plan_line(plan, (0.1, 0.0), (1000, 500), workers=1, stored={"plane": 92})
    assert "1044 points" in kept and kept.endswith(
        "so ~50 s (92 slice points stored by an interrupted run are read back)")


def test_with_workers_a_slice_point_is_timed_on_one_thread(monkeypatch):
    """The scan's processes evaluate on one torch thread each: so is the timed point."""
    from landscope.geometry import plan as plan_mod

    space, dirs, data = _space_and_data()
    seen = []
    real = plan_mod.evaluate_points

    def spy(*args):
        seen.append(torch.get_num_threads())
        return real(*args)

    monkeypatch.setattr(plan_mod, "evaluate_points", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert plan_mod.slice_seconds(space, dirs[0], [data], "keep", None, workers=2) > 0
        assert plan_mod.slice_seconds(space, dirs[0], [data], "keep", None) > 0
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_plan_counts_the_points_a_resumed_scan_reads_back(compose, tmp_path, bars):
    """A store left by an interrupted run: the plan says how many of its points are read back
    and leaves them out of its time; the line's bar starts at them."""
    cfg = compose([*TINY, "landscape=basic"])
    data = load_data(cfg.dataset)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.meta)
    first = run_landscape(model, data, cfg.landscape, store_dir=tmp_path)
    store = tmp_path / "line.partial.npz"
    with np.load(store) as z:
        saved = {k: z[k] for k in z.files}
    saved["done"][:4] = False  # as if the run stopped with 5 of the 9 points stored
    np.savez(store, **saved)
    said: list[str] = []
    again = run_landscape(model, data, cfg.landscape, store_dir=tmp_path, progress=True,
                          log=said.append)
    assert "9 points (line 9)" in said[0]
    assert said[0].endswith("(5 slice points stored by an interrupted run are read back)")
    (line_bar,) = [b for b in bars.shown() if b["desc"] == "landscape line"]
    assert (line_bar["initial"], line_bar["n"], line_bar["total"]) == (5, 9, 9)
    assert np.array_equal(again.arrays["line_train_loss"], first.arrays["line_train_loss"])


def test_a_job_logs_its_landscape_plan_and_shows_a_bar_per_part(compose, tmp_path, caplog,
                                                                bars):
    cfg = compose([*TINY, "landscape=basic", "train.epochs=2", "landscape.plane.enabled=true",
                   "landscape.plane.points=3", "landscape.trajectory.enabled=true",
                   "landscape.trajectory.points=3", "landscape.intrinsic.enabled=true",
                   "landscape.intrinsic.dims=[4,16]", "landscape.intrinsic.epochs=1",
                   "landscape.progress=true"])
    with caplog.at_level(logging.INFO, logger="landscope"):
        result = train_job(cfg, tmp_path, [])
    snapshots = len(load_trajectory(tmp_path / "trajectory.npz"))
    lines = [r.getMessage() for r in caplog.records if "landscape plan:" in r.getMessage()]
    assert len(lines) == 1
    # 2 directions x 4 points + the centre; 3 x 3 plane; 3 x 3 contour + the snapshots
    expected = f"{9 + 9 + 9 + snapshots} points (line 9, plane 9, trajectory {9 + snapshots})"
    assert expected in lines[0]
    assert re.search(r"~[\d.]+ ms a slice point, ~[\d.]+ ms a trajectory point, so ~[\d.]+ s; "
                     r"then the intrinsic dimension: 2 subspace trainings of 1 epochs, "
                     r"~[\d.]+ s of training steps$", lines[0])
    shown = {b["desc"]: b for b in bars.shown() if b["desc"].startswith("landscape")}
    assert {k: (b["total"], b["n"], b["closed"]) for k, b in shown.items()} == {
        "landscape line": (9, 9, True), "landscape plane": (9, 9, True),
        "landscape trajectory": (9 + snapshots, 9 + snapshots, True),
        "landscape intrinsic": (2, 2, True)}
    assert result["landscape"]["trajectory_snapshots"] == snapshots


def test_the_plan_and_the_bars_change_no_value(compose):
    cfg = compose([*TINY, "landscape=basic", "landscape.plane.enabled=true",
                   "landscape.plane.points=3", "landscape.bn=recompute", "model=cnn",
                   "model.norm=batch", "model.width=4", "model.depth=1"])
    data = load_data(cfg.dataset)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.meta)
    plain = run_landscape(model, data, cfg.landscape)
    said: list[str] = []
    shown = run_landscape(model, data, cfg.landscape, progress=True, log=said.append)
    assert len(said) == 1 and "line 9, plane 9" in said[0]
    assert shown.arrays.keys() == plain.arrays.keys()
    for key, value in plain.arrays.items():
        assert np.array_equal(shown.arrays[key], value, equal_nan=True), key
    timing = [k for k in plain.scalars if k.endswith("_seconds")]
    assert {k: v for k, v in shown.scalars.items() if k not in timing} == \
        {k: v for k, v in plain.scalars.items() if k not in timing}


def _space_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    data = ProbeData.from_tensors(torch.randn(40, 6, generator=g),
                                  torch.randint(0, 3, (40,), generator=g), 20)
    space = ParamSpace(model)
    return space, random_directions(space, 2, 0), data


def test_a_resumed_scan_counts_its_stored_points_as_done(tmp_path, bars):
    space, dirs, data = _space_and_data()
    xs = symmetric_grid(1.0, 5)
    store = tmp_path / "line.partial.npz"
    first = line_slice(space, dirs, xs, data, store=store, save_every=0, progress="a")
    again = line_slice(space, dirs, xs, data, store=store, progress="b")
    assert again.n_evaluated == 0 and np.array_equal(again.train_loss, first.train_loss)
    a, b = bars.shown()
    assert (a["total"], a["initial"], a["n"]) == (9, 0, 9)
    assert (b["total"], b["initial"], b["n"]) == (9, 9, 9) and a["closed"] and b["closed"]
    line_slice(space, dirs, xs, data)  # no label: no bar shown
    assert len(bars.shown()) == 2


def test_a_parallel_scan_moves_its_bar_by_whole_chunks(bars):
    space, dirs, data = _space_and_data()
    xs = symmetric_grid(1.0, 5)
    res = plane_slice(space, dirs[0], dirs[1], xs, xs, data, workers=2, progress="plane")
    (b,) = bars.shown()
    assert (b["total"], b["n"], b["closed"]) == (25, 25, True) and res.n_evaluated == 25


def test_a_plan_of_eigenvector_lines_only_times_a_point_too(compose):
    """No random line and no plane: the slice point is timed along a direction of its own."""
    cfg = compose([*TINY, "landscape=basic", "landscape.line.directions=0",
                   "landscape.line.eigen=1"])
    data = load_data(cfg.dataset)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.meta)
    dim = ParamSpace(model).dim
    eig = np.random.default_rng(0).standard_normal((dim, 1))
    said: list[str] = []
    rep = run_landscape(model, data, cfg.landscape, eigenvectors=eig / np.linalg.norm(eig),
                        log=said.append)
    # 4 points off the centre, and the centre
    assert len(said) == 1 and "5 points (eigline 5)" in said[0]
    assert re.search(r"~[\d.]+ ms a slice point, so ~[\d.]+ s$", said[0])
    assert rep.arrays["eigline_train_loss"].shape == (1, 5)


def test_the_intrinsic_dimensions_time_is_its_steps_interpolated_in_d(monkeypatch):
    """Steps timed at the smallest and the largest d, interpolated linearly in d between them,
    times the epochs' steps; a timed step leaves the model untouched."""
    from landscope.data import TensorSplit
    from landscope.geometry import intrinsic_dim
    from landscope.geometry.plan import intrinsic_seconds

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randn(100, 6, generator=g), torch.randint(0, 3, (100,),
                                                                        generator=g))
    before = [p.detach().clone() for p in model.parameters()]
    assert intrinsic_dim.step_seconds(model, 10, "sparse", split, 16, seed=0) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    timed = []

    def step(model, d, projection, train, batch_size, seed, lr):
        timed.append(d)
        return {2: 0.01, 10: 0.03}[d]

    monkeypatch.setattr(intrinsic_dim, "step_seconds", step)
    cfg = LandscapeConfig().intrinsic
    cfg.epochs, cfg.projection = 3, "dense"
    # d = 2, 6, 10: 0.01 + 0.02 + 0.03 s a step, 3 epochs of ceil(100 / 16) = 7 steps
    assert intrinsic_seconds(model, [2, 6, 10], cfg, split, 16, 0) == pytest.approx(0.06 * 21)
    assert sorted(timed) == [2, 10]
