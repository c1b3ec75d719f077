"""Probe finished jobs without retraining: ``python -m runner.probe DIR... [overrides]``.

``DIR`` is a job directory (it holds ``result.json``) or a sweep directory (every
job below it). Overrides choose the probe config exactly as for the runner, e.g.
``probe=standard probe.top_k=10 probe.verify=true``. Each job's final checkpoint
is probed and its ``result.json`` updated; results are cached per (checkpoint,
probe config) in the job's ``probes/`` directory, so asking again costs nothing.
Exit codes as for the runner: 0 all probed, 1 a job failed, 2 bad input.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from landscope.config import Config, register_configs
from landscope.errors import LandscopeError


def _job_dirs(paths: list[str]) -> list[Path]:
    dirs: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if (p / "result.json").is_file():
            dirs.append(p)
        elif p.is_dir():
            found = sorted(r.parent for r in p.glob("*/result.json"))
            if not found:
                raise LandscopeError(f"{p} holds no job directories (no */result.json)")
            dirs.extend(found)
        else:
            raise LandscopeError(f"{p} is not a job or sweep directory")
    return dirs


def _probe_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from runner.app import _conf_dir

    register_configs()
    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides).probe


def main(argv: list[str] | None = None) -> None:
    from landscope.jobs import COMPLETED, DIVERGED, check_inputs, probe_finished_job
    from runner.app import one_line

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if args else 2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # job directory names contain '=', so an argument is a path when it exists (or has no '=')
    paths = [a for a in args if Path(a).exists() or "=" not in a]
    overrides = [a for a in args if a not in paths]
    if not any(o.startswith("probe=") for o in overrides):
        overrides.insert(0, "probe=standard")
    try:
        jobs = _job_dirs(paths)
        probe_cfg = _probe_config(overrides)
        plans = []
        for job in jobs:
            cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(job / "config.yaml"))
            cfg.probe = probe_cfg
            check_inputs(cfg)
            plans.append((job, cfg))
    except LandscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # composition errors from Hydra / OmegaConf
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    failed = 0
    for job, cfg in plans:
        from landscope.io import read_json

        previous = read_json(job / "result.json")
        if previous.get("status") not in (COMPLETED, DIVERGED):
            print(f"skipped: {job} (status {previous.get('status')})")
            continue
        try:
            result = probe_finished_job(cfg, job, previous)
        except Exception as exc:
            failed += 1
            print(f"failed: {job}: {one_line(exc)}", file=sys.stderr)
            continue
        probes = result.get("probes", {})
        shown = {k: probes[k] for k in ("lambda_max", "trace", "hvps") if k in probes}
        print(f"probed: {job} {shown}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
