"""What needs a CUDA GPU (issue #18 item 8): a job that trains and probes on ``cuda``, every
probe of the suite giving the CPU's answers there, bf16 training, the product methods, batched
products and activation checkpointing's peak memory.

Skipped without a GPU (CI has none); `scripts/device_check.sh` runs this file first on a machine
with one. ``LANDSCOPE_TEST_DEVICE=cpu`` runs the same tests on the CPU instead (a dry run of the
tests themselves: the comparisons are then CPU against CPU, and the peak-memory test is skipped).
"""

from __future__ import annotations

import json
import math
import os
import warnings

import pytest
import torch

from landscope.data import TensorSplit
from landscope.jobs import COMPLETED, train_job
from landscope.models import build_model
from landscope.probes.batched import matmat
from landscope.probes.hvp import HessianOperator
from landscope.probes.probe_data import ProbeData
from landscope.probes.suite import run_probes
from probe_models import seeded_model
from test_probe_run import EXPECTED_JSON, _inputs, _untimed

DEVICE = os.environ.get("LANDSCOPE_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (LANDSCOPE_TEST_DEVICE=cpu: a dry run on CPU)"),
]
TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=32",
        "landscape=none", f"train.device={DEVICE}"]


def _finite_floats(scalars: dict) -> dict:
    return {k: v for k, v in scalars.items()
            if isinstance(v, float) and not k.endswith("seconds") and math.isfinite(v)}


def test_a_job_trains_and_probes_on_the_device(compose, tmp_path):
    """``train.device=cuda``: the runner's job trains there, runs ``probe=standard`` on the
    trained model and writes finite results."""
    overrides = [*TINY, "train.epochs=2", "probe=standard", "probe.data_size=128"]
    result = train_job(compose(overrides), tmp_path / "job", overrides)
    assert result["status"] == COMPLETED
    probes = result["probes"]
    for key in ("lambda_max", "trace", "density_negative_mass", "noise_trace_sigma"):
        assert math.isfinite(probes[key]), key
    assert probes["top_checked"] is True
    assert json.loads((tmp_path / "job" / "result.json").read_text())["status"] == COMPLETED


def test_every_probe_gives_the_cpus_answers_on_the_device():
    """The golden case ``full`` of tests/test_probe_run.py (every estimator: top-k, bottom-k,
    trace, density and log det, the sharpness family, noise, per-block spectra, PAC-Bayes with
    optimized posteriors, verify mode; a float64 MLP) with the model on the device: the same
    scalar names, and every finite value within 1e-6 (relative) of the CPU's."""
    model, split, cfg, w0 = _inputs("full")
    got = _untimed(run_probes(model.to(DEVICE), split, cfg, w0=w0.to(DEVICE)).scalars)
    want = json.loads(EXPECTED_JSON.read_text())["full"]
    want.pop("__arrays__")
    assert list(json.loads(json.dumps(got))) == list(want)
    off = {k: (v, want[k]) for k, v in _finite_floats(got).items()
           if isinstance(want[k], float) and abs(v - want[k]) > 1e-6 * max(1.0, abs(want[k]))}
    assert not off, off
    # verify mode's dense float64 Hessian, computed on the device
    assert got["verify_top_max_rel_error"] < 1e-8 and got["verify_bottom_max_abs_error"] < 1e-8


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_mixed_precision_training_on_the_device(compose, tmp_path, precision):
    """``train.precision=bf16`` (autocast) on the device trains a ResNet, as fp32 does."""
    overrides = [*TINY, "model=resnet", "model.width=8", "model.depth=2", "train.epochs=3",
                 "optimizer=momentum", f"train.precision={precision}", "probe=none"]
    result = train_job(compose(overrides), tmp_path / precision, overrides)
    assert result["status"] == COMPLETED
    assert math.isfinite(result["final"]["train_loss"])
    assert result["final"]["train_loss"] < math.log(10)


def _operator(method: str, dtype=torch.float64, checkpointing: bool = False) -> HessianOperator:
    model, x, y = seeded_model(dict(name="resnet", width=4, depth=2, norm="batch", skip=True),
                               (1, 8, 8), 5, 24)
    data = ProbeData.from_tensors(x.to(DEVICE, dtype), y.to(DEVICE), 12)
    return HessianOperator(model.to(DEVICE, dtype), data, method=method,
                           checkpointing=checkpointing)


