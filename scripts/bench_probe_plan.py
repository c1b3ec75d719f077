"""How close the probe plan's estimate comes to what ``probe=standard`` spends.

For each model of ``bench_probe_cost.py`` and each training seed (MNIST-1D, ``--epochs`` epochs,
float32, CPU, one thread) it prints:

* each sharpness measure's evaluations, run alone as the suite runs it (the worst case, the
  adaptive worst case and Keskar's box: loss-and-gradient evaluations; the two averages: loss
  passes; the two sigma' searches: accuracy passes), and their medians over every model and
  seed: the figures behind ``probes.plan.ASCENT_EVALS`` and ``SIGMA_SEARCH_EVALS``;
* with ``--suite``, the whole preset through ``run_probes``: its plan line, and the products,
  evaluations and seconds it took.

    python scripts/bench_probe_plan.py [--models mlp,cnn,resnet,resnet_ln_noskip,vit]
                                       [--seeds 0,1,2] [--epochs 3] [--suite]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from bench_probe_cost import MODELS, steady_allocator, trained  # noqa: E402

MEASURES = ("worst_case", "adaptive", "keskar", "average_random", "average_adaptive",
            "pac_bayes", "pac_bayes_magnitude")


def measure_counts(cfg, model, data) -> dict[str, int]:
    """Each sharpness measure's evaluations, in the suite's order on one objective."""
    from landscope.probes.hvp import HessianOperator, forward_mode
    from landscope.probes.sharpness import (
        ModelObjective,
        average_sharpness,
        keskar_sharpness,
        pac_bayes_flatness,
        sigma_guess,
        worst_case_sharpness,
    )
    from landscope.probes.steps import PAC_BAYES_SIGMA_RTOL
    from landscope.probes.suite import probe_data

    pc, out = cfg.probe, {}
    pd = probe_data(data.train, pc)
    with forward_mode(model, str(pc.mode)):
        op = HessianOperator(model, pd, mode=str(pc.mode), seed=pc.seed, check_determinism=False)
        obj = ModelObjective(model, pd, mode=op.mode, at_origin=(op.loss(), op.gradient()))
        rhos = [float(r) for r in pc.sharpness.rhos]

        def count(name, fn):
            before = obj.n_loss + obj.n_acc
            result = fn()
            out[name] = obj.n_loss + obj.n_acc - before
            return result

        count("worst_case", lambda: worst_case_sharpness(obj, rhos, seed=pc.seed))
        count("adaptive", lambda: worst_case_sharpness(obj, rhos, adaptive=True, seed=pc.seed))
        count("keskar", lambda: keskar_sharpness(obj, pc.sharpness.keskar_epsilons, seed=pc.seed))
        guesses = {}
        for adaptive, name in ((False, "average_random"), (True, "average_adaptive")):
            avg = count(name, lambda adaptive=adaptive: average_sharpness(
                obj, rhos, adaptive=adaptive, n_samples=pc.sharpness.samples,
                antithetic=pc.sharpness.antithetic, seed=pc.seed))
            r_max, m_max = max(zip(avg.rhos, avg.means))
            guesses[adaptive] = sigma_guess(m_max, r_max)
        for aware, name in ((False, "pac_bayes"), (True, "pac_bayes_magnitude")):
            count(name, lambda aware=aware: pac_bayes_flatness(
                obj, magnitude_aware=aware, seed=pc.seed, rtol=PAC_BAYES_SIGMA_RTOL,
                guess=guesses.get(aware)))
    return out


def suite(cfg, model, data) -> None:
    """The preset through ``run_probes``: its plan line against what it took."""
    from landscope.probes.suite import run_probes

    lines: list[str] = []
    tic = time.perf_counter()
    s = run_probes(model, data.train, cfg.probe, log=lines.append).scalars
    took = time.perf_counter() - tic
    products = sum(c["products"] for c in s["probe_cost"].values())
    print(f"    {lines[0] if lines else '(no plan line)'}")
    print(f"    took {took:.1f} s: {products} products, {s.get('sharpness_grad_evals', 0)} "
          f"loss-and-gradient evaluations, "
          f"{s.get('sharpness_loss_evals', 0) - s.get('sharpness_grad_evals', 0)} loss and "
          f"{s.get('sharpness_acc_evals', 0)} accuracy passes; seconds by estimator: "
          + ", ".join(f"{k[:-8]} {v:.1f}" for k, v in s["probe_cost_seconds"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--suite", action="store_true", help="also the whole preset, plan and cost")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steady_allocator()
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        for name in args.models.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg, model, data = trained([*MODELS[name], f"seed={seed}"], data_dir,
                                           args.epochs)
                row = measure_counts(cfg, model, data)
                rows.append(row)
                print(f"{name:18s} seed {seed}: "
                      + ", ".join(f"{k} {row[k]}" for k in MEASURES), flush=True)
                if args.suite:
                    suite(cfg, model, data)
    print("median: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):g}"
                                 for k in MEASURES))


if __name__ == "__main__":
    main()
