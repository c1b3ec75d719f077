"""H3's noise comparison at one minimum: SGD noise, isotropic noise of equal trace and noise in
the top-k Hessian eigendirections, paired within each source minimum.

**Data.**  ``python -m runner.escape SWEEP escape.noise=[sgd,isotropic,topk]
escape.lr_unit=stability escape.lrs=[0.5,0.8] ...`` continues every minimum of the sweep with
each noise type at the same learning rates (fractions of 2/λmax of that minimum, so η·λmax < 2:
no instability exit without noise), batch sizes and seeds (:mod:`landscope.escape`: isotropic
and top-k add Gaussian noise of SGD's trace ``tr Σ/B·(n−B)/(n−1)`` to the full-batch
gradient).  :func:`load_noise_escapes` reads those files (one row per continuation, the noise
type in the ``noise`` column).

**Per-minimum contrast** (:func:`minimum_contrast`).  For a noise type ``A`` against the
reference ``R`` (isotropic), the rows of one minimum with noise ``A`` or ``R`` are fitted by a
censored log-normal AFT (:func:`~landscope.analysis.hypotheses.survival.fit_aft`) with one
intercept per cell (learning rate × batch size) and the indicator of ``A``::

    log T_i = a_cell(i) + d·[noise_i = A] + σ ε_i

so ``d`` is the log escape-time ratio A : R at that minimum (negative: A escapes faster).
Cells without any escape carry no information on ``d`` and are left out.  When every kept run
of one type is censored and the other type has escapes, the MLE of ``d`` is infinite
(``separated``): ``d = ±∞``; when no run escaped at all, ``d = 0`` (no information).  A fit
that does not converge or is degenerate (all escape times tied: σ → 0) falls back to the
difference of mean log times with censored runs at ``max_steps`` (``imputed``).  Every
contrast is clipped to ``±C``, ``C = log(max_steps/eval_every)`` (the widest log ratio two
observed times can have).  Each of these rules is antisymmetric in the two labels.

**Test across minima** (:func:`sign_flip_test`).  The minima are the independent units.
Under the null that the noise type does not change the escape-time distribution at a minimum,
the labels A and R are exchangeable within it, so each (clipped) contrast is symmetric about 0
and the contrasts of different minima are independent: the statistic ``mean_g d_g`` is
compared with its values under all ``2^G`` sign flips (exact, ``G ≤ 12``) or ``n_flip``
random ones; two-sided p.  **Interval**: the shifts ``b`` that the test does not reject on
``clip(d_g − b)`` (test inversion; a separated minimum stays at ``±C``), NaN when even the
estimate is rejected (the effect lies beyond the censoring window).

**Contrasts.**  ``topk`` vs ``isotropic`` (the primary: H3 — Zhu et al. 2019 — predicts that
noise aligned with the sharp directions escapes faster at equal trace: d < 0) and ``sgd`` vs
``isotropic`` (SGD's own noise; d < 0 predicted).  Each is reported on its own (no
multiplicity correction; the primary is named before the data).  **Verdict**: ``supported``
when p < alpha and the mean contrast is negative, ``not supported`` when p < alpha and it is
positive, ``inconclusive`` otherwise or when ``2/2^G ≥ alpha`` (too few minima to reject).
Calibration: :mod:`landscope.analysis.calibration.h3` (``h3_noise_null``,
``h3_noise_planted``), quoted by :func:`evidence`.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from landscope.analysis.doc import short as _fmt
from landscope.analysis.hypotheses import survival as sv
from landscope.analysis.hypotheses.escapes import (
    ESCAPE_DIR,
    escape_jobs,
    is_noise_comparison,
    load_escapes,
)
from landscope.analysis.inference import invert_test

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
REFERENCE = "isotropic"
CONTRASTS = ("topk", "sgd")  # each against REFERENCE; topk first: the primary
TESTS = {"topk": "H3 noise: topk vs isotropic, per-minimum AFT contrast, sign-flip across minima",
         "sgd": "H3 noise: sgd vs isotropic, per-minimum AFT contrast, sign-flip across minima"}
MAX_EXACT = 12  # minima up to which all 2^G sign flips are enumerated
TABLE_COLUMNS = ["contrast", "predicted", "n_minima", "n_informative", "n_separated", "n_rows",
                 "estimate", "ci_low", "ci_high", "ratio", "clip", "test", "n_flips", "exact",
                 "p", "verdict", "reason"]


# --------------------------------------------------------------------------- data
def noise_fingerprints(path: str | Path) -> dict[str, int]:
    """``{fingerprint: number of jobs}`` of the complete noise-comparison escape files under a
    sweep or job directory (settings with ``escape.noise`` other than ``[sgd]``)."""
    root = Path(path)
    counts: dict[str, int] = {}
    if not root.is_dir():
        return counts
    for job in escape_jobs(root):
        for p in sorted((job.path / ESCAPE_DIR).glob("*.json")):
            try:
                rec = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict) and rec.get("complete") and is_noise_comparison(rec):
                counts[p.stem] = counts.get(p.stem, 0) + 1
    return counts


def load_noise_escapes(path: str | Path) -> Optional[pd.DataFrame]:
    """The noise-comparison escapes of a sweep (the fingerprint found in the most jobs; ties:
    the alphabetically first) as :func:`load_escapes` rows, or None when there are none."""
    counts = noise_fingerprints(path)
    if not counts:
        return None
    fp = sorted(counts, key=lambda k: (-counts[k], k))[0]
    df = load_escapes(path, settings=fp)
    if len(counts) > 1:
        df.attrs["notes"] = list(df.attrs.get("notes", [])) + [
            f"{len(counts)} noise-comparison settings; using {fp} ({counts[fp]} jobs)"]
    return df


# --------------------------------------------------------------------------- statistics
@dataclass
class Contrast:
    """One minimum's contrast: ``d`` (log escape-time ratio A : R, ±inf when separated),
    ``kind`` (aft, separated, no escapes, imputed), rows used."""

    d: float
    kind: str
    n_rows: int


def minimum_contrast(rows: pd.DataFrame, a: str, ref: str = REFERENCE) -> Contrast:
    """The contrast of noise ``a`` against ``ref`` at one minimum (module docstring).
    ``rows``: that minimum's rows with ``noise``, ``escaped``, ``time``, ``lr``,
    ``batch_size``, ``max_steps``."""
    r = rows[rows["noise"].isin([a, ref])]
    cell = pd.factorize(pd.Series([f"{lr:.12g}/{b}" for lr, b in
                                   zip(r["lr"].to_numpy(float), r["batch_size"])]))[0]
    ev = r["escaped"].to_numpy(bool)
    informative = np.isin(cell, np.unique(cell[ev]))
    r, cell, ev = r[informative], cell[informative], ev[informative]
    if not ev.any():
        return Contrast(0.0, "no escapes", 0)
    is_a = (r["noise"] == a).to_numpy()
    if not ev[is_a].any():
        return Contrast(math.inf, "separated", len(r))
    if not ev[~is_a].any():
        return Contrast(-math.inf, "separated", len(r))
    y = np.log(r["time"].to_numpy(float))
    codes = pd.factorize(pd.Series(cell))[0]
    x = np.column_stack([np.eye(int(codes.max()) + 1)[codes], is_a.astype(float)])
    if np.ptp(y[ev]) > 0 or (~ev).any():
        fit = sv.fit_aft(y, x, ev)
        d = float(fit.params[-1])
        if fit.converged and math.isfinite(d) and fit.sigma > 1e-6:
            return Contrast(d, "aft", len(r))
    cap = np.log(r["max_steps"].to_numpy(float))
    yy = np.where(ev, y, cap)
    return Contrast(float(yy[is_a].mean() - yy[~is_a].mean()), "imputed", len(r))


def sign_flip_test(d: np.ndarray, n_flip: int = 9999, seed: int = 0
                   ) -> tuple[float, float, int, bool]:
    """``(statistic, p, flips, exact)``: the mean of ``d`` and its two-sided sign-flip p
    (all 2^G flips when ``G ≤`` :data:`MAX_EXACT`, else ``n_flip`` random ones)."""
    d = np.asarray(d, float)
    g = len(d)
    stat = float(d.mean())
    signs = _signs(g, n_flip, seed)
    null = signs @ d / g
    hits = int(np.sum(np.abs(null) >= abs(stat) * (1 - 1e-9) - 1e-12))
    exact = g <= MAX_EXACT
    p = hits / len(signs) if exact else (1 + hits) / (1 + len(signs))
    return stat, p, len(signs), exact


def _signs(g: int, n_flip: int, seed: int) -> np.ndarray:
    if g <= MAX_EXACT:
        return np.array(list(itertools.product((1.0, -1.0), repeat=g))).reshape(-1, g)
    return np.random.default_rng(seed).choice((1.0, -1.0), size=(n_flip, g))


def _interval(raw: np.ndarray, clip: float, alpha: float, estimate: float, n_flip: int,
              seed: int, iters: int = 30) -> tuple[float, float]:
    def p_at(b: float) -> float:
        return sign_flip_test(np.clip(raw - b, -clip, clip), n_flip, seed)[1]

    if p_at(estimate) < alpha:
        return math.nan, math.nan
    steps = [k * max(clip, 1.0) for k in (0.25, 0.5, 1, 2, 4, 8)]
    return invert_test(p_at, estimate, steps, alpha, iters)


@dataclass
class NoiseResult:
    """The outcome of :func:`noise_test`: one row per contrast (:data:`TABLE_COLUMNS`), the
    per-minimum contrasts (job, contrast, d, kind, n_rows) and notes."""

    table: pd.DataFrame
    minima: pd.DataFrame
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)

    def row(self, contrast: str = "topk") -> pd.Series:
        hit = self.table[self.table["contrast"].isin([contrast, f"{contrast} vs {REFERENCE}"])]
        if hit.empty:
            raise KeyError(contrast)
        return hit.iloc[0]

    @property
    def verdict(self) -> str:
        return str(self.row("topk")["verdict"])


def _timed(escapes: pd.DataFrame) -> pd.DataFrame:
    """The rows with a finite positive ``time`` (escape step, or ``max_steps`` when
    censored); raises :class:`LandscopeError` when a needed column is missing."""
    need = {"job", "noise", "escaped", "escape_step", "max_steps", "eval_every", "lr",
            "batch_size"}
    missing = need - set(escapes.columns)
    if missing:
        from landscope.errors import LandscopeError

        raise LandscopeError(f"H3 noise: no column(s) {', '.join(sorted(missing))}")
    d = escapes.copy()
    d["escaped"] = d["escaped"].astype(bool)
    step = pd.to_numeric(d["escape_step"], errors="coerce")
    d["time"] = np.where(d["escaped"], step, pd.to_numeric(d["max_steps"], errors="coerce"))
    return d[np.isfinite(d["time"]) & (d["time"] > 0)]


def _decide(base: dict[str, Any], a: str, g: int, stat: float, p: float, exact: bool,
            alpha: float) -> None:
    """Set the verdict and reason of contrast ``a``'s row ``base`` (``g`` minima)."""
    if exact and 2 / 2 ** g >= alpha:
        base["reason"] = (f"too few minima: the smallest sign-flip p with {g} minima is "
                          f"{2 / 2 ** g:.3g} >= {alpha:g}")
    elif base["n_informative"] == 0:
        base["reason"] = "no run escaped"
    elif p < alpha and stat < 0:
        base.update(verdict=SUPPORTED, reason=f"{a} escapes faster (p={p:.3g} < {alpha:g})")
    elif p < alpha and stat > 0:
        base.update(verdict=NOT_SUPPORTED, reason=f"{a} escapes slower, against the "
                    f"prediction (p={p:.3g} < {alpha:g})")
    else:
        base["reason"] = f"not significant (p={p:.3g} >= {alpha:g})"


