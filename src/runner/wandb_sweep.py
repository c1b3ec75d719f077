"""A W&B sweep from a Hydra sweep: ``python -m runner.wandb_sweep [OVERRIDES...] [--out FILE]
[--method grid|random|bayes] [--metric NAME] [--goal minimize|maximize] [--project P]``.

The sweep is what ``python -m runner -m OVERRIDES`` would run: the experiment preset's
``hydra.sweeper.params`` plus every sweep override on the command line (``optimizer=sgd,adam``,
``seed=range(0,5)``, ``choice(...)``). Each swept key becomes a W&B parameter whose values
are the Hydra override strings, and every plain override (``experiment=h2_skip``,
``train.epochs=5``) is passed through unchanged. The command line of each W&B run is
``python -m runner <plain overrides> logger=wandb key=value ...`` (``${args_no_hyphens}``),
so ``wandb agent`` trains exactly one Hydra job per run, into the same job directory the
Hydra sweep would use under ``outputs/runs/<name>/``, tracked in the agent's run:

    python -m runner.wandb_sweep experiment=h2_skip --out h2_skip.sweep.yaml
    wandb sweep h2_skip.sweep.yaml          # prints the sweep id
    wandb agent <entity>/<project>/<sweep id>

The file is written atomically (default ``<name>.sweep.yaml``; ``--out -`` prints it).
Exit codes: 0 written, 2 bad input (one ``error:`` line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

METHODS = ("grid", "random", "bayes")
OPTIONS = {"--out": None, "--method": "grid", "--metric": "final/test_acc",
           "--goal": "maximize", "--project": None}


def _options(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    from landscope.errors import LandscopeError

    opts, rest, i = dict(OPTIONS), [], 0
    while i < len(args):
        if args[i] in OPTIONS:
            if i + 1 >= len(args):
                raise LandscopeError(f"{args[i]} needs a value")
            opts[args[i]] = args[i + 1]
            i += 2
        elif args[i].startswith("--"):
            raise LandscopeError(f"unknown option {args[i]} (known: {', '.join(OPTIONS)})")
        else:
            rest.append(args[i])
            i += 1
    if opts["--method"] not in METHODS:
        raise LandscopeError(f"--method must be one of {', '.join(METHODS)} "
                             f"(got {opts['--method']})")
    if opts["--goal"] not in ("minimize", "maximize"):
        raise LandscopeError(f"--goal must be minimize or maximize (got {opts['--goal']})")
    return opts, rest


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


def sweep_spec(overrides: list[str], method: str = "grid", metric: str = "final/test_acc",
               goal: str = "maximize", project: Optional[str] = None) -> dict[str, Any]:
    """The W&B sweep configuration (a dict ready for YAML) for ``python -m runner -m
    OVERRIDES``. Checks that the plain overrides compose into a valid config."""
    import itertools

    from hydra import compose, initialize_config_dir

    from landscope.config import register_configs
    from landscope.errors import LandscopeError, one_line
    from landscope.jobs import check_inputs
    from runner.app import _conf_dir

    plain, swept = split_overrides(overrides)
    register_configs()
    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
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


def main(argv: Optional[list[str]] = None) -> None:
    import yaml

    from landscope.io import atomic_write_text
    from runner.cli import arguments, check_writable, input_errors

    args = arguments(argv, __doc__, options=tuple(OPTIONS))
    with input_errors():
        opts, overrides = _options(args)
        if opts["--out"] != "-":
            check_writable([Path(opts["--out"]).parent if opts["--out"] else Path(".")])
        spec = sweep_spec(overrides, opts["--method"], opts["--metric"], opts["--goal"],
                          opts["--project"])
    text = ("# W&B sweep written by `python -m runner.wandb_sweep " + " ".join(args) + "`\n"
            + yaml.safe_dump(spec, sort_keys=False))
    out = opts["--out"] or f"{spec['name']}.sweep.yaml"
    if out == "-":
        print(text, end="")
        return
    atomic_write_text(Path(out), text)
    n = 1
    for p in spec["parameters"].values():
        n *= len(p["values"])
    print(f"wrote {out}: {n} runs ({spec['method']}); then: wandb sweep {out} && "
          f"wandb agent <sweep id>")


if __name__ == "__main__":
    main()
