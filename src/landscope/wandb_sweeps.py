"""A Weights & Biases sweep from a Hydra sweep (``python -m runner.wandb_sweep``): the swept
keys of the command line and of the experiment preset's ``hydra.sweeper.params`` become W&B
parameters whose values are Hydra override strings; every run is checked to compose into a
valid job before the sweep is written."""

from __future__ import annotations

from typing import Any, Optional


def _hydra_str(value: Any) -> str:
    """A sweep value as Hydra override text (``true``, ``null``, ``0.1``, ``sgd``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value)


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``(plain overrides, {key: [value strings]})`` of a Hydra command line, the sweep
    overrides expanded as Hydra's basic sweeper expands them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from landscope.errors import LandscopeError, one_line

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as exc:  # hydra's OverrideParseException
        raise LandscopeError(one_line(exc)) from None
    plain, swept = [], {}
    for text, ov in zip(overrides, parsed):
        if ov.is_sweep_override():
            if ov.is_range_sweep() or ov.is_choice_sweep():
                swept[ov.get_key_element()] = [_hydra_str(v) for v in ov.sweep_iterator()]
            else:
                raise LandscopeError(f"{text}: only choice and range sweeps can become a "
                                     "W&B grid (interval sweeps need an optimizer sweeper)")
        else:
            plain.append(text)
    return plain, swept


def sweep_spec(overrides: list[str], conf_dir: str, method: str = "grid",
               metric: str = "final/test_acc", goal: str = "maximize",
               project: Optional[str] = None) -> dict[str, Any]:
    """The W&B sweep configuration (a dict ready for YAML) for ``python -m runner -m
    OVERRIDES`` with the configs of ``conf_dir``. Checks that every run composes into a
    valid config."""
    import itertools

    from hydra import compose, initialize_config_dir

    from landscope.config import register_configs
    from landscope.errors import LandscopeError, one_line
    from landscope.jobs import check_inputs

    plain, swept = split_overrides(overrides)
    register_configs()
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        try:
            cfg = compose(config_name="config", overrides=plain, return_hydra_config=True)
        except Exception as exc:  # noqa: BLE001 - composition errors are bad input
            raise LandscopeError(one_line(exc)) from None
        if cfg.hydra.sweeper.get("cases"):
            raise LandscopeError("this sweep has hydra.sweeper.cases (a union of products), "
                                 "which one W&B grid cannot express: write one sweep file per "
                                 "case by giving that case's overrides and "
                                 "hydra.sweeper.cases=null")
        params = cfg.hydra.sweeper.get("params") or {}
        preset: dict[str, list[str]] = {}
        if params:
            _, preset = split_overrides([f"{k}={v}" for k, v in params.items()])
        grid = {**preset, **swept}  # the command line wins, as with the Hydra sweeper
        if not grid:
            raise LandscopeError("nothing is swept: give an experiment preset with sweep "
                                 "params or sweep overrides such as seed=0,1,2")
        for values in itertools.product(*grid.values()):  # every run must be valid
            job = [f"{k}={v}" for k, v in zip(grid, values)]
            try:
                check_inputs(compose(config_name="config", overrides=[*plain, *job],
                                     return_hydra_config=True))
            except Exception as exc:  # noqa: BLE001
                raise LandscopeError(f"{' '.join(job)}: {one_line(exc)}") from None
    command = ["${env}", "${interpreter}", "-m", "runner",
               *[o for o in plain if not o.startswith("logger=")], "logger=wandb",
               "${args_no_hyphens}"]
    spec: dict[str, Any] = {
        "name": str(cfg.name), "method": method,
        "metric": {"name": metric, "goal": goal},
        "command": command,
        "parameters": {k: {"values": v} for k, v in grid.items()},
    }
    if project or cfg.logger.get("project"):
        spec["project"] = project or str(cfg.logger.project)
    return spec
