"""train.precision: fp32 (unchanged), bf16 autocast, fp16 autocast with a gradient scaler."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.errors import ConfigCompositionException

from conftest import interrupted_pair, metrics_without_time
from landscope.checkpoint import list_checkpoints, load_checkpoint
from landscope.config import ModelConfig, ModelName, OptimizerConfig, OptimizerName
from landscope.errors import ConfigError
from landscope.jobs import COMPLETED, INVALID, fingerprint, run_job, train_job
from landscope.models import build_model
from landscope.optim import build_optimizer, make_precision
from landscope.train import evaluate, mixed_precision_step, optimizer_step

TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=32",
        "probe=none", "landscape=none"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


class Meta:
    input_shape, num_classes = (1, 40), 10


def _job(compose, tmp_path, name, extra):
    overrides = [*TINY, *extra]
    result = train_job(compose(overrides), tmp_path / name, overrides)
    return result, metrics_without_time(tmp_path / name)


def _final_state(job_dir):
    return load_checkpoint(list_checkpoints(job_dir / "checkpoints")[0])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_mixed_precision_trains_and_the_loss_decreases(compose, tmp_path, precision, model):
    extra = [f"model={model}", "model.width=8", "model.depth=2", "train.epochs=3",
             "optimizer=momentum"]
    result, rows = _job(compose, tmp_path, precision, [*extra, f"train.precision={precision}"])
    assert result["status"] == COMPLETED
    losses = [r["train_loss"] for r in rows]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] < math.log(10) + 0.5
    _, fp32 = _job(compose, tmp_path, "fp32", extra)
    assert [r["train_loss"] for r in fp32] != losses  # autocast really changed the arithmetic
    if precision == "fp16":  # the scaler's record per epoch
        assert all(r["loss_scale"] > 0 and r["skipped_steps"] >= 0 for r in rows)
        assert "precision" in _final_state(tmp_path / precision)
    else:
        assert "loss_scale" not in rows[0]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_sam_with_mixed_precision(compose, tmp_path, precision):
    extra = ["optimizer=sam", "model.width=16", "train.epochs=3", f"train.precision={precision}"]
    result, rows = _job(compose, tmp_path, "sam", extra)
    assert result["status"] == COMPLETED
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    skipped = sum(r.get("skipped_steps", 0) for r in rows)
    # two per step; a step skipped for a non-finite first gradient spends one
    assert 2 * 3 * 8 - skipped <= rows[-1]["grad_evals"] <= 2 * 3 * 8


@pytest.mark.parametrize("optimizer", ["momentum", "sam"])
def test_fp16_resume_is_bit_identical(compose, tmp_path, optimizer):
    full = [f"optimizer={optimizer}", "model=resnet", "model.width=8", "model.depth=2",
            "train.precision=fp16", "train.epochs=4", "train.keep_checkpoints=4",
            "train.checkpoint_interval_s=0", "train.grad_clip=1.0", *TINY]
    _, part = interrupted_pair(compose, full, tmp_path)
    saved = _final_state(part)["precision"]  # the epoch-2 checkpoint the resume starts from
    assert saved["precision"] == "fp16" and saved["scaler"]["scale"] > 0
    assert saved["scaler"]["_growth_tracker"] > 0 or saved["scaler"]["scale"] < 2.0 ** 16
    result = train_job(compose(full), part, full)
    assert result["resumed_from_epoch"] == 2
    assert metrics_without_time(part) == metrics_without_time(tmp_path / "full")
    a, b = _final_state(part), _final_state(tmp_path / "full")
    assert a["precision"] == b["precision"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_scaler_state_round_trips():
    amp = make_precision("fp16")
    amp.scaler.load_state_dict({"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                "growth_interval": 2000, "_growth_tracker": 7})
    other = make_precision("fp16")
    other.load_state_dict(amp.state_dict())
    assert other.scaler.state_dict() == amp.scaler.state_dict()
    with pytest.raises(ConfigError, match="trained with train.precision=bf16"):
        other.load_state_dict(make_precision("bf16").state_dict())


def test_fp32_is_the_unchanged_default(compose, tmp_path):
    """precision left at its default and train.precision=fp32: the same job (fingerprint),
    the float32 code path (no scaler, no autocast state in the checkpoint), identical metrics
    and weights."""
    assert make_precision("fp32") is None
    base = ["train.epochs=2", "optimizer=sam"]
    default, explicit = compose([*TINY, *base]), compose([*TINY, *base, "train.precision=fp32"])
    assert default.train.precision == "fp32"
    assert fingerprint(default) == fingerprint(explicit)
    assert fingerprint(compose([*TINY, *base, "train.precision=bf16"])) != fingerprint(default)
    _, rows_default = _job(compose, tmp_path, "default", base)
    _, rows_fp32 = _job(compose, tmp_path, "fp32", [*base, "train.precision=fp32"])
    assert rows_default == rows_fp32 and "loss_scale" not in rows_default[0]
    a, b = _final_state(tmp_path / "default"), _final_state(tmp_path / "fp32")
    assert "precision" not in a and "precision" not in b
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_fp32_step_equals_a_plain_pytorch_step():
    """optimizer_step without amp is the float32 step (loss, backward, SGD update)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=ModelName.mlp, width=16, depth=2), Meta)
    twin = build_model(ModelConfig(name=ModelName.mlp, width=16, depth=2), Meta)
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 1, 40), torch.arange(8) % 10
    opt = build_optimizer(model.parameters(), OptimizerConfig(name=OptimizerName.sgd, lr=0.1))
    loss, evals = optimizer_step(model, opt, x, y)
    ref = torch.nn.functional.cross_entropy(twin(x), y)
    ref.backward()
    torch.optim.SGD(twin.parameters(), lr=0.1).step()
    assert evals == 1 and torch.equal(loss, ref.detach())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_forward_runs_in_the_low_precision_dtype(precision, dtype):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=ModelName.mlp, width=16, depth=2), Meta)
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = build_optimizer(model.parameters(), OptimizerConfig(name=OptimizerName.sgd))
    loss, _ = mixed_precision_step(model, opt, torch.randn(8, 1, 40), torch.arange(8) % 10,
                                   make_precision(precision))
    assert seen == [dtype] and loss.dtype == torch.float32  # cross-entropy stays float32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in model.parameters())
    seen.clear()
    evaluate(model, _Split(torch.randn(8, 1, 40), torch.arange(8) % 10), 4)
    assert seen == [torch.float32, torch.float32]  # evaluation: float32


