"""The probe plan: what a run of the probe suite will spend, said before it spends it.

* :func:`most_products`: the Hessian-vector products each switched-on estimator may spend at
  most (its own caps: Lanczos iterations, SLQ probes × steps, trace samples; the per-block
  spectra's on each block, ``probe.curvature``'s on each of its operators);
* :func:`fewest_products`: the fewest the stopping rules allow (Lanczos needs k steps for k
  pairs, the density's first run grows the top-k's Krylov space to k + steps vectors and each
  later run takes at least its minimum of steps, the trace at least ``TRACE_MIN_SAMPLES``
  samples with the density's runs counted among them, and with neither the top-k nor the
  density the SLQ run of its scale). The products the suite spends stay close
  to it on the models measured (docs/measurements.md#probes-plan-estimate);
* :func:`usual_products`: the fewest, with the Lanczos lists beyond the top-k (the per-block
  spectra, ``probe.curvature``'s operators) and their traces at the medians measured on the
  benchmark's models instead of their floors, which they overrun several times
  (docs/measurements.md#probes-plan-lists);
* :func:`sharpness_evaluations`: the sharpness family's evaluations: the averages' exactly, the
  ascents' and the sigma' searches' at their medians over the models measured there (they stop
  on their tolerances, and their caps are far above what they spend).

The estimate of the time (:meth:`~landscope.probes.cost.ProbeLedger.plan`) is the usual
products and evaluations at the times measured on the spot, with the caps' time as the ceiling.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from landscope.probes.blocks import EXACT_TRACE_MAX
from landscope.probes.blocks import TRACE_SAMPLES as BLOCK_TRACE_SAMPLES
from landscope.probes.density import MIN_STEPS as DENSITY_MIN_STEPS
from landscope.probes.lanczos import default_iterations
from landscope.probes.noise import ALIGNMENT_PROBES, K_SIGMA, TRACE_SAMPLES
from landscope.probes.steps import TRACE_MIN_SAMPLES, TRACE_SCALE_STEPS

#: medians over 15 trained models (5 architectures × 3 seeds,
#: docs/measurements.md#probes-plan-estimate): loss-and-gradient evaluations of one ascent
#: measure per radius (the worst case, the adaptive worst case, Keskar's box) and accuracy
#: evaluations of one sigma' search
ASCENT_EVALS = {"worst_case": 8, "adaptive": 6, "keskar": 12}
SIGMA_SEARCH_EVALS = 50
#: medians over 10 trained models (5 architectures × 2 seeds,
#: docs/measurements.md#probes-plan-lists) of the lists beyond the top-k: Lanczos steps beyond k
#: for k pairs, products of the check's round, and trace samples of a block (``probe.per_block``
#: at either level) and of a curvature operator
LIST_STEPS_BEYOND_K = 10
LIST_CHECK = 7
USUAL_TRACE = {"block": 80, "layer": 175, "curvature": 110}
Count = Literal["most", "fewest", "usual"]


def most_products(cfg: Any, dim: int, blocks: Sequence[int] = (),
                  curvature: Sequence[int] = ()) -> dict[str, int]:
    """The most products each switched-on estimator may spend (its own caps); ``blocks``: the
    sizes of ``probe.per_block``'s parameter groups; ``curvature``: the sizes of
    ``probe.curvature``'s operators (:func:`curvature_sizes`)."""
    plan: dict[str, int] = {}
    for name, k in (("top", cfg.top_k), ("bottom", cfg.bottom_k)):
        if k > 0:
            plan[name] = _pairs(cfg, k, dim, "most")
    if cfg.density.enabled:
        plan["density"] = cfg.density.probes * min(cfg.density.steps, dim)
    if cfg.trace.enabled:
        plan["trace"] = cfg.trace.max_samples + _trace_scale(cfg, dim)
    if cfg.noise.enabled:
        plan["noise"] = _noise(cfg, default_iterations(1, dim))
    if blocks:
        plan["blocks"] = sum(_block(cfg, d, "most") for d in blocks)
    if curvature:
        plan["curvature"] = _curvature(cfg, dim, curvature, "most")
    return plan


def _pairs(cfg: Any, k: int, dim: int, count: Count) -> int:
    """The ``count`` ("most", "fewest" or "usual") products of a Lanczos list of k pairs on
    ``dim`` parameters; a list of k >= 2 adds a round of the multiplicity check (at most a k=1
    Lanczos run and its pair's residual, at least one product; each copy found costs another)."""
    k = min(k, dim)
    checked = cfg.multiplicity_check and k >= 2
    if count == "most":
        return default_iterations(k, dim) + (default_iterations(1, dim) + 1 if checked else 0)
    if count == "usual":
        return min(k + LIST_STEPS_BEYOND_K, dim) + (min(LIST_CHECK, dim) if checked else 0)
    return k + (1 if checked else 0)


def _trace(d: int, count: Count, floor: int, cap: int, kind: str) -> int:
    """A list's trace: its cap, its floor, or its usual samples within them; never more than
    the operator's dimension and the samples before it (the switch to unit vectors)."""
    if count == "most":
        return cap
    n = max(floor, min(USUAL_TRACE[kind], cap)) if count == "usual" else floor
    return min(n, d + floor)


def _block(cfg: Any, d: int, count: Count) -> int:
    """One block's products (:func:`~landscope.probes.blocks.block_spectra`): its top-k
    Lanczos run and the check's round, its trace (exact on a small block)."""
    n = _pairs(cfg, cfg.block_top_k, d, count)
    if cfg.trace.enabled:
        level = "layer" if str(cfg.per_block) == "layer" else "block"
        n += d if d <= EXACT_TRACE_MAX else _trace(d, count, *BLOCK_TRACE_SAMPLES, level)
    return n


