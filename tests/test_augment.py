"""Training-data augmentation (:mod:`landscope.augment`): the exact maps on hand-made tensors,
the per-(seed, epoch) streams, bit-identical resume, ``augment=none`` as today (the release
fixture reproduced), evaluation/probes on the un-augmented data, and refusals."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from conftest import interrupted_pair, metrics_without_time, run_cli
from landscope.augment import (
    UNAUGMENTED_NOTE,
    BasicAugment,
    augment_generator,
    make_augment,
)
from landscope.config import AugmentConfig, ConfigError
from landscope.train import epoch_generator


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ images
def test_crop_and_flip_of_a_hand_made_batch():
    """Seed 0 draws offsets (dy, dx) = (2, 0), (2, 0) and flips 1, 1 (checked below): with
    padding 1 each 3x3 image shows its rows 1..2 then a zero row, its columns 1, 0 then a
    zero column (mirrored)."""
    g = _gen(0)
    assert torch.randint(0, 3, (2, 2), generator=g).tolist() == [[2, 0], [2, 0]]
    assert torch.randint(0, 2, (2, 1), generator=g).tolist() == [[1], [1]]
    x = torch.arange(1, 19, dtype=torch.float32).reshape(2, 1, 3, 3)
    out = BasicAugment(padding=1, flip=True)(x, _gen(0))
    assert out.tolist() == [[[[5, 4, 0], [8, 7, 0], [0, 0, 0]]],
                            [[[14, 13, 0], [17, 16, 0], [0, 0, 0]]]]


def _reference_images(x, padding, flip, seed):
    """One sample at a time: pad, slice, flip (the same draws in the same order)."""
    g = _gen(seed)
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=g) if padding else \
        torch.zeros(b, 2, dtype=torch.long)
    flips = torch.randint(0, 2, (b, 1), generator=g) if flip else torch.zeros(b, 1)
    out = []
    for i in range(b):
        p = F.pad(x[i], (padding,) * 4)
        dy, dx = offsets[i].tolist()
        crop = p[:, dy:dy + h, dx:dx + w]
        out.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(out), offsets, flips


@pytest.mark.parametrize("padding,flip", [(2, True), (3, False), (0, True)])
def test_images_match_a_per_sample_reference(padding, flip):
    x = torch.randn(16, 3, 5, 7, generator=_gen(9))
    out = BasicAugment(padding=padding, flip=flip)(x, _gen(4))
    expected, offsets, flips = _reference_images(x, padding, flip, 4)
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    assert torch.equal(out, expected)
    if padding:  # several offsets and both flips occur in 16 samples
        assert len({tuple(o) for o in offsets.tolist()}) > 4
    if flip:
        assert 0 < int(flips.sum()) < 16


def test_padding_zeros_appear_exactly_outside_the_shifted_image():
    """out[b, :, i, j] = 1 iff (dy + i - p, dx + j - p) lies inside the H x W image."""
    p, h, w = 2, 4, 6
    x = torch.ones(32, 2, h, w)
    out = BasicAugment(padding=p, flip=False)(x, _gen(1))
    offsets = torch.randint(0, 2 * p + 1, (32, 2), generator=_gen(1))
    for b in range(32):
        dy, dx = offsets[b].tolist()
        rows = [0 <= dy + i - p < h for i in range(h)]
        cols = [0 <= dx + j - p < w for j in range(w)]
        mask = torch.tensor([[float(r and c) for c in cols] for r in rows])
        assert torch.equal(out[b], mask.expand(2, h, w))
    assert (out == 0).any() and (out == 1).any()


def test_no_padding_no_flip_is_the_identity_and_the_input_is_untouched():
    x = torch.randn(4, 1, 3, 3)
    before = x.clone()
    out = BasicAugment(padding=0, flip=False)(x, _gen(0))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    BasicAugment(padding=2, flip=True)(x, _gen(0))
    assert torch.equal(x, before)


# ----------------------------------------------------------------------------- signals
def test_shift_of_a_hand_made_signal():
    """Seed 0 draws d = 4, 4, 3 in {0..4}: shifts s = d - 2 = 2, 2, 1, and
    out[i] = x[(i - s) mod L] (torch.roll)."""
    assert torch.randint(0, 5, (3,), generator=_gen(0)).tolist() == [4, 4, 3]
    x = torch.arange(10.0).reshape(1, 1, 10).repeat(3, 1, 1)
    out = BasicAugment(shift=2, jitter=0.0)(x, _gen(0))
    assert out[:, 0].tolist() == [[8, 9, 0, 1, 2, 3, 4, 5, 6, 7]] * 2 + \
        [[9, 0, 1, 2, 3, 4, 5, 6, 7, 8]]


def test_signals_match_roll_plus_noise_and_every_shift_occurs():
    x = torch.randn(200, 2, 40, generator=_gen(5))
    aug = BasicAugment(shift=3, jitter=0.1)
    out = aug(x, _gen(7))
    g = _gen(7)
    shifts = torch.randint(0, 7, (200,), generator=g) - 3
    noise = torch.randn((200, 2, 40), generator=g)
    rolled = torch.stack([torch.roll(x[i], int(s), -1) for i, s in enumerate(shifts)])
    assert torch.equal(out, torch.add(rolled, noise, alpha=0.1))
    assert torch.allclose(out, rolled + 0.1 * noise, rtol=0, atol=1e-6)
    assert sorted(set(shifts.tolist())) == [-3, -2, -1, 0, 1, 2, 3]


def test_jitter_has_the_stated_std():
    """On 80,000 zero values: std within 2 % of 0.3 (its standard error is 0.25 %), mean
    within 0.005 (standard error 0.001)."""
    out = BasicAugment(shift=0, jitter=0.3)(torch.zeros(2000, 1, 40), _gen(3))
    assert abs(out.std().item() / 0.3 - 1) < 0.02
    assert abs(out.mean().item()) < 0.005


def test_other_ranks_and_negative_settings_are_refused():
    aug = BasicAugment()
    for shape in [(8, 40), (2, 1, 3, 4, 4)]:
        with pytest.raises(ValueError, match=r"images \(B, C, H, W\) or 1-D signals"):
            aug(torch.zeros(shape), _gen())
    with pytest.raises(ValueError, match="must be >= 0"):
        BasicAugment(padding=-1)


# -------------------------------------------------------------------- config and streams
def test_make_augment_from_the_config_group():
    assert make_augment(AugmentConfig()) is None
    aug = make_augment(AugmentConfig(name="basic", padding=2, flip=False, shift=1, jitter=0.5))
    assert aug == BasicAugment(padding=2, flip=False, shift=1, jitter=0.5)
    with pytest.raises(ConfigError, match="unknown augment 'foo'"):
        make_augment(type("Cfg", (), {"name": "foo"})())


def test_streams_are_per_seed_and_epoch_and_touch_no_global_rng():
    global_state = torch.get_rng_state()
    draws = {(s, e): torch.randint(0, 2**30, (4,), generator=augment_generator(s, e)).tolist()
             for s in (0, 1) for e in (0, 1)}
    assert torch.equal(torch.get_rng_state(), global_state)
    again = torch.randint(0, 2**30, (4,), generator=augment_generator(1, 0)).tolist()
    assert again == draws[(1, 0)]
    assert len({tuple(v) for v in draws.values()}) == 4
    order = torch.randint(0, 2**30, (4,), generator=epoch_generator(1, 0)).tolist()
    assert order != draws[(1, 0)]  # not the batch order's stream


# --------------------------------------------------------------------------------- jobs
TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=32",
        "model.width=8", "model.depth=2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def compose(compose_no_stages):
    """Probes and landscape off unless a test chooses them."""
    return compose_no_stages


def _weights(job_dir, epoch):
    from landscope.checkpoint import load_checkpoint

    return load_checkpoint(job_dir / "checkpoints" / f"epoch_{epoch:06d}.pt")["model"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer", ["momentum", "sam"])
def test_resume_with_augment_is_bit_identical(compose, tmp_path, optimizer):
    from landscope.jobs import train_job

    full = ["augment=basic", f"optimizer={optimizer}", *TINY, "train.epochs=4",
            "train.keep_checkpoints=4", "train.checkpoint_interval_s=0"]
    _, part = interrupted_pair(compose, full, tmp_path)
    torch.manual_seed(12345)  # the global RNG state differs: the augmentation must not care
    result = train_job(compose(full), part, full)
    assert result["resumed_from_epoch"] == 2 and result["augment"] == "basic"
    assert metrics_without_time(part) == metrics_without_time(tmp_path / "full")
    assert _same_weights(_weights(part, 4), _weights(tmp_path / "full", 4))


def test_augment_none_is_the_job_without_the_option(compose, tmp_path):
    """augment=none, with or without (unread) settings, trains exactly the plain job, under
    one fingerprint, and result.json says nothing about augmentation."""
    from landscope.fingerprints import fingerprint
    from landscope.jobs import train_job

    runs = {"plain": [], "none": ["augment=none"],
            "unread": ["augment=none", "augment.padding=9", "augment.jitter=0.5"]}
    results = {}
    for name, extra in runs.items():
        overrides = [*TINY, "train.epochs=2", *extra]
        results[name] = train_job(compose(overrides), tmp_path / name, overrides)
    assert len({r["fingerprint"] for r in results.values()}) == 1
    assert fingerprint(compose([*TINY, "augment=basic"])) != results["plain"]["fingerprint"]
    for name in ("none", "unread"):
        assert metrics_without_time(tmp_path / name) == metrics_without_time(tmp_path / "plain")
        assert _same_weights(_weights(tmp_path / name, 2), _weights(tmp_path / "plain", 2))
        assert "augment" not in results[name] and "augment_note" not in results[name]


def test_the_release_fixture_is_reproduced_with_augment_none(tmp_path, data_dir):
    """The December 2026 release's SGD job (tests/fixtures/release_2026_12), retrained from
    scratch with today's code and augment=none: the same metrics (less the wall-clock seconds)
    and the same final weights, to float32 rounding (the fixture comes from another host:
    conftest.RELEASE_RTOL)."""
    from conftest import close_to_fixture, weights_close_to_fixture
    from landscope.io import read_jsonl
    from landscope.jobs import train_job
    from test_migration import FIXTURE, JOBS, _compose, _overrides

    name = next(j for j in JOBS if "optimizer=sgd" in j)
    overrides = [*_overrides(FIXTURE / name, data_dir), "augment=none", "probe=none",
                 "landscape=none"]
    result = train_job(_compose(overrides), tmp_path / "job", overrides)
    old = [{k: v for k, v in row.items() if k != "seconds"}
           for row in read_jsonl(FIXTURE / name / "metrics.jsonl")]
    assert close_to_fixture(metrics_without_time(tmp_path / "job"), old) and len(old) == 2
    assert weights_close_to_fixture(_weights(tmp_path / "job", 2), _weights(FIXTURE / name, 2))
    assert "augment" not in result


def test_basic_changes_training_and_evaluation_stays_unaugmented(compose, tmp_path, caplog):
    """mnist1d: augment=basic changes every epoch's metrics, while the recorded train loss and
    accuracy are those of the un-augmented training set; probes and landscape say so."""
    from landscope.data import load_data
    from landscope.jobs import train_job
    from landscope.train import evaluate

    stages = ["probe=basic", "probe.data_size=64", "landscape=basic", "landscape.data_size=64",
              "landscape.line.points=5", "landscape.line.directions=1"]
    runs = {}
    for name in ("none", "basic"):
        overrides = [*TINY, "train.epochs=2", f"augment={name}", *stages]
        with caplog.at_level(logging.INFO, logger="landscope"):
            caplog.clear()
            runs[name] = (train_job(compose(overrides), tmp_path / name, overrides),
                          metrics_without_time(tmp_path / name), caplog.text)
    (plain, plain_rows, plain_log), (aug, aug_rows, aug_log) = runs["none"], runs["basic"]
    for a, b in zip(plain_rows, aug_rows):
        assert a["train_loss"] != b["train_loss"] and a["running_loss"] != b["running_loss"]
    assert aug["augment"] == "basic" and aug["augment_note"] == UNAUGMENTED_NOTE
    assert "probes" in aug and "landscape" in aug
    assert "running probes (basic) on the un-augmented training data (augment=basic" in aug_log
    assert "landscape (basic) on the un-augmented training data" in aug_log
    assert "un-augmented" not in plain_log and "augment" not in plain

    from landscope.jobdir import JobDir

    cfg = compose([*TINY, "augment=basic"])
    model, _ = JobDir(tmp_path / "basic").load_model(_weights(tmp_path / "basic", 2), cfg)
    data = load_data(cfg.dataset)
    loss, acc = evaluate(model, data.train, cfg.train.eval_batch_size)
    assert (loss, acc) == (aug_rows[-1]["train_loss"], aug_rows[-1]["train_acc"])


@pytest.mark.parametrize("optimizer", ["sam", "llp"])
def test_every_gradient_of_a_step_sees_the_one_augmented_batch(compose, optimizer):
    """SAM's second gradient and LLP's probes reuse the step's batch: the augmentation runs
    once per step, and its draws are those of augment_generator(seed, epoch) in order."""
    from landscope.data import load_data
    from landscope.jobtrain import setup
    from landscope.train import fit

    cfg = compose([*TINY, f"optimizer={optimizer}", "optimizer.llp.every=2", "train.epochs=2"])
    data = load_data(cfg.dataset)
    state = setup(cfg, data, 1)
    calls = []

    def counting(x, generator):
        calls.append((x.shape[0], generator.initial_seed()))
        return BasicAugment()(x, generator)

    fit(state, data.train, data.test, epochs=2, batch_size=32, seed=cfg.seed,
        augment=counting)
    seeds = [augment_generator(cfg.seed, e).initial_seed() for e in (0, 1)]
    assert calls == [(32, seeds[0])] * 8 + [(32, seeds[1])] * 8
    assert state.grad_evals > 16  # the extra evaluations happened, on no new batch


def test_cnn_on_images_trains_with_crops_and_flips(compose, tmp_path):
    """dataset=cifar_like (3x32x32, generated) with a small CNN for one epoch: augment=basic
    changes the trained weights and metrics; the metrics are the un-augmented data's."""
    from landscope.jobs import train_job
    from landscope.train import evaluate

    base = ["dataset=cifar_like", "dataset.train_size=64", "dataset.test_size=32",
            "model=cnn", "model.width=4", "model.depth=1", "train.batch_size=16",
            "train.epochs=1"]
    results = {n: train_job(compose([*base, f"augment={n}"]), tmp_path / n,
                            [*base, f"augment={n}"]) for n in ("none", "basic")}
    assert results["basic"]["status"] == "completed" and results["basic"]["augment"] == "basic"
    assert results["basic"]["final"]["train_loss"] != results["none"]["final"]["train_loss"]
    assert not _same_weights(_weights(tmp_path / "none", 1), _weights(tmp_path / "basic", 1))

    from landscope.jobdir import JobDir

    cfg = compose([*base, "augment=basic"])
    model, data = JobDir(tmp_path / "basic").load_model(_weights(tmp_path / "basic", 1), cfg)
    loss, acc = evaluate(model, data.train, cfg.train.eval_batch_size)
    assert (loss, acc) == (results["basic"]["final"]["train_loss"],
                           results["basic"]["final"]["train_acc"])


@pytest.mark.parametrize("args,line", [
    (["augment=basic", "augment.padding=-1"], "error: augment.padding must be >= 0 (got -1)"),
    (["augment=basic", "augment.shift=-2"], "error: augment.shift must be >= 0 (got -2)"),
    (["augment.jitter=-0.1"], "error: augment.jitter must be >= 0 (got -0.1)"),
    (["augment=foo"], "error: In 'config': Could not find 'augment/foo'; Available options in "
                      "'augment': basic, none"),
    (["augment=basic", "dataset=quadratic", "model=quadratic"],
     "error: augment must be none with dataset=quadratic (the synthetic problems define their "
     "own task) (got 'basic')"),
])
def test_bad_values_are_one_line_exit_2_and_nothing_written(tmp_path, data_dir, args, line):
    proc = run_cli([*args, "experiment=smoke"], tmp_path, data_dir=data_dir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [line]
    assert list(tmp_path.iterdir()) == []
