"""H4's data (:mod:`landscope.analysis.hypotheses.h4`): the bound and complexity columns of
the jobs table, each job's configuration label and the chance error of its dataset."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

HESSIAN = "probe.pacbayes_hessian"
ISOTROPIC = "probe.pacbayes_isotropic"
NAIVE = "probe.pacbayes_naive"
BOUNDS = {"naive": NAIVE, "isotropic": ISOTROPIC, "hessian": HESSIAN}
IS_ISOTROPIC = "probe.pacbayes_hessian_is_isotropic"
MATCHED = {"isotropic": "probe.pacbayes_matched_complexity_isotropic",
           "hessian": "probe.pacbayes_matched_complexity_hessian"}
COMPLEXITY = {k: f"probe.pacbayes_complexity_{k}" for k in ("naive", "isotropic", "hessian")}
CHANCE_ERROR = 0.9  # error of guessing uniformly among 10 classes (mnist1d, mnist, cifar10)
_NOT_CONFIG = ("seed", "dataset.seed", "name", "resume")


def _numeric(jobs: pd.DataFrame, column: str) -> pd.Series:
    if column in jobs.columns:
        return pd.to_numeric(jobs[column], errors="coerce").astype(float)
    if column == "test_error" and "final.test_acc" in jobs.columns:
        return 1.0 - pd.to_numeric(jobs["final.test_acc"], errors="coerce").astype(float)
    if column == "train_error" and "final.train_acc" in jobs.columns:
        return 1.0 - pd.to_numeric(jobs["final.train_acc"], errors="coerce").astype(float)
    return pd.Series(np.nan, index=jobs.index, dtype=float)


def config_labels(jobs: pd.DataFrame, config_keys: Sequence[str] | None = None) -> pd.Series:
    """One label per job naming its configuration: the values of ``config_keys`` (default:
    every config column that varies across the jobs, seeds excluded)."""
    if config_keys is None:
        from landscope.analysis.collect import swept_keys

        measured = ("probe.", "landscape.", "final.")
        candidates = [c for c in jobs.columns if "." in c and not c.startswith(measured)
                      and c not in _NOT_CONFIG]
        config_keys = swept_keys(jobs, candidates)
    keys = [k for k in config_keys if k in jobs.columns and k not in _NOT_CONFIG]
    if not keys:
        return pd.Series("all", index=jobs.index)
    return jobs[keys].astype(str).agg("|".join, axis=1)


def chance_error(jobs: pd.DataFrame) -> float:
    """``1 - 1/classes`` of the jobs' dataset: ``dataset.classes`` when set (0.5 for two),
    0.99 for cifar100, else 0.9 (10 classes); the largest when jobs differ."""
    import json

    values = []
    chosen = jobs["dataset.classes"] if "dataset.classes" in jobs else pd.Series(None, jobs.index)
    names = jobs["dataset.name"] if "dataset.name" in jobs else pd.Series("", jobs.index)
    for c, n in zip(chosen, names):
        if isinstance(c, str):
            try:
                c = json.loads(c)
            except ValueError:
                c = None
        if isinstance(c, (list, tuple)) and len(c) >= 2:
            values.append(1.0 - 1.0 / len(c))
        else:
            values.append(0.99 if str(n) == "cifar100" else CHANCE_ERROR)
    return max(values) if values else CHANCE_ERROR


def _from_pieces(jobs: pd.DataFrame, name: str) -> pd.Series:
    """The complexity term from ``kl_*``, ``*_prior_j``, ``m`` and ``delta`` (jobs probed before
    the complexity was stored)."""
    kl, j = (_numeric(jobs, f"probe.pacbayes_kl_{name}"),
             _numeric(jobs, f"probe.pacbayes_{name}_prior_j"))
    m, delta = _numeric(jobs, "probe.pacbayes_m"), _numeric(jobs, "probe.pacbayes_delta")
    with np.errstate(divide="ignore", invalid="ignore"):
        return (kl + 2 * np.log(j) + np.log(math.pi ** 2 * m / (6 * delta))) / (m - 1)


def complexities(jobs: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """Per job the complexity terms ``hessian``, ``isotropic`` (at matched posterior error when
    the jobs carry them) and ``naive``; the flag says whether they are matched."""
    matched = all(c in jobs.columns for c in MATCHED.values()) and bool(
        np.isfinite(_numeric(jobs, MATCHED["hessian"])).any())
    out = pd.DataFrame(index=jobs.index)
    for name in ("hessian", "isotropic"):
        col = MATCHED[name] if matched else COMPLEXITY[name]
        out[name] = _numeric(jobs, col) if col in jobs.columns else _from_pieces(jobs, name)
    naive = _numeric(jobs, COMPLEXITY["naive"])
    if not np.isfinite(naive).any() and "probe.pacbayes_naive_log_hypotheses" in jobs.columns:
        naive = ((_numeric(jobs, "probe.pacbayes_naive_log_hypotheses")
                  + np.log(1 / _numeric(jobs, "probe.pacbayes_delta")))
                 / _numeric(jobs, "probe.pacbayes_m"))
    out["naive"] = naive
    return out, matched
