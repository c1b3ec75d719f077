"""Run the configured set of curvature probes on one model: no files, no Hydra.

:func:`run_probes` takes a model, the training split and a probe config
(``landscope.config.ProbeConfig``) and returns a :class:`ProbeReport`: flat scalars (their
names are the results contract, defined by :meth:`~landscope.probes.run.ProbeRun.scalars` and
documented in :mod:`landscope.probes.run` and the README) and arrays (eigenvalues,
eigenvectors, density grid) for the job layer to save. The run is a
:class:`~landscope.probes.run.ProbeRun` that the steps of :mod:`landscope.probes.steps` fill
one typed result at a time. :func:`curvature_during_training` is the cheap subset logged every
N epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from landscope.errors import LandscopeError
from landscope.models import count_parameters
from landscope.probes.blocks import group_sizes
from landscope.probes.cost import ProbeLedger
from landscope.probes.curvature_probes import outputs_per_sample
from landscope.probes.distributed import any_rank, hessian_operator, rank_and_world
from landscope.probes.hvp import HessianOperator, forward_mode
from landscope.probes.lanczos import lanczos_eigs
from landscope.probes.per_sample import local_processes, rows_memory_problem
from landscope.probes.plan import (
    curvature_sizes,
    evaluation_seconds,
    fewest_products,
    most_products,
    sharpness_evaluations,
    usual_products,
)
from landscope.probes.probe_data import ProbeData
from landscope.probes.run import ProbeRun
from landscope.probes.steps import (
    PAC_BAYES_SIGMA_RTOL,
    TRACE_GPU_BLOCK,
    TRACE_MIN_SAMPLES,
    sharpness_objective,
    step_verify,
    steps_for,
)
from landscope.probes.trace import hutchinson
from landscope.progress import wanted

__all__ = ["ProbeReport", "ProbeRun", "probe_data", "run_probes", "start_run", "finish_run",
           "curvature_during_training", "PAC_BAYES_SIGMA_RTOL", "TRACE_GPU_BLOCK",
           "TRACE_MIN_SAMPLES"]


@dataclass
class ProbeReport:
    scalars: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def probe_data(train_split, cfg: Any) -> ProbeData:
    return ProbeData.from_split(train_split, size=cfg.data_size, seed=cfg.seed,
                                micro_batch=cfg.micro_batch)


def run_probes(model: nn.Module, train_split, cfg: Any,
               w0: Optional[nn.Module | torch.Tensor] = None,
               log: Optional[Callable[[str], None]] = None) -> ProbeReport:
    """All probes ``cfg`` switches on, on a fixed seeded subset of ``train_split``.

    ``w0``: the prior mean of the PAC-Bayes bounds (``cfg.pacbayes.enabled``), which must not
    depend on the training data: the model at initialization (a model of the same architecture or
    a flat vector in parameter order; :func:`landscope.jobs.initial_model` rebuilds a job's).
    ``None`` centres the prior at 0 (valid too, usually looser). ``log``: where the plan line
    and the caps' messages go.

    Cost (:mod:`~landscope.probes.cost`): ``probe_cost`` holds each estimator's seconds,
    products and evaluations; ``probe.max_products`` / ``probe.budget_s`` cap the run, and an
    estimator a cap cut short says so in ``<estimator>_stopped_by`` (top, bottom, density,
    trace, noise, sharpness, blocks, pacbayes). Products are shared between the estimators
    (:mod:`~landscope.probes.steps`)."""
    # in cfg.mode once for the whole run, so that no evaluation sets and restores the flags
    with forward_mode(model, str(cfg.mode)):
        run = start_run(model, train_split, cfg, w0=w0, log=log)
        for step in steps_for(cfg):
            step(run)
        finish_run(run, log)
    return ProbeReport(run.scalars(), run.arrays())


def start_run(model: nn.Module, train_split, cfg: Any,
              w0: Optional[nn.Module | torch.Tensor] = None,
              log: Optional[Callable[[str], None]] = None) -> ProbeRun:
    """The run before any estimator: probe data, Hessian operator (data-parallel over
    torch.distributed ranks when a process group is up), ledger and plan: one product is
    timed when products are planned, and with the sharpness step its objective is made here and
    one loss-and-gradient evaluation and one accuracy pass of it are timed
    (:mod:`~landscope.probes.plan`); the plan line goes to ``log``."""
    tic = time.perf_counter()
    data = probe_data(train_split, cfg)
    _check_noise_memory(cfg, model, data)
    op = hessian_operator(model, data, mode=str(cfg.mode), seed=cfg.seed,
                          checkpointing=bool(getattr(cfg, "checkpointing", False)))
    ranks = rank_and_world()[1]
    show = wanted(getattr(cfg, "progress", None))
    ledger = ProbeLedger(counter=lambda: op.n_matvecs,
                         max_products=getattr(cfg, "max_products", None),
                         budget_s=getattr(cfg, "budget_s", None), progress=bool(show), log=log,
                         started=tic, agree=any_rank if ranks > 1 else None)
    level = str(getattr(cfg, "per_block", "none"))
    blocks = group_sizes(model, level) if level != "none" else []
    kinds = list(getattr(cfg, "curvature", None) or [])
    curv = curvature_sizes(cfg, op.dim, data.n, outputs_per_sample(model, data)) if kinds else []
    run = ProbeRun(model=model, train_split=train_split, cfg=cfg, data=data, op=op, ledger=ledger,
                   plan=most_products(cfg, op.dim, blocks, curv), w0=w0, ranks=ranks)
    if run.plan:  # the determinism check's timed product, else one kept for the top-k
        seconds = op.first_product_seconds
        run.product_seconds = op.prime(cfg.seed) if seconds is None else seconds
    evaluations, eval_seconds = sharpness_evaluations(cfg), (0.0, 0.0)
    if evaluations:  # the objective the sharpness step will use, timed
        run.objective = sharpness_objective(model, data, op)
        eval_seconds = evaluation_seconds(run.objective)
    if run.plan or evaluations:
        ledger.plan(run.plan, fewest_products(cfg, op.dim, blocks, curv), run.product_seconds,
                    evaluations, eval_seconds, usual_products(cfg, op.dim, blocks, curv))
    return run


def _check_noise_memory(cfg: Any, model: nn.Module, data: ProbeData) -> None:
    """Refuse, before anything is computed, a noise step whose per-sample gradients do not
    fit in memory (the ranks decide together: each computes them whole)."""
    noise = getattr(cfg, "noise", None)
    if noise is None or not noise.enabled:
        return
    first = next((p for p in model.parameters() if p.requires_grad), None)
    if first is None:  # the operator names that problem
        return
    ranks = rank_and_world()[1]
    problem = rows_memory_problem(
        min(int(noise.samples), data.n_total), count_parameters(model, trainable_only=True),
        first.dtype, first.device, local_processes(ranks) if first.device.type == "cpu" else 1)
    if ranks > 1 and any_rank(problem is not None) and problem is None:
        problem = "another rank has no memory for the noise step's per-sample gradients"
    if problem is not None:
        raise LandscopeError(problem)


def finish_run(run: ProbeRun, log: Optional[Callable[[str], None]] = None) -> None:
    """After the estimators: products and costs, the caps' message, the verification (not in
    the costs) and the run's seconds."""
    run.hvps = run.op.n_matvecs
    run.cost = run.ledger.summary()
    stopped = run.ledger.stopped
    if stopped and log is not None:
        log("probe caps cut short: " + ", ".join(f"{k} ({v})" for k, v in stopped.items()))
    if run.cfg.verify:
        step_verify(run)
    run.seconds = time.perf_counter() - run.ledger.started


def curvature_during_training(model: nn.Module, data: ProbeData, cfg: Any) -> dict[str, float]:
    """λmax (Lanczos, tol 1e-3) and a 10-sample Hutchinson trace: the cheap subset
    logged into ``metrics.jsonl`` every ``probe.every_n_epochs`` epochs."""
    op = HessianOperator(model, data, mode=str(cfg.mode), seed=cfg.seed,
                         check_determinism=False)
    top = lanczos_eigs(op, k=1, which="largest", tol=1e-3, seed=cfg.seed)
    tr = hutchinson(op, n_samples=10, seed=cfg.seed)
    return {"curv_lambda_max": float(top.eigenvalues[0]), "curv_trace": tr.estimate,
            "curv_trace_stderr": tr.stderr, "curv_hvps": op.n_matvecs}
