"""Top-5 eigenvalues, trace and spectral density of ResNet-18 on one GPU, landscope against
PyHessian 0.1: absolute seconds and peak memory (issue #18's GPU goal).

The model (``--model``, default ``resnet18``) is built from the Hydra config with
``dataset=cifar_like`` (synthetic, seeded, CIFAR-10's shape) and probed at its seeded
initialization (untrained), eval mode, float32, on ``--device``; the probe data are
``probe=standard``'s seeded subset of ``--samples`` training samples (default 5,000) in its
micro-batches.  Each estimator is one call from the model and the data (the operator's
construction, and PyHessian's gradient graph, included), timed between
``torch.cuda.synchronize()`` calls; its peak memory is ``torch.cuda.max_memory_allocated()``
after ``reset_peak_memory_stats()`` (absolute: the model and the data are in it; n/a on a CPU):

* ``top-5``  ``lanczos_eigs(op, k=5, tol=1e-3)`` against PyHessian's
             ``eigenvalues(top_n=5, tol=1e-3)`` (deflated power iteration),
* ``SLQ``    ``slq(op, n_probes=10, m_steps=30)`` (not deflated: PyHessian's estimator) against
             PyHessian's ``density(iter=30, n_v=10)`` (its ``torch.eig``, gone from torch, shimmed
             by ``torch.linalg.eigh`` as in ``scripts/bench_probes.py``),
* ``trace``  ``hutchinson(op, target_rse=0.01, min_samples=30)``, its stop relative to the SLQ's
             sum |lambda| as the probe suite's (H is far from definite at initialization: 1% of
             |tr H| took ~10^4 samples on small widths) against PyHessian's
             ``trace(maxIter=n, tol=0)``, the n samples ours needed.

PyHessian gets all the probe samples as one batch on the same device; it is skipped when not
installed (``pip install -e .[bench]``) or with ``--no-pyhessian``, and its failure (out of
memory, say) is a row of the table.  ``--time-limit S`` cuts every estimator S seconds after the
start (ours stop, PyHessian's raise); ``--out`` is rewritten after every call.  The exit code
is 1 when one of landscope's results is missing or not finite.  The README's GPU figures come
from (on the GPU its header line names)

    python scripts/bench_gpu.py --out bench_gpu.json [--time-limit 300]

``--quick`` is the CPU smoke mode (64 samples, ``model.width=8``, SLQ 3 probes x 8 steps):

    python scripts/bench_gpu.py --quick --device cpu [--no-pyhessian] [--out x.json]

(``--samples N``, ``--model NAME`` and ``--set KEY=VALUE``, a repeatable Hydra override, too.)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

K, EIG_TOL, TRACE_RSE, TRACE_MIN = 5, 1e-3, 0.01, 30
CIFAR_LIKE_TRAIN = 5000  # conf/dataset/cifar_like.yaml: train_size null = 5000 generated
ESTIMATORS = ("top-5", "trace", "SLQ")
# ours first (the trace reads the SLQ's sum |lambda|); PyHessian's riskiest call last
ORDER = [("ours", "top-5"), ("ours", "SLQ"), ("ours", "trace"), ("pyhessian", "trace"),
         ("pyhessian", "SLQ"), ("pyhessian", "top-5")]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from landscope.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def setup(args) -> tuple[Any, torch.nn.Module, Any]:
    """The composed config, the model at its seeded initialization (eval mode) and the probe
    data, both on the device."""
    from landscope.data import load_data
    from landscope.jobs import seed_everything
    from landscope.models import build_model
    from landscope.probes.suite import probe_data

    overrides = [f"model={args.model}", "dataset=cifar_like", "probe=standard",
                 f"probe.data_size={args.samples}", "probe.progress=false"]
    if args.samples > CIFAR_LIKE_TRAIN:
        overrides.append(f"dataset.train_size={args.samples}")
    cfg = compose([*overrides, *args.set])
    data = load_data(cfg.dataset)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, data.meta).to(args.device).eval()
    pd = probe_data(data.train, cfg.probe).to(device=args.device)
    return cfg, model, pd


def measured(device: torch.device, fn: Callable[[], dict]) -> dict:
    """``fn()``'s result with its ``seconds`` and ``peak_mib`` (CUDA only, else None); an
    exception becomes ``{"error": ...}``."""
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    try:
        out = fn()
        if cuda:
            torch.cuda.synchronize(device)
    except Exception as err:  # a peer's failure (out of memory...) is a row, not a crash
        first = (str(err).strip().splitlines() or [""])[0]
        out = {"error": f"{type(err).__name__}: {first[:200]}"}
    out["seconds"] = time.perf_counter() - tic
    out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return out  # (what it left is freed before the next call)


# ----------------------------------------------------------------------------- landscope
def deadline(limit: Optional[float]) -> Callable[[], Optional[str]]:
    """``--time-limit``'s cap: names it once the time is up (else None)."""
    end = math.inf if limit is None else time.perf_counter() + limit
    return lambda: "time limit" if time.perf_counter() > end else None


