"""The edge of stability (issue #20 item 2): λmax every k optimizer steps
(``probe.every_n_steps``, :mod:`landscope.probes.step_curvature`) against an independent
full-batch gradient-descent loop with dense float64 Hessians, its resume, its refusals, W&B's
view of the rows, and the report section :mod:`landscope.analysis.eos`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import interrupted_pair, metrics_without_time, run_cli
from landscope.analysis.eos import eos_stats, eos_table, threshold
from landscope.analysis.report import build_report
from landscope.config import ConfigError, validate
from landscope.data import load_data
from landscope.geometry.snapshots import load as load_trajectory
from landscope.io import read_jsonl
from landscope.jobresults import TRAJECTORY_FILE
from landscope.jobs import COMPLETED, initial_model, train_job
from landscope.probes.step_curvature import StepCurvature
from landscope.probes.suite import probe_data
from landscope.tracking import WandbTracker

# a tiny tanh MLP (40 -> 6 -> 10: 316 parameters) on 32 MNIST-1D samples, probes on all of them
TINY = ["dataset.train_size=32", "dataset.test_size=16", "model.width=6", "model.depth=1",
        "model.activation=tanh", "probe=basic", "probe.top_k=1", "probe.trace.enabled=false",
        "probe.sharpness.enabled=false", "probe.data_size=null", "landscape=none"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _series(job_dir) -> tuple[list, list, list]:
    steps, lam, loss = [], [], []
    for row in read_jsonl(job_dir / "metrics.jsonl"):
        steps += row.get("curv_step", [])
        lam += row.get("curv_step_lambda_max", [])
        loss += row.get("curv_step_loss", [])
    return steps, lam, loss


def _reference_gd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
                  steps: int, every: int) -> dict[int, tuple[float, float]]:
    """Plain full-batch gradient descent on ``1/2 sum_c (f_c - onehot_c)^2`` (mean over
    samples) of the one-hidden-layer tanh network, in float32 as the runner trains, with
    ``{step: (λmax of the dense float64 Hessian, loss)}`` after every ``every``-th step."""
    w1, b1 = model.input_layer.linear.weight, model.input_layer.linear.bias
    w2, b2 = model.head.weight, model.head.bias
    shapes = [w1.shape, b1.shape, w2.shape, b2.shape]
    theta = torch.cat([t.detach().reshape(-1) for t in (w1, b1, w2, b2)])
    onehot = torch.nn.functional.one_hot(y, 10)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts, i = [], 0
        for s in shapes:
            n = math.prod(s)
            parts.append(flat[i:i + n].reshape(s))
            i += n
        a, c, b, d = parts
        out = torch.tanh(x.to(flat.dtype) @ a.T + c) @ b.T + d
        return 0.5 * ((out - onehot.to(flat.dtype)) ** 2).sum(1).mean()

    found = {}
    for t in range(1, steps + 1):
        flat = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(flat), flat)
        theta = theta - lr * g
        if t % every == 0:
            h = torch.func.hessian(loss)(theta.double())
            found[t] = (float(torch.linalg.eigvalsh(h)[-1]), float(loss(theta.double())))
    return found


def test_step_lambda_max_matches_dense_hessian_of_plain_gradient_descent(compose, tmp_path):
    """Full-batch GD (lr 0.5, squared loss): the runner's λmax every 2 steps equals the largest
    eigenvalue of the dense float64 Hessian of the reference loop at the same steps to a
    relative 2e-3 (Lanczos stops at a relative residual of 1e-3; float32 operator), the loss
    to 1e-5."""
    overrides = [*TINY, "loss=mse", "train.full_batch=true", "train.epochs=8",
                 "optimizer.lr=0.5", "probe.every_n_steps=2"]
    cfg = compose(overrides)
    result = train_job(cfg, tmp_path, overrides)
    assert result["status"] == COMPLETED
    steps, lam, loss = _series(tmp_path)
    assert steps == [2, 4, 6, 8]
    data = load_data(cfg.dataset)
    x, y = next(data.train.batches(len(data.train)))
    ref = _reference_gd(initial_model(cfg, data), x.reshape(len(x), -1), y, 0.5, 8, 2)
    for t, lam_t, loss_t in zip(steps, lam, loss):
        assert lam_t == pytest.approx(ref[t][0], rel=2e-3)
        assert loss_t == pytest.approx(ref[t][1], rel=1e-5)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [("curv_step" in r) for r in rows] == [False, True] * 4  # only measured epochs
    assert all(r["curv_step_hvps"] >= 2 for r in rows if "curv_step" in r)


def test_resume_mid_run_gives_identical_rows(compose, tmp_path):
    """Mini-batches (3 steps per epoch), λmax every 2 steps: the measured steps cross epoch
    boundaries, and a job resumed from epoch 2 (global step 6) writes the same rows."""
    full = ["dataset.train_size=48", *TINY[1:], "train.batch_size=16", "train.epochs=4",
            "probe.every_n_steps=2", "train.keep_checkpoints=4", "train.checkpoint_interval_s=0"]
    _, part = interrupted_pair(compose, full, tmp_path)
    result = train_job(compose(full), part, full)
    assert result["resumed_from_epoch"] == 2
    assert metrics_without_time(part) == metrics_without_time(tmp_path / "full")
    assert [r.get("curv_step") for r in read_jsonl(part / "metrics.jsonl")] == \
        [[2], [4, 6], [8], [10, 12]]


def test_step_hook_composes_with_the_trajectory_recorder(compose, tmp_path):
    """With landscape.trajectory snapshots every 2 steps too, both hooks run after every
    step: the λmax recorded at step 4 is the one measured again from step 4's snapshot."""
    overrides = ["dataset.train_size=48", *TINY[1:-1], "train.batch_size=16", "train.epochs=2",
                 "probe.every_n_steps=2", "landscape=basic", "landscape.line.enabled=false",
                 "landscape.trajectory.enabled=true", "landscape.trajectory.snapshot_every_steps=2",
                 "landscape.trajectory.points=3"]
    cfg = compose(overrides)
    train_job(cfg, tmp_path, overrides)
    steps, lam, loss = _series(tmp_path)
    traj = load_trajectory(tmp_path / TRAJECTORY_FILE)
    assert steps == [2, 4, 6] and traj.steps.tolist() == [0, 2, 4, 6]
    data = load_data(cfg.dataset)
    model = initial_model(cfg, data)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(traj.snapshots[2]), model.parameters())
    hook = StepCurvature(probe_data(data.train, cfg.probe), 2, seed=cfg.probe.seed)
    assert hook.measure(model, 4) == (lam[1], loss[1])


