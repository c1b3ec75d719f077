"""The escape results of ``python -m runner.escape`` as a table (H3's data).

``SWEEP/<job>/escape/<settings fingerprint>.json`` holds one job's SGD continuations from its
final checkpoint (:mod:`runner.escape`); :func:`load_escapes` reads them into one row per
continuation with the source job's probe scalars and parameter count.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from landscope.errors import LandscopeError
from landscope.jobdir import JobDir, Sweep

ESCAPE_DIR = "escape"  # <job>/escape/<settings fingerprint>.json (runner.escape)
ROW_COLUMNS = ["sweep", "job", "settings", "seed", "job_seed", "n_params", "lr", "batch_size",
               "eta_over_b", "escaped", "escape_step", "radius_step", "diverged", "max_steps",
               "eval_every", "steps_run", "loss0", "threshold", "noise", "noise_trace",
               "lr_fraction"]


def _noise_list(rec: dict) -> list:
    noise = (rec.get("settings") or {}).get("noise", ["sgd"]) if isinstance(rec, dict) else []
    return list(noise) if isinstance(noise, list) else [noise]


def is_noise_comparison(rec: dict) -> bool:
    """True when an escape file's settings continue with another noise than plain SGD
    (``escape.noise``, :mod:`runner.escape`)."""
    return _noise_list(rec) != ["sgd"]


def escape_jobs(path: Path, notes: Optional[list[str]] = None) -> list[JobDir]:
    """The jobs with escape results: ``[path]`` when it is such a job directory (it holds
    ``result.json`` and ``escape/``), else those below it holding ``escape/*.json``, one
    directory per trained model (:func:`~landscope.analysis.collect.distinct_jobs`: the escapes
    start from the minimum; the others noted in ``notes``)."""
    from landscope.analysis.collect import distinct_jobs

    job = JobDir(path)
    if job.holds((ESCAPE_DIR,)) and job.has_result():
        return [job]
    return distinct_jobs(Sweep(path).job_dirs((f"{ESCAPE_DIR}/*.json",)), notes, trained=True)


def has_escapes(path: str | Path) -> bool:
    """True when ``path`` (a sweep or a job directory) holds escape results."""
    path = Path(path)
    return any((j.path / ESCAPE_DIR).glob("*.json") for j in escape_jobs(path)) \
        if path.is_dir() else False


def _probe_scalars(job: JobDir) -> tuple[dict[str, Any], Optional[int]]:
    """``({probe.* scalars, n_params}, seed)`` of a job's ``result.json``."""
    try:
        result = job.result()
    except (OSError, ValueError):
        return {}, None
    probes = result.get("probes") if isinstance(result, dict) else None
    out = {}
    if isinstance(probes, dict):
        for k, v in probes.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"probe.{k}"] = float(v)
            elif v is None:
                out[f"probe.{k}"] = math.nan
    seed = result.get("seed") if isinstance(result, dict) else None
    size = result.get("n_params") if isinstance(result, dict) else None
    if not (isinstance(size, (int, float)) and not isinstance(size, bool)):
        size = out.get("probe.n_params", math.nan)
    out["n_params"] = float(size)
    return out, seed


def load_escapes(sweep_dir: str | Path, settings: Optional[str] = None) -> pd.DataFrame:
    """One row per continuation of ``SWEEP/*/escape/<fingerprint>.json`` (or of one job
    directory): :data:`ROW_COLUMNS` (``seed`` is the continuation seed, ``job_seed`` the
    source job's, ``n_params`` its parameter count), ``time`` (escape step, or
    ``max_steps`` when censored), and every numeric
    probe scalar of the job's ``result.json`` as ``probe.*`` (NaN when absent).

    ``settings``: the fingerprint to read (the file stem).  Default: when the jobs hold
    results of several settings, the fingerprint found in the most jobs (ties: the
    alphabetically first), preferring plain-SGD settings over noise comparisons
    (``escape.noise`` other than ``[sgd]``: read those with ``settings`` or
    :func:`landscope.analysis.hypotheses.h3_noise.load_noise_escapes`); the choice and the
    files left out are in ``df.attrs["notes"]``.  ``noise`` is the continuation's noise
    type (``sgd`` for files without one), ``noise_trace`` its injected trace per step (NaN
    for sgd), ``lr_fraction`` η·λmax/2 when the learning rates were given in units of
    2/λmax (``escape.lr_unit=stability``; NaN otherwise).
    Incomplete files (an interrupted run) are left out and noted.  Raises
    :class:`LandscopeError` when there are no escape results."""
    root, notes = Path(sweep_dir), []
    jobs = escape_jobs(root, notes) if root.is_dir() else []
    files = [(job, p) for job in jobs for p in sorted((job.path / ESCAPE_DIR).glob("*.json"))]
    if not files:
        raise LandscopeError(f"no escape results in {root}: run python -m runner.escape "
                             f"{root} first")
    records = _complete_records(root, files, notes)
    settings = _choose_settings(root, records, settings, notes)
    rows = []
    for job, fp, rec in records:
        if fp != settings:
            continue
        probes, job_seed = _probe_scalars(job)
        rows.extend(_run_row(root.name, job.name, fp, job_seed, run, probes)
                    for run in rec["runs"])
    df = pd.DataFrame(rows)
    for col in ROW_COLUMNS:
        if col not in df.columns:
            df[col] = math.nan
    df.attrs["notes"] = notes
    return df


def _complete_records(root: Path, files: list, notes: list[str]) -> list[tuple[Any, str, dict]]:
    """``(job, fingerprint, record)`` of every readable, complete escape file; the others are
    noted. Raises :class:`LandscopeError` when none is left."""
    records = []
    for job, path in files:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rec, dict) or not isinstance(rec.get("runs"), list):
                raise ValueError("no runs")
        except (OSError, ValueError) as exc:
            notes.append(f"unreadable {path.relative_to(root) if root in path.parents else path}"
                         f" ({type(exc).__name__})")
            continue
        if not rec.get("complete", False):
            notes.append(f"incomplete (interrupted) escape results left out: {job.name}/"
                         f"{path.name}")
            continue
        records.append((job, path.stem, rec))
    if not records:
        raise LandscopeError(f"no complete escape results in {root}"
                             + (f" ({'; '.join(notes)})" if notes else ""))
    return records


def _choose_settings(root: Path, records: list[tuple[Any, str, dict]], settings: Optional[str],
                     notes: list[str]) -> str:
    """The fingerprint to read (see :func:`load_escapes`); the choice is noted when the jobs
    hold several."""
    counts: dict[str, int] = {}
    noisy: set[str] = set()
    for _, fp, rec in records:
        counts[fp] = counts.get(fp, 0) + 1
        if is_noise_comparison(rec):
            noisy.add(fp)
    if settings is None:
        settings = sorted(counts, key=lambda k: (k in noisy and len(noisy) < len(counts),
                                                 -counts[k], k))[0]
        if len(counts) > 1:
            notes.append(f"{len(counts)} escape settings in {root.name}; using {settings} "
                         f"({counts[settings]} jobs), leaving out "
                         + ", ".join(f"{k} ({v} jobs)" for k, v in counts.items() if k != settings))
    elif settings not in counts:
        raise LandscopeError(f"no escape results with settings {settings} in {root} (found "
                             f"{', '.join(sorted(counts))})")
    return settings


def _run_row(sweep_name: str, job_name: str, fp: str, job_seed: Any, run: dict,
             probes: dict) -> dict[str, Any]:
    """One continuation's row of :func:`load_escapes`."""
    lr, b = float(run["lr"]), int(run["batch_size"])
    escaped = bool(run["escaped"])
    max_steps = int(run["max_steps"])
    step = run.get("escape_step")
    return {"sweep": sweep_name, "job": job_name, "settings": fp,
            "seed": int(run["seed"]), "job_seed": job_seed, "lr": lr,
            "batch_size": b, "eta_over_b": lr / b, "escaped": escaped,
            "escape_step": float(step) if step is not None else math.nan,
            "radius_step": float(run["radius_step"])
            if run.get("radius_step") is not None else math.nan,
            "diverged": bool(run.get("diverged", False)), "max_steps": max_steps,
            "eval_every": int(run["eval_every"]), "steps_run": int(run["steps_run"]),
            "loss0": run.get("loss0"), "threshold": run.get("threshold"),
            "time": float(step) if escaped else float(max_steps),
            "noise": str(run.get("noise") or "sgd"),
            "noise_trace": float(run["noise_trace"])
            if run.get("noise_trace") is not None else math.nan,
            "lr_fraction": float(run["requested_lr"])
            if run.get("requested_lr") is not None else math.nan, **probes}
