"""The schema is the one place of every option's default and of what changes no result:
the fingerprint and Hydra's job directory names derive their exclusions from its LAYOUT
marks, the YAML presets repeat no default, and every group checks its own values."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from landscope.config import (
    Config,
    LoggerConfig,
    ProbeConfig,
    ProbeName,
    result_free_keys,
    typed,
    validate,
)
from landscope.config.choices import Norm
from landscope.config_checks import option_names
from landscope.errors import ConfigError
from landscope.fingerprints import fingerprint, landscape_fingerprint, probe_fingerprint

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_job_directory_names_leave_out_exactly_the_options_that_change_no_result():
    excluded = set(yaml.safe_load((CONF / "config.yaml").read_text())["hydra"]["job"]["config"]
                   ["override_dirname"]["exclude_keys"])
    schema = set(option_names())
    expected = set()
    for key in result_free_keys():
        expected.add(key)
        if key == "logger":  # a marked group: each of its options too
            expected |= {f"logger.{f.name}" for f in fields(LoggerConfig)}
    assert expected <= schema
    assert excluded & schema == expected
    assert excluded - schema == {"experiment", "hydra.launcher.n_jobs"}  # not job options


def test_the_training_fingerprint_ignores_every_result_free_option_and_nothing_else(compose):
    base = compose([])
    fp = fingerprint(base)
    changed = {"name": "other", "resume": False, "dataset.data_dir": "/elsewhere",
               "dataset.download": True, "train.checkpoint_every": 3,
               "train.checkpoint_interval_s": 1.0, "train.keep_checkpoints": 5,
               "train.reuse_trained": False,
               "train.threads": 1, "train.progress": True, "probe.progress": True,
               "probe.ranks": 2, "landscape.figures": False, "landscape.progress": True,
               "landscape.workers": 2, "logger.project": "p"}
    assert set(changed) >= set(result_free_keys()) - {"logger"}
    for key, value in changed.items():
        cfg = compose([f"{key}={value}" if not isinstance(value, bool) else
                       f"{key}={str(value).lower()}"])
        assert fingerprint(cfg) == fp, key
    for override in ("seed=1", "train.epochs=3", "optimizer.lr=0.05", "train.device=cuda"):
        assert fingerprint(compose([override])) != fp, override


def test_the_probe_fingerprint_ignores_progress_and_ranks_only(compose):
    fp = probe_fingerprint(compose([]))
    assert probe_fingerprint(compose(["probe.progress=true", "probe.ranks=3"])) == fp
    assert probe_fingerprint(compose(["probe.top_k=3"])) != fp


def test_the_landscape_fingerprint_ignores_its_processes_progress_and_figures(compose):
    """Every grid point is computed by the same code whatever process runs it
    (tests/test_geometry_slices.py compares the values with 1 and 2 workers)."""
    base = ["landscape=basic"]
    fp = landscape_fingerprint(compose(base))
    assert fp is not None
    assert landscape_fingerprint(compose([*base, "landscape.workers=4",
                                          "landscape.progress=true",
                                          "landscape.figures=false"])) == fp
    assert landscape_fingerprint(compose([*base, "landscape.batch_size=512"])) != fp


def _presets() -> list[Path]:
    groups = [p for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra")]
    return [CONF / "config.yaml", *sorted(f for g in groups for f in g.glob("*.yaml"))]


@pytest.mark.parametrize("path", _presets(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_preset_repeats_a_schema_default(path):
    """A group file sets its name and what differs from the schema; config.yaml sets nothing
    the schema holds (experiments may restate defaults: they override presets)."""
    data = yaml.safe_load(path.read_text()) or {}
    if path.name == "config.yaml":
        data = {k: v for k, v in data.items() if k not in ("defaults", "hydra")}
        assert data == {}
        return
    data.pop("defaults", None)
    default = OmegaConf.to_container(OmegaConf.structured(Config)[path.parent.name],
                                     enum_to_str=True)
    data.pop("name", None)
    assert _repeats(data, default) == {}, f"{path} repeats the schema's defaults"


def _repeats(data: dict, default: dict) -> dict:
    """The entries of ``data`` equal to the schema's ``default``, nested groups compared
    entry by entry (``optimizer.llp: {eps: 1e-4}`` repeats a default, ``{eps: 1e-3}`` not)."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and isinstance(default.get(k), dict):
            inner = _repeats(v, default[k])
            if inner or not v:
                out[k] = inner or v
        elif default.get(k) == v:
            out[k] = v
    return out


