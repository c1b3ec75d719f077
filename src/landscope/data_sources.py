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
  (:func:`_cifar_like`);
* ``tiny_imagenet`` -- Tiny-ImageNet (Le & Yang 2015; 200 classes, 64x64 RGB) in its own
  on-disk layout under ``<data_dir>/tiny-imagenet-200`` (:func:`_tiny_imagenet`), never
  downloaded (:data:`TINY_IMAGENET_URL`).

:func:`draw_classes` (``dataset.class_subset``) and :func:`resize` (``dataset.image_size``)
serve every image set; :func:`resolve_classes` and :func:`keep_classes` every dataset but the
synthetic problems.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

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
    "tiny_imagenet": _Spec((3, 64, 64), 200, "tiny-imagenet-200",
                           ("wnids.txt", "val/val_annotations.txt")),
}
#: where Tiny-ImageNet comes from (landscope never downloads it: unzip it under data_dir)
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_CLASS_SUBSET_STREAM = 3  # dataset.class_subset draws with the generator [dataset.seed, 3]


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


def tiny_imagenet_wnids(data_dir: str) -> list[str]:
    """The class ids (WordNet ids) of Tiny-ImageNet, sorted: label ``i`` is ``wnids[i]``, the
    order of torchvision's ``ImageFolder`` over ``train/``. Read from ``wnids.txt``."""
    path = os.path.join(data_dir, _SPECS["tiny_imagenet"].folder, "wnids.txt")
    try:
        with open(path, encoding="utf-8") as fh:
            wnids = sorted({line.strip() for line in fh if line.strip()})
    except OSError as exc:
        raise DataError(f"dataset 'tiny_imagenet': cannot read {path} ({exc.strerror}); "
                        f"get {TINY_IMAGENET_URL} and unzip it under {data_dir}/") from exc
    if len(wnids) < 2:
        raise DataError(f"dataset 'tiny_imagenet': {path} lists {len(wnids)} class(es), "
                        "expected 200 (at least 2)")
    return wnids


def _tiny_imagenet(key: _Key, train: bool) -> _Raw:
    """Tiny-ImageNet's train split (``train/<wnid>/images/*.JPEG`` through torchvision's
    ``ImageFolder``) or its val split, which serves as the test split (``val/images/``,
    labelled by ``val/val_annotations.txt``: file, wnid, bounding box per line). Labels index
    :func:`tiny_imagenet_wnids`; only the images of ``key.classes`` are read (all when
    None). Raw uint8 (N, 3, 64, 64) pixels (greyscale JPEGs converted to RGB)."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import default_loader

    root = os.path.join(key.data_dir, _SPECS["tiny_imagenet"].folder)
    wnids = tiny_imagenet_wnids(key.data_dir)
    keep = [wnids[c] for c in key.classes] if key.classes is not None else wnids
    index = {w: wnids.index(w) for w in keep}
    where = os.path.join(root, "train" if train else "val")
    try:
        if train:
            class _Chosen(ImageFolder):
                def find_classes(self, directory):  # the kept classes, with their labels
                    return sorted(index), index

            samples = _Chosen(where).samples
        else:
            samples = _val_samples(root, index)
    except (OSError, ValueError) as exc:
        raise DataError(f"dataset 'tiny_imagenet': cannot read {where}/ ({_reason(exc)}); "
                        f"get {TINY_IMAGENET_URL} and unzip it under {key.data_dir}/") from exc
    data = torch.empty((len(samples), *_SPECS["tiny_imagenet"].shape), dtype=torch.uint8)
    for i, (path, _) in enumerate(samples):
        try:
            pixels = np.array(default_loader(path))
        except OSError as exc:
            raise DataError(f"dataset 'tiny_imagenet': cannot read the image {path} "
                            f"({_reason(exc)})") from exc
        if pixels.shape != (64, 64, 3):
            raise DataError(f"dataset 'tiny_imagenet': the image {path} is "
                            f"{pixels.shape[1]}x{pixels.shape[0]}, expected 64x64")
        data[i] = torch.from_numpy(pixels).permute(2, 0, 1)
    targets = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return _Raw(data, targets, 255.0)


def _val_samples(root: str, index: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of the val images of the classes in ``index``, sorted by file name."""
    out = []
    with open(os.path.join(root, "val", "val_annotations.txt"), encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"val_annotations.txt line {n} has no class id")
            if fields[1] in index:
                out.append((os.path.join(root, "val", "images", fields[0]), index[fields[1]]))
    return sorted(out)


