"""Datasets as tensors plus metadata.

:func:`load_data` turns a :class:`~landscope.config.DatasetConfig` into a
:class:`DataBundle` (train split, test split, :class:`DatasetMeta`).  Sources
(read in :mod:`landscope.data_sources`):

* ``mnist1d`` -- generated locally with the ``mnist1d`` package (never
  downloaded) and cached as ``<data_dir>/mnist1d/mnist1d_<hash>.npz``;
* ``digits`` -- scikit-learn's bundled 8x8 digits, fixed stratified 80/20 split,
  pixels scaled from 0..16 to 0..1;
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` -- torchvision's
  on-disk formats under ``data_dir`` (downloaded only with ``download=true``),
  pixels scaled from 0..255 to 0..1;
* ``cifar_like`` -- synthetic CIFAR-10-shaped data generated in memory (no files): 3x32x32
  float images, 10 classes, ``x = a * s * T[y] + noise`` with smooth class templates ``T``
  (see :func:`_cifar_like`); ``train_size``/``test_size`` are the generated counts
  (null = :data:`CIFAR_LIKE_SIZES`), ``seed`` draws the training samples, the templates and
  the test set are fixed, and ``classes`` draws labels from those classes only (relabelled);
  label noise and standardization then apply as below.  For benchmarks and tests;
* ``tiny_imagenet`` -- Tiny-ImageNet's on-disk layout under ``<data_dir>/tiny-imagenet-200``
  (``train/<wnid>/images/*.JPEG`` through torchvision's ``ImageFolder``; the val split, labelled
  by ``val/val_annotations.txt``, is the test split), pixels scaled from 0..255 to 0..1; never
  downloaded (``dataset.download=true`` only says where to get it);
* ``quadratic``, ``two_basin`` -- synthetic problems with closed-form answers, generated
  in float64 by :mod:`landscope.synthetic` (none of the steps below apply to them).

Then, in order: only the listed ``classes`` (relabelled 0..k-1 in the given order; two of
them give a binary task, as Dziugaite & Roy's binary MNIST) or ``class_subset`` classes drawn
with ``cfg.seed`` (relabelled 0..k-1 in sorted order), seeded train subset (``train_size``,
seed ``cfg.seed``; subsets are nested: a smaller size is a prefix of a larger one's
selection), test subset (``test_size``, fixed seed so the test set does not depend on
``cfg.seed``), images resized to ``image_size`` (image sets), label noise on the training
labels only, and per-channel standardization with training statistics.  With
``ood.enabled`` the bundle also holds the shifted test split ``ood``
(:mod:`landscope.data_shift`), standardized with the same statistics; without it, ``ood``
is None and nothing else changes.  A split is a :class:`TensorSplit` (all in memory) or,
when large, a :class:`StreamSplit` that keeps the raw uint8 pixels and converts
each batch; both give identical values and batch orders.

Results are cached per process (a sweep loads the same data many times), so the
returned tensors are shared: callers must never modify them in place.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from landscope import synthetic
from landscope.data_shift import OODKey, ood_key, shifted_split
from landscope.data_sources import (  # noqa: F401 (CIFAR_LIKE_*, cifar_like_templates re-exported)
    _SPECS,
    _TEST_SUBSET_SEED,
    CIFAR_LIKE_SIGNAL,
    CIFAR_LIKE_SIZES,
    TINY_IMAGENET_URL,
    _cifar_like,
    _digits,
    _mnist1d,
    _Raw,
    _tiny_imagenet,
    _torchvision,
    cifar_like_templates,
    keep_classes,
    num_classes_of,
    resize,
    resolve_classes,
)
from landscope.errors import DataError

Batch = tuple[Tensor, Tensor]

MAX_IN_MEMORY_FLOATS = 64_000_000  # auto mode: larger splits are streamed
_CHUNK = 4096  # samples per chunk when computing statistics


@dataclass(frozen=True)
class DatasetMeta:
    """Shape and sizes of a loaded dataset (sizes after subsetting)."""

    name: str
    input_shape: tuple[int, ...]  # (C, L) for 1-D data, (C, H, W) for images
    num_classes: int
    train_size: int
    test_size: int
    problem: Any = None  # synthetic datasets: what their model needs (landscope.synthetic)


class Split:
    """A labelled split; iterate it with :meth:`batches`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> Iterator[Batch]:
        """Yield ``(x float32 (b, *input_shape), y int64 (b,))``; the last batch may be short.

        With ``shuffle`` the order is ``torch.randperm(n, generator=generator)``.
        """
        raise NotImplementedError

    def _order(self, batch_size: int, shuffle: bool,
               generator: Optional[torch.Generator]) -> Optional[Tensor]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        return torch.randperm(len(self), generator=generator) if shuffle else None