def ours(model: torch.nn.Module, pd: Any, pcfg: Any, args, res: dict,
         stop: Callable[[], Optional[str]]) -> dict[str, Callable[[], dict]]:
    """landscope's three calls, each from the operator's construction (the trace reads the SLQ
    row's estimate of sum |lambda| for its stop, as the probe suite does)."""
    from landscope.probes.density import slq
    from landscope.probes.distributed import hessian_operator
    from landscope.probes.lanczos import lanczos_eigs
    from landscope.probes.trace import hutchinson

    def operator():  # as landscope.probes.suite.start_run builds it
        return hessian_operator(model, pd, mode=str(pcfg.mode), seed=pcfg.seed,
                                checkpointing=bool(getattr(pcfg, "checkpointing", False)))

    def counts(op, cut: Optional[str]) -> dict:
        return {"products": op.n_matvecs, "check_products": op.n_check_matvecs, "stopped_by": cut}

    def top() -> dict:
        op = operator()
        r = lanczos_eigs(op, k=K, tol=EIG_TOL, seed=0, stop=stop)
        return {"eigenvalues": r.eigenvalues.tolist(), "converged": r.converged.tolist(),
                **counts(op, r.stopped_by)}

    def density() -> dict:
        op = operator()
        r = slq(op, n_probes=args.slq_probes, m_steps=args.slq_steps, seed=0, stop=stop)
        return {**rule_summary(r.nodes, r.weights, op.dim), **counts(op, r.stopped_by)}

    def trace() -> dict:
        scale = res["ours"].get("SLQ", {}).get("abs_trace_from_rules", 0.0)
        op = operator()
        r = hutchinson(op, target_rse=TRACE_RSE, seed=1, min_samples=TRACE_MIN,
                       max_samples=args.max_trace_samples, scale=scale, stop=stop)
        return {"estimate": r.estimate, "stderr": r.stderr, "samples": r.n_samples,
                "rse": r.rse, "scale": scale, **counts(op, r.stopped_by)}

    return {"top-5": top, "SLQ": density, "trace": trace}


def rule_summary(nodes: torch.Tensor, weights: torch.Tensor, dim: int) -> dict:
    """The SLQ rules' extreme nodes and their estimates ``D · mean_probes Σ w f(θ)`` of tr H
    (f = id) and of sum |lambda| (f = abs)."""
    nodes, weights = nodes.double().cpu(), weights.double().cpu()
    return {"node_max": float(nodes.max()), "node_min": float(nodes.min()),
            "trace_from_rules": float(dim * (weights * nodes).sum(1).mean()),
            "abs_trace_from_rules": float(dim * (weights * nodes.abs()).sum(1).mean()),
            "probes": int(nodes.shape[0]), "steps": int(nodes.shape[1])}


def brief(row: dict) -> str:
    if "error" in row:
        return f"{row['error']} (after {row['seconds']:.1f} s)"
    cut = f", cut short by the {row['stopped_by']}" if row.get("stopped_by") else ""
    mem = "" if row["peak_mib"] is None else f", peak {mib(row)} MiB"
    return f"{row['seconds']:.2f} s{mem}, {row['products']} products{cut}"


# ----------------------------------------------------------------------------- PyHessian
@contextlib.contextmanager
def counted(module: Any, counter: list[int], stop: Callable[[], Optional[str]]) -> Iterator[None]:
    """Count PyHessian's products (its ``hessian_vector_product``, as bench_probes.py does);
    past ``--time-limit`` the next product raises TimeoutError."""
    product = module.hessian_vector_product

    def wrapper(*a: Any, **kw: Any) -> Any:
        if stop() is not None:
            raise TimeoutError(f"--time-limit reached after {counter[0]} products")
        counter[0] += 1
        return product(*a, **kw)
    module.hessian_vector_product = wrapper
    try:
        yield
    finally:
        module.hessian_vector_product = product


