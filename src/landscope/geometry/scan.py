"""The scan engine behind :mod:`~landscope.geometry.slices`: evaluate grid points of a
:class:`~landscope.geometry.space.ParamSpace` serially or in worker processes, with a
resumable store.

A :class:`Scan` lists points ``base + c * dirs[d]`` with ``base = theta0 + rc * dirs[rd]``
(one row ``[rd, rc, d, c]`` of ``terms`` per point) and the data sets to evaluate them on;
:func:`run_scan` returns ``[loss, acc]`` per data set for every point.

Workers. With ``workers > 1`` the points are evaluated by this process and ``workers - 1``
loky (joblib's process pool) worker processes, each with one torch thread (this process
computes while the workers start and read the scan: an idle parent costs part of the
speedup, docs/measurements.md#geometry-scan). The scan (the space, directions, coordinates, data and
the list of chunks) is pickled once into a temporary directory that every worker reads once per
scan (the space is rebuilt only when it differs from the worker's previous one). The chunks are
guided (large first, at most 32 points, small at the end so the workers finish together), and
the processes schedule themselves: each claims the next free chunk by creating its claim file
exclusively, so no chunk waits for the parent process to hand it out (with a queue per chunk,
a parent descheduled on a busy machine left the workers idle:
docs/measurements.md#geometry-scan). Every point is computed by the same code from the same inputs
whatever process runs it, so the values do not depend on ``workers`` or on how a scan was
interrupted and resumed.

Resume. With a store path the completed points are written atomically (temp file +
``os.replace``) every ``save_every`` seconds, when the scan ends and when it is interrupted by
an exception, together with a key that hashes the model, the directions, the coordinates, the
data, the BatchNorm mode and its data (:mod:`landscope.geometry.scan_store`). A store whose
key differs is never reused.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
import uuid
import warnings
from concurrent.futures import FIRST_EXCEPTION, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from landscope.geometry.scan_pickle import _cloudpickle, _scan_payload, _unportable
from landscope.geometry.scan_store import load_store as _load_store
from landscope.geometry.scan_store import save_store as _save_store
from landscope.geometry.scan_store import scan_key as _scan_key
from landscope.geometry.space import ParamSpace
from landscope.probes.probe_data import ProbeData
from landscope.progress import bar

SAVE_EVERY_S = 5.0  # default seconds between store writes


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
    terms = scan.terms[np.asarray(idx, dtype=np.intp)].tolist()  # this chunk's rows only
    dirs = [scan.dirs[k] for k in range(scan.dirs.shape[0])]
    recompute = scan.bn == "recompute" and space.has_batchnorm
    bn_data = scan.bn_data if scan.bn_data is not None else scan.sets[0]
    theta0 = space.theta0
    row = torch.empty_like(theta0)
    row_key: Optional[tuple[float, float]] = None
    out = np.empty((len(idx), scan.width))
    space.set_point(theta0)  # buffers back to the model's own
    layers = space.input_layers
    layers.start(scan.dirs, [x for data in scan.sets + ([bn_data] if recompute else [])
                             for x, _, _ in space.prepared(data)])
    active = layers.active
    sets = [(space.prepared(data), data.n) for data in scan.sets]
    measure, work = space.measure, space.working_model
    try:
        work.eval()
        with torch.inference_mode():  # one context for the whole loop (measure's contract)
            for n, i in enumerate(idx):
                rd, rc, d, c = terms[n]
                if rd < 0 or rc == 0:
                    base = theta0
                else:
                    if row_key != (rd, rc):
                        torch.add(theta0, dirs[int(rd)], alpha=rc, out=row)
                        row_key = (rd, rc)
                    base = row
                space.set_affine(base, None if d < 0 else dirs[int(d)], c)
                if active:
                    layers.declare(tuple((int(k), float(a)) for k, a in ((rd, rc), (d, c))
                                         if k >= 0))
                if recompute:
                    space.recompute_batchnorm(bn_data)  # ends in eval mode
                vals = out[n]
                for j, (batches, count) in enumerate(sets):
                    vals[2 * j], vals[2 * j + 1] = measure(batches, count)
                if on_point is not None:
                    on_point(i, vals.tolist())
    finally:
        layers.stop()
    return out


# worker side: the current scan and the last ParamSpace (rebuilt only for another space)
_WORKER: dict[str, Any] = {}


def _load_worker_scan(token: str, payload: str) -> None:
    """Make ``_WORKER`` hold the scan stored in the file ``payload`` (read once per scan and
    process; the ParamSpace inside is unpickled only when it differs from the previous
    scan's, by the hash of its pickle)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    if _WORKER.get("token") == token:
        return
    pickler = _cloudpickle()
    p = pickler.loads(Path(payload).read_bytes())
    if _WORKER.get("space_key") != p["space_key"]:
        _WORKER["space"] = pickler.loads(p["space"])
        _WORKER["space_key"] = p["space_key"]
    _WORKER["scan"] = Scan(p["kind"], p["dirs"], p["terms"], p["axes"],
                            [_unportable(s) for s in p["sets"]], p["bn"],
                            _unportable(p["bn_data"]))
    _WORKER["chunks"] = p["chunks"]
    _WORKER["token"] = token


def _claim(workdir: str, k: int) -> bool:
    """Atomically claim chunk ``k`` (exclusive creation of its claim file); ``False`` when it
    is taken or the scan is over (its directory removed)."""
    try:
        os.close(os.open(os.path.join(workdir, f"{k}.claim"),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except (FileExistsError, FileNotFoundError):
        return False
    return True


def _worker_scan(token: str, payload: str, workdir: str, files: bool
                 ) -> list[tuple[int, np.ndarray]]:
    """Claim chunks of the scan in order and evaluate them until none is left or the stop
    file appears. With ``files`` each chunk's values go to ``<k>.npy`` in ``workdir``
    (written atomically, for the parent's periodic saves) and nothing is returned;
    otherwise the ``(k, values)`` pairs are returned at the end."""
    try:
        _load_worker_scan(token, payload)
    except FileNotFoundError:  # the scan ended before this worker started: nothing left
        return []
    space, scan = _WORKER["space"], _WORKER["scan"]
    stop = os.path.join(workdir, "stop")
    kept: list[tuple[int, np.ndarray]] = []
    for k, idx in enumerate(_WORKER["chunks"]):
        if os.path.exists(stop):
            break
        if not _claim(workdir, k):
            continue
        vals = evaluate_points(space, scan, idx.tolist())
        if not files:
            kept.append((k, vals))
            continue
        tmp = os.path.join(workdir, f"{k}.part")
        with open(tmp, "wb") as fh:
            np.save(fh, vals)
        os.replace(tmp, os.path.join(workdir, f"{k}.npy"))
    return kept


def _chunks(todo: np.ndarray, workers: int, cap: int = 32) -> list[np.ndarray]:
    """Guided scheduling: chunks of ``ceil(remaining / (3 workers))`` points, between 2 and
    ``cap`` (large first for little claiming overhead, small last so the workers finish
    together; the cap bounds the work lost to an interruption)."""
    out, start = [], 0
    while start < len(todo):
        size = min(cap, max(2, -(-(len(todo) - start) // (3 * workers))))
        out.append(todo[start:start + size])
        start += size
    return out


_POLL_S = 0.5  # how often this process collects finished chunks while workers run
_STOP_WAIT_S = 30.0  # after an interruption: how long to wait for the workers' current chunks


def _run_parallel(space: ParamSpace, scan: Scan, todo: np.ndarray, workers: int,
                  on_chunk: Callable[[np.ndarray, np.ndarray], None], files: bool = True
                  ) -> None:
    """Evaluate ``todo`` in this process and ``workers - 1`` loky worker processes that
    schedule themselves.

    The scan (model, directions, data, chunk list) is pickled once into a temporary
    directory that each worker reads once. Each worker gets one task: claim the next free
    chunk (an exclusively created file), evaluate it, write its values, repeat. This process
    does the same with one torch thread (:func:`_own_share`) and passes its own and the
    workers' finished chunks to ``on_chunk`` (which saves the store) after each of its chunks;
    once it finds no free chunk it waits for the workers, waking every ``_POLL_S`` seconds.
    No chunk waits for this process to hand it out, so a busy or descheduled parent does not
    stall the workers. On an interruption it writes a stop file, lets
    the workers finish the chunks they hold (up to ``_STOP_WAIT_S``), collects them, and
    re-raises. Without ``files`` (no store to save) the workers return their values at the
    end instead of writing a file per chunk."""
    # joblib's factory, not loky's: both share loky's one reusable pool, and a pool made by
    # loky's own factory breaks a later joblib.Parallel in this process
    from joblib.executor import get_memmapping_executor
    chunks = _chunks(todo, workers)
    payload = _scan_payload(space, scan, chunks)
    workdir = tempfile.mkdtemp(prefix="landscope-slice-")
    path = os.path.join(workdir, "scan.pkl")
    collected: set[int] = set()
    collect = functools.partial(_collect_files, files, workdir, chunks, collected, on_chunk)
    try:
        with open(path, "wb") as fh:
            fh.write(payload)
        token = uuid.uuid4().hex
        # this process is one of the ``workers``: it evaluates chunks while the others start
        executor = get_memmapping_executor(workers)  # the pool's size stays ``workers``
        futures = [executor.submit(_worker_scan, token, path, workdir, files)
                   for _ in range(min(workers, len(chunks)) - 1)]
        try:
            _own_share(space, scan, chunks, workdir, futures, collected, on_chunk, collect)
            _wait_workers(futures, chunks, collected, on_chunk, collect)
            collect()
            # workers still pending hold no chunk: every chunk is in. They find the scan gone
            # and return nothing (a worker still starting up is not waited for).
        except BaseException:
            Path(workdir, "stop").touch()
            wait(futures, timeout=_STOP_WAIT_S)
            collect()
            raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _collect_files(files: bool, workdir: str, chunks: list[np.ndarray], collected: set[int],
                   on_chunk: Callable[[np.ndarray, np.ndarray], None]) -> None:
    """Pass the chunks the workers have written (and not yet collected) to ``on_chunk``."""
    if not files:  # the workers return their values instead of writing files
        return
    for k, idx in enumerate(chunks):
        if k in collected:
            continue
        f = os.path.join(workdir, f"{k}.npy")
        if os.path.exists(f):
            collected.add(k)
            on_chunk(idx, np.load(f))


def _wait_workers(futures: list[Any], chunks: list[np.ndarray], collected: set[int],
                  on_chunk: Callable[[np.ndarray, np.ndarray], None],
                  collect: Callable[[], None]) -> None:
    """Wait for the workers until every chunk is in, collecting every ``_POLL_S`` seconds
    (a worker's error is raised here)."""
    pending = set(futures)
    while pending and len(collected) < len(chunks):
        done, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_EXCEPTION)
        for f in done:
            for k, vals in f.result():  # a worker's error is raised here
                collected.add(k)
                on_chunk(chunks[k], vals)
        collect()


def _own_share(space: ParamSpace, scan: Scan, chunks: list[np.ndarray], workdir: str,
               futures: list[Any], collected: set[int],
               on_chunk: Callable[[np.ndarray, np.ndarray], None],
               collect: Callable[[], None]) -> None:
    """The calling process's part of a parallel scan: claim and evaluate chunks like a worker (one
    torch thread, the same code, so the values are the same), passing each to ``on_chunk`` and
    collecting the workers' finished chunks in between; stops early when a worker failed."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        for k, idx in enumerate(chunks):
            if any(f.done() and f.exception() is not None for f in futures):
                return  # the caller raises the worker's error
            if not _claim(workdir, k):
                continue
            vals = evaluate_points(space, scan, idx.tolist())
            collected.add(k)
            on_chunk(idx, vals)
            collect()
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def run_scan(space: ParamSpace, scan: Scan, workers: int, store: Optional[Path],
             save_every: float, progress: Optional[str] = None) -> tuple[np.ndarray, int]:
    """Values ``(n_points, width)`` of every point (from the store or evaluated) and the
    number of points evaluated now. ``progress``: the label of a tqdm bar of the points (those
    read from the store count as done; None: no bar)."""
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
    shown = bar(progress, n, unit="pt", initial=n - len(todo))

    def save(force: bool) -> None:
        if store is None or not state["dirty"]:
            return
        if force or time.monotonic() - state["last"] >= save_every:
            _save_store(store, key, done, values)
            state["last"], state["dirty"] = time.monotonic(), False

    def on_chunk(idx: Any, vals: Any) -> None:  # one point (an index) or a chunk (an array)
        values[idx] = vals
        done[idx] = True
        state["dirty"] = True
        save(False)
        shown.update(np.size(idx))

    parallel = workers > 1 and len(todo) > 1
    if parallel and space.device.type != "cpu":
        warnings.warn(f"slice workers > 1 run on CPU only; evaluating on {space.device} in "
                      "this process", RuntimeWarning, stacklevel=3)
        parallel = False
    try:
        if parallel:
            _run_parallel(space, scan, todo, int(workers), on_chunk, files=store is not None)
        elif len(todo):
            evaluate_points(space, scan, todo.tolist(), on_chunk)
    except BaseException:
        try:
            save(True)
        except Exception as err:  # keep the original error
            warnings.warn(f"could not save the partial slice to {store}: {err}", RuntimeWarning,
                          stacklevel=2)
        raise
    else:
        save(True)
    finally:
        space.set_point(space.theta0)
        shown.close()
    return values, len(todo)