def noise_test(escapes: pd.DataFrame, alpha: float = 0.05, n_flip: int = 9999, seed: int = 0,
               interval: bool = True) -> NoiseResult:
    """The paired noise comparison on :func:`load_noise_escapes` rows (module docstring):
    per-minimum contrasts of ``topk`` and ``sgd`` against ``isotropic``, each tested by sign
    flips across minima."""
    d = _timed(escapes)
    notes = list(escapes.attrs.get("notes", []))
    rows, per = [], []
    for a in CONTRASTS:
        base = {c: math.nan for c in TABLE_COLUMNS}
        base.update(contrast=f"{a} vs {REFERENCE}", predicted="negative", test=TESTS[a],
                    verdict=INCONCLUSIVE, reason="")
        jobs = sorted(set(d.loc[d["noise"] == a, "job"]) & set(d.loc[d["noise"] == REFERENCE,
                                                                      "job"]))
        if not jobs:
            base.update(n_minima=0, reason=f"no minimum has both {a} and {REFERENCE} runs")
            rows.append(base)
            continue
        cs = [minimum_contrast(d[d["job"] == j], a) for j in jobs]
        per += [{"job": j, "contrast": f"{a} vs {REFERENCE}", "d": c.d, "kind": c.kind,
                 "n_rows": c.n_rows} for j, c in zip(jobs, cs)]
        sub = d[d["job"].isin(jobs)]
        clip = float(np.log(sub["max_steps"].max() / sub["eval_every"].min()))
        raw = np.array([c.d for c in cs])
        dc = np.clip(raw, -clip, clip)
        g = len(jobs)
        stat, p, flips, exact = sign_flip_test(dc, n_flip, seed)
        base.update(n_minima=g, n_informative=int(sum(c.kind != "no escapes" for c in cs)),
                    n_separated=int(sum(c.kind == "separated" for c in cs)),
                    n_rows=int(sub["noise"].isin([a, REFERENCE]).sum()), estimate=stat,
                    ratio=math.exp(stat), clip=clip, n_flips=flips, exact=exact, p=p)
        _decide(base, a, g, stat, p, exact, alpha)
        if interval and base["n_informative"]:
            base["ci_low"], base["ci_high"] = _interval(raw, clip, alpha, stat, n_flip, seed)
        if base["n_separated"]:
            notes.append(f"{a} vs {REFERENCE}: in {base['n_separated']} of {g} minima one noise "
                         f"type never escaped while the other did; their contrast is at the clip "
                         f"±{clip:.3g} = ±log(max_steps/eval_every), so the mean is a bound there")
        rows.append(base)
    return NoiseResult(table=pd.DataFrame(rows, columns=TABLE_COLUMNS),
                       minima=pd.DataFrame(per, columns=["job", "contrast", "d", "kind",
                                                         "n_rows"]),
                       alpha=alpha, notes=notes)