def pyhessian(model: torch.nn.Module, pd: Any, args, res: dict,
              stop: Callable[[], Optional[str]]) -> dict[str, Callable[[], dict]] | str:
    """PyHessian's three calls, each from its construction on all probe samples as one batch;
    why they are skipped when they are."""
    if args.no_pyhessian:
        return "skipped (--no-pyhessian)"
    try:
        import pyhessian  # noqa: F401
        mod = sys.modules["pyhessian.hessian"]  # the attribute pyhessian.hessian is the class
    except ImportError as err:
        return f"not installed (pip install -e .[bench]; {err})"
    from bench_probes import torch_eig_shim  # torch.eig for PyHessian's density
    x, y = (torch.cat([b[i] for b in pd.batches]) for i in (0, 1))
    cuda = torch.device(args.device).type == "cuda"

    def call(method: Callable[[Any], dict]) -> Callable[[], dict]:
        def run() -> dict:
            counter = [0]
            model.zero_grad(set_to_none=True)  # PyHessian accumulates into .grad (GUIDE 5)
            torch.manual_seed(0)
            try:
                with counted(mod, counter, stop), torch_eig_shim(), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Using backward.. with create_graph")
                    h = mod.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=cuda)
                    out = method(h)
                    del h
            finally:
                model.zero_grad(set_to_none=True)
            return {**out, "products": counter[0]}
        return run

    def top(h: Any) -> dict:
        vals, _ = h.eigenvalues(maxIter=args.pyh_max_iter, tol=EIG_TOL, top_n=K)
        return {"eigenvalues": [float(v) for v in vals]}

    def trace(h: Any) -> dict:
        n = res["ours"].get("trace", {}).get("samples", TRACE_MIN)  # the samples ours needed
        s = torch.tensor(h.trace(maxIter=n, tol=0.0), dtype=torch.float64)
        se = float(s.std() / math.sqrt(len(s))) if len(s) > 1 else math.inf
        return {"estimate": float(s.mean()), "stderr": se, "samples": len(s)}

    def density(h: Any) -> dict:
        nodes, weights = h.density(iter=args.slq_steps, n_v=args.slq_probes)
        dim = sum(p.numel() for p in h.params)
        return rule_summary(torch.tensor(nodes), torch.tensor(weights), dim)

    return {"top-5": call(top), "SLQ": call(density), "trace": call(trace)}


# ----------------------------------------------------------------------------- report
def header(args, model: torch.nn.Module, pd: Any, cfg: Any) -> dict:
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    return {"device": name, "torch": torch.__version__, "model": args.model,
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "samples": pd.n, "micro_batch": int(cfg.probe.micro_batch), "overrides": args.set,
            "quick": args.quick, "state": "seeded initialization (untrained), eval mode, float32",
            "cudnn_tf32": torch.backends.cudnn.allow_tf32, "time_limit_s": args.time_limit,
            "slq": {"probes": args.slq_probes, "steps": args.slq_steps}}


def mib(row: dict) -> str:
    return "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"


