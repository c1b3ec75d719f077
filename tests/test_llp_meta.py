"""Tests for LLP's meta-model (landscope.optim.llp_meta): the online ridge fit against its
closed form, targets built by hand from a constructed loss stream, the scale/veto rule on
constructed predictions, exact resume (optimizer and job), meta=false unchanged, meta=true
scaling the steps, the logged keys and the one-line config errors."""

from __future__ import annotations

import io
import math

import pytest
import torch

from conftest import cut_back_to_epoch_2, metrics_without_time, run_cli
from landscope.config import BaseOptimizerName, LLPConfig, OptimizerConfig, OptimizerName, validate
from landscope.optim import build_optimizer
from landscope.optim.llp_meta import EPOCH_KEYS, FEATURES, MetaModel, features, step_factor

TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=32",
        "probe=none", "landscape=none"]  # 8 steps per epoch
META = ["optimizer=llp", "optimizer.llp.every=2", "optimizer.llp.meta=true",
        "optimizer.llp.meta_warmup=4", "optimizer.llp.meta_horizon=3", "optimizer.llp.eps=1e-3",
        "model.activation=gelu", "optimizer.lr=0.5"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_online_ridge_equals_the_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, len(FEATURES), generator=g, dtype=torch.float64)
    y = torch.randn(9, generator=g, dtype=torch.float64)
    meta = MetaModel(ridge=0.7)
    for xi, yi in zip(x, y):
        meta.update(xi, float(yi))
    want = torch.linalg.solve(x.T @ x + 0.7 * torch.eye(len(FEATURES), dtype=torch.float64),
                              x.T @ y)
    torch.testing.assert_close(meta.weights(), want, rtol=1e-12, atol=1e-12)
    assert meta.n == 9 and meta.target_sum == pytest.approx(float(y.sum()), abs=1e-12)
    assert meta.predict(x[0]) == pytest.approx(float(x[0] @ want), abs=1e-12)


