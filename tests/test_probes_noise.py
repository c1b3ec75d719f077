"""Tests for landscope.probes.noise: per-sample gradients against an explicit autograd loop,
noise covariance statistics against dense D x D matrices, tr(H Sigma) against a dense
float64 Hessian, and the pure-math helpers on synthetic matrices with known answers."""

from __future__ import annotations

import copy
import functools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscope.errors import LandscopeError
from landscope.probes.hvp import HessianOperator
from landscope.probes.lanczos import EigResult, lanczos_eigs
from landscope.probes.noise import (
    alignment_exact,
    alignment_hutchinson,
    alignment_lowrank,
    alignment_ratio,
    center,
    energy_share,
    gradient_noise,
    gram,
    noise_eigs,
    noise_trace,
    per_sample_gradients,
    per_sample_rows,
)
from landscope.probes.operator import DenseOperator, quadratic_with_spectrum
from landscope.probes.probe_data import ProbeData
from landscope.probes.verify import dense_hessian
from probe_models import seeded_model

torch.set_num_threads(1)

CLASSES = 3
MODELS = {  # name -> (model config, input shape, n samples)
    "mlp": (dict(name="mlp", width=6, depth=2), (1, 12), 40),
    "cnn_bn": (dict(name="cnn", width=2, depth=2, norm="batch"), (1, 6, 6), 16),
    "vit_ln": (dict(name="vit", width=4, depth=1, norm="layer", skip=True, heads=2,
                    patch_size=4, activation="gelu"), (1, 12), 16),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@functools.lru_cache(maxsize=None)
def make(name: str) -> tuple[nn.Module, ProbeData]:
    """A float64 eval-mode model (BatchNorm running stats != batch stats) and probe data."""
    cfg, shape, n = MODELS[name]
    model, x, y = seeded_model(cfg, shape, CLASSES, n)
    return model, ProbeData.from_tensors(x, y, micro_batch=7)


@functools.lru_cache(maxsize=None)
def loop_grads(name: str) -> torch.Tensor:
    """Reference: one ``autograd.grad`` per sample through the model's own parameters."""
    model, data = make(name)
    rows = []
    for xb, yb in data.batches:
        for xi, yi in zip(xb, yb):
            loss = F.cross_entropy(model(xi[None]), yi[None])
            gs = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                   for g, p in zip(gs, model.parameters())]))
    return torch.stack(rows)


@functools.lru_cache(maxsize=None)
def dense_h(name: str) -> torch.Tensor:
    model, data = make(name)
    h = dense_hessian(model, data)
    return (h + h.T) / 2


def dense_sigma(g: torch.Tensor) -> torch.Tensor:
    """``(1/n) sum_i g_i g_i^T - g_bar g_bar^T`` formed explicitly (D x D)."""
    mean = g.mean(0)
    return g.T @ g / g.shape[0] - torch.outer(mean, mean)


def eig_result(values: torch.Tensor, vectors: torch.Tensor) -> EigResult:
    k = values.numel()
    return EigResult(eigenvalues=values, eigenvectors=vectors, residuals=torch.zeros(k),
                     converged=torch.ones(k, dtype=torch.bool), n_matvecs=0, iterations=0)


