"""Tests for landscope.data_shift: the shifted (ood) test split, its corruptions and MNIST-1D
generator shift, and its metrics through the runner (present only when enabled; without it,
results bit-identical to the release fixture)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from conftest import REPO, metrics_without_time, run_cli
from landscope import data as D
from landscope import data_shift as S
from landscope.checkpoint import load_checkpoint
from landscope.config import DatasetConfig, OODConfig
from landscope.data_sources import _Raw


@pytest.fixture(autouse=True)
def _fresh_cache():
    D.clear_cache()
    yield
    D.clear_cache()


def ood_cfg(data_dir, enabled=True, **kw) -> OODConfig:
    return OODConfig(enabled=enabled, **kw)


# ----------------------------------------------------------------------------- corruptions


def test_noise_adds_the_given_noise_times_the_severity_std():
    x = torch.rand(3, 2, 5, 5)
    z = torch.randn(3, 2, 5, 5)
    for s in range(1, 6):
        assert torch.equal(S.corrupt(x, "noise", s, z), x + S.NOISE_STD[s - 1] * z)
    assert S.NOISE_STD == (0.04, 0.06, 0.08, 0.09, 0.10)  # CIFAR-10-C's


def test_blur_of_a_delta_is_the_normalized_gaussian_and_matches_scipy():
    x = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    x[0, 0, 10, 10] = 1.0
    for sigma in (0.4, 1.0, 2.0):
        k = S.gaussian_kernel(sigma)
        r = int(4 * sigma + 0.5)
        assert len(k) == 2 * r + 1 and abs(k.sum().item() - 1) < 1e-15
        expected = torch.zeros(21, 21, dtype=torch.float64)
        expected[10 - r:11 + r, 10 - r:11 + r] = torch.outer(k, k)
        out = S.gaussian_blur(x, sigma)[0, 0]
        assert torch.allclose(out, expected, rtol=0, atol=1e-15)
        # edges replicated: scipy's gaussian_filter(mode="nearest", truncate=4) everywhere
        img = np.random.default_rng(0).random((9, 13))
        ours = S.gaussian_blur(torch.from_numpy(img).view(1, 1, 9, 13), sigma)[0, 0].numpy()
        assert np.allclose(ours, gaussian_filter(img, sigma, mode="nearest", truncate=4.0),
                           rtol=0, atol=1e-12)


def test_blur_scales_with_the_image_side():
    x = torch.rand(2, 3, 64, 64)
    for s in (1, 5):
        assert torch.equal(S.corrupt(x, "blur", s), S.gaussian_blur(x, S.BLUR_SIGMA[s - 1] * 2))


def test_contrast_keeps_each_channel_mean_and_scales_the_deviation():
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64)
    for s in range(1, 6):
        c = S.CONTRAST[s - 1]
        y = S.corrupt(x, "contrast", s)
        mu = x.mean(dim=(2, 3), keepdim=True)
        assert torch.allclose(y, mu + c * (x - mu), rtol=0, atol=1e-15)
        assert torch.allclose(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-15)


def _images(n=12, c=3, side=32, seed=0) -> _Raw:
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((n, c, side // 2, side // 2), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear")
    data = (smooth * 200 + 20).round().to(torch.uint8)
    return _Raw(data, torch.arange(n) % 3, 255.0)


def test_corrupt_split_layout_quantization_and_determinism():
    test = _images()
    corruptions = ("noise", "blur", "contrast")
    out = S.corrupt_split(test, 255.0, 3, corruptions, 30)
    again = S.corrupt_split(test, 255.0, 3, corruptions, 30)
    assert torch.equal(out.data, again.data) and torch.equal(out.targets, again.targets)
    assert out.data.dtype == torch.uint8 and out.data.shape == (30, 3, 32, 32)
    source, which = S.ood_layout(12, 30, 3)
    assert sorted(source[:12].tolist()) == list(range(12))  # a permutation, then cycling
    assert torch.equal(source[12:24], source[:12]) and which.tolist() == [0, 1, 2] * 10
    assert torch.equal(out.targets, test.targets[source])
    # the blur and contrast samples: exactly corrupt, clip, quantize to 8 bits
    x = test.data[source].float() / 255
    for j in (1, 2):
        rows = which == j
        want = (S.corrupt(x[rows], corruptions[j], 3).clamp(0, 1) * 255).round().to(torch.uint8)
        assert torch.equal(out.data[rows], want)
    # the noise samples: residual std = the severity's std (clipping is rare on these pixels)
    rows = which == 0
    resid = out.data[rows].float() / 255 - x[rows]
    assert abs(resid.std().item() - S.NOISE_STD[2]) < 0.004 and abs(resid.mean()) < 0.003


def test_float_sets_are_corrupted_unclipped_in_their_raw_units():
    raw = _Raw(torch.randn(8, 3, 8, 8) * 3, torch.zeros(8, dtype=torch.int64), None)
    out = S.corrupt_split(raw, None, 2, ("contrast",), 8)
    source, _ = S.ood_layout(8, 8, 1)
    assert out.data.dtype == torch.float32 and out.data.abs().max() > 1
    assert torch.equal(out.data, S.corrupt(raw.data[source], "contrast", 2))


def test_severity_moves_images_further_from_the_clean_ones():
    test = _images(n=40, seed=1)
    clean = test.data.float()
    for corruption in ("noise", "blur", "contrast"):
        dist = []
        for s in range(1, 6):
            out = S.corrupt_split(test, 255.0, s, (corruption,), 40)
            source, _ = S.ood_layout(40, 40, 1)
            dist.append((out.data.float() - clean[source]).abs().mean().item())
        assert all(a < b for a, b in zip(dist, dist[1:])), (corruption, dist)


def test_image_set_ood_split_through_load_data(tmp_path):
    cfg = DatasetConfig(name="digits", data_dir=str(tmp_path), test_size=90,
                        ood=ood_cfg(tmp_path, severity=5, size=100))
    b = D.load_data(cfg)
    plain = D.load_data(DatasetConfig(name="digits", data_dir=str(tmp_path), test_size=90))
    assert b.ood is not None and plain.ood is None and len(b.ood) == 100
    assert torch.equal(b.train.x, plain.train.x) and torch.equal(b.test.x, plain.test.x)
    # standardized with the training statistics: the raw 0..16 levels map like the test's
    raw = D.load_data(DatasetConfig(name="digits", data_dir=str(tmp_path), test_size=90,
                                    normalize=False, ood=ood_cfg(tmp_path, severity=5, size=100)))
    mean, std = raw.train.x.double().mean(), raw.train.x.double().std(correction=0)
    assert torch.allclose(b.ood.x, ((raw.ood.x.double() - mean) / std).float(), atol=1e-5)
    levels = raw.ood.x * 16
    assert torch.equal(levels, levels.round())  # quantized back to digits' 17 levels
    assert b.ood.x.shape == (100, 1, 8, 8) and b.ood.y.tolist() == raw.ood.y.tolist()


def test_mnist_files_ood_split_is_the_corrupted_8_bit_test_images(tmp_path):
    from test_data import _write_mnist

    arrays = _write_mnist(tmp_path, "MNIST", n_train=20, n_test=10)
    b = D.load_data(DatasetConfig(name="mnist", data_dir=str(tmp_path), normalize=False,
                                  ood=ood_cfg(tmp_path, severity=4, corruptions=["contrast"])))
    x = torch.from_numpy(arrays["t10k"][0]).unsqueeze(1)
    source, _ = S.ood_layout(10, 10, 1)
    want = (S.corrupt(x[source].float() / 255, "contrast", 4).clamp(0, 1) * 255).round() / 255
    assert torch.equal(b.ood.x, want) and torch.equal(b.ood.y, b.test.y[source])


def test_streamed_ood_split_matches_the_in_memory_one(tmp_path):
    kw = dict(name="digits", data_dir=str(tmp_path), ood=ood_cfg(tmp_path, size=300))
    mem = D.load_data(DatasetConfig(in_memory=True, **kw))
    stream = D.load_data(DatasetConfig(in_memory=False, **kw))
    assert isinstance(stream.ood, D.StreamSplit) and isinstance(mem.ood, D.TensorSplit)
    for (xa, ya), (xb, yb) in zip(mem.ood.batches(64), stream.ood.batches(64), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ----------------------------------------------------------------------------- MNIST-1D


@pytest.fixture(scope="module")
def m1d(data_dir):
    """The default MNIST-1D cache (once per session) and a shifted split of severity 3."""
    D.clear_cache()
    cfg = DatasetConfig(data_dir=str(data_dir), ood=ood_cfg(data_dir, severity=3))
    return D.load_data(cfg)


def test_mnist1d_default_generation_is_reproduced_before_its_standardization(m1d, data_dir):
    from mnist1d.data import get_dataset_args

    xs, ys = S.mnist1d_unnormalized(get_dataset_args())
    x = ((xs - xs.mean()) / xs.std()).astype(np.float32)
    raw = D.load_data(DatasetConfig(data_dir=str(data_dir), normalize=False))
    assert np.array_equal(x[:4000], raw.train.x[:, 0].numpy())
    assert np.array_equal(x[4000:], raw.test.x[:, 0].numpy())
    assert np.array_equal(ys[4000:], raw.test.y.numpy())


def test_mnist1d_ood_split_shape_labels_and_difference(m1d):
    ood, test = m1d.ood, m1d.test
    assert ood.x.shape == (1000, 1, 40) and ood.y.shape == (1000,)
    assert ood.x.dtype == torch.float32 and ood.y.dtype == torch.int64
    counts = torch.bincount(ood.y, minlength=10)
    assert counts.sum() == 1000 and counts.min() >= 70  # all ten classes, about balanced
    assert not torch.equal(ood.x, test.x)
    # no OOD sample equals any test sample
    assert torch.cdist(ood.x[:, 0], test.x[:, 0]).min() > 0.1
    assert S.mnist1d_shift_args(3) == {"scale_coeff": 0.4 * 1.75, "shear_scale": 0.75 * 1.75,
                                       "corr_noise_scale": 0.25 * 1.75,
                                       "iid_noise_scale": 0.02 * 1.75, "seed": 20_201}


def test_mnist1d_ood_is_deterministic_and_leaves_global_rngs(m1d, data_dir, tmp_path):
    shutil.copytree(Path(data_dir) / "mnist1d", tmp_path / "mnist1d")
    for f in (tmp_path / "mnist1d").glob("shifted_*.npz"):
        f.unlink()  # regenerate it
    np.random.seed(3)
    random.seed(3)
    before = (np.random.get_state()[1].copy(), random.getstate())
    again = D.load_data(DatasetConfig(data_dir=str(tmp_path), ood=ood_cfg(tmp_path, severity=3)))
    assert np.array_equal(before[0], np.random.get_state()[1]) and before[1] == random.getstate()
    assert torch.equal(again.ood.x, m1d.ood.x) and torch.equal(again.ood.y, m1d.ood.y)
    assert len(list((tmp_path / "mnist1d").glob("shifted_*.npz"))) == 1


def test_mnist1d_ood_size_classes_and_normalization(m1d, data_dir):
    cfg = DatasetConfig(data_dir=str(data_dir), classes=[3, 7], normalize=False,
                        ood=ood_cfg(data_dir, severity=3, size=150))
    raw = D.load_data(cfg)
    assert len(raw.ood) == 150 and set(raw.ood.y.tolist()) == {0, 1}
    cfg.normalize = True
    b = D.load_data(cfg)
    mean, std = raw.train.x.double().mean(), raw.train.x.double().std(correction=0)
    assert torch.allclose(b.ood.x, ((raw.ood.x.double() - mean) / std).float(), atol=1e-5)
    # the default size is the test split's, after classes and test_size
    small = D.load_data(DatasetConfig(data_dir=str(data_dir), test_size=64,
                                      ood=ood_cfg(data_dir, severity=1)))
    assert len(small.ood) == 64 and len(small.test) == 64


def test_mnist1d_severity_moves_samples_further_from_the_unshifted_generation(data_dir):
    """Same seed at every severity: severity 0 (the package's arguments, the OOD seed) is the
    coupled unshifted split, and the mean distance to it grows with severity."""
    x0, y0 = S._mnist1d_shifted_arrays(str(data_dir), 0, 200)
    dist = []
    for s in range(1, 6):
        xs, ys = S._mnist1d_shifted_arrays(str(data_dir), s, 200)
        assert np.array_equal(ys, y0)
        dist.append(float(np.abs(xs - x0).mean()))
    assert all(a < b for a, b in zip(dist, dist[1:])), dist


# ----------------------------------------------------------------------------- runner

SMALL = ["experiment=smoke", "model.width=8", "model.depth=1", "dataset.train_size=128",
         "dataset.test_size=64"]


def test_ood_metrics_only_when_enabled_and_nothing_else_changes(tmp_path, compose,
                                                                 one_torch_thread):
    """The release fixture's SGD job retrained today: without the ood split (absent, or off
    with other settings) its metrics and weights are the release's (to float32 rounding: the
    fixture comes from another host, conftest.RELEASE_RTOL) and bit-identical to each other;
    with it, the same plus ``ood_test_loss``/``ood_test_acc`` per epoch and in ``final``."""
    from conftest import close_to_fixture, weights_close_to_fixture
    from landscope.jobs import train_job

    fixture = next((REPO / "tests" / "fixtures" / "release_2026_12").glob("*optimizer=sgd*"))
    ref_metrics = metrics_without_time(fixture)
    ref_weights = load_checkpoint(fixture / "checkpoints" / "epoch_000002.pt")["model"]
    runs = {"absent": [], "off": ["dataset.ood.enabled=false", "dataset.ood.severity=5"],
            "on": ["dataset.ood.enabled=true", "dataset.ood.severity=5"]}
    fp, weights_today, rows_today = {}, {}, {}
    for name, extra in runs.items():
        job = tmp_path / name
        result = train_job(compose([*SMALL, *extra]), job, [*SMALL, *extra])
        fp[name] = result["fingerprint"]
        weights = load_checkpoint(job / "checkpoints" / "epoch_000002.pt")["model"]
        assert weights_close_to_fixture(weights, ref_weights)
        weights_today[name] = weights
        rows = metrics_without_time(job)
        written = json.loads((job / "result.json").read_text())["final"]
        if name == "on":
            assert all(0 <= r["ood_test_acc"] <= 1 and r["ood_test_loss"] > 0 for r in rows)
            assert written["ood_test_acc"] == rows[-1]["ood_test_acc"]
            assert written["ood_test_loss"] == rows[-1]["ood_test_loss"]
            rows = [{k: v for k, v in r.items() if not k.startswith("ood_")} for r in rows]
        else:
            assert not any(k.startswith("ood") for k in written)
        assert close_to_fixture(rows, ref_metrics), name
        rows_today[name] = rows
    assert fp["absent"] == fp["off"] != fp["on"]  # ood settings count only when it is on
    # on this host the three trainings are one and the same, bit for bit
    assert rows_today["absent"] == rows_today["off"] == rows_today["on"]
    for name in ("off", "on"):
        same = weights_today["absent"]
        assert all(torch.equal(weights_today[name][k], same[k]) for k in same)


def test_a_resumed_job_with_the_ood_split_is_bit_identical(tmp_path, compose,
                                                           one_torch_thread):
    from conftest import cut_back_to_epoch_2
    from landscope.jobs import train_job

    over = [*SMALL, "train.epochs=4", "dataset.ood.enabled=true", "train.keep_checkpoints=4",
            "train.checkpoint_interval_s=0"]
    first = train_job(compose(over), tmp_path / "job", over)
    before = metrics_without_time(tmp_path / "job")
    cut_back_to_epoch_2(tmp_path / "job")
    again = train_job(compose(over), tmp_path / "job", over)
    assert again["resumed_from_epoch"] == 2 and again["final"] == first["final"]
    assert metrics_without_time(tmp_path / "job") == before and "ood_test_acc" in before[-1]


def _validate(overrides):
    """A job's config with its ``hydra`` node, checked as the runner checks it."""
    from hydra import compose, initialize_config_dir

    from landscope.config import register_configs, validate

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        validate(compose(config_name="config", overrides=overrides, return_hydra_config=True))


@pytest.mark.parametrize("overrides,message", [
    (["dataset.ood.severity=6"], "dataset.ood.severity must be in 1..5 (got 6)"),
    (["dataset.ood.severity=0"], "dataset.ood.severity must be in 1..5 (got 0)"),
    (["dataset.ood.corruptions=[]"], "dataset.ood.corruptions must be a non-empty list"),
    (["dataset.ood.size=0"], "dataset.ood.size must be >= 1 or null (got 0)"),
    (["dataset=quadratic", "model=quadratic", "dataset.ood.enabled=true"],
     "dataset.ood.enabled must be false with dataset=quadratic"),
])
def test_bad_ood_values_are_refused_in_one_line(overrides, message):
    from landscope.config import ConfigError

    with pytest.raises(ConfigError) as err:
        _validate(overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_runner_refuses_a_bad_ood_value_with_exit_2_and_writes_nothing(tmp_path, data_dir):
    for bad, needle in ((["dataset.ood.severity=6"], "dataset.ood.severity must be in 1..5"),
                        (["dataset.ood.corruptions=[fog]"], "dataset.ood.corruptions")):
        proc = run_cli([*SMALL, *bad], tmp_path, data_dir=data_dir)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
        assert not (tmp_path / "outputs").exists()
