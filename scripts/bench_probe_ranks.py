"""``probe=standard`` in one process against data-parallel ranks, stage by stage.

One trained model of ``bench_probe_cost.py`` (MNIST-1D, ``--epochs`` epochs) is probed, in
turn and ``--repeats`` times: in one process with one thread, in one process with ``--ranks``
threads (the same cores as the ranks), and on ``--ranks`` gloo processes with one thread each
(``torch.multiprocessing``, as ``probe.ranks`` starts them). For each it prints the seconds of
each estimator (``probe_cost_seconds``, the median over the repeats) and the whole run's, and
how far the ranks' sharpness values are from the one process's (they agree to rounding).

    python scripts/bench_probe_ranks.py [--model cnn] [--ranks 2] [--repeats 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from bench_probe_cost import MODELS, steady_allocator, trained  # noqa: E402


def probe(model, split, cfg) -> dict:
    from landscope.probes.suite import run_probes

    tic = time.perf_counter()
    s = run_probes(model, split, cfg).scalars
    return {**s["probe_cost_seconds"], "total": time.perf_counter() - tic,
            "values": {k: v for k, v in s.items()
                       if k.startswith(("sharpness_", "pac_bayes")) and isinstance(v, float)}}


def _rank(rank: int, world: int, init: str, saved: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    steady_allocator()
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=1800))
    try:
        model, split, cfg = torch.load(saved, weights_only=False)
        result = probe(model, split, cfg)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(result, out)


def on_ranks(world: int, saved: str, scratch: str, attempt: int) -> dict:
    import torch.multiprocessing as mp

    init, out = os.path.join(scratch, f"init{attempt}"), os.path.join(scratch, f"out{attempt}")
    mp.start_processes(_rank, args=(world, init, saved, out), nprocs=world,
                       start_method="spawn")
    return torch.load(out, weights_only=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn", choices=sorted(MODELS))
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    steady_allocator()
    torch.set_num_threads(1)
    runs: dict[str, list[dict]] = {"1 process, 1 thread": [],
                                   f"1 process, {args.ranks} threads": [],
                                   f"{args.ranks} ranks, 1 thread each": []}
    with tempfile.TemporaryDirectory() as scratch:
        cfg, model, data = trained([*MODELS[args.model], "seed=0"], scratch, args.epochs)
        saved = os.path.join(scratch, "probe.pt")
        torch.save((model, data.train, cfg.probe), saved)
        for attempt in range(args.repeats):
            for name, threads in zip(runs, (1, args.ranks, None)):
                if threads is None:
                    runs[name].append(on_ranks(args.ranks, saved, scratch, attempt))
                    continue
                torch.set_num_threads(threads)
                runs[name].append(probe(model, data.train, cfg.probe))
            torch.set_num_threads(1)
            print(f"repeat {attempt + 1}: " + ", ".join(
                f"{name} {r[-1]['total']:.1f} s" for name, r in runs.items()), flush=True)
    stages = [k for k in runs["1 process, 1 thread"][0] if k != "values"]
    print(f"{args.model}, probe=standard, seconds (median of {args.repeats}):")
    print(f"{'':34s}" + "".join(f"{k.removesuffix('_seconds'):>11s}" for k in stages))
    for name, results in runs.items():
        print(f"{name:34s}" + "".join(
            f"{statistics.median(r[k] for r in results):11.2f}" for k in stages))
    ref = runs["1 process, 1 thread"][0]["values"]
    ranked = runs[f"{args.ranks} ranks, 1 thread each"][0]["values"]
    gaps = sorted(((abs(ranked[k] - v) / max(abs(v), 1e-30), k) for k, v in ref.items()
                   if math.isfinite(v) and k in ranked), reverse=True)
    print(f"sharpness values, ranks against one process ({len(gaps)} values), the largest "
          "relative differences: " + ", ".join(f"{k} {g:.1e}" for g, k in gaps[:4]))


if __name__ == "__main__":
    main()