# ------------------------------------------------------------------ per-sample gradients
@pytest.mark.parametrize("name", list(MODELS))
def test_per_sample_gradients_match_explicit_loop(name):
    model, data = make(name)
    state = copy.deepcopy(model.state_dict())
    ref = loop_grads(name)
    for chunk in (64, 3):
        g = per_sample_gradients(model, data, chunk=chunk)
        assert g.shape == ref.shape
        assert float((g - ref).abs().max()) <= 1e-10 * float(ref.abs().max())
    g_loop = per_sample_gradients(model, data, vectorize=False)
    assert float((g_loop - ref).abs().max()) <= 1e-10 * float(ref.abs().max())
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_per_sample_gradients_param_subset_and_train_mode():
    model, data = make("mlp")
    names = [n for n, _ in model.named_parameters()][-2:]
    sub = {n: p for n, p in model.named_parameters() if n in names}
    g = per_sample_gradients(model, data, params=sub)
    dim = sum(p.numel() for p in sub.values())
    assert torch.allclose(g, loop_grads("mlp")[:, -dim:], rtol=0, atol=1e-12)
    # No BatchNorm, no randomness: train mode equals eval mode; flags are restored.
    assert torch.allclose(per_sample_gradients(model, data, mode="train"), loop_grads("mlp"),
                          rtol=0, atol=1e-12) and not model.training
    bn, bn_data = make("cnn_bn")
    with pytest.raises(LandscopeError, match="BatchNorm"):
        per_sample_gradients(bn, bn_data, mode="train")


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_rows_do_what_the_dense_matrix_does(name):
    """The noise step keeps C as the parameters' column blocks (no n x D concatenation): every
    operation it uses agrees with the dense matrix's (float64, 1e-13 relative), over several
    chunks and micro-batches as over one."""
    model, data = make(name)
    rows = per_sample_rows(model, data, chunk=3)
    assert len(rows.blocks) == len(list(model.parameters()))
    assert rows.shape == (data.n, sum(p.numel() for p in model.parameters()))
    dense = per_sample_gradients(model, data)
    assert torch.equal(per_sample_rows(model, data).dense(), dense)
    # other chunks: other batch sizes of the same vmapped ops, equal to rounding
    assert float((rows.dense() - dense).abs().max()) <= 1e-13 * float(dense.abs().max())
    dense = rows.dense()
    mean, c = center(dense)
    got_mean = rows.center_()
    scale = float(dense.abs().max())
    assert float((got_mean - mean).abs().max()) <= 1e-13 * scale
    assert float((rows.dense() - c).abs().max()) <= 1e-13 * scale
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(c.shape[1], 3, generator=gen, dtype=c.dtype)
    u = torch.randn(c.shape[0], 3, generator=gen, dtype=c.dtype)
    for got, want in ((gram(rows), c @ c.T / c.shape[0]), (rows @ v, c @ v),
                      (rows @ v[:, 0], c @ v[:, 0]), (rows.T @ u, c.T @ u),
                      (rows.T @ u[:, 0], c.T @ u[:, 0]), (torch.stack(list(rows)), c)):
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= 1e-13 * float(want.abs().max())
    assert math.isclose(noise_trace(rows), noise_trace(c), rel_tol=1e-13)
    vq, _ = torch.linalg.qr(v)
    assert math.isclose(energy_share(rows, vq), energy_share(c, vq), rel_tol=1e-12)
    lam, vecs = noise_eigs(rows, 3)
    ref_lam, ref_vecs = noise_eigs(c, 3)
    assert float((lam - ref_lam).abs().max()) <= 1e-12 * float(ref_lam[0])
    assert float(((vecs * ref_vecs).sum(0).abs() - 1).abs().max()) <= 1e-9


# ------------------------------------------------------------------ statistics vs dense
@pytest.mark.parametrize("name", list(MODELS))
def test_noise_statistics_match_dense(name):
    model, data = make(name)
    op = HessianOperator(model, data)
    g = per_sample_gradients(model, data)
    mean, c = center(g)
    assert rel(mean, op.gradient()) <= 1e-10
    ref = loop_grads(name)
    sigma = dense_sigma(ref)
    assert abs(noise_trace(c) - float(torch.trace(sigma))) <= 1e-10 * float(torch.trace(sigma))
    assert math.isclose(noise_trace(c), float(((ref - ref.mean(0)) ** 2).sum(1).mean()),
                        rel_tol=1e-10)
    lam, v = noise_eigs(c, 6)
    ref_lam = torch.linalg.eigvalsh(sigma).flip(0)[:6]
    assert lam.shape == (6,) and float((lam - ref_lam).abs().max()) <= 1e-10 * float(ref_lam[0])
    assert float((v.T @ v - torch.eye(6, dtype=v.dtype)).abs().max()) <= 1e-10
    assert float((sigma @ v - v * lam).norm()) <= 1e-9 * float(ref_lam[0])
    h = dense_h(name)
    ref_align = float(torch.trace(h @ sigma))
    before = op.n_matvecs
    exact = alignment_exact(c, op)
    assert op.n_matvecs - before == data.n
    assert abs(exact - ref_align) <= 1e-10 * float((h.abs() @ sigma.abs()).trace())
    # Low rank with every nonzero eigenpair of Sigma (rank <= n - 1) is exact.
    lam_all, v_all = noise_eigs(c, data.n)
    assert lam_all.numel() <= data.n - 1
    assert abs(alignment_lowrank(lam_all, v_all, op) - ref_align) <= \
        1e-9 * float((h.abs() @ sigma.abs()).trace())
    evals, evecs = torch.linalg.eigh(h)
    top = evecs[:, -4:]
    ref_share = float(torch.trace(top.T @ sigma @ top) / torch.trace(sigma))
    assert abs(energy_share(c, top) - ref_share) <= 1e-10


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_trace_sigma_read_off_the_gram_matrix_is_the_sum_of_squares(dtype, tol):
    """``gradient_noise`` takes tr Sigma as the Gram matrix's trace: within ``tol`` (relative)
    of the float64 sum of squares of the same centered per-sample gradients."""
    model, data = make("cnn_bn")
    model, data = model.to(dtype), data.to(dtype, torch.device("cpu"))
    res = gradient_noise(model, data, trace_h=1.0, alignment="lowrank", k_sigma=1)
    _, c = center(per_sample_gradients(model, data).double())
    ref = float((c * c).sum()) / data.n
    assert abs(res.trace_sigma - ref) <= tol * ref


