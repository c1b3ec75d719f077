"""A Hydra sweeper that validates every job up front and survives failing jobs.

Hydra's basic sweeper re-raises the first failed job's exception once a batch has
run, which aborts the sweep.  This sweeper:

1. expands the sweep exactly like the basic sweeper (same overrides, same
   ``hydra.sweeper.params`` support, any launcher: basic, joblib, submitit, ray);
2. composes and checks every job's config (``landscope.jobs.check_inputs``: options the
   schema lacks, values, directory-name lengths, group choices), that no two jobs map to
   the same job directory and that no job directory already holds a job of another
   config (``landscope.jobs.directory_conflict``), before any job starts or any file
   (multirun.yaml included) is written, so a refused sweep is one error line and a
   byte-identical output tree; then renames the job directories an earlier release named
   with an option's old spelling (``landscope.legacy_dirs``) to the current names, and
   warns of jobs that are another job again (the same training, probe and landscape
   fingerprints: they differ only in options the job does not read, such as
   ``optimizer.betas`` under SGD);
3. runs all batches; a job that raised through the launcher is recorded as
   ``failed`` instead of stopping the sweep. Under a launcher other than the basic one (which
   runs one job at a time), each trained model's first job runs before any model's second
   (:func:`first_trainings_first`), so that a sweep over probe or landscape settings trains
   each model once where it can (:mod:`landscope.jobreuse`);
4. prints a table of job statuses and records it in :data:`LAST_SWEEP` for the
   runner, which exits non-zero when any job failed.

Beyond the basic sweeper, ``hydra.sweeper.cases`` takes designs that are not a cartesian
product: a list of override sets (each a string of space-separated overrides, e.g.
``"optimizer=sgd optimizer.lr=0.01 optimizer.weight_decay=0.01"``). The sweep is then the
union over the cases of the product of ``params``, the case and the command line (for a key
given in more than one place, the command line wins over the case and the case over
``params``). ``cases: null`` (default) is the basic sweeper's product.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf, open_dict, read_write

from landscope.wording import counted

log = logging.getLogger(__name__)

#: Summaries of the last sweep run in this process (read by runner.app).
LAST_SWEEP: Optional[List[dict]] = None


def _case_overrides(case: Any) -> List[str]:
    if isinstance(case, str):
        return case.split()
    return [str(x) for x in case]  # a list of overrides works too


class LandscopeSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[Dict[str, str]] = None,
                 cases: Optional[List[Any]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.cases = list(cases) if cases else None

    def _expand(self, parser: OverridesParser, arguments: List[str]) -> List[List[List[str]]]:
        """The job override lists in batches: the basic product, or its union over cases."""
        params = self._parse_config()
        if not self.cases:
            return self.split_arguments(parser.parse_overrides(params + list(arguments)),
                                        self.max_batch_size)
        jobs: List[List[str]] = []
        for case in self.cases:
            for batch in self.split_arguments(parser.parse_overrides(
                    params + _case_overrides(case) + list(arguments)), None):
                jobs.extend(batch)
        n = self.max_batch_size or len(jobs) or 1
        return [jobs[i:i + n] for i in range(0, len(jobs), n)]

    def sweep(self, arguments: List[str]) -> Any:
        global LAST_SWEEP
        from landscope.errors import LandscopeError
        from landscope.io import atomic_write_text
        from landscope.jobs import FAILED
        from landscope.legacy_dirs import adopt_legacy_dir

        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self._expand(parser, list(arguments))

        trainings: list = []
        for legacy, job_dir in self._check_jobs(trainings):
            adopt_legacy_dir(job_dir, legacy)
        if "BasicLauncher" not in str(self.config.hydra.launcher.get("_target_", "")):
            self.overrides = first_trainings_first(self.overrides, trainings, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
        except OSError as exc:
            raise LandscopeError(f"cannot write the sweep directory {sweep_dir}: "
                                 f"{exc.strerror or exc}") from None

        returns, summaries, idx = [], [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            results = self.launcher.launch(batch, initial_job_idx=idx)
            for job_overrides, r in zip(batch, results):
                summaries.append(_summary(job_overrides, r, FAILED))
            idx += len(batch)
            returns.append(results)

        LAST_SWEEP = summaries
        print("\n" + format_status_table(summaries) + f"\nsweep directory: {sweep_dir}", flush=True)
        return returns

    def _check_jobs(self, trainings: list) -> list:
        """Every job's inputs and directory, checked before anything is written; returns the
        ``(legacy, job_dir)`` pairs of directories an earlier release named with an option's
        old spelling (renamed once every job passed). ``trainings`` gets each job's training
        fingerprint, in the sweep's order."""
        from landscope.errors import LandscopeError
        from landscope.fingerprints import job_fingerprints
        from landscope.jobs import check_inputs, directory_conflict
        from landscope.legacy_dirs import legacy_job_dir, separators

        loader = self.hydra_context.config_loader
        dirs: dict = {}
        moves: list = []  # (legacy, job_dir): job directories named by an earlier release
        jobs: dict = {}  # job_fingerprints -> the first job's directory
        for batch in self.overrides:
            for job_overrides in batch:
                job_cfg = loader.load_sweep_config(self.config, list(job_overrides))
                try:
                    check_inputs(job_cfg)
                except LandscopeError as exc:
                    raise LandscopeError(f"job [{','.join(job_overrides)}]: {exc}") from None
                subdir = str(job_cfg.hydra.sweep.subdir)
                job_dir = Path(str(job_cfg.hydra.sweep.dir)) / subdir
                if job_dir in dirs:
                    raise LandscopeError(
                        f"jobs [{','.join(dirs[job_dir])}] and [{','.join(job_overrides)}] map to "
                        f"the same job directory {subdir!r} (a repeated value, or a swept key "
                        f"that hydra.job.config.override_dirname.exclude_keys leaves out of the "
                        f"name)")
                dirs[job_dir] = list(job_overrides)
                # a directory an earlier release named with an option's old spelling is this
                # job's: checked as such now, renamed once every job passed
                legacy = legacy_job_dir(job_dir, *separators(job_cfg))
                conflict = directory_conflict(_task_config(job_cfg), legacy or job_dir)
                if conflict is not None:
                    raise LandscopeError(conflict)
                if legacy is not None:
                    moves.append((legacy, job_dir))
                keys = job_fingerprints(_task_config(job_cfg))
                trainings.append(keys[0])
                _warn_if_again(jobs, keys, subdir)
        return moves


