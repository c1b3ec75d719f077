"""The SGD-as-SDE check (issue #21 item 3): the closed-form predictions
(:mod:`landscope.sde.theory`), the batched simulation against a plain ``torch.optim.SGD`` loop
on :class:`~landscope.synthetic.TwoBasinModel`, agreement with the exact Gibbs mass where the
theory holds, the section's statistics and verdicts (:mod:`landscope.analysis.sde_stats`), the
preset, ``runner.sde``'s refusals, and the report section on a tiny real sweep."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli
from landscope.analysis.sde_stats import (
    binom_pvalues,
    calibrate,
    cell_rows,
    holm,
    verdicts,
    wilson,
)
from landscope.sde import theory as th
from landscope.sde.simulate import batch_noise, simulate
from landscope.synthetic import TwoBasinModel, _two_basin_rows
from landscope.synthetic_forms import TwoBasinReference


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _xi(ref: TwoBasinReference, n: int = 256) -> torch.Tensor:
    return torch.from_numpy(_two_basin_rows(ref, n, 0.0, np.random.default_rng([0, 4]))[:, 2:4])


# ------------------------------------------------------------------ theory
def test_laplace_log_odds_on_constructed_values():
    # -(0.1 - 0.3)/0.1 + 1/2 log(1/4) = 2 - log 2
    assert th.laplace_log_odds(0.1, 0.3, 4.0, 1.0, 0.1) == pytest.approx(2 - math.log(2), 1e-15)
    assert th.odds_to_fraction(0.0) == 0.5
    assert th.odds_to_fraction(math.log(3)) == pytest.approx(0.75, 1e-15)
    assert th.fraction_to_odds(0.75) == pytest.approx(math.log(3), 1e-15)


def test_two_basin_prediction_from_closed_forms():
    """tilt 0: equal losses, det H_s = 2c*10, det H_f = 2c*1, so the odds are sqrt(1/10) at
    every T; with a tilt the energy term is 4cs/(3T)."""
    ref = TwoBasinReference(sharp=10.0, flat=1.0, barrier=0.125, tilt=0.0)
    for t in (0.01, 1.0):
        assert th.two_basin_log_odds(ref, t) == pytest.approx(0.5 * math.log(0.1), 1e-14)
    ref = TwoBasinReference(sharp=4.0, flat=1.0, barrier=0.5, tilt=0.1)
    c, s, t = ref.scale, 0.1, 0.2
    expect = 4 * c * s / (3 * t) + 0.5 * math.log(2 * c * (1 - s) * 1 / (2 * c * (1 + s) * 4))
    assert th.two_basin_log_odds(ref, t) == pytest.approx(expect, 1e-14)
    # the discrete correction: det(H (I - eta H/2)); unstable minimum -> NaN
    eta = 0.1
    dets = [2 * c * (1 + s) * (1 - eta * c * (1 + s)) * 4 * (1 - eta * 2),
            2 * c * (1 - s) * (1 - eta * c * (1 - s)) * 1 * (1 - eta / 2)]
    assert th.discrete_log_odds(ref, t, eta) == pytest.approx(
        4 * c * s / (3 * t) + 0.5 * math.log(dets[1] / dets[0]), 1e-14)
    assert math.isnan(th.discrete_log_odds(ref, t, 0.5))


def test_t_eff_conventions():
    assert th.t_eff(0.1, 4, 2.0, 256) == pytest.approx(0.1 * 4 / 8, 1e-15)
    assert th.t_eff(0.1, 4, 2.0, 256, "epoch") == pytest.approx(0.05 * 252 / 255, 1e-15)
    assert th.t_eff(0.1, 256, 2.0, 256, "epoch") == 0.0  # full batch: no noise
    with pytest.raises(ValueError):
        th.t_eff(0.1, 4, 2.0, 256, "poisson")


def test_gibbs_mass_is_exact_on_symmetric_and_cold_limits():
    sym = TwoBasinReference(sharp=1.0, flat=1.0, barrier=0.3, tilt=0.0)
    assert th.gibbs_sharp_fraction(sym, 0.2) == pytest.approx(0.5, abs=1e-12)
    ref = TwoBasinReference(sharp=10.0, flat=1.0, barrier=0.5, tilt=0.05)
    for t in (0.01, 0.02):  # Laplace's error is O(T / barrier)
        gap = th.gibbs_sharp_fraction(ref, t) - th.odds_to_fraction(th.two_basin_log_odds(ref, t))
        assert abs(gap) < 0.15 * t
    hot = th.gibbs_sharp_fraction(ref, 0.4) - th.odds_to_fraction(th.two_basin_log_odds(ref, 0.4))
    assert hot > 0.04  # the Laplace approximation fails once T is near the barrier


def test_relaxation_time_is_eyring_kramers():
    ref = TwoBasinReference(sharp=4.0, flat=1.0, barrier=0.5, tilt=0.1)
    c, s, t, eta = ref.scale, 0.1, 0.1, 0.02
    neg, ksad = c * (1 - s * s), ref.k(s)
    rates = [neg / (2 * math.pi) * math.sqrt(2 * c * (1 + s) * 4 / (neg * ksad))
             * math.exp(-(ref.saddle_loss + 2 * c * s / 3) / t),
             neg / (2 * math.pi) * math.sqrt(2 * c * (1 - s) * 1 / (neg * ksad))
             * math.exp(-(ref.saddle_loss - 2 * c * s / 3) / t)]
    assert th.relaxation_steps(ref, t, eta) == pytest.approx(1 / (eta * sum(rates)), 1e-12)


def test_dense_hessian_determinants_equal_the_closed_forms():
    from landscope.data import DataBundle, DatasetMeta, TensorSplit
    from landscope.sde.jobs import dense_check

    ref = TwoBasinReference(sharp=4.0, flat=1.5, barrier=0.3, tilt=-0.2, noise=2.0)
    rows = torch.from_numpy(_two_basin_rows(ref, 64, 0.0, np.random.default_rng([1, 4])))
    split = TensorSplit(rows, torch.zeros(64, dtype=torch.int64))
    data = DataBundle(split, split, DatasetMeta("two_basin", (4,), 1, 64, 64, ref))
    got = dense_check(ref, data)
    c, s = ref.scale, -0.2
    assert got["det_sharp_dense"] == pytest.approx(2 * c * (1 + s) * 4.0, rel=1e-13)
    assert got["det_flat_dense"] == pytest.approx(2 * c * (1 - s) * 1.5, rel=1e-13)
    assert max(got["rel_diff_sharp"], got["rel_diff_flat"]) < 1e-13


# ------------------------------------------------------------------ simulation
@pytest.mark.parametrize("sampling,b", [("replacement", 3), ("epoch", 5)])
def test_batched_runs_equal_plain_sgd_loops(sampling, b):
    """Each of 3 batched runs equals torch.optim.SGD on TwoBasinModel fed the same batches
    (autograd gradients; float rounding only)."""
    ref = TwoBasinReference(sharp=10.0, flat=1.0, barrier=0.5, tilt=0.05, noise=4.0)
    n = 16
    rows = torch.from_numpy(_two_basin_rows(ref, n, 0.0, np.random.default_rng([0, 4])))
    drawn: list = []
    tr = simulate(ref, rows[:, 2:4], eta=0.03, batch_size=b, runs=3, steps=40, seed=7,
                  start=(0.05, 0.0), sampling=sampling, indices_out=drawn)
    for r in range(3):
        model = TwoBasinModel(ref).double()
        with torch.no_grad():
            model.theta.copy_(torch.tensor([0.05, 0.0], dtype=torch.float64))
        opt = torch.optim.SGD(model.parameters(), lr=0.03)
        for idx in drawn:
            opt.zero_grad()
            model.task_loss(model(rows[idx[:, r]]), None).backward()
            opt.step()
        torch.testing.assert_close(model.theta.detach(), tr.final[r], rtol=1e-12, atol=1e-13)
    if sampling == "epoch":  # every epoch visits every sample exactly once per run
        epoch = torch.cat(drawn[:-(-n // b)], 0)
        assert all(sorted(epoch[:, r].tolist()) == list(range(n)) for r in range(3))


def test_a_bar_counts_the_steps_and_changes_no_value(bars):
    ref = TwoBasinReference(sharp=10.0, flat=1.0, barrier=0.5, tilt=0.05, noise=4.0)
    rows = torch.from_numpy(_two_basin_rows(ref, 16, 0.0, np.random.default_rng([0, 4])))
    kw = dict(eta=0.03, batch_size=3, runs=5, steps=40, seed=7, start=(0.05, 0.0),
              checkpoints=[10, 20])
    plain = simulate(ref, rows[:, 2:4], **kw)
    shown = simulate(ref, rows[:, 2:4], progress="sde", **kw)
    assert torch.equal(plain.final, shown.final) and plain.sharp == shown.sharp
    assert [(b["desc"], b["total"], b["n"], b["closed"]) for b in bars.shown()] == [
        ("sde", 40, 40, True)]


def test_batch_noise_is_the_mean_of_the_drawn_rows():
    xi = torch.arange(20, dtype=torch.float64).view(10, 2)
    idx = torch.tensor([[0, 9], [1, 9], [2, 0]])  # (B=3, R=2)
    want = torch.stack([xi[[0, 1, 2]].mean(0), xi[[9, 9, 0]].mean(0)])
    torch.testing.assert_close(batch_noise(xi, idx), want, rtol=0, atol=1e-15)


def test_diverged_runs_count_on_neither_side():
    """A step far above 2/lambda_max sends every run to infinity: none counts as sharp."""
    ref = TwoBasinReference(sharp=10.0, flat=1.0, barrier=0.5, tilt=0.05, noise=4.0)
    tr = simulate(ref, _xi(ref), eta=1.0, batch_size=1, runs=20, steps=200, seed=0,
                  start=(-0.5, 0.0))
    assert tr.diverged == 20 and tr.sharp == [0] and tr.switched == (0, 0)


def test_observed_fraction_matches_the_exact_gibbs_mass_where_the_theory_holds():
    """Small step (eta lambda_max = 0.08), low barrier (Delta L / T = 2.3) and 7.5 relaxation
    times: the SDE's stationary law applies, and 3,000 runs land inside the Wilson interval
    of the exact Gibbs mass (and the section's verdict is 'holds')."""
    ref = TwoBasinReference(sharp=4.0, flat=1.0, barrier=0.5, tilt=0.1, noise=4.0)
    eta, runs, steps = 0.02, 3000, 8000
    t = th.t_eff(eta, 1, ref.noise, 256)
    assert steps / th.relaxation_steps(ref, t, eta) > 7
    tr = simulate(ref, _xi(ref), eta=eta, batch_size=1, runs=runs, steps=steps, seed=0,
                  start=(ref.tilt, 0.0), checkpoints=[steps // 2])
    lo, hi = wilson(tr.sharp[-1], runs)
    assert lo <= th.gibbs_sharp_fraction(ref, t) <= hi
    assert lo <= th.odds_to_fraction(th.two_basin_log_odds(ref, t)) <= hi
    assert tr.diverged == 0


# ------------------------------------------------------------------ statistics
def test_wilson_and_exact_binomial_p_values_match_references():
    from scipy.stats import binomtest
    from statsmodels.stats.proportion import proportion_confint

    for k, n in ((0, 10), (50, 100), (37, 4000), (4000, 4000)):
        want = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert wilson(k, n) == pytest.approx(want, rel=1e-10, abs=1e-15)
    for n, p in ((40, 0.3), (200, 0.81)):
        pv = binom_pvalues(n, p)
        for k in (0, 5, 12, 30, n):
            assert pv[k] == pytest.approx(binomtest(k, n, p).pvalue, rel=1e-9, abs=1e-300)


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03, 0.5]).tolist() == [True, False, False, False]
    assert holm([0.01, 0.02, 0.012]).tolist() == [True, True, True]
    assert holm([0.2, float("nan"), 0.01]).tolist() == [False, False, True]


def _row(**kw) -> dict:
    base = {"p_laplace": 0.5, "p_gibbs": 0.5, "steps_over_tau": 10.0, "mcnemar_p": 0.5,
            "diverged": 0, "sampling": "replacement"}
    return {**base, **kw}


def test_verdicts_on_a_constructed_table():
    t = pd.DataFrame([
        _row(),                                          # holds
        _row(p_laplace=1e-6, p_gibbs=1e-6),              # both rejected, equilibrated
        _row(p_laplace=1e-6),                            # Laplace only
        _row(p_laplace=1e-6, steps_over_tau=1.0),        # too short
        _row(p_laplace=1e-6, mcnemar_p=1e-4),            # still drifting
        _row(steps_over_tau=0.5),                        # agrees, not explained
        _row(p_laplace=0.02),                            # rejected alone, not after Holm
        _row(p_gibbs=1e-6),                              # Laplace agrees, the SDE law not
        _row(diverged=3),                                # non-finite runs
        _row(p_laplace=1e-6, p_gibbs=1e-6, sampling="epoch")])
    got = verdicts(t)["verdict"].tolist()
    assert got == ["holds", "breaks: step size", "breaks: Laplace approximation",
                   "breaks: not equilibrated", "breaks: not equilibrated",
                   "holds (not equilibrated)", "holds", "holds by cancellation",
                   "breaks: runs diverged", "breaks: epoch sampling"]


def _record(cells: list[dict], steps: int = 1000) -> dict:
    return {"job": "j", "settings": {"steps": steps}, "cells": cells}


def _cell(sharp: int, runs: int, laplace: float, **kw) -> dict:
    base = {"sampling": "replacement", "eta": 0.1, "batch_size": 1, "t_eff": 0.1,
            "runs": runs, "diverged": 0, "sharp": sharp, "laplace": laplace, "gibbs": laplace,
            "discrete": laplace, "barrier_over_t": 3.0, "eta_lambda_max": 0.2,
            "relaxation_steps": 100.0, "sharp_at": [sharp, sharp], "switched": [10, 12]}
    return {**base, **kw}


def test_cell_rows_compute_intervals_and_tests():
    t = cell_rows([_record([_cell(30, 100, 0.3), _cell(60, 100, 0.3, eta=0.2)])])
    assert t["observed"].tolist() == [0.3, 0.6]
    assert t.loc[0, "p_laplace"] == pytest.approx(1.0)
    assert t.loc[1, "p_laplace"] < 1e-7 and t.loc[0, "steps_over_tau"] == 10.0
    assert t.loc[0, "mcnemar_p"] == pytest.approx(binom_pvalues(22, 0.5)[10])
    assert (t.loc[0, "ci_low"], t.loc[0, "ci_high"]) == wilson(30, 100)
    assert verdicts(t)["verdict"].tolist() == ["holds", "breaks: step size"]


def test_calibration_rejects_at_most_alpha_under_the_null():
    t = cell_rows([_record([_cell(0, 4000, p, eta=i) for i, p in
                            enumerate([0.1, 0.3, 0.5, 0.7, 0.9, 0.35])])])
    cal = calibrate(t, reps=600, shift=0.03)
    assert cal["familywise"] <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 600)
    assert cal["per_cell"] <= cal["familywise"]
    assert cal["power"] > 0.5  # +0.03 at n = 4000 is 3.8 standard errors


