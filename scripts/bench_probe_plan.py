"""How close the probe plan's estimate comes to what ``probe=standard`` spends.

For each model of ``bench_probe_cost.py`` and each training seed (MNIST-1D, ``--epochs`` epochs,
float32, CPU, one thread) it prints:

* each sharpness measure's evaluations, run alone as the suite runs it (the worst case, the
  adaptive worst case and Keskar's box: loss-and-gradient evaluations; the two averages: loss
  passes; the two sigma' searches: accuracy passes), and their medians over every model and
  seed: the figures behind ``probes.plan.ASCENT_EVALS`` and ``SIGMA_SEARCH_EVALS``;
* with ``--suite``, the whole preset through ``run_probes``: its plan line, and the products,
  evaluations and seconds it took;
* with ``--lists``, instead of the sharpness measures, the Lanczos lists beyond the top-k as
  the suite runs them (``probe.per_block`` at ``block`` and ``layer`` with k = 3; the GGN,
  Fisher and NTK with k = 5): each list's steps, the check's round and its trace's samples, and
  their medians, the figures behind ``probes.plan.LIST_STEPS_BEYOND_K``, ``LIST_CHECK`` and
  ``USUAL_TRACE``.

    python scripts/bench_probe_plan.py [--models mlp,cnn,resnet,resnet_ln_noskip,vit]
                                       [--seeds 0,1,2] [--epochs 3] [--suite | --lists]
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


def list_counts(cfg, model, data) -> list[dict]:
    """Each Lanczos list beyond the top-k, run as the suite runs it: its products by part."""
    from landscope.probes.blocks import EXACT_TRACE_MAX, TRACE_SAMPLES, parameter_groups
    from landscope.probes.complement import checked_list
    from landscope.probes.curvature_ops import curvature_operator
    from landscope.probes.hvp import HessianOperator
    from landscope.probes.lanczos import lanczos_eigs
    from landscope.probes.steps import TRACE_MIN_SAMPLES
    from landscope.probes.suite import probe_data
    from landscope.probes.trace import deflated_trace

    pc, rows = cfg.probe, []
    pd = probe_data(data.train, pc)
    model.eval()
    named = dict(model.named_parameters())

    def run(kind, op, k, seed, check_seed, trace_kw):
        eig = lanczos_eigs(op, k=min(k, op.dim), tol=pc.lanczos_tol, atol=1e-10, seed=seed)
        steps = op.n_matvecs
        eig = checked_list(op, eig, tol=pc.lanczos_tol, atol=1e-10, seed=check_seed)
        check = op.n_matvecs - steps
        if trace_kw is None:
            trace = op.dim  # exact over the unit vectors
        else:
            deflated_trace(op, eig, seed=seed, **trace_kw)
            trace = op.n_matvecs - steps - check
        rows.append(dict(kind=kind, dim=op.dim, k=min(k, op.dim), beyond_k=steps - min(k, op.dim),
                         check=check, trace=trace))

    for level in ("block", "layer"):
        groups = parameter_groups(model, level)
        for i, members in enumerate(groups.values()):
            op = HessianOperator(model, pd, params={n: named[n] for n in members}, mode="eval",
                                 check_determinism=False)
            kw = None if op.dim <= EXACT_TRACE_MAX else dict(
                target_rse=pc.trace.rse, min_samples=TRACE_SAMPLES[0],
                max_samples=TRACE_SAMPLES[1])
            run(level, op, 3, i, len(groups) + i, kw)
    for kind in ("ggn", "fisher", "ntk"):
        op = curvature_operator(kind, model, pd, mode="eval", seed=pc.seed)
        run("curvature", op, 5, pc.seed, pc.seed + 2,
            dict(target_rse=pc.trace.rse, min_samples=TRACE_MIN_SAMPLES,
                 max_samples=pc.trace.max_samples))
    return rows


def print_lists(rows: list[dict]) -> None:
    med = statistics.median
    beyond, check = med(r["beyond_k"] for r in rows), med(r["check"] for r in rows)
    print(f"{len(rows)} lists: Lanczos steps beyond k, median {beyond:g}; "
          f"the check's round {check:g}")
    for kind in ("block", "layer", "curvature"):
        traces = [r["trace"] for r in rows if r["kind"] == kind and r["dim"] > 64]
        if traces:
            print(f"  {kind} traces (operators > 64 dimensions): median {med(traces):g}, "
                  f"{min(traces)}-{max(traces)} over {len(traces)}")


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
    ap.add_argument("--lists", action="store_true",
                    help="the Lanczos lists beyond the top-k instead of the sharpness measures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steady_allocator()
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        for name in args.models.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg, model, data = trained([*MODELS[name], f"seed={seed}"], data_dir,
                                           args.epochs)
                if args.lists:
                    lists = list_counts(cfg, model, data)
                    print(f"{name:18s} seed {seed}:", flush=True)
                    print_lists(lists)
                    rows.extend(lists)
                    continue
                row = measure_counts(cfg, model, data)
                rows.append(row)
                print(f"{name:18s} seed {seed}: "
                      + ", ".join(f"{k} {row[k]}" for k in MEASURES), flush=True)
                if args.suite:
                    suite(cfg, model, data)
    if args.lists:
        print("all models and seeds:")
        print_lists(rows)
        return
    print("median: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):g}"
                                 for k in MEASURES))


if __name__ == "__main__":
    main()