def test_gradient_noise_end_to_end_against_dense():
    model, data = make("mlp")
    h = dense_h("mlp")
    evals, evecs = torch.linalg.eigh(h)
    top = eig_result(evals.flip(0)[:3], evecs.flip(1)[:, :3])
    op = HessianOperator(model, data)
    res = gradient_noise(model, data, hessian=op, top_k_eigs=top, k_sigma=4,
                         trace_h=float(torch.trace(h)))
    sigma = dense_sigma(loop_grads("mlp"))
    dim = h.shape[0]
    ref_align = float(torch.trace(h @ sigma))
    ref_iso = float(torch.trace(sigma)) / dim * float(torch.trace(h))
    assert (res.n, res.dim, res.top_k, res.alignment_method) == (data.n, dim, 3, "exact")
    assert res.alignment_hvps == data.n and res.n_hvps == data.n
    assert rel(res.mean_gradient, op.gradient()) <= 1e-10
    assert math.isclose(res.trace_h_sigma, ref_align, rel_tol=1e-9)
    assert math.isclose(res.isotropic_reference, ref_iso, rel_tol=1e-10)
    assert math.isclose(res.alignment_ratio, ref_align / ref_iso, rel_tol=1e-9)
    kappa = ref_align / ref_iso
    assert math.isclose(res.difficulty_index,
                        float(evals[-1]) ** 2 / float(torch.trace(h)) * kappa, rel_tol=1e-9)
    ref_share = float(torch.trace(top.eigenvectors.T @ sigma @ top.eigenvectors)
                      / torch.trace(sigma))
    assert math.isclose(res.top_k_energy_share, ref_share, rel_tol=1e-10)
    assert res.sigma_eigenvalues.shape == (4,) and res.trace_h_sigma_stderr == 0.0

    # Estimated variants: Hutchinson on the n-side and on tr H, Lanczos for lambda_max.
    est = gradient_noise(model, data, hessian=op, alignment="hutchinson", n_probes=200,
                         trace_samples=200, seed=1)
    assert est.alignment_hvps == 200 and est.top_k_energy_share is None
    assert abs(est.trace_h_sigma - ref_align) <= 5 * est.trace_h_sigma_stderr
    assert abs(est.trace_h - float(torch.trace(h))) <= 5 * est.trace_h_stderr
    assert math.isclose(est.lambda_max, float(evals[-1]), rel_tol=1e-6)
    lanczos_hvps = est.n_hvps - 400  # k=1 Lanczos for lambda_max, with verification
    assert 1 <= lanczos_hvps <= op.dim + 1
    low = gradient_noise(model, data, hessian=op, alignment="lowrank", k_sigma=data.n,
                         top_k_eigs=lanczos_eigs(op, k=3), trace_h=1.0)
    assert math.isclose(low.trace_h_sigma, ref_align, rel_tol=1e-8)
    assert math.isclose(low.top_k_energy_share, ref_share, rel_tol=1e-6)
    with pytest.raises(LandscopeError, match="alignment"):
        gradient_noise(model, data, hessian=op, alignment="nope")  # type: ignore[arg-type]


