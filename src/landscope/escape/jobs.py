"""Escape runs from the final checkpoints of finished jobs (what ``runner.escape`` runs):
find the completed jobs, continue each from its minimum for every cell of the settings and
store the runs in ``<job>/escape/<fingerprint>.json``, resuming a partial file."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

from landscope.errors import ConfigError, LandscopeError
from landscope.escape.settings import (
    LATER_DEFAULTS,
    RESULTS_DIR,
    canonical,
    settings_fingerprint,
)
from landscope.progress import bar, wanted


def completed_jobs(paths: list[str]) -> tuple[list[dict], list[str]]:
    """``(jobs, notes)``: the completed jobs under ``paths`` (each a sweep directory, whose
    ``*/result.json`` are its jobs, or a job directory), one directory per trained model (a
    second directory of one seed and training config is skipped with a note: its
    continuations would be the first's, and H3 reads one directory per model)."""
    from landscope.analysis.collect import distinct_jobs
    from landscope.jobdir import find_jobs, screen

    jobs, notes = [], []
    for s in screen(find_jobs(paths, unique=True), ("completed",)):
        if s.error is not None:
            notes.append(f"skipped: {s.job} (unreadable result.json: {type(s.error).__name__})")
        elif not s.ok:
            notes.append(f"skipped: {s.job} (status {s.status})")
        else:
            jobs.append({"job": s.job, "name": s.job.name, "result": s.result})
    if not jobs:
        raise LandscopeError(f"no completed jobs in {' '.join(paths)}")
    kept = set(distinct_jobs([j["job"] for j in jobs], notes, trained=True))
    return [j for j in jobs if j["job"] in kept], notes


def cell_key(lr: float, b: int, seed: int, noise: str = "sgd") -> tuple:
    return (str(noise), float(lr), int(b), int(seed))


def _full(settings: dict) -> dict:
    return {**LATER_DEFAULTS, **settings}


def _probe_arrays(job: dict) -> dict:
    """The arrays of the job's probe results (``probes/<probe_fingerprint>.npz``), or {}."""
    import numpy as np

    pfp = job["result"].get("probe_fingerprint")
    path = job["job"].cache("probes", pfp).npz_path if pfp else None
    if path is None or not path.is_file():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _noise_inputs(job: dict, settings: dict, model, data) -> dict:
    """What the noise modes and ``lr_unit=stability`` need from the source minimum: tr Σ,
    the top-k basis (saved eigenvectors, else Lanczos), λmax; with their sources."""
    from landscope.escape.dynamics import sgd_noise_trace

    s = _full(settings)
    noises = s["noise"]
    out: dict = {}
    probes = job["result"].get("probes") or {}
    need_eigs = "topk" in noises
    lam = probes.get("lambda_max") if isinstance(probes, dict) else None
    need_lam = s["lr_unit"] == "stability" and not (
        isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0)
    if need_eigs or need_lam:
        arrays = _probe_arrays(job)
        vectors = arrays.get("eigenvectors_top")
        if vectors is not None and vectors.ndim == 2 and vectors.shape[1] >= 1:
            out["basis_source"] = f"probes/{job['result'].get('probe_fingerprint')}.npz"
        else:
            from landscope.probes.hvp import HessianOperator
            from landscope.probes.lanczos import lanczos_eigs
            from landscope.probes.probe_data import ProbeData

            k = int(s["noise_k"] or 5)
            op = HessianOperator(model, ProbeData.from_split(data.train, s["noise_samples"], 0,
                                                             1024))
            eig = lanczos_eigs(op, k=k, seed=0)
            vectors = eig.eigenvectors.detach().cpu().double().numpy()
            arrays = {"eigenvalues_top": eig.eigenvalues.cpu().numpy()}
            out["basis_source"] = "lanczos at the start of the continuation"
        if s["noise_k"] is not None:
            vectors = vectors[:, :int(s["noise_k"])]
        out["basis"] = vectors
        out["noise_k"] = int(vectors.shape[1])
        if need_lam:
            lam = float(arrays["eigenvalues_top"][0]) if "eigenvalues_top" in arrays else None
    if s["lr_unit"] == "stability":
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
            raise ConfigError(f"{job['name']}: escape.lr_unit=stability needs a positive "
                              f"lambda_max (got {lam!r})")
        out["lambda_max"] = float(lam)
    if any(v != "sgd" for v in noises):
        out["sigma_trace"] = sgd_noise_trace(model, data.train, s["noise_samples"], 0)
    return out


def continue_job(job: dict, settings: dict, log: Callable[[str], None] = print
                 ) -> tuple[str, dict]:
    """Every continuation of one job (resuming a partial file), its plan logged first
    (:mod:`landscope.escape.plan`): ``("computed"|"cached", record)``."""
    from landscope.checkpoint import payload_digest
    from landscope.escape.plan import planned

    progress, settings = settings.get("progress"), canonical(settings)
    fp = settings_fingerprint(settings)
    cache = job["job"].cache(RESULTS_DIR, fp)
    finished, done = _previous(job, settings, cache)
    if finished is not None:
        return "cached", finished
    import torch

    from landscope.escape.dynamics import EscapeRule
    from landscope.jobs import default_threads
    from landscope.models import count_parameters

    ckpt_path, ckpt = job["job"].final_checkpoint(job["result"])
    model, data = job["job"].load_model(ckpt["model"])
    torch.set_num_threads(default_threads(count_parameters(model)))  # CPU: deterministic
    rule = EscapeRule(delta_abs=settings["delta_abs"], delta_rel=settings["delta_rel"],
                      confirm=settings["confirm"], radius=settings["radius"])
    tic = time.perf_counter()
    full = _full(settings)
    extra = _noise_inputs(job, settings, model, data)  # {} for plain SGD in absolute units
    record = {"job": job["name"], "fingerprint": fp, "settings": settings,
              "checkpoint": ckpt_path.name, "checkpoint_epoch": ckpt["epoch"],
              "checkpoint_sha256": payload_digest(ckpt_path), "rule": rule.describe(),
              "n_params": count_parameters(model), "train_size": len(data.train),
              "complete": False, "runs": []}
    record.update({k: v for k, v in extra.items() if k != "basis"})
    total = planned(job, settings, full, extra, done, model, data, cell_key, log)
    stability = full["lr_unit"] == "stability"
    runs: list[dict] = []
    shown = bar(f"escape {job['name']}" if wanted(progress) else None, total, unit="run",
                initial=min(len(done), total))  # on a terminal: the continuations
    for noise in full["noise"]:
        for lr in settings["lrs"]:
            eta = lr * 2.0 / extra["lambda_max"] if stability else lr
            for b in settings["batch_sizes"]:
                fresh = False
                for seed in settings["seeds"]:
                    key = cell_key(lr, b, seed, noise)
                    if key in done:
                        runs.append(done[key])
                        continue
                    runs.append(_escape_row(model, data, settings, rule, extra, noise, lr,
                                            eta, b, seed, stability))
                    shown.update()
                    fresh = True
                if fresh:
                    cache.write({**record, "runs": runs,
                                 "wall_time_s": time.perf_counter() - tic})
    shown.close()
    record.update(runs=runs, complete=True, wall_time_s=time.perf_counter() - tic)
    cache.write(record)
    return "computed", record


def _previous(job: dict, settings: dict, cache: Any) -> tuple[Optional[dict], dict]:
    """The cached record when it is complete (else None), and the runs a partial file already
    holds, by cell."""
    from landscope.checkpoint import payload_digest

    newest = job["job"].checkpoints()
    digest = payload_digest(newest[0]) if newest else None
    previous = cache.read({"checkpoint_sha256": digest, "settings": settings}, npz="none") \
        if digest is not None else None
    if previous is None:
        return None, {}
    if previous.get("complete"):
        return previous, {}
    return None, {cell_key(r.get("requested_lr", r["lr"]), r["requested_batch_size"], r["seed"],
                           r.get("noise", "sgd")): r for r in previous.get("runs", [])}


def _escape_row(model: Any, data: Any, settings: dict, rule: Any, extra: dict, noise: str,
                lr: float, eta: float, b: int, seed: int, stability: bool) -> dict:
    """One escape run (step size ``eta`` for the requested ``lr``) as a record row."""
    from landscope.escape.dynamics import run_escape

    run = run_escape(model, data.train, lr=eta, batch_size=b, seed=seed,
                     max_steps=settings["max_steps"],
                     eval_every=settings["eval_every"], rule=rule,
                     eval_size=settings["eval_size"],
                     eval_seed=settings["eval_seed"], noise=noise,
                     sigma_trace=extra.get("sigma_trace"),
                     noise_basis=extra.get("basis") if noise == "topk" else None)
    row = run.to_dict()
    row.update(requested_batch_size=int(b), eta_over_b=run.lr / run.batch_size)
    if stability:
        row.update(requested_lr=float(lr), lambda_max=extra["lambda_max"])
    return row


def summary(record: dict) -> str:
    """One line: runs, escapes and the median escape step."""
    runs = record["runs"]
    esc = sorted(r["escape_step"] for r in runs if r["escaped"])
    med = f", median escape step {esc[len(esc) // 2]}" if esc else ""
    return f"{len(runs)} runs, {len(esc)} escaped{med}"