def test_targets_from_the_loss_stream_by_hand():
    meta = MetaModel(ridge=2.0, warmup=1, horizon=2)
    x1 = torch.tensor([1.0, 0.5, 0, 0, 0, 0, 0], dtype=torch.float64)
    x2 = torch.tensor([1.0, -1.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    meta.observe(4.0)           # step 0: L_0 = 4
    assert meta.decide(x1) == 1.0  # no sample yet: warm-up, factor 1, pred 0
    meta.observe(3.0)           # step 1
    meta.observe(2.0)           # step 2: y_1 = (4 - (3 + 2) / 2) / 4 = 0.375
    assert meta.n == 1 and meta.prev == pytest.approx(0.375) and meta.pending == []
    w = torch.linalg.solve(2.0 * torch.eye(7, dtype=torch.float64) + torch.outer(x1, x1),
                           x1 * 0.375)
    pred = float(x2 @ w)  # = 0.375 * (1 - 0.5) / (2 + 1.25) = 0.0577
    assert pred == pytest.approx(0.375 * 0.5 / 3.25, abs=1e-12)
    assert meta.decide(x2) == pytest.approx(pred / 0.375)  # scale: pred / mean target
    meta.observe(6.0)
    meta.observe(float("nan"))  # a non-finite loss drops the pending sample
    assert meta.pending == [] and meta.loss_now is None and meta.n == 1
    meta.count_step()
    out = meta.pop_epoch_metrics()
    assert set(out) == set(EPOCH_KEYS)
    assert out["llp_meta_loss"] == pytest.approx(0.375 ** 2)  # prequential: pred 0 at x1
    assert out["llp_meta_pred"] == pytest.approx(pred / 2)
    assert out["llp_meta_samples"] == 1 and out["llp_meta_vetoes"] == 0
    assert out["llp_meta_scale"] == pytest.approx(pred / 0.375)


def test_target_is_per_unit_of_the_factor_the_window_was_stepped_at():
    meta = MetaModel(horizon=2)
    meta.observe(4.0)
    meta.decide(torch.ones(7, dtype=torch.float64))
    meta.factor = 0.5  # as a decision after warm-up would set it
    meta.count_step()  # step 0 at 0.5
    meta.observe(3.0)
    meta.factor = 0.25
    meta.count_step()  # step 1 at 0.25: mean factor 0.375
    meta.observe(2.0)  # relative decrease (4 - 2.5) / 4 = 0.375, per unit factor 1.0
    assert meta.n == 1 and meta.prev == pytest.approx(1.0)


def test_target_is_clipped_and_relative():
    meta = MetaModel(horizon=1)
    meta.observe(1.0)
    meta.decide(torch.ones(7, dtype=torch.float64))
    meta.observe(50.0)  # (1 - 50) / 1 = -49 -> -1
    assert meta.prev == -1.0 and float(meta.b[0]) == -1.0


@pytest.mark.parametrize("pred,ref,action,want", [
    (0.2, 0.1, "scale", 1.0), (0.05, 0.1, "scale", 0.5), (0.001, 0.1, "scale", 0.1),
    (-0.3, 0.1, "scale", 0.1), (0.05, -0.1, "scale", 1.0), (-0.05, -0.1, "scale", 0.1),
    (0.001, 0.1, "veto", 1.0), (-0.001, 0.1, "veto", 0.1),
])
def test_step_factor_on_constructed_predictions(pred, ref, action, want):
    assert step_factor(pred, ref, action, 0.1) == pytest.approx(want)


def test_warmup_and_veto_count():
    meta = MetaModel(warmup=2, horizon=1, action="veto", min_scale=0.25)
    x = torch.tensor([1.0, 0, 0, 0, 0, 0, 0], dtype=torch.float64)
    factors = []
    for loss in (1.0, 2.0, 3.0, 4.0):  # the loss rises: targets -1, -0.5, -1/3
        meta.observe(loss)
        factors.append(meta.decide(x))
    assert factors == [1.0, 1.0, 0.25, 0.25]  # samples complete at steps 1, 2, 3
    assert meta.prev == pytest.approx(-1 / 3) and meta.target_sum == pytest.approx(-11 / 6)
    assert meta.pop_epoch_metrics()["llp_meta_vetoes"] == 2


def test_features_need_finite_inputs():
    x = features(4.0, 2.0, 3.0, -1.0, 0.1, 2.0, 0.5, 0.2)
    want = [1.0, math.log(4.0), math.log(1.5), -0.5, math.log(0.4), math.log(0.8), 0.2]
    assert x.tolist() == pytest.approx(want, abs=1e-15)
    assert features(None, 2.0, 3.0, 1.0, 0.1, 2.0, 0.5, 0.0) is None
    assert features(4.0, 0.0, 3.0, 1.0, 0.1, 2.0, 0.5, 0.0) is None
    assert features(4.0, 2.0, 3.0, 1.0, 0.1, 2.0, None, 0.0) is None


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _batches(n, start=0):
    g = torch.Generator().manual_seed(123)
    data = [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(start + n)]
    return data[start:]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.observe(loss.detach())
        opt.probe(lambda x=x, y=y: torch.nn.functional.cross_entropy(model(x), y).backward())
        opt.step()


def _cfg(seed=7):
    return OptimizerConfig(name=OptimizerName.llp, base=BaseOptimizerName.momentum, lr=0.5,
                           momentum=0.5, llp=LLPConfig(every=2, probes=2, seed=seed, meta=True,
                                                       meta_warmup=2, meta_horizon=3))


def test_state_dict_round_trip_mid_horizon_resumes_bit_identically():
    model = _model(0)
    opt = build_optimizer(model.parameters(), _cfg())
    _train(model, opt, _batches(11))  # pending samples and a fitted model at the cut
    assert opt.meta.pending and opt.meta.n >= 2
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, _batches(9, 11))
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = _model(1)
    opt2 = build_optimizer(model2.parameters(), _cfg(seed=99))
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    _train(model2, opt2, _batches(9, 11))
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(opt.meta.a, opt2.meta.a) and opt.meta.factor == opt2.meta.factor
    assert opt.pop_epoch_metrics() == opt2.pop_epoch_metrics()


def test_meta_off_holds_no_meta_state_and_reads_no_loss():
    cfg = _cfg()
    cfg.llp.meta = False
    opt = build_optimizer(_model(0).parameters(), cfg)
    opt.observe(object())  # not a number: never read without the meta-model
    assert opt.meta is None and "meta" not in opt.state_dict()["llp"]
    assert not any(k.startswith("llp_meta") for k in opt.pop_epoch_metrics())


# ----------------------------------------------------------------------------- in the loop
@pytest.fixture
def job(tiny_job):
    """One job with this module's TINY overrides (conftest's tiny_job)."""
    return tiny_job


def test_meta_scales_steps_and_logs_its_metrics(job):
    _, on = job([*META, "train.epochs=3"], "on")
    _, off = job([*(a for a in META if ".meta" not in a), "train.epochs=3"], "off")
    rows_on, rows_off = metrics_without_time(on), metrics_without_time(off)
    for r in rows_on:
        assert set(EPOCH_KEYS) <= set(r)
    assert not any(k.startswith("llp_meta") for k in rows_off[0])
    # probes at steps 0, 2, ..., 22; each sample completes 3 steps later
    assert [r["llp_meta_samples"] for r in rows_on] == [3, 7, 11]
    assert math.isfinite(rows_on[-1]["llp_meta_loss"])
    # warm-up: the 4th sample completes at step 9, so epoch 1's steps are LLP's own
    assert rows_on[0]["train_loss"] == rows_off[0]["train_loss"]
    assert min(r["llp_meta_scale"] for r in rows_on) < 1.0
    assert rows_on[-1]["train_loss"] != rows_off[-1]["train_loss"]
    assert rows_on[-1]["llp_lr"] < rows_off[-1]["llp_lr"]


def test_resume_with_meta_matches_uninterrupted(job):
    full = [*META, "train.epochs=3", "train.keep_checkpoints=3", "train.checkpoint_interval_s=0"]
    job(full, "full")
    _, part = job(full, "part")
    cut_back_to_epoch_2(part)
    result, part = job(full, "part")
    assert result["resumed_from_epoch"] == 2
    assert metrics_without_time(part) == metrics_without_time(part.parent / "full")


@pytest.mark.parametrize("args,needle", [
    (["optimizer.llp.meta_horizon=0"], "optimizer.llp.meta_horizon"),
    (["optimizer.llp.meta_action=skip"], "scale, veto"),
])
def test_runner_rejects_bad_meta_options_with_one_line(tmp_path, data_dir, args, needle):
    proc = run_cli(["optimizer=llp", "optimizer.llp.meta=true", "experiment=smoke", *args],
                   tmp_path, data_dir=data_dir)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert not (tmp_path / "outputs").exists()


def test_meta_off_keeps_the_fingerprints(compose):
    from landscope.fingerprints import fingerprint, legacy_fingerprint

    base = compose(["optimizer=llp"])
    off = compose(["optimizer=llp", "optimizer.llp.meta=false", "optimizer.llp.meta_ridge=3",
                   "optimizer.llp.meta_action=veto"])  # read only with meta=true
    on = compose(["optimizer=llp", "optimizer.llp.meta=true"])
    assert fingerprint(off) == fingerprint(base) != fingerprint(on)
    veto = compose(["optimizer=llp", "optimizer.llp.meta=true", "optimizer.llp.meta_action=veto"])
    assert fingerprint(veto) != fingerprint(on)
    assert legacy_fingerprint(off) == legacy_fingerprint(base)
    # an LLP job without the meta-model keeps the hash it had before the meta-model existed
    # (main at a82636d), so finished LLP jobs are skipped or resumed, not refused
    assert fingerprint(base) == "2c78045357d57552"
    assert fingerprint(compose(["optimizer=llp", "optimizer.llp.c=2"])) == "35ba254bb73875b6"


def test_the_preset_arm_composes_meta_with_the_study_settings(compose):
    cfg = compose(["experiment=optimizer_study", "optimizer=llp_meta"], with_data_dir=False)
    validate(cfg)
    assert str(cfg.optimizer.name) == "llp" and cfg.optimizer.llp.meta is True
    assert cfg.optimizer.llp.eps == 0.001 and str(cfg.optimizer.base) == "sgd"
    plain = compose(["experiment=optimizer_study", "optimizer=llp"], with_data_dir=False)
    assert plain.optimizer.llp.meta is False
