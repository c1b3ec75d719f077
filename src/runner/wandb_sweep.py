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


def main(argv: Optional[list[str]] = None) -> None:
    import yaml

    from landscope.io import atomic_write_text
    from landscope.wandb_sweeps import sweep_spec
    from runner.app import _conf_dir
    from runner.cli import arguments, check_writable, input_errors

    args = arguments(argv, __doc__, options=tuple(OPTIONS))
    with input_errors():
        opts, overrides = _options(args)
        if opts["--out"] != "-":
            check_writable([Path(opts["--out"]).parent if opts["--out"] else Path(".")])
        spec = sweep_spec(overrides, _conf_dir(), opts["--method"], opts["--metric"],
                          opts["--goal"], opts["--project"])
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
