"""Post-training stages: one protocol, one runner for the cache, the skip and the merge.

A stage is an object with

- ``group``: the cache folder of the job directory (``<job>/<group>/<name>.npz`` + ``.json``,
  :meth:`landscope.jobdir.JobDir.cache`) and, by default, its field in ``result.json``;
- ``fingerprint(cfg)``: the hash of the config it reads, None when the config switches it
  off (the cache is keyed by it: a new config is a miss, never a wrong hit);
- ``run(ctx) -> Report``: the computation on a trained model (:class:`StageContext`), with
  the scalars for ``result.json``, the arrays for the npz and notes (parts skipped, and why).

:class:`CachedStage` gives the defaults a stage may override (``record``: the cache's JSON
record, ``merge``: the ``result.json`` fields, ``finish``: clean-up once cached).
:func:`run_stages` runs a job's stages in order, each seeing the result merged so far:
a stage that is off adds nothing, a diverged job's stage is recorded as skipped, a readable
cache is reused, anything else is computed and cached (npz first, JSON last); then it
writes ``result.json`` and runs the stages that work from it (``after_result``: figures).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from landscope.io import write_json
from landscope.jobdir import RESULT_FILE, JobDir

log = logging.getLogger("landscope")

DIVERGED = "diverged"


@dataclass
class Report:
    """What a stage computed: scalars for result.json, arrays for its npz, notes."""

    scalars: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class StageContext:
    """What a stage works on: the job's config, directory, trained model and data, its
    ``result`` as merged so far (status, final metrics, earlier stages' fields) and the
    ``result.json`` found before this pass (``previous``, None for a fresh job)."""

    cfg: Any
    job: JobDir
    model: Any = None
    data: Any = None
    result: dict = field(default_factory=dict)
    previous: Optional[dict] = None


@runtime_checkable
class Stage(Protocol):
    group: str

    def fingerprint(self, cfg: Any) -> Optional[str]: ...

    def run(self, ctx: StageContext) -> Report: ...


class CachedStage:
    """Defaults of a stage whose result is cached: ``result.json`` gets ``{group: scalars,
    <fingerprint_field>: fp}``; the cache record holds the scalars, the notes and the
    stage's config (``config_field``: the name of its config group)."""

    group = ""
    config_field = ""
    fingerprint_field = ""  # default: "<group>_fingerprint"
    skip_diverged = True  # a diverged job's model is not measured
    after_result = False  # True: runs once result.json is written, uncached

    def fingerprint(self, cfg: Any) -> Optional[str]:
        raise NotImplementedError

    def run(self, ctx: StageContext) -> Report:
        raise NotImplementedError

    def record(self, ctx: StageContext, report: Report) -> dict:
        """The cache's JSON record (its ``arrays`` list is added when it is written)."""
        from landscope.config import plain

        return {"scalars": report.scalars, "notes": report.notes,
                self.config_field: plain(getattr(ctx.cfg, self.config_field))}

    def merge(self, ctx: StageContext, fp: str, scalars: dict) -> dict:
        """The fields this stage adds to ``result.json``."""
        return {self.group: scalars, fingerprint_field(self): fp}

    def finish(self, ctx: StageContext) -> None:
        """Called once a computed result is cached (e.g. to remove resume stores)."""


def fingerprint_field(stage: Stage) -> str:
    return getattr(stage, "fingerprint_field", "") or f"{stage.group}_fingerprint"


def recorded(stage: Stage, result: dict) -> set:
    """The fingerprints of ``stage`` whose results ``result`` holds (a stage may keep
    several side by side: its ``recorded(result)``)."""
    if hasattr(stage, "recorded"):
        return set(stage.recorded(result))
    return {result.get(fingerprint_field(stage))}


def missing(cfg: Any, result: dict, stages: Sequence[Stage]) -> list:
    """The stages (those merged into result.json) that ``cfg`` switches on and whose
    results ``result`` lacks: a finished job runs them without retraining."""
    return [s for s in stages if not getattr(s, "after_result", False)
            and s.fingerprint(cfg) not in (None, *recorded(s, result))]


def cached_run(ctx: StageContext, stage: Stage, name: str, key: Optional[dict] = None) -> dict:
    """The stage's scalars from ``<group>/<name>.json`` when it is a readable cache whose
    items match ``key`` (and that the stage's ``current(record)``, where it has one, accepts);
    else run the stage and cache its report (npz, then the record with
    ``key``'s items)."""
    cache = ctx.job.cache(stage.group, name)
    hit = cache.read(key)
    if hit is not None and hasattr(stage, "current") and not stage.current(hit):
        log.info("%s: %s/%s.json was written by an older version of the stage: recomputing",
                 ctx.job.path, stage.group, name)
        hit = None
    if hit is not None:
        return hit["scalars"]
    report = stage.run(ctx)
    record = stage.record(ctx, report) if hasattr(stage, "record") else \
        {"scalars": report.scalars, "notes": report.notes}
    cache.write({**record, **(key or {})}, report.arrays)
    if hasattr(stage, "finish"):
        stage.finish(ctx)
    return report.scalars


def stage_fields(ctx: StageContext, stage: Stage) -> dict:
    """The ``result.json`` fields of one stage: none when it is off, ``{"skipped":
    "diverged"}`` for a diverged job, else its (cached) scalars merged by the stage."""
    fp = stage.fingerprint(ctx.cfg)
    if fp is None:
        return {}
    if getattr(stage, "skip_diverged", True) and ctx.result.get("status") == DIVERGED:
        return {stage.group: {"skipped": DIVERGED}, fingerprint_field(stage): fp}
    scalars = cached_run(ctx, stage, fp)
    if hasattr(stage, "merge"):
        return stage.merge(ctx, fp, scalars)
    return {stage.group: scalars, fingerprint_field(stage): fp}


def run_stages(ctx: StageContext, stages: Sequence[Stage]) -> dict:
    """Run ``stages`` in order on ``ctx`` (each merges into ``ctx.result``), write
    ``result.json``, then run the ``after_result`` stages; returns the result."""
    for stage in stages:
        if not getattr(stage, "after_result", False):
            ctx.result.update(stage_fields(ctx, stage))
    write_json(ctx.job.path / RESULT_FILE, ctx.result)
    for stage in stages:
        if getattr(stage, "after_result", False) and stage.fingerprint(ctx.cfg) is not None:
            stage.run(ctx)
    return ctx.result
