"""SDE runs for the jobs of a two-basin sweep (what ``runner.sde`` runs): each completed job
with ``dataset=two_basin`` and plain SGD carries one cell (its ``optimizer.lr`` = eta and
``train.batch_size`` = B, its problem's closed forms and noise rows); for every sampling of the
settings, ``runs`` batched SGD runs (:func:`landscope.sde.simulate.simulate`) are counted and
stored with the predictions (:mod:`landscope.sde.theory`) in ``<job>/sde/<fingerprint>.json``."""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

from landscope.errors import LandscopeError
from landscope.progress import wanted
from landscope.sde.settings import RESULTS_DIR, settings_fingerprint
from landscope.settings import stored

CHECKPOINT_FRACTIONS = (0.125, 0.25, 0.5)  # besides the last step: the mixing curve


def sde_jobs(paths: list[str]) -> tuple[list[dict], list[str]]:
    """``(jobs, notes)``: the completed jobs under ``paths`` that are two-basin SGD runs."""
    from landscope.escape.jobs import completed_jobs

    jobs, notes = completed_jobs(paths)
    kept = []
    for job in jobs:
        cfg = job["job"].config()
        opt = cfg.optimizer
        if str(cfg.dataset.name) != "two_basin":
            notes.append(f"skipped: {job['job']} (dataset {cfg.dataset.name}, not two_basin)")
        elif str(opt.name) != "sgd" or opt.momentum != 0 or opt.weight_decay != 0:
            notes.append(f"skipped: {job['job']} (not plain SGD: optimizer {opt.name}, "
                         f"momentum {opt.momentum}, weight_decay {opt.weight_decay})")
        else:
            kept.append({**job, "cfg": cfg})
    if not kept:
        raise LandscopeError(f"no completed two_basin SGD jobs in {' '.join(paths)}")
    return kept, notes


def predictions(ref: Any, eta: float, b: int, n: int, sampling: str) -> dict:
    """The cell's T_eff and every prediction of :mod:`landscope.sde.theory`."""
    from landscope.sde import theory as th

    t = th.t_eff(eta, b, ref.noise, n, sampling)
    lap = th.two_basin_log_odds(ref, t)
    disc = th.discrete_log_odds(ref, t, eta)
    return {"t_eff": t, "laplace_log_odds": lap, "laplace": th.odds_to_fraction(lap),
            "gibbs": th.gibbs_sharp_fraction(ref, t), "discrete": th.odds_to_fraction(disc),
            "relaxation_steps": th.relaxation_steps(ref, t, eta),
            "barrier_over_t": min(ref.barrier_heights) / t,
            "eta_lambda_max": eta * max(ref.minimum_lambda_max)}


def dense_check(ref: Any, data: Any) -> dict:
    """The two minima's losses and ``det H`` from the library's dense float64 Hessian of the
    model's train loss (:func:`landscope.probes.verify.dense_hessian`) beside the closed
    forms, and the largest relative difference of the determinants."""
    import torch

    from landscope.probes.probe_data import ProbeData
    from landscope.probes.verify import dense_hessian
    from landscope.synthetic import TwoBasinModel

    model = TwoBasinModel(ref).double()
    probe = ProbeData.from_split(data.train, None, 0, len(data.train))
    out: dict = {}
    for name, point, closed in zip(("sharp", "flat"), ref.minima, ref.minimum_hessians):
        with torch.no_grad():
            model.theta.copy_(point)
        det = float(torch.linalg.det(dense_hessian(model, probe)))
        out[f"det_{name}_dense"] = det
        out[f"rel_diff_{name}"] = abs(det / float(torch.linalg.det(closed)) - 1)
    return out


def step_seconds(ref: Any, xi: Any, **run: Any) -> float:
    """Seconds of one batched step of :func:`~landscope.sde.simulate.simulate` with ``run``'s
    arguments (``eta``, ``batch_size``, ``runs``, ``seed``, ``start``, ``sampling``): a run of
    one :func:`~landscope.sde.simulate.cost_period` of steps timed after another that warms
    the caches up."""
    from landscope.sde.simulate import cost_period, simulate

    period = cost_period(run["sampling"], len(xi), min(int(run["batch_size"]), len(xi)))
    simulate(ref, xi, steps=period, **run)
    tic = time.perf_counter()
    simulate(ref, xi, steps=period, **run)
    return (time.perf_counter() - tic) / period


