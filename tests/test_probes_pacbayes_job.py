"""probe.pacbayes end to end: the bounds in a job's result.json (prior centred at the rebuilt
initialization, checked against the recorded initial weights), `python -m runner.probe
JOB probe=pacbayes` on a finished job, one-line errors for impossible settings, and probe
fingerprints of configs without pacbayes left unchanged."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from landscope.checkpoint import load_checkpoint
from landscope.config import validate
from landscope.data import load_data
from landscope.errors import ConfigError
from landscope.fingerprints_v1 import probe_fingerprint_v1
from landscope.geometry.snapshots import load as load_trajectory
from landscope.io import read_json
from landscope.jobs import TRAJECTORY_FILE, initial_model, probe_fingerprint, train_job

TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=32",
        "model.width=8", "model.depth=2", "landscape=none"]
# pacbayes on a small budget, the rest of the preset off (seconds, not minutes)
FAST = ["probe=pacbayes", "probe.top_k=3", "probe.trace.enabled=false",
        "probe.density.enabled=false", "probe.noise.enabled=false",
        "probe.sharpness.enabled=false", "probe.sharpness.family=false",
        "probe.pacbayes.n_mc=20", "probe.pacbayes.n_select=2", "probe.pacbayes.steps=20",
        "probe.pacbayes.n_match=2"]
GRID = ["probe.pacbayes.posterior=grid"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_pacbayes_probe_in_a_job_centres_the_prior_at_the_initialization(compose, tmp_path):
    # the landscape group on with only the trajectory: it records the true initial weights
    overrides = [*TINY, *FAST, "train.epochs=1", "landscape=basic",
                 "landscape.line.enabled=false", "landscape.trajectory.enabled=true",
                 "landscape.trajectory.points=3"]
    cfg = compose(overrides)
    result = train_job(cfg, tmp_path, overrides)
    p = result["probes"]
    for key in ("naive", "isotropic", "hessian", "kl_isotropic", "kl_hessian",
                "isotropic_e_mc", "hessian_e_mc", "isotropic_e_upper", "train_error",
                "dist2_to_prior_mean", "hessian_is_isotropic", "seconds", "complexity_naive",
                "complexity_isotropic", "complexity_hessian", "matched_error",
                "matched_complexity_isotropic", "matched_complexity_hessian"):
        assert isinstance(p[f"pacbayes_{key}"], float), key
    assert p["pacbayes_prior_mean"] == "init" and p["pacbayes_m"] == 256.0  # the whole split
    assert p["pacbayes_k"] == 3.0 and p["pacbayes_n_mc"] == 20.0
    assert p["pacbayes_posterior"] == 1.0 and p["pacbayes_steps"] == 20.0  # optimised
    assert p["pacbayes_D"] == p["n_params"]
    for name in ("isotropic", "hessian"):
        assert 0 <= p[f"pacbayes_{name}"] <= 1
        assert p[f"pacbayes_{name}"] >= p[f"pacbayes_{name}_e_upper"] >= 0
    assert p["pacbayes_complexity_naive"] > p["pacbayes_complexity_hessian"] > 0
    assert abs(p["pacbayes_train_error"] - (1 - result["final"]["train_acc"])) < 1e-6

    # the rebuilt initialization is bit-identical to the weights training started from
    data = load_data(cfg.dataset)
    state = torch.get_rng_state()
    init = _flat(initial_model(cfg, data))
    assert torch.equal(torch.get_rng_state(), state)  # global RNG left alone
    traj = load_trajectory(tmp_path / TRAJECTORY_FILE)
    assert traj.steps[0] == 0 and traj.snapshots.shape[1] == init.numel()
    assert np.array_equal(traj.snapshots[0], init.numpy())
    # ... and it is the prior mean the probe used: ||w - w0||^2 of the final weights
    final = load_checkpoint(sorted((tmp_path / "checkpoints").glob("*.pt"))[-1])
    w = torch.cat([v.reshape(-1) for v in final["model"].values()]).double()
    dist2 = float(((w - init.double()) ** 2).sum())
    assert dist2 > 0 and p["pacbayes_dist2_to_prior_mean"] == pytest.approx(dist2, rel=1e-9)


def test_pacbayes_settings_are_validated_in_one_line(compose):
    ok = compose([*FAST])
    validate(ok)
    validate(compose([*FAST, *GRID]))
    for bad, needle in ((["probe.top_k=0"], "probe.top_k"),
                        (["probe.pacbayes.n_mc=0"], "probe.pacbayes.n_mc"),
                        (["probe.pacbayes.n_select=0"], "probe.pacbayes.n_select"),
                        (["probe.pacbayes.delta=0"], "probe.pacbayes.delta"),
                        (["probe.pacbayes.delta_mc=1.5"], "probe.pacbayes.delta_mc"),
                        (["probe.pacbayes.delta=0.6", "probe.pacbayes.delta_mc=0.5"], "< 1"),
                        (["probe.pacbayes.data_size=1"], "probe.pacbayes.data_size"),
                        (["probe.pacbayes.beta_grid=[]"], "probe.pacbayes.beta_grid"),
                        (["probe.pacbayes.beta_grid=[0.1,-1]"], "probe.pacbayes.beta_grid"),
                        (["probe.pacbayes.beta_grid=[inf]"], "probe.pacbayes.beta_grid"),
                        (["probe.pacbayes.posterior=diag"], "probe.pacbayes.posterior"),
                        (["probe.pacbayes.steps=-1"], "probe.pacbayes.steps"),
                        (["probe.pacbayes.n_match=0"], "probe.pacbayes.n_match"),
                        (["probe.pacbayes.batch_size=0"], "probe.pacbayes.batch_size"),
                        (["probe.pacbayes.lr_mean=-1"], "probe.pacbayes.lr_mean")):
        with pytest.raises(ConfigError, match="must be") as err:
            validate(compose([*FAST, *bad]))
        assert needle in str(err.value) and "\n" not in str(err.value)
    validate(compose(["probe=standard", "probe.top_k=0"]))  # top_k=0 is fine without pacbayes


def test_fingerprint_ignores_pacbayes_settings_while_it_is_off(compose):
    base = probe_fingerprint(compose(["probe=standard"]))
    assert probe_fingerprint(compose(["probe=standard", "probe.pacbayes.n_mc=7"])) == base
    on = probe_fingerprint(compose(["probe=standard", "probe.pacbayes.enabled=true"]))
    assert on != base
    assert probe_fingerprint(compose(["probe=standard", "probe.pacbayes.enabled=true",
                                      "probe.pacbayes.n_mc=7"])) != on
    # another beta grid is another probe
    assert probe_fingerprint(compose(
        ["probe=standard", "probe.pacbayes.enabled=true", "probe.pacbayes.beta_grid=[0.5]"])) != on
    # version 1 (the jobs probed before fingerprint version 2, recognized by it): a config
    # from before the beta grid existed (no such key) kept its hash, and so did one from
    # before the optimised posterior (the grid search ignores the optimiser's settings)
    on_v1 = probe_fingerprint_v1(compose(["probe=standard", "probe.pacbayes.enabled=true"]))
    before = OmegaConf.create(OmegaConf.to_container(
        compose(["probe=standard", "probe.pacbayes.enabled=true"]), enum_to_str=True))
    del before.probe.pacbayes["beta_grid"]
    assert probe_fingerprint_v1(before) == on_v1
    old = OmegaConf.create(OmegaConf.to_container(
        compose(["probe=standard", "probe.pacbayes.enabled=true", *GRID]), enum_to_str=True))
    for key in ("posterior", "steps", "lr_mean", "lr_var", "batch_size", "n_match"):
        del old.probe.pacbayes[key]
    assert probe_fingerprint_v1(old) == probe_fingerprint_v1(
        compose(["probe=standard", "probe.pacbayes.enabled=true", *GRID]))
    # the optimised posterior (the default) is another probe than the grid search
    grid = probe_fingerprint(compose(["probe=standard", "probe.pacbayes.enabled=true", *GRID]))
    assert grid != on
    assert probe_fingerprint(compose(["probe=standard", "probe.pacbayes.enabled=true", *GRID,
                                      "probe.pacbayes.steps=5"])) == grid


def test_probe_command_adds_pacbayes_to_a_finished_job(compose, tmp_path):
    job = tmp_path / "job"
    overrides = [*TINY, "train.epochs=1", "probe=none"]
    train_job(compose(overrides), job, overrides)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def probe(*extra):
        return subprocess.run([sys.executable, "-m", "runner.probe", str(job), *extra],
                              cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)

    bad = probe(*FAST, *GRID, "probe.top_k=0")  # the Hessian posterior needs eigenvectors
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") \
        and "probe.top_k" in lines[0] and "pacbayes" in lines[0], bad.stderr
    assert "probes" not in read_json(job / "result.json")
    done = probe(*FAST, *GRID, "probe.pacbayes.beta_grid=[0.5]")
    assert done.returncode == 0, done.stderr
    result = read_json(job / "result.json")
    p = result["probes"]
    assert p["pacbayes_n_candidates"] == 13 * 2  # the grid reached the bound: 0.5 and inf
    assert p["pacbayes_hessian_beta"] == 0.5 or p["pacbayes_hessian_is_isotropic"] == 1.0
    assert p["pacbayes_prior_mean"] == "init" and p["pacbayes_m"] == 256.0
    assert p["pacbayes_hessian"] <= p["pacbayes_isotropic"] <= p["pacbayes_naive"]
    cached = read_json(job / "probes" / f"{result['probe_fingerprint']}.json")
    assert cached["probe"]["pacbayes"]["enabled"] is True and cached["scalars"] == p


def test_dataset_classes_keeps_and_relabels_those_classes(compose):
    """dataset.classes (H4's binary preset): only the listed classes, labelled by position,
    before subsetting; the job fingerprint of configs without it is unchanged."""
    from landscope.errors import DataError
    from landscope.jobs import fingerprint

    full = load_data(compose([]).dataset)
    two = load_data(compose(["dataset.classes=[7,0]"]).dataset)
    assert two.meta.num_classes == 2
    keep = (full.train.y == 7) | (full.train.y == 0)
    assert len(two.train) == int(keep.sum()) and set(two.train.y.tolist()) == {0, 1}
    assert torch.equal(two.train.y, (full.train.y[keep] == 0).long())  # 7 -> 0, 0 -> 1
    assert len(two.test) == int(((full.test.y == 7) | (full.test.y == 0)).sum())
    sub = load_data(compose(["dataset.classes=[7,0]", "dataset.train_size=100"]).dataset)
    assert len(sub.train) == 100 and sub.meta.num_classes == 2
    for bad in ("[1]", "[1,1]", "[0,10]"):
        with pytest.raises(DataError, match="dataset.classes"):
            load_data(compose([f"dataset.classes={bad}"]).dataset)
    base = compose([])
    old = OmegaConf.create(OmegaConf.to_container(base, enum_to_str=True))
    del old.dataset["classes"]
    assert fingerprint(old) == fingerprint(base)
    assert fingerprint(compose(["dataset.classes=[0,1]"])) != fingerprint(base)


def test_average_sharpness_settings_enter_the_hash_only_with_the_family(compose):
    """Antithetic pairs (16 evaluations) replaced 32 independent draws: presets with the
    sharpness family get a new hash (their averages changed), presets without it keep the
    hash they had, computed from their config as it was then (no ``sharpness.antithetic``,
    ``sharpness.samples`` 32)."""
    for preset, family in (("basic", False), ("standard", True)):
        now = compose([f"probe={preset}"])
        before = OmegaConf.create(OmegaConf.to_container(now, enum_to_str=True))
        del before.probe.sharpness["antithetic"]
        before.probe.sharpness["samples"] = 32
        before.probe.pop("ranks")
        assert (probe_fingerprint(now) == probe_fingerprint(before)) is not family, preset
    basic = probe_fingerprint(compose(["probe=basic"]))
    assert probe_fingerprint(compose(["probe=basic", "probe.sharpness.samples=8"])) == basic
    assert probe_fingerprint(compose(["probe=standard", "probe.sharpness.samples=8"])) != \
        probe_fingerprint(compose(["probe=standard"]))
