"""Curvature probes of landscope against PyHessian 0.1, hessian-eigenthings 1.0 and curvlinops 3.0.

Issue #3 item 11.  Same model, same data, same loss (mean cross-entropy over one fixed batch,
float32, eval mode) and the same accuracy target for every tool, measured in one process:

* ``top-5``  the 5 largest eigenvalues to relative error <= 1e-3 against a dense float64
  reference (worst case over ``--seeds`` seeds).  Each method's knob (tolerance or Krylov
  size) is tightened from loose to strict; the loosest setting that meets the target on every
  seed is timed.  A method that never meets it, or crashes, is reported as such.
* ``trace``  Hutchinson (Rademacher) to 1% relative standard error.  Ours stops itself
  (``hutchinson(op, target_rse=0.01)``); the peers have no such rule (PyHessian stops on the
  relative change of the running mean, which is not an error estimate), so each peer runs the
  number of samples ours needed: same estimator, same variance, so the comparison is the cost
  per sample.  Every estimate must lie within 4 standard errors of the exact trace.
  PyHessian's default ``trace()`` is shown for information.
* ``HVP``    one Hessian-vector product on prebuilt operators, checked against the dense Hessian.
* ``SLQ``    stochastic Lanczos quadrature at the same (probes, steps); the first two moments
  ``tr H / D`` and ``tr H^2 / D`` of each method's quadrature must lie within 4 standard
  errors (spread over probes) of the exact ones.  PyHessian's ``density()`` calls ``torch.eig``
  (removed from torch); it is run as shipped and again with a shim mapping ``torch.eig`` to
  ``torch.linalg.eigh`` (its tridiagonal matrix is symmetric).

Every timed call starts from the model and data (operator construction, PyHessian's gradient
graph, curvlinops' and our determinism checks included).  Methods are interleaved in rotating
order over ``--repeats`` rounds; each row shows its median, and each ratio is the median of
the per-round ratios (ours and the peer timed in the same round) with a 95% bootstrap interval.
A goal is "met" when the whole interval is within it, "parity" when the interval contains the
bound (the difference is within the machine's noise), "MISSED" when the interval lies beyond it.

HVP counts: ours from the operator's own counters (``n_matvecs + n_check_matvecs``); PyHessian by
wrapping ``pyhessian.hessian.hessian_vector_product``; hessian-eigenthings by wrapping
``HessianOperator.matvec``; curvlinops by wrapping ``HessianLinearOperator._matmat`` and counting
columns (this includes its determinism check and, for SLQ, the ``eigsh`` boundary estimate).
Peers are imported lazily and skipped when missing (``pip install -e .[bench]``).  The exit
code is 1 when one of *our* results is wrong against the reference, else 0 (a missed speed goal
is a measurement, not a failure).

    python scripts/bench_probes.py [--quick] [--repeats 5] [--seeds 3] [--threads 1] [--cnn]
                                   [--tasks top5,hvp,trace,slq]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import math
import statistics
import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from landscope.models import build_model  # noqa: E402
from landscope.probes.density import slq  # noqa: E402
from landscope.probes.hvp import HessianOperator  # noqa: E402
from landscope.probes.lanczos import lanczos_eigs  # noqa: E402
from landscope.probes.probe_data import ProbeData  # noqa: E402
from landscope.probes.trace import deflated_trace, hutchinson  # noqa: E402
from landscope.probes.verify import dense_hessian, spectrum  # noqa: E402

INPUT_SHAPE, CLASSES, K = (1, 40), 10, 5
EIG_RTOL, TRACE_RSE, Z_MAX = 1e-3, 0.01, 4.0
MISSING = "not installed (pip install -e .[bench])"
OURS = "landscope"

# ----------------------------------------------------------------------------- peers
PEER_MODULES = {"pyhessian": "pyhessian.hessian", "eigenthings": "hessian_eigenthings",
                "curvlinops": "curvlinops"}
PEERS: dict[str, Any] = {}  # name -> module, or None when not installed
N_HVP: dict[str, int] = {name: 0 for name in PEER_MODULES}
CL_LANCZOS: list[tuple[Tensor, Tensor]] = []  # curvlinops' Lanczos runs, recorded for moments


def _counting(name: str, fn: Callable[..., Any], cols: bool = False) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        N_HVP[name] += int(args[1][0].shape[-1]) if cols else 1
        return fn(*args, **kwargs)
    return wrapper


def load_peers() -> None:
    """Import each peer (quietly) and wrap its HVP entry point with a counter."""
    for name, module in PEER_MODULES.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                PEERS[name] = importlib.import_module(module)
        except ImportError as err:
            PEERS[name] = None
            print(f"{name}: {MISSING} ({err})")
    if PEERS["pyhessian"] is not None:
        ph = PEERS["pyhessian"]
        ph.hessian_vector_product = _counting("pyhessian", ph.hessian_vector_product)
    if PEERS["eigenthings"] is not None:
        cls = PEERS["eigenthings"].HessianOperator
        cls.matvec = _counting("eigenthings", cls.matvec)
    if PEERS["curvlinops"] is not None:
        cls = PEERS["curvlinops"].HessianLinearOperator
        cls._matmat = _counting("curvlinops", cls._matmat, cols=True)
        spec = importlib.import_module("curvlinops.papyan2020traces.spectrum")
        lanczos = spec.fast_lanczos

        def recorded(*args: Any, **kwargs: Any) -> Any:
            out = lanczos(*args, **kwargs)
            CL_LANCZOS.append(out)
            return out
        spec.fast_lanczos = recorded


def peer(name: str) -> Any:
    mod = PEERS.get(name)
    if mod is None:
        raise ModuleNotFoundError(MISSING)
    return mod


@contextlib.contextmanager
def torch_eig_shim() -> Iterator[None]:
    """``torch.eig(T, eigenvectors=True)`` for PyHessian 0.1 via ``eigh`` (T is symmetric)."""
    old = torch.__dict__.get("eig")

    def eig(a: Tensor, eigenvectors: bool = False) -> tuple[Tensor, Tensor]:
        w, v = torch.linalg.eigh(a)
        return torch.stack([w, torch.zeros_like(w)], 1), v
    torch.eig = eig  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if old is None:
            del torch.eig  # type: ignore[attr-defined]
        else:
            torch.eig = old  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- problem
@dataclass
class Problem:
    name: str
    model: nn.Module
    x: Tensor
    y: Tensor
    data: ProbeData
    dim: int
    ref_top: np.ndarray  # top-K eigenvalues, descending (float64)
    ref_source: str
    ref_trace: Optional[float] = None  # tr H
    ref_m2: Optional[float] = None  # tr H^2 / D
    hvp64: Callable[[Tensor], Tensor] = field(default=lambda v: v)  # float64 reference product

    def loader(self) -> list[tuple[Tensor, Tensor]]:
        return [(self.x, self.y)]

    def ours(self) -> HessianOperator:
        return HessianOperator(self.model, self.data)

    def pyhessian(self) -> Any:
        self.model.zero_grad(set_to_none=True)  # PyHessian accumulates into .grad (GUIDE §5)
        return peer("pyhessian").hessian(self.model, nn.CrossEntropyLoss(), data=(self.x, self.y),
                                         cuda=False)

    def eigenthings(self) -> Any:
        et = peer("eigenthings")
        return et.HessianOperator(self.model, self.loader(), et.supervised_loss(F.cross_entropy))

    def curvlinops(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return peer("curvlinops").HessianLinearOperator(self.model, nn.CrossEntropyLoss(), params,
                                                        self.loader())


def make_problem(name: str, cfg: dict[str, Any], samples: int, dense: bool) -> Problem:
    torch.manual_seed(0)
    model = build_model(cfg, types.SimpleNamespace(input_shape=INPUT_SHAPE, num_classes=CLASSES))
    x, y = torch.randn(samples, *INPUT_SHAPE), torch.randint(0, CLASSES, (samples,))
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model.train()
        model(x)
    model.eval()
    data = ProbeData.from_tensors(x, y, samples)  # one batch: what every peer sees
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if dense:
        hess = dense_hessian(model, data)
        ev = spectrum(hess).numpy()
        return Problem(name, model, x, y, data, dim, ev[::-1][:K].copy(), "dense float64 Hessian",
                       float(ev.sum()), float((ev ** 2).sum()) / dim, lambda v: hess @ v)
    # No dense reference: float64 Lanczos at tol 1e-10, cross-checked by ARPACK on the same
    # products.
    from scipy.sparse.linalg import LinearOperator, eigsh
    op64 = HessianOperator(copy.deepcopy(model).double(), data.to(torch.float64),
                           check_determinism=False)
    top = lanczos_eigs(op64, K, tol=1e-10, max_iter=400).eigenvalues.numpy()
    lin = LinearOperator((dim, dim), dtype=np.float64,
                         matvec=lambda v: op64.matvec(torch.from_numpy(np.ravel(v))).numpy())
    arpack = np.sort(eigsh(lin, k=K, which="LA", tol=1e-12, return_eigenvectors=False))[::-1]
    gap = float(np.max(np.abs(arpack - top) / np.abs(top)))
    if gap > 1e-8:
        raise SystemExit(f"{name}: float64 Lanczos and ARPACK references disagree ({gap:.1e})")
    return Problem(name, model, x, y, data, dim, top,
                   f"float64 Lanczos tol 1e-10 (ARPACK agrees to {gap:.0e})",
                   hvp64=op64.matvec)


# ----------------------------------------------------------------------------- helpers
def interleaved(tasks: dict[str, Callable[[], Any]], repeats: int,
                inner: int = 1) -> dict[str, list[float]]:
    """Wall times of each task over ``repeats`` rounds, order rotated every round; each time is
    the mean of ``inner`` back-to-back calls (for calls too short to time one by one)."""
    times: dict[str, list[float]] = {k: [] for k in tasks}
    keys = list(tasks)
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            tic = time.perf_counter()
            for _ in range(inner):
                tasks[k]()
            times[k].append((time.perf_counter() - tic) / inner)
    return times


def failure(err: BaseException) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return msg if isinstance(err, ModuleNotFoundError) and msg == MISSING else \
        f"crashed: {type(err).__name__}: {msg[:90]}"


def rel_err(vals: Any, ref: np.ndarray) -> float:
    v = np.sort(np.asarray(vals, dtype=np.float64).ravel())[::-1][:len(ref)]
    if len(v) < len(ref) or not np.all(np.isfinite(v)):
        return math.inf
    return float(np.max(np.abs(v - ref) / np.abs(ref)))


def fmt(s: float) -> str:
    return f"{s:.4f}" if s < 10 else f"{s:.2f}"


@dataclass
class Row:
    """One method of one task: its chosen setting, accuracy, products, times and status."""

    method: str
    peer: Optional[str]  # None for ours
    setting: str = ""
    error: float = math.nan  # task-specific accuracy figure
    extra: str = ""
    n_hvp: int = 0
    status: str = "ok"
    timed: Optional[Callable[[], Any]] = None
    times: list[float] = field(default_factory=list)
    info: bool = False  # shown, but not used in the ratios

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan


def time_rows(rows: list[Row], repeats: int, inner: int = 1) -> None:
    tasks = {r.method: r.timed for r in rows if r.timed is not None}
    for name, ts in interleaved(tasks, repeats, inner).items():  # type: ignore[arg-type]
        next(r for r in rows if r.method == name).times = ts


def print_rows(title: str, rows: list[Row], err_head: str, extra_head: str = "") -> None:
    print(f"\n{title}")
    print(f"  {'method':<45} {'setting':<24} {err_head:>11} {extra_head:>10} {'HVPs':>6} "
          f"{'s (median)':>10}  status")
    for r in rows:
        err = "" if math.isnan(r.error) else f"{r.error:.1e}"
        t = fmt(r.median) if r.times else "-"
        flag = r.status + (" (info)" if r.info and r.ok else "")
        hv = str(r.n_hvp) if r.n_hvp else "-"
        print(f"  {r.method:<45} {r.setting:<24} {err:>11} {r.extra:>10} {hv:>6} {t:>10}  {flag}")


# ----------------------------------------------------------------------------- top-5
Runner = Callable[[Problem, int, Any], tuple[Any, int]]


def top_ours(verify: bool) -> Runner:
    def run(p: Problem, seed: int, tol: float) -> tuple[Any, int]:
        op = p.ours()
        r = lanczos_eigs(op, K, tol=tol, seed=seed, verify=verify, return_vectors=False)
        return r.eigenvalues.numpy(), op.n_matvecs + op.n_check_matvecs
    return run


def top_pyhessian(p: Problem, seed: int, tol: float) -> tuple[Any, int]:
    torch.manual_seed(seed)
    start = N_HVP["pyhessian"]
    try:
        vals, _ = p.pyhessian().eigenvalues(maxIter=1000, tol=tol, top_n=K)
    finally:
        p.model.zero_grad(set_to_none=True)
    return vals, N_HVP["pyhessian"] - start


def top_et_lanczos(p: Problem, seed: int, setting: tuple[int, Optional[bool]]) -> tuple[Any, int]:
    start = N_HVP["eigenthings"]
    r = peer("eigenthings").lanczos(p.eigenthings(), k=K, max_iter=setting[0], which="LA",
                                    reorthogonalize=setting[1], seed=seed)
    return r.eigenvalues.numpy(), N_HVP["eigenthings"] - start


def top_et_power(p: Problem, seed: int, tol: float) -> tuple[Any, int]:
    start = N_HVP["eigenthings"]
    r = peer("eigenthings").deflated_power_iteration(p.eigenthings(), k=K, max_iter=500, tol=tol,
                                                     seed=seed)
    return r.eigenvalues.numpy(), N_HVP["eigenthings"] - start


def top_eigsh(p: Problem, seed: int, tol: float) -> tuple[Any, int]:
    from scipy.sparse.linalg import eigsh
    start = N_HVP["curvlinops"]
    a = p.curvlinops().to_scipy()  # float64 numpy, one copy per product
    v0 = np.random.default_rng(seed).standard_normal(a.shape[0])
    vals = eigsh(a, k=K, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return vals, N_HVP["curvlinops"] - start


def tune(p: Problem, row: Row, run: Runner, settings: list[tuple[str, Any]], seeds: int) -> None:
    """Pick the loosest setting whose top-K error is <= EIG_RTOL on every seed."""
    best = (math.inf, "")
    for label, setting in settings:
        worst, n0 = 0.0, 0
        try:
            for seed in range(seeds):
                vals, n = run(p, seed, setting)
                n0 = n if seed == 0 else n0
                worst = max(worst, rel_err(vals, p.ref_top))
                if worst > EIG_RTOL:
                    break
        except Exception as err:  # a peer failing on this torch version is a result
            row.status, row.setting = failure(err), label
            return
        if worst <= EIG_RTOL:
            row.setting, row.error, row.n_hvp = label, worst, n0
            row.timed = lambda setting=setting: run(p, 0, setting)
            return
        best = min(best, (worst, label))
    row.status = f"target not reached (tightest {settings[-1][0]}: {worst:.1e})"
    row.setting, row.error = best[1], best[0]


def bench_top(p: Problem, seeds: int, repeats: int, quick: bool) -> list[Row]:
    tols = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-6]
    et_iters = [10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200]
    plan: list[tuple[Row, Runner, list[tuple[str, Any]]]] = [
        (Row(f"{OURS} lanczos_eigs", None), top_ours(True), [(f"tol={t:.0e}", t) for t in tols]),
        (Row(f"{OURS} lanczos_eigs verify=False", None, info=True), top_ours(False),
         [(f"tol={t:.0e}", t) for t in tols]),
        (Row("pyhessian eigenvalues (power it.)", "pyhessian"), top_pyhessian,
         [(f"tol={t:.0e},maxIter=1000", t) for t in [1e-3, 1e-4, 1e-5, 1e-6]]),
        (Row("eigenthings lanczos (reorth default)", "eigenthings"), top_et_lanczos,
         [(f"max_iter={m}", (m, None)) for m in et_iters]),
        (Row("eigenthings lanczos reorthogonalize=True", "eigenthings"), top_et_lanczos,
         [(f"max_iter={m}", (m, True)) for m in et_iters]),
        (Row("curvlinops + scipy eigsh", "curvlinops"), top_eigsh,
         [(f"tol={t:.0e}", t) for t in [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 0.0]]),
    ]
    if not quick:
        plan.insert(5, (Row("eigenthings deflated_power_iteration", "eigenthings"), top_et_power,
                        [(f"tol={t:.0e},max_iter=500", t) for t in [1e-3, 1e-4, 1e-5]]))
    rows = []
    for row, run, settings in plan:
        tune(p, row, run, settings, seeds)
        rows.append(row)
    time_rows(rows, repeats)
    print_rows(f"top-{K} eigenvalues to rel. error <= {EIG_RTOL:.0e} (worst of {seeds} seeds; "
               f"reference: {p.ref_source})", rows, "max rel err")
    print(f"  reference top-{K}: " + ", ".join(f"{v:.6g}" for v in p.ref_top))
    return rows


# ----------------------------------------------------------------------------- trace
def bench_trace(p: Problem, repeats: int) -> tuple[list[Row], bool]:
    assert p.ref_trace is not None
    exact = p.ref_trace
    rows: list[Row] = []

    def ours() -> tuple[float, float, int, int]:
        op = p.ours()
        r = hutchinson(op, target_rse=TRACE_RSE, seed=0)
        return r.estimate, r.stderr, r.n_samples, op.n_matvecs + op.n_check_matvecs

    def ours_deflated() -> tuple[float, float, int, int]:
        op = p.ours()
        eig = lanczos_eigs(op, K, tol=1e-3, seed=0, verify=False)
        r = deflated_trace(op, eig, target_rse=TRACE_RSE, seed=0)
        return r.estimate, r.stderr, r.n_samples, op.n_matvecs + op.n_check_matvecs

    est0, se0, n_ours, _ = ours()
    n = n_ours

    def pyhessian(iters: int, tol: float) -> Callable[[], tuple[float, float, int, int]]:
        def run() -> tuple[float, float, int, int]:
            torch.manual_seed(0)
            start = N_HVP["pyhessian"]
            try:
                s = np.asarray(p.pyhessian().trace(maxIter=iters, tol=tol), dtype=np.float64)
            finally:
                p.model.zero_grad(set_to_none=True)
            se = float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else math.inf
            return float(s.mean()), se, len(s), N_HVP["pyhessian"] - start
        return run

    def eigenthings() -> tuple[float, float, int, int]:
        start = N_HVP["eigenthings"]
        r = peer("eigenthings").hutchinson(p.eigenthings(), num_samples=n, seed=0)
        return r.estimate, r.stderr, n, N_HVP["eigenthings"] - start

    def curvlinops() -> tuple[float, float, int, int]:
        torch.manual_seed(0)
        start = N_HVP["curvlinops"]
        est = float(peer("curvlinops").hutchinson_trace(p.curvlinops(), num_matvecs=n))
        return est, math.nan, n, N_HVP["curvlinops"] - start  # no stderr returned

    plan: list[tuple[Row, Callable[[], tuple[float, float, int, int]]]] = [
        (Row(f"{OURS} hutchinson", None), ours),
        (Row(f"{OURS} deflated_trace (top-5 + Hutchinson)", None, info=True), ours_deflated),
        (Row("pyhessian trace (same samples, tol=0)", "pyhessian"), pyhessian(n, 0.0)),
        (Row("pyhessian trace (defaults)", "pyhessian", info=True), pyhessian(100, 1e-3)),
        (Row("eigenthings hutchinson (same samples)", "eigenthings"), eigenthings),
        (Row("curvlinops hutchinson_trace (same samples)", "curvlinops"), curvlinops),
    ]
    ours_ok = True
    for row, run in plan:
        try:
            est, se, ns, nh = run()
        except Exception as err:
            row.status = failure(err)
            rows.append(row)
            continue
        yard = se if math.isfinite(se) else se0 * math.sqrt(n_ours / ns)  # ours' stderr at ns
        z = (est - exact) / yard
        row.setting = f"{ns} samples"
        row.error = abs(est - exact) / abs(exact)
        row.extra = f"{se / abs(est):.2%}" if math.isfinite(se) else "n/a"
        row.n_hvp = nh
        row.timed = run
        if abs(z) > Z_MAX:
            row.status = f"estimate off by {z:+.1f} stderr"
            if row.peer is None:
                ours_ok = False
        rows.append(row)
    time_rows([r for r in rows if r.ok], repeats)
    print_rows(f"trace to {TRACE_RSE:.0%} relative standard error (exact tr H = {exact:.6g}; peers "
               f"run the {n_ours} samples ours needed)", rows, "rel err", "RSE")
    return rows, ours_ok


# ----------------------------------------------------------------------------- one HVP
def bench_hvp(p: Problem, repeats: int, inner: int = 20) -> tuple[list[Row], bool]:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(p.dim, generator=g)
    ref = p.hvp64(v.double())
    rows: list[Row] = []
    ours_ok = True

    # Each builder returns (product, flatten): the product is timed in the tool's native vector
    # format (PyHessian: lists of parameter-shaped tensors), flatten is only used for the check.
    Built = tuple[Callable[[], Any], Callable[[Any], Tensor]]

    def flat(t: Any) -> Tensor:
        return torch.as_tensor(t)

    def build_ours() -> Built:
        op = p.ours()
        return (lambda: op.matvec(v)), flat

    def build_pyhessian() -> Built:
        h = p.pyhessian()
        ph = peer("pyhessian")
        vs = [t.view_as(q) for t, q in zip(torch.split(v, [q.numel() for q in h.params]), h.params)]
        return (lambda: ph.hessian_vector_product(h.gradsH, h.params, vs)), \
            (lambda out: torch.cat([t.reshape(-1) for t in out]))

    def build_eigenthings() -> Built:
        op = p.eigenthings()
        return (lambda: op.matvec(v)), flat

    def build_curvlinops() -> Built:
        op = p.curvlinops()
        return (lambda: op @ v), flat

    def build_curvlinops_scipy() -> Built:
        a = p.curvlinops().to_scipy()
        v64 = v.double().numpy()
        return (lambda: a.matvec(v64)), (lambda out: torch.from_numpy(np.ravel(out)))

    plan = [(Row(f"{OURS} HessianOperator.matvec (cached)", None), build_ours),
            (Row("pyhessian hessian_vector_product", "pyhessian"), build_pyhessian),
            (Row("eigenthings HessianOperator.matvec", "eigenthings"), build_eigenthings),
            (Row("curvlinops HessianLinearOperator @ v", "curvlinops"), build_curvlinops),
            (Row("curvlinops .to_scipy().matvec (float64)", "curvlinops", info=True),
             build_curvlinops_scipy)]
    for row, build in plan:
        try:
            fn, to_flat = build()
            out = to_flat(fn()).double()
            fn()  # warm-up
        except Exception as err:
            row.status = failure(err)
            rows.append(row)
            continue
        row.error = float((out - ref).norm() / ref.norm())
        if row.error > 1e-4:
            row.status = "product disagrees with the reference"
            ours_ok = ours_ok and row.peer is not None
        row.timed = fn
        rows.append(row)
    time_rows([r for r in rows if r.ok], repeats, inner)
    for r in rows:
        if r.times:
            q = statistics.quantiles(r.times, n=4)
            r.extra = f"{(q[2] - q[0]) / r.median:.0%}"
    p.model.zero_grad(set_to_none=True)  # drop PyHessian's graph
    print_rows(f"one Hessian-vector product (prebuilt operator; {repeats} interleaved rounds of "
               f"{inner} back-to-back products)", rows, "rel err", "IQR/median")
    return rows, ours_ok


# ----------------------------------------------------------------------------- SLQ
def moments(nodes: Tensor, weights: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-probe ``sum_j w_j theta_j^p`` for p = 1, 2."""
    x = torch.nan_to_num(nodes.double())
    w = weights.double()
    return (w * x).sum(-1).numpy(), (w * x ** 2).sum(-1).numpy()


