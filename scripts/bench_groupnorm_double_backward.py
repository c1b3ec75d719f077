"""Would a hand-written GroupNorm double backward make the plain ResNet's product cheaper?

The plain ResNet (``model=resnet model.norm=layer model.skip=false``, GroupNorm(1, C)) is the
one architecture whose ``probe=standard`` misses issue #18's 400 gradient-equivalents: its
product costs 2.2-2.5 gradients, and about 40 % of a product is GroupNorm's second derivative,
which PyTorch builds from its composite (infinitely differentiable) backward. This script holds
the alternative that was measured and not adopted (docs/measurements.md#probes-plain-resnet):
``group_norm`` below, a custom ``autograd.Function`` whose backward is itself a Function with an
analytic backward that works on per-(sample, channel) sums instead of full-size products.

It checks the formula first (``gradcheck`` and ``gradgradcheck`` in float64, 1 and 2 groups),
then times the cached Hessian-vector product of the trained plain ResNet with PyTorch's GroupNorm
and with this one, side by side (median of 7, alternating, 1 thread), and the two products'
relative difference.

    python scripts/bench_groupnorm_double_backward.py [--repeats 3] [--samples 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd import Function

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

aten = torch.ops.aten


class _GroupNormBackward(Function):
    """``(gy, x, mean, rstd, w) -> (gx, gw, gb)`` by the native kernel; its own backward is the
    analytic second derivative."""

    @staticmethod
    def forward(ctx, gy, x, mean, rstd, w, n, c, hw, g):
        ctx.save_for_backward(gy, x, mean, rstd, w)
        ctx.dims = (n, c, hw, g)
        return aten.native_group_norm_backward(gy, x, mean, rstd, w, n, c, hw, g,
                                               [True, True, True])

    @staticmethod
    def backward(ctx, ggx, ggw, ggb):
        gy, x, mean, rstd, w = ctx.saved_tensors
        n, c, hw, g = ctx.dims
        cg = c // g
        inv = 1.0 / (cg * hw)

        def per_channel(t):  # (n, g) -> (n, c)
            return t.reshape(n, g, 1).expand(n, g, cg).reshape(n, c)

        def per_group(t):  # (n, c) -> (n, g), summed over the group's channels
            return t.reshape(n, g, cg).sum(-1)

        x3, gy3, gg3 = x.reshape(n, c, hw), gy.reshape(n, c, hw), ggx.reshape(n, c, hw)
        r = rstd.reshape(n, g)
        rc = per_channel(r)
        xh = (x3 - per_channel(mean.reshape(n, g)).unsqueeze(2)).mul_(rc.unsqueeze(2))
        s_gy, s_gyx = gy3.sum(2), (gy3 * xh).sum(2)
        s_gggy, s_gg, s_ggx = (gg3 * gy3).sum(2), gg3.sum(2), (gg3 * xh).sum(2)
        p, s = per_group(s_gg) * inv, per_group(s_ggx) * inv
        q, t = per_group(s_gy * w) * inv, per_group(s_gyx * w) * inv
        a1 = per_group(s_gggy * w) * inv
        mu_u, mux_u = per_group(s_gy * ggw) * inv, per_group(s_gyx * ggw) * inv
        m1 = mu_u - r * (t * p + s * q)
        c3 = r * (mux_u - 2 * r * s * t) + (a1 - p * q - s * t) * r * r
        pc, sc, wc = per_channel(p), per_channel(s), w.reshape(1, c)
        g_w = (rc * (s_gggy - pc * s_gy - sc * s_gyx)).sum(0)
        g_gy = gg3 * (wc * rc).unsqueeze(2)
        g_gy.addcmul_(xh, (ggw.reshape(1, c) - wc * rc * sc).unsqueeze(2))
        g_gy.add_((ggb.reshape(1, c) - wc * rc * pc).unsqueeze(2))
        g_x = gy3 * (rc * ggw.reshape(1, c) - rc * rc * sc * wc).unsqueeze(2)
        g_x.addcmul_(gg3, per_channel(-(r * r * t)).unsqueeze(2))
        g_x.addcmul_(xh, per_channel(-c3).unsqueeze(2))
        g_x.add_(per_channel(-r * m1).unsqueeze(2))
        return g_gy.reshape(x.shape), g_x.reshape(x.shape), None, None, g_w, None, None, None, None


class _GroupNorm(Function):
    @staticmethod
    def forward(ctx, x, w, b, g, eps):
        n, c = x.shape[0], x.shape[1]
        hw = x.numel() // (n * c)
        y, mean, rstd = aten.native_group_norm(x, w, b, n, c, hw, g, eps)
        ctx.save_for_backward(x, mean, rstd, w)
        ctx.dims = (n, c, hw, g)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, mean, rstd, w = ctx.saved_tensors
        gx, gw, gb = _GroupNormBackward.apply(gy.contiguous(), x, mean, rstd, w, *ctx.dims)
        return gx, gw, gb, None, None


def group_norm(x, groups, weight, bias, eps=1e-5):
    """GroupNorm with affine weight and bias (both required) and the analytic double backward."""
    return _GroupNorm.apply(x.contiguous(), weight, bias, groups, eps)


def check() -> None:
    torch.manual_seed(0)
    for groups in (1, 2):
        x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
        w = torch.randn(4, dtype=torch.float64, requires_grad=True)
        b = torch.randn(4, dtype=torch.float64, requires_grad=True)

        def fn(x, w, b, groups=groups):
            return group_norm(x, groups, w, b)

        assert torch.autograd.gradcheck(fn, (x, w, b))
        assert torch.autograd.gradgradcheck(fn, (x, w, b))
        assert torch.equal(fn(x, w, b), F.group_norm(x, groups, w, b))
    print("gradcheck and gradgradcheck (float64, 1 and 2 groups): passed")


class _Swap(torch.overrides.TorchFunctionMode):
    """F.group_norm -> group_norm while active (inside the probe's loss)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.group_norm:
            names = ("input", "num_groups", "weight", "bias", "eps")
            a = {"weight": None, "bias": None, "eps": 1e-5, **dict(zip(names, args)), **kwargs}
            if a["weight"] is not None and a["bias"] is not None:
                return group_norm(a["input"], a["num_groups"], a["weight"], a["bias"], a["eps"])
        return func(*args, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    check()
    import bench_probe_cost as b
    from landscope.probes import hvp as hvp_module
    from landscope.probes.suite import probe_data

    overrides = b.MODELS["resnet_ln_noskip"]
    _, model, data = b.trained(overrides, tempfile.mkdtemp(prefix="bench_gn_"), 3)
    pcfg = b.compose([*overrides, "probe=standard", f"probe.data_size={args.samples}"]).probe
    pd = probe_data(data.train, pcfg)
    plain_loss = hvp_module.HessianOperator._batch_loss

    def swapped_loss(self, params, x, y):
        with _Swap():
            return plain_loss(self, params, x, y)

    ops = {}
    for name, loss in (("PyTorch", plain_loss), ("analytic", swapped_loss)):
        hvp_module.HessianOperator._batch_loss = loss
        ops[name] = hvp_module.HessianOperator(model, pd, check_determinism=False)
    hvp_module.HessianOperator._batch_loss = plain_loss
    grad_op = hvp_module.HessianOperator(model, pd, check_determinism=False,
                                         method="double_backward")
    v = torch.randn(ops["PyTorch"].dim, generator=torch.Generator().manual_seed(0))
    hv = {k: op.matvec(v) for k, op in ops.items()}
    rel = float((hv["analytic"] - hv["PyTorch"]).norm() / hv["PyTorch"].norm())
    times: dict[str, list[float]] = {k: [] for k in [*ops, "gradient"]}
    fns = {**{k: (lambda op=op: op.matvec(v)) for k, op in ops.items()},
           "gradient": grad_op.gradient}
    for _ in range(args.repeats):
        for k, fn in fns.items():
            samples = []
            for _ in range(7):
                tic = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - tic)
            times[k].append(statistics.median(samples))
    unit = statistics.median(times["gradient"])
    print(f"plain ResNet, {pd.n} probe samples, 1 thread: gradient {unit * 1e3:.1f} ms")
    for k in ops:
        ms = ", ".join(f"{t * 1e3:.1f}" for t in times[k])
        print(f"  product with {k} GroupNorm: {ms} ms "
              f"({statistics.median(times[k]) / unit:.2f} gradients)")
    print(f"  relative difference of the two products: {rel:.2e}")


if __name__ == "__main__":
    main()