def evidence(res: NoiseResult, contrast: str = "topk") -> str:
    """The verdict of one contrast with its evidence: estimate, interval, n minima, the test
    and its calibration (:func:`~landscope.analysis.calibration.calibration_note`)."""
    from landscope.analysis.calibration import calibration_note

    r = res.row(contrast)
    name = TESTS[contrast]
    if not (isinstance(r["p"], float) and math.isfinite(r["p"])):
        return f"{r['verdict']} ({r['reason']}; n = {r['n_minima']} minima)"
    ci = (f"95 % CI [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] (sign-flip inversion)"
          if math.isfinite(r["ci_low"]) or math.isfinite(r["ci_high"])
          else "no interval (the effect lies beyond the censoring window or was not computed)")
    return (f"{r['verdict']}: mean per-minimum log escape-time ratio {r['contrast']} "
            f"{_fmt(r['estimate'])} (×{_fmt(r['ratio'])}), {ci}, p = {_fmt(r['p'])} "
            f"({'exact, ' if r['exact'] else ''}{int(r['n_flips'])} sign flips), n = "
            f"{int(r['n_minima'])} minima ({int(r['n_informative'])} with escapes, "
            f"{int(r['n_separated'])} separated); {name}; {calibration_note(name)}")


_SHOWN = [("contrast", "contrast"), ("predicted", "predicted sign"), ("n_minima", "minima"),
          ("n_informative", "with escapes"), ("n_separated", "separated"), ("n_rows", "runs"),
          ("estimate", "mean log ratio"), ("ci_low", "CI low"), ("ci_high", "CI high"),
          ("ratio", "time ratio"), ("p", "p"), ("verdict", "verdict")]


