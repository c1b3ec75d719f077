"""Memory and time of one Hessian-vector product with and without activation checkpointing,
and batched products (``matmat``) against single ones.

For each model (float32, eval mode, random data, one micro-batch) and each product method
(``cached``, ``double_backward``) it builds a :class:`~landscope.probes.hvp.HessianOperator`
without and with :func:`~landscope.probes.memory.activation_checkpointing` and reports, by
:func:`~landscope.probes.memory.peak_memory` (on CPU: the peak of live tensor storage bytes
allocated by aten ops; on CUDA: ``max_memory_allocated``):

* ``build`` -- the operator's construction (for ``cached``: the gradient graph it keeps,
  ``kept`` = what is still held afterwards),
* ``product`` -- one product on top of that,
* ``gradient`` -- one plain gradient (what checkpointing is designed for), for scale,

and the median time of a product (measured without the tracker), with the ratio
checkpointed / plain.  Every checkpointed product is checked against the plain one.

The second table times ``matmat(op, V)`` (one batched backward through the cached graph)
against ``k`` single products for ``k`` = 4 and 8, interleaved, median of the repeats.

    python scripts/bench_memory.py [--repeats 5] [--threads 1] [--samples 256]
                                   [--image-samples 64] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
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
from landscope.probes.batched import matmat  # noqa: E402
from landscope.probes.hvp import HessianOperator  # noqa: E402
from landscope.probes.memory import activation_checkpointing, peak_memory  # noqa: E402
from landscope.probes.probe_data import ProbeData  # noqa: E402

MNIST1D, CIFAR = ((1, 40), 10), ((3, 32, 32), 10)
MODELS: dict[str, tuple[dict[str, Any], tuple[tuple[int, ...], int]]] = {
    "mlp w128 d6": (dict(name="mlp", width=128, depth=6), MNIST1D),
    "cnn w16 d3 bn": (dict(name="cnn", width=16, depth=3, norm="batch"), MNIST1D),
    "resnet w16 d6 bn": (dict(name="resnet", width=16, depth=6, norm="batch", skip=True),
                         MNIST1D),
    "vit w32 d4 ln": (dict(name="vit", width=32, depth=4, norm="layer", skip=True, heads=4,
                           patch_size=4), MNIST1D),
    "resnet18 w8 bn 3x32x32": (dict(name="resnet18", width=8, depth=18, norm="batch", skip=True),
                               CIFAR),
}
MB = 2.0 ** 20


def make_model(cfg: dict[str, Any], shape: tuple[int, ...], classes: int) -> torch.nn.Module:
    return build_model(cfg, types.SimpleNamespace(input_shape=shape, num_classes=classes))


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def bench_model(label: str, cfg: dict[str, Any], shape: tuple[int, ...], classes: int,
                samples: int, repeats: int, device: torch.device
                ) -> tuple[list[list[str]], list[list[str]]]:
    torch.manual_seed(0)
    model = make_model(cfg, shape, classes).to(device)
    x = torch.randn(samples, *shape).to(device)
    y = torch.randint(0, classes, (samples,)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model.train()
        model(x + 0.5)
    model.eval()
    data = ProbeData.from_tensors(x, y, samples)
    v = torch.randn(sum(p.numel() for p in model.parameters())).to(device)
    measure = lambda fn: peak_memory(fn, device)  # noqa: E731
    rows: list[list[str]] = []
    ops: dict[str, HessianOperator] = {}
    for method in ("cached", "double_backward"):
        base: dict[str, float] = {}
        ref = None
        for ck in (False, True):
            ctx = activation_checkpointing(model) if ck else contextlib.nullcontext()
            with ctx:
                build = measure(lambda method=method: HessianOperator(
                    model, data, method=method, check_determinism=False))
                op = build.result
                product = measure(lambda op=op: op.matvec(v))
                grad = measure(lambda: HessianOperator(
                    model, data, method="double_backward", check_determinism=False).gradient())
                t = median_time(lambda op=op: (op.matvec(v), sync()), repeats)
            hv = product.result
            if ref is None:
                ref, base["t"] = hv, t
                ops[method] = op
            err = float((hv - ref).norm() / ref.norm())
            assert err < 1e-4, f"{label} {method}: checkpointed product off by {err:.1e}"
            rows.append([label, f"{count_parameters(model):,}", method, "on" if ck else "off",
                         f"{build.peak_bytes / MB:.1f}", f"{build.retained_bytes / MB:.1f}",
                         f"{product.peak_bytes / MB:.1f}", f"{grad.peak_bytes / MB:.1f}",
                         f"{t * 1e3:.1f}", f"{t / base['t']:.2f}"])
            del op, build, product
    batched_rows = []
    op = ops["cached"]
    for k in (4, 8):
        V = torch.randn(op.dim, k).to(device)
        single = [0.0] * repeats
        batch = [0.0] * repeats
        for r in range(repeats):  # interleaved
            tic = time.perf_counter()
            ref = torch.stack([op.matvec(V[:, j].contiguous()) for j in range(k)], 1)
            sync()
            single[r] = time.perf_counter() - tic
            tic = time.perf_counter()
            out = matmat(op, V)
            sync()
            batch[r] = time.perf_counter() - tic
        err = float((out - ref).norm() / ref.norm())
        assert err < 1e-4, f"{label}: matmat off by {err:.1e}"
        ts, tb = statistics.median(single), statistics.median(batch)
        batched_rows.append([label, str(k), f"{ts * 1e3:.1f}", f"{tb * 1e3:.1f}",
                             f"{tb / ts:.2f}"])
    return rows, batched_rows


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(fmt, rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=256, help="mnist1d-shaped models")
    ap.add_argument("--image-samples", type=int, default=64, help="the 3x32x32 ResNet")
    ap.add_argument("--quick", action="store_true", help="skip the 3x32x32 ResNet")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.samples} samples "
          f"(3x32x32: {args.image_samples}), float32, eval mode, memory measured on {device}")
    rows, brows = [], []
    for label, (cfg, (shape, classes)) in MODELS.items():
        if args.quick and shape == CIFAR[0]:
            continue
        tic = time.perf_counter()
        image = shape == CIFAR[0]
        r, b = bench_model(label, cfg, shape, classes,
                           args.image_samples if image else args.samples,
                           min(args.repeats, 3) if image else args.repeats, device)
        rows += r
        brows += b
        print(f"  {label}: {time.perf_counter() - tic:.0f} s", file=sys.stderr)
    print("\nOne product, activation checkpointing off/on (MiB; time = median of one product)")
    print(table(["model", "params", "method", "ckpt", "build peak", "kept", "product peak",
                 "gradient peak", "product ms", "time / off"], rows))
    print("\nH @ V: one batched backward (matmat) against k single products (cached graph)")
    print(table(["model", "k", "k products ms", "matmat ms", "ratio"], brows))


if __name__ == "__main__":
    main()