def _curvature(cfg: Any, dim: int, sizes: Sequence[int], count: Count) -> int:
    """``probe.curvature``'s products (:func:`~landscope.probes.curvature_probes.
    curvature_spectra`): per kind its top-k list and trace; with the GGN, the residual H - G's
    list, whose products are one Hessian and one GGN product each."""
    n = 0
    for kind, d in zip(cfg.curvature, sizes):
        floor = min(TRACE_MIN_SAMPLES, d)
        n += _pairs(cfg, cfg.top_k, d, count)
        n += _trace(d, count, floor, cfg.trace.max_samples, "curvature")
        if str(kind) == "ggn":
            n += 2 * _pairs(cfg, cfg.top_k, dim, count)
    return n


def curvature_sizes(cfg: Any, dim: int, data_size: int, outputs: int) -> list[int]:
    """The sizes of ``probe.curvature``'s operators: ``dim`` in parameter space, the NTK's
    samples × ``outputs`` (a sample's) in output space."""
    ntk = min(cfg.curvature_ntk_samples or data_size, data_size) * outputs
    return [ntk if str(kind) == "ntk" else dim for kind in cfg.curvature]


def fewest_products(cfg: Any, dim: int, blocks: Sequence[int] = (),
                    curvature: Sequence[int] = ()) -> int:
    """The fewest products the switched-on estimators' stopping rules allow, all together
    (the density's first run shares the top-k's space, so the two have a floor together)."""
    n = sum(_block(cfg, d, "fewest") for d in blocks)
    n += _curvature(cfg, dim, curvature, "fewest") if curvature else 0
    n += sum(_pairs(cfg, k, dim, "fewest") for k in (cfg.top_k, cfg.bottom_k) if k > 0)
    steps = min(cfg.density.steps, dim)
    samples = 0  # trace samples the density's runs give
    if cfg.density.enabled:
        n += steps  # the first run: the top-k's space grown by steps vectors, or a run of its own
        later = min(DENSITY_MIN_STEPS, steps) if cfg.top_k > 0 else steps
        n += (cfg.density.probes - 1) * later
        samples = cfg.density.probes if cfg.top_k > 0 else 0
    if cfg.trace.enabled:
        n += max(0, min(TRACE_MIN_SAMPLES, cfg.trace.max_samples) - samples)
        n += _trace_scale(cfg, dim)
    if cfg.noise.enabled:
        n += _noise(cfg, 1)
    return n


def usual_products(cfg: Any, dim: int, blocks: Sequence[int] = (),
                   curvature: Sequence[int] = ()) -> int:
    """The products the estimate of the time counts: the fewest for the top-k, the density,
    the trace and the noise step (what they spend stays close to it), and the usual for the
    per-block spectra and ``probe.curvature`` (what their lists and traces spend on the
    benchmark's models: several times their floors)."""
    n = fewest_products(cfg, dim)
    n += sum(_block(cfg, d, "usual") for d in blocks)
    return n + (_curvature(cfg, dim, curvature, "usual") if curvature else 0)


def _trace_scale(cfg: Any, dim: int) -> int:
    """The SLQ run that gives the trace its scale when neither the top-k nor the density does."""
    return min(TRACE_SCALE_STEPS, dim) if cfg.top_k == 0 and not cfg.density.enabled else 0


def _noise(cfg: Any, lambda_max: int) -> int:
    """The noise step's products: tr(H Sigma) by its method, and its own trace and lambda_max
    where the trace step and the top-k give none."""
    method = str(cfg.noise.alignment)
    n = {"lowrank": min(K_SIGMA, cfg.noise.samples - 1),
         "exact": cfg.noise.samples}.get(method, ALIGNMENT_PROBES)  # else hutchinson's probes
    n += 0 if cfg.trace.enabled else TRACE_SAMPLES
    return n + (0 if cfg.top_k > 0 else lambda_max)


def sharpness_evaluations(cfg: Any) -> dict[str, int]:
    """The sharpness step's usual evaluations: ``{"gradient": loss-and-gradient evaluations,
    "forward": loss and accuracy passes}`` (empty without the step)."""
    sh = cfg.sharpness
    if not sh.enabled:
        return {}
    rhos, eps = len(sh.rhos), len(sh.keskar_epsilons)
    grads = ASCENT_EVALS["worst_case"] * rhos
    forward = 0
    if sh.family:
        grads += ASCENT_EVALS["adaptive"] * rhos + ASCENT_EVALS["keskar"] * eps
        forward = 2 * rhos * sh.samples + 2 * SIGMA_SEARCH_EVALS
    return {"gradient": grads, "forward": forward}


def evaluation_seconds(obj: Any) -> tuple[float, float]:
    """One loss-and-gradient evaluation and one accuracy pass of the objective ``obj`` (a
    :class:`~landscope.probes.objective.ModelObjective`), timed at its point; its counters are
    left as they were, so that the sharpness measures' counts are their own."""
    import time

    counts = obj.n_loss, obj.n_grad, obj.n_acc
    tic = time.perf_counter()
    obj.loss_and_grad(obj.theta0)
    mid = time.perf_counter()
    obj.accuracy(obj.theta0)
    end = time.perf_counter()
    obj.n_loss, obj.n_grad, obj.n_acc = counts
    return mid - tic, end - mid
