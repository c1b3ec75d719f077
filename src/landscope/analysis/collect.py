"""Collect the results of one or more sweeps into one tidy table (one row per job).

Every job directory found is a row, whatever became of the job: completed jobs are
``included``; diverged, failed, incomplete (no ``result.json``) and unreadable ones
(corrupt ``result.json``) are kept as rows with their ``status`` and a ``reason``, listed
in :attr:`Collection.excluded` and counted in :attr:`Collection.counts`, never silently
dropped. So is a completed job that repeats an earlier one's config and seed (status
``duplicate``: the same job in two directories, counted once), and a completed job of a trained
model already included that was probed or scanned with other settings (status
``other_setting``: one model is one unit, and one setting is analysed for every model); see
:mod:`landscope.analysis.effective` and :mod:`landscope.analysis.stage_settings`.

Columns of :attr:`Collection.jobs`:

- ``sweep`` (the sweep directory's name), ``job`` (the job directory's name), ``path``;
- ``status`` (``completed``, ``diverged``, ``failed``, ``incomplete``, ``unreadable``, or any
  other status a ``result.json`` states), ``included`` (status is ``completed``), ``reason``
  (why a job is excluded: the error of a failed job, the stop reason of a diverged one, ...);
- ``stop_reason``, ``seed``, ``n_params``, ``wall_time_s``, ``epochs_completed``, ``overrides``
  (the command-line overrides joined by spaces);
- ``final.*``: the last epoch's ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``,
  ``generalization_gap`` (train acc − test acc), ``epoch``, ``grad_evals``; and the derived
  ``test_error`` = 1 − ``final.test_acc`` and ``train_error`` = 1 − ``final.train_acc``;
- only when some job has a shifted test split (``dataset.ood.enabled``): ``final.ood_test_acc``
  and ``final.ood_test_loss`` (its accuracy and loss, as ``final`` holds them) and the derived
  ``ood_test_error`` = 1 − ``final.ood_test_acc`` (NaN for a job without the split); sweeps
  without one get none of these columns;
- ``probe.*`` and ``landscape.*``: the scalars of ``result.json``'s ``probes`` and ``landscape``
  (those of a top-k's later entries left out where they predate the multiplicity check);
- ``measured_with``: the probe and landscape options, as overrides, with which those scalars
  were measured where they differ from ``config.yaml`` (a job measured again by ``runner.probe``
  or ``runner.landscape``; None otherwise);
- the flattened ``config.yaml`` (``optimizer.lr``, ``model.width``, ...; lists as JSON strings),
  each option the job does not read at its default (``optimizer.betas`` of an SGD job).
  The config groups ``probe`` and ``landscape`` become ``config.probe.*`` and
  ``config.landscape.*``, because ``probe.*`` and ``landscape.*`` hold the measured scalars
  (``probe.trace`` is the Hessian trace, ``config.probe.trace.enabled`` the switch that asked
  for it).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml

from landscope.analysis.effective import (  # noqa: F401 - DUPLICATE, flatten: re-exported
    DUPLICATE,
    STAGE_COLUMNS,
    copy_reason,
    effective_columns,
    first_copies,
    flatten,
    identity,
    mark_duplicates,
    scalar,
)
from landscope.analysis.stage_settings import (
    mark_other_settings,
    measured_with,
    measurements,
    setting_notes,
    stage_setting,
    use_presets,
)
from landscope.io import atomic_write_bytes, atomic_write_text, write_json
from landscope.jobdir import CONFIG_FILE, JOB_MARKERS, RESULT_FILE, JobDir, find_jobs

# The statuses of landscope.jobs (kept in step with it by tests/test_analysis_collect.py;
# not imported, because importing landscope.jobs loads torch).
COMPLETED, DIVERGED, FAILED = "completed", "diverged", "failed"
INCOMPLETE = "incomplete"  # a job directory without result.json (running, killed, never finished)
UNREADABLE = "unreadable"  # result.json that is not valid JSON or not an object

# Config keys that never count as swept hyperparameters: seeds and bookkeeping that do not
# change what a job computes (landscope.jobs._NON_RESULT_KEYS).
_NOT_SWEPT = ("seed", "name", "resume", "train.progress", "train.threads", "train.checkpoint_every",
              "train.checkpoint_interval_s", "train.keep_checkpoints", "train.reuse_trained",
              "dataset.data_dir", "dataset.download")
_NOT_SWEPT_PREFIXES = ("logger.",)
_FINAL_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "generalization_gap", "epoch",
               "grad_evals")


@dataclass
class Collection:
    """The collected jobs of one or more sweeps."""

    jobs: pd.DataFrame  # one row per job directory, included or not
    excluded: pd.DataFrame  # sweep, job, status, reason, path of every job not included
    counts: dict[str, int]  # number of jobs per status
    swept: list[str]  # config keys whose values differ across included jobs (seed excluded)
    sources: list[str] = field(default_factory=list)  # the directories collected
    notes: list[str] = field(default_factory=list)  # on the settings measured (for the report)

    @property
    def included(self) -> pd.DataFrame:
        """The completed jobs only."""
        return self.jobs[self.jobs["included"]].reset_index(drop=True)


def job_dirs(path: str | os.PathLike) -> list[JobDir]:
    """The job directories collected from ``path``: ``[path]`` when it is one (it holds any
    of :data:`~landscope.jobdir.JOB_MARKERS`, whatever became of the job), else those below it
    (sorted; hidden directories left out)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such directory: {path}")
    return find_jobs([path], markers=JOB_MARKERS, hidden=False, required=False)