class TensorSplit(Split):
    """In-memory split: ``.x`` float32 and ``.y`` int64; batches are index slices (shared,
    read-only)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> Iterator[Batch]:
        order = self._order(batch_size, shuffle, generator)
        for start in range(0, len(self), batch_size):
            if order is None:
                yield self.x[start:start + batch_size], self.y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                yield self.x[idx], self.y[idx]


class _RawDataset(Dataset):
    """Raw (uint8 or float) samples and labels; ``__getitems__`` fetches whole batches."""

    def __init__(self, data: Tensor, targets: Tensor) -> None:
        self.data, self.targets = data, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.data[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.data[idx], self.targets[idx]


class StreamSplit(Split):
    """Large split: keeps a raw torch Dataset and converts each batch in a DataLoader (no
    workers)."""

    def __init__(self, dataset: _RawDataset, convert: Callable[[Tensor], Tensor]) -> None:
        self.dataset, self.convert = dataset, convert

    def __len__(self) -> int:
        return len(self.dataset)

    def _collate(self, batch: tuple[Tensor, Tensor]) -> Batch:
        raw, y = batch
        return self.convert(raw), y

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> Iterator[Batch]:
        order = self._order(batch_size, shuffle, generator)
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=False,
                            sampler=None if order is None else order.tolist(),
                            num_workers=0, drop_last=False, collate_fn=self._collate)
        yield from loader


@dataclass
class DataBundle:
    """Train and test splits plus metadata, and the shifted test split ``ood`` (None unless
    ``dataset.ood.enabled``); the tensors are shared (do not modify in place)."""

    train: Split
    test: Split
    meta: DatasetMeta
    ood: Optional[Split] = None


def _name(cfg: Any) -> str:
    value = cfg.name
    name = value.value if isinstance(value, Enum) else str(value)
    if name not in _SPECS and not synthetic.is_synthetic(name):
        raise DataError(f"unknown dataset {name!r}; choose one of "
                        f"{', '.join([*_SPECS, *synthetic.SYNTHETIC])}")
    return name


def check_available(cfg: Any) -> None:
    """Raise a one-line :class:`DataError` if the dataset is not on disk and download is off
    (Tiny-ImageNet: whenever it is missing: it is never downloaded), or if ``classes`` or
    ``class_subset`` asks for labels it lacks."""
    name = _name(cfg)
    spec = _SPECS.get(name)
    if spec is None:  # synthetic: generated
        return
    root = str(cfg.data_dir).rstrip("/")
    missing = [f for f in spec.files if not os.path.isfile(os.path.join(root, spec.folder, f))]
    if name == "tiny_imagenet" and missing:
        asked = " (dataset.download=true)" if cfg.download else ""
        raise DataError(f"dataset 'tiny_imagenet' not found: {root}/{spec.folder}/{missing[0]} "
                        f"is missing; landscope never downloads it{asked}: get "
                        f"{TINY_IMAGENET_URL} and unzip it under {root}/")
    if missing and not cfg.download:
        raise DataError(
            f"dataset '{name}' not found under {root}/ (expected torchvision's "
            f"{spec.folder} files; {spec.folder}/{missing[0]} is missing); "
            "put the files there or set dataset.download=true")
    if not missing:
        resolve_classes(cfg, name)


class _Key(NamedTuple):
    name: str
    data_dir: str
    download: bool
    train_size: Optional[int]
    test_size: Optional[int]
    label_noise: float
    normalize: bool
    in_memory: Optional[bool]
    seed: int
    classes: Optional[tuple[int, ...]] = None
    image_size: Optional[int] = None
    ood: Optional[OODKey] = None  # None: no shifted split


def _opt(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


def load_data(cfg: Any) -> DataBundle:
    """Load the dataset ``cfg`` describes (cached per process; never modify the tensors in
    place)."""
    if synthetic.is_synthetic(_name(cfg)):
        return synthetic.load_synthetic(cfg)
    check_available(cfg)
    name = _name(cfg)
    key = _Key(name, os.path.abspath(str(cfg.data_dir)), bool(cfg.download),
               _opt(cfg.train_size, int), _opt(cfg.test_size, int), float(cfg.label_noise),
               bool(cfg.normalize), _opt(cfg.in_memory, bool), int(cfg.seed),
               resolve_classes(cfg, name), _opt(getattr(cfg, "image_size", None), int),
               ood_key(getattr(cfg, "ood", None), name))
    return _load_cached(key)


def clear_cache() -> None:
    """Forget the datasets cached by :func:`load_data`."""
    _load_cached.cache_clear()
    synthetic.clear_cache()


@functools.lru_cache(maxsize=4)
def _load_cached(key: _Key) -> DataBundle:
    spec = _SPECS[key.name]
    num_classes = len(key.classes) if key.classes is not None else \
        num_classes_of(key.name, key.data_dir)
    train, test = _sources(key, spec)
    train, test = resize(train, key.image_size), resize(test, key.image_size)
    if key.label_noise > 0:
        rng = np.random.default_rng([key.seed, 2])
        train = train._replace(targets=_noisy(train.targets, key.label_noise, num_classes, rng))

    convert = _converter(train.divisor, None, None)
    if key.normalize:
        mean, std = _channel_stats(train.data, convert)
        convert = _converter(train.divisor, mean, std)

    meta = DatasetMeta(key.name, tuple(train.data.shape[1:]), num_classes,
                       len(train.targets), len(test.targets))
    ood = None if key.ood is None else \
        _make_split(shifted_split(key, test, train.divisor), convert, key.in_memory)
    return DataBundle(_make_split(train, convert, key.in_memory),
                      _make_split(test, convert, key.in_memory), meta, ood)


def _sources(key: _Key, spec: Any) -> tuple[_Raw, _Raw]:
    """The raw train and test splits after ``classes`` and the train/test subsets."""
    if key.name == "cifar_like":  # generated at the asked sizes, from the asked classes
        return _cifar_like(key)
    if key.name == "mnist1d":
        train, test = _mnist1d(key.data_dir)
    elif key.name == "digits":
        train, test = _digits()
    elif key.name == "tiny_imagenet":  # reads only the kept classes' images
        train, test = (_tiny_imagenet(key, is_train) for is_train in (True, False))
    else:
        train, test = (_torchvision(key, spec, is_train) for is_train in (True, False))
    if key.classes is not None:  # only these classes, relabelled 0..k-1 in the given order
        train, test = (keep_classes(r, key.classes) for r in (train, test))
    train = _subset(train, key.train_size, np.random.default_rng([key.seed, 0]), "train",
                    key.name)
    test = _subset(test, key.test_size, np.random.default_rng([_TEST_SUBSET_SEED, 1]),
                   "test", key.name)
    return train, test


def _converter(divisor: Optional[float], mean: Optional[Tensor],
               std: Optional[Tensor]) -> Callable[[Tensor], Tensor]:
    """Elementwise raw -> float32 map, so whole-split and per-batch results are bit-identical."""

    def convert(raw: Tensor) -> Tensor:
        x = raw.to(torch.float32)
        if divisor is not None:
            x = x / divisor
        if mean is not None and std is not None:
            x = (x - mean) / std
        return x.contiguous()

    return convert


def _channel_stats(data: Tensor, convert: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and population std (two passes, float64, in chunks)."""
    c = data.shape[1]
    count = data.numel() // c
    dims = [0] + list(range(2, data.dim()))
    view = (c,) + (1,) * (data.dim() - 2)
    total = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(data), _CHUNK):
        total += convert(data[start:start + _CHUNK]).double().sum(dim=dims)
    mean = total / count
    sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(data), _CHUNK):
        chunk = convert(data[start:start + _CHUNK]).double() - mean.view(view)
        sq += chunk.square().sum(dim=dims)
    std = (sq / count).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant channel: only centre it
    return mean.float().view(view), std.float().view(view)