def test_product_methods_and_batched_products_agree_on_the_device():
    """The three product methods give one product, equal to the CPU's, and a batched product
    equals its columns (float64)."""
    ops = {m: _operator(m) for m in ("cached", "double_backward", "forward_over_reverse")}
    v = torch.randn(ops["cached"].dim, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    ref = ops["cached"].matvec(v.to(DEVICE))
    assert ref.device.type == torch.device(DEVICE).type
    for method, op in ops.items():
        assert torch.allclose(op.matvec(v.to(DEVICE)), ref, rtol=1e-10, atol=1e-12), method
    model, x, y = seeded_model(dict(name="resnet", width=4, depth=2, norm="batch", skip=True),
                               (1, 8, 8), 5, 24)
    cpu = HessianOperator(model, ProbeData.from_tensors(x.double(), y, 12))
    assert torch.allclose(cpu.matvec(v).to(DEVICE), ref, rtol=1e-9, atol=1e-12)
    V = torch.randn(ops["cached"].dim, 3, dtype=torch.float64, device=DEVICE)
    cols = torch.stack([ops["cached"].matvec(V[:, j].contiguous()) for j in range(3)], 1)
    assert torch.allclose(matmat(ops["cached"], V), cols, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(DEVICE != "cuda", reason="peak memory is read from the CUDA allocator")
def test_checkpointing_lowers_the_peak_memory_of_a_product():
    """``probe.checkpointing``: the same product (float32, to rounding) at no higher a peak of
    CUDA memory on a ResNet-18 (CIFAR stem, width 16) over 64 CIFAR-shaped samples (on the CPU
    it cut a product's peak by 0-19 %: reverse-over-reverse needs the gradient graph again)."""
    from landscope.config import ModelConfig

    meta = type("Meta", (), {"input_shape": (3, 32, 32), "num_classes": 10})()
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18", width=16, depth=18), meta).to(DEVICE).eval()
    x = torch.randn(64, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (64,), device=DEVICE)
    data = ProbeData.from_tensors(x, y, 32)
    peaks, products = {}, {}
    for checkpointing in (False, True):
        op = HessianOperator(model, data, method="double_backward", checkpointing=checkpointing)
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        products[checkpointing] = op.matvec(v)
        torch.cuda.synchronize()
        peaks[checkpointing] = torch.cuda.max_memory_allocated() - base
        del op
    print(f"peak CUDA memory of a product: {peaks[False] / 2**20:.1f} MiB, with checkpointing "
          f"{peaks[True] / 2**20:.1f} MiB")
    assert peaks[True] <= 1.02 * peaks[False], peaks
    assert torch.allclose(products[True], products[False], rtol=1e-3, atol=1e-4)


def test_probe_data_on_the_cpu_with_the_model_on_the_device():
    """The runner's arrangement: the training split stays on the CPU, the model is on the
    device; the suite moves the probe samples (a float32 MLP, ``probe=standard``-like)."""
    from landscope.config import DensityConfig, ProbeConfig, TraceConfig

    model, x, y = seeded_model(dict(name="mlp", width=8, depth=2), (1, 12), 3, 64)
    cfg = ProbeConfig(data_size=None, micro_batch=32, progress=False, top_k=3,
                      trace=TraceConfig(enabled=True), density=DensityConfig(enabled=True))
    got = run_probes(model.float().to(DEVICE), TensorSplit(x.float(), y), cfg).scalars
    want = run_probes(model.float().cpu(), TensorSplit(x.float(), y), cfg).scalars
    assert got["lambda_max"] == pytest.approx(want["lambda_max"], rel=1e-4)
    assert abs(got["trace"] - want["trace"]) <= 4 * math.hypot(got["trace_stderr"],
                                                               want["trace_stderr"]) + 1e-6


def test_the_landscape_plan_on_the_device_counts_no_worker_processes(compose):
    """Slices on a GPU run in the calling process whatever ``landscape.workers`` says (the scan
    warns and evaluates there), so the plan does not divide their time by the workers."""
    from landscope.data import load_data
    from landscope.geometry.suite import run_landscape

    cfg = compose([*TINY[:3], "model.width=16", "landscape=basic", "landscape.workers=2",
                   "landscape.data_size=64", "landscape.line.points=5", "probe=none"])
    data = load_data(cfg.dataset)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.meta).to(DEVICE)
    said: list[str] = []
    with warnings.catch_warnings():  # on the device: "slice workers > 1 run on CPU only"
        warnings.simplefilter("ignore", RuntimeWarning)
        run_landscape(model, data, cfg.landscape, log=said.append)
    assert len(said) == 1
    assert ("over 2 processes" in said[0]) == (DEVICE == "cpu"), said[0]
