"""The landscape config group through the job layer: results contract, caching, trajectory
recording, finished jobs (no retraining), the standalone commands and the figures."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from landscope.geometry.snapshots import load as load_trajectory
from landscope.geometry.space import ParamSpace
from landscope.io import read_json, read_jsonl
from landscope.jobs import COMPLETED, landscape_fingerprint, train_job
from landscope.probes.probe_data import ProbeData

TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=64",
        "model.width=16", "model.depth=2", "landscape.data_size=64", "landscape.line.points=5",
        "landscape.line.directions=2"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _cfg(compose, *overrides, probe="none"):
    return compose([*TINY, f"probe={probe}", *overrides])


def test_basic_landscape_results_contract(compose, tmp_path):
    cfg = _cfg(compose, "landscape=basic", "train.epochs=1", "landscape.figures=true")
    result = train_job(cfg, tmp_path, [])
    lfp = result["landscape_fingerprint"]
    assert lfp == landscape_fingerprint(cfg) and result["status"] == COMPLETED
    s = result["landscape"]
    z = np.load(tmp_path / "landscape" / f"{lfp}.npz")
    assert z["line_train_loss"].shape == (2, 5) and z["line_test_acc"].shape == (2, 5)
    assert np.array_equal(z["line_coords"], np.array([-1, -0.5, 0, 0.5, 1.0]))
    # every direction shares the one exactly evaluated centre, and the scalar reports it
    # (its value against an independent evaluation: test_centre_equals_an_independent_evaluation)
    assert np.all(z["line_train_loss"][:, 2] == s["line_train_loss_centre"])
    cached = read_json(tmp_path / "landscape" / f"{lfp}.json")
    assert cached["scalars"] == s and cached["landscape"]["name"] == "basic"
    assert not list((tmp_path / "landscape").glob("*.partial.npz"))  # resume stores cleaned up
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == ["line.png",
                                                                          "training.png"]


def test_centre_equals_an_independent_evaluation(compose, tmp_path):
    """The slice centre is the final model's exact mean loss on the seeded subset."""
    from landscope.data import load_data
    from landscope.jobdir import JobDir

    cfg = _cfg(compose, "landscape=basic", "train.epochs=1")
    result = train_job(cfg, tmp_path, [])
    model, data = JobDir(tmp_path).load_model()
    sub = ProbeData.from_split(load_data(cfg.dataset).train, 64, cfg.landscape.seed, 2048)
    x, y = sub.batches[0]
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model.eval()(x), y).item()
    assert result["landscape"]["line_train_loss_centre"] == pytest.approx(loss, rel=1e-6)
    assert ParamSpace(model).dim == result["n_params"]


def test_full_landscape_with_trajectory_and_intrinsic_dim(compose, tmp_path):
    cfg = _cfg(compose, "landscape=full", "train.epochs=2", "landscape.plane.points=5",
               "landscape.trajectory.points=5", "landscape.intrinsic.dims=[4,16]",
               "landscape.intrinsic.epochs=1", "landscape.trajectory.snapshot_every_steps=2",
               probe="basic")
    result = train_job(cfg, tmp_path, [])
    s = result["landscape"]
    z = np.load(tmp_path / "landscape" / f"{result['landscape_fingerprint']}.npz")
    # 256 samples / 64 per batch = 4 steps per epoch, a snapshot every 2 steps, plus step 0
    traj = load_trajectory(tmp_path / "trajectory.npz")
    assert list(traj.steps) == [0, 2, 4, 6, 8] and list(traj.epochs) == [0, 1, 1, 2, 2]
    assert s["trajectory_snapshots"] == 5 and z["traj_pc_coords"].shape == (5, 2)
    assert 0 < s["trajectory_pc1_explained_variance"] <= 1
    assert z["plane_train_loss"].shape == (5, 5)
    assert list(z["intrinsic_dims"]) == [4, 16] and "intrinsic_d90_relative" in s
    # probe=basic saves no eigenvectors: the eigenvector lines are skipped with a note
    notes = read_json(tmp_path / "landscape" / f"{result['landscape_fingerprint']}.json")["notes"]
    assert any("line.eigen" in n for n in notes) and "eigline_train_loss_centre" not in s


def test_eigenvector_lines_use_the_probes_eigenvectors(compose, tmp_path):
    cfg = _cfg(compose, "landscape=basic", "landscape.line.eigen=2", "train.epochs=1",
               "probe.top_k=2", "probe.trace.enabled=false", "probe.density.enabled=false",
               "probe.noise.enabled=false", "probe.sharpness.family=false", probe="standard")
    result = train_job(cfg, tmp_path, [])
    s = result["landscape"]
    z = np.load(tmp_path / "landscape" / f"{result['landscape_fingerprint']}.npz")
    assert z["eigline_train_loss"].shape == (2, 5)
    # along the top eigenvector the loss rises at least as fast as along the second
    # near the centre (curvature lambda_1 >= lambda_2 in the second difference)
    h = z["eigline_coords"][3] - z["eigline_coords"][2]
    second = (z["eigline_train_loss"][:, 3] - 2 * z["eigline_train_loss"][:, 2]
              + z["eigline_train_loss"][:, 1]) / h ** 2
    lam = result["probes"]
    assert s["eigline_train_loss_centre"] == s["line_train_loss_centre"]
    assert second[0] > 0 and lam["lambda_max"] > 0


