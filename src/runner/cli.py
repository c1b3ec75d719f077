"""Plumbing shared by the commands on finished jobs (``runner.probe``, ``runner.landscape``,
``runner.connect``, ``runner.figures``, ``runner.report``): arguments, the job's config with
one group replaced, and the loop that updates finished jobs."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional


def arguments(argv: Optional[list[str]], doc: str) -> list[str]:
    """The command's arguments; prints ``doc`` and exits for ``-h``/``--help`` (0) or none (2)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(doc)
        sys.exit(0 if args else 2)
    return args


@contextmanager
def input_errors(composing: bool = False) -> Iterator[None]:
    """Bad input found before any work starts: one ``error:`` line on stderr and exit 2.

    A :class:`~landscope.errors.LandscopeError` is always bad input. With ``composing`` (the
    block composes configs), any other exception is too: Hydra and OmegaConf report an unknown
    key or a wrong type with their own types, in several lines, condensed here to one."""
    from landscope.errors import LandscopeError
    from runner.app import one_line

    try:
        yield
    except LandscopeError as exc:
        text = str(exc)
        _bad_input(one_line(exc) if "\n" in text else text)
    except Exception as exc:
        if not composing:
            raise
        _bad_input(one_line(exc))


def _bad_input(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def paths_and_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """Job directory names contain '=', so an argument is a path when it exists (or has no '=')."""
    paths = [a for a in args if Path(a).exists() or "=" not in a]
    return paths, [a for a in args if a not in paths]


def pop_out(args: list[str]) -> Optional[Path]:
    """Remove ``--out DIR`` from ``args`` and return DIR (None when absent; exit 2 without DIR)."""
    if "--out" not in args:
        return None
    i = args.index("--out")
    if i + 1 >= len(args):
        _bad_input("--out needs a directory")
    out = Path(args[i + 1])
    del args[i:i + 2]
    return out


def group_config(group: str, overrides: list[str]):
    """One config group (e.g. ``probe``) composed with ``overrides`` as the runner would."""
    from hydra import compose, initialize_config_dir

    from landscope.config import register_configs
    from runner.app import _conf_dir

    register_configs()
    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)[group]


def job_config(job: Path, group: str, value):
    """The job's saved config (on the typed schema) with config group ``group`` replaced,
    checked as the runner would check it."""
    from omegaconf import OmegaConf

    from landscope.config import Config
    from landscope.jobs import check_inputs

    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(job / "config.yaml"))
    cfg[group] = value
    check_inputs(cfg)
    return cfg


def update_finished_job(job: Path, cfg, verb: str, shown: Callable[[dict], dict]) -> bool:
    """Run the configured probes and landscape on a finished job (no retraining) and print one
    line; False when it failed."""
    from landscope.io import read_json
    from landscope.jobs import COMPLETED, DIVERGED, probe_finished_job
    from runner.app import one_line

    previous = read_json(job / "result.json")
    if previous.get("status") not in (COMPLETED, DIVERGED):
        print(f"skipped: {job} (status {previous.get('status')})")
        return True
    try:
        result = probe_finished_job(cfg, job, previous)
    except Exception as exc:
        print(f"failed: {job}: {one_line(exc)}", file=sys.stderr)
        return False
    print(f"{verb}: {job} {shown(result)}")
    return True


def run_each(items: Iterable[Any], label: Callable[[Any], str],
             work: Callable[[Any], tuple[str, Any]], shown: Callable[[Any], str]) -> dict:
    """``work(item) -> (how, record)`` for every item, ``how`` being ``computed`` or
    ``cached``: one line per item (``how: label  shown(record)``, with the seconds when
    computed), ``failed: label: message`` on stderr when it raises (the others still run);
    Ctrl-C exits 130 with a hint that the same command resumes. Returns the counts."""
    import time

    from landscope.errors import LandscopeError
    from runner.app import one_line

    counts = {"computed": 0, "cached": 0, "failed": 0}
    for item in items:
        tic = time.perf_counter()
        try:
            how, record = work(item)
        except KeyboardInterrupt:
            print("interrupted: run the same command again to resume", file=sys.stderr)
            sys.exit(130)
        except Exception as exc:
            counts["failed"] += 1
            msg = one_line(exc) if isinstance(exc, LandscopeError) \
                else f"{type(exc).__name__}: {one_line(exc)}"
            print(f"failed: {label(item)}: {msg}", file=sys.stderr, flush=True)
            continue
        counts[how] += 1
        took = f" ({time.perf_counter() - tic:.1f} s)" if how == "computed" else ""
        print(f"{how}: {label(item)}  {shown(record)}{took}", flush=True)
    return counts
