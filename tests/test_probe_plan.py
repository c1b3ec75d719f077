"""The probe plan (issue #18 item 1): the fewest products the stopping rules allow is a floor of
what the suite spends, the caps a ceiling, the sharpness measures' evaluations are timed on an
objective whose counts stay the measures' own, and their bar counts evaluations."""

from __future__ import annotations

import types

import pytest
import torch

from landscope.config import (
    DensityConfig,
    NoiseConfig,
    ProbeConfig,
    SharpnessConfig,
    TraceConfig,
)
from landscope.data import TensorSplit
from landscope.probes.cost import ProbeLedger
from landscope.probes.hvp import forward_mode
from landscope.probes.objective import ModelObjective, QuadraticObjective
from landscope.probes.plan import (
    ASCENT_EVALS,
    LIST_CHECK,
    LIST_STEPS_BEYOND_K,
    SIGMA_SEARCH_EVALS,
    USUAL_TRACE,
    evaluation_seconds,
    fewest_products,
    most_products,
    sharpness_evaluations,
    usual_products,
)
from landscope.probes.probe_data import ProbeData
from landscope.probes.sharpness import worst_case_sharpness
from landscope.probes.steps import step_sharpness
from landscope.probes.suite import finish_run, run_probes, start_run
from landscope.wording import figure
from probe_models import seeded_model

torch.set_num_threads(1)
META = types.SimpleNamespace(input_shape=(1, 12), num_classes=3)


def _split_and_model(n: int = 60):
    model, x, y = seeded_model(dict(name="mlp", width=8, depth=2), META.input_shape,
                               META.num_classes, n, shift=0.3)
    return model.float(), TensorSplit(x.float(), y)


