"""H2's barriers (:mod:`landscope.analysis.hypotheses.h2`): :func:`load_barriers` reads the
connectivity results of a sweep (``python -m runner.connect``) into one row per pair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from landscope.analysis.collect import _NOT_SWEPT, _NOT_SWEPT_PREFIXES, config_columns
from landscope.analysis.hypotheses.pairing import as_number
from landscope.errors import LandscopeError
from landscope.jobdir import JobDir


def _cached_config(sweep_dir: Path, job: str, cache: dict[str, dict[str, Any] | None]
                   ) -> dict[str, Any] | None:
    """The job's config columns (None when its config.yaml is missing, unreadable or empty)."""
    if job not in cache:
        cache[job] = config_columns(JobDir(sweep_dir / job))[0]
    return cache[job]


def _read_pair_file(path: Path, row: dict[str, Any]) -> list[str]:
    """Put the scalars of one connectivity file into ``row`` (and the file's ``job_a`` /
    ``job_b``, which win over the file name: hashed names of long pairs); returns the reasons
    it is unusable ([] when it was read)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        scalars = data.get("scalars") if isinstance(data, dict) else None
        if not isinstance(scalars, dict):
            raise ValueError("no scalars")
        row.update(scalars)
        if isinstance(data.get("job_a"), str) and isinstance(data.get("job_b"), str):
            row.update(job_a=data["job_a"], job_b=data["job_b"])
    except Exception as exc:  # noqa: BLE001 - a bad file is a row with a reason
        return [f"unreadable: {type(exc).__name__}: {exc}"]
    return []


def load_barriers(sweep_dir: str | Path, factor: str = "model.skip") -> pd.DataFrame:
    """Read ``SWEEP/connectivity/*/*.json`` (from ``python -m runner.connect SWEEP``) into one
    row per connected pair: ``group``, ``pair``, ``job_a``, ``job_b``, ``seed_a``, ``seed_b``,
    ``factor`` (the value in both jobs' ``config.yaml``; None when it is missing or differs),
    ``match`` (the two jobs' config without ``factor``, the seed and bookkeeping, plus the
    pair of seeds: equal for the pairs to compare), ``reason`` (why a row is unusable, else
    None), ``path``, and every scalar of the file (``linear_train_loss_barrier_mean``, ...).
    File names are ``<jobA>__<jobB>.json`` (hashed names for long ones:
    :func:`~landscope.geometry.pairs.pair_file_name`; the file's ``job_a``/``job_b`` win); the
    job directories are siblings in SWEEP."""
    sweep_dir = Path(sweep_dir)
    root = sweep_dir / "connectivity"
    if not root.is_dir():
        raise LandscopeError(f"no connectivity results in {sweep_dir}: run "
                             f"python -m runner.connect {sweep_dir} first")
    rows = []
    cache: dict[str, dict[str, Any] | None] = {}  # each job's config is read once
    for path in sorted(root.glob("*/*.json")):
        job_a, sep, job_b = path.stem.partition("__")
        row: dict[str, Any] = {"group": path.parent.name, "pair": path.stem, "job_a": job_a,
                               "job_b": job_b, "seed_a": None, "seed_b": None, factor: None,
                               "match": None, "reason": None, "path": str(path)}
        reasons = _read_pair_file(path, row)
        job_a, job_b = row["job_a"], row["job_b"]
        if not sep:
            reasons.append("file name is not <jobA>__<jobB>.json")
        configs = [_cached_config(sweep_dir, job, cache) if job else None
                   for job in (job_a, job_b)]
        if any(c is None for c in configs):
            reasons.append("missing or unreadable config.yaml of "
                           + " and ".join(j for j, c in zip((job_a, job_b), configs) if c is None))
        else:
            ca, cb = configs
            row["seed_a"], row["seed_b"] = ca.get("seed"), cb.get("seed")
            if factor not in ca or factor not in cb:
                reasons.append(f"{factor} not in the jobs' config")
            elif ca[factor] != cb[factor]:
                reasons.append(f"{factor} differs between the two jobs")
            else:
                row[factor] = ca[factor]
            rest = {k: v for k, v in ca.items()
                    if k not in (factor, "seed", *_NOT_SWEPT)
                   and not k.startswith(_NOT_SWEPT_PREFIXES)}
            seeds = sorted(str(as_number(s)) for s in (row["seed_a"], row["seed_b"]))
            row["match"] = json.dumps({"config": rest, "seeds": seeds}, sort_keys=True, default=str)
        row["reason"] = "; ".join(reasons) or None
        rows.append(row)
    if not rows:
        raise LandscopeError(f"no connectivity results in {root} (no */*.json files)")
    return pd.DataFrame(rows)
