"""Escape from minima (H3): the dynamics of one run (:mod:`~landscope.escape.dynamics`), its
settings (:mod:`~landscope.escape.settings`) and the runs over finished jobs
(:mod:`~landscope.escape.jobs`, what ``python -m runner.escape`` runs)."""

from landscope.escape.dynamics import (
                                       NOISES,
                                       EscapeRule,
                                       EscapeRun,
                                       InjectedNoise,
                                       minibatch_noise_trace,
                                       run_escape,
                                       sgd_noise_trace,
)

__all__ = ["NOISES", "EscapeRule", "EscapeRun", "InjectedNoise", "minibatch_noise_trace",
           "run_escape", "sgd_noise_trace"]
