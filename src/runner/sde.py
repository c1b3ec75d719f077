"""The SGD-as-SDE check: ``python -m runner.sde SWEEP_OR_JOB... [sde.KEY=VALUE ...]``.

For every completed job of the given sweeps that trains ``dataset=two_basin`` with plain SGD
(``conf/experiment/sde.yaml`` makes one job per (eta, B)), runs ``sde.runs`` SGD runs of
``sde.steps`` steps with the job's step size ``optimizer.lr`` and batch size
``train.batch_size`` from a common start, batched as one tensor
(:mod:`landscope.sde.simulate`), counts the runs that end on the sharp side of the saddle and
stores the counts with the predictions of :mod:`landscope.sde.theory` (T_eff, Laplace, exact
Gibbs, the step-size-corrected Laplace, the Eyring-Kramers relaxation time).  The report's
section "SDE check" (:mod:`landscope.analysis.sde`) reads them.

Settings (``SdeConfig``; override as ``sde.KEY=VALUE``)::

    sde.runs=4000              independent runs per cell
    sde.steps=40000            SGD steps per run (the fraction is also counted at 1/8, 1/4
                               and 1/2 of them: the mixing curve)
    sde.seed=0                 batch-draw seed
    sde.sampling=[replacement] replacement (the SDE's noise model) and/or epoch (reshuffled
                               epochs, as the runner trains)
    sde.start=saddle           the common start: saddle (tilt, 0) or origin (0, 0)
    sde.progress=null          a tqdm bar of the steps: true, false, null (on a terminal);
                               changes no result, so it is not stored

Output per job, written atomically: ``<job>/sde/<fingerprint>.json`` (the fingerprint a hash
of the settings); a complete file for the same settings and problem is not recomputed.  Before
its simulations each job logs its plan: the cell, runs and steps, and the time of a step of
each sampling (timed on the spot over one period of the batch draws: 64 steps of replacement
draws, or an epoch) times the steps.  With ``sde.progress`` (on a terminal by default) each
job's simulation shows a tqdm bar of its steps, one per sampling.
Exit codes: 0 every job done, 1 a job failed (the others still ran), 2 bad input (no
two-basin SGD job, an unknown key, a wrong type or an impossible value, a job's ``sde/``
directory that cannot be written): one ``error:`` line on stderr.
"""

from __future__ import annotations

from landscope.sde.jobs import run_job, sde_jobs, summary
from landscope.sde.settings import RESULTS_DIR, sde_config, settings_fingerprint

__all__ = ["main", "sde_config"]


def main(argv: list[str] | None = None) -> None:
    from runner.cli import run_sweep_command

    run_sweep_command(argv, __doc__, settings_of=sde_config, jobs_of=sde_jobs, run_one=run_job,
                      summary=summary, results_dir=RESULTS_DIR,
                      fingerprint_of=settings_fingerprint)


if __name__ == "__main__":
    main()
