"""The probe estimators' options nested since the previous release, each old switch's path now
its group's: ``probe.trace`` -> ``probe.trace.enabled``, ``probe.trace_rse`` ->
``probe.trace.rse``, ...; likewise ``probe.density.*`` (from ``density``, ``slq_*``,
``density_*``, ``logdet_eps``), ``probe.sharpness.*`` (from ``sharpness``, ``sharpness_*``,
``keskar_epsilons``) and ``probe.noise.*`` (from ``noise``, ``noise_*``). The names map and its
order, configs to the old layout and back, stored configs and probe records of the old layout,
and job directories named the old way; a command line with an old name is one line
(tests/test_refusals.py). The translations themselves: tests/test_config_renames.py."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import run_cli
from landscope.config.renames import RENAMED, legacy_dirname, renamed, to_current, to_legacy
from test_config_renames import _make_old, assert_renamed_and_skipped

#: group -> {old dotted name: field of the group}, the switch first
GROUPS = {
    "sharpness": {"probe.sharpness": "enabled", "probe.sharpness_family": "family",
                  "probe.sharpness_rhos": "rhos", "probe.keskar_epsilons": "keskar_epsilons",
                  "probe.sharpness_samples": "samples",
                  "probe.sharpness_antithetic": "antithetic"},
    "trace": {"probe.trace": "enabled", "probe.trace_rse": "rse",
              "probe.trace_max_samples": "max_samples"},
    "density": {"probe.density": "enabled", "probe.slq_probes": "probes",
                "probe.slq_steps": "steps", "probe.density_grid": "grid",
                "probe.density_sigma": "sigma", "probe.logdet_eps": "logdet_eps"},
    "noise": {"probe.noise": "enabled", "probe.noise_samples": "samples",
              "probe.noise_alignment": "alignment"},
}
OLD = {old: f"probe.{group}.{key}" for group, keys in GROUPS.items() for old, key in keys.items()}


def test_the_estimator_options_moved_into_their_groups():
    from landscope.config import (
        DensityConfig,
        NoiseConfig,
        ProbeConfig,
        SharpnessConfig,
        TraceConfig,
    )

    assert {k: v for k, v in RENAMED.items() if k in OLD} == OLD
    # nothing else moves into these groups
    assert {v for v in RENAMED.values() if v.split(".")[:2] in
            [["probe", g] for g in GROUPS]} == set(OLD.values())
    order = list(RENAMED)
    for group, keys in GROUPS.items():  # the switch leaves the group's path first
        assert order.index(f"probe.{group}") < min(order.index(k) for k in list(keys)[1:])
    for group, cls in (("sharpness", SharpnessConfig), ("trace", TraceConfig),
                       ("density", DensityConfig), ("noise", NoiseConfig)):
        assert [f.name for f in fields(cls)] == list(GROUPS[group].values())
    flat = {f.name for f in fields(ProbeConfig)}
    assert not {old.split(".", 1)[1] for old in OLD} - set(GROUPS) & flat
    assert renamed("probe.trace") == "probe.trace.enabled"
    assert renamed("probe.slq_steps") == "probe.density.steps"
    assert renamed("probe.keskar_epsilons") == "probe.sharpness.keskar_epsilons"
    # results' names, not options: result.json's probes.trace is the Hessian trace
    for result in ("probe.trace_stderr", "probe.noise_alignment_ratio", "probe.density_n_outliers",
                   "probe.sharpness_l2_rho0.05", "probe.noise_trace_sigma"):
        assert renamed(result) is None


def test_the_defaults_go_to_the_previous_releases_probe_options():
    from landscope.config import Config
    from landscope.fingerprints_v1 import V1_OPTIONS

    tree = OmegaConf.to_container(OmegaConf.structured(Config()), enum_to_str=True)
    old = to_legacy(tree)["probe"]
    # new options: hashed only away from their defaults
    added_since = {"probe.every_n_steps", "probe.curvature", "probe.curvature_ntk_samples",
                   "probe.curvature_mc_samples", "probe.classes", "probe.classes_top_k",
                   "probe.multiplicity_check"}
    assert {f"probe.{k}" for k in old} - added_since == {
        n for n in V1_OPTIONS if n.startswith("probe.")}
    assert to_current(to_legacy(tree)) == tree


def _tree(compose, overrides) -> dict:
    return OmegaConf.to_container(compose(overrides), resolve=True, enum_to_str=True)


@pytest.mark.parametrize("overrides", [
    ["probe=none"],  # every switch off, every setting at its default
    ["probe=basic"],
    ["probe=standard"],
    ["probe=full"],
    ["probe=pacbayes"],
    ["probe=full", "probe.trace.rse=0.05", "probe.density.steps=20",
     "probe.noise.alignment=exact", "probe.sharpness.keskar_epsilons=[0.01]"],
    # switches off, settings set
    ["probe=none", "probe.noise.samples=32", "probe.sharpness.samples=8",
     "probe.trace.max_samples=50", "probe.density.logdet_eps=0.1"],
    ["experiment=h3_sharp"],
])
def test_a_config_with_the_estimator_groups_goes_to_the_old_layout_and_back(compose, overrides):
    tree = _tree(compose, overrides)
    old = to_legacy(tree)
    for group, keys in GROUPS.items():
        current = tree["probe"][group]
        assert old["probe"][group] is current["enabled"]  # the switch, a bool, in its place
        assert {k: old["probe"][o.split(".", 1)[1]] for o, k in keys.items()} == current
    assert not [k for k, v in old["probe"].items() if isinstance(v, dict)]
    assert to_current(old) == tree and to_legacy(to_current(old)) == old
    # each translation leaves a tree already in its layout alone
    assert to_current(tree) == tree and to_legacy(old) == old
    # the order of the keys in the tree does not matter
    flipped = {**old, "probe": dict(reversed(list(old["probe"].items())))}
    assert to_current(flipped) == tree
    inner = {**tree, "probe": {k: dict(reversed(list(v.items()))) if isinstance(v, dict) else v
                               for k, v in reversed(list(tree["probe"].items()))}}
    assert to_legacy(inner) == old


@pytest.mark.parametrize("old, current", [
    ({"probe": {"trace": True}}, {"probe": {"trace": {"enabled": True}}}),
    ({"probe": {"noise": False}}, {"probe": {"noise": {"enabled": False}}}),
    ({"probe": {"trace_rse": 0.05}}, {"probe": {"trace": {"rse": 0.05}}}),  # no switch
    ({"probe": {"noise_alignment": "exact", "noise_samples": 8, "noise": True, "top_k": 3}},
     {"probe": {"noise": {"enabled": True, "samples": 8, "alignment": "exact"}, "top_k": 3}}),
    ({"probe": {"noise_alignment": "exact"}}, {"probe": {"noise": {"alignment": "exact"}}}),
    ({"probe": {"slq_steps": 8, "logdet_eps": 0.1, "density": False}},
     {"probe": {"density": {"enabled": False, "steps": 8, "logdet_eps": 0.1}}}),
    ({"probe": {"keskar_epsilons": [0.01], "sharpness_family": True}},
     {"probe": {"sharpness": {"family": True, "keskar_epsilons": [0.01]}}}),
    ({"probe": {"trace": True, "density": True, "sharpness": False, "noise": True}},
     {"probe": {k: {"enabled": v} for k, v in (("trace", True), ("density", True),
                                                ("sharpness", False), ("noise", True))}}),
    ({"probe": {"top_k": 3}}, {"probe": {"top_k": 3}}),  # neither
])
def test_partial_estimator_trees_go_both_ways(old, current):
    assert to_current(old) == current
    assert to_legacy(current) == old
    assert to_current(current) == current and to_legacy(old) == old


def _old_job(path: Path, tree: dict) -> Path:
    """A job directory whose config.yaml the previous release wrote (flat probe names)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(to_legacy(tree), sort_keys=False))
    return path


