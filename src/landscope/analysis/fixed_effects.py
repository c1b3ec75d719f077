"""Seed fixed effects: seed codes and the within (demeaning) transformation.

Used where jobs share a seed across the settings of a sweep (H1: batch sizes compared within
a seed; the seed bootstrap of :mod:`~landscope.analysis.hypotheses.mediation`). The
cluster-robust fits themselves are :func:`landscope.analysis.inference.cluster_ols` (CR2,
where fixed effects nested in the clusters cost no degrees of freedom; the CR1 fit that
counted them, ``fe_ols``, is gone).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd


def _seed_keys(seeds: Sequence[Any]) -> np.ndarray:
    return np.asarray([str(int(s)) if isinstance(s, (int, float, np.integer, np.floating))
                       and math.isfinite(float(s)) and float(s).is_integer() else str(s)
                       for s in seeds], dtype=object)


def seed_codes(seeds: Sequence[Any]) -> np.ndarray:
    """Integer codes of the seeds (1 and 1.0 and "1" are one seed).

    >>> seed_codes([1, "1", 1.0, 2, 3, 2]).tolist()
    [0, 0, 0, 1, 2, 1]
    """
    return pd.factorize(_seed_keys(seeds))[0]


def within(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``values`` (n or n×p) minus their mean within each code (the seed fixed effects).

    >>> within(np.array([1.0, 3.0, 10.0, 20.0]), np.array([0, 0, 1, 1])).tolist()
    [-1.0, 1.0, -5.0, 5.0]
    """
    values = np.asarray(values, float)
    flat = values.reshape(len(values), -1)
    g = codes.max() + 1
    sums = np.zeros((g, flat.shape[1]))
    np.add.at(sums, codes, flat)
    means = sums / np.bincount(codes, minlength=g)[:, None]
    return (flat - means[codes]).reshape(values.shape)
