"""The probe suite as a typed pipeline (issue #19 item 4): the same scalars and arrays as before.

``tests/expected/probe_run_expected.json`` / ``.npz`` hold what :func:`run_probes` returned for the
cases below before the suite became a :class:`ProbeRun` (written by running this file as a
script: ``python tests/test_probe_run.py``). Every scalar name (in order), every value except
the timings (names ending in ``seconds``) and every array must come out the same."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from landscope.config import (  # noqa: E402
    DensityConfig,
    NoiseConfig,
    PacBayesConfig,
    ProbeConfig,
    SharpnessConfig,
    TraceConfig,
)
from landscope.data import TensorSplit  # noqa: E402
from landscope.probes import steps  # noqa: E402
from landscope.probes.run import ProbeRun  # noqa: E402
from landscope.probes.suite import finish_run, run_probes, start_run  # noqa: E402
from probe_models import seeded_model  # noqa: E402

DATA = Path(__file__).resolve().parent / "expected"
EXPECTED_JSON = DATA / "probe_run_expected.json"
EXPECTED_NPZ = DATA / "probe_run_expected.npz"
META = types.SimpleNamespace(input_shape=(1, 12), num_classes=3)
N = 48
PACBAYES = dict(enabled=True, n_mc=8, n_select=2, n_match=2, steps=6, batch_size=16,
                beta_grid=[1e-2, 1.0])
SMALL_PACBAYES = dict(pacbayes=PacBayesConfig(**PACBAYES))
TRACE = dict(trace=TraceConfig(enabled=True))
DENSITY = dict(enabled=True, probes=3, steps=10, grid=40)
FULL = dict(top_k=3, bottom_k=2, **TRACE, density=DensityConfig(**DENSITY, logdet_eps=1e-3),
            sharpness=SharpnessConfig(enabled=True, family=True, samples=4),
            noise=NoiseConfig(enabled=True, samples=24), per_block="layer",
            block_top_k=2, verify=True, **SMALL_PACBAYES)
CASES: dict[str, dict[str, Any]] = {
    # every estimator, PAC-Bayes with optimised posteriors and the prior at another model
    "full": FULL,
    # the grid search of the PAC-Bayes posteriors, the prior at 0, a log det that is defined
    "grid_logdet": dict(FULL, bottom_k=0, density=DensityConfig(**DENSITY, logdet_eps=50.0),
                        per_block="none", noise=NoiseConfig(enabled=False, samples=24),
                        pacbayes=PacBayesConfig(**PACBAYES, posterior="grid")),
    # no top-k: the plain Hutchinson trace, the density without deflation, noise without pairs
    "no_top": dict(top_k=0, **TRACE, density=DensityConfig(enabled=True, probes=3, steps=8,
                                                           grid=30, logdet_eps=50.0),
                   noise=NoiseConfig(enabled=True, samples=16, alignment="exact"), verify=True),
    # a product cap cuts Lanczos, the density and the trace short (and says so)
    "capped": dict(top_k=3, bottom_k=2, **TRACE, density=DensityConfig(enabled=True, steps=10),
                   noise=NoiseConfig(enabled=True, samples=16), max_products=40),
    # no time left: every estimator stops at once, the sharpness measures are skipped
    "no_time": dict(top_k=2, **TRACE, density=DensityConfig(enabled=True),
                    sharpness=SharpnessConfig(enabled=True, family=True),
                    noise=NoiseConfig(enabled=True), budget_s=1e-9, **SMALL_PACBAYES),
}


def _inputs(name: str):
    torch.set_num_threads(1)
    model, x, y = seeded_model(dict(name="mlp", width=6, depth=2), META.input_shape,
                               META.num_classes, N, shift=0.3)
    w0 = seeded_model(dict(name="mlp", width=6, depth=2), META.input_shape, META.num_classes,
                      2, seed=1)[0] if name == "full" else None
    cfg = ProbeConfig(data_size=None, micro_batch=N, progress=False, **CASES[name])
    return model, TensorSplit(x, y), cfg, w0


def run_case(name: str):
    """``run_probes`` on a tiny float64 MLP for case ``name`` (one thread: the reductions'
    order is then fixed)."""
    model, split, cfg, w0 = _inputs(name)
    return run_probes(model, split, cfg, w0=w0)


def _untimed(scalars: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scalars.items() if not k.endswith("seconds")}


def write_expected() -> None:
    """Record today's output of every case (run as a script)."""
    DATA.mkdir(exist_ok=True)
    scalars, arrays = {}, {}
    for name in CASES:
        rep = run_case(name)
        scalars[name] = _untimed(rep.scalars)
        arrays.update({f"{name}/{k}": v for k, v in rep.arrays.items()})
        scalars[name]["__arrays__"] = list(rep.arrays)
    EXPECTED_JSON.write_text(json.dumps(scalars, indent=1) + "\n")
    np.savez_compressed(EXPECTED_NPZ, **arrays)


