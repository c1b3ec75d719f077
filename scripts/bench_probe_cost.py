"""What ``probe=standard`` costs on each architecture, in gradient-equivalents, estimator by
estimator.

For each model (MNIST-1D, trained for ``--epochs`` epochs the way the runner trains it, float32,
CPU) it measures, side by side in one process:

* ``grad``   one gradient of the probe loss on the probe data, the model called directly
             (:func:`plain_gradient`; the unit; the median of 5 timed before the preset and 5
             after it),
* ``hvp``    one Hessian-vector product (the operator's own method, median of 5) and its ratio to a
             gradient (issue #18: keep it <= 2.5), next to PyHessian 0.1's product on the same
             samples when it is installed (``pip install -e .[bench]``),
* the whole ``run_probes`` of the preset, its wall time over one gradient (the preset's cost in
  gradient-equivalents; issue #18's goal: <= 400), and each estimator's share from the suite's
  own ledger (``probe_cost``: seconds and products per estimator). With ``--repeats N`` the
  preset runs N times (the unit timed before and after each run): the table holds the median
  run (the lower middle one for even N) and the line above it every run's figure. With
  ``--seeds S1,S2,...`` each model is trained once per seed (the cost depends on the point
  it was trained to) and the goal is judged on the medians over the seeds.

glibc's allocator is fixed first in the regime of a process that has trained
(:func:`steady_allocator`), so that a model's figures do not depend on the models before it.

    python scripts/bench_probe_cost.py [--models mlp,cnn,resnet,resnet_ln_noskip,vit]
                                       [--preset standard] [--samples 1000] [--epochs 3]
                                       [--threads 1] [--repeats 1] [--seeds 0,1,2]
                                       [--verify]

``--verify`` runs the preset again in verify mode on a small width (8, depth 2) of each model
and prints the errors against the dense float64 Hessian.

``--products`` measures only one product against one gradient (ours and PyHessian's,
alternated, at least 3 times) at each model's seeded initialization, for the MNIST-1D models
above and for the research plan's ``resnet18``, ``resnet18_ln_noskip``, ``resnet34`` and
``vit_small`` on ``cifar_like`` data, which are too large to train and probe whole here:

    python scripts/bench_probe_cost.py --products --samples 32 --repeats 3 \
        --models resnet18,resnet18_ln_noskip,resnet34,vit_small
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

MODELS = {
    "mlp": ["model=mlp"],
    "cnn": ["model=cnn", "model.norm=batch"],
    "resnet": ["model=resnet", "model.norm=batch"],
    "resnet_ln_noskip": ["model=resnet", "model.norm=layer", "model.skip=false"],
    "vit": ["model=vit", "model.norm=none"],
}
# the research plan's models on CIFAR-shaped data, for --products (too large to train and
# probe whole on a CPU here): each with the norm/skip switches of its hardest MNIST-1D cousin
PLAN_MODELS = {
    "resnet18": ["model=resnet18", "dataset=cifar_like"],
    "resnet18_ln_noskip": ["model=resnet18", "model.norm=layer", "model.skip=false",
                           "dataset=cifar_like"],
    "resnet34": ["model=resnet34", "dataset=cifar_like"],
    "vit_small": ["model=vit_small", "dataset=cifar_like"],
}


def steady_allocator() -> bool:
    """Fix glibc's malloc in the regime a process reaches once it has trained: allocations up
    to 32 MiB from the heap (glibc raises its mmap threshold that far by itself as large blocks
    are freed) and no trimming below 64 MiB. Without it the unit depends on what ran before in
    the process: the plain ResNet's gradient took 80 ms alone and 62 ms after the other
    models (its product about 150 ms either way). False where this is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                    and libc.mallopt(m_trim_threshold, 64 << 20))
    except (OSError, AttributeError):
        return False


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from landscope.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def trained(overrides: list[str], data_dir: str, epochs: int):
    """The model after ``epochs`` epochs of the runner's training loop, and its data."""
    from landscope.data import load_data
    from landscope.jobs import seed_everything
    from landscope.models import build_model
    from landscope.optim import build_optimizer, build_scheduler
    from landscope.train import TrainState, fit

    cfg = compose([*overrides, f"train.epochs={epochs}", f"dataset.data_dir={data_dir}"])
    data = load_data(cfg.dataset)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, data.meta)
    opt = build_optimizer(model.parameters(), cfg.optimizer)
    state = TrainState(model, opt, build_scheduler(opt, cfg.optimizer, epochs))
    fit(state, data.train, data.test, epochs=epochs, batch_size=cfg.train.batch_size, seed=cfg.seed)
    return cfg, model, data


