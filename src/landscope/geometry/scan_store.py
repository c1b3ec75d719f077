"""The resumable store of a scan (:mod:`landscope.geometry.scan`): the completed points of a
slice in an atomically written ``.npz`` with a key that hashes everything that determines the
values (the model and its forward, the directions, the coordinates, the data, the BatchNorm mode
and its data). A store whose key differs, or that cannot be read, is never reused: the scan
recomputes every point with a ``RuntimeWarning``.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import Tensor

from landscope.errors import LandscopeError
from landscope.geometry.space import ParamSpace
from landscope.io import atomic_write_bytes
from landscope.losses import ClassificationLoss
from landscope.probes.probe_data import ProbeData

if TYPE_CHECKING:
    from landscope.geometry.scan import Scan

_STORE_VERSION = "landscope-slices-1"


def _hash_tensor(h: Any, t: Tensor) -> None:
    t = t.detach().cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}:{t.numel()}|".encode())
    if t.numel():
        h.update(t.view(torch.uint8).numpy().data)


def _hash_data(h: Any, data: Optional[ProbeData]) -> None:
    if data is None:
        h.update(b"none|")
        return
    h.update(f"probe:{len(data.batches)}|".encode())
    for x, y in data.batches:
        _hash_tensor(h, x)
        _hash_tensor(h, y)


def scan_key(space: ParamSpace, scan: "Scan") -> str:
    """Hash of everything that determines the scan's values (see the module docstring)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{_STORE_VERSION}|{scan.kind}|{space.dtype}|{space.dim}|".encode())
    model = space.model
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{model!r}|".encode())
    if isinstance(getattr(model, "task_loss", None), ClassificationLoss):  # the job's loss
        h.update(f"loss:{model.task_loss!r}|".encode())
    for name, shape in zip(space.names, space.shapes):
        h.update(f"{name}:{shape}|".encode())
    _hash_tensor(h, space.theta0)
    for name in sorted(space.buffers0):
        h.update(f"{name}|".encode())
        _hash_tensor(h, space.buffers0[name])
    # the forward itself (models with equal parameters may compute differently, e.g. skips)
    space.set_point(space.theta0)
    x = scan.sets[0].batches[0][0][:4]
    with torch.inference_mode():
        _hash_tensor(h, space.working_model(x.to(space.device, space.dtype)))
    _hash_tensor(h, scan.dirs)
    for axis in scan.axes:
        _hash_tensor(h, torch.from_numpy(axis))
    h.update(f"sets:{len(scan.sets)}|bn:{scan.bn}|".encode())
    for data in scan.sets:
        _hash_data(h, data)
    if scan.bn == "recompute" and space.has_batchnorm:
        _hash_data(h, scan.bn_data)
    return h.hexdigest()


def load_store(path: Path, key: str, n: int, width: int
                ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored_key = str(z["key"])
            done = np.array(z["done"], dtype=bool)
            values = np.array(z["values"], dtype=np.float64)
    except Exception as err:
        warnings.warn(f"slice store {path} is unreadable ({type(err).__name__}); "
                      "recomputing every point", RuntimeWarning, stacklevel=4)
        return None
    if stored_key != key or done.shape != (n,) or values.shape != (n, width):
        warnings.warn(f"slice store {path} belongs to a different scan (its key does not "
                      "match); recomputing every point", RuntimeWarning, stacklevel=4)
        return None
    return done, values


def save_store(path: Path, key: str, done: np.ndarray, values: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), done=done, values=values)
    atomic_write_bytes(path, buf.getvalue())


def store_path(store: Any) -> Optional[Path]:
    if store is None:
        return None
    if not isinstance(store, (str, os.PathLike)):
        raise LandscopeError(f"store must be a path or None (got {type(store).__name__})")
    return Path(store)
