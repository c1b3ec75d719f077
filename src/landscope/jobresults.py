"""A finished job's post-training files: the stages of a job (:data:`JOB_STAGES`: probes,
landscape, figures; run by :func:`landscope.stages.run_stages`), probe presets side by side in
result.json, the probes of a finished job or of one checkpoint, and the repair of what a
finished job misses.

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

from omegaconf import DictConfig

from landscope.augment import stage_data_note
from landscope.checkpoint import checkpoint_path, newest_valid
from landscope.config import plain, typed
from landscope.errors import ConfigError, one_line
from landscope.fingerprints import checkpoint_of, landscape_fingerprint, probe_fingerprint
from landscope.io import jsonable, read_json, write_json, write_jsonl
from landscope.jobcheck import finished_training, metrics_intact, read_result
from landscope.jobdir import JobDir
from landscope.progress import wanted
from landscope.stages import CachedStage, Report, StageContext, cached_run, run_stages

log = logging.getLogger("landscope")

FIGURES_MARK = ".figures.json"
TRACEBACK = "traceback.txt"
TRAJECTORY_FILE = "trajectory.npz"  # landscape.trajectory.* snapshots in the job directory


# ------------------------------------------------------------------------------ stages
class ProbeStage(CachedStage):
    """The probes on the trained model (``probes/<pfp>``); result.json keeps every preset's
    scalars side by side (:meth:`merge`)."""

    group, config_field, fingerprint_field = "probes", "probe", "probe_fingerprint"

    def fingerprint(self, cfg: DictConfig) -> Optional[str]:
        return probe_fingerprint(cfg)

    def run(self, ctx: StageContext) -> Report:
        from landscope.jobtrain import initial_model
        from landscope.probes.spawn import run_probes_on_ranks

        cfg, model = ctx.cfg, ctx.model
        log.info("%s: running probes (%s)%s", ctx.job.path, str(cfg.probe.name),
                 stage_data_note(cfg))
        w0 = None
        if cfg.probe.pacbayes.enabled:  # the prior mean: the initialization, not 0
            device = next(model.parameters()).device
            w0 = initial_model(cfg, ctx.data).to(device)
        report = run_probes_on_ranks(model, ctx.data.train, cfg.probe,
                                     int(cfg.probe.ranks), w0=w0,
                                     log=lambda line: log.info("%s: %s", ctx.job.path, line))
        return Report(report.scalars, report.arrays)

    def record(self, ctx: StageContext, report: Report) -> dict:
        return {"scalars": report.scalars,
                "probe": plain(ctx.cfg.probe)}

    def recorded(self, result: dict) -> set:
        """The probe fingerprints whose scalars ``result`` holds, less those written before the
        multiplicity check (:func:`~landscope.probes.checked.predates_multiplicity_check`)."""
        from landscope.probes.checked import predates_multiplicity_check

        by = dict(result.get("probes_by_fingerprint") or {})
        if result.get("probe_fingerprint"):
            by.setdefault(result["probe_fingerprint"], result.get("probes"))
        return {fp for fp, scalars in by.items() if not predates_multiplicity_check(scalars)}

    def current(self, record: dict) -> bool:
        """Whether a probe cache record's scalars are of today's probes (else recomputed)."""
        from landscope.probes.checked import predates_multiplicity_check

        return not predates_multiplicity_check(record.get("scalars"))

    def merge(self, ctx: StageContext, fp: str, scalars: dict) -> dict:
        """The probe fields of result.json, with the presets ``ctx.previous`` holds kept
        beside the one just run or read."""
        previous = ctx.previous or {}
        by = dict(previous.get("probes_by_fingerprint") or {})
        old = previous.get("probe_fingerprint")
        if old and old not in by and isinstance(previous.get("probes"), dict) \
                and "skipped" not in previous["probes"]:
            by[old] = previous["probes"]  # a result.json written before presets lived side by side
        by.pop(fp, None)
        by[fp] = scalars  # last: the newest wins a tie
        top = max(reversed(list(by)), key=lambda k: len(by[k]))
        preset = str(ctx.cfg.probe.name) if top == fp else _preset(ctx.job, top)
        return {"probes": by[top], "probe_fingerprint": top, "probe_preset": preset,
                "probes_by_fingerprint": by}


class LandscapeStage(CachedStage):
    """The landscape suite on the trained model (``landscape/<lfp>``), with the probes'
    eigenvectors of the result's ``probe_fingerprint`` when they were saved."""

    group, config_field = "landscape", "landscape"

    def fingerprint(self, cfg: DictConfig) -> Optional[str]:
        return landscape_fingerprint(cfg)

    def run(self, ctx: StageContext) -> Report:
        from landscope.geometry.suite import run_landscape
        from landscope.jobtrain import seed_everything
        from landscope.models import build_model

        cfg, job, result = ctx.cfg, ctx.job, ctx.result
        log.info("%s: landscape (%s)%s", job.path, str(cfg.landscape.name),
                 stage_data_note(cfg))
        init_model = None
        if cfg.landscape.intrinsic.enabled:
            seed_everything(cfg.seed)  # the job's initialization (global RNGs not restored)
            init_model = build_model(cfg.model, ctx.data.meta, ctx.cfg.loss)
        report = run_landscape(
            ctx.model, ctx.data, cfg.landscape, eigenvectors=_eigenvectors(job, result),
            trajectory_path=job.path / TRAJECTORY_FILE, init_model=init_model,
            reference_acc=(result.get("final") or {}).get("test_acc"),
            batch_size=min(cfg.train.batch_size, len(ctx.data.train)),
            store_dir=job.path / "landscape",
            progress=wanted(getattr(cfg.landscape, "progress", None)),
            log=lambda line: log.info("%s: %s", job.path, line))
        for note in report.notes:
            log.warning("warning: %s: %s", job.path, note)
        return Report(report.scalars, report.arrays, report.notes)

    def merge(self, ctx: StageContext, fp: str, scalars: dict) -> dict:
        return {"landscape": jsonable(scalars), "landscape_fingerprint": fp}

    def finish(self, ctx: StageContext) -> None:
        for partial in (ctx.job.path / "landscape").glob("*.partial.npz"):
            partial.unlink(missing_ok=True)  # finished scans: their resume stores are done