# ------------------------------------------------------------------ synthetic math
def test_isotropic_noise_has_alignment_ratio_one():
    dim = 10
    h, q = quadratic_with_spectrum(torch.linspace(-1.0, 5.0, dim, dtype=torch.float64), seed=3)
    op = DenseOperator(h)
    # Rows +-a e_i (any rotation): Sigma = (2a^2/n) I exactly, n = 2D.
    rot, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(1)))
    c = torch.cat([torch.eye(dim), -torch.eye(dim)]).double() * 0.7 @ rot
    mean, c = center(c)
    assert float(mean.abs().max()) <= 1e-15
    ts = noise_trace(c)
    assert math.isclose(ts, 0.49, rel_tol=1e-12)  # tr = 2 a^2 D / n = a^2
    ths = alignment_exact(c, op)
    assert math.isclose(alignment_ratio(ths, ts, dim, float(torch.trace(h))), 1.0, rel_tol=1e-12)
    lam, _ = noise_eigs(c, 3)
    assert torch.allclose(lam, torch.full((3,), 0.049, dtype=torch.float64), rtol=1e-12)
    assert math.isclose(energy_share(c, q[:, -3:]), 3 / dim, rel_tol=1e-12)
    # Random Gaussian rows: isotropic in expectation, ratio ~ 1 within sampling error.
    g = torch.randn(4000, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, cg = center(g)
    ratio = alignment_ratio(alignment_exact(cg, op), noise_trace(cg), dim, float(torch.trace(h)))
    assert abs(ratio - 1.0) < 0.1


def test_noise_in_sharp_or_flat_eigenspace():
    dim = 12
    spec = torch.tensor([10.0, 8.0, 6.0] + [0.5] * (dim - 3), dtype=torch.float64)
    h, q = quadratic_with_spectrum(spec, seed=4)  # q columns are eigenvectors of spec order
    op = DenseOperator(h)
    gen = torch.Generator().manual_seed(5)
    coef = torch.randn(30, 3, dtype=torch.float64, generator=gen)
    _, sharp = center(coef @ q[:, :3].T)  # rows in the top-3 eigenspace
    _, flat = center(torch.randn(30, dim - 3, dtype=torch.float64, generator=gen) @ q[:, 3:].T)
    assert math.isclose(energy_share(sharp, q[:, :3]), 1.0, rel_tol=1e-12)
    assert energy_share(flat, q[:, :3]) <= 1e-12
    tr_h = float(spec.sum())
    r_sharp = alignment_ratio(alignment_exact(sharp, op), noise_trace(sharp), dim, tr_h)
    r_flat = alignment_ratio(alignment_exact(flat, op), noise_trace(flat), dim, tr_h)
    assert r_sharp > 2.0 > 1.0 > r_flat
    assert r_flat == pytest.approx(0.5 / (tr_h / dim), rel=1e-12)  # flat H is 0.5 there
    # Hutchinson over the n-side is unbiased; low rank with rank(Sigma)=3 pairs is exact.
    ref = alignment_exact(sharp, op)
    est, err = alignment_hutchinson(sharp, op, 400, seed=0)
    assert 0 < err and abs(est - ref) <= 5 * err
    lam, v = noise_eigs(sharp, 10)
    assert lam.numel() == 3  # null space of Sigma dropped
    assert math.isclose(alignment_lowrank(lam, v, op), ref, rel_tol=1e-10)


def test_gram_trick_on_known_covariance():
    dim, n = 9, 6
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(n, dim, dtype=torch.float64, generator=gen)
    _, c = center(g)
    sigma = c.T @ c / n
    lam, v = noise_eigs(c, 10)
    ref = torch.linalg.eigvalsh(sigma).flip(0)
    assert lam.numel() == n - 1  # centering removes one dimension
    assert torch.allclose(lam, ref[:n - 1], rtol=1e-12, atol=0)
    assert float((sigma @ v - v * lam).norm()) <= 1e-12
    assert math.isclose(noise_trace(c), float(torch.trace(sigma)), rel_tol=1e-13)


# ------------------------------------------------------------ the per-sample rows' memory
def test_available_memory_is_read_on_the_cpu():
    from landscope.probes.per_sample import available_bytes

    avail = available_bytes(torch.device("cpu"))
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo here")
    total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo")
                 if line.startswith("MemTotal:"))
    assert avail is not None and 0 < avail <= total


