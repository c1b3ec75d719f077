"""Plane slices of landscope against the forward-pass floor and loss-landscapes 3.0.6.

Issue #4 item 3. The default MLP (``ModelConfig()``, 39,562 parameters) trained briefly on
mnist1d; the same seeded 1000 training samples (one batch) for every method; float32, eval mode,
``--threads`` torch threads (default 1). An ``N x N`` plane (``--points``, default 21):

* ``ours``   ``plane_slice`` on filter-normalized directions (Li et al. 2018), coordinates
  ``symmetric_grid(1, N)``: train loss *and* accuracy at every point, centre exact.
* ``floor``  ``N^2`` bare ``model(x)`` calls under ``torch.no_grad()`` on the same batch: the cost
  of the forward passes alone. Goal: ours <= 1.2x floor.
* ``loss-landscapes``  ``random_plane(model, Loss(F.cross_entropy, x, y), distance=0.5,
  steps=N, normalization="filter", deepcopy_model=True)``. Its step is
  ``||theta|| / (distance * steps)`` along directions rescaled to total norm ``||theta||``, so
  ``distance=0.5`` spans ``||theta||`` on each side, the same extent as our ``[-1, 1]`` along
  directions of norm ~``||theta||``. It evaluates rows ``i - N/2`` and columns ``j + 1 - N/2``
  (even rows) or ``j - N/2`` (odd rows) in units of its steps (read from
  ``loss_landscapes/main.py``): a staggered grid that never contains the centre, on directions
  it draws itself from U[0, 1) (the second made orthogonal to the first). Train loss only.
* ``ours x2`` ``plane_slice(..., workers=2)`` (this process and one loky worker, one torch
  thread each),
  timed warm (the loky workers persist between calls; the cold start is reported apart).
  Goal: speedup >= 1.8x over ``workers=1``. The machine's parallel capacity right now (2x the
  time of one CPU-bound task alone over two at once, timed inside two workers of the same pool;
  2.0 on two free cores) is measured in 5 rounds after the timings (interleaved with them, its
  busy workers slowed the next timed task), and its median and range are printed beside it:
  on a shared machine it indicates the speedup possible at the time (the load changes between
  the timings and this measurement, so a speedup may exceed it).

Accuracy: an independent float64 reference (a deepcopy of the model in float64 with
``torch.nn.utils.vector_to_parameters`` at each point, plain forward, ``F.cross_entropy``) is
evaluated on our grid (exactly centred) and on the points loss-landscapes actually used (its
recorded step vectors, captured by wrapping ``rand_u_like``/``orthogonal_to``); the table
shows each method's maximum absolute loss error against it. Whether the peer leaves the model
moved (``deepcopy_model=False``) is measured and reported.

Timing: methods are interleaved in rotating order over ``--repeats`` rounds; a ratio is the
median of the per-round ratios with a 95% bootstrap interval (as in ``bench_probes.py``). A goal
is "met" when the whole interval is on the right side of the bound, "parity within noise"
when the interval contains it, "MISSED" otherwise. The machine may be shared: the load average
is printed before and after. Exit code 1 when our values disagree with the reference.

    python scripts/bench_geometry.py [--quick] [--points 21] [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from landscope.config import DatasetConfig, ModelConfig  # noqa: E402
from landscope.data import load_data  # noqa: E402
from landscope.geometry.directions import random_directions  # noqa: E402
from landscope.geometry.slices import plane_slice, symmetric_grid  # noqa: E402
from landscope.geometry.space import ParamSpace  # noqa: E402
from landscope.models import build_model  # noqa: E402
from landscope.probes.probe_data import ProbeData  # noqa: E402

SAMPLES = 1000
MISSING = "not installed (pip install -e .[bench])"


# ----------------------------------------------------------------------------- setup
def train_model(epochs: int, seed: int = 0) -> tuple[nn.Module, Any]:
    """The default MLP after ``epochs`` epochs of SGD (lr 0.1, momentum 0.9, batch 128) on
    mnist1d."""
    bundle = load_data(DatasetConfig(data_dir=str(REPO / "data")))
    torch.manual_seed(seed)
    model = build_model(ModelConfig(), bundle.meta)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for x, y in bundle.train.batches(128, shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval(), bundle


def reference_losses(model: nn.Module, theta0: Tensor, s1: Tensor, s2: Tensor,
                     coords: list[tuple[float, float]], x: Tensor, y: Tensor) -> np.ndarray:
    """Float64 loss at ``theta0 + a s1 + b s2`` for each ``(a, b)``: a deepcopy of the model,
    ``vector_to_parameters``, plain forward, ``F.cross_entropy``."""
    m = copy.deepcopy(model).double().eval()
    t0, v1, v2 = theta0.double(), s1.double(), s2.double()
    x64 = x.double()
    out = np.empty(len(coords))
    with torch.no_grad():
        for n, (a, b) in enumerate(coords):
            vector_to_parameters(t0 + a * v1 + b * v2, m.parameters())
            out[n] = float(F.cross_entropy(m(x64), y))
    return out


# ----------------------------------------------------------------------------- the peer
def load_peer() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import loss_landscapes
            import loss_landscapes.main as ll_main
            from loss_landscapes.metrics import Loss
        return loss_landscapes, ll_main, Loss
    except ImportError as err:
        print(f"loss-landscapes: {MISSING} ({err})")
        return None


class Recorder:
    """Wraps ``rand_u_like``/``orthogonal_to`` in ``loss_landscapes.main`` to keep the two
    direction objects random_plane draws; it scales them in place, so after the call they hold
    its final step vectors."""

    def __init__(self, ll_main: Any) -> None:
        self.main = ll_main
        self.dirs: list[Any] = []
        self.saved = (ll_main.rand_u_like, ll_main.orthogonal_to)

    def __enter__(self) -> "Recorder":
        rand_u_like, orthogonal_to = self.saved

        def rec(fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                out = fn(*args, **kwargs)
                self.dirs.append(out)
                return out
            return wrapper
        self.main.rand_u_like = rec(rand_u_like)
        self.main.orthogonal_to = rec(orthogonal_to)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.main.rand_u_like, self.main.orthogonal_to = self.saved

    def steps(self) -> tuple[Tensor, Tensor]:
        flat = [torch.cat([p.detach().reshape(-1) for p in d.parameters]) for d in self.dirs[:2]]
        return flat[0].clone(), flat[1].clone()


def peer_points(n: int) -> list[tuple[float, float]]:
    """Offsets (in steps along its two step vectors) of random_plane's grid, in its output
    order ``[i][j]``: rows ``i - n/2``; columns ``j + 1 - n/2`` on even rows, ``j - n/2`` on
    odd rows (its snake walk)."""
    return [(i - n / 2, (j + 1 - n / 2) if i % 2 == 0 else (j - n / 2))
            for i in range(n) for j in range(n)]


def _forwards(model: nn.Module, x: Tensor, reps: int) -> float:
    """CPU-bound calibration task (run in a loky worker): ``reps`` bare forwards."""
    torch.set_num_threads(1)
    tic = time.perf_counter()
    with torch.no_grad():
        for _ in range(reps):
            model(x)
    return time.perf_counter() - tic


def _warm(seconds: float) -> None:
    """Occupy a loky worker (with torch imported) for ``seconds``: two at once warm both."""
    torch.set_num_threads(1)
    time.sleep(seconds)


def capacity_round(model: nn.Module, x: Tensor, reps: int) -> float:
    """How many cores two worker processes actually get right now: ``2 * t(one task alone) /
    t(two tasks at once)`` for the same CPU-bound task (2.0 on two free cores; ~1 when other
    processes hold a core). The times are taken inside the workers, so dispatch is not
    counted, and the pool is the one the slices use (no worker restart in between). A
    workers=2 speedup measured at the same moment could not exceed it."""
    from joblib.executor import get_memmapping_executor
    pool = get_memmapping_executor(2)
    before = pool.submit(_forwards, model, x, reps).result()
    two = max(f.result() for f in [pool.submit(_forwards, model, x, reps) for _ in range(2)])
    after = pool.submit(_forwards, model, x, reps).result()
    return (before + after) / two  # one task alone: the mean of a run before and one after


# ----------------------------------------------------------------------------- timing
def interleaved(tasks: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in tasks}
    keys = list(tasks)
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            tic = time.perf_counter()
            tasks[k]()
            times[k].append(time.perf_counter() - tic)
    return times


Ratio = tuple[float, float, float]


def paired_ratio(num: list[float], den: list[float]) -> Ratio:
    """Median of the per-round ratios num/den with a 95% bootstrap interval (2000 resamples)."""
    r = np.asarray(num) / np.asarray(den)
    boot = np.median(np.random.default_rng(0).choice(r, (2000, len(r))), axis=1)
    return float(np.median(r)), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def verdict_at_most(x: Ratio, bound: float) -> str:
    if math.isnan(x[0]):
        return "n/a"
    if x[2] <= bound:
        return "met"
    return "parity within noise" if x[1] <= bound else "MISSED"


def verdict_at_least(x: Ratio, bound: float) -> str:
    if math.isnan(x[0]):
        return "n/a"
    if x[1] >= bound:
        return "met"
    return "parity within noise" if x[2] >= bound else "MISSED"


def show(x: Ratio) -> str:
    return "n/a" if math.isnan(x[0]) else f"{x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]"


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer training epochs and rounds")
    ap.add_argument("--points", type=int, default=21, help="grid points per side (odd)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15, quick 3)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 5, "
                    "quick 2)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.points < 3 or args.points % 2 == 0:
        ap.error("--points must be odd and >= 3 (the centre must be a grid point)")
    repeats = args.repeats or (3 if args.quick else 15)
    epochs = args.epochs or (2 if args.quick else 5)
    n = args.points
    torch.set_num_threads(args.threads)
    tic0 = time.perf_counter()
    load0 = os.getloadavg()

    model, bundle = train_model(epochs)
    train = ProbeData.from_split(bundle.train, SAMPLES, seed=0, micro_batch=2048)
    x, y = train.batches[0]
    space = ParamSpace(model)
    dirs = random_directions(space, 2, seed=0, normalization="filter")
    grid = symmetric_grid(1.0, n)
    peer = load_peer()
    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, eval mode; default MLP "
          f"({space.dim} parameters) after {epochs} epochs on mnist1d; {SAMPLES} train samples "
          f"in one batch; {n}x{n} plane; {repeats} interleaved rounds; load average "
          f"{load0[0]:.2f} ({os.cpu_count()} cores)")

    # ---- accuracy: ours against the float64 reference on our (exactly centred) grid
    ours = plane_slice(space, dirs[0], dirs[1], grid, grid, train)
    coords = [(float(a), float(b)) for a in grid for b in grid]
    ref = reference_losses(model, space.theta0, dirs[0], dirs[1], coords, x, y).reshape(n, n)
    err_ours = float(np.max(np.abs(ours.train_loss - ref)))
    c = n // 2
    centre_exact = ours.train_loss[c, c] == space.evaluate(space.theta0, train)[0].loss
    ok = err_ours <= 1e-4 and centre_exact

    # ---- the peer: values, points used, side effects
    peer_row: dict[str, str] = {}
    peer_fn: Optional[Callable[[], Any]] = None
    if peer is not None:
        ll, ll_main, Loss = peer
        metric = Loss(F.cross_entropy, x, y)
        try:
            with Recorder(ll_main) as rec:
                vals = np.asarray(ll.random_plane(model, metric, distance=0.5, steps=n,
                                                  normalization="filter", deepcopy_model=True))
            s1, s2 = rec.steps()
            offsets = peer_points(n)
            ref_peer = reference_losses(model, space.theta0, s1, s2, offsets, x, y).reshape(n, n)
            err_peer = float(np.max(np.abs(vals - ref_peer)))
            # its coordinates in units of our direction norm (same normalization family)
            unit = float(s1.norm()) / float(dirs[0].norm())
            span = (-n / 2 * unit, (n / 2 - 1) * unit)
            nearest = min(math.hypot(a, b) for a, b in offsets)
            moved_model = copy.deepcopy(model)
            before = parameters_to_vector(moved_model.parameters()).detach().clone()
            ll.random_plane(moved_model, metric, distance=0.5, steps=n, normalization="filter",
                            deepcopy_model=False)
            after = parameters_to_vector(moved_model.parameters()).detach()
            moved = float((after - before).norm() / before.norm())
            frozen = not any(p.requires_grad for p in moved_model.parameters())
            peer_row = {"err": f"{err_peer:.1e}",
                        "note": f"grid {span[0]:+.3f}..{span[1]:+.3f} (+/- half a step per row), "
                                f"nearest point to the centre {nearest:.1f} steps away"}
            version = getattr(ll, "__version__", "3.0.6")
            print(f"loss-landscapes {version}: random_plane(distance=0.5, steps={n}) covers "
                  f"{span[0]:+.3f}..{span[1]:+.3f} in units of our direction norm; centre never "
                  f"evaluated (nearest point {nearest:.2f} steps away); with "
                  f"deepcopy_model=False the model is left moved by {moved:.3f} x ||theta|| "
                  f"and its parameters set to requires_grad={not frozen}")

            def peer_fn() -> Any:
                return ll.random_plane(model, metric, distance=0.5, steps=n,
                                       normalization="filter", deepcopy_model=True)
        except Exception as err:  # a crash is reported, not fatal
            peer_row = {"err": "-", "note": f"crashed: {type(err).__name__}: {err}"[:90]}

    # ---- workers: cold start, equality, then timing
    tic = time.perf_counter()
    two = plane_slice(space, dirs[0], dirs[1], grid, grid, train, workers=2)
    cold = time.perf_counter() - tic
    same = all(np.array_equal(two.arrays()[k], v) for k, v in ours.arrays().items())
    ok = ok and same

    def floor() -> None:
        with torch.no_grad():
            for _ in range(n * n):
                model(x)

    tasks: dict[str, Callable[[], Any]] = {
        "ours": lambda: plane_slice(space, dirs[0], dirs[1], grid, grid, train),
        "floor": floor,
        "ours x2": lambda: plane_slice(space, dirs[0], dirs[1], grid, grid, train, workers=2),
    }
    if peer_fn is not None:
        tasks["loss-landscapes"] = peer_fn
    from joblib.executor import get_memmapping_executor
    pool = get_memmapping_executor(2)  # both workers started (the scans submit one task)
    for f in [pool.submit(_warm, 0.5) for _ in range(2)]:
        f.result()
    for fn in tasks.values():  # warm-up
        fn()
    times = interleaved(tasks, repeats)
    # after the timings: interleaved, its two busy workers slowed the next timed task
    caps = [capacity_round(model, x, n * n // 2) for _ in range(5)]
    capacity = statistics.median(caps)
    load1 = os.getloadavg()

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{n}x{n} plane = {n * n} points, {SAMPLES} samples each; max |loss error| against "
          "the float64 reference at the points each method evaluated")
    print(f"  {'method':<44} {'computes':<22} {'s (median)':>10} {'ms/point':>9} "
          f"{'max err':>9}  notes")
    rows = [
        ("ours: plane_slice, workers=1", "train loss + acc", "ours", f"{err_ours:.1e}",
         f"centre bit-exact: {centre_exact}"),
        (f"floor: {n * n} bare no-grad forwards", "logits only", "floor", "-", ""),
        ("ours: plane_slice, workers=2 (warm pool)", "train loss + acc", "ours x2",
         f"{err_ours:.1e}", f"identical to workers=1: {same}; cold start {cold:.1f}s"),
    ]
    if "loss-landscapes" in tasks:
        rows.append(("loss-landscapes 3.0.6 random_plane", "train loss", "loss-landscapes",
                     peer_row.get("err", "-"), peer_row.get("note", "")))
    elif peer_row:
        rows.append(("loss-landscapes 3.0.6 random_plane", "train loss", "", "-",
                     peer_row.get("note", "")))
    elif peer is None:
        rows.append(("loss-landscapes 3.0.6 random_plane", "-", "", "-", MISSING))
    for label, what, key, err, note in rows:
        t = f"{med[key]:.3f}" if key in med else "-"
        per = f"{med[key] / (n * n) * 1e3:.3f}" if key in med else "-"
        print(f"  {label:<44} {what:<22} {t:>10} {per:>9} {err:>9}  {note}")

    nan3: Ratio = (math.nan, math.nan, math.nan)
    r_floor = paired_ratio(times["ours"], times["floor"])
    r_peer = paired_ratio(times["ours"], times["loss-landscapes"]) \
        if "loss-landscapes" in times else nan3
    speedup = paired_ratio(times["ours"], times["ours x2"])
    print("\nratios (median of per-round ratios, 95% bootstrap interval)")
    print(f"  ours / floor                 {show(r_floor)}")
    print(f"  ours / loss-landscapes       {show(r_peer)}   (< 1: ours faster)")
    print(f"  speedup workers=2 vs 1       {show(speedup)}")
    print("goals")
    print(f"  (a) plane <= 1.2x the forward floor:   {verdict_at_most(r_floor, 1.2)} "
          f"({show(r_floor)})")
    print(f"  (b) vs loss-landscapes: ours {'faster' if r_peer[0] < 1 else 'slower'} "
          f"({show(r_peer)}); max error ours {err_ours:.1e}, loss-landscapes "
          f"{peer_row.get('err', '-')}")
    print(f"  (c) workers=2 speedup >= 1.8x:         {verdict_at_least(speedup, 1.8)} "
          f"({show(speedup)}); parallel capacity of this machine: median {capacity:.2f} "
          f"(range {min(caps):.2f}-{max(caps):.2f} over 5 rounds; 2 x time of one CPU-bound "
          "task alone / two at once, timed inside two workers after the timings)")
    print(f"\nload average before {load0[0]:.2f}, after {load1[0]:.2f} (a busy machine lowers "
          f"the speedup); total {time.perf_counter() - tic0:.0f}s; our results "
          f"{'agree with the reference' if ok else 'DISAGREE with the reference'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