class _Split:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def batches(self, batch_size, shuffle=False):
        for i in range(0, len(self.y), batch_size):
            yield self.x[i:i + batch_size], self.y[i:i + batch_size]


@pytest.mark.parametrize("optimizer", [OptimizerName.momentum, OptimizerName.sam])
def test_fp16_overflow_skips_the_step_and_backs_off(optimizer):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=ModelName.mlp, width=16, depth=2), Meta)
    opt = build_optimizer(model.parameters(), OptimizerConfig(name=optimizer, momentum=0.9))
    amp = make_precision("fp16", optimizer)
    amp.scaler.load_state_dict({**amp.scaler.state_dict(), "scale": 2.0 ** 120})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, evals = mixed_precision_step(model, opt, torch.randn(8, 1, 40), torch.arange(8) % 10, amp)
    assert evals == 1  # SAM: no second gradient after a non-finite first one
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert amp.scaler.get_scale() == 2.0 ** 119
    assert amp.pop_metrics() == {"loss_scale": 2.0 ** 119, "skipped_steps": 1}
    for _ in range(3):  # at a sane scale the steps go through
        amp.scaler.load_state_dict({**amp.scaler.state_dict(), "scale": 2.0 ** 8})
        mixed_precision_step(model, opt, torch.randn(8, 1, 40), torch.arange(8) % 10, amp)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert amp.pop_metrics()["skipped_steps"] == 0


def test_bad_precision_fails_in_one_line(compose, tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose(["train.precision=fp8"])
    assert "fp32, bf16, fp16" in str(err.value.__cause__)
    with pytest.raises(ConfigError) as info:
        make_precision("fp8")
    assert str(info.value) == "train.precision must be one of fp32, bf16, fp16 (got 'fp8')"
    job = tmp_path / "llp"
    summary = run_job(compose([*TINY, "optimizer=llp", "train.precision=bf16"]), job, [])
    assert summary["status"] == INVALID and "\n" not in summary["message"]
    assert summary["message"].startswith("optimizer=llp needs train.precision=fp32")
    assert not job.exists()  # refused before anything was written