@pytest.mark.parametrize("overrides", [
    ["probe=full", "probe.trace.rse=0.05", "probe.density.steps=20",
     "probe.noise.alignment=exact", "probe.sharpness.samples=8"],
    ["probe=basic", "probe.noise.samples=32"],  # a switch off, a setting changed
    ["experiment=h3_sharp"],
    ["experiment=study_width"],
])
def test_a_stored_probe_config_of_the_old_layout_loads_under_the_new_names(compose, tmp_path,
                                                                           overrides):
    from landscope.analysis.collect import config_columns
    from landscope.fingerprints import fingerprint, probe_fingerprint
    from landscope.fingerprints_v1 import fingerprint_v1, probe_fingerprint_v1
    from landscope.jobcheck import saved_config_fingerprint
    from landscope.jobdir import JobDir

    cfg = compose(overrides)
    job = JobDir(_old_job(tmp_path / "old", _tree(compose, overrides)))
    stored = yaml.safe_load((job.path / "config.yaml").read_text())["probe"]
    assert isinstance(stored["trace"], bool) and "slq_steps" in stored
    assert "noise_alignment" in stored and "sharpness_samples" in stored
    typed = job.config()
    assert OmegaConf.to_container(typed.probe) == OmegaConf.to_container(cfg.probe)
    assert typed.probe.trace.rse == cfg.probe.trace.rse
    assert typed.probe.noise.alignment == cfg.probe.noise.alignment
    assert job.config(typed=False).probe.density.steps == cfg.probe.density.steps
    saved = job.saved_config()["probe"]
    assert saved["sharpness"]["enabled"] is cfg.probe.sharpness.enabled
    assert saved["noise"]["samples"] == cfg.probe.noise.samples
    columns, note = config_columns(job)
    assert note is None and columns["config.probe.density.steps"] == cfg.probe.density.steps
    assert bool(columns["config.probe.trace.enabled"]) is cfg.probe.trace.enabled
    olds = {f"config.{old}" for old in OLD}
    assert not olds & set(columns)
    assert saved_config_fingerprint(job.path, fingerprint) == fingerprint(cfg)
    assert probe_fingerprint(typed) == probe_fingerprint(cfg)
    assert probe_fingerprint_v1(typed) == probe_fingerprint_v1(cfg)
    assert fingerprint_v1(typed) == fingerprint_v1(cfg)