def _reason(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


def draw_classes(k: int, num_classes: int, seed: int) -> tuple[int, ...]:
    """``dataset.class_subset``: ``k`` of the ``num_classes`` labels drawn without
    replacement with the generator ``[seed, 3]``, sorted (so they are relabelled 0..k-1 in
    their original order)."""
    if not 2 <= k <= num_classes:
        raise DataError(f"dataset.class_subset must be in 2..{num_classes} (got {k})")
    rng = np.random.default_rng([seed, _CLASS_SUBSET_STREAM])
    return tuple(sorted(int(c) for c in rng.choice(num_classes, size=k, replace=False)))


def resize(raw: _Raw, side: Optional[int]) -> _Raw:
    """``dataset.image_size``: every image resized to ``side`` x ``side`` (bilinear, with
    antialiasing when shrinking; torchvision's ``resize``); uint8 stays uint8 (rounded).
    ``None`` or the native side: ``raw`` unchanged."""
    if side is None or tuple(raw.data.shape[-2:]) == (side, side):
        return raw
    from torchvision.transforms.v2.functional import resize as tv_resize

    out = [tv_resize(raw.data[i:i + 4096], [side, side], antialias=True)
           for i in range(0, len(raw.data), 4096)]
    data = torch.cat(out) if out else raw.data.new_empty((0, raw.data.shape[1], side, side))
    return raw._replace(data=data.contiguous())


def num_classes_of(name: str, data_dir: str) -> int:
    """How many classes the dataset ``name`` has before ``classes``/``class_subset``
    (Tiny-ImageNet: the lines of its ``wnids.txt``, 200 in the real one)."""
    if name == "tiny_imagenet":
        return len(tiny_imagenet_wnids(data_dir))
    return _SPECS[name].num_classes


def resolve_classes(cfg: Any, name: str) -> Optional[tuple[int, ...]]:
    """The labels a dataset config keeps, in their new order: ``classes`` as listed (checked),
    ``class_subset`` drawn (:func:`draw_classes`), or None (all)."""
    classes = _classes(getattr(cfg, "classes", None))
    k = getattr(cfg, "class_subset", None)
    if classes is None and k is None:
        return None
    n = num_classes_of(name, str(cfg.data_dir))
    if classes is None:
        return draw_classes(int(k), n, int(cfg.seed))
    _check_classes(classes, n, name)
    return classes


def _classes(value: Any) -> Optional[tuple[int, ...]]:
    return None if value is None else tuple(int(c) for c in value)


def _check_classes(classes: tuple[int, ...], num_classes: int, name: str) -> None:
    if len(classes) < 2 or len(set(classes)) != len(classes) or \
            any(not 0 <= c < num_classes for c in classes):
        raise DataError(f"dataset.classes must list at least 2 distinct labels of '{name}' in "
                        f"0..{num_classes - 1} (got {list(classes)})")


def keep_classes(raw: _Raw, classes: tuple[int, ...]) -> _Raw:
    """``dataset.classes``: the samples of these classes, labelled by their position in
    ``classes`` (``[0, 1]`` gives a binary task, as Dziugaite & Roy's binary MNIST)."""
    lut = torch.full((max(int(raw.targets.max()), *classes) + 1,), -1, dtype=torch.int64)
    lut[list(classes)] = torch.arange(len(classes))
    new = lut[raw.targets]
    idx = torch.nonzero(new >= 0).reshape(-1)
    return _Raw(raw.data[idx], new[idx], raw.divisor)