def config_columns(job: JobDir) -> tuple[dict[str, Any] | None, str | None]:
    """``(columns, note)``: the job's flattened config.yaml, its groups ``probe`` and
    ``landscape`` prefixed ``config.``; columns None for an empty file (no note) or, with a
    note saying why, for a missing or unreadable one. Options renamed since a job was written
    are under their current names (:meth:`JobDir.saved_config`), so old and new jobs share
    one column (``optimizer.llp.c``, not also ``optimizer.llp_c``)."""
    if not (job.path / CONFIG_FILE).is_file():
        return None, "no config.yaml"
    try:
        cfg = job.saved_config()
        if cfg and not isinstance(cfg, dict):
            raise ValueError("not a mapping")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return None, f"unreadable config.yaml: {type(exc).__name__}: {exc}"
    if not isinstance(cfg, dict):  # an empty file
        return None, None
    return effective_columns(cfg), None


def distinct_jobs(jobs: list[JobDir], notes: list[str] | None = None,
                  trained: bool = False) -> list[JobDir]:
    """``jobs`` without the later directories of one job (the same seed and effective config,
    as :func:`collect` excludes them; with ``trained``, of one trained model: the probe and
    landscape settings aside), each left out with a note in ``notes``."""
    idents = []
    for job in jobs:
        config = config_columns(job)[0]
        idents.append(identity(config, config.get("seed"), STAGE_COLUMNS if trained else ())
                      if config else None)
    firsts = first_copies(idents)
    for job, first in zip(jobs, firsts):
        if first is not None and notes is not None:
            notes.append(f"left out {job.name}: {copy_reason(jobs[first].name, trained)}")
    return [job for job, first in zip(jobs, firsts) if first is None]