def test_default_rows_carry_no_step_measurements(compose, tmp_path):
    overrides = [*TINY, "train.epochs=1"]
    train_job(compose(overrides), tmp_path, overrides)
    assert not any(k.startswith("curv_") for k in read_jsonl(tmp_path / "metrics.jsonl")[0])


@pytest.mark.parametrize("overrides,message", [
    (["probe.every_n_steps=-1"], "probe.every_n_steps must be >= 0 (got -1)"),
    (["probe=none", "probe.every_n_steps=5"], "probe.every_n_steps must be 0 with probe=none"),
])
def test_bad_every_n_steps_is_one_config_error(compose, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_runner_refuses_bad_every_n_steps_with_exit_2(tmp_path, data_dir):
    proc = run_cli(["experiment=smoke", "probe.every_n_steps=-3"], tmp_path, data_dir=data_dir)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert lines == ["error: probe.every_n_steps must be >= 0 (got -3)"]


def test_wandb_gets_the_scalars_of_a_row_with_lists():
    """W&B logs a row's numbers; the per-step lists stay in metrics.jsonl."""
    logged = []

    class Run:
        def log(self, row):
            logged.append(row)

    tracker = WandbTracker(None)
    tracker.run = Run()
    tracker.log_epoch({"epoch": 3, "train_loss": 0.5, "curv_step": [2, 3],
                       "curv_step_lambda_max": [4.0, 4.1], "curv_step_loss": [0.6, 0.5],
                       "curv_step_hvps": 20, "stop_reason": None})
    assert logged == [{"epoch": 3, "train_loss": 0.5, "curv_step_hvps": 20}]


def test_section_statistics_are_exact_on_a_constructed_series():
    """20 measurements every 10 steps: sharpening to the threshold at step 80 (ratio 1.02),
    then 12 ratios, 9 within ±10 % and 3 outside (1.2, 0.85, 1.3)."""
    steps = np.arange(10, 210, 10)
    ratio = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.02,
             1.05, 0.95, 1.09, 1.2, 0.85, 1.0, 1.08, 0.92, 1.3, 1.01, 0.99, 1.04]
    # monotone descent before the reach step, then 4 rises in 12 intervals, the largest 20 %
    loss = [10, 9, 8, 7, 6, 5, 4, 3.0,
            3.6, 2.9, 2.8, 2.9, 2.7, 2.6, 2.5, 2.4, 2.5, 2.3, 2.2, 2.3]
    s = eos_stats(steps, ratio, loss)
    assert s["reach_step"] == 80 and s["ratio_at_reach"] == 1.02
    assert s["n_after"] == 12 and s["fraction_within"] == 9 / 12
    assert s["goal_met"] is False
    assert s["rose_before"] == 0.0 and s["rose_after"] == 4 / 12
    assert s["largest_rise"] == pytest.approx(0.2, abs=1e-12)
    never = eos_stats([1, 2, 3], [0.5, 0.6, 0.99], [3, 2, 2.5])
    assert never["reach_step"] is None and math.isnan(never["fraction_within"])
    assert never["goal_met"] is None and never["rose_before"] == 0.5
    assert eos_stats([5, 10], [1.0, 1.05], [1, 1])["goal_met"] is True
    assert threshold(0.5) == 4.0 and threshold(0.1, 0.9, 1.0) == pytest.approx(37.0)