def plan_line(name: str, settings: dict, eta: float, b: int, seconds: list[float]) -> str:
    """The line said before a job's simulations (``seconds``: a step of each sampling)."""
    from landscope.wording import figure

    samplings = settings["sampling"]
    each = ", ".join(f"~{figure(t * 1e3)} ms a step ({s})" for s, t in zip(samplings, seconds))
    total = sum(seconds) * settings["steps"]
    return (f"sde plan, {name}: eta {eta:g}, B {b}, {len(samplings)} sampling"
            f"{'s' if len(samplings) != 1 else ''} × {settings['runs']} runs × "
            f"{settings['steps']} steps, the runs batched as one tensor; {each}, so ~"
            f"{figure(total)} s")


def run_job(job: dict, settings: dict, log: Callable[[str], None] = print
            ) -> tuple[str, dict]:
    """Every sampling of one job's cell, its plan logged first: ``("computed"|"cached",
    record)``."""
    import torch

    from landscope.sde.simulate import simulate
    from landscope.synthetic import load_synthetic

    progress, settings = settings.get("progress"), stored(settings)
    fp = settings_fingerprint(settings)
    cache = job["job"].cache(RESULTS_DIR, fp)
    cfg = job["cfg"]
    key = {"settings": settings, "dataset": _dataset_key(cfg)}
    cached = cache.read(key, npz="none")
    if cached is not None and cached.get("complete"):
        return "cached", cached
    torch.set_num_threads(1)  # small tensors: one thread is fastest and deterministic
    data = load_synthetic(cfg.dataset)
    ref, xi = data.meta.problem, data.train.x[:, 2:4]
    eta, b, n = float(cfg.optimizer.lr), min(int(cfg.train.batch_size), len(xi)), len(xi)
    start = (ref.tilt, 0.0) if settings["start"] == "saddle" else (0.0, 0.0)
    marks = [max(1, int(f * settings["steps"])) for f in CHECKPOINT_FRACTIONS]
    tic = time.perf_counter()
    run = {s: dict(eta=eta, batch_size=b, runs=settings["runs"], start=start, sampling=s,
                   seed=cell_seed(settings["seed"], s, eta, b)) for s in settings["sampling"]}
    log(plan_line(job["name"], settings, eta, b, [step_seconds(ref, xi, **r)
                                                  for r in run.values()]))
    cells = []
    for sampling in settings["sampling"]:
        tr = simulate(ref, xi, steps=settings["steps"], checkpoints=marks, **run[sampling],
                      progress=f"sde {job['name']} {sampling}" if wanted(progress) else None)
        cells.append({"sampling": sampling, "eta": eta, "batch_size": b, "runs": tr.runs,
                      "sharp": tr.sharp[-1], "diverged": tr.diverged,
                      "checkpoints": tr.checkpoints, "sharp_at": tr.sharp,
                      "switched": list(tr.switched), **predictions(ref, eta, b, n, sampling)})
    record = {"job": job["name"], "fingerprint": fp, **key, "train_size": n, "start": start,
              "problem": {"loss_sharp": ref.minimum_losses[0], "loss_flat": ref.minimum_losses[1],
                          "det_sharp": float(ref.minimum_hessians[0].det()),
                          "det_flat": float(ref.minimum_hessians[1].det()),
                          "barrier_heights": list(ref.barrier_heights), "noise": ref.noise,
                          **dense_check(ref, data)},
              "cells": cells, "complete": True, "wall_time_s": time.perf_counter() - tic}
    cache.write(record)
    return "computed", record


def cell_seed(seed: int, sampling: str, eta: float, b: int) -> int:
    """The batch-draw seed of one cell: a hash of ``sde.seed`` and the cell, so that cells
    draw independent batches (and a cell's runs do not depend on which other cells exist)."""
    text = f"{int(seed)}/{sampling}/{float(eta)!r}/{int(b)}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def _dataset_key(cfg: Any) -> dict:
    """What the cell's problem depends on (part of the cache key)."""
    d = cfg.dataset
    keys = ("noise", "sharp_curvature", "flat_curvature", "barrier", "tilt")
    return {**{k: float(getattr(d, k)) for k in keys}, "seed": int(d.seed),
            "train_size": d.train_size}


def summary(record: dict) -> str:
    """One line per job: each sampling's observed sharp fraction against the prediction."""
    parts = [f"{c['sampling']}: eta {c['eta']:g} B {c['batch_size']} T {c['t_eff']:.4g} "
             f"sharp {c['sharp'] / max(c['runs'] - c['diverged'], 1):.3f} "
             f"(Laplace {c['laplace']:.3f}, Gibbs {c['gibbs']:.3f})" for c in record["cells"]]
    return "; ".join(parts)
