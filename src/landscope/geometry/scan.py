"""The scan engine behind :mod:`~landscope.geometry.slices`: evaluate grid points of a
:class:`~landscope.geometry.space.ParamSpace` serially or in worker processes, with a
resumable store.

A :class:`Scan` lists points ``base + c * dirs[d]`` with ``base = theta0 + rc * dirs[rd]``
(one row ``[rd, rc, d, c]`` of ``terms`` per point) and the data sets to evaluate them on;
:func:`run_scan` returns ``[loss, acc]`` per data set for every point.

Workers. With ``workers > 1`` the points are evaluated by ``joblib`` (loky) worker processes,
each with one torch thread. The scan (the space, directions, coordinates, data) is pickled once
into a temporary file that every worker reads once per scan (the space is rebuilt only when it
differs from the worker's previous one); tasks carry only point indices, in guided chunks
(large first, at most 32 points, small at the end so the workers finish together), all queued
at once. Every point is computed by the same code from the same inputs whatever process runs
it, so the values do not depend on ``workers`` or on how a scan was interrupted and resumed.

Resume. With a store path the completed points are written atomically (temp file +
``os.replace``) every ``save_every`` seconds, when the scan ends and when it is interrupted by
an exception, together with a key that hashes the model, the directions, the coordinates, the
data, the BatchNorm mode and its data. A store whose key differs is never reused.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from landscope.errors import LandscopeError
from landscope.geometry.space import ParamSpace
from landscope.io import atomic_write_bytes
from landscope.probes.probe_data import ProbeData

SAVE_EVERY_S = 5.0  # default seconds between store writes
_STORE_VERSION = "landscope-slices-1"


@dataclass
class Scan:
    """Points ``base + c * dirs[d]`` with ``base = theta0 + rc * dirs[rd]`` (``rd < 0``: none):
    one row ``[rd, rc, d, c]`` of ``terms`` per point."""

    kind: str
    dirs: Tensor
    terms: np.ndarray
    axes: list[np.ndarray]
    sets: list[ProbeData]
    bn: str
    bn_data: Optional[ProbeData]

    @property
    def width(self) -> int:
        return 2 * len(self.sets)


def evaluate_points(space: ParamSpace, scan: Scan, idx: Sequence[int],
                     on_point: Optional[Callable[[int, list[float]], None]] = None
                     ) -> np.ndarray:
    """Values ``[loss, acc] * len(sets)`` of the points ``idx``, in that order."""
    terms = scan.terms.tolist()
    dirs = [scan.dirs[k] for k in range(scan.dirs.shape[0])]
    recompute = scan.bn == "recompute" and space.has_batchnorm
    bn_data = scan.bn_data if scan.bn_data is not None else scan.sets[0]
    theta0 = space.theta0
    row = torch.empty_like(theta0)
    row_key: Optional[tuple[float, float]] = None
    out = np.empty((len(idx), scan.width))
    space.set_point(theta0)  # buffers back to the model's own
    for n, i in enumerate(idx):
        rd, rc, d, c = terms[i]
        if rd < 0 or rc == 0:
            base = theta0
        else:
            if row_key != (rd, rc):
                with torch.no_grad():
                    torch.add(theta0, dirs[int(rd)], alpha=rc, out=row)
                row_key = (rd, rc)
            base = row
        space.set_affine(base, None if d < 0 else dirs[int(d)], c)
        if recompute:
            space.recompute_batchnorm(bn_data)
        vals: list[float] = []
        for data in scan.sets:
            ev = space.evaluate_current(data)
            vals += [ev.loss, ev.acc]
        out[n] = vals
        if on_point is not None:
            on_point(i, vals)
    return out


# worker side: the current scan and the last ParamSpace (rebuilt only for another space)
_WORKER: dict[str, Any] = {}


def _cloudpickle() -> Any:
    """cloudpickle (a joblib dependency; older joblib versions vendor it): pickles models whose
    classes live in ``__main__`` by value."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - joblib < 1.3
        from joblib.externals import cloudpickle  # type: ignore[no-redef]
    return cloudpickle


def _portable(data: Optional[ProbeData]) -> Any:
    """ProbeData as numpy arrays: a numpy view pickles only the samples its batch holds (a
    tensor slice would pickle its whole storage). Dtypes numpy lacks stay tensors (copied)."""
    if data is None:
        return None

    def one(t: Tensor) -> Any:
        t = t.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # e.g. bfloat16
            return t.clone()
    return [(one(x), one(y)) for x, y in data.batches]


def _unportable(batches: Any) -> Optional[ProbeData]:
    if batches is None:
        return None

    def one(a: Any) -> Tensor:
        return torch.from_numpy(a).clone() if isinstance(a, np.ndarray) else a
    return ProbeData([(one(x), one(y)) for x, y in batches])