def plain_gradient(model, pd):
    """The unit: one gradient of the probe loss as a training step computes it, the model
    called directly (eval mode, set here) and autograd over its trainable parameters. Neither
    ``functional_call`` nor the curvature primitives, whose ReLU and cross-entropy rewrites make
    a first-order pass slower (only products gain from them): until 2026-12-05 the unit was the
    Hessian operator's own gradient, with both, and 2-50 % slower than this one."""
    from landscope.losses import task_loss

    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()

    def gradient() -> list:
        grads = None
        for (x, y), w in zip(pd.batches, pd.weights):
            gs = torch.autograd.grad(w * task_loss(model, model(x), y), params)
            grads = gs if grads is None else [a + b for a, b in zip(grads, gs)]
        return grads

    return gradient


def sample_times(fn, repeats: int = 5) -> list[float]:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return times


def median_time(fn, repeats: int = 5) -> float:
    return statistics.median(sample_times(fn, repeats))


def measure(name: str, overrides: list[str], args, data_dir: str, seed: int = 0) -> dict:
    from landscope.probes.hvp import HessianOperator
    from landscope.probes.suite import probe_data, run_probes

    cfg, model, data = trained([*overrides, f"seed={seed}"], data_dir, args.epochs)
    pcfg = compose([*overrides, f"probe={args.preset}", f"probe.data_size={args.samples}",
                    "probe.progress=false"]).probe
    pd = probe_data(data.train, pcfg)
    op = HessianOperator(model, pd, check_determinism=False)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    unit = plain_gradient(model, pd)
    before = sample_times(unit)
    t_hvp, t_pyh = product_seconds(model, pd, op, v)
    runs, grads = [], before
    for _ in range(args.repeats):
        tic = time.perf_counter()
        rep = run_probes(model, data.train, pcfg)
        runs.append((time.perf_counter() - tic, rep.scalars))
        # the unit: the median of 5 gradients timed before and 5 after each preset, so that a
        # drift of the machine's speed during the presets moves the unit with it
        grads = grads + sample_times(unit)
    t_grad = statistics.median(grads)
    walls = sorted(w for w, _ in runs)
    wall = statistics.median_low(walls)
    s = next(sc for w, sc in runs if w == wall)  # the median run's own ledger
    return {"name": name, "seed": seed, "params": op.dim, "grad_s": t_grad,
            "hvp_ratio": t_hvp / t_grad,
            "pyh_ratio": None if t_pyh is None else t_pyh / t_grad,
            "wall_s": wall, "grad_eq": wall / t_grad, "products": s["hvps"],
            "grad_eq_all": [w / t_grad for w in walls],
            "cost": s.get("probe_cost_seconds", {}), "scalars": s}


def product_seconds(model, pd, op, v, repeats: int = 11) -> tuple[float, float | None]:
    """The median time of one of our products and of one PyHessian 0.1 product (its gradient
    graph built once, as ours; eval mode, the same probe samples as one batch; None when
    PyHessian is not installed), timed alternately so that a drift of the machine's speed
    moves both (until 2026-12-05: five of ours, then five of PyHessian's, which put the MLP's
    pair, about 6 ms each, in either order from one run to the next)."""
    try:
        from pyhessian.hessian import hessian, hessian_vector_product
    except ImportError:
        return median_time(lambda: op.matvec(v), repeats), None
    x = torch.cat([b[0] for b in pd.batches])
    y = torch.cat([b[1] for b in pd.batches])
    model.zero_grad(set_to_none=True)  # PyHessian accumulates into .grad (GUIDE 5)
    model.eval()
    h = hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    vs = [t.view_as(q) for t, q in zip(torch.split(v, [q.numel() for q in h.params]), h.params)]
    ours, theirs = [], []
    for _ in range(repeats):
        ours += sample_times(lambda: op.matvec(v), 1)
        theirs += sample_times(lambda: hessian_vector_product(h.gradsH, h.params, vs), 1)
    model.zero_grad(set_to_none=True)
    return statistics.median(ours), statistics.median(theirs)


