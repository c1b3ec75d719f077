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
for the same checkpoint is not recomputed.  One line per job, then a summary.  Exit codes:
0 every job done, 1 a job failed (the others still ran), 2 bad input (no job found, an
unknown key, a wrong type or an impossible value, a job's ``escape/`` directory that cannot
be written, checked before anything is computed): one ``error:`` line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import OmegaConf

from landscope.errors import ConfigError, LandscopeError

PREFIX = "escape."
RESULTS_DIR = "escape"
FORMAT = 1  # bump when the meaning of a stored result changes


@dataclass
class EscapeConfig:
    """Settings of ``python -m runner.escape`` (module docstring)."""

    lrs: List[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    batch_sizes: List[int] = field(default_factory=lambda: [4, 16, 64])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    max_steps: int = 600
    eval_every: int = 2
    eval_size: Optional[int] = 1000
    eval_seed: int = 0
    delta_abs: float = 0.1
    delta_rel: float = 0.0
    confirm: int = 2
    radius: Optional[float] = None
    noise: List[str] = field(default_factory=lambda: ["sgd"])
    lr_unit: str = "absolute"
    noise_k: Optional[int] = None
    noise_samples: Optional[int] = 1024


# settings added after the first format: left out of the stored settings (and so of the
# fingerprint) while at these defaults, so the default settings' fingerprint is unchanged
LATER_DEFAULTS = {"noise": ["sgd"], "lr_unit": "absolute", "noise_k": None,
                  "noise_samples": 1024}
NOISES = ("sgd", "isotropic", "topk")
LR_UNITS = ("absolute", "stability")


def canonical(settings: dict) -> dict:
    """The settings as stored and fingerprinted: the later settings dropped while at their
    defaults (:data:`LATER_DEFAULTS`)."""
    return {k: v for k, v in settings.items()
            if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


def escape_config(overrides: list[str]) -> dict[str, Any]:
    """The settings: :class:`EscapeConfig` merged with ``escape.KEY=VALUE`` overrides and
    checked (ConfigError or an OmegaConf error naming the key)."""
    bad = [o for o in overrides if not o.startswith(PREFIX)]
    if bad:
        raise ConfigError(f"only escape.KEY=VALUE overrides are accepted here (got {bad[0]!r}), "
                          "e.g. escape.lrs=[0.05,0.2]")
    base = OmegaConf.structured(EscapeConfig)
    dotlist = [o[len(PREFIX):] for o in overrides]
    for item in dotlist:
        key = item.split("=", 1)[0]
        if "=" not in item or not key:
            raise ConfigError(f"expected escape.KEY=VALUE (got {PREFIX + item!r})")
        if key.split(".")[0] not in base:
            raise ConfigError(f"unknown setting escape.{key} (known: "
                              f"{', '.join(PREFIX + k for k in base)})")
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
    except Exception as exc:  # OmegaConf: wrong type, unparsable value
        key = getattr(exc, "full_key", None)
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        msg = lines[0] if lines else type(exc).__name__
        raise ConfigError(f"escape.{key}: {msg}" if key else
                          f"bad escape override in {' '.join(overrides)}: {msg}") from None
    settings = OmegaConf.to_container(cfg, resolve=True)
    _validate(settings)
    return canonical(settings)


def _validate(s: dict) -> None:
    from landscope.escape import EscapeRule

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"escape.{key} must be {what} (got {s[key]!r})")

    need(len(s["lrs"]) >= 1 and all(math.isfinite(v) and v > 0 for v in s["lrs"]), "lrs",
         "a non-empty list of numbers > 0")
    need(len(s["batch_sizes"]) >= 1 and all(v >= 1 for v in s["batch_sizes"]), "batch_sizes",
         "a non-empty list of integers >= 1")
    need(len(s["seeds"]) >= 1 and all(v >= 0 for v in s["seeds"]), "seeds",
         "a non-empty list of integers >= 0")
    for name, values in (("lrs", s["lrs"]), ("batch_sizes", s["batch_sizes"]),
                         ("seeds", s["seeds"])):
        need(len(set(values)) == len(values), name, "without repeated values")
    need(s["max_steps"] >= 1, "max_steps", ">= 1")
    need(s["eval_every"] >= 1, "eval_every", ">= 1")
    need(s["eval_size"] is None or s["eval_size"] >= 1, "eval_size", ">= 1 or null")
    need(s["eval_seed"] >= 0, "eval_seed", ">= 0")
    need(len(s["noise"]) >= 1 and all(v in NOISES for v in s["noise"])
         and len(set(s["noise"])) == len(s["noise"]), "noise",
         f"a non-empty list of distinct values from {', '.join(NOISES)}")
    need(s["lr_unit"] in LR_UNITS, "lr_unit", " or ".join(LR_UNITS))
    need(s["noise_k"] is None or s["noise_k"] >= 1, "noise_k", ">= 1 or null")
    need(s["noise_samples"] is None or s["noise_samples"] >= 2, "noise_samples",
         ">= 2 or null")
    EscapeRule(delta_abs=s["delta_abs"], delta_rel=s["delta_rel"], confirm=s["confirm"],
               radius=s["radius"])  # raises ConfigError naming the setting


def settings_fingerprint(settings: dict) -> str:
    """16 hex digits of the SHA-256 of the settings (sorted JSON) and the format version."""
    text = json.dumps({"format": FORMAT, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- jobs
def completed_jobs(paths: list[str]) -> tuple[list[dict], list[str]]:
    """``(jobs, notes)``: the completed jobs under ``paths`` (each a sweep directory, whose
    ``*/result.json`` are its jobs, or a job directory)."""
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
    return jobs, notes


def _cell_key(lr: float, b: int, seed: int, noise: str = "sgd") -> tuple:
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
    from landscope.escape import sgd_noise_trace

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


def continue_job(job: dict, settings: dict) -> tuple[str, dict]:
    """Every continuation of one job (resuming a partial file): ``("computed"|"cached",
    record)``."""
    from landscope.checkpoint import payload_digest

    fp = settings_fingerprint(settings)
    cache = job["job"].cache(RESULTS_DIR, fp)
    newest = job["job"].checkpoints()
    digest = payload_digest(newest[0]) if newest else None
    previous = cache.read({"checkpoint_sha256": digest, "settings": settings}, npz="none") \
        if digest is not None else None
    if previous is not None:
        if previous.get("complete"):
            return "cached", previous
        done = {_cell_key(r.get("requested_lr", r["lr"]), r["requested_batch_size"], r["seed"],
                          r.get("noise", "sgd")): r for r in previous.get("runs", [])}
    else:
        done = {}
    import torch

    from landscope.escape import EscapeRule, run_escape
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
    stability = full["lr_unit"] == "stability"
    runs: list[dict] = []
    for noise in full["noise"]:
        for lr in settings["lrs"]:
            eta = lr * 2.0 / extra["lambda_max"] if stability else lr
            for b in settings["batch_sizes"]:
                fresh = False
                for seed in settings["seeds"]:
                    key = _cell_key(lr, b, seed, noise)
                    if key in done:
                        runs.append(done[key])
                        continue
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
                    runs.append(row)
                    fresh = True
                if fresh:
                    cache.write({**record, "runs": runs,
                                 "wall_time_s": time.perf_counter() - tic})
    record.update(runs=runs, complete=True, wall_time_s=time.perf_counter() - tic)
    cache.write(record)
    return "computed", record


def _summary(record: dict) -> str:
    runs = record["runs"]
    esc = sorted(r["escape_step"] for r in runs if r["escaped"])
    med = f", median escape step {esc[len(esc) // 2]}" if esc else ""
    return f"{len(runs)} runs, {len(esc)} escaped{med}"


def main(argv: list[str] | None = None) -> None:
    from runner.cli import arguments, check_writable, input_errors, paths_and_overrides, run_each

    args = arguments(argv, __doc__)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    paths, overrides = paths_and_overrides(args)
    with input_errors(composing=True):  # OmegaConf: unknown key, wrong type
        if not paths:
            raise LandscopeError("expected at least one sweep or job directory")
        settings = escape_config(overrides)
        jobs, notes = completed_jobs(paths)
        check_writable(job["job"].path / RESULTS_DIR for job in jobs)
    for note in notes:
        print(note, flush=True)
    fp = settings_fingerprint(settings)
    counts = run_each(jobs, lambda job: str(job["job"]), lambda job: continue_job(job, settings),
                      _summary)
    print(f"{len(jobs)} jobs: {counts['computed']} computed, {counts['cached']} cached, "
          f"{counts['failed']} failed (results in <job>/{RESULTS_DIR}/{fp}.json)")
    sys.exit(1 if counts["failed"] else 0)


if __name__ == "__main__":
    main()
