"""The shifted ("out-of-distribution") test split of a dataset, ``dataset.ood``: the same task
under a distribution shift of a chosen severity, evaluated beside the test split
(``ood_test_loss``, ``ood_test_acc``). It is built from raw data, before standardization, and
:mod:`landscope.data` standardizes it with the training statistics like the test split.

**MNIST-1D** (:func:`mnist1d_shifted`): a second split from the ``mnist1d`` generator
(Greydanus 2020) with stronger transformation arguments. With ``m = 1 + severity / 4``
(1.25, 1.5, 1.75, 2, 2.25 for severities 1..5) and the package defaults ``d`` otherwise::

    scale_coeff      = 0.4  * m   (d: 0.4;  amplitude factor 1 + scale_coeff * (u - 1/2))
    shear_scale      = 0.75 * m   (d: 0.75; linear trend of slope shear_scale * (u - 1/2))
    corr_noise_scale = 0.25 * m   (d: 0.25; correlated background noise)
    iid_noise_scale  = 0.02 * m   (d: 0.02; white noise)
    seed             = 20_201     (d: 42, the train/test split's)

The seed is the same at every severity, so the generator draws the same random numbers and
severity only scales them (the splits are coupled: a stronger severity moves every sample
further). The generator standardizes its own output by that output's mean and std; the shifted
split is instead scaled by the constants the default (train/test) generation used, so a larger
scale or noise shows in the inputs. ``ceil(size / k) * 10`` samples are generated (``k`` the
classes kept), the kept classes relabelled like the test split's, the first ``size`` kept.

**Image sets** (:func:`corrupt`): the test images under the deterministic corruptions of
Hendrycks & Dietterich 2019 ("Benchmarking neural network robustness to common corruptions
and perturbations", CIFAR-10-C's constants), on pixels in [0, 1]:

* ``noise``: ``x + c * z``, ``z ~ N(0, 1)`` per pixel, ``c`` = 0.04, 0.06, 0.08, 0.09, 0.10;
* ``blur``: Gaussian blur of std ``c * side / 32`` pixels, ``c`` = 0.4, 0.6, 0.7, 0.8, 1.0
  (separable, kernel radius ``int(4 sigma + 1/2)``, normalized to sum 1, edges replicated as
  scikit-image's ``mode='nearest'``);
* ``contrast``: ``(x - mu) * c + mu``, ``mu`` the image's per-channel mean, ``c`` = 0.75, 0.5,
  0.4, 0.3, 0.15;

then clipped to [0, 1] and rounded back to the raw format (8-bit levels, as CIFAR-10-C is
distributed, which truncates instead; 17 levels for ``digits``). ``cifar_like`` has no pixel
range: its corruptions apply to its raw values, unclipped; as its pixels are mostly unit
Gaussian noise, blur removes some of that noise and the added noise is small beside it: only
``contrast`` shifts it. On 8x8 ``digits`` the blur (std <= 0.25 pixel) is lost in the
quantization.

Sample ``i`` of the split is test image ``perm[i mod n]`` (``perm`` a fixed permutation of the
``n`` test images) under corruption ``corruptions[i mod k]``: each of the ``k`` listed
corruptions takes an equal share (within one sample), and a size above ``n`` revisits images
under other corruptions and noise. Everything is seeded by fixed constants: the same config
gives the same split every time, and ``dataset.seed`` reaches it only through the classes
``class_subset`` draws.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import math
import os
import random
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from landscope.data_sources import _Raw, keep_classes
from landscope.errors import DataError
from landscope.io import atomic_write_bytes

if TYPE_CHECKING:
    from landscope.data import _Key

NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)  # noise: std per severity (pixels in [0, 1])
BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)  # blur: std in pixels of a 32-pixel side, per severity
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # contrast: factor on the deviation from the mean
MNIST1D_OOD_SEED = 20_201  # the shifted MNIST-1D generation's seed (the default split's: 42)
_OOD_SEED = 4_321  # image sets: the permutation [seed, 0] and the pixel noise [seed, 1]
_CHUNK = 1024  # images corrupted at once


class OODKey(NamedTuple):
    """What the shifted split depends on (part of :mod:`landscope.data`'s cache key)."""

    severity: int
    corruptions: tuple[str, ...]  # () for MNIST-1D, whose shift is the generator's
    size: Optional[int]


def ood_key(ood: Any, name: str) -> Optional[OODKey]:
    """The :class:`OODKey` of a ``dataset.ood`` config; None when it is absent or off."""
    if ood is None or not ood.enabled:
        return None
    corruptions = () if name == "mnist1d" else tuple(
        c.value if isinstance(c, Enum) else str(c) for c in ood.corruptions)
    return OODKey(int(ood.severity), corruptions,
                  None if ood.size is None else int(ood.size))


def shifted_split(key: _Key, test: _Raw, divisor: Optional[float]) -> _Raw:
    """The raw shifted split of a dataset whose raw test split is ``test`` (after classes,
    subset and resize), in the raw format of the training split (``divisor``)."""
    ood = key.ood
    size = ood.size if ood.size is not None else len(test.targets)
    if key.name == "mnist1d":
        return mnist1d_shifted(key.data_dir, ood.severity, size, key.classes)
    return corrupt_split(test, divisor, ood.severity, ood.corruptions, size)


# ----------------------------------------------------------------------------- image sets


def corrupt(x: Tensor, corruption: str, severity: int,
            noise: Optional[Tensor] = None) -> Tensor:
    """One corruption at ``severity`` (1..5) of float images ``x`` (N, C, H, W), unclipped;
    ``noise`` (the shape of ``x``, standard normal) is needed for ``noise`` only."""
    c_index = severity - 1
    if corruption == "noise":
        return x + NOISE_STD[c_index] * noise
    if corruption == "blur":
        return gaussian_blur(x, BLUR_SIGMA[c_index] * x.shape[-1] / 32)
    if corruption == "contrast":
        mu = x.mean(dim=(2, 3), keepdim=True)
        return (x - mu) * CONTRAST[c_index] + mu
    raise ValueError(f"unknown corruption {corruption!r}")


def gaussian_kernel(sigma: float) -> Tensor:
    """The normalized 1-D Gaussian of std ``sigma`` on ``-r..r``, ``r = int(4 sigma + 1/2)``
    (scipy's and scikit-image's truncation), float64."""
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``x`` (N, C, H, W) with replicated edges, in ``x``'s dtype."""
    k = gaussian_kernel(sigma).to(x.dtype)
    r = (len(k) - 1) // 2
    if r == 0:
        return x.clone()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def ood_layout(n_test: int, size: int, k: int) -> tuple[Tensor, Tensor]:
    """``(source, corruption)``: sample ``i`` is test image ``source[i]`` under corruption
    number ``corruption[i] = i mod k``; ``source[i] = perm[i mod n_test]``."""
    perm = torch.from_numpy(np.random.default_rng([_OOD_SEED, 0]).permutation(n_test))
    i = torch.arange(size)
    return perm[i % n_test], i % k


def corrupt_split(test: _Raw, divisor: Optional[float], severity: int,
                  corruptions: tuple[str, ...], size: int) -> _Raw:
    """The corrupted images (see the module docstring), in ``test``'s raw format."""
    n = len(test.targets)
    if n == 0:
        raise DataError("dataset.ood: the test split is empty, so no shifted split can be made")
    source, which = ood_layout(n, size, len(corruptions))
    rng = np.random.default_rng([_OOD_SEED, 1])
    quantize = test.data.dtype == torch.uint8
    out = torch.empty((size, *test.data.shape[1:]), dtype=test.data.dtype)
    for start in range(0, size, _CHUNK):
        idx = slice(start, start + _CHUNK)
        x = test.data[source[idx]].to(torch.float32)
        x = x / divisor if divisor is not None else x
        noise = torch.from_numpy(rng.standard_normal(tuple(x.shape), dtype=np.float32))
        y = x.clone()
        for j, name in enumerate(corruptions):
            rows = which[idx] == j
            if rows.any():
                y[rows] = corrupt(x[rows], name, severity, noise[rows])
        if divisor is not None:
            y = y.clamp(0, 1) * divisor
        out[idx] = y.round().to(torch.uint8) if quantize else y
    return _Raw(out, test.targets[source].clone(), test.divisor)


# ----------------------------------------------------------------------------- MNIST-1D


def mnist1d_shift_args(severity: int) -> dict:
    """The ``mnist1d`` generator arguments that differ from its defaults at ``severity``."""
    m = 1 + severity / 4
    return {"scale_coeff": 0.4 * m, "shear_scale": 0.75 * m, "corr_noise_scale": 0.25 * m,
            "iid_noise_scale": 0.02 * m, "seed": MNIST1D_OOD_SEED}


def mnist1d_unnormalized(args: Any) -> tuple[np.ndarray, np.ndarray]:
    """``mnist1d.data.make_dataset(args)``'s samples and labels before its standardization
    (the same loop, draws and shuffle; ``xs`` float64 (num_samples, 40)). Restores numpy's
    and Python's global RNG states."""
    from mnist1d.data import get_templates, transform

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        random.seed(args.seed)
        np.random.seed(args.seed)
        templates = get_templates()
        xs, ys = [], []
        for label_ix in range(len(templates["y"])):
            for _ in range(args.num_samples // len(templates["y"])):
                x, _t = transform(templates["x"][label_ix], templates["t"], args)
                xs.append(x)
                ys.append(templates["y"][label_ix])
        shuffle = np.random.permutation(len(ys))
        return np.stack(xs)[shuffle], np.stack(ys)[shuffle]
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def mnist1d_shifted(data_dir: str, severity: int, size: int,
                    classes: Optional[tuple[int, ...]]) -> _Raw:
    """The shifted MNIST-1D split (module docstring), cached as
    ``<data_dir>/mnist1d/shifted_<hash>.npz``; float32 (size, 1, 40) on the scale of the
    default split's cache."""
    k = 10 if classes is None else len(classes)
    num_samples = 10 * math.ceil(size / k)
    x, y = _mnist1d_shifted_arrays(data_dir, severity, num_samples)
    raw = _Raw(torch.from_numpy(x[:, None, :].copy()), torch.from_numpy(y), None)
    if classes is not None:
        raw = keep_classes(raw, classes)
    return _Raw(raw.data[:size].contiguous(), raw.targets[:size].contiguous(), None)


@functools.lru_cache(maxsize=1)
def _default_scale() -> tuple[float, float]:
    """The mean and std by which the default generation standardized the cached split."""
    from mnist1d.data import get_dataset_args

    xs, _ = mnist1d_unnormalized(get_dataset_args())
    return float(xs.mean()), float(xs.std())


def _mnist1d_shifted_arrays(data_dir: str, severity: int,
                            num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        version = importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    spec = json.dumps({"mnist1d": version, "severity": severity, "num_samples": num_samples,
                       **mnist1d_shift_args(severity)}, sort_keys=True)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
    path = os.path.join(data_dir, "mnist1d", f"shifted_{digest}.npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
        if x.shape == (num_samples, 40) and y.shape == (num_samples,) and np.isfinite(x).all():
            return x, y
    except Exception:  # missing, truncated or corrupted: regenerate
        pass
    from mnist1d.data import get_dataset_args

    mean, std = _default_scale()
    args = get_dataset_args()
    for name, value in {**mnist1d_shift_args(severity), "num_samples": num_samples}.items():
        setattr(args, name, value)
    xs, ys = mnist1d_unnormalized(args)
    x = ((xs - mean) / std).astype(np.float32)
    y = ys.astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, spec=np.array(spec), x=x, y=y)
    atomic_write_bytes(path, buf.getvalue())
    return x, y