def bench_slq(p: Problem, probes: int, steps: int, repeats: int) -> tuple[list[Row], bool]:
    assert p.ref_trace is not None and p.ref_m2 is not None
    ref = (p.ref_trace / p.dim, p.ref_m2)
    Result = tuple[np.ndarray, np.ndarray, int]

    def ours() -> Result:
        op = p.ours()
        r = slq(op, probes, steps, seed=0)
        return (*moments(r.nodes, r.weights), op.n_matvecs + op.n_check_matvecs)

    def pyhessian(shim: bool) -> Callable[[], Result]:
        def run() -> Result:
            torch.manual_seed(0)
            start = N_HVP["pyhessian"]
            try:
                with torch_eig_shim() if shim else contextlib.nullcontext():
                    nodes, weights = p.pyhessian().density(iter=steps, n_v=probes)
            finally:
                p.model.zero_grad(set_to_none=True)
            return (*moments(torch.tensor(nodes), torch.tensor(weights)),
                    N_HVP["pyhessian"] - start)
        return run

    def eigenthings() -> Result:
        start = N_HVP["eigenthings"]
        r = peer("eigenthings").spectral_density(p.eigenthings(), num_runs=probes,
                                                 lanczos_steps=steps, seed=0)
        return (*moments(r.raw_eigenvalues, r.raw_weights), N_HVP["eigenthings"] - start)

    def curvlinops() -> Result:
        torch.manual_seed(0)
        start = N_HVP["curvlinops"]
        CL_LANCZOS.clear()
        peer("curvlinops").lanczos_approximate_spectrum(p.curvlinops(), ncv=steps,
                                                        num_repeats=probes)
        nodes = torch.stack([e for e, _ in CL_LANCZOS])
        weights = torch.stack([s[0] ** 2 for _, s in CL_LANCZOS])
        return (*moments(nodes, weights), N_HVP["curvlinops"] - start)

    plan: list[tuple[Row, Callable[[], Result]]] = [
        (Row(f"{OURS} slq", None), ours),
        (Row("pyhessian density (as shipped)", "pyhessian"), pyhessian(False)),
        (Row("pyhessian density + torch.eig shim", "pyhessian"), pyhessian(True)),
        (Row("eigenthings spectral_density", "eigenthings"), eigenthings),
        (Row("curvlinops lanczos_approximate_spectrum", "curvlinops"), curvlinops),
    ]
    rows: list[Row] = []
    ours_ok = True
    for row, run in plan:
        try:
            m1, m2, nh = run()
        except Exception as err:
            row.status = failure(err)
            rows.append(row)
            continue
        zs = []
        for vals, exact in zip((m1, m2), ref):
            se = float(vals.std(ddof=1) / math.sqrt(len(vals)))
            zs.append((float(vals.mean()) - exact) / se)
        row.setting = f"{probes} probes x {steps}"
        row.error = max(abs(float(m1.mean()) - ref[0]) / abs(ref[0]),
                        abs(float(m2.mean()) - ref[1]) / abs(ref[1]))
        row.extra = f"{zs[0]:+.1f}/{zs[1]:+.1f}"
        row.n_hvp = nh
        row.timed = run
        if max(abs(z) for z in zs) > Z_MAX:
            row.status = "moments off the exact ones"
            ours_ok = ours_ok and row.peer is not None
        rows.append(row)
    time_rows([r for r in rows if r.ok], repeats)
    print_rows(f"SLQ density, {probes} probes x {steps} Lanczos steps (moments tr H/D = "
               f"{ref[0]:.5g}, tr H^2/D = {ref[1]:.5g})", rows, "moment err", "z m1/m2")
    return rows, ours_ok


