"""Local parallel jobs that survive a dying worker (``hydra/launcher=parallel``).

hydra-joblib-launcher runs the jobs in a loky pool.  When one worker dies (SIGKILL, the
out-of-memory killer) loky breaks the whole pool: the other job in flight dies with it, the
remaining jobs never start and the sweep aborts with a ``TerminatedWorkerError`` (issue #17,
defect 9).  A pool cannot say which job killed its worker, so this launcher owns its worker
processes instead and always knows which job each one runs:

- the configuration is joblib's (``n_jobs`` with joblib's meaning, -1 = all cores; the
  workers get the environment joblib gives loky workers, which caps BLAS/OpenMP threads at
  ``cores // n_jobs``); the other joblib keys are accepted and unused;
- each job runs through hydra-joblib-launcher's own ``execute_job`` (Hydra's ``run_job``)
  in a loky-started process that is reused for the next job, as a loky worker is;
- a worker that dies fails its own job only: that job's result.json is written ``failed``
  with the reason (e.g. "worker process died (signal 9, SIGKILL)") and the config
  fingerprint, as :func:`landscope.jobs.run_job` records a failed job; a fresh worker
  takes the next job, the jobs in flight elsewhere are untouched, and the sweeper ends with
  its status table (exit 1).
"""

from __future__ import annotations

import collections
import copy
import logging
import os
import pickle
import signal
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import open_dict, read_write

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

log = logging.getLogger(__name__)


def n_workers(n_jobs: Any, n_tasks: int) -> int:
    """Joblib's reading of ``n_jobs`` (None: 1; -1: all cores; -2: all but one; ...),
    capped by the number of jobs."""
    from joblib import effective_n_jobs

    return max(1, min(int(effective_n_jobs(None if n_jobs is None else int(n_jobs))), n_tasks))


def worker_env(n_jobs: int) -> dict:
    """The environment joblib gives its loky workers (BLAS/OpenMP threads per worker)."""
    from joblib._parallel_backends import LokyBackend

    return LokyBackend()._prepare_worker_env(n_jobs=n_jobs)


def death_reason(exitcode: Optional[int]) -> str:
    """What a worker's exit code says about its death, for the job's result.json."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"worker process died (signal {-exitcode}, {name})"
    return f"worker process exited unexpectedly (exit code {exitcode})"


def _cloudpickle() -> Any:
    """Cloudpickle (pickles Hydra's task function, a closure), as loky uses it."""
    try:
        import cloudpickle
    except ImportError:  # joblib < 1.5 vendored it
        from joblib.externals import cloudpickle  # type: ignore[no-redef]
    return cloudpickle


class WorkerDied(RuntimeError):
    """A job's worker process died (killed, out of memory) before the job returned."""


# ----------------------------------------------------------------------------- the worker
def _watch_parent(parent_pid: int) -> None:
    """End this worker when the sweep process is gone (it would otherwise train on)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _serve(conn: Any, parent_pid: int) -> None:
    """A worker: read the shared job context once, then run jobs until the pipe closes."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job
    cloudpickle = _cloudpickle()

    _watch_parent(parent_pid)
    try:
        hydra_context, config, task_function, singleton_state = cloudpickle.loads(
            conn.recv_bytes())
        while True:
            idx, overrides = pickle.loads(conn.recv_bytes())
            try:
                out: tuple = ("ok", execute_job(idx, overrides, hydra_context, config,
                                                task_function, singleton_state))
            except Exception as exc:  # as joblib does, the launcher re-raises it
                out = ("error", exc)
            try:
                data = cloudpickle.dumps(out)
            except Exception as exc:
                data = cloudpickle.dumps(("error", RuntimeError(
                    f"job {idx}: its result cannot be sent back ({type(exc).__name__}: {exc})")))
            conn.send_bytes(data)
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass  # the launcher closed the pipe (done) or the sweep was interrupted


class _Worker:
    def __init__(self, ctx: Any, env: dict, shared: bytes) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_serve, args=(child, os.getpid()), env=env,
                                name="landscope-parallel-worker")
        self.proc.start()
        child.close()
        self.conn.send_bytes(shared)
        self.task: Optional[int] = None

    def give(self, task: int, message: bytes) -> None:
        self.task = task
        self.conn.send_bytes(message)

    def stop(self, force: bool) -> None:
        """Close the pipe (an idle worker then returns); terminate a busy or stuck one."""
        self.conn.close()
        if force:
            self.proc.terminate()
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def run_pool(tasks: Sequence[tuple], n: int, env: dict, shared: bytes
             ) -> tuple[list, dict[int, str]]:
    """Run ``tasks`` (``(idx, overrides)``) on at most ``n`` workers; returns each task's
    JobReturn (None for a task whose worker died) and ``{task: reason}`` for those."""
    pool = _Pool(tasks, n, env, shared)
    clean = False
    try:
        while pool.todo or any(w.task is not None for w in pool.workers):
            pool.fill()
            busy = [w for w in pool.workers if w.task is not None]
            if not busy:
                continue
            ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
            for w in busy:
                if w.conn not in ready and w.proc.sentinel not in ready:
                    continue
                pool.receive(w)
        clean = True
    finally:
        for w in pool.workers:
            try:
                w.stop(force=not clean)
            except OSError:
                pass
    return pool.results, pool.deaths


