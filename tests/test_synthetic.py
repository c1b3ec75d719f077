"""Synthetic problems (landscope.synthetic) against their closed forms, and through the runner.

Tolerances: data identities and float64 derivatives 1e-12 (relative to the scale of A or the
loss), probe eigenvalues 1e-8 relative (Lanczos tol 1e-10), Hutchinson traces within 3
standard errors, gradient-noise traces 1e-10 relative; end-to-end runs are float32, so the
runner's lambda_max is compared with the closed form at the trained point to 1e-4 relative.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call, hessian

from conftest import run_cli
from landscope.checkpoint import load_latest
from landscope.config import (
    DatasetConfig,
    DensityConfig,
    ModelConfig,
    NoiseConfig,
    ProbeConfig,
    TraceConfig,
    validate,
)
from landscope.data import load_data
from landscope.errors import ConfigError
from landscope.io import read_json
from landscope.losses import n_correct, task_loss
from landscope.models import build_model
from landscope.probes.density import slq
from landscope.probes.hvp import HessianOperator
from landscope.probes.lanczos import lanczos_eigs
from landscope.probes.noise import gradient_noise, per_sample_gradients
from landscope.probes.probe_data import ProbeData
from landscope.probes.sharpness import ModelObjective, average_sharpness, worst_case_sharpness
from landscope.probes.suite import run_probes
from landscope.probes.trace import hutchinson
from landscope.synthetic import (
    quadratic_min_samples,
    quadratic_reference,
    resolve_spectrum,
    two_basin_reference,
)

INDEFINITE = [4.0, 2.5, 1.0, 0.5, 0.0, -0.3, -1.5]


def quad_cfg(**kw) -> DatasetConfig:
    return DatasetConfig(name="quadratic", normalize=False, **kw)


def basin_cfg(**kw) -> DatasetConfig:
    return DatasetConfig(name="two_basin", normalize=False, **kw)


def model64(dataset_cfg: DatasetConfig, theta=None, seed: int = 0):
    """(float64 model, data, reference) with theta set when given."""
    data = load_data(dataset_cfg)
    name = str(getattr(dataset_cfg.name, "value", dataset_cfg.name))
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name=name), data.meta).double()
    if theta is not None:
        with torch.no_grad():
            model.theta.copy_(torch.as_tensor(theta, dtype=torch.float64))
    ref = quadratic_reference(dataset_cfg) if name == "quadratic" else \
        two_basin_reference(dataset_cfg)
    return model, data, ref


def mean_loss(model, x: torch.Tensor):
    """theta -> mean task loss over x (for torch.func)."""
    return lambda theta: task_loss(model, functional_call(model, {"theta": theta}, (x,)), None)


def all_data(split) -> ProbeData:
    return ProbeData.from_tensors(split.x, split.y, micro_batch=len(split))


# ------------------------------------------------------------------ quadratic: data and model
@pytest.mark.parametrize("spectrum", [None, INDEFINITE])
def test_quadratic_data_reproduce_A_exactly(spectrum):
    cfg = quad_cfg(spectrum=spectrum, train_size=64, test_size=40)
    data, ref = load_data(cfg), quadratic_reference(cfg)
    d = ref.dim
    lam = torch.tensor(resolve_spectrum(cfg), dtype=torch.float64)
    assert torch.equal(ref.eigenvalues, lam) and d == (20 if spectrum is None else 7)
    scale = float(lam.abs().max())
    assert torch.allclose(torch.linalg.eigvalsh(ref.hessian).flip(0), lam, atol=1e-12 * scale)
    assert data.meta.input_shape == (d + 3,) and data.meta.train_size == 64
    for split, star in ((data.train, ref.theta_star), (data.test, ref.theta_star_test)):
        x, n = split.x, len(split)
        assert x.dtype == torch.float64 and split.y.dtype == torch.int64
        feats, target, eps, sign = x[:, :d], x[:, d], x[:, d + 1], x[:, d + 2]
        a = (feats * sign[:, None]).T @ feats / n
        assert (a - ref.hessian).abs().max() <= 1e-12 * scale
        assert (feats.T @ (sign * eps)).abs().max() <= 1e-12 * scale * n
        assert torch.allclose(eps.abs(), torch.full_like(eps, ref.noise), rtol=0, atol=1e-15)
        assert torch.allclose(target, feats @ star, rtol=0, atol=1e-12)
    # positive default spectrum: one sign group and offset noise^2 / 2
    if spectrum is None:
        assert ref.loss_offset == pytest.approx(ref.noise ** 2 / 2, rel=1e-15)


def test_quadratic_spectrum_generator_and_seed():
    lam = resolve_spectrum(quad_cfg(dim=6, condition=1000.0, outliers=[50.0]))
    assert lam.tolist() == pytest.approx([50.0, 1.0, 10 ** -0.75, 10 ** -1.5, 10 ** -2.25, 1e-3],
                                         rel=1e-12)
    assert quadratic_min_samples(INDEFINITE) == 4 + 1 + 2 + 1
    a0, a1 = (quadratic_reference(quad_cfg(seed=s)).hessian for s in (0, 1))
    assert not torch.allclose(a0, a1)  # dataset.seed picks the rotation
    assert torch.equal(load_data(quad_cfg(seed=1)).train.x, load_data(quad_cfg(seed=1)).train.x)


@pytest.mark.parametrize("spectrum", [None, INDEFINITE])
def test_quadratic_model_loss_gradient_hessian(spectrum):
    cfg = quad_cfg(spectrum=spectrum, train_size=64, test_size=40)
    model, data, ref = model64(cfg, seed=3)
    theta = model.theta.detach().clone()
    scale = float(ref.eigenvalues.abs().max())
    for split, name in ((data.train, "train"), (data.test, "test")):
        f = mean_loss(model, split.x)
        assert float(f(theta)) == pytest.approx(ref.loss(theta, name), rel=1e-12)
        g = torch.func.grad(f)(theta)
        assert torch.allclose(g, ref.gradient(theta, name), rtol=0, atol=1e-12 * scale * 10)
        h = hessian(f)(theta)
        assert (h - ref.hessian).abs().max() <= 1e-12 * scale
    # at the optimum: gradient 0, loss = offset, every training sample correct
    f = mean_loss(model, data.train.x)
    assert torch.func.grad(f)(ref.theta_star).abs().max() <= 1e-12 * scale
    with torch.no_grad():
        model.theta.copy_(ref.theta_star)
        out = model(data.train.x)
    assert float(task_loss(model, out, data.train.y)) == pytest.approx(ref.loss_offset,
                                                                       abs=1e-14)
    assert n_correct(model, out, data.train.y) == len(data.train)
    assert task_loss(model, out, data.train.y, "none").shape == (len(data.train),)


# ------------------------------------------------------------------ quadratic: probes
def test_quadratic_probes_match_closed_forms():
    cfg = quad_cfg(train_size=128)
    model, data, ref = model64(cfg, seed=1)
    probe = all_data(data.train)
    op = HessianOperator(model, probe)
    top = lanczos_eigs(op, k=5, tol=1e-10)
    assert torch.allclose(top.eigenvalues, ref.eigenvalues[:5], rtol=1e-8, atol=0)
    bottom = lanczos_eigs(op, k=2, which="smallest", tol=1e-10)
    assert torch.allclose(bottom.eigenvalues, ref.eigenvalues.flip(0)[:2], rtol=1e-8, atol=0)
    tr = hutchinson(op, n_samples=200, seed=0)
    assert abs(tr.estimate - ref.trace) <= 3 * tr.stderr
    # SLQ with m = D steps: every node is an eigenvalue, and the moments are exact
    q = slq(op, n_probes=3, m_steps=ref.dim, seed=0)
    dist = (q.nodes[..., None] - ref.eigenvalues).abs().min(-1).values
    assert float(dist[q.weights > 1e-12].max()) <= 1e-8 * float(ref.eigenvalues[0])
    # gradient noise at theta*: Sigma = noise^2 |A| (per-sample gradients through vmap)
    star = {"theta": ref.theta_star}
    noise = gradient_noise(model, probe, params=star, alignment="exact",
                           trace_h=ref.trace, k_sigma=3)
    assert noise.trace_sigma == pytest.approx(ref.noise_trace_at_optimum, rel=1e-10)
    sigma_top = ref.noise ** 2 * ref.eigenvalues.abs()[:3]
    assert torch.allclose(noise.sigma_eigenvalues, sigma_top, rtol=1e-10)
    # tr(H Sigma) = noise^2 sum lambda |lambda|
    exact = ref.noise ** 2 * float((ref.eigenvalues * ref.eigenvalues.abs()).sum())
    assert noise.trace_h_sigma == pytest.approx(exact, rel=1e-10)
    g = per_sample_gradients(model, probe, params=star)
    cov = g.T @ g / len(g)
    assert (cov - ref.noise_covariance_at_optimum).abs().max() <= 1e-12 * 100


def test_quadratic_run_probes_and_sharpness_at_optimum():
    cfg = quad_cfg(train_size=128)
    model, data, ref = model64(cfg, theta=quadratic_reference(quad_cfg(train_size=128))
                               .theta_star)
    pcfg = ProbeConfig(name="standard", top_k=5, trace=TraceConfig(enabled=True),
                       density=DensityConfig(enabled=True, logdet_eps=1e-3),
                       noise=NoiseConfig(enabled=True, samples=128), lanczos_tol=1e-10,
                       verify=True)
    report = run_probes(model, data.train, pcfg)
    s, a = report.scalars, report.arrays
    assert s["probe_data_size"] == 128 and s["noise_samples"] == 128
    assert s["lambda_max"] == pytest.approx(10.0, rel=1e-8)
    assert a["eigenvalues_top"].tolist() == pytest.approx(ref.eigenvalues[:5].tolist(), rel=1e-8)
    # per pair: the true residual ||H v - lambda v|| (saved) and the products Lanczos used
    h = ref.hessian
    v, lam = torch.as_tensor(a["eigenvectors_top"]), torch.as_tensor(a["eigenvalues_top"])
    true = (h @ v - v * lam).norm(dim=0)
    assert a["residuals_top"].shape == (5,) and np.allclose(a["residuals_top"], true, atol=1e-12)
    assert 5 <= s["hvps_top"] <= s["hvps"]
    assert abs(s["trace"] - ref.trace) <= 3 * s["trace_stderr"] + 1e-9
    assert s["noise_trace_sigma"] == pytest.approx(ref.noise_trace_at_optimum, rel=1e-10)
    assert s["verify_trace_exact"] == pytest.approx(ref.trace, rel=1e-12)
    # verify mode on the density: no negative eigenvalues, log det(A + eps I) within 4 stderr
    assert s["verify_negative_mass_exact"] == 0.0 and s["density_negative_mass"] == 0.0
    exact = float(torch.log(ref.eigenvalues + 1e-3).sum())
    assert s["verify_logdet_exact"] == pytest.approx(exact, rel=1e-10)
    assert abs(s["verify_logdet_error_in_stderr"]) < 4
    # sharpness: worst case rho^2/2 lambda_max (projected ascent), average rho^2/2 tr A
    probe = all_data(data.train)
    obj = ModelObjective(model, probe)
    rho = 0.05
    wc = worst_case_sharpness(obj, [rho], steps=30, seed=0, tol=0)  # every step: the closed form
    assert wc.values[0] == pytest.approx(ref.worst_case_sharpness_at_optimum(rho), rel=1e-6)
    avg = average_sharpness(obj, [rho], n_samples=64, seed=0)
    assert abs(avg.means[0] - ref.average_sharpness_at_optimum(rho)) <= 3 * avg.stderrs[0]


# ------------------------------------------------------------------ two basins
@pytest.mark.parametrize("tilt", [0.0, 0.4])
def test_two_basin_closed_forms(tilt):
    cfg = basin_cfg(tilt=tilt, barrier=0.2, sharp_curvature=12.0, flat_curvature=0.5,
                    train_size=50, test_size=30)
    model, data, ref = model64(cfg)
    f = mean_loss(model, data.train.x)
    c = 0.2 / (0.25 + tilt ** 2 / 2 - tilt ** 4 / 12)
    # the hand-written numbers, independently of the reference's formulas
    want = {(-1.0, 0.0): (-2 * c * tilt / 3, [2 * c * (1 + tilt), 12.0]),
            (1.0, 0.0): (2 * c * tilt / 3, [2 * c * (1 - tilt), 0.5]),
            (tilt, 0.0): (c * (0.25 + tilt ** 2 / 2 - tilt ** 4 / 12),
                          [c * (tilt ** 2 - 1), 0.5 + 11.5 * (1 - tilt) ** 2 / 4])}
    refs = [(ref.minima[0], ref.minimum_losses[0], ref.minimum_hessians[0]),
            (ref.minima[1], ref.minimum_losses[1], ref.minimum_hessians[1]),
            (ref.saddle, ref.saddle_loss, ref.saddle_hessian)]
    for (point, (loss, diag)), (p_ref, l_ref, h_ref) in zip(want.items(), refs):
        theta = torch.tensor(point, dtype=torch.float64)
        assert torch.equal(p_ref, theta)
        assert float(f(theta)) == pytest.approx(loss, abs=1e-12) == l_ref
        assert torch.func.grad(f)(theta).abs().max() <= 1e-12
        h = hessian(f)(theta)
        assert torch.allclose(h, torch.diag(torch.tensor(diag, dtype=torch.float64)),
                              rtol=0, atol=1e-12)
        assert torch.allclose(h_ref, h, rtol=0, atol=1e-12)
    assert ref.minimum_lambda_max == pytest.approx((12.0, max(2 * c * (1 - tilt), 0.5)))
    # barrier: the straight segment peaks at the saddle (alpha = (tilt + 1) / 2)
    alphas = torch.linspace(0, 1, 2001, dtype=torch.float64)
    line = torch.stack([f(torch.stack([2 * a - 1, a * 0])) for a in alphas])
    assert float(line.max()) == pytest.approx(ref.saddle_loss, abs=1e-10)
    heights = [float(line.max()) - float(line[0]), float(line.max()) - float(line[-1])]
    assert heights == pytest.approx(list(ref.barrier_heights), abs=1e-10)
    assert float(line.max() - (line[0] + line[-1]) / 2) == pytest.approx(0.2, abs=1e-10)
    assert ref.linear_barrier == pytest.approx(0.2, rel=1e-14)
    # anywhere: closed-form gradient and Hessian, train and test surfaces
    theta = torch.tensor([0.3, -0.7], dtype=torch.float64)
    assert torch.allclose(torch.func.grad(f)(theta), ref.gradient(theta), atol=1e-12, rtol=0)
    assert torch.allclose(hessian(f)(theta), ref.hessian(theta), atol=1e-12, rtol=0)
    f_test = mean_loss(model, data.test.x)
    assert float(f_test(theta)) == pytest.approx(ref.loss(theta, "test"), abs=1e-12)
    assert torch.allclose(hessian(f_test)(theta), ref.hessian(theta, "test"), atol=1e-12, rtol=0)
    gaps = [float(f_test(m)) - float(f(m)) for m in ref.minima]
    assert gaps == pytest.approx(list(ref.test_gap_at_minima()), abs=1e-12)


def test_two_basin_noise_accuracy_and_probes():
    cfg = basin_cfg(train_size=40)
    model, data, ref = model64(cfg, theta=[-1.0, 0.0])
    probe = all_data(data.train)
    # per-sample gradients (vmap of grad): mean = the gradient, covariance = noise^2 I anywhere
    for theta in ([0.3, -0.7], [-1.0, 0.0]):
        p = {"theta": torch.tensor(theta, dtype=torch.float64)}
        g = per_sample_gradients(model, probe, params=p)
        assert torch.allclose(g.mean(0), ref.gradient(p["theta"]), atol=1e-12, rtol=0)
        cen = g - g.mean(0)
        assert torch.allclose(cen.T @ cen / len(g), ref.noise_covariance, atol=1e-12, rtol=0)
    # correct = in a basin (below the saddle's loss); the test surface is moved along v
    with torch.no_grad():
        assert n_correct(model, model(data.train.x), data.train.y) == 40
        assert n_correct(model, model(data.test.x), data.test.y) == 0  # sharp: 10*0.09/2 > 1/8
        model.theta.copy_(torch.tensor([1.0, 0.0]))
        assert n_correct(model, model(data.test.x), data.test.y) == len(data.test)
        model.theta.copy_(torch.tensor([0.0, 0.1]))
        assert n_correct(model, model(data.train.x), data.train.y) == 0
        model.theta.copy_(torch.tensor([-1.0, 0.0]))
    pcfg = ProbeConfig(name="full", top_k=2, bottom_k=1, trace=TraceConfig(enabled=True),
                       noise=NoiseConfig(enabled=True), lanczos_tol=1e-10)
    s = run_probes(model, data.train, pcfg).scalars
    assert s["lambda_max"] == pytest.approx(10.0, rel=1e-8)
    assert s["lambda_min"] == pytest.approx(1.0, rel=1e-8)
    assert s["trace"] == pytest.approx(11.0, rel=1e-8)
    assert s["noise_trace_sigma"] == pytest.approx(2 * ref.noise ** 2, rel=1e-10)


# ------------------------------------------------------------------ config checks
@pytest.mark.parametrize("overrides, needle", [
    (["dataset=quadratic"], "dataset=quadratic runs only with model=quadratic (got model=mlp)"),
    (["model=two_basin", "dataset=mnist1d"],
     "model=two_basin runs only on dataset=two_basin (got dataset=mnist1d)"),
    (["dataset=quadratic", "model=two_basin"], "model=two_basin runs only on dataset=two_basin"),
    (["dataset=two_basin", "model=two_basin", "dataset.tilt=1.0"], "dataset.tilt"),
    (["dataset=two_basin", "model=two_basin", "dataset.flat_curvature=20"],
     "dataset.sharp_curvature/flat_curvature"),
    (["dataset=quadratic", "model=quadratic", "dataset.train_size=20"],
     "dataset.train_size must be >= 21"),
    (["dataset=quadratic", "model=quadratic", "dataset.spectrum=[1,-1]",
      "dataset.test_size=3"], "dataset.test_size must be >= 4"),
    (["dataset=quadratic", "model=quadratic", "dataset.normalize=true"], "dataset.normalize"),
    (["dataset=quadratic", "model=quadratic", "dataset.label_noise=0.1"], "label_noise"),
    (["dataset=quadratic", "model=quadratic", "dataset.spectrum=[]"], "dataset.spectrum"),
])
def test_validate_refuses(compose, overrides, needle):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_validate_accepts_pairs_and_build_model_refuses_other_data(compose):
    for name in ("quadratic", "two_basin"):
        for overrides in ([f"dataset={name}", f"model={name}"], [f"model={name}"]):
            cfg = compose(overrides)  # the model alone selects its dataset
            validate(cfg)
            assert cfg.dataset.name.value == name and cfg.dataset.train_size == 256
            assert not cfg.dataset.normalize
    quad = load_data(quad_cfg())
    with pytest.raises(ConfigError, match="runs only with model=quadratic"):
        build_model(ModelConfig(name="mlp"), quad.meta)
    with pytest.raises(ConfigError, match="model=two_basin needs dataset=two_basin"):
        build_model(ModelConfig(name="two_basin"), quad.meta)


# ------------------------------------------------------------------ through the runner
def _run_job(tmp_path: Path, name: str, *extra: str) -> tuple[dict, torch.Tensor]:
    args = [f"model={name}", "train.epochs=3", "probe=standard", *extra]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = next((tmp_path / "outputs" / "runs" / "default").iterdir())
    result = read_json(job / "result.json")
    assert result["status"] == "completed" and result["n_params"] == (20 if name == "quadratic"
                                                                      else 2)
    final = load_latest(job / "checkpoints")
    assert final["epoch"] == 3
    return result, final["model"]["theta"].double()


def test_cli_quadratic(tmp_path):
    result, theta = _run_job(tmp_path, "quadratic", "dataset=quadratic")
    ref = quadratic_reference(quad_cfg())
    p, final = result["probes"], result["final"]
    assert p["lambda_max"] == pytest.approx(float(ref.eigenvalues[0]), rel=1e-4)
    assert p["lambda_2"] == pytest.approx(float(ref.eigenvalues[1]), rel=1e-4)
    assert abs(p["trace"] - ref.trace) <= 3 * p["trace_stderr"] + 1e-4 * ref.trace
    assert final["train_loss"] == pytest.approx(ref.loss(theta), rel=1e-4)
    assert final["test_loss"] == pytest.approx(ref.loss(theta, "test"), rel=1e-4)
    assert 0 <= final["train_acc"] <= 1 and 0 <= final["test_acc"] <= 1


def test_cli_two_basin(tmp_path):
    result, theta = _run_job(tmp_path, "two_basin", "seed=1")  # model=two_basin brings its data
    assert result["dataset"]["name"] == "two_basin"
    ref = two_basin_reference(basin_cfg())
    h = ref.hessian(theta)
    assert result["probes"]["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]),
                                                           rel=1e-4)
    assert result["probes"]["noise_trace_sigma"] == pytest.approx(2 * ref.noise ** 2, rel=1e-4)
    assert result["final"]["train_loss"] == pytest.approx(ref.loss(theta), abs=1e-5)
    # three epochs of SGD from seed 1 end close to one of the two minima
    assert float((ref.minima - theta).norm(dim=1).min()) < 0.2


def test_cli_refuses_mismatched_pair(tmp_path):
    proc = run_cli(["dataset=two_basin", "model=mlp"], tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and \
        "dataset=two_basin runs only with model=two_basin" in lines[0], lines
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("normalization", ["filter", "layer"])
def test_default_slices_of_the_quadratic_follow_its_closed_form(normalization):
    """The synthetic models' single weight vector ``theta`` is 1-D but not a bias: under
    filter/layer normalization it is one filter scaled to ||theta0|| (not zeroed, which made
    every default direction of a synthetic problem zero). The 1-D slice then equals the
    closed-form quadratic at theta0 + a d, to 1e-9 relative."""
    from landscope.geometry.directions import random_directions
    from landscope.geometry.slices import line_slice, symmetric_grid
    from landscope.geometry.space import ParamSpace

    model, data, ref = model64(quad_cfg(), seed=3)
    space = ParamSpace(model)
    d = random_directions(space, 2, seed=0, normalization=normalization)
    norms = d.norm(dim=1)
    assert torch.allclose(norms, space.theta0.norm().expand(2), rtol=1e-12)
    coords = symmetric_grid(1.0, 9)
    train = ProbeData.from_split(data.train, None, seed=0, micro_batch=4096)
    res = line_slice(space, d, coords, train)
    for k in range(2):
        exact = [ref.loss(space.theta0 + float(a) * d[k]) for a in coords]
        assert res.train_loss[k] == pytest.approx(exact, rel=1e-9)
    assert res.scalars()["line_train_rise_mean"] > 0


def test_landscape_full_on_a_synthetic_problem_caps_the_intrinsic_dims(tmp_path):
    """landscape=full on two_basin (2 parameters): the default intrinsic-dimension grid
    (100 ... 30000) is replaced by d = 2 with a note, instead of failing the job."""
    out = run_cli(["model=two_basin", "probe=none", "landscape=full", "train.epochs=2",
                   "landscape.intrinsic.epochs=1"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    job = next((tmp_path / "outputs" / "runs" / "default").iterdir())
    record = read_json(next((job / "landscape").glob("*.json")))
    assert any("replaced by 2 (grid [2])" in n for n in record["notes"]), record["notes"]
    assert "intrinsic_d90_relative" in record["scalars"]
