"""Tests for dataset=cifar_like: synthetic CIFAR-10-shaped tensors, generated in memory."""

from __future__ import annotations

import pytest
import torch

from landscope import data as D
from landscope.config import DatasetConfig, validate


@pytest.fixture(autouse=True)
def _fresh_cache():
    D.clear_cache()
    yield
    D.clear_cache()


def load(tmp_path, **kw) -> D.DataBundle:
    kw.setdefault("normalize", False)
    kw.setdefault("train_size", 300)
    kw.setdefault("test_size", 100)
    return D.load_data(DatasetConfig(name="cifar_like", data_dir=str(tmp_path), **kw))


def test_cifar_shape_classes_and_default_sizes(tmp_path):
    bundle = load(tmp_path, train_size=None, test_size=None)
    assert bundle.meta.input_shape == (3, 32, 32) and bundle.meta.num_classes == 10
    assert (bundle.meta.train_size, bundle.meta.test_size) == D.CIFAR_LIKE_SIZES == (5000, 1000)
    x, y = bundle.train.x, bundle.train.y
    assert x.shape == (5000, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert torch.bincount(y, minlength=10).min() > 400  # uniform labels: ~500 each
    assert not any(tmp_path.iterdir())  # nothing written: no files at all


def test_sizes_are_honoured(tmp_path):
    bundle = load(tmp_path, train_size=1234, test_size=56)
    assert (len(bundle.train), len(bundle.test)) == (1234, 56)
    assert (bundle.meta.train_size, bundle.meta.test_size) == (1234, 56)


def test_deterministic_in_the_seed(tmp_path):
    a = load(tmp_path, seed=3)
    D.clear_cache()
    b = load(tmp_path, seed=3)
    assert a.train.x is not b.train.x  # generated again, not the cached tensors
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)


def test_seed_changes_the_training_samples_not_the_test_set(tmp_path):
    a, b = load(tmp_path, seed=0), load(tmp_path, seed=1)
    assert not torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.y, b.train.y)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)


def test_smaller_sizes_are_prefixes(tmp_path):
    small, large = load(tmp_path, train_size=300, test_size=10), load(tmp_path, train_size=2100,
                                                                       test_size=1001)
    assert torch.equal(small.train.x, large.train.x[:300])
    assert torch.equal(small.train.y, large.train.y[:300])
    assert torch.equal(small.test.x, large.test.x[:10])


def test_labels_are_learnable_by_the_template_rule(tmp_path):
    """The Bayes-like rule (correlation with each class template) is far above chance, and
    the class means recover the templates: the labels carry the signal."""
    bundle = load(tmp_path, train_size=2000, test_size=500)
    templates = D.cifar_like_templates()
    scores = bundle.test.x.flatten(1) @ templates.flatten(1).T
    acc = (scores.argmax(1) == bundle.test.y).float().mean().item()
    assert acc > 0.7  # chance is 0.1
    x, y = bundle.train.x, bundle.train.y
    for c in (0, 7):
        mean = x[y == c].mean(0).flatten()
        cos = torch.nn.functional.cosine_similarity(mean, templates[c].flatten(), dim=0)
        assert cos > 0.5
    # the documented recipe: amplitude CIFAR_LIKE_SIGNAL * U[0.5, 1.5] (mean 1) over unit noise
    resid = x - D.CIFAR_LIKE_SIGNAL * templates[y]
    assert abs(resid.std().item() - 1.0) < 0.01


def test_classes_draw_only_those_templates(tmp_path):
    bundle = load(tmp_path, classes=[3, 7], train_size=400)
    assert bundle.meta.num_classes == 2 and len(bundle.train) == 400
    assert set(bundle.train.y.tolist()) == {0, 1}
    templates = D.cifar_like_templates()
    x, y = bundle.train.x, bundle.train.y
    for label, cls in ((0, 3), (1, 7)):
        sims = torch.nn.functional.cosine_similarity(x[y == label].mean(0).flatten()[None],
                                                     templates.flatten(1))
        assert sims.argmax().item() == cls


def test_label_noise_and_normalization_apply(tmp_path):
    clean, noisy = load(tmp_path), load(tmp_path, label_noise=0.2)
    assert (clean.train.y != noisy.train.y).sum().item() == 60  # round(0.2 * 300)
    assert torch.equal(clean.test.y, noisy.test.y)
    norm = load(tmp_path, normalize=True)
    x = norm.train.x.double()
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), unbiased=False),
                               torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_streamed_split_gives_the_same_batches(tmp_path):
    memory, stream = load(tmp_path, in_memory=True), load(tmp_path, in_memory=False)
    assert isinstance(stream.train, D.StreamSplit)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for (x1, y1), (x2, y2) in zip(memory.train.batches(64, shuffle=True, generator=g1),
                                  stream.train.batches(64, shuffle=True, generator=g2)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_conf_option_composes_with_null_sizes(compose):
    cfg = compose(["dataset=cifar_like"])
    assert cfg.dataset.name == "cifar_like"
    assert cfg.dataset.train_size is None and cfg.dataset.test_size is None
    validate(cfg)
    D.check_available(cfg.dataset)  # no files to look for
