"""Training jobs in-process: every architecture, determinism, resume, stop rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import interrupted_pair, metrics_without_time
from landscope.io import read_json
from landscope.jobs import COMPLETED, DIVERGED, INVALID, run_job, train_job

TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=32"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def compose(compose_no_stages):
    """Probes and landscape off unless a test chooses them (the defaults run them on every job)."""
    return compose_no_stages


@pytest.mark.parametrize("dataset", ["mnist1d", "digits"])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet", "vit"])
def test_one_epoch_job_every_architecture(compose, tmp_path, model, norm, skip, dataset):
    overrides = [f"model={model}", f"model.norm={norm}", f"model.skip={skip}",
                 f"dataset={dataset}", "model.width=8", "model.depth=2", "model.heads=2",
                 "train.epochs=1", *TINY]
    result = train_job(compose(overrides), tmp_path, overrides)
    assert result["status"] == COMPLETED and result["epochs_completed"] == 1
    assert math.isfinite(result["final"]["train_loss"]) and result["n_params"] > 0
    assert {p.name for p in tmp_path.iterdir()} >= {"config.yaml", "metrics.jsonl",
                                                    "result.json", "checkpoints"}


def test_same_seed_same_metrics_other_seed_differs(compose, tmp_path):
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        overrides = [f"seed={seed}", "train.epochs=3", *TINY]
        train_job(compose(overrides), tmp_path / name, overrides)
        runs[name] = metrics_without_time(tmp_path / name)
    assert runs["a"] == runs["b"] and len(runs["a"]) == 3
    assert runs["a"] != runs["c"]


@pytest.mark.parametrize("optimizer", ["momentum", "adam", "sam"])
@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_resume_matches_uninterrupted(compose, tmp_path, optimizer, model):
    base = [f"optimizer={optimizer}", f"model={model}", "model.width=8", "model.depth=2",
            "optimizer.schedule=cosine", *TINY]
    full = [*base, "train.epochs=4", "train.keep_checkpoints=4", "train.checkpoint_interval_s=0"]
    # the interrupted job resumes from the epoch-2 checkpoint (the config is the same)
    full_dir, part = interrupted_pair(compose, full, tmp_path)
    result = train_job(compose(full), part, full)
    assert result["resumed_from_epoch"] == 2
    assert metrics_without_time(part) == metrics_without_time(full_dir)


def test_completed_job_is_skipped(compose, tmp_path):
    overrides = ["train.epochs=1", *TINY]
    first = train_job(compose(overrides), tmp_path, overrides)
    again = train_job(compose(overrides), tmp_path, overrides)
    assert again["skipped"] and again["finished"] == first["finished"]


def test_other_config_in_same_directory_is_refused(compose, tmp_path):
    train_job(compose(["train.epochs=1", *TINY]), tmp_path, [])
    summary = run_job(compose(["train.epochs=1", "seed=5", *TINY]), tmp_path, [])
    # refused before anything is written: invalid (not failed), the old result kept
    assert summary["status"] == INVALID and "different config" in summary["message"]
    assert read_json(tmp_path / "result.json")["status"] == COMPLETED


def test_divergence_is_a_status_not_a_failure(compose, tmp_path):
    overrides = ["optimizer.lr=1e6", "train.epochs=5", *TINY]
    summary = run_job(compose(overrides), tmp_path, overrides)
    result = read_json(tmp_path / "result.json")
    assert summary["status"] == DIVERGED == result["status"]
    assert result["epochs_completed"] < 5 or result["final"]["train_loss"] is None


def test_target_train_loss_stops_early(compose, tmp_path):
    overrides = ["train.epochs=50", "train.target_train_loss=1.5", "optimizer=adam",
                 "optimizer.lr=0.003", *TINY]
    result = train_job(compose(overrides), tmp_path, overrides)
    assert result["stop_reason"] == "target_train_loss" and result["epochs_completed"] < 50
    assert result["final"]["train_loss"] <= 1.5


def test_full_batch_gradient_descent_one_step_per_epoch(compose, tmp_path):
    overrides = ["train.full_batch=true", "train.epochs=3", *TINY]
    train_job(compose(overrides), tmp_path, overrides)
    rows = metrics_without_time(tmp_path)
    assert [r["steps"] for r in rows] == [1, 1, 1] and rows[-1]["grad_evals"] == 3


def test_sam_counts_two_gradient_evaluations(compose, tmp_path):
    overrides = ["optimizer=sam", "train.epochs=1", *TINY]
    train_job(compose(overrides), tmp_path, overrides)
    row = metrics_without_time(tmp_path)[0]
    assert row["grad_evals"] == 2 * row["steps"] == 2 * 8


def test_grad_clip_and_step_schedule(compose, tmp_path):
    overrides = ["train.grad_clip=0.5", "optimizer.schedule=step", "optimizer.step_size=1",
                 "optimizer.gamma=0.5", "train.epochs=3", *TINY]
    train_job(compose(overrides), tmp_path, overrides)
    assert [r["lr"] for r in metrics_without_time(tmp_path)] == pytest.approx([0.1, 0.05, 0.025])


def test_zero_epochs_reports_initial_model(compose, tmp_path):
    result = train_job(compose(["train.epochs=0", *TINY]), tmp_path, [])
    assert result["epochs_completed"] == 0 and 0 <= result["final"]["test_acc"] <= 1


def test_invalid_input_writes_nothing(compose, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    summary = run_job(compose(["optimizer.lr=-1"]), job_dir, ["optimizer.lr=-1"])
    assert summary["status"] == INVALID and "optimizer.lr" in summary["message"]
    assert not job_dir.exists()


def test_progress_bar_when_asked_plain_log_lines_otherwise(compose, tmp_path, capfd, caplog):
    caplog.set_level("INFO", logger="landscope")
    train_job(compose(["train.epochs=2", "train.progress=true", *TINY]), tmp_path / "bar", [])
    err = capfd.readouterr().err
    assert "epoch 2/2" in err and "it/s" in err  # tqdm's bar on stderr
    plain = ["train.epochs=2", "train.progress=false", "train.reuse_trained=false", *TINY]
    train_job(compose(plain), tmp_path / "plain", [])  # trained, not taken from "bar"
    assert "it/s" not in capfd.readouterr().err
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 4 and "test_acc" in lines[-1]


def test_unreadable_result_file_means_rerun(compose, tmp_path):
    overrides = ["train.epochs=1", *TINY]
    first = train_job(compose(overrides), tmp_path, overrides)
    (tmp_path / "result.json").write_text('{"status": "compl')  # torn by hand
    again = train_job(compose(overrides), tmp_path, overrides)
    assert "skipped" not in again and again["final"] == first["final"]


def test_sam_updates_batchnorm_statistics_from_the_unperturbed_point(compose):
    import copy
    from types import SimpleNamespace

    from landscope.data import TensorSplit
    from landscope.models import build_model
    from landscope.optim import build_optimizer, build_scheduler
    from landscope.train import TrainState, epoch_generator, train_epoch

    cfg = compose(["model.norm=batch", "optimizer=sam", "model.width=8"])
    torch.manual_seed(0)
    model = build_model(cfg.model, SimpleNamespace(input_shape=(1, 40), num_classes=10))
    reference = copy.deepcopy(model).train()
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    reference(x)  # one forward at w: what the running statistics should see
    opt = build_optimizer(model.parameters(), cfg.optimizer)
    state = TrainState(model, opt, build_scheduler(opt, cfg.optimizer, 1))
    train_epoch(state, TensorSplit(x, y), 16, epoch_generator(0, 0))
    ours, ref = dict(model.named_buffers()), dict(reference.named_buffers())
    for name in (n for n in ours if "running" in n):
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-6, atol=1e-7)


def test_probes_on_final_checkpoint_verified_against_dense_hessian(compose, tmp_path):
    overrides = ["probe=full", "probe.verify=true", "probe.data_size=200", "model.width=8",
                 "model.depth=2", "train.epochs=2", "probe.every_n_epochs=1", *TINY]
    result = train_job(compose(overrides), tmp_path, overrides)
    p = result["probes"]
    assert p["eig_all_converged"] and p["probe_mode"] == "eval" and p["probe_data_size"] == 200
    # float32 model and operator against the float64 dense reference
    assert p["verify_top_max_rel_error"] < 1e-4 and p["verify_bottom_max_abs_error"] < 1e-4
    assert abs(p["verify_trace_error_in_stderr"]) < 4
    # the density's negative mass and the log-det (when H + eps I is positive definite)
    assert p["verify_negative_mass_error"] == pytest.approx(
        p["density_negative_mass"] - p["verify_negative_mass_exact"], abs=1e-12)
    assert "logdet_skipped" in p and p["lambda_min"] < -1e-3  # indefinite: no log-det here
    # the trace's stderr is relative to max(|tr H|, an estimate of sum |lambda|) (issue #18)
    assert p["lambda_max"] >= p["lambda_2"] and p["trace_converged"]
    assert abs(p["trace"]) <= p["trace_reference"]
    assert p["trace_stderr"] <= 0.011 * p["trace_reference"]
    assert 0 <= p["sharpness_l2_onestep_rho0.01"] <= p["sharpness_l2_rho0.01"] \
        <= p["sharpness_l2_rho0.05"]
    assert p["pac_bayes_sigma"] > 0 and "sharpness_keskar_eps0.001" in p
    assert p["noise_trace_sigma"] > 0 and p["noise_alignment"] == "hutchinson"
    assert p["difficulty_index"] > 0
    arrays = np.load(tmp_path / "probes" / f"{result['probe_fingerprint']}.npz")
    assert arrays["eigenvalues_top"].shape == (5,) and arrays["eigenvectors_top"].shape[1] == 5
    assert np.isclose(np.trapezoid(arrays["density"], arrays["density_grid"]), 1, atol=0.05)
    rows = metrics_without_time(tmp_path)
    assert all(r["curv_lambda_max"] > 0 and "curv_trace" in r for r in rows)


def test_probes_added_to_a_finished_job_without_retraining(compose, tmp_path):
    overrides = ["train.epochs=1", *TINY]
    first = train_job(compose(overrides), tmp_path, overrides)
    ckpt = tmp_path / "checkpoints" / "epoch_000001.pt"
    stamp = ckpt.stat().st_mtime_ns
    probed = train_job(compose([*overrides, "probe=basic"]), tmp_path, overrides)
    assert probed["final"] == first["final"] and ckpt.stat().st_mtime_ns == stamp
    assert probed["probes"]["lambda_max"] > 0 and "trace" in probed["probes"]
    again = train_job(compose([*overrides, "probe=basic"]), tmp_path, overrides)
    assert again["skipped"] and again["probes"] == probed["probes"]


def test_diverged_jobs_are_not_probed(compose, tmp_path):
    overrides = ["optimizer.lr=1e6", "train.epochs=3", "probe=basic", *TINY]
    result = train_job(compose(overrides), tmp_path, overrides)
    assert result["status"] == DIVERGED and result["probes"] == {"skipped": "diverged"}


def test_train_mode_probes_on_batchnorm_are_recorded_and_differ_from_eval(compose, tmp_path):
    """probe.mode=train: batch statistics over the fixed partition, running stats untouched;
    the mode is recorded and each mode's results are cached under their own fingerprint."""
    base = ["model=cnn", "model.norm=batch", "model.width=8", "model.depth=2", "train.epochs=1",
            "probe=basic", "probe.data_size=128", "probe.micro_batch=64", *TINY]
    ev = train_job(compose(base), tmp_path, base)
    ckpt = tmp_path / "checkpoints" / "epoch_000001.pt"
    stamp = ckpt.stat().st_mtime_ns
    tr = train_job(compose([*base, "probe.mode=train"]), tmp_path, base)
    assert ev["probes"]["probe_mode"] == "eval" and tr["probes"]["probe_mode"] == "train"
    assert tr["probe_fingerprint"] != ev["probe_fingerprint"]
    assert tr["probes"]["lambda_max"] > 0
    assert abs(tr["probes"]["lambda_max"] - ev["probes"]["lambda_max"]) > \
        1e-3 * ev["probes"]["lambda_max"]
    assert tr["final"] == ev["final"] and ckpt.stat().st_mtime_ns == stamp  # no retraining
    assert len(list((tmp_path / "probes").glob("*.json"))) == 2
