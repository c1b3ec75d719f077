"""A finished job's post-training files: probe caches, probe presets side by side in
result.json, figures, and the repair of what a finished job misses.

- Caches (``probes/<stem>.npz`` + ``.json``, ``landscape/<lfp>.npz`` + ``.json``; the job
  directory's :class:`~landscope.jobdir.Cache`): the npz is written first, the JSON last (it
  marks a complete result). Reading one is a cache miss
  whenever anything about it is unreadable (not JSON, not an object, no scalars, an npz that
  does not load or lacks an array the JSON lists): the result is recomputed, never an error.
- Probe presets side by side: ``result.json`` keeps every preset's scalars under its probe
  fingerprint (``probes_by_fingerprint``); the top-level ``probes`` is the richest of them
  (most scalars; the one just run on a tie), named by ``probe_fingerprint`` and ``probe_preset``.
- Figures are drawn from what result.json names as current; figures no longer backed by
  current data are removed; ``.figures.json`` records what was drawn for which result, so a
  job killed between its result.json and its figures gets them drawn on the rerun.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from landscope.checkpoint import checkpoint_path, newest_valid
from landscope.errors import one_line
from landscope.io import jsonable, read_json, write_json, write_jsonl
from landscope.jobcheck import metrics_intact
from landscope.jobdir import JobDir

log = logging.getLogger("landscope")

FIGURES_MARK = ".figures.json"
TRACEBACK = "traceback.txt"


# ------------------------------------------------------------------------------ caches
def cached_probes(cfg: DictConfig, job_dir: Path, model, data, stem: str,
                  key: Optional[dict] = None) -> dict:
    """Probe scalars from ``probes/<stem>.json`` when it is a readable cache matching ``key``,
    else run the probes and write ``<stem>.npz`` then ``<stem>.json`` (atomically)."""
    from landscope.jobs import initial_model
    from landscope.probes.spawn import run_probes_on_ranks

    cache = JobDir(job_dir).cache("probes", stem)
    cached = cache.read(key)
    if cached is not None:
        return cached["scalars"]
    log.info("%s: running probes (%s)", job_dir, getattr(cfg.probe.name, "value", cfg.probe.name))
    w0 = None
    if cfg.probe.get("pacbayes", False):  # the prior mean: the initialization, not 0
        device = next(model.parameters()).device
        w0 = initial_model(cfg, data).to(device)
    report = run_probes_on_ranks(model, data.train, cfg.probe, int(cfg.probe.get("ranks", 1)),
                                 w0=w0, log=lambda line: log.info("%s: %s", job_dir, line))
    cache.write({
        "scalars": report.scalars,
        "probe": OmegaConf.to_container(cfg.probe, resolve=True, enum_to_str=True),
        **(key or {})}, report.arrays)
    return report.scalars


def landscape_results(cfg: DictConfig, job_dir: Path, model, data, result: dict,
                      lfp: Optional[str]) -> dict:
    """``{"landscape": scalars, "landscape_fingerprint": lfp}`` for result.json, cached in
    ``landscape/<lfp>.json`` (scalars, notes, config) and ``landscape/<lfp>.npz`` (arrays)."""
    from landscope.geometry.suite import run_landscape
    from landscope.jobs import TRAJECTORY_FILE, seed_everything
    from landscope.models import build_model

    if lfp is None:
        return {}
    if result.get("status") == "diverged":
        return {"landscape": {"skipped": "diverged"}, "landscape_fingerprint": lfp}
    job = JobDir(job_dir)
    cache = job.cache("landscape", lfp)
    cached = cache.read()
    if cached is not None:
        return {"landscape": cached["scalars"], "landscape_fingerprint": lfp}
    log.info("%s: landscape (%s)", job_dir, getattr(cfg.landscape.name, "value",
                                                   cfg.landscape.name))
    eigenvectors = None
    pfp = result.get("probe_fingerprint")
    probes = job.cache("probes", pfp) if pfp else None
    if probes is not None and probes.npz_path.is_file():
        arrays = probes.arrays(("eigenvectors_top",))
        if arrays is None:
            log.warning("warning: %s: probes/%s.npz is unreadable: no eigenvector slices",
                        job_dir, pfp)
        eigenvectors = (arrays or {}).get("eigenvectors_top")
    init_model = None
    if cfg.landscape.intrinsic_dim:
        seed_everything(cfg.seed)
        init_model = build_model(cfg.model, data.meta)
    report = run_landscape(
        model, data, cfg.landscape, eigenvectors=eigenvectors,
        trajectory_path=job_dir / TRAJECTORY_FILE, init_model=init_model,
        reference_acc=(result.get("final") or {}).get("test_acc"),
        batch_size=min(cfg.train.batch_size, len(data.train)), store_dir=job_dir / "landscape")
    for note in report.notes:
        log.warning("warning: %s: %s", job_dir, note)
    cache.write({
        "scalars": report.scalars, "notes": report.notes,
        "landscape": OmegaConf.to_container(cfg.landscape, resolve=True, enum_to_str=True)},
        report.arrays)
    for partial in (job_dir / "landscape").glob("*.partial.npz"):
        partial.unlink(missing_ok=True)  # finished scans: their resume stores are done
    return {"landscape": jsonable(report.scalars), "landscape_fingerprint": lfp}


# ------------------------------------------------------------------ probes side by side
def probe_fingerprints_of(result: dict) -> set:
    """Every probe fingerprint whose scalars ``result`` holds."""
    known = set((result.get("probes_by_fingerprint") or {}))
    if result.get("probe_fingerprint"):
        known.add(result["probe_fingerprint"])
    return known


def _preset(job_dir: Path, pfp: str) -> Optional[str]:
    record = JobDir(job_dir).cache("probes", pfp).read(npz="none")
    try:
        return str(record["probe"]["name"])
    except (KeyError, TypeError):
        return None


def probe_results(cfg: DictConfig, job_dir: Path, model, data, status: str, pfp: Optional[str],
                  previous: Optional[dict] = None) -> dict:
    """The probe fields of result.json after running (or reading from the cache) the
    configured probes, with the presets ``previous`` holds kept beside them."""
    if pfp is None:
        return {}
    if status == "diverged":
        return {"probes": {"skipped": "diverged"}, "probe_fingerprint": pfp}
    scalars = cached_probes(cfg, job_dir, model, data, pfp)
    previous = previous or {}
    by = dict(previous.get("probes_by_fingerprint") or {})
    old = previous.get("probe_fingerprint")
    if old and old not in by and isinstance(previous.get("probes"), dict) \
            and "skipped" not in previous["probes"]:
        by[old] = previous["probes"]  # a result.json written before presets lived side by side
    by.pop(pfp, None)
    by[pfp] = scalars  # last: the newest wins a tie
    top = max(reversed(list(by)), key=lambda k: len(by[k]))
    preset = str(getattr(cfg.probe.name, "value", cfg.probe.name)) if top == pfp \
        else _preset(job_dir, top)
    return {"probes": by[top], "probe_fingerprint": top, "probe_preset": preset,
            "probes_by_fingerprint": by}


# ----------------------------------------------------------------------------- figures
def _mark(result: dict) -> dict:
    return {k: result.get(k) for k in ("finished", "epochs_completed", "probe_fingerprint",
                                       "landscape_fingerprint")}


def figures_current(job_dir: Path, result: dict) -> bool:
    """Whether the figures drawn last were drawn for ``result`` and are all still there."""
    try:
        mark = read_json(Path(job_dir) / FIGURES_MARK)
        files = mark["files"]
        return mark["result"] == _mark(result) and \
            all((Path(job_dir) / "figures" / f).is_file() for f in files)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def draw_figures(cfg: DictConfig, job_dir: Path, result: dict) -> None:
    """The job's figures from the data ``result`` names as current; a drawing problem is
    logged, never fatal (the results are already written; ``python -m runner.figures``
    redraws)."""
    from landscope.plots import job_figures

    if not cfg.landscape.figures:
        return
    job_dir = Path(job_dir)
    try:
        for field, folder in (("probe_fingerprint", "probes"),
                              ("landscape_fingerprint", "landscape")):
            npz = job_dir / folder / f"{result.get(field)}.npz"
            if result.get(field) and npz.is_file():
                os.utime(npz)  # job_figures draws each kind's newest file: the current one
        written = {Path(p).name for p in job_figures(job_dir)}
        for stale in (job_dir / "figures").glob("*.png"):
            if stale.name not in written:  # its data is no longer current
                stale.unlink(missing_ok=True)
        write_json(job_dir / FIGURES_MARK, {"result": _mark(result), "files": sorted(written)})
    except Exception as exc:  # noqa: BLE001
        log.warning("warning: %s: figures not drawn (%s)", job_dir,
                    one_line(exc, typed=True, plain=True))


# ------------------------------------------------------------------------------ repairs
def remove_traceback(job_dir: Path) -> None:
    """A job that completes keeps no traceback of an earlier failed attempt."""
    (Path(job_dir) / TRACEBACK).unlink(missing_ok=True)


def repair_finished(cfg: DictConfig, job_dir: Path, result: dict) -> list[str]:
    """Check a finished job for its files and repair what is missing without retraining:
    metrics.jsonl rewritten from the final checkpoint's history, figures redrawn, a stale
    traceback.txt removed. Returns what was repaired (logged); a missing final checkpoint
    is warned about (only retraining rebuilds it)."""
    job_dir = Path(job_dir)
    repaired: list[str] = []
    epochs = result["epochs_completed"]
    final = checkpoint_path(job_dir / "checkpoints", epochs)
    if not metrics_intact(job_dir, epochs):
        found = newest_valid(job_dir / "checkpoints")
        if found is not None and found[1].get("epoch") == epochs and \
                found[1].get("fingerprint") == result.get("fingerprint"):
            write_jsonl(job_dir / "metrics.jsonl", found[1]["history"])
            repaired.append("metrics.jsonl")
        else:
            log.warning("warning: %s: metrics.jsonl is incomplete and no valid final checkpoint "
                        "can rebuild it", job_dir)
    if not final.is_file():
        log.warning("warning: %s: its final checkpoint %s is missing; probes and scans need "
                    "it: rerun the training with resume=false to rebuild it", job_dir, final.name)
    if cfg.landscape.figures and not figures_current(job_dir, result):
        draw_figures(cfg, job_dir, result)
        repaired.append("figures")
    if (job_dir / TRACEBACK).exists():
        remove_traceback(job_dir)
        repaired.append(f"stale {TRACEBACK} removed")
    if repaired:
        log.info("%s: repaired %s", job_dir, ", ".join(repaired))
    return repaired
