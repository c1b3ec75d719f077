"""The probe suite's steps: one function per estimator, each filling one typed field of a
:class:`~landscope.probes.run.ProbeRun` from the fields it needs.

Products are shared: the density's Lanczos runs work on the complement of the top-k
eigenvectors (``run.top``, which enter as exact nodes) and each run's first step is a sample
of the deflated trace, so the trace step reads ``run.top`` and ``run.density``; its stop is
relative to the larger of |tr H| and an estimate of Σ|λ| (well posed for traces near zero).
The density's first rule comes from the top-k's own Lanczos run (the same start vector: its
Ritz pairs beyond the top-k), so the density pays only for growing that space; the top-k and
bottom-k are checked for copies of a repeated eigenvalue they missed from a fresh random start
(:mod:`~landscope.probes.complement`).
The noise step reads ``run.top`` and ``run.trace``, the PAC-Bayes step ``run.top``, the
verification every estimate. Each step runs inside the ledger's stage of its name and records
a cap that cut it short (``ledger.record_stop``); an estimator a cap stopped before it began
is named in ``run.not_started``. The result names are :class:`ProbeRun`'s business.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Optional

import numpy as np

from landscope.errors import ConfigError
from landscope.probes.blocks import block_spectra, eigenvalue_table, parameter_groups
from landscope.probes.class_structure import class_mean_gradients, class_structure
from landscope.probes.complement import checked_list
from landscope.probes.cost import ProbeLedger
from landscope.probes.curvature_probes import curvature_spectra, verify_curvature
from landscope.probes.density import slq
from landscope.probes.lanczos import EigResult, lanczos_eigs
from landscope.probes.noise import gradient_noise
from landscope.probes.pacbayes import pac_bayes_bounds
from landscope.probes.pacbayes_optimize import optimized_pac_bayes_bounds
from landscope.probes.probe_data import ProbeData
from landscope.probes.run import (
    PacBayesBounds,
    ProbeRun,
    SharpnessResults,
    logdet_scalars,
)
from landscope.probes.sharpness import (
    ModelObjective,
    average_sharpness,
    keskar_sharpness,
    pac_bayes_flatness,
    sigma_guess,
    worst_case_sharpness,
)
from landscope.probes.trace import deflated_trace, hutchinson
from landscope.probes.verify import verify_estimates

# Fewest samples before the trace's auto-stop may fire: stopping on an estimated stderr biases
# the estimate low when it may fire early (large samples raise both the mean and the stderr);
# the bias at 10 and at 30 samples: docs/measurements.md#probes-steps.
TRACE_MIN_SAMPLES = 30
# Relative precision of the PAC-Bayes sigma' search. Its 10 Monte Carlo draws move sigma' from
# one probe.seed to another by far more than 1e-2, so 1e-3 was spurious precision, and 1e-2
# saves accuracy evaluations (docs/measurements.md#probes-steps).
PAC_BAYES_SIGMA_RTOL = 1e-2
# steps of the SLQ run that gives the trace a scale when neither top-k nor density does
TRACE_SCALE_STEPS = 20
# Hutchinson products per batched call on a GPU (probes.batched.matmat); 1 on CPU, where
# batching is slower than single products (docs/measurements.md#probes-steps)
TRACE_GPU_BLOCK = 8
# The density's later probes stepped together per batched call on a GPU (slq's ``block``; not
# measured on a GPU yet, like TRACE_GPU_BLOCK); 1 on CPU
SLQ_GPU_BLOCK = 8

Step = Callable[[ProbeRun], None]


def steps_for(cfg: Any) -> list[Step]:
    """The steps ``cfg`` switches on, in the order they run (each may read the ones before)."""
    steps: list[tuple[bool, Step]] = [
        (cfg.top_k > 0, step_top), (cfg.bottom_k > 0, step_bottom),
        (bool(cfg.density.enabled), step_density), (bool(cfg.trace.enabled), step_trace),
        (bool(list(getattr(cfg, "curvature", None) or [])), step_curvature),
        (str(cfg.per_block) != "none", step_blocks),
        (bool(cfg.sharpness.enabled), step_sharpness),
        (bool(cfg.noise.enabled), step_noise), (bool(cfg.pacbayes.enabled), step_pacbayes),
        (bool(getattr(cfg, "classes", False)), step_classes)]
    return [step for on, step in steps if on]


def _not_started(run: ProbeRun, name: str, reason: str) -> None:
    run.not_started[name] = reason
    run.ledger.record_stop(name, reason)


def step_top(run: ProbeRun) -> None:
    """The top-k eigenpairs (Lanczos), checked for missed copies from a fresh start:
    ``run.top`` (with its Krylov space when the density will read it)."""
    cfg, op, ledger = run.cfg, run.op, run.ledger
    with ledger.stage("top", run.plan.get("top")):
        run.top = lanczos_eigs(op, k=min(cfg.top_k, op.dim), which="largest", tol=cfg.lanczos_tol,
                               seed=cfg.seed, stop=ledger.stop,
                               keep_krylov=bool(cfg.density.enabled))
        run.top = checked_list(op, run.top, tol=cfg.lanczos_tol, seed=cfg.seed + 2,
                               enabled=bool(cfg.multiplicity_check), stop=ledger.stop)
    ledger.record_stop("top", run.top.stopped_by)


def step_bottom(run: ProbeRun) -> None:
    """The bottom-k (most negative) eigenpairs: ``run.bottom``."""
    cfg, op, ledger = run.cfg, run.op, run.ledger
    with ledger.stage("bottom", run.plan.get("bottom")):
        run.bottom = lanczos_eigs(op, k=min(cfg.bottom_k, op.dim), which="smallest",
                                  tol=cfg.lanczos_tol, atol=1e-6, seed=cfg.seed + 1,
                                  stop=ledger.stop)
        run.bottom = checked_list(op, run.bottom, enabled=bool(cfg.multiplicity_check),
                                  tol=cfg.lanczos_tol, atol=1e-6, seed=cfg.seed + 3,
                                  stop=ledger.stop)
    ledger.record_stop("bottom", run.bottom.stopped_by)


def step_density(run: ProbeRun) -> None:
    """The spectral density (SLQ), deflated by ``run.top``, its first row from the top-k's
    Krylov space when that space is the complement's rule (:func:`_top_krylov`):
    ``run.density``."""
    cfg, op, ledger = run.cfg, run.op, run.ledger
    first = _top_krylov(run.top)
    if run.top is not None:
        run.top = replace(run.top, krylov=None)  # read once: its basis is freed with it
    if (why := ledger.stop()) is not None:
        _not_started(run, "density", why)  # the cap was spent before it started
        return
    with ledger.stage("density", run.plan.get("density")):
        # adaptive steps need the top-k pairs (the outliers are resolved through them)
        run.density = slq(op, n_probes=cfg.density.probes,
                          m_steps=min(cfg.density.steps, op.dim), seed=cfg.seed, deflate=run.top,
                          resolution=cfg.density.sigma if run.top is not None else None,
                          stop=ledger.stop, first=first,
                          block=SLQ_GPU_BLOCK if op.device.type == "cuda" else 1)
    ledger.record_stop("density", run.density.stopped_by)


def _top_krylov(top: Optional[EigResult]):
    """The top-k run's Krylov space when its Ritz pairs beyond the list are the density's first
    rule: the list is that run's own (no cap cut it, every pair converged, the multiplicity
    check added none), else None (the density makes its first run)."""
    if top is None or top.krylov is None or top.stopped_by is not None:
        return None
    return top.krylov if top.added_by_check == 0 and bool(top.converged.all()) else None


def step_trace(run: ProbeRun) -> None:
    """Tr H: deflated by the top-k pairs computed anyway (GUIDE §6), the density's runs as its
    first samples, its stop relative to an estimate of Σ|λ| (the density's, the top-k run's, or
    without either a short SLQ run's): ``run.trace``."""
    cfg, op, ledger, top, q = run.cfg, run.op, run.ledger, run.top, run.density
    block = TRACE_GPU_BLOCK if op.device.type == "cuda" else 1  # batching did not pay on CPU
    with ledger.stage("trace", run.plan.get("trace")):
        prior = (q.trace_samples.tolist() if top is not None and q is not None
                 and q.trace_samples is not None else [])
        if not prior and (why := ledger.stop()) is not None:
            _not_started(run, "trace", why)  # no sample at all: the top-k sum is no trace
            return
        if q is None and top is None:  # no scale: a short SLQ run's rule on |H| gives one
            q = slq(op, n_probes=1, m_steps=min(TRACE_SCALE_STEPS, op.dim), seed=cfg.seed + 4,
                    stop=ledger.stop)
        kw = dict(seed=cfg.seed + 1, target_rse=cfg.trace.rse, stop=ledger.stop, block=block,
                  max_samples=cfg.trace.max_samples, min_samples=TRACE_MIN_SAMPLES,
                  scale=q.trace_f(q.nodes.abs()).estimate if q is not None else 0.0)
        if top is not None:
            basis = q.deflation if q is not None and q.deflation is not None else top
            run.trace = deflated_trace(op, basis, prior=prior, **kw)
        else:
            run.trace = hutchinson(op, **kw)
    ledger.record_stop("trace", run.trace.stopped_by)


def step_curvature(run: ProbeRun) -> None:
    """The Gauss-Newton, Fisher and NTK spectra, the residual H - G and the overlaps with the
    Hessian's top-k (``probe.curvature``; :mod:`~landscope.probes.curvature_probes`):
    ``run.curvature``. Their products count per kind (``<kind>_products``) and in the ledger;
    the residual's Hessian products count in this stage's."""
    if run.top is None:
        raise ConfigError("probe.curvature needs probe.top_k >= 1 (the curvature matrices' "
                          "top-k eigenvalues and their overlap with the Hessian's)")
    if run.ranks > 1:
        raise ConfigError("probe.curvature runs in one process (probe.ranks=1, no "
                          "torch.distributed group)")
    ledger, ops = run.ledger, []
    if (why := ledger.stop()) is not None:
        _not_started(run, "curvature", why)
        return
    ledger.count_also(ops)
    with ledger.stage("curvature", run.plan.get("curvature")):
        run.curvature = curvature_spectra(run.model, run.data, run.op, run.top, run.cfg,
                                          ledger.stop, TRACE_MIN_SAMPLES, operators=ops)
    ledger.record_stop("curvature", run.curvature.stopped_by)


def step_blocks(run: ProbeRun) -> None:
    """Top-k eigenvalues and trace of each diagonal block (``probe.per_block``): ``run.blocks``
    (the ledger counts the blocks' operators' products too)."""
    cfg, ledger, ops = run.cfg, run.ledger, []
    ledger.count_also(ops)
    with ledger.stage("blocks", run.plan.get("blocks")):
        groups = parameter_groups(run.model, str(cfg.per_block))
        run.blocks = block_spectra(run.model, run.data, groups, k=cfg.block_top_k,
                                   mode=run.op.mode, tol=cfg.lanczos_tol,
                                   trace_rse=cfg.trace.rse, trace=bool(cfg.trace.enabled),
                                   seed=cfg.seed, multiplicity_check=bool(cfg.multiplicity_check),
                                   stop=ledger.stop, operators=ops)
    ledger.record_stop("blocks", run.blocks.stopped_by)


class _TimeUp(Exception):
    """The time cap ran out inside a sharpness measure (raised by the objective's ``watch``)."""


def sharpness_objective(model: Any, data: ProbeData, op: Any) -> ModelObjective:
    """The sharpness measures' objective, whose loss and gradient at the trained point are the
    operator's. With data-parallel products (``op.group``) it is data-parallel too: on the
    operator's shard, each evaluation summed over the ranks, so that the measures' loss and
    gradient evaluations are split like the products; else on ``data``."""
    group = getattr(op, "group", None)
    return ModelObjective(model, data if group is None else op.data, mode=op.mode,
                          at_origin=(op.loss(), op.gradient()), group=group)


def step_sharpness(run: ProbeRun) -> None:
    """The sharpness measures on one objective (:func:`sharpness_objective`):
    ``run.sharpness``."""
    ledger = run.ledger
    obj = run.objective or sharpness_objective(run.model, run.data, run.op)
    ledger.evals = lambda: (obj.n_loss + obj.n_acc, obj.n_grad)
    together = obj.group is not None  # evaluations are collectives: the ranks stop together

    def watch() -> None:  # before each evaluation: the bar counts them (the family spends no
        why = ledger.stop(products=False, together=together)  # products), and the time cap
        if why is not None:  # may cut the measure
            raise _TimeUp(why)

    obj.watch = watch
    try:
        with ledger.stage("sharpness", shown=lambda: obj.n_loss + obj.n_acc, unit="eval"):
            run.sharpness = _sharpness(obj, run.cfg, ledger)
    finally:
        obj.watch = None
    run.objective = None  # its copy of the model is not needed after the measures


def _sharpness(obj: ModelObjective, cfg: Any, ledger: ProbeLedger) -> SharpnessResults:
    """``budget_s`` is checked before each evaluation (the objective's ``watch``); a measure
    it cut (its partial result is dropped) is named in ``skipped``, and so is every measure
    after it, which does not start."""
    res = SharpnessResults(rhos=[float(r) for r in cfg.sharpness.rhos],
                           epsilons=[float(e) for e in cfg.sharpness.keskar_epsilons])

    def measure(name: str, fn: Callable[[], Any]) -> Any:
        why = res.stopped_by
        if why is None:
            try:
                return fn()
            except _TimeUp as up:
                why = str(up)
        res.skipped.append(name)
        res.stopped_by = why
        ledger.record_stop("sharpness", why)
        return None

    res.worst_case = measure("worst_case",
                             lambda: worst_case_sharpness(obj, res.rhos, seed=cfg.seed))
    if cfg.sharpness.family:
        _family(obj, cfg, res, measure)
    res.loss_evals, res.grad_evals, res.acc_evals = obj.n_loss, obj.n_grad, obj.n_acc
    return res


def _family(obj: ModelObjective, cfg: Any, res: SharpnessResults,
            measure: Callable[[str, Callable[[], Any]], Any]) -> None:
    """Adaptive worst case, Keskar, the averages and PAC-Bayes flatness (``sharpness.family``);
    sigma' starts from the guess the average of the largest radius gives."""
    res.adaptive = measure("adaptive", lambda: worst_case_sharpness(
        obj, res.rhos, adaptive=True, seed=cfg.seed))
    res.keskar = measure("keskar", lambda: keskar_sharpness(obj, res.epsilons, seed=cfg.seed))
    guesses: dict[bool, Optional[float]] = {}
    for adaptive, name in ((False, "random"), (True, "adaptive")):
        avg = measure(f"average_{name}", lambda adaptive=adaptive: average_sharpness(
            obj, res.rhos, adaptive=adaptive, n_samples=cfg.sharpness.samples,
            antithetic=cfg.sharpness.antithetic, seed=cfg.seed))
        if avg is not None:
            res.average[name] = avg
            r_max, m_max = max(zip(avg.rhos, avg.means))
            guesses[adaptive] = sigma_guess(m_max, r_max)
    for aware, name in ((False, "pac_bayes"), (True, "pac_bayes_magnitude")):
        pb = measure(name, lambda aware=aware: pac_bayes_flatness(
            obj, magnitude_aware=aware, seed=cfg.seed, rtol=PAC_BAYES_SIGMA_RTOL,
            guess=guesses.get(aware)))
        if pb is not None:
            res.pac_bayes[name] = pb


def step_noise(run: ProbeRun) -> None:
    """Gradient-noise statistics on ``noise.samples`` per-sample gradients (the first samples
    of the probe subset), aligned with the Hessian of the whole subset: ``run.noise``."""
    cfg, op = run.cfg, run.op
    with run.ledger.stage("noise"):
        if (why := run.ledger.stop()) is not None:
            _not_started(run, "noise", why)
            return
        data = ProbeData.from_split(run.train_split, size=min(cfg.noise.samples, op.data.n_total),
                                    seed=cfg.seed, micro_batch=cfg.micro_batch)
        run.noise = gradient_noise(run.model, data, hessian=op, top_k_eigs=run.top,
                                   seed=cfg.seed, mode=op.mode,
                                   alignment=str(cfg.noise.alignment),
                                   trace_h=run.trace.estimate if run.trace is not None else None)


def step_pacbayes(run: ProbeRun) -> None:
    """PAC-Bayes bounds on ``pacbayes.data_size`` training samples (null: the whole split:
    the bound is over the m samples its empirical error is measured on), with the Hessian
    posterior in the basis of ``run.top`` (computed on the probe subset: a posterior may
    depend on the data) and the prior centred at ``run.w0``: ``run.pacbayes``."""
    cfg, top, w0 = run.cfg, run.top, run.w0
    pb = cfg.pacbayes
    with run.ledger.stage("pacbayes"):
        if (why := run.ledger.stop(products=False)) is not None:
            _not_started(run, "pacbayes", why)
            return
        if top is None:
            raise ConfigError("probe.pacbayes.enabled=true needs probe.top_k >= 1 (the "
                              "Hessian-informed posterior uses the top-k eigenvectors)")
        tic = time.perf_counter()
        data = ProbeData.from_split(run.train_split, size=pb.data_size, seed=cfg.seed,
                                    micro_batch=cfg.micro_batch)
        common = dict(w0=w0, delta=pb.delta, delta_mc=pb.delta_mc, n_mc=pb.n_mc,
                      n_select=pb.n_select, seed=cfg.seed)
        if str(pb.posterior) == "grid":
            values = pac_bayes_bounds(run.model, data, top.eigenvalues, top.eigenvectors,
                                      beta_grid=list(pb.beta_grid), **common)
        else:
            values = optimized_pac_bayes_bounds(
                run.model, data, top.eigenvalues, top.eigenvectors, n_match=pb.n_match,
                steps=pb.steps, lr_mean=pb.lr_mean, lr_var=pb.lr_var,
                batch_size=pb.batch_size, **common)
        run.pacbayes = PacBayesBounds(values, "zero" if w0 is None else "init",
                                      time.perf_counter() - tic)


def step_classes(run: ProbeRun) -> None:
    """The class structure of the outliers (:mod:`~landscope.probes.class_structure`): the
    class-mean gradients on the probe data against ``run.top`` when it holds at least C + 1
    pairs (and ``probe.classes_top_k``), else against C + 2 (or ``classes_top_k``) pairs of its
    own Lanczos run; with a density, its outlier threshold for the edge rule:
    ``run.classes``."""
    cfg, op = run.cfg, run.op
    with run.ledger.stage("classes"):
        if (why := run.ledger.stop()) is not None:
            _not_started(run, "classes", why)
            return
        G, counts = class_mean_gradients(run.model, run.data, mode=op.mode)  # the whole set
        C = G.shape[0]
        if C < 2 or op.dim < C + 1:
            raise ConfigError(f"probe.classes=true needs a model with >= 2 outputs and more "
                              f"than C parameters (got C={C}, {op.dim} parameters)")
        want = min(op.dim, max(C + 1, int(cfg.classes_top_k)))
        top, source, before = run.top, "run", op.n_matvecs
        if top is None or top.eigenvectors is None or len(top.eigenvalues) < want:
            k = min(op.dim, max(C + 2, int(cfg.classes_top_k)))
            top = lanczos_eigs(op, k=k, which="largest", tol=cfg.lanczos_tol, seed=cfg.seed,
                               stop=run.ledger.stop)
            top = checked_list(op, top, enabled=bool(cfg.multiplicity_check),
                               tol=cfg.lanczos_tol, seed=cfg.seed + 2, stop=run.ledger.stop)
            source = "own"
            run.ledger.record_stop("classes", top.stopped_by)
        edge = run.density.outliers().threshold if run.density is not None else None
        run.classes = class_structure(G, counts, top.eigenvalues, top.eigenvectors,
                                      top_source=source, hvps=op.n_matvecs - before,
                                      edge_threshold=edge,
                                      converged=bool(top.converged[:want].all()))


def step_verify(run: ProbeRun) -> None:
    """Every estimate of the run against the dense float64 Hessian: ``run.verification``."""
    cfg, top, bottom, q = run.cfg, run.top, run.bottom, run.density
    blocks = None
    if run.blocks is not None:
        blocks = (str(cfg.per_block), eigenvalue_table(run.blocks, cfg.block_top_k),
                  np.array([b.trace for b in run.blocks]))
    logdet = None
    eps = cfg.density.logdet_eps
    if q is not None and eps > 0:
        ld = logdet_scalars(q, eps, bottom)
        logdet = (eps, ld["logdet"], ld["logdet_stderr"]) if "logdet" in ld else None
    run.verification = verify_estimates(
        run.model, run.data, run.op.mode, max_params=cfg.verify_max_params,
        top=top.eigenvalues.numpy() if top is not None else None,
        bottom=bottom.eigenvalues.numpy() if bottom is not None else None, blocks=blocks,
        trace=(run.trace.estimate, run.trace.stderr) if run.trace is not None else None,
        negative_mass=q.negative_mass() if q is not None else None, logdet=logdet)
    if run.curvature is not None:
        run.curvature.verification = verify_curvature(
            run.model, run.data, run.op.mode, run.curvature, top, cfg.verify_max_params)
