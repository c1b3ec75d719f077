"""probe.classes: the class structure of the Hessian's outliers
(landscope.probes.class_structure). Planted subspaces give alignment 1 and 0 exactly; the
outlier rules count constructed spectra; the class-mean gradients equal a per-sample loop in
float64; a tiny runner job's classes_* results equal a dense computation (torch.func.hessian);
bad option values fail in one ConfigError line (exit 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli
from landscope.analysis.class_structure import class_table
from landscope.analysis.report import build_report
from landscope.config import ConfigError, validate
from landscope.io import read_json
from landscope.jobdir import JobDir
from landscope.jobs import COMPLETED, train_job
from landscope.probes.class_structure import (
    capture,
    class_mean_gradients,
    class_structure,
    count_above,
    count_outliers_gap,
    principal_cosines,
    span_basis,
)
from landscope.probes.probe_data import ProbeData
from landscope.probes.suite import probe_data

TINY = ["dataset.train_size=300", "dataset.test_size=100", "train.batch_size=50",
        "train.epochs=3", "model.width=6", "model.depth=1", "landscape=none", "probe=standard",
        "probe.top_k=0", "probe.trace.enabled=false", "probe.density.enabled=false",
        "probe.noise.enabled=false", "probe.sharpness.enabled=false",
        "probe.sharpness.family=false", "probe.data_size=200", "probe.classes=true"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _planted(D: int = 30, C: int = 4, seed: int = 0):
    """An orthonormal basis V (D × (C + 2)) and eigenvalues with C outliers."""
    gen = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(gen.standard_normal((D, D)))
    lam = np.concatenate([np.linspace(40.0, 10.0, C), [1.0, 0.9]])
    return Q, lam


def test_class_means_inside_the_top_c_span_are_captured_whole():
    Q, lam = _planted()
    C, V = 4, Q[:, :6]
    G = np.random.default_rng(1).standard_normal((C, C)) @ Q[:, :C].T  # inside span V_C
    s = class_structure(G, np.ones(C, int), lam, V)
    np.testing.assert_allclose(s.capture[C], 1.0, atol=1e-10)
    np.testing.assert_allclose(s.cosines[C], 1.0, atol=1e-10)
    assert s.span_rank == C and s.n_outliers == C
    np.testing.assert_allclose(s.share, [1, 1, 1, 1, 0, 0], atol=1e-10)
    sc = s.scalars()
    assert sc["classes_capture_top_c"] == pytest.approx(1.0, abs=1e-10)
    assert sc["classes_overlap_top_c"] == pytest.approx(1.0, abs=1e-10)
    assert sc["classes_energy_top_c"] == pytest.approx(1.0, abs=1e-10)
    # V_{C-1} misses one direction of a C-dimensional span: the overlap is still 1 (its C-1
    # angles are 0) while the capture drops below 1
    assert sc["classes_overlap_top_c_minus_1"] == pytest.approx(1.0, abs=1e-10)
    assert sc["classes_capture_top_c_minus_1"] < 1 - 1e-3


def test_class_means_outside_the_top_span_are_captured_not_at_all():
    Q, lam = _planted()
    C, V = 4, Q[:, :6]
    G = np.random.default_rng(2).standard_normal((C, 10)) @ Q[:, 10:20].T  # orthogonal to V
    s = class_structure(G, np.array([3, 1, 0, 2]), lam, V)  # class 2 absent from the data
    assert np.isnan(s.capture[C][2])
    np.testing.assert_allclose(np.delete(s.capture[C], 2), 0.0, atol=1e-10)
    np.testing.assert_allclose(s.cosines[C], 0.0, atol=1e-10)
    assert s.scalars()["classes_overlap_top_c"] == pytest.approx(0.0, abs=1e-10)
    assert s.scalars()["classes_present"] == 3 and s.span_rank == 3


def test_the_edge_rule_and_its_censoring():
    Q, lam = _planted()
    G = np.random.default_rng(4).standard_normal((4, 30))
    inside = class_structure(G, np.ones(4, int), lam, Q[:, :6], edge_threshold=5.0).scalars()
    assert inside["classes_n_outliers_edge"] == 4
    assert inside["classes_n_outliers_edge_censored"] is False
    every = class_structure(G, np.ones(4, int), lam, Q[:, :6], edge_threshold=0.5).scalars()
    assert every["classes_n_outliers_edge"] == 6 and every["classes_n_outliers_edge_censored"]
    assert "classes_n_outliers_edge" not in class_structure(G, np.ones(4, int), lam,
                                                            Q[:, :6]).scalars()


def test_the_section_table_on_constructed_jobs():
    """Two configurations (model.width 8 and 16) of three and one seeds: counts per value, the
    matches with C − 1 and C, the t interval over seeds (none with one seed), ``≥k`` for a
    censored edge count."""
    import pandas as pd

    rows = []
    for width, n_out, cap, edge, cens in [(8, 9, 0.5, 9, False), (8, 10, 0.7, 12, True),
                                          (8, 4, 0.9, 12, True), (16, 9, 0.2, 9, False)]:
        rows.append({"model.width": width, "probe.classes_n_classes": 10,
                     "probe.classes_top_k": 12, "probe.classes_n_outliers": n_out,
                     "probe.classes_n_outliers_edge": edge,
                     "probe.classes_n_outliers_edge_censored": cens,
                     "probe.classes_relation": 0.1,
                     **{f"probe.classes_{m}": cap for m in (
                         "capture_top_c_minus_1", "capture_top_c", "overlap_top_c_minus_1",
                         "overlap_top_c", "capture_centered_top_c_minus_1",
                         "overlap_centered_top_c_minus_1")}})
    t = class_table(pd.DataFrame(rows), ["model.width"]).set_index("config")
    a, b = t.loc["model.width=8"], t.loc["model.width=16"]
    assert (a["n_seeds"], a["match_c_minus_1"], a["match_c"], a["match_other"]) == (3, 1, 1, 1)
    assert a["outliers"] == "4 (1), 9 (1), 10 (1)" and a["outliers_edge"] == "9 (1), ≥12 (2)"
    assert a["capture_top_c"] == pytest.approx(0.7)
    assert a["capture_top_c_half"] == pytest.approx(4.302652729749464 * 0.2 / math.sqrt(3))
    assert (b["n_seeds"], b["match_c_minus_1"]) == (1, 1) and math.isnan(b["capture_top_c_half"])


def test_c_minus_1_class_means_that_sum_to_zero():
    """Class means with Σ n_c g_c = 0 (the loss gradient at a minimum) span C − 1 dimensions:
    ``relation`` 0, rank C − 1, and inside span V_{C−1} they are captured whole."""
    Q, lam = _planted()
    C = 4
    A = np.random.default_rng(3).standard_normal((C - 1, C - 1)) @ Q[:, :C - 1].T
    G = np.vstack([A, -A.sum(0)])  # equal counts: the mean of the rows is 0
    s = class_structure(G, np.full(C, 5), lam, Q[:, :6])
    assert s.span_rank == C - 1 and s.relation == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(s.capture[C - 1], 1.0, atol=1e-10)
    assert s.scalars()["classes_overlap_top_c_minus_1"] == pytest.approx(1.0, abs=1e-10)
    # a common loss gradient d added to every class mean (outside V) leaves the centered
    # means, and so the centered measures, unchanged; the plain ones drop below 1
    d = 3.0 * Q[:, 20]
    shifted = class_structure(G + d, np.full(C, 5), lam, Q[:, :6]).scalars()
    assert shifted["classes_capture_centered_top_c_minus_1"] == pytest.approx(1.0, abs=1e-10)
    assert shifted["classes_overlap_centered_top_c_minus_1"] == pytest.approx(1.0, abs=1e-10)
    assert shifted["classes_capture_top_c_minus_1"] < 0.9
    assert shifted["classes_relation"] > 0.1


def test_capture_and_cosines_by_hand():
    V = np.eye(3)[:, :2]
    np.testing.assert_allclose(capture(V, [[1.0, 1.0, 1.0], [0.0, 3.0, 4.0]]), [2 / 3, 9 / 25])
    a = math.radians(30)
    Q = np.array([[math.cos(a)], [0.0], [math.sin(a)]])  # 30° from span V
    np.testing.assert_allclose(principal_cosines(V, Q), [math.cos(a)], atol=1e-15)
    assert span_basis([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]).shape == (3, 1)


@pytest.mark.parametrize("lam, gap, edge, above", [
    ([100.0, 90, 80, 70, 60, 50, 40, 30, 20, 1.0, 0.9, 0.8], 9, 5.0, 9),  # C − 1 of 10
    ([100.0, 90, 80, 70, 60, 50, 40, 30, 20, 10, 0.5, 0.45], 10, 5.0, 10),  # C
    ([5.0, 1.0, 0.99, 0.98], 1, 0.995, 2),  # the rules may differ: the edge sits in the bulk
    ([3.0, 2.0, 1.0, -0.5], 3, 0.5, 3),  # a crossing to <= 0 is the largest gap
    ([-1.0, -2.0, -3.0], 0, 0.0, 0),
])
def test_outlier_rules_on_constructed_spectra(lam, gap, edge, above):
    assert count_outliers_gap(lam) == gap
    assert count_outliers_gap(list(reversed(lam))) == gap  # the order given does not matter
    assert count_above(lam, edge) == above


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_class_mean_gradients_equal_a_per_sample_loop_in_float64(loss):
    from landscope.losses import ClassificationLoss, attach

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    objective = ClassificationLoss(loss)
    attach(model, objective)
    x = torch.randn(23, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 0, 1] * 3 + [0, 1, 0, 1, 1])  # class 2 absent
    G, counts = class_mean_gradients(model, ProbeData.from_tensors(x, y, micro_batch=7))
    params = list(model.parameters())
    ref = torch.zeros(3, sum(p.numel() for p in params), dtype=torch.float64)
    for xi, yi in zip(x, y):
        ell = objective(model(xi[None]), yi[None])
        ref[yi] += torch.cat([g.reshape(-1) for g in torch.autograd.grad(ell, params)])
    ref[:2] /= torch.tensor([(y == 0).sum(), (y == 1).sum()], dtype=torch.float64)[:, None]
    assert counts.tolist() == [int((y == 0).sum()), int((y == 1).sum()), 0]
    torch.testing.assert_close(G, ref, rtol=1e-12, atol=1e-14)
    # Σ_c (n_c / n) g_c is the probe-loss gradient
    full = torch.autograd.grad(objective(model(x), y), params)
    torch.testing.assert_close(counts.double() @ G / len(y),
                               torch.cat([g.reshape(-1) for g in full]), rtol=1e-12, atol=1e-14)


def _dense(model: nn.Module, data: ProbeData):
    """The dense Hessian of the probe loss (torch.func.hessian, float64) and its eigenpairs."""
    m = model.double()
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    x = torch.cat([b[0] for b in data.batches]).double()
    y = torch.cat([b[1] for b in data.batches])

    def loss(flat):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = flat[i:i + s.numel()].reshape(s)
            i += s.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(m, parts, (x,)), y)

    lam, vec = torch.linalg.eigh(torch.func.hessian(loss)(theta))
    return lam.flip(0).numpy(), vec.flip(1).numpy()


def test_a_runner_job_reports_what_a_dense_computation_gives(compose, tmp_path):
    """mnist1d, a width-6 MLP (C = 10, 316 parameters) trained 3 epochs; probe.classes with no
    top-k of the run: its own Lanczos (C + 2 = 12 pairs)."""
    cfg = compose(TINY)
    result = train_job(cfg, tmp_path, TINY)
    assert result["status"] == COMPLETED
    s = result["probes"]
    assert s["classes_n_classes"] == 10 and s["classes_top_source"] == "own"
    assert s["classes_top_k"] == 12 and s["classes_hvps"] > 0 and s["classes_top_converged"]
    model, splits = JobDir(tmp_path).load_model()
    data = probe_data(splits.train, cfg.probe)
    lam, vec = _dense(model, data)
    G, counts = class_mean_gradients(model, data)
    ref = class_structure(G, counts, lam[:12], vec[:, :12])
    pfp = result["probe_fingerprint"]
    with np.load(tmp_path / "probes" / f"{pfp}.npz") as z:
        np.testing.assert_allclose(z["classes_eigenvalues"], lam[:12], rtol=1e-4)
        np.testing.assert_allclose(z["classes_capture_top_c"], ref.capture[10], atol=1e-3)
        np.testing.assert_array_equal(z["classes_counts"], counts.numpy())
    for key, want in ref.scalars().items():
        if key in ("classes_top_source", "classes_hvps"):
            continue
        assert s[key] == pytest.approx(want, rel=1e-3, abs=1e-3), key


@pytest.mark.parametrize("value", [-1, 1, 2])
def test_bad_classes_top_k_is_one_config_error(compose, value):
    with pytest.raises(ConfigError) as err:
        validate(compose(["probe.classes=true", f"probe.classes_top_k={value}"]))
    assert str(err.value) == ("probe.classes_top_k must be 0 (automatic) or >= 3 (C + 1 for "
                              f"C >= 2 classes) (got {value})")


def test_classes_with_probe_none_is_one_config_error(compose):
    with pytest.raises(ConfigError) as err:
        validate(compose(["probe=none", "probe.classes=true"]))
    assert str(err.value) == ("probe.classes must be false with probe=none (the probe stage is "
                              "off; choose a probe preset, e.g. probe=basic) (got True)")


def test_runner_refuses_a_bad_classes_top_k_with_exit_2(tmp_path, data_dir):
    proc = run_cli(["experiment=smoke", "probe.classes=true", "probe.classes_top_k=2"], tmp_path,
                   data_dir=data_dir)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert lines == ["error: probe.classes_top_k must be 0 (automatic) or >= 3 (C + 1 for C >= 2 "
                     "classes) (got 2)"]


def test_the_option_off_leaves_the_probe_fingerprint_and_results_alone(compose):
    from landscope.jobs import probe_fingerprint

    base = compose(["probe=standard"])
    assert probe_fingerprint(compose(["probe=standard", "probe.classes=false"])) == \
        probe_fingerprint(base)
    assert probe_fingerprint(compose(["probe=standard", "probe.classes_top_k=0"])) == \
        probe_fingerprint(base)
    assert probe_fingerprint(compose(["probe=standard", "probe.classes=true"])) != \
        probe_fingerprint(base)


def test_report_section_on_two_seeds(tmp_path, data_dir):
    """Two seeds with the run's own top-12 (probe.top_k=12): the section's row equals the
    counts and the t interval recomputed from the jobs' result.json."""
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", *TINY, "probe.top_k=12", f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=seed${seed}"]
    proc = run_cli(args, tmp_path, data_dir=data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [read_json(sweep / f"seed{s}" / "result.json") for s in (0, 1)]
    assert all(r["probes"]["classes_top_source"] == "run" for r in results)
    build_report([sweep], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Class structure of the outliers" in text and "no p-value" in text
    assert (tmp_path / "report" / "figures" / "class_structure.png").stat().st_size > 0
    import pandas as pd

    row = pd.read_csv(tmp_path / "report" / "class_structure.csv").iloc[0]
    n_out = [r["probes"]["classes_n_outliers"] for r in results]
    assert row["n_seeds"] == 2 and row["match_c_minus_1"] == sum(n == 9 for n in n_out)
    assert row["match_c"] == sum(n == 10 for n in n_out)
    cap = np.array([r["probes"]["classes_capture_top_c"] for r in results])
    half = 12.706204736174707 * cap.std(ddof=1) / math.sqrt(2)  # t_{0.975, 1}
    assert row["capture_top_c"] == pytest.approx(cap.mean(), rel=1e-12)
    assert row["capture_top_c_half"] == pytest.approx(half, rel=1e-9)
    assert class_table(pd.DataFrame(), []).empty
