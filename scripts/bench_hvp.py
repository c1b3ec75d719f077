"""Hessian-vector product methods of :class:`landscope.probes.hvp.HessianOperator`, timed.

For each model (same random mnist1d-shaped data, float32, eval mode) it times one product
with each method -- ``cached`` (gradient graph built once, one backward per product),
``double_backward`` (fresh forward + gradient graph + backward per product) and
``forward_over_reverse`` (``torch.func.jvp`` of ``torch.func.grad``) -- against a plain
gradient (forward + backward, the model called directly:
``bench_probe_cost.plain_gradient``).  Methods are interleaved in rotating order over the
repeats and the median is reported; ``cached`` also reports its one-off build time (median
of 3).
Every method's product is checked against ``double_backward`` before timing.

    python scripts/bench_hvp.py [--repeats 9] [--threads 1] [--samples 1000]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from landscope.models import build_model, count_parameters  # noqa: E402
from landscope.probes.hvp import METHODS, HessianOperator  # noqa: E402
from landscope.probes.probe_data import ProbeData  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from bench_probe_cost import plain_gradient  # noqa: E402

INPUT_SHAPE, CLASSES = (1, 40), 10
MODELS: dict[str, tuple[dict[str, Any], int]] = {  # name -> (model config, micro-batch)
    "mlp w128 d3": (dict(name="mlp", width=128, depth=3), 1000),
    "cnn w16 d2 bn": (dict(name="cnn", width=16, depth=2, norm="batch"), 500),
    "resnet w16 d2 bn": (dict(name="resnet", width=16, depth=2, norm="batch", skip=True), 500),
    "vit w32 d2 ln": (dict(name="vit", width=32, depth=2, norm="layer", skip=True, heads=4,
                           patch_size=4), 500),
}


def timed(fn: Callable[[], Any]) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def bench_model(cfg: dict[str, Any], micro_batch: int, samples: int, repeats: int
                ) -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    meta = types.SimpleNamespace(input_shape=INPUT_SHAPE, num_classes=CLASSES)
    model = build_model(cfg, meta)
    x, y = torch.randn(samples, *INPUT_SHAPE), torch.randint(0, CLASSES, (samples,))
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model.train()
        model(x)
    model.eval()
    data = ProbeData.from_tensors(x, y, micro_batch)
    ops = {m: HessianOperator(model, data, method=m,  # type: ignore[arg-type]
                              check_determinism=False, max_cached_batches=10**6)
           for m in METHODS}
    v = torch.randn(ops["cached"].dim)
    ref = ops["double_backward"].matvec(v)
    for m, op in ops.items():
        err = float((op.matvec(v) - ref).norm() / ref.norm())
        assert err < 1e-4, f"{m} disagrees with double_backward: {err:.1e}"
    tasks: dict[str, Callable[[], Any]] = {m: functools.partial(op.matvec, v)
                                           for m, op in ops.items()}
    tasks["gradient"] = plain_gradient(model, data)  # the model called directly (the unit)
    times: dict[str, list[float]] = {k: [] for k in tasks}
    keys = list(tasks)
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[k].append(timed(tasks[k]))
    med = {k: statistics.median(t) for k, t in times.items()}
    build = statistics.median(timed(lambda: HessianOperator(
        model, data, method="cached", check_determinism=False)) for _ in range(3))
    rows = [(k, med[k], med[k] / med["gradient"]) for k in keys]
    rows.append(("cached build", build, build / med["gradient"]))
    print(f"\n{cfg['name']}: {count_parameters(model, trainable_only=True)} params, {samples} "
          f"samples, micro-batch {micro_batch}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--only", nargs="*", default=None, help="model keys to run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, eval mode, "
          f"median of {args.repeats} interleaved repeats")
    for name, (cfg, mb) in MODELS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        rows = bench_model(cfg, mb, args.samples, args.repeats)
        db = dict((k, s) for k, s, _ in rows)["double_backward"]
        print(f"{'model':<18} {'method':<22} {'s/product':>10} {'x gradient':>11} "
              f"{'x double_backward':>18}")
        for k, s, ratio in rows:
            print(f"{name:<18} {k:<22} {s:>10.4f} {ratio:>11.2f} {s / db:>18.2f}")


if __name__ == "__main__":
    main()