def test_a_probe_record_of_the_old_layout_names_its_preset(compose, tmp_path):
    """``probes/<pfp>.json`` stores the probe config it was computed with; a record written
    by the previous release (flat names) is read the same way (its preset's name)."""
    from landscope.jobdir import JobDir
    from landscope.jobresults import _preset

    job = JobDir(_old_job(tmp_path / "job", _tree(compose, ["probe=standard"])))
    (job.path / "probes").mkdir()
    old = to_legacy(_tree(compose, ["probe=standard"]))["probe"]
    assert old["trace"] is True and "sharpness_rhos" in old
    (job.path / "probes" / "abc.json").write_text(json.dumps(
        {"scalars": {"lambda_max": 1.0}, "probe": old}))
    assert _preset(job, "abc") == "standard"


@pytest.mark.parametrize("name,old", [
    ("probe.trace.enabled=false,probe=basic", "probe.trace=false,probe=basic"),
    ("probe.trace.rse=0.05,probe=standard,seed=0", "probe.trace_rse=0.05,probe=standard,seed=0"),
    # Hydra sorts the old spelling: "probe.noise=" before "probe.noise_"
    ("probe.noise.alignment=exact,probe.noise.enabled=true,probe.noise.samples=32",
     "probe.noise=true,probe.noise_alignment=exact,probe.noise_samples=32"),
    ("probe.density.logdet_eps=0.1,probe.density.steps=20,probe.top_k=3",
     "probe.logdet_eps=0.1,probe.slq_steps=20,probe.top_k=3"),
    ("probe.sharpness.keskar_epsilons=[0.01,0.1],probe.sharpness.rhos=[0.05,0.1]",
     "probe.keskar_epsilons=[0.01,0.1],probe.sharpness_rhos=[0.05,0.1]"),
    ("probe.sharpness.enabled=false,probe.trace.max_samples=20,seed=0",
     "probe.sharpness=false,probe.trace_max_samples=20,seed=0"),
    ("optimizer.llp.c=2,probe.density.enabled=true,probe.pacbayes.n_mc=7",
     "optimizer.llp_c=2,probe.density=true,probe.pacbayes_n_mc=7"),
    ("probe.trace_stderr=1", "probe.trace_stderr=1"),  # not an option name of the map
])
def test_legacy_dirname_spells_an_estimator_directory_name_the_old_way(name, old):
    assert legacy_dirname(name) == old


def test_legacy_job_dir_finds_an_estimator_directory_of_the_old_spelling(tmp_path):
    from landscope.legacy_dirs import legacy_job_dir

    new = tmp_path / "sweep" / "probe.density.steps=20,probe.trace.enabled=false,seed=0"
    old = tmp_path / "sweep" / "probe.slq_steps=20,probe.trace=false,seed=0"
    old.mkdir(parents=True)
    assert legacy_job_dir(new) == old


@pytest.fixture(scope="module")
def warm_data(data_dir):
    """Generate MNIST-1D once so subprocesses only read the cache."""
    from landscope.config import DatasetConfig
    from landscope.data import load_data

    load_data(DatasetConfig(data_dir=str(data_dir)))
    return data_dir


def test_an_estimator_job_directory_named_the_old_way_is_renamed_and_its_job_kept(tmp_path,
                                                                                 warm_data):
    """A switch and a setting in the name (``probe.sharpness=false,probe.trace_max_samples=20``):
    the sweep finds the job there, renames the directory, and neither retrains nor re-probes."""
    args = ["-m", "experiment=smoke", "model.width=8", "dataset.train_size=128",
            "dataset.test_size=64", "train.epochs=1", "probe=basic", "probe.data_size=64",
            "probe.sharpness.enabled=false", "probe.trace.max_samples=20", "seed=0"]
    first = run_cli(args, tmp_path, data_dir=warm_data)
    assert first.returncode == 0, first.stdout + first.stderr
    (job,) = (tmp_path / "outputs" / "sweeps" / "smoke").glob("*=*")
    result = json.loads((job / "result.json").read_text())
    assert result["probes"]["trace_samples"] <= 20
    old = _make_old(job)
    # a sweep spells the bool as Python does (False)
    assert "probe.sharpness=false" in old.name.lower()
    assert "probe.trace_max_samples=20" in old.name
    assert "trace_max_samples: 20" in (old / "config.yaml").read_text()

    assert_renamed_and_skipped(args, tmp_path, warm_data, job, old, result)
