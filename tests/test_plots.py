"""Figures: every plot function writes a readable PNG from saved arrays alone, and
job_figures redraws exactly the figures a job directory has data for."""

from __future__ import annotations

import numpy as np
import pytest

from landscope import plots
from landscope.io import write_json, write_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


def _png(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0  # not a blank canvas
    return img


def _line(k=3, p=11):
    c = np.linspace(-1, 1, p)
    base = c[None, :] ** 2 * np.arange(1, k + 1)[:, None]
    return {"coords": c, "train_loss": base + 0.1, "train_acc": 1 - base / 10,
            "test_loss": base + 0.3, "test_acc": 0.9 - base / 10}


def _plane(p=9):
    x = np.linspace(-1, 1, p)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    return {"x": x, "y": x, "train_loss": 0.1 + xx ** 2 + 3 * yy ** 2,
            "train_acc": 1 - 0.1 * (xx ** 2 + yy ** 2)}


def _traj(s=8, p=7):
    g = np.linspace(-2, 2, p)
    gx, gy = np.meshgrid(g, g, indexing="ij")
    pc = np.stack([np.linspace(-1.5, 0, s), np.linspace(1, 0, s)], 1)
    return {"steps": np.arange(s) * 10, "epochs": np.arange(s), "pc_coords": pc,
            "explained_variance_ratio": np.array([0.8, 0.15, 0.05]), "grid_x": g, "grid_y": g,
            "grid_loss": 0.05 + gx ** 2 + gy ** 2, "path_loss": 0.05 + (pc ** 2).sum(1),
            "path_contour_loss": 0.06 + (pc ** 2).sum(1), "off_plane": np.linspace(0.3, 0, s)}


def test_each_figure_from_arrays(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "train_acc": 1 - 1 / (e + 1),
             "test_acc": 0.9 - 1 / (e + 2), "curv_lambda_max": 5 + e, "curv_trace": 50 + e,
             "curv_trace_stderr": 1.0} for e in range(1, 6)]
    grid = np.linspace(-1, 10, 50)
    written = [
        plots.plot_training(rows, tmp_path / "t.png"),
        plots.plot_curvature(rows, tmp_path / "c.png", lr=0.1),
        plots.plot_density(grid, np.exp(-grid ** 2), tmp_path / "d.png", np.array([9.0, 8.0])),
        plots.plot_line(_line(), tmp_path / "l.png"),
        plots.plot_line(_line(2), tmp_path / "le.png", labels=["v1", "v2"]),
        plots.plot_plane_contour(_plane(), tmp_path / "pc.png"),
        plots.plot_plane_surface(_plane(), tmp_path / "ps.png"),
        plots.plot_trajectory(_traj(), tmp_path / "tr.png"),
        plots.plot_intrinsic({"dims": np.array([10, 100, 1000]), "test_acc": np.array([.2, .5, .8]),
                              "train_acc": np.array([.25, .6, .9])}, tmp_path / "i.png", 0.85),
        plots.plot_path({"linear": {"t": np.linspace(0, 1, 5),
                                    "train_loss": np.array([.1, .5, 1, .5, .1]),
                                    "train_acc": np.array([1, .8, .5, .8, 1])},
                         "bezier": {"t": np.linspace(0, 1, 5), "train_loss": np.full(5, .1),
                                    "train_acc": np.ones(5)}}, tmp_path / "p.png"),
    ]
    for path in written:
        _png(path)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries


def test_edge_of_stability_step_size(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.yaml").write_text("optimizer:\n  name: momentum\n  lr: 0.1\n  momentum: 0.9\n"
                                     "  schedule: constant\n")
    assert plots._lr(job) == pytest.approx(0.1 / 1.9)  # threshold 2(1 + beta)/lr
    (job / "config.yaml").write_text("optimizer:\n  name: adam\n  lr: 0.001\n")
    assert plots._lr(job) is None


def test_job_figures_draws_what_the_job_has(tmp_path):
    job = tmp_path / "job"
    (job / "probes").mkdir(parents=True)
    (job / "landscape").mkdir()
    write_jsonl(job / "metrics.jsonl", [{"epoch": e, "train_loss": 1 / e, "test_loss": 1 / e,
                                         "train_acc": .5, "test_acc": .4} for e in (1, 2, 3)])
    assert [p.name for p in plots.job_figures(job)] == ["training.png"]  # no curvature columns

    grid = np.linspace(0, 1, 20)
    np.savez(job / "probes" / "abc.npz", density_grid=grid, density=np.ones(20),
             eigenvalues_top=np.array([0.9]))
    np.savez(job / "probes" / "abc_epoch_000001.npz", density_grid=grid, density=np.ones(20))
    arrays = {**{f"line_{k}": v for k, v in _line().items()},
              **{f"eigline_{k}": v for k, v in _line(2).items()},
              **{f"plane_{k}": v for k, v in _plane().items()},
              **{f"traj_{k}": v for k, v in _traj().items()},
              "intrinsic_dims": np.array([10, 100]), "intrinsic_test_acc": np.array([.3, .7])}
    np.savez(job / "landscape" / "lfp.npz", **arrays)
    write_json(job / "landscape" / "lfp.json", {"scalars": {"intrinsic_reference_acc": 0.75}})
    names = sorted(p.name for p in plots.job_figures(job))
    assert names == sorted(["training.png", "density.png", "line.png", "line_eigen.png",
                            "plane_contour.png", "plane_surface.png", "trajectory.png",
                            "intrinsic_dim.png"])
    for name in names:
        _png(job / "figures" / name)
    # redrawing into another directory from saved data alone
    again = plots.job_figures(job, tmp_path / "elsewhere")
    assert sorted(p.name for p in again) == names