# ------------------------------------------------------------------ config and command
def test_preset_composes(compose):
    cfg = compose(["experiment=sde"])
    assert cfg.dataset.name == "two_basin" and cfg.model.name == "two_basin"
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.momentum == 0
    assert (cfg.dataset.noise, cfg.dataset.barrier, cfg.dataset.tilt) == (4.0, 0.5, 0.05)
    from hydra.core.global_hydra import GlobalHydra  # noqa: F401 (compose leaves it clean)


def _run(argv, capsys):
    from runner import sde

    with pytest.raises(SystemExit) as exit_info:
        sde.main([str(a) for a in argv])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.mark.parametrize("override,needle", [
    ("sde.runs=1", "sde.runs must be >= 10 (got 1)"),
    ("sde.sampling=[poisson]", "sde.sampling must be"),
    ("sde.start=corner", "sde.start must be saddle or origin"),
    ("sde.steps=many", "sde.steps"),
    ("sde.walkers=3", "unknown setting sde.walkers"),
    ("train.lr=0.1", "only sde.KEY=VALUE"),
])
def test_bad_settings_are_one_config_error_line_exit_2(tmp_path, capsys, override, needle):
    code, out, err = _run([tmp_path, override], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0] and out == ""


def test_sweep_command_and_report_section(tmp_path, data_dir, capsys, bars, monkeypatch):
    """Two real jobs of the preset (eta 0.05, B 1 and 2), runner.sde with 200 runs of 400
    steps, a cached second call, and the report's section and figure."""
    from landscope.analysis.report import build_report
    from landscope.io import read_json

    proc = run_cli(["-m", "experiment=sde", "optimizer.lr=0.05", "train.batch_size=1,2",
                    "train.epochs=1"], tmp_path, data_dir=data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "sde"
    small = ["sde.runs=200", "sde.steps=400"]
    code, out, err = _run([sweep, *small], capsys)
    assert code == 0 and "2 computed" in out, out + err
    said = [ln for ln in out.splitlines() if ln.startswith(("sde plan, ", "computed: "))]
    assert [ln.split(",")[0].split(":")[0] for ln in said] == ["sde plan", "computed"] * 2
    assert re.fullmatch(r"sde plan, optimizer\.lr=0\.05,seed=0,train\.batch_size=1,train\."
                        r"epochs=1: eta 0\.05, B 1, "
                        r"1 sampling × 200 runs × 400 steps, the runs batched as one tensor; "
                        r"~[0-9.e-]+ ms a step \(replacement\), so ~[0-9.e-]+ s", said[0]), said[0]
    code, out, _ = _run([sweep, *small], capsys)
    assert code == 0 and "2 cached" in out
    assert bars.shown() == []  # not a terminal: no bar
    files = sorted(sweep.glob("*/sde/*.json"))
    assert len(files) == 2
    rec = read_json(files[0])
    cell = rec["cells"][0]
    ref = TwoBasinReference(sharp=10.0, flat=1.0, barrier=0.5, tilt=0.05, noise=4.0)
    t = th.t_eff(0.05, cell["batch_size"], 4.0, 256)
    assert cell["t_eff"] == t and cell["runs"] == 200 and cell["checkpoints"][-1] == 400
    assert cell["laplace"] == th.odds_to_fraction(th.two_basin_log_odds(ref, t))
    assert max(rec["problem"]["rel_diff_sharp"], rec["problem"]["rel_diff_flat"]) < 1e-13
    build_report([sweep], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## SDE check: basin probabilities of SGD" in text and "Verdict: the prediction" in text
    assert "dense float64 Hessian" in text
    table = pd.read_csv(tmp_path / "report" / "sde.csv")
    assert sorted(table["batch_size"]) == [1, 2] and (table["runs"] == 200).all()
    assert (tmp_path / "report" / "figures" / "sde.png").stat().st_size > 0
    # sde.progress=true: each job's simulation shows a bar of its steps (off a terminal too)
    code, out, err = _run([sweep, "sde.runs=100", "sde.steps=50", "sde.progress=true"], capsys)
    assert code == 0, out + err
    shown = bars.shown()
    assert len(shown) == 2 and all(b["desc"].startswith("sde ") and b["desc"].endswith(
        " replacement") and (b["total"], b["n"], b["closed"]) == (50, 50, True) for b in shown)


def test_progress_is_neither_stored_nor_fingerprinted():
    from landscope.sde.settings import sde_config, settings_fingerprint

    plain, shown = sde_config(["sde.runs=100"]), sde_config(["sde.runs=100", "sde.progress=false"])
    assert "progress" not in plain and shown == {**plain, "progress": False}
    assert settings_fingerprint(shown) == settings_fingerprint(plain)


def test_a_step_is_timed_over_a_period_of_the_batch_draws():
    from landscope.sde.jobs import plan_line, step_seconds
    from landscope.sde.simulate import cost_period

    assert cost_period("replacement", 256, 8) == 64 and cost_period("epoch", 256, 8) == 32
    assert cost_period("epoch", 10, 3) == 4
    ref = TwoBasinReference(sharp=10.0, flat=1.0, barrier=0.5, tilt=0.05, noise=4.0)
    xi = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = step_seconds(ref, xi, eta=0.05, batch_size=4, runs=50, seed=1, start=(0.05, 0.0),
                     sampling="epoch")
    assert 0 < t < 0.1
    line = plan_line("j", {"sampling": ["replacement", "epoch"], "runs": 50, "steps": 1000},
                     0.05, 4, [0.002, 0.003])
    assert line == ("sde plan, j: eta 0.05, B 4, 2 samplings × 50 runs × 1000 steps, the runs "
                    "batched as one tensor; ~2.0 ms a step (replacement), ~3.0 ms a step "
                    "(epoch), so ~5.0 s")


def test_command_refuses_sweeps_without_two_basin_sgd_jobs(tmp_path, compose, capsys):
    """A completed MNIST-1D job and a two-basin job trained with momentum: both skipped, so
    nothing to do (one error line, exit 2)."""
    from omegaconf import OmegaConf

    from landscope.io import atomic_write_text, write_json

    for name, overrides in (("mlp", ["experiment=smoke"]),
                            ("mom", ["experiment=sde", "optimizer=momentum"])):
        job = tmp_path / name
        cfg = compose(overrides)
        atomic_write_text(job / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(job / "result.json", {"status": "completed", "epochs_completed": 1})
    code, out, err = _run([tmp_path], capsys)
    assert code == 2 and out == ""
    assert err.strip() == f"error: no completed two_basin SGD jobs in {tmp_path}"
