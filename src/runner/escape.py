"""Escape from the minima of finished jobs: ``python -m runner.escape SWEEP_OR_JOB... [overrides]``.

For every completed job (``result.json`` with status ``completed``) of the given sweep
directories (or job directories), loads the final checkpoint θ0, rebuilds the job's data
and continues with plain SGD for every learning rate × batch size × seed of the settings,
recording when it escapes (``landscope.escape``: the first evaluated step where the train
loss on a fixed seeded subset exceeds ``L(θ0) + max(delta_abs, delta_rel·|L(θ0)|)`` for
``confirm`` consecutive evaluations; censored at ``max_steps``).  This is the data of H3
(issue #5; ``landscope.analysis.hypotheses.h3``).

Settings (``EscapeConfig``; override as ``escape.KEY=VALUE``)::

    escape.lrs=[0.05,0.1,0.2]       learning rates η
    escape.batch_sizes=[4,16,64]    batch sizes B (>= the train split: full batch)
    escape.seeds=[0,1,2]            batch-order seeds (one continuation each)
    escape.max_steps=600            censoring point
    escape.eval_every=2             steps between evaluations (the escape-step resolution)
    escape.eval_size=1000           fixed train subset for the loss (null: whole split)
    escape.eval_seed=0
    escape.delta_abs=0.1            loss rise that counts as escape ...
    escape.delta_rel=0.0            ... or this fraction of L(θ0), whichever is larger
    escape.confirm=2                consecutive evaluations above the threshold
    escape.radius=null              secondary: step where ||θ - θ0|| first exceeds this
    escape.noise=[sgd]              noise types, each continued at every cell: sgd
                                    (mini-batch SGD), isotropic, topk (full-batch gradient
                                    plus Gaussian noise of SGD's trace tr Σ/B·(n−B)/(n−1);
                                    landscope.escape's module docstring)
    escape.lr_unit=absolute         absolute: lrs are η; stability: lrs are fractions of
                                    2/λmax of each source minimum (η = lr·2/λmax, λmax =
                                    probes.lambda_max of its result.json, else Lanczos)
    escape.noise_k=null             topk: the first k saved eigenvectors (null: all saved)
    escape.noise_samples=1024       samples for tr Σ (per-sample gradients at θ0; null: all)
    escape.progress=null            a tqdm bar per job: true, false, null (on a terminal);
                                    changes no result, so it is not stored

H3's noise comparison at one minimum below the stability edge (H3 of the README)::

    python -m runner.escape outputs/sweeps/h3_sharp escape.noise=[sgd,isotropic,topk] \
        escape.lr_unit=stability escape.lrs=[0.8] escape.batch_sizes=[4,16] \
        escape.seeds=[0,1,2] escape.max_steps=400 escape.delta_abs=0.05

For isotropic/topk the job's tr Σ is computed once at θ0 (``landscope.escape.sgd_noise_trace``)
and the top-k Hessian eigenvectors are read from ``probes/<probe_fingerprint>.npz``
(``eigenvectors_top``, saved by the probes), or computed with Lanczos on the train split when
the job has none.  The new settings enter the fingerprint only when they differ from their
defaults, so the default settings keep the fingerprint (and cached files) they had before.

Output per job, written atomically: ``<job>/escape/<fingerprint>.json``, the fingerprint a
hash of the settings: the settings, the checkpoint's name, epoch and SHA-256, ``complete``,
and ``runs`` (one per continuation: lr, batch_size, seed, escaped, escape_step, radius_step,
diverged, loss0, threshold, steps_run, the trace of steps, losses and distances).  The file
is rewritten after each (lr, B) cell, so an interrupted run resumes there; a complete file
for the same checkpoint is not recomputed.  Before its continuations each job logs its plan
(``landscope.escape.plan``): how many it will run (a partial file's are read back), a step's
and an evaluation's time, measured on the spot by short continuations, and the most they can
take, every run censored at ``max_steps`` (a run stops when it escapes).  With
``escape.progress`` (on a terminal by default) each job shows a tqdm bar of its continuations
(those a partial file holds start it).  One line per job, then a summary.  Exit codes:
0 every job done, 1 a job failed (the others still ran), 2 bad input (no job found, an
unknown key, a wrong type or an impossible value, a job's ``escape/`` directory that cannot
be written, checked before anything is computed): one ``error:`` line on stderr.
"""

from __future__ import annotations

from landscope.escape.jobs import completed_jobs, continue_job, summary
from landscope.escape.settings import RESULTS_DIR, escape_config, settings_fingerprint

__all__ = ["escape_config", "main", "settings_fingerprint"]


def main(argv: list[str] | None = None) -> None:
    from runner.cli import run_sweep_command

    run_sweep_command(argv, __doc__, settings_of=escape_config, jobs_of=completed_jobs,
                      run_one=continue_job, summary=summary, results_dir=RESULTS_DIR,
                      fingerprint_of=settings_fingerprint)


if __name__ == "__main__":
    main()