def _read_overrides(job: Path, result: dict | None) -> str | None:
    overrides = (result or {}).get("overrides")
    if overrides is None and (job / "overrides.yaml").is_file():
        try:
            overrides = yaml.safe_load((job / "overrides.yaml").read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001
            overrides = None
    if isinstance(overrides, list):
        return " ".join(str(o) for o in overrides)
    return None


def _read_status(job: JobDir) -> tuple[dict | None, str, str | None]:
    """``(result or None, status, reason)`` from the job's result.json as it is on disk."""
    if not (job.path / RESULT_FILE).exists():
        return None, INCOMPLETE, "no result.json"
    try:
        result = job.result()
        if not isinstance(result, dict):
            raise ValueError(f"expected a JSON object, got {type(result).__name__}")
        if "status" not in result:
            return result, UNREADABLE, "result.json has no status"
        if result["status"] in (COMPLETED, DIVERGED) and not isinstance(result.get("final"), dict):
            # {"status": "completed"} alone is no result: the runner reruns such a job
            return result, UNREADABLE, "result.json has no final metrics"
        return result, str(result["status"]), None
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a row, not a crash
        return None, UNREADABLE, f"{type(exc).__name__}: {exc}"


def _reason(status: str, reason: str | None, result: dict, config_note: str | None
            ) -> str | None:
    """Why a job is not analysed (or what is missing of an analysed one), or None."""
    if status == FAILED:
        reason = str(result.get("error") or "failed")
    elif status == DIVERGED:
        reason = f"diverged ({result.get('stop_reason') or 'non-finite loss'})"
    elif status not in (COMPLETED, INCOMPLETE, UNREADABLE) and reason is None:
        reason = f"status {status!r}"
    if status == COMPLETED and config_note:
        reason = config_note  # still included: the result is there, the config is not
    return reason


def _job_row(job: JobDir, sweep: str) -> tuple[dict[str, Any], dict[str, Any], tuple]:
    """The job's row, its config columns (effective: :mod:`landscope.analysis.effective`) and
    ``(settings of config.yaml, measurements)``, each measurement (settings measured with,
    probe scalars) as :func:`~landscope.analysis.stage_settings.measurements` lists them."""
    row: dict[str, Any] = {"sweep": sweep, "job": job.name, "path": str(job.path.resolve())}
    config, config_note = config_columns(job)
    config = config or {}
    result, status, reason = _read_status(job)
    result = result or {}
    started = stage_setting(config)
    options = [(stage_setting({**config, **m}), sc) for m, sc in measurements(job, result)]
    reason = _reason(status, reason, result, config_note)
    row.update(status=status, included=status == COMPLETED, reason=reason,
               stop_reason=result.get("stop_reason"),
               seed=result.get("seed", config.get("seed")),
               n_params=result.get("n_params"), wall_time_s=result.get("wall_time_s"),
               epochs_completed=result.get("epochs_completed"),
               overrides=_read_overrides(job.path, result))
    final = result.get("final") if isinstance(result.get("final"), dict) else {}
    for key in _FINAL_KEYS:
        row[f"final.{key}"] = final.get(key)
    for key, value in final.items():
        row.setdefault(f"final.{key}", scalar(value))
    for section, prefix in (("probes", "probe"), ("landscape", "landscape")):
        scalars = result.get(section)
        if isinstance(scalars, dict):
            for key, value in scalars.items():
                row[f"{prefix}.{key}"] = scalar(value)
    row["measured_with"] = measured_with(started, options[0][0])
    for key, value in config.items():
        row.setdefault(key, value)
    return row, config, (started, options)


def swept_keys(jobs: pd.DataFrame, config_columns: Iterable[str]) -> list[str]:
    """Config columns whose values differ across the included rows (seeds and bookkeeping
    excluded). A key missing in some jobs' configs counts as the value "missing"."""
    rows = jobs[jobs["included"]] if "included" in jobs else jobs
    out = []
    for key in config_columns:
        if key in _NOT_SWEPT or key.startswith(_NOT_SWEPT_PREFIXES) or key not in rows:
            continue
        values = rows[key].map(lambda v: "\0missing" if _isna(v) else json.dumps(v, default=str))
        if values.nunique() > 1:
            out.append(key)
    return out


def swept_factors(jobs: pd.DataFrame, keys: Iterable[str]) -> list[str]:
    """The independent swept dimensions among ``keys``: a key whose value is determined by
    another key (on the included rows) is part of that key's factor and dropped.

    Choosing ``optimizer=sgd,adam,momentum`` changes ``optimizer.name`` and, with it,
    ``optimizer.lr``, ``optimizer.momentum`` and more: one factor, ``optimizer.name``. Keys that
    induce the same partition of the jobs keep the first in ``keys`` order. In a random search
    (every config unique) one continuous key determines all others; granulated statistics are
    undefined there anyway (no two jobs differ in a single hyperparameter)."""
    keys = list(keys)
    rows = jobs[jobs["included"]] if "included" in jobs else jobs
    codes = {k: rows[k].map(lambda v: json.dumps(None if _isna(v) else v, default=str))
             for k in keys}

    def determines(a: str, b: str) -> bool:
        return bool((pd.DataFrame({"a": codes[a], "b": codes[b]}).groupby("a")["b"].nunique()
                     <= 1).all())

    factors = []
    for i, b in enumerate(keys):
        dependent = False
        for j, a in enumerate(keys):
            if a == b or not determines(a, b):
                continue
            # a is strictly finer, or an equal partition seen first
            if not determines(b, a) or j < i:
                dependent = True
                break
        if not dependent:
            factors.append(b)
    return factors


def _isna(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def collect(sweep_dirs: Iterable[str | os.PathLike] | str | os.PathLike,
            setting: dict[str, Any] | None = None) -> Collection:
    """Collect sweep directories (or single job directories) into a :class:`Collection`.
    ``setting`` (:func:`~landscope.analysis.stage_settings.parse_settings`) chooses the probe
    and landscape setting kept for a trained model measured with several
    (:func:`~landscope.analysis.stage_settings.mark_other_settings`)."""
    if isinstance(sweep_dirs, (str, os.PathLike)):
        sweep_dirs = [sweep_dirs]
    rows, sources, columns, seen, identities = [], [], {}, set(), []
    trained, settings, measured_rows, notes = [], [], [], []
    for sweep_dir in sweep_dirs:
        sweep_dir = Path(sweep_dir)
        jobs = job_dirs(sweep_dir)
        single = jobs == [JobDir(sweep_dir)]
        sweep = (sweep_dir.resolve().parent if single else sweep_dir.resolve()).name
        sources.append(str(sweep_dir))
        for job in jobs:
            if job.path.resolve() in seen:  # the same job named twice
                continue
            seen.add(job.path.resolve())
            row, config, measured = _job_row(job, sweep)
            columns.update(dict.fromkeys(config))
            rows.append(row)
            identities.append(identity(config, row["seed"]) if config else None)
            trained.append(identity(config, row["seed"], STAGE_COLUMNS) if config else None)
            measured_rows.append(measured)
            settings.append([ran for ran, _ in measured[1]] if config else [{}])
    jobs = pd.DataFrame(rows, columns=_column_order(rows, columns))
    if len(jobs):
        jobs["included"] = jobs["included"].astype(bool)
        for col in ("final.test_acc", "final.train_acc"):
            jobs[col] = pd.to_numeric(jobs[col], errors="coerce")
        jobs.insert(jobs.columns.get_loc("final.test_acc") + 1, "test_error",
                    1.0 - jobs["final.test_acc"])
        jobs.insert(jobs.columns.get_loc("final.train_acc") + 1, "train_error",
                    1.0 - jobs["final.train_acc"])
        _add_ood_error(jobs)
        mark_duplicates(jobs, identities)
        pick = mark_other_settings(jobs, trained, settings, setting, measured_rows)
        unchecked = use_presets(jobs, pick, measured_rows)
        notes = setting_notes(jobs, [s[j] for s, j in zip(settings, pick)],
                              [s[0] for s in settings]) + unchecked
    excluded = (jobs.loc[~jobs["included"], ["sweep", "job", "status", "reason", "path"]]
                .reset_index(drop=True) if len(jobs)
                else pd.DataFrame(columns=["sweep", "job", "status", "reason", "path"]))
    counts = {str(k): int(v) for k, v in jobs["status"].value_counts().items()} if len(jobs) else {}
    swept = swept_keys(jobs, [c for c in columns if c in jobs]) if len(jobs) else []
    return Collection(jobs=jobs, excluded=excluded, counts=counts, swept=swept, sources=sources,
                      notes=notes)


def _add_ood_error(jobs: pd.DataFrame) -> None:
    """``ood_test_error`` = 1 − ``final.ood_test_acc`` after that column, in place; nothing
    when no job has a shifted test split."""
    if "final.ood_test_acc" not in jobs:
        return
    for col in ("final.ood_test_acc", "final.ood_test_loss"):
        if col in jobs:
            jobs[col] = pd.to_numeric(jobs[col], errors="coerce")
    jobs.insert(jobs.columns.get_loc("final.ood_test_acc") + 1, "ood_test_error",
                1.0 - jobs["final.ood_test_acc"])


def _column_order(rows: list[dict], config_columns: dict) -> list[str]:
    head = ["sweep", "job", "status", "included", "reason", "stop_reason", "seed", "n_params",
            "wall_time_s", "epochs_completed", "overrides"]
    seen = dict.fromkeys(head)
    for row in rows:
        seen.update(dict.fromkeys(row))
    rest = [c for c in seen if c not in head and c != "path"]
    final = [c for c in rest if c.startswith("final.")]
    measured = sorted(c for c in rest if c.startswith(("probe.", "landscape.")))
    config = [c for c in config_columns if c in seen and c not in head]
    other = [c for c in rest if c not in final and c not in measured and c not in config]
    return head + final + measured + other + config + ["path"]


def _for_files(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose object columns hold one type each (strings where types are mixed), so
    that Parquet can store them."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype != object:
            continue
        values = out[col].dropna()
        types = {type(v) for v in values}
        if not types:
            out[col] = out[col].astype("float64")
        elif types <= {bool}:
            out[col] = out[col].astype("boolean")
        elif types <= {int, float}:
            out[col] = pd.to_numeric(out[col], errors="coerce")
        elif types != {str}:
            out[col] = out[col].map(lambda v: None if _isna(v) else str(v))
    return out


def save(collection: Collection, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``jobs.csv``, ``jobs.parquet``, ``excluded.csv`` and ``collection.json`` (counts,
    swept keys, sources) into ``out_dir``, each atomically. Returns the paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = _for_files(collection.jobs)
    paths = {name: out_dir / name for name in ("jobs.csv", "jobs.parquet", "excluded.csv",
                                                "collection.json")}
    atomic_write_text(paths["jobs.csv"], jobs.to_csv(index=False))
    buffer = io.BytesIO()
    jobs.to_parquet(buffer, index=False)
    atomic_write_bytes(paths["jobs.parquet"], buffer.getvalue())
    atomic_write_text(paths["excluded.csv"], collection.excluded.to_csv(index=False))
    write_json(paths["collection.json"], {"counts": collection.counts, "swept": collection.swept,
                                          "sources": collection.sources,
                                          "n_jobs": int(len(collection.jobs)),
                                          "n_included": int(collection.jobs["included"].sum())
                                          if len(collection.jobs) else 0})
    return paths
