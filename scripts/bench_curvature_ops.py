"""One product of our Gauss-Newton and Fisher operators against curvlinops 3.0's
``GGNLinearOperator``, ``EFLinearOperator`` and ``FisherMCLinearOperator``.

Same model, same data (``--n`` samples in micro-batches of ``--micro-batch``), same loss (mean
cross-entropy, or ``--loss mse``: ``1/2 ||f - onehot||^2`` per sample against curvlinops'
``MSELoss(reduction="mean")`` rescaled by ``C/2`` [its mean runs over samples and outputs]),
float32, eval mode, measured in one process. Each operator is built once (its construction
and determinism check timed separately, not in the product time); then ``--repeats`` products
with fresh random vectors, ours and the peer's interleaved, and the median of each and of the
per-round ratios is printed. GGN and EF products are checked against each other (relative
difference of the product: they are the same matrix; exit code 1 above 1e-4); the Monte Carlo
Fisher draws different labels in each library, so only its cost is compared (one draw per
input each).

    python scripts/bench_curvature_ops.py [--model mlp|cnn] [--loss cross_entropy|mse]
        [--n 1000] [--micro-batch 1000] [--repeats 11] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from landscope.losses import ClassificationLoss, attach  # noqa: E402
from landscope.models import build_model  # noqa: E402
from landscope.probes.curvature_ops import FisherOperator, GGNOperator  # noqa: E402
from landscope.probes.hvp import HessianOperator  # noqa: E402
from landscope.probes.probe_data import ProbeData  # noqa: E402

MODELS = {"mlp": {"name": "mlp", "width": 128, "depth": 3},
          "cnn": {"name": "cnn", "width": 16, "depth": 2}}


def _setup(args):
    torch.manual_seed(0)
    meta = types.SimpleNamespace(input_shape=(1, 40), num_classes=10)
    model = build_model(MODELS[args.model], meta).eval()
    if args.loss == "mse":
        attach(model, ClassificationLoss("mse"))
    x, y = torch.randn(args.n, 1, 40), torch.randint(0, 10, (args.n,))
    return model, ProbeData.from_tensors(x, y, args.micro_batch)


def _peer_loss(args) -> nn.Module:
    return nn.CrossEntropyLoss() if args.loss == "cross_entropy" else nn.MSELoss()


def _peers(model, data, args):
    warnings.filterwarnings("ignore")
    from curvlinops import EFLinearOperator, FisherMCLinearOperator, GGNLinearOperator

    params = [p for p in model.parameters() if p.requires_grad]
    batches = [(x, y if args.loss == "cross_entropy" else
                torch.nn.functional.one_hot(y, 10).float()) for x, y in data.batches]
    loss = _peer_loss(args)
    # MSELoss means over the C outputs too and has no 1/2: its GGN is 2/C ours; its EF is
    # 4/(NC) sum_i g_i g_i^T of the summed squared error, C/4 ours (measured: the check below)
    ggn_scale, ef_scale = (10 / 2, 10 / 4) if args.loss == "mse" else (1.0, 1.0)
    return {"ggn": (lambda: GGNLinearOperator(model, loss, params, batches), ggn_scale),
            "fisher_empirical": (lambda: EFLinearOperator(model, loss, params, batches),
                                 ef_scale),
            "fisher": (lambda: FisherMCLinearOperator(model, loss, params, batches, mc_samples=1),
                       1.0)}


def _ours(model, data):
    return {"ggn": lambda: GGNOperator(model, data),
            "fisher_empirical": lambda: FisherOperator(model, data, kind="empirical"),
            "fisher": lambda: FisherOperator(model, data, kind="true", mc_samples=1)}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench(kind, ours_fn, peer_fn, scale, repeats, dim):
    ours, t_ours_build = _timed(ours_fn)
    peer, t_peer_build = _timed(peer_fn)
    gen = torch.Generator().manual_seed(1)
    rows = {"ours": [], "peer": [], "ratio": []}
    err = 0.0
    for r in range(repeats):
        v = torch.randn(dim, generator=gen)
        order = (("ours", ours), ("peer", peer)) if r % 2 == 0 else (("peer", peer), ("ours", ours))
        got = {}
        for name, op in order:
            res, t = _timed(lambda op=op, v=v, mine=name == "ours":
                            op.matvec(v) if mine else op @ v)
            got[name], rows[name] = res, rows[name] + [t]
        rows["ratio"].append(rows["ours"][-1] / rows["peer"][-1])
        if kind != "fisher":
            err = max(err, float((got["ours"] - scale * got["peer"]).norm() / got["ours"].norm()))
    med = {k: statistics.median(v) for k, v in rows.items()}
    return med, err, t_ours_build, t_peer_build


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="mlp")
    ap.add_argument("--loss", choices=["cross_entropy", "mse"], default="cross_entropy")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--micro-batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, data = _setup(args)
    dim = sum(p.numel() for p in model.parameters())
    print(f"{args.model} ({dim} parameters), {args.loss}, {args.n} samples in micro-batches of "
          f"{args.micro_batch}, float32, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'operator':18s} {'ours ms':>9s} {'curvlinops ms':>14s} {'ratio':>7s} "
          f"{'rel. diff':>10s} {'build ours/peer s':>18s}")
    peers, ours = _peers(model, data, args), _ours(model, data)
    bench("ggn", ours["ggn"], peers["ggn"][0], 1.0, 1, dim)  # warm-up (first-call costs)
    worst = 0.0
    for kind in ("ggn", "fisher_empirical", "fisher"):
        peer_fn, scale = peers[kind]
        med, err, b_ours, b_peer = bench(kind, ours[kind], peer_fn, scale, args.repeats, dim)
        diff = "n/a (MC)" if kind == "fisher" else f"{err:.1e}"
        print(f"{kind:18s} {1e3 * med['ours']:9.2f} {1e3 * med['peer']:14.2f} "
              f"{med['ratio']:7.2f} {diff:>10s} {b_ours:8.2f} / {b_peer:.2f}")
        worst = max(worst, err)
    hess = HessianOperator(model, data)
    vs = [torch.randn(dim) for _ in range(args.repeats)]
    times = [_timed(lambda v=v: hess.matvec(v))[1] for v in vs]
    print(f"{'(hessian, ours)':18s} {1e3 * statistics.median(times):9.2f}  "
          f"(our Hessian-vector product, {hess.method}, for scale)")
    return 1 if worst > 1e-4 else 0  # the same matrix must give the same product


if __name__ == "__main__":
    raise SystemExit(main())