def section_part(ctx) -> None:
    """The noise comparison's paragraphs in the H3 report section; nothing when the report's
    sweeps hold no noise-comparison escapes."""
    from landscope.io import atomic_write_text

    frames = [f for f in (load_noise_escapes(p) for p in ctx.paths) if f is not None]
    if not frames:
        return
    df = pd.concat(frames, ignore_index=True)
    df.attrs["notes"] = [n for f in frames for n in f.attrs.get("notes", [])]
    doc = ctx.doc
    res = noise_test(df)
    kinds = ", ".join(sorted(df["noise"].unique()))
    frac = df["lr_fraction"].dropna().unique() if "lr_fraction" in df else []
    doc.para(f"Noise comparison at each minimum ({kinds}; "
             + (f"η = {', '.join(f'{v:g}' for v in sorted(frac))} × 2/λmax" if len(frac)
                else "η as set") +
             "; isotropic and top-k noise of SGD's trace tr Σ/B added to the full-batch "
             f"gradient): top-k vs isotropic — {evidence(res, 'topk')}. SGD vs isotropic — "
             f"{evidence(res, 'sgd')}. Per minimum: a censored log-normal AFT with one intercept "
             "per (η, B) cell and the noise type as regressor; the minima are the units (sign "
             "flips of the per-minimum contrasts).")
    doc.frame(res.table, _SHOWN)
    for note in res.notes:
        doc.para(f"Note: {note}")
    atomic_write_text(ctx.out / "h3_noise.csv", res.table.to_csv(index=False))
    atomic_write_text(ctx.out / "h3_noise_minima.csv", res.minima.to_csv(index=False))