def table(res: dict) -> None:
    h, mine, peer = res["header"], res["ours"], res["pyhessian"]
    print(f"\n{h['model']} ({h['params']:,} parameters, {h['state']}) on cifar_like, "
          f"{h['samples']} probe samples (micro-batches of {h['micro_batch']}); device "
          f"{h['device']}, torch {h['torch']}, cuDNN TF32 {h['cudnn_tf32']}")
    print("| estimator | ours seconds | ours peak MiB | ours products | PyHessian seconds | "
          "PyHessian peak MiB | PyHessian products | ratio (PyHessian / ours) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ESTIMATORS:
        o, p = mine.get(name, {"error": "not run"}), peer.get(name)
        if "error" in o:
            print(f"| {name} | failed: {o['error']} | | | | | | |")
            continue
        if p is None:
            cells = f"{peer.get('skipped', 'not run')} | | | n/a"
        elif "error" in p:
            cells = f"failed after {p['seconds']:.1f} s: {p['error']} | | | n/a"
        else:
            cells = (f"{p['seconds']:.2f} | {mib(p)} | {p['products']} | "
                     f"{p['seconds'] / o['seconds']:.2f}")
        cut = f", cut by the {o['stopped_by']}" if o.get("stopped_by") else ""
        print(f"| {name} | {o['seconds']:.2f} | {mib(o)} | {o['products']} "
              f"(+{o['check_products']} check{cut}) | {cells} |")


def values(res: dict) -> None:
    mine, peer = res["ours"], res["pyhessian"]
    top, ptop = mine.get("top-5", {}), peer.get("top-5", {})
    if "eigenvalues" in top:
        print("\ntop-5 ours      :", " ".join(f"{v:.6g}" for v in top["eigenvalues"]),
              f"(converged: {sum(top['converged'])}/{K})")
    if "eigenvalues" in top and "eigenvalues" in ptop:
        theirs = sorted(ptop["eigenvalues"], reverse=True)
        rel = [abs(b - a) / abs(a) if a else math.inf for a, b in zip(top["eigenvalues"], theirs)]
        ptop["rel_diff"] = rel
        print("top-5 PyHessian :", " ".join(f"{v:.6g}" for v in theirs))
        print("relative diff.  :", " ".join(f"{v:.1e}" for v in rel))
    for who, rows in (("ours", mine), ("PyHessian", peer)):
        t, s = rows.get("trace", {}), rows.get("SLQ", {})
        if "estimate" in t:
            extra = (f"; stderr {t['stderr'] / t['scale']:.2%} of sum|lambda| = {t['scale']:.4g}"
                     if t.get("scale") else "")
            print(f"trace {who}: {t['estimate']:.6g} +- {t['stderr']:.3g}, {t['samples']} "
                  f"Hutchinson samples{extra}")
        if "node_max" in s:
            print(f"SLQ {who}: nodes in [{s['node_min']:.4g}, {s['node_max']:.4g}]; from the "
                  f"rules tr H {s['trace_from_rules']:.5g}, sum|lambda| "
                  f"{s['abs_trace_from_rules']:.5g} ({s['probes']} probes x {s['steps']} steps)")


def finite(mine: dict) -> bool:
    """Every one of landscope's estimators ran, and its numbers are finite."""
    rows = [mine.get(name, {"error": "not run"}) for name in ESTIMATORS]
    keys = ("eigenvalues", "estimate", "stderr", "node_max", "node_min", "trace_from_rules")
    nums = [v for r in rows for k in keys if k in r
            for v in (r[k] if isinstance(r[k], list) else [r[k]])]
    return not any("error" in r for r in rows) and all(math.isfinite(v) for v in nums)


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--samples", type=int, default=None, help="default 5000 (quick: 64)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra Hydra override (repeatable), e.g. model.width=8")
    ap.add_argument("--quick", action="store_true", help="the CPU smoke mode")
    ap.add_argument("--out", type=Path, default=None, help="every figure, as JSON")
    ap.add_argument("--no-pyhessian", action="store_true")
    ap.add_argument("--max-trace-samples", type=int, default=None, help="default 1000 (100)")
    ap.add_argument("--pyh-max-iter", type=int, default=100, help="PyHessian's maxIter")
    ap.add_argument("--time-limit", type=float, default=None, metavar="S",
                    help="stop every estimator S seconds after the start (default: none)")
    args = ap.parse_args(argv)
    args.samples = args.samples or (64 if args.quick else 5000)
    args.max_trace_samples = args.max_trace_samples or (100 if args.quick else 1000)
    args.slq_probes, args.slq_steps = (3, 8) if args.quick else (10, 30)
    if args.quick and not any(s.startswith("model.width=") for s in args.set):
        args.set = ["model.width=8", *args.set]
    return args


def save(res: dict, out: Optional[Path]) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, default=str) + "\n")


def plan(top: dict, args) -> str:
    """What one product costs (from the top-5 call) and what the other calls may take."""
    per = top["seconds"] / max(1, top["products"] + top["check_products"])
    rest = 2 * args.slq_probes * args.slq_steps + 2 * TRACE_MIN + 3 * top["products"]
    return (f"about {per:.3g} s a product: the other calls take about {rest} products, "
            f"{rest * per:.0f} s (if PyHessian's top-5 takes 3x ours' products)")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    stop = deadline(args.time_limit)
    cfg, model, pd = setup(args)
    res: dict[str, Any] = {"header": header(args, model, pd, cfg), "ours": {}, "pyhessian": {}}
    h = res["header"]
    print(f"{h['model']} {h['params']:,} parameters at its {h['state']}; {h['samples']} "
          f"cifar_like probe samples on {h['device']} (torch {h['torch']})", flush=True)
    x, y = pd.batches[0]  # one gradient first, so that neither side pays CUDA's start
    torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    calls = {"ours": ours(model, pd, cfg.probe, args, res, stop),
             "pyhessian": pyhessian(model, pd, args, res, stop)}
    if isinstance(calls["pyhessian"], str):
        print(f"PyHessian: {calls['pyhessian']}", flush=True)
        res["pyhessian"]["skipped"], calls["pyhessian"] = calls["pyhessian"], {}
    for who, name in ORDER:
        if name not in calls[who]:
            continue
        if (who, name) == ("pyhessian", "trace") and "samples" in res["ours"].get("trace", {}):
            print(f"PyHessian's trace runs the {res['ours']['trace']['samples']} Hutchinson "
                  "samples ours needed (tol=0)", flush=True)
        res[who][name] = measured(torch.device(args.device), calls[who][name])
        print(f"{'landscope' if who == 'ours' else 'PyHessian'} {name}: "
              f"{brief(res[who][name])}", flush=True)
        if (who, name) == ("ours", "top-5") and "error" not in res[who][name]:
            print(plan(res[who][name], args), flush=True)
        save(res, args.out)  # after every call: a run cut short keeps what it measured
    table(res)
    values(res)
    res["ok"] = ok = finite(res["ours"])
    save(res, args.out)
    if not ok:
        print("landscope's results are not all finite", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