def test_finished_job_gets_landscape_without_retraining(compose, tmp_path):
    train_job(_cfg(compose, "landscape=none", "train.epochs=1"), tmp_path, [])
    before = read_jsonl(tmp_path / "metrics.jsonl")
    assert "landscape" not in read_json(tmp_path / "result.json")
    cfg = _cfg(compose, "landscape=basic", "train.epochs=1")
    result = train_job(cfg, tmp_path, [])
    assert result["landscape"]["line_train_loss_centre"] > 0
    assert read_jsonl(tmp_path / "metrics.jsonl") == before  # nothing retrained
    mtime = (tmp_path / "result.json").stat().st_mtime_ns
    again = train_job(cfg, tmp_path, [])
    assert again.get("skipped") and (tmp_path / "result.json").stat().st_mtime_ns == mtime
    # a trajectory cannot be recovered for a job trained without it: a note, not a failure
    full = train_job(_cfg(compose, "landscape=basic", "landscape.trajectory.enabled=true",
                          "train.epochs=1"), tmp_path, [])
    lfp = full["landscape_fingerprint"]
    assert any("trajectory" in n
               for n in read_json(tmp_path / "landscape" / f"{lfp}.json")["notes"])


def _cli(module, *args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_landscape_and_figures_commands(compose, tmp_path):
    job = tmp_path / "job"
    train_job(_cfg(compose, "landscape=none", "train.epochs=1"), job, [])
    small = ["landscape.data_size=64", "landscape.line.points=5", "landscape.line.directions=2"]
    first = _cli("runner.landscape", job, *small, "landscape.plane.enabled=true",
                 "landscape.plane.points=5", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "landscape: " in first.stdout and "landscape (basic)" in first.stdout + first.stderr
    result = read_json(job / "result.json")
    assert result["landscape"]["plane_train_loss_centre"] == \
        result["landscape"]["line_train_loss_centre"]
    assert (job / "figures" / "plane_contour.png").is_file()
    again = _cli("runner.landscape", job, *small, "landscape.plane.enabled=true",
                 "landscape.plane.points=5", cwd=tmp_path)
    assert again.returncode == 0 and "landscape (basic)" not in again.stdout + again.stderr
    for bad in (["landscape=steep"], ["probe=full"], ["landscape.line.points=4"],
                ["landscape=none"]):
        proc = _cli("runner.landscape", job, *bad, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), (bad, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    missing = _cli("runner.landscape", tmp_path / "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and "nowhere" in missing.stderr

    # figures are redrawn from the saved data alone, into another directory
    out = tmp_path / "redrawn"
    drawn = _cli("runner.figures", job, "--out", out, cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert {p.name for p in (out / "job").glob("*.png")} >= {"training.png", "line.png",
                                                             "plane_contour.png",
                                                             "plane_surface.png"}
    bad = _cli("runner.figures", tmp_path / "nowhere", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_float16_snapshots_through_a_job_and_the_fingerprint_at_the_default(compose, tmp_path):
    """landscape.trajectory.snapshot_dtype=float16 records the trajectory in half precision
    (the snapshots equal the float32 ones rounded to float16); at its default the setting stays
    out of the landscape fingerprint, so jobs scanned before it existed keep their hash."""
    from omegaconf import OmegaConf

    from landscope.geometry.snapshots import load as load_trajectory
    from landscope.jobs import TRAJECTORY_FILE, landscape_fingerprint

    runs = {}
    for dtype in ("float32", "float16"):
        cfg = _cfg(compose, "landscape=basic", "landscape.trajectory.enabled=true",
                   "train.epochs=1", f"landscape.trajectory.snapshot_dtype={dtype}")
        train_job(cfg, tmp_path / dtype, [])
        runs[dtype] = load_trajectory(tmp_path / dtype / TRAJECTORY_FILE).snapshots
    assert runs["float16"].dtype == np.float16 and runs["float32"].dtype == np.float32
    assert np.array_equal(runs["float16"], runs["float32"].astype(np.float16))
    default = _cfg(compose, "landscape=basic")
    before = OmegaConf.create(OmegaConf.to_container(default, enum_to_str=True))
    del before.landscape.trajectory["snapshot_dtype"]  # saved before the setting existed
    assert landscape_fingerprint(before) == landscape_fingerprint(default)
    assert landscape_fingerprint(_cfg(compose, "landscape=basic",
                                      "landscape.trajectory.snapshot_dtype=float16")) != \
        landscape_fingerprint(default)
