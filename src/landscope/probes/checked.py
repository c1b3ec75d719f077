"""Whether stored probe scalars predate the multiplicity check (torch-free, so that
:mod:`landscope.analysis.collect` can ask without importing torch).

Since December 2026 every eigenvalue list of k >= 2 is checked for missed copies of a repeated
eigenvalue (:mod:`landscope.probes.complement`): one Lanczos run holds one direction of each
eigenspace, so an older top-k could list a repeated eigenvalue once and reach further down the
spectrum instead. Scalars written before carry no ``top_checked`` (``checked`` in a per-block
summary, ``<kind>_checked`` for the lists of ``probe.curvature``). The runner probes such a job
again (:class:`~landscope.jobresults.ProbeStage`); the analysis leaves out what such a list's
later entries decide (:data:`TOP_LIST_SCALARS`).
"""

from __future__ import annotations

import math

__all__ = ["CHECKED_CURVATURE_LISTS", "TOP_LIST_SCALARS", "predates_multiplicity_check",
           "top_list_predates_check"]

# the lists of probe.curvature whose scalars carry their eigenvalues and, since the check,
# ``<kind>_checked``
CHECKED_CURVATURE_LISTS = ("ggn", "fisher", "fisher_empirical", "ntk", "residual")

# The scalars of the top-k that depend on its entries after the first
# (:func:`landscope.probes.lanczos.spectral_summary`): a missed copy of λ1 makes λ2 the next
# distinct eigenvalue, and one of λk makes λk smaller. lambda_max is the first entry and stands.
TOP_LIST_SCALARS = ("lambda_2", "spectral_gap", "gap_ratio", "condition_number",
                    "lambda_min_positive")


def top_list_predates_check(scalars: object) -> bool:
    """A top-k of k >= 2 (a finite ``spectral_gap``) without ``top_checked``."""
    if not isinstance(scalars, dict):
        return False
    gap = scalars.get("spectral_gap")
    return (isinstance(gap, (int, float)) and not isinstance(gap, bool) and math.isfinite(gap)
            and "top_checked" not in scalars)


def predates_multiplicity_check(scalars: object) -> bool:
    """Whether probe scalars were written before their eigenvalue lists were checked for missed
    copies of repeated eigenvalues (December 2026): a top-k of k >= 2 (a finite
    ``spectral_gap``) without ``top_checked``, a per-block summary without ``checked``, or a
    ``probe.curvature`` list of k >= 2 without ``<kind>_checked``. A job holding such scalars is
    probed again (:class:`~landscope.jobresults.ProbeStage`): one Lanczos run may have listed a
    repeated eigenvalue too few times. (A bottom-k alone, without a top-k of k >= 2, is not
    recognized.)"""
    if not isinstance(scalars, dict):
        return False
    if top_list_predates_check(scalars):
        return True
    blocks = scalars.get("blocks")
    if isinstance(blocks, dict) and any(isinstance(b, dict) and "checked" not in b
                                        for b in blocks.values()):
        return True
    return any(isinstance(scalars.get(f"{kind}_top_eigenvalues"), list)
               and len(scalars[f"{kind}_top_eigenvalues"]) >= 2
               and f"{kind}_checked" not in scalars for kind in CHECKED_CURVATURE_LISTS)