def _same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, (float, int)), where
        if math.isnan(want):
            assert math.isnan(got), where
        else:
            # the verify_* figures compare with a dense float64 eigendecomposition whose last
            # bits depend on LAPACK's thread count (xdist workers run one thread): an error
            # divided by a small stderr keeps ~11 digits, not 12
            rel = 1e-9 if ".verify_" in where else 1e-12
            assert got == pytest.approx(want, rel=rel, abs=1e-12), where
    else:
        assert type(got) is type(want) and got == want, where


@pytest.mark.parametrize("name", list(CASES))
def test_scalars_and_arrays_as_before(name):
    expected = json.loads(EXPECTED_JSON.read_text())[name]
    names = expected.pop("__arrays__")
    rep = run_case(name)
    got = json.loads(json.dumps(_untimed(rep.scalars)))  # as result.json stores them
    assert list(got) == list(expected)
    _same(got, expected, name)
    assert list(rep.arrays) == names
    with np.load(EXPECTED_NPZ) as npz:
        for k in names:
            want, have = npz[f"{name}/{k}"], rep.arrays[k]
            assert have.dtype == want.dtype and have.shape == want.shape, k
            if want.dtype.kind == "f":
                np.testing.assert_allclose(have, want, rtol=1e-12, atol=1e-12, err_msg=k)
            else:
                np.testing.assert_array_equal(have, want, err_msg=k)


# names each step adds (besides what a finished run adds: hvps, probe_cost, probe_seconds, ...)
STEP_NAMES = {
    "top": ({"hvps_top", "top_converged", "lambda_max", "lambda_2", "spectral_gap",
             "condition_number", "eig_max_residual", "eig_all_converged"},
            {"eigenvalues_top", "eigenvectors_top", "residuals_top"}),
    "bottom": ({"hvps_bottom", "lambda_min", "bottom_converged", "negative_ratio"},
               {"eigenvalues_bottom", "eigenvectors_bottom", "residuals_bottom"}),
    "density": ({"density_negative_mass", "density_n_outliers", "density_probes",
                 "logdet_skipped"}, {"density_grid", "density", "slq_nodes", "slq_weights"}),
    "trace": ({"trace", "trace_stderr", "trace_samples", "trace_converged"}, set()),
    "blocks": ({"per_block", "blocks", "block_hvps"}, {"block_names", "block_eigenvalues"}),
    "sharpness": ({"sharpness_l2_rho0.05", "sharpness_keskar_eps0.001", "pac_bayes_sigma",
                   "sharpness_acc_evals"}, set()),
    "noise": ({"noise_trace_sigma", "noise_alignment_ratio", "difficulty_index"},
              {"noise_sigma_eigenvalues"}),
    "pacbayes": ({"pacbayes_naive", "pacbayes_hessian", "pacbayes_prior_mean",
                  "pacbayes_seconds"}, set()),
}


def _step_of(name: str) -> str:
    for step, (scalars, arrays) in STEP_NAMES.items():
        if name in scalars or name in arrays:
            return step
    return ""