def test_a_nested_group_in_a_preset_is_compared_field_by_field():
    default = {"lr": 0.1, "llp": {"eps": 1e-4, "c": 1.0}}
    assert _repeats({"lr": 0.2, "llp": {"eps": 1e-3}}, default) == {}
    assert _repeats({"llp": {"eps": 1e-3, "c": 1.0}}, default) == {"llp": {"c": 1.0}}


def test_typed_gives_dataclasses_and_enums_all_the_way_down(compose):
    cfg = typed(compose(["model.norm=batch"]))
    assert isinstance(cfg, Config) and isinstance(cfg.probe, ProbeConfig)
    assert cfg.model.norm is Norm.batch and str(cfg.model.norm) == "batch"
    assert typed(cfg) is cfg


@pytest.mark.parametrize("override, message", [
    ("optimizer.llp.ema=1.0", "optimizer.llp.ema must be in [0, 1)"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be >= 1"),
    ("model.kernel_size=4", "model.kernel_size must be odd and >= 1"),
    ("probe.pacbayes.delta=0.995", "probe.pacbayes.delta + delta_mc must be < 1"),
    ("landscape.line.points=4", "landscape.line.points must be odd and >= 3"),
    ("logger.init_timeout=0", "logger.init_timeout must be > 0 seconds"),
    ("dataset.label_noise=2", "dataset.label_noise must be in [0, 1]"),
])
def test_each_group_checks_its_own_values(compose, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("+", r"\+")):
        validate(compose([override]))


def test_below_a_jobs_entrance_the_config_is_dataclasses(compose, tmp_path, monkeypatch):
    """train_job and probe_finished_job take the composed DictConfig, write config.yaml from
    it, and hand training and the stages a :class:`Config` (dataclasses and enums)."""
    from landscope import jobresults, jobs

    seen = []

    def spy(real):
        def wrapped(cfg, *args, **kwargs):
            seen.append(cfg)
            return real(cfg, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(jobs, "train", spy(jobs.train))
    monkeypatch.setattr(jobresults, "probe_finished", spy(jobresults.probe_finished))
    overrides = ["experiment=smoke", "probe=none", "landscape=none", "train.epochs=1",
                 "dataset.train_size=128", "dataset.test_size=64", "model.width=8"]
    job = tmp_path / "job"
    jobs.train_job(compose(overrides), job, overrides)
    result = jobs.probe_finished_job(compose([*overrides, "probe=basic",
                                              "probe.data_size=64"]), job,
                                     json.loads((job / "result.json").read_text()))
    assert [type(c) for c in seen] == [Config, Config]
    assert seen[1].probe.name is ProbeName.basic and result["probe_preset"] == "basic"
    assert (job / "config.yaml").read_text().startswith("seed: 0\n")


def test_what_a_config_does_not_read_is_marked_on_the_schema():
    """The read_if marks: LLP's group under another optimizer, the meta-model's settings with
    it off, the grid search without the Adam settings, the synthetic problems' settings on
    real data, the OOD corruptions on MNIST-1D (its split is generated, not corrupted)."""
    from omegaconf import OmegaConf

    from landscope.config import Config
    from landscope.config.check import unread_keys

    tree = OmegaConf.to_container(OmegaConf.structured(Config()), enum_to_str=True)
    unread = unread_keys(Config, tree)
    assert "optimizer.llp" in unread and "dataset.ood.severity" in unread
    assert "probe.pacbayes.n_mc" in unread and "dataset.tilt" in unread
    assert not any(k.startswith(("train.", "optimizer.lr")) for k in unread)
    # the MLP reads neither the convolutions' kernel nor the ViTs' patch and heads; SGD
    # reads no momentum, betas or SAM radius, and the constant schedule no step or floor
    assert [k for k in unread if k.startswith("model.")] == [
        "model.patch_size", "model.heads", "model.kernel_size"]
    assert {"optimizer.momentum", "optimizer.betas", "optimizer.rho",
            "optimizer.step_size", "optimizer.min_lr"} <= set(unread)
    tree["optimizer"]["name"] = "llp"
    tree["dataset"]["ood"]["enabled"] = True
    tree["probe"]["pacbayes"].update(enabled=True, posterior="grid")
    unread = unread_keys(Config, tree)
    assert "optimizer.llp" not in unread and "optimizer.llp.c" not in unread
    assert {"optimizer.llp.meta", "optimizer.llp.meta_ridge"} <= set(unread)
    assert "dataset.ood.corruptions" in unread and "dataset.ood.severity" not in unread
    assert {"probe.pacbayes.steps", "probe.pacbayes.n_match"} <= set(unread)
    assert "probe.pacbayes.n_select" not in unread  # the grid search draws n_select each
    tree["dataset"]["name"] = "cifar10"
    assert "dataset.ood.corruptions" not in unread_keys(Config, tree)
