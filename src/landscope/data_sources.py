"""The sources of :mod:`landscope.data`: where each dataset's raw pixels and labels come from
(files, generators, torchvision), before subsets, label noise and standardization.

* ``mnist1d`` -- generated locally with the ``mnist1d`` package (never
  downloaded) and cached as ``<data_dir>/mnist1d/mnist1d_<hash>.npz``;
* ``digits`` -- scikit-learn's bundled 8x8 digits, fixed stratified 80/20 split,
  pixels scaled from 0..16 to 0..1;
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` -- torchvision's
  on-disk formats under ``data_dir`` (downloaded only with ``download=true``),
  pixels scaled from 0..255 to 0..1;
* ``cifar_like`` -- synthetic CIFAR-10-shaped data generated in memory (no files)
  (:func:`_cifar_like`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from landscope.errors import DataError
from landscope.io import atomic_write_bytes

if TYPE_CHECKING:
    from landscope.data import _Key

_TEST_SUBSET_SEED = 1234  # test subsets never depend on cfg.seed
_DIGITS_SPLIT_SEED = 0
CIFAR_LIKE_SIZES = (5000, 1000)  # cifar_like: generated train/test samples when the size is null
CIFAR_LIKE_SIGNAL = 0.1  # cifar_like: template amplitude over unit pixel noise (RMS)
_CIFAR_LIKE_SEED = 2718  # cifar_like: fixed seed of the class templates
_CIFAR_LIKE_BLOCK = 1000  # cifar_like: samples drawn per seeded block (sizes nest as prefixes)


@dataclass(frozen=True)
class _Spec:
    shape: tuple[int, ...]
    num_classes: int
    folder: str = ""  # torchvision: directory under data_dir holding the files
    files: tuple[str, ...] = ()  # torchvision: files its existence check needs
    tv_class: str = ""


_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_SPECS: dict[str, _Spec] = {
    "mnist1d": _Spec((1, 40), 10),
    "digits": _Spec((1, 8, 8), 10),
    "mnist": _Spec((1, 28, 28), 10, "MNIST/raw", _IDX, "MNIST"),
    "fashion_mnist": _Spec((1, 28, 28), 10, "FashionMNIST/raw", _IDX, "FashionMNIST"),
    "cifar10": _Spec((3, 32, 32), 10, "cifar-10-batches-py",
                     tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
                     "CIFAR10"),
    "cifar100": _Spec((3, 32, 32), 100, "cifar-100-python", ("train", "test", "meta"), "CIFAR100"),
    "cifar_like": _Spec((3, 32, 32), 10),  # generated in memory (no files)
}


class _Raw(NamedTuple):
    data: Tensor  # (N, *shape), uint8 or float32
    targets: Tensor  # (N,) int64
    divisor: Optional[float]  # raw -> float: x / divisor



def _mnist1d(data_dir: str) -> tuple[_Raw, _Raw]:
    """MNIST-1D from the npz cache, generating (and caching) it when absent or unreadable.

    The file is keyed by the installed ``mnist1d`` version, whose default arguments
    we generate with (stored inside as ``args``), so a cache hit never imports the
    package (it pulls in matplotlib and scipy: seconds per process).
    """
    try:
        version = importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256(f"mnist1d=={version};default-args".encode()).hexdigest()[:12]
    path = os.path.join(data_dir, "mnist1d", f"mnist1d_{digest}.npz")
    arrays = _read_npz(path)
    if arrays is None:
        from mnist1d.data import get_dataset_args, make_dataset

        np_state, py_state = np.random.get_state(), random.getstate()
        try:  # make_dataset reseeds numpy's and Python's global RNGs
            d = make_dataset(get_dataset_args())
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        arrays = {"x": d["x"], "y": d["y"], "x_test": d["x_test"], "y_test": d["y_test"]}
        args = json.dumps(get_dataset_args(as_dict=True), sort_keys=True)
        buf = io.BytesIO()
        np.savez(buf, args=np.array(args), **arrays)
        atomic_write_bytes(path, buf.getvalue())

    def raw(x: np.ndarray, y: np.ndarray) -> _Raw:
        return _Raw(torch.from_numpy(np.asarray(x, np.float32)[:, None, :].copy()),
                    torch.from_numpy(np.asarray(y, np.int64)), None)

    return raw(arrays["x"], arrays["y"]), raw(arrays["x_test"], arrays["y_test"])


def _read_npz(path: str) -> Optional[dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    except Exception:  # missing, truncated or corrupted: regenerate
        return None
    length = _SPECS["mnist1d"].shape[-1]
    ok = all(arrays[x].ndim == 2 and arrays[x].shape[1] == length and arrays[y].ndim == 1
             and len(arrays[x]) == len(arrays[y]) and np.isfinite(arrays[x]).all()
             for x, y in (("x", "y"), ("x_test", "y_test")))
    return arrays if ok else None


def _digits() -> tuple[_Raw, _Raw]:
    """scikit-learn digits, fixed stratified 80/20 split (independent of cfg.seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.uint8).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y,
                                          random_state=_DIGITS_SPLIT_SEED)

    def raw(xs: np.ndarray, ys: np.ndarray) -> _Raw:
        return _Raw(torch.from_numpy(np.ascontiguousarray(xs)),
                    torch.from_numpy(ys.astype(np.int64)), 16.0)

    return raw(xtr, ytr), raw(xte, yte)