def test_rows_that_do_not_fit_are_refused_with_the_most_that_fit(monkeypatch):
    from landscope.probes import per_sample

    monkeypatch.setattr(per_sample, "available_bytes", lambda device: 10 * 2 ** 30)
    # 256 x 21.8M float32 rows, twice that at the peak: 41.6 GiB
    line = per_sample.rows_memory_problem(256, 21_800_000, torch.float32, torch.device("cpu"))
    assert line.startswith("probe.noise.samples=256 needs about 41.6 GiB")
    assert "256 x 21,800,000 parameters in float32" in line and "10.0 GiB are available" in line
    most = int(line.split("probe.noise.samples <= ")[1].split(",")[0])
    assert most == 61  # 10 GiB / (2 x 4 B x 21.8M)
    assert per_sample.rows_memory_problem(most, 21_800_000, torch.float32,
                                          torch.device("cpu")) is None
    two = per_sample.rows_memory_problem(most, 21_800_000, torch.float32, torch.device("cpu"),
                                         processes=2)
    assert ", 2 processes)" in two and "probe.noise.samples <= 30," in two
    assert "no 2 samples fit" in per_sample.rows_memory_problem(
        256, 10 ** 10, torch.float64, torch.device("cpu"))
    monkeypatch.setattr(per_sample, "available_bytes", lambda device: 40 * 2 ** 20)
    small = per_sample.rows_memory_problem(256, 39_562, torch.float32, torch.device("cpu"))
    assert "needs about 77 MiB" in small and "but 40 MiB are available" in small
    monkeypatch.setattr(per_sample, "available_bytes", lambda device: None)
    assert per_sample.rows_memory_problem(256, 10 ** 12, torch.float32,
                                          torch.device("cpu")) is None  # unknown: no refusal


def test_a_probe_run_whose_noise_step_cannot_fit_stops_before_any_estimator(monkeypatch):
    from landscope.config import NoiseConfig, ProbeConfig, TraceConfig
    from landscope.data import TensorSplit
    from landscope.probes import per_sample
    from landscope.probes.suite import run_probes

    model, x, y = seeded_model(dict(name="mlp", width=8, depth=2), (1, 40), 10, 60)
    split = TensorSplit(x.float(), y)
    model = model.float()
    cfg = ProbeConfig(top_k=3, data_size=None, micro_batch=60, progress=False,
                      trace=TraceConfig(enabled=True), noise=NoiseConfig(enabled=True, samples=40))
    d = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(per_sample, "available_bytes", lambda device: 20 * 2 * 4 * d)
    lines: list[str] = []
    with pytest.raises(LandscopeError, match=r"^probe.noise.samples=40 needs about .* use "
                                             r"probe.noise.samples <= 20, or probe.noise"):
        run_probes(model, split, cfg, log=lines.append)
    assert lines == []  # refused before the plan line: nothing ran
    cfg.noise.samples = 20
    s = run_probes(model, split, cfg).scalars
    assert s["noise_samples"] == 20 and "lambda_max" in s


def test_the_noise_steps_peak_is_within_its_rows_peak_factor():
    """The factor the refusal uses (ROWS_PEAK) bounds the noise step's live tensors on an MLP
    whose rows dominate (the figures for other models: docs/measurements.md)."""
    from landscope.probes.memory import peak_memory
    from landscope.probes.per_sample import ROWS_PEAK

    model, x, y = seeded_model(dict(name="mlp", width=256, depth=3), (1, 40), 10, 256)
    model = model.float()
    data = ProbeData.from_tensors(x.float(), y, micro_batch=1000)
    op = HessianOperator(model, data)
    peak = peak_memory(lambda: gradient_noise(model, data, hessian=op, seed=0,
                                              alignment="lowrank"), torch.device("cpu"))
    rows = 256 * op.dim * 4
    assert rows < peak.peak_bytes <= ROWS_PEAK * rows
