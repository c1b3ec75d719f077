"""H1's test (:mod:`landscope.analysis.hypotheses.h1`, whose docstring gives every rule): the
jobs used, the mediation fit, its table and the verdict (:func:`h1_test`, :func:`decide`)."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from landscope.analysis.doc import short as _fmt
from landscope.analysis.fixed_effects import seed_codes, within
from landscope.analysis.hypotheses.h1_jobs import off_target, read_jobs
from landscope.analysis.hypotheses.h1_result import (
    DESIGN,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    TABLE_COLUMNS,
    TESTS,
    H1Result,
    _ci,
)
from landscope.analysis.hypotheses.mediation import Effect, Mediation, mediation
from landscope.wording import counted


def _design_columns(rows: pd.DataFrame, design: Sequence[str]) -> tuple[list[str], np.ndarray,
                                                                        str]:
    """The design columns that vary across ``rows``: names, covariates (log2 for a positive
    column, else the value) and the design in words."""
    names, cols, words = [], [], []
    for col in design:
        if col not in rows.columns:
            continue
        v = rows[col].to_numpy(float)
        if not np.isfinite(v).all() or np.ptp(v) == 0:
            continue
        pos = bool((v > 0).all())
        names.append(f"log2({col})" if pos else col)
        cols.append(np.log2(v) if pos else v)
        words.append(f"{col} ∈ {{{', '.join(f'{x:g}' for x in np.unique(v))}}}")
    if not names:
        return [], np.empty((len(rows), 0)), ("batch size only (λmax is varied by the batch "
                                              "size alone; b′ rests on λmax's scatter within "
                                              "a batch size)")
    return names, np.column_stack(cols), ("λmax varied within each batch size by "
                                          + " and ".join(words) + " (a covariate of (a), "
                                          "assumed to act on test error only through λmax)")


def _effect_row(step: str, relation: str, e: Effect, unit: str, interval: str, n: int,
                g: int, test: str, calibration: str) -> dict[str, Any]:
    return {"step": step, "relation": relation, "effect": e.estimate, "effect_unit": unit,
            "se": e.se, "df": e.df, "p": e.p, "ci_low": e.ci_low, "ci_high": e.ci_high,
            "interval": interval, "n": n, "n_seeds": g, "test": test,
            "calibration": calibration}


def decide(fit: Mediation, alpha: float = 0.05) -> tuple[str, str]:
    """The verdict word and its reason (the evidence) from a fitted chain (module docstring)."""
    from landscope.analysis.calibration import calibration_note

    a, ind, direct = fit.a, fit.indirect, fit.direct
    evidence = (f"indirect a·b′ = {_ci(ind)} per doubling (seed bootstrap, {fit.n_boot} draws, "
                f"widened ×{fit.expansion:.2f}); a = {_ci(a)} λmax per doubling "
                f"({'per-seed slope t' if fit.a_per_seed else 'CR2'} p = {_fmt(a.p)}); "
                f"direct c′ = {_ci(direct)} per doubling (CR2 p = "
                f"{_fmt(direct.p)}); {fit.n_seeds} seeds, {fit.n} jobs; "
                f"{calibration_note(TESTS['verdict'])}")
    a_pos = a.p < alpha and a.estimate > 0
    a_neg = a.p < alpha and a.estimate < 0
    if a_pos and ind.sign > 0:
        return SUPPORTED, ("λmax rises with the batch size and the indirect effect through "
                           f"λmax is positive: {evidence}")
    if ind.sign < 0:
        return NOT_SUPPORTED, f"the indirect effect through λmax is negative: {evidence}"
    if a_neg:
        return NOT_SUPPORTED, f"λmax falls with the batch size: {evidence}"
    if direct.p < alpha and ind.sign == 0:
        way = "raises" if direct.estimate > 0 else "lowers"
        return NOT_SUPPORTED, (f"direct effect only: the batch size {way} test error at equal "
                               f"λmax while the indirect interval includes 0: {evidence}")
    why = "(a) not significant" if not a_pos else "the indirect interval includes 0"
    return INCONCLUSIVE, f"{why}: {evidence}"


def _mark_used(data: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Set ``data["used"]``: the jobs that reached the target with finite values and share
    their seed with another such job. Returns the jobs dropped for non-finite values; the
    notes say how many were left out and why."""
    need = ["lambda_max", "log2_batch", "test_error", "train_loss"]
    reached = data["reached"].to_numpy(bool)
    finite = np.isfinite(data[need].to_numpy(float)).all(axis=1)
    dropped = pd.DataFrame(
        [{"job": r.job, "seed": r.seed, "batch_size": r.batch_size,
          "reason": "non-finite " + ", ".join(c for c in need if not math.isfinite(getattr(r, c)))}
         for r in data[reached & ~finite].itertuples(index=False)],
        columns=["job", "seed", "batch_size", "reason"])
    if len(dropped):
        notes.append(f"{counted(len(dropped), 'job')} without finite values left out")
    used = reached & finite
    codes = seed_codes(data["seed"].to_numpy())
    sizes = np.bincount(codes[used], minlength=codes.max() + 1 if len(codes) else 0)
    alone = used & (sizes[codes] == 1) if len(codes) else used
    if alone.any():
        notes.append(f"{counted(int(alone.sum()), 'job')} alone in their seed left out (no "
                     "within-seed comparison)")
    data["used"] = used & ~alone
    return dropped


