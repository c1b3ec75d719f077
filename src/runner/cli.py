"""Plumbing shared by the commands on finished jobs (``runner.probe``, ``runner.landscape``,
``runner.connect``, ``runner.escape``, ``runner.figures``, ``runner.report``): arguments
(unknown ``-``/``--`` options refused by name), the checks every command makes before it
computes (its output locations can be written, each job's final checkpoint is readable),
the job's config with one group replaced, and the loops that update finished jobs."""

from __future__ import annotations

import difflib
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence


def arguments(argv: Optional[list[str]], doc: str, options: Sequence[str] = (),
              flags: Sequence[str] = ()) -> list[str]:
    """The command's arguments; prints ``doc`` and exits for ``-h``/``--help`` (0) or none (2).
    ``options`` take a value (``--out DIR`` or ``--out=DIR``), ``flags`` don't; any other
    argument starting with ``-`` (and not an existing path) is refused as an unknown option
    (one ``error:`` line, exit 2)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or any(a in ("-h", "--help") for a in args):
        print(doc)
        sys.exit(0 if args else 2)
    known = [*options, *flags]
    for arg in args:
        if not arg.startswith("-") or len(arg) == 1 or Path(arg).exists():
            continue
        name = arg.split("=", 1)[0]
        if name in flags and "=" not in arg or name in options:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = (f" (did you mean {close[0]}?)" if close else
                f" (known: {', '.join(known)})" if known else " (this command takes none)")
        _bad_input(f"unknown option {name}{hint}")
    return args


@contextmanager
def input_errors(composing: bool = False) -> Iterator[None]:
    """Bad input found before any work starts: one ``error:`` line on stderr and exit 2.

    A :class:`~landscope.errors.LandscopeError` is always bad input. With ``composing`` (the
    block composes configs), any other exception is too: Hydra and OmegaConf report an unknown
    key or a wrong type with their own types, in several lines, condensed here to one."""
    from landscope.errors import LandscopeError, one_line

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
    """Remove ``--out DIR`` (or ``--out=DIR``) from ``args`` and return DIR (None when absent;
    exit 2 without DIR or when given twice)."""
    found = pop_values(args, "--out", "a directory")
    if len(found) > 1:
        _bad_input(f"--out given {len(found)} times ({', '.join(found)}); give it once")
    return Path(found[0]) if found else None


def pop_values(args: list[str], name: str, what: str) -> list[str]:
    """Remove every ``NAME VALUE`` (or ``NAME=VALUE``) from ``args`` and return the values in
    order (exit 2 when one lacks its value, ``what``)."""
    found: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == name:
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                _bad_input(f"{name} needs {what}")
            found.append(args[i + 1])
            i += 2
            continue
        if arg.startswith(name + "="):
            if not arg[len(name) + 1:]:
                _bad_input(f"{name} needs {what}")
            found.append(arg[len(name) + 1:])
        else:
            rest.append(arg)
        i += 1
    args[:] = rest
    return found


def job_targets(paths: list[str]) -> list[tuple[Path, Optional[Path]]]:
    """``(job directory, checkpoint file or None for the final one)`` per command-line path:
    a checkpoint file of a job (``JOB/checkpoints/<file>``), a job directory or a sweep
    directory (its jobs); anything else raises a one-line LandscopeError."""
    from landscope.errors import LandscopeError
    from landscope.jobdir import CONFIG_FILE, find_jobs

    targets: list[tuple[Path, Optional[Path]]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            if not (p.parent.parent / CONFIG_FILE).is_file():
                raise LandscopeError(f"{p} is not a checkpoint in a job directory "
                                     f"(expected JOB/checkpoints/<file> next to JOB/config.yaml)")
            targets.append((p.parent.parent, p))
            continue
        found = find_jobs([p], "{path} is not a job directory, sweep directory or checkpoint file")
        targets += [(job.path, None) for job in found]
    return targets


# ----------------------------------------------------------------------------- up-front checks
def check_writable(dirs: Iterable[Path]) -> None:
    """Raise a one-line :class:`~landscope.errors.LandscopeError` naming the first directory
    that cannot be created or written: a real test (missing directories created, a temporary
    file written and removed, the created directories removed again), so that a command
    refuses before it computes and leaves nothing behind."""
    from landscope.errors import LandscopeError

    seen: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if d.absolute() in seen:
            continue
        seen.add(d.absolute())
        problem = _write_problem(d)
        if problem is not None:
            raise LandscopeError(f"cannot write to {d}: {problem}")


def _write_problem(d: Path) -> Optional[str]:
    created: list[Path] = []
    try:
        missing, p = [], d
        while not p.exists():
            missing.append(p)
            p = p.parent
        if not p.is_dir():
            return f"{p} is not a directory"
        for m in reversed(missing):
            m.mkdir()
            created.append(m)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".landscope-write-test-")
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        return exc.strerror or f"{type(exc).__name__}: {exc}"
    finally:
        for m in reversed(created):
            try:
                m.rmdir()
            except OSError:
                pass
    return None


# ----------------------------------------------------------------------------- configs
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
    from landscope.jobdir import JobDir
    from landscope.jobs import check_inputs

    cfg = JobDir(job).config()
    cfg[group] = value
    check_inputs(cfg)
    return cfg


def finished_job_outputs(job: Path, cfg) -> list[Path]:
    """Where updating a finished job writes: the job directory (``result.json``), its probe
    and landscape caches and, when the config draws them, its figures."""
    out = [job, job / "probes"]
    if str(cfg.landscape.name) != "none":
        out.append(job / "landscape")
    if cfg.landscape.figures:
        out.append(job / "figures")
    return out


# ----------------------------------------------------------------------------- loops
def update_finished_jobs(plans: Sequence[tuple[Path, Any]], verb: str, purpose: str,
                         shown: Callable[[dict], dict]) -> int:
    """Run the configured probes and landscape on finished jobs (no retraining), one line
    each. Every job is checked first: one whose training did not finish is skipped (a job
    whose training finished and whose probes or landscape failed is taken); one whose
    final checkpoint is missing or corrupt gets one ``error: JOB: no final checkpoint to
    <purpose>: ...`` line and is left alone. Returns how many jobs failed."""
    from landscope.jobcheck import FINISHED, finished_training
    from landscope.jobdir import FinalCheckpointError, JobDir, screen

    ready, failed = [], 0
    found = screen((JobDir(job) for job, _ in plans), FINISHED)
    for (job, cfg), s in zip(plans, found):
        if s.error is not None:
            print(f"error: {job}: result.json unreadable ({type(s.error).__name__})",
                  file=sys.stderr)
            failed += 1
            continue
        trained = finished_training(s.result)
        if trained is None:
            print(f"skipped: {job} (status {s.status}"
                  f"{' in training: the runner resumes it' if s.status == 'failed' else ''})")
            continue
        try:
            s.job.final_checkpoint(trained)
        except FinalCheckpointError as exc:
            print(f"error: {job}: no final checkpoint to {purpose}: {exc.problem}",
                  file=sys.stderr, flush=True)
            failed += 1
            continue
        ready.append((job, cfg, trained))
    for job, cfg, previous in ready:
        failed += not _update_finished_job(job, cfg, previous, verb, shown)
    return failed


def _update_finished_job(job: Path, cfg, previous: dict, verb: str,
                         shown: Callable[[dict], dict]) -> bool:
    from landscope.errors import one_line
    from landscope.joblock import JobLocked
    from landscope.jobs import probe_finished_job

    try:
        result = probe_finished_job(cfg, job, previous)
    except JobLocked as exc:  # another process is working in this job: leave it alone
        print(f"skipped: {job} (locked by another process, pid {exc.pid or 'unknown'})",
              flush=True)
        return True
    except Exception as exc:
        print(f"failed: {job}: {one_line(exc)}", file=sys.stderr, flush=True)
        return False
    print(f"{verb}: {job} {shown(result)}", flush=True)
    return True
@contextmanager
def resumable() -> Iterator[None]:
    """Ctrl-C inside exits 130 with the hint that the same command resumes."""
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)


def run_each(items: Iterable[Any], label: Callable[[Any], str],
             work: Callable[[Any], tuple[str, Any]], shown: Callable[[Any], str]) -> dict:
    """``work(item) -> (how, record)`` for every item, ``how`` being ``computed`` or
    ``cached``: one line per item (``how: label  shown(record)``, with the seconds when
    computed), ``failed: label: message`` on stderr when it raises (the others still run);
    Ctrl-C exits 130 with a hint that the same command resumes. Returns the counts."""
    import time

    from landscope.errors import one_line

    counts = {"computed": 0, "cached": 0, "failed": 0}
    for item in items:
        tic = time.perf_counter()
        try:
            with resumable():
                how, record = work(item)
        except Exception as exc:
            counts["failed"] += 1
            print(f"failed: {label(item)}: {one_line(exc, typed=True)}", file=sys.stderr,
                  flush=True)
            continue
        counts[how] += 1
        took = f" ({time.perf_counter() - tic:.1f} s)" if how == "computed" else ""
        print(f"{how}: {label(item)}  {shown(record)}{took}", flush=True)
    return counts


def run_sweep_command(argv: Optional[list[str]], doc: str, *,
                      settings_of: Callable[[list[str]], dict],
                      jobs_of: Callable[[list[str]], tuple[list[dict], list[str]]],
                      run_one: Callable[[dict, dict], Any], summary: Callable[[Any], str],
                      results_dir: str, fingerprint_of: Callable[[dict], str]) -> None:
    """A command over the jobs of sweeps with its own ``<group>.KEY=VALUE`` settings
    (``runner.escape``, ``runner.sde``): every input checked before anything is written
    (exit 2), each job run or read from its cache ``<job>/<results_dir>/<fingerprint>.json``,
    the counts printed; exit 1 when a job failed."""
    import logging

    from landscope.errors import LandscopeError
    from landscope.wording import counted

    args = arguments(argv, doc)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    paths, overrides = paths_and_overrides(args)
    with input_errors(composing=True):  # OmegaConf: unknown key, wrong type
        if not paths:
            raise LandscopeError("expected at least one sweep or job directory")
        settings = settings_of(overrides)
        jobs, notes = jobs_of(paths)
        check_writable(job["job"].path / results_dir for job in jobs)
    for note in notes:
        print(note, flush=True)
    fp = fingerprint_of(settings)
    counts = run_each(jobs, lambda job: str(job["job"]), lambda job: run_one(job, settings),
                      summary)
    print(f"{counted(len(jobs), 'job')}: {counts['computed']} computed, "
          f"{counts['cached']} cached, {counts['failed']} failed "
          f"(results in <job>/{results_dir}/{fp}.json)")
    sys.exit(1 if counts["failed"] else 0)