def test_each_step_fills_its_field_and_adds_only_its_names():
    """A run step by step: after each step the names of that step appear (and nothing of a
    step that has not run), each step's typed field is set; the finished run is what
    run_probes reports, and scalars()/arrays() do not change the run."""
    model, split, cfg, w0 = _inputs("full")
    run = start_run(model, split, cfg, w0=w0)
    assert isinstance(run, ProbeRun) and run.arrays() == {}
    header = set(run.scalars())
    assert {"probe_mode", "n_params", "probe_plan"} <= header
    assert not any(_step_of(k) for k in header)
    ran: list[str] = []
    for step in steps.steps_for(cfg):
        name = step.__name__.removeprefix("step_")
        step(run)
        ran.append(name)
        assert getattr(run, name) is not None
        s, a = run.scalars(), run.arrays()
        assert STEP_NAMES[name][0] <= set(s) and STEP_NAMES[name][1] <= set(a), name
        assert {_step_of(k) for k in [*s, *a]} - {""} == set(ran), name
        assert "hvps" not in s and "probe_seconds" not in s and "verify_trace_exact" not in s
    assert ran == list(STEP_NAMES)
    finish_run(run)
    s = run.scalars()
    assert run.verification is not None and "verify_trace_rel_error" in s
    assert {"hvps", "probe_cost", "probe_cost_seconds", "probe_seconds"} <= set(s)
    assert _untimed(s) == _untimed(run.scalars()) and list(run.arrays()) == list(run.arrays())
    report = run_case("full")
    assert list(report.scalars) == list(s) and list(report.arrays) == list(run.arrays())


def test_a_result_left_empty_leaves_no_names():
    """The names come from the typed fields only: emptying one field removes exactly that
    estimator's names (a cap that stopped it before it began leaves ``<name>_stopped_by``)."""
    model, split, cfg, w0 = _inputs("full")
    run = start_run(model, split, cfg, w0=w0)
    for step in steps.steps_for(cfg):
        step(run)
    finish_run(run)
    full_s, full_a = run.scalars(), run.arrays()
    run.noise = None
    s, a = run.scalars(), run.arrays()
    gone = set(full_s) - set(s)
    assert STEP_NAMES["noise"][0] <= gone and all(_step_of(k) in ("noise", "") for k in gone)
    assert "noise_samples" in gone and set(full_a) - set(a) == {"noise_sigma_eigenvalues"}
    run.not_started["noise"] = "budget_s"
    assert run.scalars()["noise_stopped_by"] == "budget_s"
    run.pacbayes, run.sharpness, run.verification = None, None, None
    s = run.scalars()
    assert not any(k.startswith(("pacbayes_", "sharpness_", "pac_bayes", "verify_")) for k in s)


def test_run_is_in_probe_mode_throughout_and_restores_mixed_flags(monkeypatch):
    """run_probes puts the model in ``probe.mode`` once for the whole run (no evaluation sets
    and restores the flags): every forward of the run sees eval mode, the model's own mixed
    flags come back, and the results are those of a model already in eval mode."""
    model, split, _, _ = _inputs("no_top")
    cfg = ProbeConfig(data_size=None, micro_batch=N, progress=False, top_k=2, **TRACE,
                      sharpness=SharpnessConfig(enabled=True, rhos=[0.05]),
                      noise=NoiseConfig(enabled=True, samples=8))
    seen: list[bool] = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    model.train()
    first = next(m for m in model.modules() if m is not model)
    first.eval()
    flags = [m.training for m in model.modules()]
    calls: list[bool] = []
    train = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train",
                        lambda m, mode=True: (m is model and calls.append(mode)) or train(m, mode))
    mixed = run_probes(model, split, cfg).scalars
    monkeypatch.undo()
    assert calls == [False]  # the mode is set once, at the start of the run
    handle.remove()
    assert [m.training for m in model.modules()] == flags  # restored, mixed as they were
    assert len(seen) > 10 and not any(seen)
    plain = run_probes(model.eval(), split, cfg).scalars
    assert _untimed(mixed) == _untimed(plain)

if __name__ == "__main__":
    write_expected()
