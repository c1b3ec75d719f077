"""Per-layer/per-block spectra (landscope.probes.blocks) against the diagonal blocks of the dense
float64 Hessian: top-3 eigenvalues to relative error 1e-6, traces exact or within 3 stderr, and
the exact identity tr H = sum of block traces."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from landscope.config import ProbeConfig, TraceConfig
from landscope.data import TensorSplit
from landscope.errors import LandscopeError
from landscope.probes.blocks import EXACT_TRACE_MAX, block_spectra, parameter_groups
from landscope.probes.probe_data import ProbeData
from landscope.probes.suite import run_probes
from landscope.probes.verify import dense_hessian, spectrum
from probe_models import seeded_model

torch.set_num_threads(1)

META = types.SimpleNamespace(input_shape=(1, 12), num_classes=3)
MODELS = {
    "mlp": dict(name="mlp", width=8, depth=3),
    "cnn_bn": dict(name="cnn", width=2, depth=2, norm="batch"),
    "resnet_bn": dict(name="resnet", width=2, depth=2, norm="batch", skip=True),
    "vit_ln": dict(name="vit", width=4, depth=2, norm="layer", skip=True, heads=2, patch_size=4,
                   activation="gelu"),
}


def make(name: str, n: int = 24):
    model, x, y = seeded_model(MODELS[name], META.input_shape, META.num_classes, n, shift=0.3)
    return model, ProbeData.from_tensors(x, y, micro_batch=10)


def test_groups_follow_the_architecture():
    mlp, _ = make("mlp")
    assert list(parameter_groups(mlp, "block")) == ["input_layer", "hidden.0", "hidden.1", "head"]
    assert list(parameter_groups(mlp, "layer")) == ["input_layer.linear", "hidden.0.linear",
                                                    "hidden.1.linear", "head"]
    resnet, _ = make("resnet_bn")
    blocks = parameter_groups(resnet, "block")
    assert list(blocks) == ["stem", "blocks.0", "blocks.1", "head"]  # stem (conv+bn) stays one
    assert "blocks.1.shortcut.0.weight" in blocks["blocks.1"]
    vit, _ = make("vit_ln")
    vblocks = parameter_groups(vit, "block")
    assert list(vblocks)[:2] == ["cls_token", "pos_embed"] and "blocks.1" in vblocks
    layers = parameter_groups(vit, "layer")
    assert layers["blocks.0.attn.qkv"] == ["blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"]
    for groups in (blocks, layers, vblocks):  # a partition of the trainable parameters
        flat = [p for members in groups.values() for p in members]
        assert len(flat) == len(set(flat))
    assert (sorted(p for m in layers.values() for p in m)
            == sorted(n for n, _ in vit.named_parameters()))
    with pytest.raises(LandscopeError, match="per-block level"):
        parameter_groups(vit, "neuron")


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("level", ["block", "layer"])
def test_block_spectra_match_dense_diagonal_blocks(name, level):
    model, data = make(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h = dense_hessian(model, data)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    starts = dict(zip(names, np.cumsum([0] + sizes[:-1])))
    groups = parameter_groups(model, level)
    spectra = block_spectra(model, data, groups, k=3, seed=1)
    total, total_var = 0.0, 0.0
    for b in spectra:
        idx = torch.cat([torch.arange(starts[p], starts[p] + model.get_parameter(p).numel())
                         for p in b.params])
        exact = spectrum(h[idx][:, idx]).flip(0)
        k = len(b.eigenvalues)
        assert k == min(3, len(idx)) and b.n_params == len(idx) and b.converged
        scale = max(float(exact.abs().max()), 1e-8)
        err = (b.eigenvalues - exact[:k]).abs() / torch.clamp(exact[:k].abs(), min=1e-3 * scale)
        assert float(err.max()) <= 1e-6, (b.name, b.eigenvalues, exact[:k])
        exact_tr = float(exact.sum())
        if b.n_params <= EXACT_TRACE_MAX:
            assert b.trace_stderr == 0 and abs(b.trace - exact_tr) <= 1e-9 * max(1, abs(exact_tr))
        else:
            assert abs(b.trace - exact_tr) <= 3 * b.trace_stderr + 1e-12, (b.name, b.trace,
                                                                           exact_tr)
        # interlacing: a principal block's top eigenvalue is at most lambda_max(H)
        assert float(b.eigenvalues[0]) <= float(spectrum(h)[-1]) * (1 + 1e-9)
        total, total_var = total + b.trace, total_var + b.trace_stderr ** 2
    full_trace = float(torch.trace(h))
    assert abs(total - full_trace) <= 3 * total_var ** 0.5 + 1e-9 * max(1, abs(full_trace))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_per_block_in_the_probe_suite_with_verify():
    model, data = make("resnet_bn", n=40)
    x = torch.cat([b[0] for b in data.batches]).float()
    split = TensorSplit(x, torch.cat([b[1] for b in data.batches]))
    cfg = ProbeConfig(top_k=2, trace=TraceConfig(enabled=True), per_block="block",
                      block_top_k=2, verify=True,
                      data_size=None, micro_batch=16)
    rep = run_probes(model.float(), split, cfg)
    s, a = rep.scalars, rep.arrays
    assert (s["per_block"] == "block"
            and list(s["blocks"]) == ["stem", "blocks.0", "blocks.1", "head"])
    assert all(0 <= b["lambda_max_share"] <= 1 + 1e-3 for b in s["blocks"].values())
    assert a["block_eigenvalues"].shape == (4, 2) and list(a["block_names"]) == list(s["blocks"])
    assert s["verify_block_top_max_rel_error"] < 1e-3  # float32 model, float64 reference
    assert s["block_hvps"] > 0



def test_the_plan_counts_the_blocks_and_a_cap_stops_them():
    """The per-block spectra are in the plan (their fewest and most products, from the groups'
    sizes) and under probe.max_products: their products count with the run's, a cap stops them
    between blocks or inside one, and the run says so (blocks_stopped_by, the caps' line)."""
    from landscope.probes.blocks import group_sizes
    from landscope.probes.plan import fewest_products, most_products

    model, data = make("mlp", n=40)
    x = torch.cat([b[0] for b in data.batches]).float()
    split = TensorSplit(x, torch.cat([b[1] for b in data.batches]))
    cfg = ProbeConfig(top_k=2, trace=TraceConfig(enabled=True), per_block="layer",
                      block_top_k=2, data_size=None, micro_batch=40, progress=False)
    sizes = group_sizes(model, "layer")
    assert sizes == [104, 72, 72, 27]  # (12 + 1) x 8, (8 + 1) x 8 twice, (8 + 1) x 3
    lines: list[str] = []
    free = run_probes(model.float(), split, cfg, log=lines.append).scalars
    full = fewest_products(cfg, 275)
    assert free["probe_plan"]["blocks"] == most_products(cfg, 275, sizes)["blocks"]
    assert fewest_products(cfg, 275, sizes) - full <= free["block_hvps"] \
        <= free["probe_plan"]["blocks"]
    assert "blocks <= " in lines[0] and "blocks_stopped_by" not in free
    assert free["probe_cost"]["blocks"]["products"] == free["block_hvps"]

    lines.clear()
    cap = free["hvps"] + 40  # the full-Hessian estimators, then 40 of the blocks' products
    cut = run_probes(model.float(), split, ProbeConfig(**{**cfg.__dict__, "max_products": cap}),
                     log=lines.append).scalars
    assert cut["blocks_stopped_by"] == "max_products" and cut["block_hvps"] == 40
    assert len(cut["blocks"]) < 4 or any(b.get("stopped_by") for b in cut["blocks"].values())
    assert any("blocks (max_products)" in line for line in lines)


def test_suite_trace_stops_at_trace_max_samples():
    """An unreachable target RSE runs to probe.trace.max_samples, and trace_stderr tells."""
    model, data = make("mlp", n=40)
    x = torch.cat([b[0] for b in data.batches]).float()
    split = TensorSplit(x, torch.cat([b[1] for b in data.batches]))
    cfg = ProbeConfig(top_k=0, trace=TraceConfig(enabled=True, rse=1e-9, max_samples=25),
                      data_size=None, micro_batch=40)
    s = run_probes(model.float(), split, cfg).scalars
    assert s["trace_samples"] == 25 and s["trace_stderr"] > 1e-9 * abs(s["trace"])