class _Pool:
    """The workers, the tasks still to give out and the results of one :func:`run_pool`."""

    def __init__(self, tasks: Sequence[tuple], n: int, env: dict, shared: bytes) -> None:
        self.cloudpickle = _cloudpickle()
        from joblib.externals.loky.backend.context import get_context

        self.ctx = get_context("loky")
        self.tasks, self.n, self.env, self.shared = tasks, n, env, shared
        self.results: list = [None] * len(tasks)
        self.deaths: dict[int, str] = {}
        self.todo = collections.deque(range(len(tasks)))
        self.workers: List[_Worker] = []

    def dispatch(self, w: _Worker) -> bool:
        """Give ``w`` the next task; False (task kept) when ``w`` died while idle."""
        t = self.todo[0]
        try:
            w.give(t, pickle.dumps(self.tasks[t]))
        except OSError:  # BrokenPipeError: it died between two jobs
            w.task = None
            return False
        self.todo.popleft()
        return True

    def bury(self, w: _Worker) -> None:
        w.proc.join(timeout=10)
        w.conn.close()
        self.workers.remove(w)

    def fill(self) -> None:
        """Give the idle workers tasks and start new workers (up to ``n``) for the rest."""
        for w in list(self.workers):
            if w.task is None and self.todo and not self.dispatch(w):
                self.bury(w)
        while self.todo and len(self.workers) < self.n:
            self.workers.append(_Worker(self.ctx, self.env, self.shared))
            if not self.dispatch(self.workers[-1]):
                w = self.workers[-1]
                self.bury(w)
                raise RuntimeError(f"a new worker process died at start "
                                   f"({death_reason(w.proc.exitcode)})")

    def receive(self, w: _Worker) -> None:
        """Take the reply of a ready worker, or record its death (its job's reason)."""
        reply = None
        try:
            if w.conn.poll():
                reply = self.cloudpickle.loads(w.conn.recv_bytes())
        except (EOFError, OSError):
            pass  # the pipe closed without a result: the worker died
        if reply is not None:
            status, value = reply
            if status == "error":
                raise value
            self.results[w.task], w.task = value, None  # type: ignore[index]
            return
        w.proc.join(timeout=10)
        if w.proc.is_alive():
            return  # the pipe closed first; its exit code comes next round
        self.deaths[w.task] = death_reason(w.proc.exitcode)  # type: ignore[index]
        log.error("error: job #%s: %s; the sweep goes on", self.tasks[w.task][0],  # type: ignore
                  self.deaths[w.task])  # type: ignore[index]
        self.bury(w)


# ----------------------------------------------------------------------------- the launcher
class ParallelLauncher(JoblibLauncher):
    """hydra-joblib-launcher's configuration and per-job function, with workers of its own
    so that one dying worker fails only its job (module docstring)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        cloudpickle = _cloudpickle()

        setup_globals()
        assert self.config is not None and self.task_function is not None
        assert self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        n = n_workers(self.joblib.get("n_jobs"), len(job_overrides))
        log.info("Launching %d jobs on %d worker processes, sweep output dir: %s",
                 len(job_overrides), n, sweep_dir)
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
        if not job_overrides:
            return []
        shared = cloudpickle.dumps((self.hydra_context, self.config, self.task_function,
                                    Singleton.get_state()))
        tasks = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        results, deaths = run_pool(tasks, n, worker_env(n), shared)
        for t, reason in deaths.items():
            results[t] = self._died(list(job_overrides[t]), reason)
        return results

    def _died(self, overrides: List[str], reason: str) -> JobReturn:
        """Record a job whose worker died as run_job records a failed job
        (``landscope.jobs.record_failure``: result.json ``failed`` with the reason and the
        config fingerprint unless a finished result of this config is there, traceback.txt,
        a full disk logged); the summary is the one the sweeper's table shows."""
        from landscope.jobs import FAILED, record_failure

        assert self.hydra_context is not None and self.config is not None
        job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        job_dir = Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)
        task_cfg = copy.deepcopy(job_cfg)  # as Hydra's run_job hands it to the task
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
            raise WorkerDied(reason)  # traceback.txt then names the cause
        except WorkerDied:
            problem = record_failure(task_cfg, job_dir, overrides, reason, user_error=False)
            if problem is not None:
                log.error("error: %s: the failure could not be recorded (%s)", job_dir, problem)
        except OSError as exc:
            log.error("error: %s: the failure could not be recorded (%s)", job_dir,
                      exc.strerror or exc)
        # Hydra's status says the job ran to an outcome; the outcome is "failed", exactly as
        # the task function reports a job that raised (landscope.jobs.run_job never raises).
        return JobReturn(overrides=overrides, cfg=task_cfg, hydra_cfg=job_cfg,
                         working_dir=str(job_dir), task_name=str(job_cfg.hydra.job.name),
                         status=JobStatus.COMPLETED,
                         _return_value={"job": job_dir.name, "dir": str(job_dir),
                                        "status": FAILED, "message": reason})