# ----------------------------------------------------------------------------- summary
def paired_ratio(ours: list[float], peer: list[float]) -> tuple[float, float, float]:
    """Median of the per-round ratios ours/peer (both timed in the same interleaved round) and a
    95% bootstrap interval of that median (2000 resamples of the rounds, seeded)."""
    r = np.asarray(ours) / np.asarray(peer)
    boot = np.median(np.random.default_rng(0).choice(r, (2000, len(r))), axis=1)
    return float(np.median(r)), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


Ratio = tuple[float, float, float]
NAN3: Ratio = (math.nan, math.nan, math.nan)


def ratios(rows: list[Row]) -> tuple[Ratio, Ratio, str]:
    """(ours / PyHessian, ours / fastest peer, name of that peer) over the rows that passed,
    each as (median paired ratio, 95% interval low, high)."""
    ours = next((r for r in rows if r.peer is None and not r.info and r.ok), None)
    peers = [r for r in rows if r.peer is not None and not r.info and r.ok and r.times]
    if ours is None or not ours.times:
        return NAN3, NAN3, "-"
    ph = [r for r in peers if r.peer == "pyhessian"]
    vs_ph = paired_ratio(ours.times, min(ph, key=lambda r: r.median).times) if ph else NAN3
    if not peers:
        return vs_ph, NAN3, "-"
    fastest = min(peers, key=lambda r: r.median)
    return vs_ph, paired_ratio(ours.times, fastest.times), fastest.method


