"""The notebook API (landscope.Analyzer) against exact answers: the dense float64 Hessian of
small models, losses computed directly from the data, the engine's own estimators on the
same objective; the model left untouched where promised; one-line errors for bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from landscope import Analyzer
from landscope.errors import LandscopeError
from landscope.probes.verify import dense_hessian, spectrum

N, FEATURES, CLASSES = 96, 6, 3


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _data(seed: int = 0, one_hot: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    target = nn.functional.one_hot(y, CLASSES).float() if one_hot else y
    return x, target


def _loader(x, y, batch_size=32, shuffle=False):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def _tanh_mlp(seed: int = 0, width: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, width), nn.Tanh(),
                         nn.Linear(width, CLASSES)).double()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _direct_loss(model, x, y, criterion=None):
    crit = nn.CrossEntropyLoss() if criterion is None else criterion
    with torch.no_grad():
        return float(crit(model.eval()(x.double()), y if not y.is_floating_point()
                          else y.double()))


# ------------------------------------------------------------------------ full_analysis
def test_full_analysis_matches_the_dense_hessian_of_an_indefinite_model():
    """A random-init tanh MLP (indefinite Hessian, 53 parameters): eigenvalues to 1e-6,
    trace within 4 standard errors, the negative count within 4 standard errors + 1."""
    x, y = _data()
    model = _tanh_mlp()
    before = _state(model)
    an = Analyzer(model, _loader(x, y, shuffle=True), criterion=nn.CrossEntropyLoss())
    res = an.full_analysis(top_k=4, negative_tol=1e-3)
    ev = spectrum(dense_hessian(model, an.train)).flip(0).numpy()  # descending
    assert res.n_params == len(ev) == 53 and res.n_samples == N
    assert np.allclose(res.top_eigenvalues, ev[:4], rtol=1e-6, atol=1e-9)
    assert res.lambda_max == pytest.approx(ev[0], rel=1e-6)
    assert res.lambda_min == pytest.approx(ev[-1], rel=1e-5) and res.lambda_min < 0
    assert res.spectral_gap == pytest.approx(ev[0] - ev[1], rel=1e-5)
    assert res.negative_ratio == pytest.approx(abs(ev[-1] / ev[0]), rel=1e-5)
    assert abs(res.trace - ev.sum()) <= 4 * res.trace_stderr + 1e-9
    exact_negative = int((ev < -1e-3 * ev[0]).sum())
    assert exact_negative > 5
    assert abs(res.n_negative_eigenvalues - exact_negative) <= 4 * res.n_negative_stderr + 1
    assert res.train_loss == pytest.approx(_direct_loss(model, x, y), rel=1e-12)
    assert res.sharpness > 0 and res.flatness > 0 and res.all_converged
    assert _same(before, _state(model))  # the model is left as it was


def test_full_analysis_condition_number_and_custom_criterion_on_a_quadratic():
    """Least squares (MSELoss, a linear model, one-hot targets) has the constant Hessian
    2/(C n) [X 1]^T [X 1] per output: positive definite, so the condition number is exact;
    accuracy compares argmaxes of outputs and one-hot targets."""
    x, t = _data(one_hot=True)
    torch.manual_seed(0)
    model = nn.Linear(FEATURES, CLASSES).double()
    an = Analyzer(model, _loader(x, t), criterion=nn.MSELoss())
    res = an.full_analysis(top_k=3)
    xa = torch.cat([x.double(), torch.ones(N, 1, dtype=torch.float64)], 1)
    block = torch.linalg.eigvalsh(2.0 / (CLASSES * N) * xa.T @ xa)  # each output's block
    assert res.lambda_max == pytest.approx(float(block.max()), rel=1e-6)
    assert res.lambda_min == pytest.approx(float(block.min()), rel=1e-5)
    assert res.condition_number == pytest.approx(float(block.max() / block.min()), rel=1e-5)
    # 21 parameters: the exact sum over unit vectors (stderr 0) once sampling would cost more
    assert abs(res.trace - CLASSES * float(block.sum())) <= 4 * res.trace_stderr + 1e-12
    assert res.n_negative_eigenvalues == pytest.approx(0.0, abs=1e-9)
    assert res.train_loss == pytest.approx(_direct_loss(model, x, t, nn.MSELoss()), rel=1e-12)
    with torch.no_grad():
        acc = float((model(x.double()).argmax(1) == t.argmax(1)).double().mean())
    assert res.train_acc == pytest.approx(acc)


def test_a_plain_cross_entropy_is_the_engine_default_and_other_losses_are_used_as_given():
    x, y = _data()
    model = _tanh_mlp()
    plain = Analyzer(model, _loader(x, y), criterion=nn.CrossEntropyLoss())
    default = Analyzer(model, _loader(x, y))
    assert plain._net is model and default._net is model
    smooth = nn.CrossEntropyLoss(label_smoothing=0.2)
    custom = Analyzer(model, _loader(x, y), criterion=smooth)
    assert custom._net is not model
    a = custom.full_analysis(top_k=1)
    assert a.train_loss == pytest.approx(_direct_loss(model, x, y, smooth), rel=1e-12)
    assert a.lambda_max != pytest.approx(default.full_analysis(top_k=1).lambda_max, rel=1e-3)


def test_sample_sets_take_the_first_samples_of_one_pass_in_the_model_dtype():
    x, y = _data()
    an = Analyzer(_tanh_mlp(), _loader(x, y, batch_size=10), _loader(x, y), max_samples=25,
                  micro_batch=7)
    assert an.train.n == 25 and an.test.n == 25 and [len(b[1]) for b in an.train.batches] \
        == [7, 7, 7, 4]
    assert torch.equal(torch.cat([b[0] for b in an.train.batches]), x[:25].double())
    assert an.train.dtype == torch.float64


@pytest.mark.filterwarnings("ignore:Using a target size")  # the MSELoss case, on purpose
@pytest.mark.parametrize("make, needle", [
    (lambda m, x, y: Analyzer("not a model", _loader(x, y)), "torch.nn.Module"),
    (lambda m, x, y: Analyzer(m, [x]), "not a pair of tensors"),
    (lambda m, x, y: Analyzer(m, []), "yielded no samples"),
    (lambda m, x, y: Analyzer(m, _loader(x, y), criterion=lambda a, b: 0), "reduction"),
    (lambda m, x, y: Analyzer(m, _loader(x, y), max_samples=0), "max_samples"),
    (lambda m, x, y: Analyzer(m, _loader(x, y), criterion=nn.MSELoss()), "fail on a train"),
    (lambda m, x, y: Analyzer(m, _loader(x, y)).full_analysis(top_k=0), "top_k"),
    (lambda m, x, y: Analyzer(m, _loader(x, y)).full_analysis(sharpness_rho=-1), "rho"),
    (lambda m, x, y: Analyzer(m, _loader(x, y)).visualize_2d_landscape(1.0, 20), "odd"),
    (lambda m, x, y: Analyzer(m, _loader(x, y)).compute_mode_connectivity(
        nn.Linear(FEATURES, CLASSES).double()), "missing"),
    (lambda m, x, y: Analyzer(m, _loader(x, y)).analyze_optimization_trajectory(
        torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), 5), "none of the model"),
    (lambda m, x, y: Analyzer(m, _loader(x, y)).analyze_optimization_trajectory(
        torch.optim.SGD(m.parameters(), lr=0.1), 0), "num_steps"),
])
def test_bad_input_is_one_clear_error(make, needle):
    x, y = _data()
    with pytest.raises(LandscopeError, match=needle) as err:
        make(_tanh_mlp(), x, y)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------ the plane
def test_2d_landscape_centre_is_the_model_and_the_picture_is_written(tmp_path):
    x, y = _data()
    xt, yt = _data(seed=1)
    model = _tanh_mlp()
    before = _state(model)
    an = Analyzer(model, _loader(x, y), _loader(xt, yt))
    plane = an.visualize_2d_landscape(distance=0.5, resolution=7,
                                      save_path=tmp_path / "plane.png")
    a = plane.arrays()
    assert a["train_loss"].shape == (7, 7) and a["test_loss"].shape == (7, 7)
    assert a["x"][3] == 0.0 and a["y"][3] == 0.0
    assert a["train_loss"][3, 3] == pytest.approx(_direct_loss(model, x, y), rel=1e-12)
    assert a["test_loss"][3, 3] == pytest.approx(_direct_loss(model, xt, yt), rel=1e-12)
    assert a["train_loss"].std() > 0
    png = tmp_path / "plane.png"
    assert png.is_file() and png.stat().st_size > 10_000
    assert _same(before, _state(model))


def test_progress_bars_count_the_products_and_points_and_change_no_value(bars):
    x, y = _data()
    plain = Analyzer(_tanh_mlp(), _loader(x, y), _loader(*_data(seed=1)), progress=False)
    shown = Analyzer(_tanh_mlp(), _loader(x, y), _loader(*_data(seed=1)), progress=True)
    a = plain.full_analysis(slq_steps=10)
    assert not bars.shown()  # progress=False: every bar disabled
    b = shown.full_analysis(slq_steps=10)
    assert {**vars(a), "seconds": 0} == {**vars(b), "seconds": 0}
    made = {r["desc"]: r for r in bars.shown()}
    assert list(made) == ["probe top", "probe bottom", "probe trace", "probe density"]
    assert all(r["closed"] for r in made.values())
    # every product of the analysis is on one bar; the density's planned at 10 runs x 10 steps
    assert sum(r["n"] for r in made.values()) == b.hessian_products
    assert made["probe density"]["total"] == 100
    p1 = plain.visualize_2d_landscape(distance=0.5, resolution=5)
    p2 = shown.visualize_2d_landscape(distance=0.5, resolution=5)
    assert np.array_equal(p1.arrays()["train_loss"], p2.arrays()["train_loss"])
    (plane,) = [r for r in bars.shown() if r["desc"] == "landscape plane"]
    assert (plane["total"], plane["n"], plane["closed"]) == (25, 25, True)


# ------------------------------------------------------------------------ dynamics
def test_trajectory_records_exact_measurements_while_training():
    x, y = _data()
    xt, yt = _data(seed=1)
    model = _tanh_mlp()
    start = copy.deepcopy(model)
    model.train()
    an = Analyzer(model, _loader(x, y, shuffle=True), _loader(xt, yt))
    hist = an.analyze_optimization_trajectory(torch.optim.SGD(model.parameters(), lr=0.5),
                                              num_steps=25, track_interval=10)
    rows = hist.rows
    assert [r["step"] for r in rows] == [0, 10, 20, 25] and not hist.diverged
    assert [r["grad_evals"] for r in rows] == [0, 10, 20, 25]
    assert model.training  # the caller's mode is restored
    first = rows[0]  # step 0 is the untrained model
    assert first["train_loss"] == pytest.approx(_direct_loss(start, x, y), rel=1e-12)
    assert first["test_loss"] == pytest.approx(_direct_loss(start, xt, yt), rel=1e-12)
    loss = nn.CrossEntropyLoss()(start.eval()(x.double()), y)
    grad = torch.autograd.grad(loss, list(start.parameters()))
    assert first["grad_norm"] == pytest.approx(float(torch.cat([g.reshape(-1) for g in grad])
                                                     .norm()), rel=1e-9)
    exact = float(spectrum(dense_hessian(start, an.train)).max())
    assert first["lambda_max"] == pytest.approx(exact, rel=1e-3)
    assert math.isnan(first["batch_loss"]) and math.isfinite(rows[-1]["batch_loss"])
    assert rows[-1]["train_loss"] < first["train_loss"]  # the model was trained in place
    assert rows[-1]["train_loss"] == pytest.approx(_direct_loss(model, x, y), rel=1e-12)
    assert list(hist.frame().columns[:5]) == ["step", "train_loss", "train_acc", "test_loss",
                                              "test_acc"]


def test_trajectory_with_sam_counts_two_gradients_per_step_and_draws(tmp_path):
    from landscope.optim.sam import SAM

    x, y = _data()
    model = _tanh_mlp()
    an = Analyzer(model, _loader(x, y))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    hist = an.analyze_optimization_trajectory(opt, num_steps=6, track_interval=3)
    assert [r["grad_evals"] for r in hist.rows] == [0, 6, 12]
    png = hist.plot(tmp_path / "history.png")
    assert png.is_file() and png.stat().st_size > 10_000


def test_trajectory_stops_when_the_loss_diverges():
    x, t = _data(one_hot=True)
    model = nn.Linear(FEATURES, CLASSES).double()  # least squares: |1 - lr lambda| >> 1
    an = Analyzer(model, _loader(x, t), criterion=nn.MSELoss())
    hist = an.analyze_optimization_trajectory(torch.optim.SGD(model.parameters(), lr=1e10),
                                              num_steps=50, track_interval=1)
    assert hist.diverged and len(hist.rows) < 51
    assert not math.isfinite(hist.rows[-1]["batch_loss"])


# ------------------------------------------------------------------------ connectivity
def test_connectivity_to_itself_is_flat_and_to_another_model_matches_direct_losses():
    x, y = _data()
    xt, yt = _data(seed=1)
    a_model, b_model = _tanh_mlp(seed=0), _tanh_mlp(seed=1)
    before_a, before_b = _state(a_model), _state(b_model)
    an = Analyzer(a_model, _loader(x, y), _loader(xt, yt))
    same = an.compute_mode_connectivity(copy.deepcopy(a_model), num_points=5)
    assert same.barrier_height == pytest.approx(0.0, abs=1e-12)
    assert same.error_barrier == 0.0 and same.connectivity_score == 1.0
    assert same.path_length == 0.0 and same.linearly_connected and same.bn == "keep"

    c = an.compute_mode_connectivity(b_model, num_points=11)
    assert len(c.t) == 11 and c.t[0] == 0.0 and c.t[-1] == 1.0
    assert c.train_loss[0] == pytest.approx(_direct_loss(a_model, x, y), rel=1e-12)
    assert c.train_loss[-1] == pytest.approx(_direct_loss(b_model, x, y), rel=1e-12)
    mid = copy.deepcopy(a_model)
    with torch.no_grad():
        for p, q in zip(mid.parameters(), b_model.parameters()):
            p.mul_(0.5).add_(0.5 * q)
    assert c.train_loss[5] == pytest.approx(_direct_loss(mid, x, y), rel=1e-9)
    assert c.barrier_height == pytest.approx(c.train_loss.max() - c.train_loss[[0, -1]].mean())
    assert c.error_split == "test"
    assert c.error_barrier == pytest.approx(c.test_error.max() - c.test_error[[0, -1]].mean())
    assert c.connectivity_score == pytest.approx(1.0 - max(0.0, c.error_barrier))
    flat = [torch.cat([p.detach().reshape(-1) for p in m.parameters()])
            for m in (a_model, b_model)]
    assert c.path_length == pytest.approx(float((flat[1] - flat[0]).norm()), rel=1e-12)
    assert _same(before_a, _state(a_model)) and _same(before_b, _state(b_model))


def test_connectivity_with_a_custom_criterion_and_batchnorm_recomputes_statistics():
    x, y = _data()
    torch.manual_seed(0)
    a_model = nn.Sequential(nn.Linear(FEATURES, 5), nn.BatchNorm1d(5), nn.ReLU(),
                            nn.Linear(5, CLASSES)).double()
    b_model = copy.deepcopy(a_model)
    with torch.no_grad():
        for p in b_model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    an = Analyzer(a_model.eval(), _loader(x, y),
                  criterion=nn.CrossEntropyLoss(label_smoothing=0.1))
    c = an.compute_mode_connectivity(b_model.eval(), num_points=5)
    assert c.bn == "recompute" and c.error_split == "train" and c.test_loss is None
    assert np.all(np.isfinite(c.train_loss)) and c.barrier_height >= 0


# ------------------------------------------------------------------------ README
def test_readme_quick_start_runs_as_written(tmp_path):
    """The README's Analyzer quick-start, copied out of the README and run unchanged in a
    fresh interpreter: it prints its numbers and writes both pictures."""
    import os
    import re
    import subprocess
    import sys

    from conftest import REPO

    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- analyzer-quickstart -->\n```python\n(.*?)```", text, re.S)
    assert block is not None, "the quick-start block is missing from the README"
    (tmp_path / "quickstart.py").write_text(block.group(1))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "quickstart.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    numbers = [float(v) for v in lines[-1].split()]  # barrier, score, path length
    assert len(numbers) == 3 and numbers[0] >= 0 and 0 <= numbers[1] <= 1 and numbers[2] > 0
    for png in ("trajectory.png", "landscape.png"):
        assert (tmp_path / png).stat().st_size > 10_000
