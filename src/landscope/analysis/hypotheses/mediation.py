"""A single-mediator chain X → M → Y with seed fixed effects (H1: batch size → λmax → test
error), estimated as the product of coefficients (Baron & Kenny 1986; MacKinnon 2008,
"Introduction to statistical mediation analysis", ch. 4) with a seed-level cluster bootstrap.

Two equations, each with one intercept per seed (the seed fixed effects) and the same rows:

- mediator: ``M ~ X + W_m + seed``: ``a`` = the coefficient of X;
- outcome:  ``Y ~ M + X + W_y + seed``: ``b`` (b′) = the coefficient of M *given X*, and the
  direct effect ``c′`` = the coefficient of X given M;
- total (reported): ``Y ~ X + W_y + seed``: ``c``;
- indirect effect = ``a · b``; with OLS on the same rows ``c = c′ + a·b`` when ``W_m`` equals
  ``W_y`` (otherwise approximately).

Tests and intervals of b′, c′ and c: :func:`~landscope.analysis.inference.cluster_ols`
(OLS with seed dummies, CR2 standard errors clustered by seed, Bell–McCaffrey/Satterthwaite df,
t interval). Step (a) is tested by the t-test on per-seed slopes (:func:`per_seed_t`, exact in
the balanced designs the presets run): CR2 rejects simulated null sweeps of 6 seeds × 5 batch
sizes above its level while the per-seed test holds it (docs/measurements.md#analysis-mediation);
CR2 is the fallback when a seed cannot fit the equation alone. The indirect effect's point estimate
uses the fixed-effects a (equal to the mean per-seed slope in a balanced design). The indirect
effect a·b′ has no usable t-test (its distribution is a product); its interval is a percentile
bootstrap resampling **seeds** with replacement (``n_boot`` draws of
``numpy.random.default_rng(seed)``): every draw refits both equations on the resample (weighted
least squares on the within-seed data, a job weighted by how often its seed was drawn, which equals
the fixed-effects fit on the stacked resample), so a and b′ keep their dependence. With few seeds
the percentile interval is too narrow (each resample holds about 63 % of the seeds): on simulated
sweeps of 6 seeds where b′ = 0 the plain interval excludes zero on one side well above the nominal
2.5 %. The interval is therefore widened about the estimate by sqrt(G/(G − 1)) · t_{G−1}/z
(:func:`expansion`; 1.44 at G = 6, 1.22 at G = 10), which brings the rate back to about its level
(the rates: docs/measurements.md#analysis-mediation). Draws
where either equation is singular (too few distinct seeds drawn) are dropped and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from landscope.analysis.fixed_effects import seed_codes, within


@dataclass
class Effect:
    """One coefficient: estimate, CR2 test and interval (a·b′: bootstrap interval only)."""

    name: str
    estimate: float
    se: float = math.nan
    df: float = math.nan
    p: float = math.nan
    ci_low: float = math.nan  # CR2 t interval; indirect: the widened seed-bootstrap interval
    ci_high: float = math.nan

    @property
    def sign(self) -> int:
        """+1 / −1 when the interval excludes zero on that side, 0 otherwise."""
        if not (math.isfinite(self.ci_low) and math.isfinite(self.ci_high)):
            return 0
        return 1 if self.ci_low > 0 else -1 if self.ci_high < 0 else 0


@dataclass
class Mediation:
    a: Effect  # X → M
    b: Effect  # M → Y given X (b′)
    direct: Effect  # X → Y given M (c′)
    indirect: Effect  # a·b′
    total: Effect  # X → Y (c)
    n: int
    n_seeds: int
    n_boot: int
    n_singular: int  # bootstrap draws dropped
    level: float = 0.95
    expansion: float = 1.0  # the factor the indirect effect's percentile interval was widened by
    a_per_seed: bool = False  # step (a) tested by the per-seed slopes' t-test (else CR2)
    extra: dict[str, Effect] = field(default_factory=dict)  # sensitivity fits (CR2)
    draws: np.ndarray = field(default=None, repr=False)  # the bootstrap draws of a·b′

    @property
    def effects(self) -> list[Effect]:
        return [self.a, self.b, self.direct, self.indirect, self.total, *self.extra.values()]


def _design(cols: Sequence[np.ndarray], codes: np.ndarray) -> np.ndarray:
    n = len(codes)
    parts = [np.asarray(c, float).reshape(n, -1) for c in cols if c is not None]
    return np.column_stack(parts) if parts else np.empty((n, 0))


def _cr2(y: np.ndarray, X: np.ndarray, codes: np.ndarray, k: int, level: float
         ) -> list[tuple[float, ...]]:
    """CR2 (estimate, se, df, p, ci_low, ci_high) of the first ``k`` columns of ``X`` with
    seed dummies (no intercept: the dummies span it)."""
    from landscope.analysis.inference import cluster_ols

    dummies = (codes[:, None] == np.arange(codes.max() + 1)[None, :]).astype(float)
    fit = cluster_ols(y, np.column_stack([X, dummies]), codes, level=level)
    return [tuple(float(v[j]) for v in (fit.coef, fit.se, fit.df, fit.p, fit.ci_low,
                                        fit.ci_high)) for j in range(k)]


def per_seed_t(y: np.ndarray, X: np.ndarray, codes: np.ndarray, level: float
               ) -> tuple[float, ...] | None:
    """The t-test on per-seed estimates (Ibragimov & Müller 2010, "t-statistic based
    correlation and heterogeneity robust inference", JBES 28(4)): OLS of ``y`` on [1, X] within
    each seed, then a one-sample t-test of the first column's G slopes on G − 1 df. Exact for
    normal errors when every seed holds the same design, and valid (conservative) for few
    clusters otherwise. Returns (estimate, se, df, p, ci_low, ci_high), or None when a seed
    cannot fit the equation (too few rows, no variation)."""
    from scipy import stats

    slopes = []
    for g in range(int(codes.max()) + 1):
        rows = codes == g
        Xg = np.column_stack([np.ones(rows.sum()), X[rows]])
        if rows.sum() <= Xg.shape[1] or np.linalg.matrix_rank(Xg) < Xg.shape[1]:
            return None
        slopes.append(np.linalg.lstsq(Xg, y[rows], rcond=None)[0][1])
    slopes = np.asarray(slopes)
    G = len(slopes)
    if G < 2:
        return None
    est, se = float(slopes.mean()), float(slopes.std(ddof=1) / math.sqrt(G))
    q = float(stats.t.ppf(0.5 + level / 2, G - 1))
    p = float(2 * stats.t.sf(abs(est / se), G - 1)) if se > 0 else math.nan
    return est, se, float(G - 1), p, est - q * se, est + q * se


def boot_weights(codes: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) weights: how often each row's seed was drawn in each seed resample."""
    g = int(codes.max()) + 1
    draws = np.random.default_rng(seed).integers(0, g, size=(n_boot, g))
    counts = np.zeros((n_boot, g))
    np.add.at(counts, (np.repeat(np.arange(n_boot), g), draws.ravel()), 1.0)
    return counts[:, codes]


def boot_fe(y: np.ndarray, X: np.ndarray, codes: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(n_boot, p) fixed-effects slopes refitted under each weight row; NaN rows: singular."""
    yt, Xt = within(y, codes), within(X, codes).reshape(len(y), -1)
    xtwx = np.einsum("bn,ni,nj->bij", w, Xt, Xt)
    xtwy = np.einsum("bn,ni,n->bi", w, Xt, yt)
    out = np.full((len(w), Xt.shape[1]), np.nan)
    # a draw is singular when a regressor has no within-seed variation left in it
    scale = np.einsum("bn,ni->bi", w, Xt ** 2).max(axis=1, initial=0.0)
    with np.errstate(all="ignore"):
        cond = np.linalg.cond(xtwx)
    ok = np.isfinite(cond) & (cond < 1e10) & (scale > 0)
    if ok.any():
        out[ok] = np.linalg.solve(xtwx[ok], xtwy[ok][..., None])[..., 0]
    return out


def _interval(draws: np.ndarray, level: float, est: float, f: float) -> tuple[float, float]:
    if len(draws) < 2:
        return math.nan, math.nan
    q = 100 * (1 - level) / 2
    lo, hi = np.percentile(draws, [q, 100 - q])
    return float(est + f * (lo - est)), float(est + f * (hi - est))


def expansion(g: int, level: float = 0.95) -> float:
    """The factor that widens a percentile interval from ``g`` resampled seeds about the
    estimate: sqrt(g/(g − 1)) · t_{g−1}/z (1 when g < 2).

    >>> round(expansion(6), 2), round(expansion(10), 2), expansion(1)
    (1.44, 1.22, 1.0)
    """
    if g < 2:
        return 1.0
    from scipy import stats

    q = 0.5 + level / 2
    return math.sqrt(g / (g - 1)) * float(stats.t.ppf(q, g - 1) / stats.norm.ppf(q))


def mediation(x: np.ndarray, m: np.ndarray, y: np.ndarray, seeds: Sequence[Any],
              w_m: np.ndarray | None = None, w_y: np.ndarray | None = None,
              n_boot: int = 2000, seed: int = 0, level: float = 0.95,
              sensitivity: dict[str, np.ndarray] | None = None,
              expand: bool = True) -> Mediation:
    """The chain ``x → m → y`` with seed fixed effects (see the module docstring).

    ``w_m`` / ``w_y``: extra covariates (n or n×k) of the mediator / outcome equation.
    ``sensitivity``: ``{name: covariates}``, each refitting b′ with these covariates added to
    the outcome equation (CR2, reported as :attr:`Mediation.extra`). ``expand``: widen the
    indirect effect's interval by :func:`expansion` (the calibrated default).
    Raises :class:`numpy.linalg.LinAlgError` on a singular design."""
    codes = seed_codes(seeds)
    x, m, y = (np.asarray(v, float) for v in (x, m, y))
    Xm = _design([x, w_m], codes)
    Xy = _design([m, x, w_y], codes)
    (a,) = _cr2(m, Xm, codes, 1, level)
    a_test = per_seed_t(m, Xm, codes, level)  # step (a): the per-seed slopes' t-test when defined
    b, c1 = _cr2(y, Xy, codes, 2, level)
    (c,) = _cr2(y, _design([x, w_y], codes), codes, 1, level)
    w = boot_weights(codes, n_boot, seed)
    ind = boot_fe(m, Xm, codes, w)[:, 0] * boot_fe(y, Xy, codes, w)[:, 0]
    ok = np.isfinite(ind)
    g = int(codes.max()) + 1
    f = expansion(g, level) if expand else 1.0
    est = a[0] * b[0]
    indirect = Effect("indirect", est, math.nan, math.nan, math.nan,
                      *_interval(ind[ok], level, est, f))
    extra = {name: Effect(name, *_cr2(y, _design([m, x, w_y, cov], codes), codes, 1, level)[0])
             for name, cov in (sensitivity or {}).items()}
    return Mediation(Effect("a", *(a_test or a)), Effect("b", *b), Effect("direct", *c1), indirect,
                     Effect("total", *c), n=len(y), n_seeds=g, n_boot=n_boot,
                     n_singular=int((~ok).sum()), level=level, expansion=f,
                     a_per_seed=a_test is not None, extra=extra,
                     draws=ind[ok])