def cifar_like_templates(num_classes: int = 10) -> Tensor:
    """The fixed class templates of ``cifar_like``: ``(num_classes, 3, 32, 32)`` float32, each a
    bilinear upsampling of 3x4x4 Gaussian noise (a smooth layout) plus a Gaussian colour per
    channel (what a global average pool sees), scaled to unit RMS.  Independent of every config
    value."""
    import torch.nn.functional as F

    rng = np.random.default_rng([_CIFAR_LIKE_SEED, 0])
    coarse = torch.from_numpy(rng.standard_normal((num_classes, 3, 4, 4), dtype=np.float32))
    colour = torch.from_numpy(rng.standard_normal((num_classes, 3, 1, 1), dtype=np.float32))
    t = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False) + colour
    return t / t.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()


def _cifar_like(key: _Key) -> tuple[_Raw, _Raw]:
    """``cifar_like``: sample ``i`` of label ``y`` is ``a_i * CIFAR_LIKE_SIGNAL * T[c_y] + z_i``
    with ``T`` :func:`cifar_like_templates`, ``c_y`` the ``y``-th kept class, ``a_i ~ U[0.5,
    1.5]``, ``z_i ~ N(0, I)`` and ``y`` uniform.  Drawn in blocks of ``_CIFAR_LIKE_BLOCK``
    samples, block ``b`` from the generator ``[seed, 10, b]`` (train) or ``[1234, 11, b]``
    (test, independent of ``seed``), so a smaller size is a prefix of a larger one's."""
    templates = cifar_like_templates()
    kept = torch.as_tensor(key.classes if key.classes is not None else range(len(templates)))
    default_train, default_test = CIFAR_LIKE_SIZES

    def draw(n: int, seed: int, stream: int) -> _Raw:
        xs, ys = [], []
        for block in range(-(-n // _CIFAR_LIKE_BLOCK)):
            rng = np.random.default_rng([seed, stream, block])
            m = _CIFAR_LIKE_BLOCK
            y = torch.from_numpy(rng.integers(0, len(kept), size=m))
            amp = torch.from_numpy(rng.uniform(0.5, 1.5, size=m).astype(np.float32))
            noise = torch.from_numpy(rng.standard_normal((m, 3, 32, 32), dtype=np.float32))
            xs.append(noise + (CIFAR_LIKE_SIGNAL * amp).view(m, 1, 1, 1) * templates[kept[y]])
            ys.append(y)
        return _Raw(torch.cat(xs)[:n].contiguous(), torch.cat(ys)[:n].contiguous(), None)

    return (draw(key.train_size or default_train, key.seed, 10),
            draw(key.test_size or default_test, _TEST_SUBSET_SEED, 11))


def _torchvision(key: _Key, spec: _Spec, train: bool) -> _Raw:
    """Raw uint8 (N, C, H, W) pixels and labels through torchvision's dataset class."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.tv_class)
    try:
        ds = cls(root=key.data_dir, train=train, download=key.download)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        hint = ("the download failed: this machine may be offline; put the files there "
                "instead" if key.download else "replace the files or set dataset.download=true")
        raise DataError(f"dataset '{key.name}' under {key.data_dir}/ could not be loaded "
                        f"({reason[:200]}); {hint}") from exc
    data = torch.as_tensor(np.asarray(ds.data))
    data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # HWC -> CHW
    targets = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    if tuple(data.shape[1:]) != spec.shape or len(data) != len(targets):
        raise DataError(f"dataset '{key.name}' under {key.data_dir}/ has images of shape "
                        f"{tuple(data.shape[1:])}, expected {spec.shape}")
    if len(targets) and (targets.min() < 0 or targets.max() >= spec.num_classes):
        raise DataError(f"dataset '{key.name}' under {key.data_dir}/ has labels outside "
                        f"0..{spec.num_classes - 1}")
    return _Raw(data.contiguous(), targets, 255.0)