class FiguresStage:
    """The job's figures, drawn from result.json once it is written (:func:`draw_figures`)."""

    group, after_result, skip_diverged = "figures", True, False

    def fingerprint(self, cfg: DictConfig) -> Optional[str]:
        return "figures" if cfg.landscape.figures else None

    def run(self, ctx: StageContext) -> Report:
        draw_figures(ctx.cfg, ctx.job.path, ctx.result)
        return Report()


JOB_STAGES = (ProbeStage(), LandscapeStage(), FiguresStage())



def _eigenvectors(job: JobDir, result: dict):
    """The probes' ``eigenvectors_top`` of the result's probe fingerprint, or None."""
    pfp = result.get("probe_fingerprint")
    probes = job.cache("probes", pfp) if pfp else None
    if probes is None or not probes.npz_path.is_file():
        return None
    arrays = probes.arrays(("eigenvectors_top",))
    if arrays is None:
        log.warning("warning: %s: probes/%s.npz is unreadable: no eigenvector slices",
                    job.path, pfp)
    return (arrays or {}).get("eigenvectors_top")


def cached_probes(cfg: DictConfig, job_dir: Path, model, data, stem: str,
                  key: Optional[dict] = None) -> dict:
    """Probe scalars from ``probes/<stem>.json`` when it is a readable cache matching ``key``,
    else run the probes and cache them."""
    ctx = StageContext(cfg, JobDir(job_dir), model, data)
    return cached_run(ctx, ProbeStage(), stem, key)


def _preset(job: JobDir, pfp: str) -> Optional[str]:
    record = job.cache("probes", pfp).read(npz="none")
    try:
        return str(record["probe"]["name"])
    except (KeyError, TypeError):
        return None


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
                checkpoint_of(found[1], result):
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


# -------------------------------------------------------------------- finished jobs
def probe_checkpoint(cfg: DictConfig, ckpt_path: Path) -> dict:
    """Run the configured probes on one checkpoint file of a job (any epoch, e.g. one
    kept during training); ``result.json`` is left alone.

    Results go to ``probes/<pfp>_<checkpoint stem>.json/.npz`` in the job directory,
    keyed by the checkpoint's SHA-256, so asking again costs nothing.
    Returns ``{"epoch", "checkpoint", "probes", "probe_fingerprint"}``."""
    from landscope.checkpoint import load_checkpoint, payload_digest

    ckpt_path = Path(ckpt_path)
    job_dir = ckpt_path.parent.parent
    pfp = probe_fingerprint(cfg)
    if pfp is None:
        raise ConfigError("probe=none switches every probe off; choose probe=basic, standard, "
                          "full or pacbayes")
    ckpt = load_checkpoint(ckpt_path)
    model, data = JobDir(job_dir).load_model(ckpt["model"], cfg)
    key = {"checkpoint": ckpt_path.name, "checkpoint_sha256": payload_digest(ckpt_path)}
    scalars = cached_probes(cfg, job_dir, model, data, f"{pfp}_{ckpt_path.stem}", key)
    return {"epoch": ckpt.get("epoch"), "checkpoint": str(ckpt_path), "probes": scalars,
            "probe_fingerprint": pfp}


def probe_finished_job(cfg: DictConfig, job_dir: Path, previous: dict) -> dict:
    """Run the configured probes and landscape on a finished job's final checkpoint (no
    retraining; cached results are reused) and update its result.json and figures, holding
    the job directory's lock (:class:`JobLocked` when another process has it). ``previous``
    is the finished training's result (a failed job's, when only its later stages failed:
    :func:`landscope.jobcheck.finished_training`)."""
    from landscope.joblock import job_lock
    from landscope.migrate import migrate_job

    job_dir = Path(job_dir)
    with job_lock(job_dir):
        migrate_job(job_dir, cfg)  # written before fingerprint version 2: records moved, once
        current = read_result(job_dir / "result.json")  # another process may have updated it
        current = None if current is None else finished_training(current)
        return probe_finished(typed(cfg), job_dir, current if current is not None else previous)


def probe_finished(cfg: DictConfig, job_dir: Path, previous: dict) -> dict:
    """:func:`probe_finished_job` once the lock is held."""
    job = JobDir(job_dir)
    _, ckpt = job.final_checkpoint(previous, fallback=True)
    model, data = job.load_model(ckpt["model"], cfg)
    ctx = StageContext(cfg, job, model, data, dict(previous), previous)
    run_stages(ctx, JOB_STAGES)
    remove_traceback(job_dir)
    return ctx.result