def test_report_on_a_tiny_eos_sweep(tmp_path, data_dir):
    """``-m experiment=eos`` over two step sizes, shrunk: the section's table equals the
    statistics recomputed here from each job's metrics.jsonl with threshold 2/η."""
    args = ["-m", "experiment=eos", "optimizer.lr=0.5,2.0", "train.epochs=6",
            "probe.every_n_steps=2", *TINY[:5], "probe.micro_batch=32"]
    proc = run_cli(args, tmp_path, data_dir=data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "eos"
    build_report([sweep], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Edge of stability" in text and "figures/eos.png" in text
    assert (tmp_path / "report" / "figures" / "eos.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "report" / "eos.csv")
    assert sorted(table["optimizer.lr"]) == [0.5, 2.0]
    for _, row in table.iterrows():
        job = next(p for p in sweep.iterdir() if f"optimizer.lr={row['optimizer.lr']}" in p.name)
        steps, lam, loss = _series(job)
        assert steps == [2, 4, 6] and row["threshold"] == 2 / row["optimizer.lr"]
        ratio = np.asarray(lam) / (2 / row["optimizer.lr"])
        hit = [t for t, r in zip(steps, ratio) if r >= 1]
        expect_reach = hit[0] if hit else None
        got = None if pd.isna(row["reach_step"]) else int(row["reach_step"])
        assert got == expect_reach
    again, _ = eos_table(pd.DataFrame())
    assert again.empty


def test_the_step_hook_keys_the_training_fingerprint(compose):
    """The λmax rows are written by training: turning the hook on (or changing what it reads)
    makes another training job; with the hook off its options leave training's hash alone."""
    from landscope.fingerprints import fingerprint

    base = fingerprint(compose(["probe=basic"]))
    assert fingerprint(compose(["probe=basic", "probe.seed=3"])) == base  # hook off: not read
    on = fingerprint(compose(["probe=basic", "probe.every_n_steps=10"]))
    assert on != base
    assert fingerprint(compose(["probe=basic", "probe.every_n_steps=5"])) != on
    assert fingerprint(compose(["probe=basic", "probe.every_n_steps=10",
                                "probe.data_size=500"])) != on
    assert fingerprint(compose(["probe=basic", "probe.every_n_steps=10",
                                "probe.top_k=3"])) == on  # the final probes only