def verdict(x: Ratio, bound: float) -> str:
    """met: the whole 95% interval is at or below the bound; parity: the interval contains it
    (not significantly slower, not significantly faster); MISSED: the interval is above it."""
    if math.isnan(x[0]):
        return "n/a"
    if x[2] <= bound:
        return "met"
    return f"parity within noise (not significantly above {bound:.3g})" if x[1] <= bound \
        else "MISSED"


def summary(results: dict[str, list[Row]]) -> None:
    print("\nratios (ours / peer: median over interleaved rounds of the per-round ratio, "
          "with a 95% "
          "bootstrap interval; < 1 means landscope is faster; peers that missed the accuracy "
          "target or crashed are excluded)")
    print(f"  {'task':<7} {'vs PyHessian':>24} {'vs fastest peer':>24}  fastest peer")
    r: dict[str, tuple[Ratio, Ratio, str]] = {}

    def show(x: Ratio) -> str:
        return "n/a" if math.isnan(x[0]) else f"{x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]"
    for task, rows in results.items():
        r[task] = ratios(rows)
        a, b, name = r[task]
        print(f"  {task:<7} {show(a):>24} {show(b):>24}  {name}")
    print("goals")
    if "top-5" in r:
        print(f"  top-5 <= 1/3 of PyHessian's time:        {verdict(r['top-5'][0], 1 / 3)}"
              f" ({show(r['top-5'][0])})")
        print(f"  top-5 no slower than the fastest peer:   {verdict(r['top-5'][1], 1.0)}"
              f" ({show(r['top-5'][1])})")
    if "HVP" in r:
        print(f"  one HVP no slower than the fastest peer: {verdict(r['HVP'][1], 1.0)}"
              f" ({show(r['HVP'][1])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller model, fewer seeds and repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9, quick 3)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds for the top-5 accuracy check "
                    "(default 3, quick 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", default="top5,hvp,trace,slq",
                    help="comma-separated subset of top5,hvp,trace,slq")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--width", type=int, default=None, help="MLP width (default 48, quick 32)")
    ap.add_argument("--cnn", action="store_true",
                    help="also a CNN with BatchNorm (eval), top-5 and HVP against a float64 "
                         "Lanczos reference")
    args = ap.parse_args()
    tasks = set(args.tasks.split(","))
    if not tasks <= {"top5", "hvp", "trace", "slq"}:
        ap.error(f"--tasks: unknown {sorted(tasks - {'top5', 'hvp', 'trace', 'slq'})}")
    repeats = args.repeats or (3 if args.quick else 9)
    seeds = args.seeds or (2 if args.quick else 3)
    width = args.width or (32 if args.quick else 48)
    probes, steps = (5, 20) if args.quick else (10, 30)
    torch.set_num_threads(args.threads)
    limits: Any = contextlib.nullcontext()
    with contextlib.suppress(ImportError):  # scipy/numpy BLAS threads too (eigsh, eigh)
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(args.threads)
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")  # PyHessian's backward
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")  # a curvlinops dependency
    with limits:
        print(f"torch {torch.__version__}, {args.threads} thread(s), float32, eval mode, median "
              f"of {repeats} interleaved repeats")
        load_peers()
        versions = []
        for name, dist in (("pyhessian", "PyHessian"), ("eigenthings", "hessian-eigenthings"),
                           ("curvlinops", "curvlinops-for-pytorch")):
            with contextlib.suppress(Exception):
                from importlib.metadata import version
                versions.append(f"{name} {version(dist)}" if PEERS[name] else f"{name} -")
        print("peers: " + ", ".join(versions))
        tic = time.perf_counter()
        problems = [("mlp", dict(name="mlp", width=width, depth=2), args.samples, True)]
        if args.cnn:  # convolutions are ~40x dearer per sample here: a quarter of the samples
            problems.append(("cnn", dict(name="cnn", width=8, depth=2, norm="batch"),
                             max(1, args.samples // 4), False))
        ok = True
        for key, cfg, samples, dense in problems:
            label = f"{key} w{cfg['width']} d{cfg['depth']}" + (" bn" if "norm" in cfg else "")
            p = make_problem(label, cfg, samples, dense)
            print(f"\n=== {label}: {p.dim} parameters, {samples} samples (one batch), "
                  f"reference {p.ref_source} ({time.perf_counter() - tic:.0f}s) ===")
            results: dict[str, list[Row]] = {}
            if "top5" in tasks:
                results["top-5"] = bench_top(p, seeds, repeats, args.quick)
                ok &= all(r.ok for r in results["top-5"] if r.peer is None)
            if "hvp" in tasks:
                results["HVP"], good = bench_hvp(p, 41)
                ok &= good
            if dense and "trace" in tasks:
                results["trace"], good = bench_trace(p, min(repeats, 3))
                ok &= good
            if dense and "slq" in tasks:
                results["SLQ"], good = bench_slq(p, probes, steps, repeats)
                ok &= good
            summary(results)
        print(f"\ntotal {time.perf_counter() - tic:.0f}s; our results "
              f"{'agree with the reference' if ok else 'DISAGREE with the reference'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