CONFIGS = {
    "standard-like": ProbeConfig(top_k=5, trace=TraceConfig(enabled=True),
                                 density=DensityConfig(enabled=True, steps=20),
                                 noise=NoiseConfig(enabled=True, samples=40)),
    "no top-k": ProbeConfig(top_k=0, trace=TraceConfig(enabled=True),
                            density=DensityConfig(enabled=True, probes=4, steps=10),
                            noise=NoiseConfig(enabled=True, samples=20, alignment="exact")),
    "bottom-k and noise alone": ProbeConfig(top_k=0, bottom_k=3,
                                            noise=NoiseConfig(enabled=True, samples=20,
                                                              alignment="hutchinson")),
    "no check": ProbeConfig(top_k=4, multiplicity_check=False, trace=TraceConfig(enabled=True)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fewest_products_is_a_floor_and_the_caps_a_ceiling(name):
    model, split = _split_and_model()
    cfg = CONFIGS[name]
    cfg = type(cfg)(**{**cfg.__dict__, "data_size": None, "micro_batch": 60, "progress": False})
    lines: list[str] = []
    s = run_probes(model, split, cfg, log=lines.append).scalars
    spent = {k: c["products"] for k, c in s["probe_cost"].items()}
    dim = s["n_params"]
    assert fewest_products(cfg, dim) <= sum(spent.values())
    most = most_products(cfg, dim)
    assert set(most) == {k for k, v in spent.items() if v > 0} | set(most)
    for k, n in spent.items():
        assert n <= most[k], (k, n, most[k])
    assert s["probe_plan"] == most
    assert lines[0].startswith(f"probe plan: {fewest_products(cfg, dim)} to {sum(most.values())} ")


def test_fewest_products_counts_each_rule():
    cfg = ProbeConfig(top_k=5, trace=TraceConfig(enabled=True, max_samples=500),
                      density=DensityConfig(enabled=True, probes=10, steps=30),
                      noise=NoiseConfig(enabled=True))
    # top-k 5 + the check's 1; the density's first run 30, 9 later runs of 6; the trace 30
    # less the density's 10 samples; the noise's 5 low-rank products
    assert fewest_products(cfg, 10_000) == 5 + 1 + 30 + 9 * 6 + 20 + 5
    assert most_products(cfg, 10_000) == {"top": 150 + 71, "density": 300, "trace": 500,
                                          "noise": 5}
    alone = ProbeConfig(top_k=0, trace=TraceConfig(enabled=False),
                        noise=NoiseConfig(enabled=True, alignment="exact", samples=64))
    # tr(H Sigma) exactly (64), its own trace (100) and lambda_max (at least 1, at most 70)
    assert fewest_products(alone, 10_000) == 64 + 100 + 1
    assert most_products(alone, 10_000) == {"noise": 64 + 100 + 70}


def test_usual_products_count_the_lists_beyond_the_top_k_at_their_medians():
    """The estimate counts the per-block spectra's and ``probe.curvature``'s Lanczos lists and
    traces at their measured medians (their floors, k + 1 products and 10 or 30 samples, are
    several times below what they spend), bounded by the fewest and the most, and by what an
    operator of few dimensions can take; the plan line says how many it counts."""
    k, check = 3, LIST_CHECK
    cfg = ProbeConfig(top_k=5, trace=TraceConfig(enabled=True, max_samples=2000),
                      density=DensityConfig(enabled=True), noise=NoiseConfig(enabled=True),
                      per_block="block", block_top_k=k, curvature=["ggn", "ntk"])
    dim, blocks, curv = 10_000, [40, 5_000], [10_000, 160]
    base = fewest_products(cfg, dim)
    assert usual_products(cfg, dim) == base  # no lists beyond the top-k: the fewest
    # a block of 40 parameters: its list on 40 dimensions and an exact trace (40 products)
    block = min(k + LIST_STEPS_BEYOND_K, 40) + min(check, 40) + 40
    block += k + LIST_STEPS_BEYOND_K + check + USUAL_TRACE["block"]
    pairs5 = 5 + LIST_STEPS_BEYOND_K + check
    ggn = pairs5 + USUAL_TRACE["curvature"] + 2 * pairs5  # its residual H - G: 2 per product
    ntk = min(5 + LIST_STEPS_BEYOND_K, 160) + min(check, 160) \
        + min(USUAL_TRACE["curvature"], 160 + 30)
    assert usual_products(cfg, dim, blocks, curv) == base + block + ggn + ntk
    fewest = fewest_products(cfg, dim, blocks, curv)
    most = sum(most_products(cfg, dim, blocks, curv).values())
    assert fewest < usual_products(cfg, dim, blocks, curv) < most
    ledger = ProbeLedger(counter=lambda: 0)
    usual = usual_products(cfg, dim, blocks, curv)
    line = ledger.plan(most_products(cfg, dim, blocks, curv), fewest, 0.01,
                       usual_products=usual)
    assert line.startswith(f"probe plan: {fewest} to {most} Hessian-vector products (")
    assert f"), usually about {usual}, ~10 ms each; so about ~{figure(usual * 0.01)} s" in line
    assert "usually" not in ledger.plan(most_products(cfg, dim), base, 0.01,
                                        usual_products=usual_products(cfg, dim))


def test_sharpness_evaluations_and_the_averages_exact_count():
    model, split = _split_and_model()
    cfg = ProbeConfig(top_k=0, data_size=None, micro_batch=60, progress=False,
                      sharpness=SharpnessConfig(enabled=True, family=True, rhos=[0.02, 0.05],
                                                samples=8))
    usual = sharpness_evaluations(cfg)
    assert usual == {"gradient": 2 * (ASCENT_EVALS["worst_case"] + ASCENT_EVALS["adaptive"])
                     + 2 * ASCENT_EVALS["keskar"],
                     "forward": 2 * 2 * 8 + 2 * SIGMA_SEARCH_EVALS}
    lines: list[str] = []
    s = run_probes(model, split, cfg, log=lines.append).scalars
    # loss passes without a gradient: the two averages' 2 radii x 8 samples, exactly
    assert s["sharpness_loss_evals"] - s["sharpness_grad_evals"] == 2 * 2 * 8
    assert lines[0].startswith("probe plan: the sharpness measures' usual ")
    assert "Hessian-vector" not in lines[0] and "so about ~" in lines[0]
    assert sharpness_evaluations(ProbeConfig(sharpness=SharpnessConfig(enabled=False))) == {}


def test_sharpness_enabled_false_switches_the_family_off_too():
    """``probe=standard probe.sharpness.enabled=false`` used to run the whole family anyway
    (it ran on ``enabled or family``), and the plan counted its evaluations."""
    from omegaconf import OmegaConf

    from landscope.config import Config
    from landscope.config.check import unread_keys
    from landscope.probes.steps import steps_for

    model, split = _split_and_model()
    off = ProbeConfig(top_k=2, data_size=None, micro_batch=60, progress=False,
                      multiplicity_check=False,
                      sharpness=SharpnessConfig(enabled=False, family=True))
    assert step_sharpness not in steps_for(off) and sharpness_evaluations(off) == {}
    assert step_sharpness in steps_for(ProbeConfig(sharpness=SharpnessConfig(enabled=True)))
    lines: list[str] = []
    s = run_probes(model, split, off, log=lines.append).scalars
    assert "sharpness" not in lines[0]
    assert not any(k.startswith("sharpness") for k in s) and "lambda_max" in s
    # the family's own settings are not read then (changing them re-probes nothing)
    tree = OmegaConf.to_container(OmegaConf.structured(Config()), enum_to_str=True)
    tree["probe"]["sharpness"].update(enabled=False, family=True)
    assert "probe.sharpness.samples" in unread_keys(Config, tree)
    tree["probe"]["sharpness"]["enabled"] = True
    assert "probe.sharpness.samples" not in unread_keys(Config, tree)


def test_timing_the_objective_leaves_the_measures_counts_their_own():
    model, split = _split_and_model()
    data = ProbeData.from_tensors(split.x, split.y, micro_batch=60)
    timed, fresh = ModelObjective(model, data), ModelObjective(model, data)
    seconds = evaluation_seconds(timed)
    assert all(t > 0 for t in seconds)
    assert (timed.n_loss, timed.n_grad, timed.n_acc) == (0, 0, 0)
    a = worst_case_sharpness(timed, [0.05], seed=0)
    b = worst_case_sharpness(fresh, [0.05], seed=0)
    assert a.values == b.values
    assert (a.n_loss_evals, a.n_grad_evals) == (b.n_loss_evals, b.n_grad_evals)


def test_an_objective_tells_its_watcher_of_each_evaluation():
    obj = QuadraticObjective(torch.eye(3, dtype=torch.float64))
    heard: list[int] = []
    obj.watch = lambda: heard.append(obj.n_loss + obj.n_acc)
    obj.loss(torch.ones(3, dtype=torch.float64))
    obj.loss_and_grad(torch.ones(3, dtype=torch.float64))
    assert heard == [0, 1] and obj.n_grad == 1  # before each; a loss and gradient is one

    def time_up():
        raise TimeoutError

    obj.watch = time_up  # a watch that raises stops the evaluation, which is not counted
    with pytest.raises(TimeoutError):
        obj.loss_and_grad(torch.ones(3, dtype=torch.float64))
    assert (obj.n_loss, obj.n_grad, obj.n_acc) == (2, 1, 0)


def _sharpness_cut_after(model, split, cfg, evaluations):
    """The sharpness step of a run whose time cap runs out once ``evaluations`` loss or
    accuracy evaluations have been made (None: never)."""
    with forward_mode(model, str(cfg.mode)):
        run = start_run(model, split, cfg)
        real, obj = run.ledger.stop, run.objective
        run.ledger.stop = lambda products=True, together=None: (
            "budget_s" if evaluations is not None and obj.n_loss + obj.n_acc >= evaluations
            else real(products, together))
        step_sharpness(run)
        finish_run(run)
    return run.scalars()


def test_the_time_cap_cuts_a_sharpness_measure_midway():
    """budget_s was checked only between measures, so one measure could run on long past it:
    now it is checked before each evaluation, and a measure it cut is named in
    sharpness_skipped with every measure after it; the measures before keep their values."""
    model, split = _split_and_model()
    cfg = ProbeConfig(top_k=0, data_size=None, micro_batch=60, progress=False,
                      sharpness=SharpnessConfig(enabled=True, family=True))
    full = _sharpness_cut_after(model, split, cfg, None)
    spent = full["sharpness_loss_evals"] + full["sharpness_acc_evals"]
    assert "sharpness_skipped" not in full and spent > 40

    early = _sharpness_cut_after(model, split, cfg, 3)  # in the first ascent
    assert early["sharpness_stopped_by"] == "budget_s"
    assert early["sharpness_skipped"] == ["worst_case", "adaptive", "keskar", "average_random",
                                          "average_adaptive", "pac_bayes",
                                          "pac_bayes_magnitude"]
    assert early["sharpness_loss_evals"] + early["sharpness_acc_evals"] == 3
    assert not any(k.startswith(("sharpness_l2", "pac_bayes_")) for k in early)

    late = _sharpness_cut_after(model, split, cfg, spent - 1)  # in the last evaluation
    assert late["sharpness_skipped"] == ["pac_bayes_magnitude"]
    assert late["sharpness_loss_evals"] + late["sharpness_acc_evals"] == spent - 1
    assert "pac_bayes_magnitude_sigma" not in late and "sharpness_stopped_by" in late
    kept = {k: v for k, v in full.items() if k.startswith(("sharpness_l2", "sharpness_adaptive",
                                                            "sharpness_keskar",
                                                            "sharpness_average", "pac_bayes_"))
            and not k.startswith("pac_bayes_magnitude")}
    assert kept and all(late[k] == v for k, v in kept.items())


def test_the_sharpness_bar_counts_evaluations(capsys):
    model, split = _split_and_model()
    cfg = ProbeConfig(top_k=2, data_size=None, micro_batch=60, progress=True,
                      sharpness=SharpnessConfig(enabled=True, rhos=[0.05]))
    run_probes(model, split, cfg)
    err = capsys.readouterr().err
    assert "probe sharpness" in err and "eval" in err and "probe top" in err


def test_the_ledger_tick_without_a_bar_does_nothing():
    ledger = ProbeLedger(counter=lambda: 3)
    ledger.tick()
    assert ledger.stop() is None and ledger.products_left() is None
