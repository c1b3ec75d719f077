"""How honest the trace's stated error is when its auto-stop may fire after 10, 20 or 30 samples
(``TRACE_MIN_SAMPLES`` in ``landscope.probes.steps``), on the dense float64 Hessians of
``bench_probe_cost.py``'s models at a small width.

For each model (width 8, depth 2, trained ``--epochs`` epochs, ``--samples`` probe samples) the
Hessian is formed densely, its top-5 deflated exactly, and the suite's own ``deflated_trace``
run ``--seeds`` times on it: the density's 10 Gaussian samples first (as ``prior``), then
Rademacher ones, stopping once the standard error is at most ``rse · max(|estimate|, Σ|λ|)``
with at least the minimum number of samples. ``--stop-near N`` sets the rse at which the stop
would fire near N samples (the regime of the full-size models, whose traces stop at the
minimum); 0 uses the preset's 1 %. Printed: the mean and sd of (estimate − trace) / stderr
(about 0 and 1 for an honest error; a stop that fires when the stderr happens to be
underestimated makes the sd larger), the fraction within 2 and 3 stderrs, and the samples
taken.

    python scripts/calibrate_trace_stop.py [--models mlp,cnn,resnet,resnet_ln_noskip,vit]
                                           [--seeds 2000] [--stop-near 12] [--epochs 3]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_probe_cost as bench  # noqa: E402

PRIOR = 10          # the density's samples, counted first (probe=standard: 10 probes)
MINIMA = (10, 20, 30)
MAX_SAMPLES = 130


def deflated_problem(name: str, epochs: int, samples: int, data_dir: str):
    """(the dense Hessian as an operator, its exact top-5 as an ``EigResult``, P H P with P the
    projection off the top-5, tr H, Σ|λ|) of the small model ``name``."""
    from landscope.probes.lanczos import EigResult
    from landscope.probes.operator import DenseOperator
    from landscope.probes.probe_data import ProbeData
    from landscope.probes.suite import probe_data
    from landscope.probes.verify import dense_hessian

    small = [*bench.MODELS[name], "model.width=8", "model.depth=2"]
    _, model, data = bench.trained(small, data_dir, epochs)
    pcfg = bench.compose([*small, "probe=standard", f"probe.data_size={samples}",
                          "probe.progress=false"]).probe
    pd = probe_data(data.train, pcfg)
    x = torch.cat([b[0] for b in pd.batches]).double()
    y = torch.cat([b[1] for b in pd.batches])
    h = dense_hessian(model.double(), ProbeData.from_tensors(x, y, len(y)))
    h = (h + h.T) / 2
    lam, u = torch.linalg.eigh(h)
    top = torch.argsort(-lam)[:5]
    v = u[:, top]
    eig = EigResult(eigenvalues=lam[top], eigenvectors=v, residuals=torch.zeros(5),
                    converged=torch.ones(5, dtype=torch.bool), n_matvecs=0, iterations=5)
    p = torch.eye(len(lam), dtype=h.dtype) - v @ v.T
    return DenseOperator(h), eig, p @ h @ p, float(lam.sum()), float(lam.abs().sum())


def simulate(op, eig, deflated: Tensor, trace: float, scale: float, rse: float, seeds: int
             ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per minimum: (estimate − trace) / stderr and the samples taken, over ``seeds`` runs of
    the suite's own :func:`~landscope.probes.trace.deflated_trace` (the same Rademacher draws
    for every minimum), after the density's ``PRIOR`` Gaussian samples zᵀ P H P z."""
    from landscope.probes.trace import deflated_trace

    gen = torch.Generator().manual_seed(0)
    out: dict[int, list[tuple[float, int]]] = {m: [] for m in MINIMA}
    for seed in range(seeds):
        z = torch.randn(PRIOR, op.dim, generator=gen, dtype=torch.float64)
        prior = ((z @ deflated) * z).sum(1).tolist()
        for m in MINIMA:
            r = deflated_trace(op, eig, seed=seed, target_rse=rse, min_samples=m,
                               max_samples=PRIOR + MAX_SAMPLES, scale=scale, prior=prior)
            out[m].append(((r.estimate - trace) / r.stderr, r.n_samples))
    return {m: (np.array([e for e, _ in v]), np.array([c for _, c in v])) for m, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(bench.MODELS))
    ap.add_argument("--seeds", type=int, default=2000)
    ap.add_argument("--stop-near", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data_dir = tempfile.mkdtemp(prefix="calibrate_trace_stop_")
    for name in args.models.split(","):
        op, eig, a, trace, scale = deflated_problem(name, args.epochs, args.samples, data_dir)
        # a Rademacher sample's variance, 2 (||A||_F^2 - sum A_ii^2)
        var = 2 * float((a * a).sum() - (a.diagonal() ** 2).sum())
        rse = (math.sqrt(var / args.stop_near) / max(abs(trace), scale) if args.stop_near
               else 0.01)
        print(f"{name}: D={op.dim}, trace {trace:.4f}, top-5 {float(eig.eigenvalues.sum()):.4f}, "
              f"sum|lambda| {scale:.3f}, rse {rse:.4f}")
        for m, (err, used) in simulate(op, eig, a, trace, scale, rse, args.seeds).items():
            print(f"  at least {m}: samples {used.mean():.1f}, err/stderr mean {err.mean():+.3f} "
                  f"sd {err.std():.3f}, within 2 stderr {np.mean(np.abs(err) <= 2):.3f}, "
                  f"within 3 {np.mean(np.abs(err) <= 3):.3f}", flush=True)


if __name__ == "__main__":
    main()