def product_only(name: str, overrides: list[str], args, data_dir: str) -> dict:
    """One product against one gradient (ours and PyHessian's, alternated, ``--repeats``
    each) on ``--samples`` probe samples, the model at its seeded initialization with
    BatchNorm statistics from a train-mode pass over those samples: issue #18's goal of a
    product of at most 2.5 gradients, no slower than PyHessian's, on models too large to
    train and probe here. The unit is the median of 3 gradients before and 3 after."""
    from landscope.data import load_data
    from landscope.jobs import seed_everything
    from landscope.models import build_model
    from landscope.probes.hvp import HessianOperator
    from landscope.probes.suite import probe_data

    cfg = compose([*overrides, f"dataset.data_dir={data_dir}", "dataset.train_size="
                   f"{max(args.samples, 64)}", "dataset.test_size=64", "probe=standard",
                   f"probe.data_size={args.samples}", "probe.progress=false"])
    data = load_data(cfg.dataset)
    seed_everything(0)
    model = build_model(cfg.model, data.meta)
    pd = probe_data(data.train, cfg.probe)
    with torch.no_grad():
        model.train()
        for x, _ in pd.batches:
            model(x)
    op = HessianOperator(model, pd, check_determinism=False)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    unit = plain_gradient(model, pd)
    grads = sample_times(unit, 3)
    t_hvp, t_pyh = product_seconds(model, pd, op, v, repeats=max(3, args.repeats))
    t_grad = statistics.median(grads + sample_times(unit, 3))
    return {"name": name, "params": op.dim, "grad_s": t_grad, "hvp_ratio": t_hvp / t_grad,
            "pyh_ratio": None if t_pyh is None else t_pyh / t_grad}