def _make_split(raw: _Raw, convert: Callable[[Tensor], Tensor], in_memory: Optional[bool]) -> Split:
    if in_memory is None:
        in_memory = raw.data.numel() <= MAX_IN_MEMORY_FLOATS
    if in_memory:
        return TensorSplit(convert(raw.data), raw.targets)
    return StreamSplit(_RawDataset(raw.data, raw.targets), convert)


def _subset(raw: _Raw, size: Optional[int], rng: np.random.Generator, which: str,
            name: str) -> _Raw:
    n = len(raw.targets)
    if size is None or size == n:
        return raw
    if size > n:
        raise DataError(f"dataset.{which}_size={size} exceeds the {n} {which} examples of '{name}'")
    idx = torch.from_numpy(np.sort(rng.permutation(n)[:size]))
    return _Raw(raw.data[idx], raw.targets[idx], raw.divisor)


def _noisy(y: Tensor, p: float, num_classes: int, rng: np.random.Generator) -> Tensor:
    """Replace exactly round(p*n) labels by a different class chosen uniformly."""
    k = int(round(p * len(y)))
    idx = torch.from_numpy(rng.permutation(len(y))[:k])
    shift = torch.from_numpy(rng.integers(1, num_classes, size=k))
    out = y.clone()
    out[idx] = (y[idx] + shift) % num_classes
    return out