def _effects_table(fit: Mediation, n: int, g: int, n_boot: int, batch: str, target: str,
                   control: str, dnames: Sequence[str], ynames: Sequence[str], use_tl: bool
                   ) -> pd.DataFrame:
    """The table of :class:`H1Result` (TABLE_COLUMNS): a, b′, c′ (direct), a·b′ (indirect),
    c (total) and the sensitivity rows, with their tests and calibration phrases."""
    from landscope.analysis.calibration import calibration_note

    measure = ynames[0]
    cr2 = "CR2 t interval"
    test = "OLS with seed intercepts, CR2 SE clustered by seed, Satterthwaite df"
    cal = {k: calibration_note(v) for k, v in TESTS.items()}
    doubling = "test error per doubling of the batch size"
    table = [
        _effect_row("a", f"{measure} ~ log2({batch})" + "".join(f" + {d}" for d in dnames)
                    + " + seed", fit.a, "λmax per doubling",
                    "per-seed t interval" if fit.a_per_seed else cr2, n, g,
                    f"t-test on the {g} per-seed slopes (Ibragimov–Müller), t on {g - 1} df"
                    if fit.a_per_seed else test, cal["a"]),
        _effect_row("b′", f"{target} ~ " + " + ".join(ynames) + " + seed", fit.b,
                    "test error per unit λmax at equal batch size and train loss", cr2, n, g,
                    test, cal["b"]),
        _effect_row("c′ (direct)", f"log2({batch}) in (b′)", fit.direct, doubling, cr2, n, g,
                    test, cal["direct"]),
        _effect_row("a·b′ (indirect)", "product of coefficients", fit.indirect, doubling,
                    f"seed bootstrap percentile, widened ×{fit.expansion:.2f}", n, g,
                    f"seed-level bootstrap ({n_boot} draws, both equations refitted)",
                    cal["indirect"]),
        _effect_row("c (total)", f"{target} ~ log2({batch})" + (f" + {control}" if use_tl
                                                                 else "") + " + seed",
                    fit.total, doubling, cr2, n, g, test, ""),
    ]
    for name, e in fit.extra.items():
        table.append(_effect_row(name, "sensitivity: b′ with the design column in (b′) too",
                                 e, "test error per unit λmax", cr2, n, g, test, ""))
    return pd.DataFrame(table, columns=TABLE_COLUMNS)


# --------------------------------------------------------------------------- the test
def h1_test(jobs: pd.DataFrame, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0, *,
            batch: str = "train.batch_size", measure: str = "probe.lambda_max",
            target: str = "test_error", control: str = "final.train_loss",
            cluster: str = "seed", target_loss: Optional[float] = None,
            design: Sequence[str] = DESIGN) -> H1Result:
    """Test H1 as a mediation claim on a collected jobs table (module docstring).

    ``target_loss``: the train loss every job was trained to (default: each job's
    ``train.target_train_loss``). ``design``: columns that may vary λmax within a batch size.
    Raises :class:`LandscopeError` on a missing column, no included job or fewer than two
    batch sizes."""
    data, common, notes = read_jobs(jobs, batch, measure, target, control, cluster, target_loss,
                                 extra=[c for c in design if c in jobs.columns])
    off = off_target(data)
    if len(off):
        notes.append(f"{len(off)} of {counted(len(data), 'job')} did not reach the target "
                     "train loss: left out")
    dropped = _mark_used(data, notes)
    rows = data[data["used"]].reset_index(drop=True)
    dnames, dcols, words = _design_columns(rows, design)
    res = H1Result(table=pd.DataFrame(columns=TABLE_COLUMNS), verdict=INCONCLUSIVE, reason="",
                   design=words, data=data, off_target=off, dropped=dropped,
                   target_loss=common, alpha=alpha, batch=batch, measure=measure, notes=notes)
    seeds = rows["seed"].to_numpy()
    g = len(np.unique(seed_codes(seeds))) if len(rows) else 0
    x, m, y = (rows[c].to_numpy(float) for c in ("log2_batch", "lambda_max", "test_error"))
    tl = rows["train_loss"].to_numpy(float)
    if g < 3 or len(rows) < g + 3 + dcols.shape[1] or np.ptp(within(x, seed_codes(seeds))) == 0:
        res.reason = (f"too few usable jobs or seeds ({len(rows)} jobs, {g} seeds; the seed "
                      "bootstrap needs at least 3 seeds and batch sizes varying within seeds)")
        return res
    use_tl = bool(np.ptp(within(tl, seed_codes(seeds))) > 0)
    if not use_tl:
        notes.append("train loss does not vary within seeds: dropped from (b′)")
    w_y = tl[:, None] if use_tl else None
    ynames = [measure, f"log2({batch})"] + ([control] if use_tl else [])
    sens = {f"b′ | {' + '.join(dnames)}": dcols} if dnames else {}
    try:
        fit = mediation(x, m, y, seeds, w_m=dcols if dnames else None, w_y=w_y, n_boot=n_boot,
                        seed=seed, sensitivity=sens)
    except (np.linalg.LinAlgError, ValueError) as exc:
        res.reason = f"singular design ({exc})"
        return res
    if fit.n_singular:
        notes.append(f"{fit.n_singular} of {n_boot} bootstrap draws singular, dropped")
    res.fit = fit
    res.designs = {
        f"H1 (a): {measure} ~ log2({batch})" + "".join(f" + {d}" for d in dnames) + " + seed":
            (m, np.column_stack([x, dcols]), [f"log2({batch})", *dnames], seeds),
        f"H1 (b′): {target} ~ " + " + ".join(ynames) + " + seed":
            (y, np.column_stack([m, x] + ([tl] if use_tl else [])), ynames, seeds)}
    res.table = _effects_table(fit, len(rows), g, n_boot, batch, target, control, dnames,
                               ynames, use_tl)
    res.verdict, res.reason = decide(fit, alpha)
    return res
