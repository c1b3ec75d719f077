"""H3's noise comparison: the injected noise of landscope.escape (trace, span, seeding), the
runner's escape.noise / escape.lr_unit settings, and the paired analysis
(landscope.analysis.hypotheses.h3_noise)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from landscope.errors import ConfigError
from landscope.escape import (
    EscapeRule,
    InjectedNoise,
    minibatch_noise_trace,
    run_escape,
    sgd_noise_trace,
)
from test_escape import SMALL, _run, tiny_sweep, two_basin  # noqa: F401  (fixture)


# --------------------------------------------------------------------------- the noise
@pytest.mark.parametrize("kind, dim, k, draws", [("isotropic", 50, None, 4000),
                                                 ("topk", 20, 3, 20000)])
def test_injected_noise_has_the_stated_trace(kind, dim, k, draws):
    """mean ‖ξ‖² over many draws is the trace: isotropic ‖ξ‖²/T ~ χ²_D/D (sd of the mean
    sqrt(2/(D·draws)) = 0.003), top-k χ²_k/k (sd 0.0058); tolerance 3 % (≥ 5 sd)."""
    basis = np.random.default_rng(1).standard_normal((dim, k)) if k else None  # not orthonormal
    noise = InjectedNoise(kind, 2.0, dim, basis, torch.Generator().manual_seed(3))
    xi = torch.stack([noise.sample() for _ in range(draws)])
    assert xi.dtype == torch.float64 and xi.shape == (draws, dim)
    assert float((xi ** 2).sum(1).mean()) == pytest.approx(2.0, rel=0.03)
    assert float(xi.mean(0).abs().max()) < 0.05  # centred
    if kind == "isotropic":  # equal variance in every coordinate
        var = (xi ** 2).mean(0)
        assert float(var.mean()) == pytest.approx(2.0 / dim, rel=0.03)


def test_topk_noise_lies_in_the_span_of_the_given_vectors_and_is_seeded():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((30, 4))
    q, _ = np.linalg.qr(basis)  # an independent orthonormal basis of the same span
    draws = [InjectedNoise("topk", 1.5, 30, basis, torch.Generator().manual_seed(7)).sample()
             for _ in range(2)]
    assert torch.equal(draws[0], draws[1])  # the same generator seed: the same draw
    noise = InjectedNoise("topk", 1.5, 30, basis, torch.Generator().manual_seed(8))
    assert noise.k == 4
    for _ in range(50):
        xi = noise.sample().numpy()
        assert np.linalg.norm(xi - q @ (q.T @ xi)) <= 1e-10 * np.linalg.norm(xi)
    for bad in (None, np.zeros((30, 2)), np.ones((29, 2))):
        with pytest.raises(ConfigError):
            InjectedNoise("topk", 1.0, 30, bad)
    with pytest.raises(ConfigError):
        InjectedNoise("gaussian", 1.0, 30)


def test_minibatch_trace_and_sgd_noise_trace():
    assert minibatch_noise_trace(3.0, 1, 100) == pytest.approx(3.0)
    assert minibatch_noise_trace(3.0, 10, 100) == pytest.approx(0.3 * 90 / 99)
    assert minibatch_noise_trace(3.0, 100, 100) == 0.0 == minibatch_noise_trace(3.0, 500, 100)
    model, data = two_basin((-0.9, 0.05), n=64)
    got = sgd_noise_trace(model, data.train, chunk=16)
    grads = []
    for x, y in data.train.batches(1):
        from landscope.losses import task_loss

        g = torch.autograd.grad(task_loss(model, model(x.double()), y), [model.theta])[0]
        grads.append(g.reshape(-1))
    g = torch.stack(grads)
    assert got == pytest.approx(float(((g - g.mean(0)) ** 2).sum(1).mean()), rel=1e-9)


def test_run_escape_noise_modes():
    model, data = two_basin((-1.0, 0.0))
    kw = dict(lr=0.15, batch_size=4, seed=0, max_steps=60, eval_every=2,
              rule=EscapeRule(delta_abs=0.05), eval_size=None)
    plain, sgd = run_escape(model, data.train, **kw), run_escape(model, data.train, noise="sgd",
                                                                 **kw)
    assert plain.to_dict() == sgd.to_dict() and plain.noise == "sgd"
    assert plain.noise_trace is None and plain.noise_k is None
    tr = sgd_noise_trace(model, data.train)
    basis = torch.tensor([[0.0], [1.0]])
    runs = [run_escape(model, data.train, noise="topk", sigma_trace=tr, noise_basis=basis, **kw)
            for _ in range(2)]
    assert runs[0].to_dict() == runs[1].to_dict()  # seeded
    assert runs[0].noise_k == 1
    assert runs[0].noise_trace == pytest.approx(tr / 4 * 252 / 255)
    iso = run_escape(model, data.train, noise="isotropic", sigma_trace=tr, **{**kw, "seed": 1})
    assert iso.noise == "isotropic" and iso.losses != runs[0].losses
    with pytest.raises(ConfigError):
        run_escape(model, data.train, noise="isotropic", **kw)  # no tr Σ
    with pytest.raises(ConfigError):
        run_escape(model, data.train, noise="levy", sigma_trace=tr, **kw)


# --------------------------------------------------------------------------- the command
def test_default_settings_keep_their_fingerprint():
    from landscope.escape.settings import escape_config, settings_fingerprint

    assert settings_fingerprint(escape_config([])) == "7c4fca0204b4f67b"  # as before noise
    s = escape_config(["escape.noise=[sgd,isotropic,topk]", "escape.lr_unit=stability"])
    assert s["noise"] == ["sgd", "isotropic", "topk"] and s["lr_unit"] == "stability"
    assert settings_fingerprint(s) != "7c4fca0204b4f67b"
    for bad in ("escape.noise=[levy]", "escape.noise=[sgd,sgd]", "escape.lr_unit=relative",
                "escape.noise_k=0"):
        with pytest.raises(ConfigError):
            escape_config([bad])


def test_command_noise_comparison_end_to_end(tiny_sweep, capsys):  # noqa: F811
    from landscope.analysis.hypotheses.h3 import load_escapes
    from landscope.analysis.hypotheses.h3_noise import load_noise_escapes, noise_test
    from landscope.io import read_json

    argv = [tiny_sweep, "escape.lrs=[0.5]", "escape.batch_sizes=[8]", "escape.seeds=[0]",
            "escape.max_steps=10", "escape.eval_every=5", "escape.eval_size=100",
            "escape.noise=[sgd,isotropic,topk]", "escape.lr_unit=stability", "escape.noise_k=2",
            "escape.noise_samples=64"]
    code, out, err = _run(argv, capsys)
    assert code == 0, out + err
    rec = read_json(sorted(tiny_sweep.glob("seed=0/escape/*.json"))[0])
    assert rec["complete"] and rec["lambda_max"] == 1.0 and rec["noise_k"] == 2
    assert rec["basis_source"].startswith("lanczos") and rec["sigma_trace"] > 0
    runs = rec["runs"]
    assert [r["noise"] for r in runs] == ["sgd", "isotropic", "topk"]
    for r in runs:
        assert r["lr"] == pytest.approx(0.5 * 2 / 1.0) and r["requested_lr"] == 0.5
    assert runs[0]["noise_trace"] is None
    assert runs[1]["noise_trace"] == pytest.approx(rec["sigma_trace"] / 8 * 192 / 199)
    # plain results beside it: load_escapes prefers them, the noise loader finds the others
    code, out, err = _run([tiny_sweep, *SMALL], capsys)
    assert code == 0
    assert set(load_escapes(tiny_sweep)["noise"]) == {"sgd"}
    df = load_noise_escapes(tiny_sweep)
    assert set(df["noise"]) == {"sgd", "isotropic", "topk"} and (df["lr_fraction"] == 0.5).all()
    res = noise_test(df, interval=False)
    assert res.row("topk")["n_minima"] == 2
    assert "too few minima" in res.row("topk")["reason"]


# --------------------------------------------------------------------------- the analysis
def _minimum(times_a, times_r, cap=400, a="topk"):
    rows = []
    for noise, times in ((a, times_a), ("isotropic", times_r)):
        for i, t in enumerate(times):
            rows.append({"job": "m", "noise": noise, "lr": 0.1, "batch_size": 4 if i % 2 else 16,
                         "escaped": t is not None, "time": float(t if t is not None else cap),
                         "max_steps": cap})
    return pd.DataFrame(rows)


def test_minimum_contrast_rules():
    from landscope.analysis.hypotheses.h3_noise import minimum_contrast

    a, r = [10, 20, 14, None, 30, 12], [40, 60, None, 50, 90, 44]
    c = minimum_contrast(_minimum(a, r), "topk")
    assert c.kind == "aft" and c.d < 0
    swapped = minimum_contrast(_minimum(r, a), "topk")  # antisymmetric in the labels
    assert swapped.d == pytest.approx(-c.d, abs=1e-5)
    assert minimum_contrast(_minimum([4, 6], [None, None]), "topk").d == -math.inf
    assert minimum_contrast(_minimum([None, None], [4, 6]), "topk").d == math.inf
    none = minimum_contrast(_minimum([None] * 4, [None] * 4), "topk")
    assert none.d == 0.0 and none.kind == "no escapes"
    tied = minimum_contrast(_minimum([2, 2], [4, 4]), "topk")  # σ → 0: imputed difference
    assert tied.kind == "imputed" and tied.d == pytest.approx(math.log(2) - math.log(4))


def test_sign_flip_test_is_exact():
    from landscope.analysis.hypotheses.h3_noise import sign_flip_test

    stat, p, flips, exact = sign_flip_test(-np.ones(12))
    assert exact and flips == 4096 and p == pytest.approx(2 / 4096) and stat == -1
    _, p, flips, exact = sign_flip_test(np.r_[-np.ones(13), 0.5], n_flip=999)
    assert not exact and flips == 999 and p == pytest.approx(1 / 1000)
    rng = np.random.default_rng(0)
    ps = np.array([sign_flip_test(rng.standard_normal(8))[1] for _ in range(400)])
    assert 0.01 <= np.mean(ps < 0.05) <= 0.10


def test_noise_test_on_simulated_sweeps(tmp_path):
    from landscope.analysis.calibration.h3 import _simulate_noise
    from landscope.analysis.hypotheses.h3_noise import (
        INCONCLUSIVE,
        SUPPORTED,
        load_noise_escapes,
        noise_test,
    )

    sweep = tmp_path / "planted"
    sweep.mkdir()
    _simulate_noise(np.random.default_rng(0), sweep, topk_effect=-1.0)
    res = noise_test(load_noise_escapes(sweep))
    top = res.row("topk")
    assert top["verdict"] == SUPPORTED and top["n_minima"] == 12 and top["exact"]
    assert top["ci_low"] < -1.0 + 0.5 and -1.0 - 0.5 < top["ci_high"] < 0
    assert top["ci_low"] < top["estimate"] < top["ci_high"]
    assert res.row("sgd")["verdict"] == INCONCLUSIVE