def _warn_if_again(jobs: dict, key: tuple, subdir: str) -> None:
    """Warn when the job of ``key`` (:func:`landscope.fingerprints.job_fingerprints`) was met
    before (jobs named by their directories, as in the status table)."""
    first = jobs.setdefault(key, subdir)
    if first != subdir:
        log.warning("warning: job %s is job %s again (the same seed, and they differ only in "
                    "options the job does not read): it computes the same results a second "
                    "time (its training taken from the first once that has finished, "
                    "train.reuse_trained), and the analysis counts it once", subdir, first)


def first_trainings_first(batches: List[List[List[str]]], trainings: list,
                          size: Optional[int]) -> List[List[List[str]]]:
    """The jobs re-batched so that each trained model's first job (of its training
    fingerprint, ``trainings`` per job) comes before every model's second, and so on; the
    order is otherwise kept. A launcher that runs jobs at once then trains each model once
    and has its other jobs (other probe or landscape settings) take that training
    (:mod:`landscope.jobreuse`), where it would start them together. Unchanged when no two
    jobs share a training."""
    jobs = [job for batch in batches for job in batch]
    seen: dict = {}
    rank = []
    for key in trainings:
        rank.append(seen.get(key, 0))
        seen[key] = rank[-1] + 1
    order = sorted(range(len(jobs)), key=rank.__getitem__)
    if order == list(range(len(jobs))):
        return batches
    jobs = [jobs[i] for i in order]
    n = size or len(jobs) or 1
    return [jobs[i:i + n] for i in range(0, len(jobs), n)]


def _task_config(job_cfg: Any) -> Any:
    """The job's config as its task function receives it (Hydra's ``run_job``: no ``hydra``)."""
    task_cfg = copy.deepcopy(job_cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def _summary(job_overrides: List[str], r: Any, failed: str) -> dict:
    if r.status == JobStatus.COMPLETED and isinstance(r._return_value, dict):
        return r._return_value
    err = r._return_value
    msg = " ".join(str(err).split()) if err is not None else "job did not return"
    return {"job": ",".join(job_overrides), "status": failed,
            "message": f"{type(err).__name__}: {msg}"}


def format_status_table(summaries: list[dict]) -> str:
    """Plain-text table of job statuses for the end of a multirun."""
    rows = [("job", "status", "epochs", "test_acc", "note")]
    for s in summaries:
        acc = s.get("test_acc")
        rows.append((s["job"], s["status"], "" if s.get("epochs") is None else str(s["epochs"]),
                     "" if acc is None else f"{acc:.4f}", s.get("message") or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    counts: dict[str, int] = {}
    for s in summaries:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    total = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    end = f"{counted(len(summaries), 'job')}: {total}"
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], end])
