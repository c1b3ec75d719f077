"""Composition of every group option, and the bad-input messages (in-process)."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from conftest import CONF
from landscope.config import validate
from landscope.errors import ConfigError
from landscope.synthetic import SYNTHETIC

GROUPS = ["dataset", "model", "optimizer", "probe", "landscape", "logger", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# group options that preset another option's name (optimizer=llp_meta is LLP with its meta-model)
NAMED_AS = {("optimizer", "llp_meta"): "llp"}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(compose, group, option):
    pair = [f"model={option}"] if group == "dataset" and option in SYNTHETIC else []
    cfg = compose([f"{group}={option}", *pair])  # a synthetic dataset needs its own model
    if group in ("dataset", "model", "optimizer", "probe", "landscape", "logger"):
        assert cfg[group].name == NAMED_AS.get((group, option), option)
    validate(cfg)


def test_launcher_and_sweeper_presets_compose(compose):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["hydra/launcher=parallel"],
                            return_hydra_config=True)
    assert cfg.hydra.launcher.n_jobs == 2
    assert cfg.hydra.sweeper._target_.endswith("LandscopeSweeper")


def test_default_config_values(compose):
    cfg = compose()
    assert (cfg.dataset.name, cfg.model.name, cfg.optimizer.name) == ("mnist1d", "mlp", "sgd")
    assert cfg.seed == 0 and cfg.probe.name == "standard" and cfg.logger.name == "none"
    assert compose(["experiment=smoke"]).probe.name == "none"


def test_unknown_group_option_lists_allowed_values(compose):
    with pytest.raises(MissingConfigException) as err:
        compose(["optimizer=adamax"])
    assert "sgd" in str(err.value) and "adam" in str(err.value)


def test_misspelled_key_names_the_key(compose):
    with pytest.raises(ConfigCompositionException) as err:
        compose(["optimizer.lrr=0.1"])
    assert "lrr" in str(err.value)


def test_wrong_type_names_the_key(compose):
    with pytest.raises(ConfigCompositionException) as err:
        compose(["train.batch_size=big"])
    assert isinstance(err.value.__cause__, ValidationError)
    assert "train.batch_size" in str(err.value.__cause__)


def test_enum_field_lists_allowed_values(compose):
    with pytest.raises(ConfigCompositionException) as err:
        compose(["model.norm=group"])
    assert "none, batch, layer" in str(err.value.__cause__)


@pytest.mark.parametrize("override,key", [
    ("optimizer.lr=0", "optimizer.lr"), ("optimizer.lr=-0.1", "optimizer.lr"),
    ("train.batch_size=0", "train.batch_size"), ("train.epochs=-1", "train.epochs"),
    ("model.width=0", "model.width"), ("model.depth=0", "model.depth"),
    ("dataset.label_noise=1.5", "dataset.label_noise"), ("seed=-1", "seed"),
    ("optimizer.momentum=1.0", "optimizer.momentum"), ("train.grad_clip=0", "train.grad_clip"),
    ("logger.init_timeout=0", "logger.init_timeout"),
    ("landscape.trajectory.snapshot_dtype=float64", "landscape.trajectory.snapshot_dtype"),
    ("probe.sharpness.samples=7", "probe.sharpness.samples"),  # antithetic pairs
    ("probe.sharpness.samples=2", "probe.sharpness.samples"),
    ("probe.ranks=0", "probe.ranks"),
])
def test_impossible_values_are_one_line_errors(compose, override, key):
    with pytest.raises(ConfigError) as err:
        validate(compose([override]))
    msg = str(err.value)
    assert msg.startswith(key) and "\n" not in msg


def test_vit_width_must_divide_heads(compose):
    with pytest.raises(ConfigError, match="model.width"):
        validate(compose(["model=vit", "model.width=30", "model.heads=4"]))


def test_plain_average_sharpness_takes_any_count_from_two(compose):
    validate(compose(["probe.sharpness.antithetic=false", "probe.sharpness.samples=3"]))
    with pytest.raises(ConfigError, match="probe.sharpness.samples"):
        validate(compose(["probe.sharpness.antithetic=false", "probe.sharpness.samples=1"]))


def test_seed_zero_is_a_valid_seed(compose):
    validate(compose(["seed=0"]))