def _worker_chunk(token: str, payload: str, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the points ``idx`` of the scan stored in the file ``payload`` (read once per
    scan and process; the ParamSpace inside is unpickled only when it differs from the
    previous scan's, by the hash of its pickle)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    if _WORKER.get("token") != token:
        pickler = _cloudpickle()
        p = pickler.loads(Path(payload).read_bytes())
        if _WORKER.get("space_key") != p["space_key"]:
            _WORKER["space"] = pickler.loads(p["space"])
            _WORKER["space_key"] = p["space_key"]
        _WORKER["scan"] = Scan(p["kind"], p["dirs"], p["terms"], p["axes"],
                                [_unportable(s) for s in p["sets"]], p["bn"],
                                _unportable(p["bn_data"]))
        _WORKER["token"] = token
    return idx, evaluate_points(_WORKER["space"], _WORKER["scan"], idx.tolist())


def _chunks(todo: np.ndarray, workers: int, cap: int = 32) -> list[np.ndarray]:
    """Guided scheduling: chunks of ``ceil(remaining / (3 workers))`` points, between 2 and
    ``cap`` (large first for little dispatch overhead, small last so the workers finish
    together; the cap bounds the work lost to an interruption)."""
    out, start = [], 0
    while start < len(todo):
        size = min(cap, max(2, -(-(len(todo) - start) // (3 * workers))))
        out.append(todo[start:start + size])
        start += size
    return out


def _run_parallel(space: ParamSpace, scan: Scan, todo: np.ndarray, workers: int,
                  on_chunk: Callable[[np.ndarray, np.ndarray], None]) -> None:
    """Evaluate ``todo`` in joblib/loky worker processes. The scan (model, directions, data)
    is pickled once into a temporary file that each worker reads once; tasks carry only the
    file name and point indices."""
    from joblib import Parallel, delayed
    pickler = _cloudpickle()
    space_blob = pickler.dumps(space)
    payload = pickler.dumps({
        "space": space_blob, "space_key": hashlib.blake2b(space_blob, digest_size=16).digest(),
        "kind": scan.kind, "dirs": scan.dirs.cpu(), "terms": scan.terms,
        "axes": scan.axes, "sets": [_portable(s) for s in scan.sets], "bn": scan.bn,
        "bn_data": _portable(scan.bn_data)})
    fd, path = tempfile.mkstemp(prefix="landscope-slice-", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        token = uuid.uuid4().hex
        # every chunk queued at once, one per task: workers never wait for this process to
        # hand out the next batch (it may be descheduled on a busy machine)
        with Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered",
                      batch_size=1, pre_dispatch="all") as par:
            for idx, vals in par(delayed(_worker_chunk)(token, path, c)
                                 for c in _chunks(todo, workers)):
                on_chunk(idx, vals)
    finally:
        os.unlink(path)


def run_scan(space: ParamSpace, scan: Scan, workers: int, store: Optional[Path],
         save_every: float) -> tuple[np.ndarray, int]:
    """Values ``(n_points, width)`` of every point (from the store or evaluated) and the
    number of points evaluated now."""
    n = len(scan.terms)
    values = np.full((n, scan.width), np.nan)
    done = np.zeros(n, bool)
    key = ""
    if store is not None:
        key = _scan_key(space, scan)
        loaded = _load_store(store, key, n, scan.width)
        if loaded is not None:
            done, values = loaded
    todo = np.flatnonzero(~done)
    state = {"last": time.monotonic(), "dirty": False}

    def save(force: bool) -> None:
        if store is None or not state["dirty"]:
            return
        if force or time.monotonic() - state["last"] >= save_every:
            _save_store(store, key, done, values)
            state["last"], state["dirty"] = time.monotonic(), False

    def on_point(i: int, vals: list[float]) -> None:
        values[i] = vals
        done[i] = True
        state["dirty"] = True
        save(False)

    def on_chunk(idx: np.ndarray, vals: np.ndarray) -> None:
        values[idx] = vals
        done[idx] = True
        state["dirty"] = True
        save(False)

    parallel = workers > 1 and len(todo) > 1
    if parallel and space.device.type != "cpu":
        warnings.warn(f"slice workers > 1 run on CPU only; evaluating on {space.device} in "
                      "this process", RuntimeWarning, stacklevel=3)
        parallel = False
    try:
        if parallel:
            _run_parallel(space, scan, todo, int(workers), on_chunk)
        elif len(todo):
            evaluate_points(space, scan, todo.tolist(), on_point)
    except BaseException:
        try:
            save(True)
        except Exception as err:  # keep the original error
            warnings.warn(f"could not save the partial slice to {store}: {err}", RuntimeWarning)
        raise
    else:
        save(True)
    finally:
        space.set_point(space.theta0)
    return values, len(todo)


# ----------------------------------------------------------------------------- store
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


def _scan_key(space: ParamSpace, scan: Scan) -> str:
    """Hash of everything that determines the scan's values (see the module docstring)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{_STORE_VERSION}|{scan.kind}|{space.dtype}|{space.dim}|".encode())
    model = space.model
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{model!r}|".encode())
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


def _load_store(path: Path, key: str, n: int, width: int
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


def _save_store(path: Path, key: str, done: np.ndarray, values: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), done=done, values=values)
    atomic_write_bytes(path, buf.getvalue())


def store_path(store: Any) -> Optional[Path]:
    if store is None:
        return None
    if not isinstance(store, (str, os.PathLike)):
        raise LandscopeError(f"store must be a path or None (got {type(store).__name__})")
    return Path(store)


# ----------------------------------------------------------------------------- public