def products_table(args, data_dir: str) -> None:
    """``--products``: the product/gradient table of ``--models`` (names of MODELS or
    PLAN_MODELS) and whether each meets the goal."""
    print(f"one product / one gradient, {args.samples} probe samples, seeded initialization, "
          f"{args.threads} thread(s), float32, CPU, median of {max(3, args.repeats)} alternated")
    print("| model | params | gradient (s) | product / gradient | PyHessian product / gradient |"
          " goal (<= 2.5, <= PyHessian's) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = product_only(name, {**MODELS, **PLAN_MODELS}[name], args, data_dir)
        pyh = "n/a" if r["pyh_ratio"] is None else f"{r['pyh_ratio']:.2f}"
        met = r["hvp_ratio"] <= 2.5 and (r["pyh_ratio"] is None
                                         or r["hvp_ratio"] <= r["pyh_ratio"])
        print(f"| {name} | {r['params']:,} | {r['grad_s']:.3g} | {r['hvp_ratio']:.2f} | {pyh} | "
              f"{'met' if met else 'MISSED'} |", flush=True)


def verify(name: str, overrides: list[str], args, data_dir: str) -> dict:
    from landscope.probes.suite import run_probes

    small = [*overrides, "model.width=8", "model.depth=2"]
    cfg, model, data = trained(small, data_dir, args.epochs)
    pcfg = compose([*small, f"probe={args.preset}", f"probe.data_size={args.samples}",
                    "probe.verify=true", "probe.progress=false"]).probe
    s = run_probes(model.double(), data.train, pcfg).scalars
    return {k: v for k, v in s.items() if k.startswith("verify_")}


def over_seeds(rows: list[dict], seeds: list[int]) -> bool:
    """Whether every model meets issue #18's goal (the median over the training seeds of its
    preset's cost and of its product's ratio); with several seeds, one line per model with the
    medians and ranges, since the cost depends on the point the model was trained to (the
    plain ResNet's trace stops after 30-40 samples, the density after 7-13 steps a run)."""
    met = True
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        cost = statistics.median_low([r["grad_eq"] for r in mine])
        ratio = statistics.median_low([r["hvp_ratio"] for r in mine])
        met = met and cost <= 400 and ratio <= 2.5
        if len(seeds) > 1:
            print(f"{name} over seeds {','.join(map(str, seeds))}: preset {cost:.0f} "
                  f"({min(r['grad_eq'] for r in mine):.0f}-{max(r['grad_eq'] for r in mine):.0f}),"
                  f" product {ratio:.2f} ({min(r['hvp_ratio'] for r in mine):.2f}-"
                  f"{max(r['hvp_ratio'] for r in mine):.2f}), products "
                  f"{', '.join(str(r['products']) for r in mine)}")
    return met


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--products", action="store_true", help="only a product against a gradient")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1 (got {args.repeats})")
    try:
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds must be integers separated by commas (got {args.seeds!r})")
    torch.set_num_threads(args.threads)
    steady = steady_allocator()
    data_dir = tempfile.mkdtemp(prefix="bench_probe_cost_")
    if args.products:
        return products_table(args, data_dir)
    rows = []
    for name, seed in ((n, sd) for n in args.models.split(",") for sd in seeds):
        rows.append(measure(name, MODELS[name], args, data_dir, seed))
        r = rows[-1]
        print(f"{name} (seed {seed}): {r['params']} params, grad {r['grad_s'] * 1e3:.1f} ms, "
              f"hvp/grad {r['hvp_ratio']:.2f}, probe {r['wall_s']:.1f} s = "
              f"{r['grad_eq']:.0f} gradient-equivalents, {r['products']} products"
              + (f" (runs: {', '.join(f'{g:.0f}' for g in r['grad_eq_all'])})"
                 if args.repeats > 1 else ""), flush=True)
    print(f"\nprobe={args.preset}, {args.samples} probe samples, {args.epochs} training epochs, "
          f"{args.threads} thread(s), float32, CPU, "
          f"{'malloc fixed (steady_allocator)' if steady else 'malloc as found'}")
    print("| model | seed | params | product / gradient | PyHessian product / gradient | "
          "preset (gradient-equivalents) | products | per estimator (gradient-equivalents) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        parts = ", ".join(f"{k.removesuffix('_seconds')} {sec / r['grad_s']:.0f}"
                          for k, sec in r["cost"].items())
        pyh = "n/a" if r["pyh_ratio"] is None else f"{r['pyh_ratio']:.2f}"
        print(f"| {r['name']} | {r['seed']} | {r['params']:,} | {r['hvp_ratio']:.2f} | {pyh} | "
              f"{r['grad_eq']:.0f} | {r['products']} | {parts} |")
    goal = over_seeds(rows, seeds)
    print(f"goal (<= 400 gradient-equivalents, product <= 2.5 gradients"
          f"{', medians over the training seeds' if len(seeds) > 1 else ''}): "
          f"{'met' if goal else 'MISSED'}")
    for r in rows:
        s = r["scalars"]
        keys = ("lambda_max", "trace", "trace_stderr", "trace_samples", "density_steps_mean",
                "density_n_outliers", "density_negative_mass", "sharpness_loss_evals",
                "sharpness_grad_evals", "sharpness_acc_evals")
        print(r["name"], r["seed"],
              {k: (round(s[k], 4) if isinstance(s.get(k), float) else s.get(k)) for k in keys})
    if args.verify:
        print("\nverify mode (width 8, depth 2, float64 dense Hessian):")
        for name in args.models.split(","):
            errs = verify(name, MODELS[name], args, data_dir)
            print(name, {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in errs.items()})


if __name__ == "__main__":
    main()
