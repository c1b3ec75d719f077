"""The measures table: every curvature/sharpness measure against test error (or the
generalization gap), with inference at the level of independent units (GUIDE §7).

Jobs of one configuration share that configuration's effect, and jobs of one seed may share a
seed effect across configurations, so a sweep of C configurations × S seeds holds S units for
a claim *within* configurations and C units for a claim *between* them. Each column says which
claim it makes:

- **within-config** (units: seeds). ``within_tau``: mean over configurations of Kendall τ-b
  between measure and target across the seeds of that configuration (the granulated τ
  conditioned on the configuration); ``within_tau_p``: its permutation p-value, permuting the
  seed labels of the measure with one permutation applied in every configuration
  (:func:`~landscope.analysis.inference.seed_permutation_test`; exact when S! ≤ 5040).
  ``within_coef``/``within_se``/``within_df``/``within_p``/``within_ci_*``: OLS of the target
  on the standardized measure, the control (final train loss) and configuration fixed effects,
  CR2 standard errors clustered by seed with Satterthwaite degrees of freedom
  (:func:`~landscope.analysis.inference.cluster_ols`); ``partial_r``: the correlation of
  measure and target after both are regressed on the configuration dummies and the control;
  ``within_r2``: R² of that regression.
- **between-config** (units: configurations). ``between_tau``/``between_p``: Kendall τ-b of the
  configuration means, p from all permutations of the configurations (with 3 configurations
  the smallest possible p is 1/3: no between-config claim can be made);
  ``between_r``/``between_p_r``: Pearson r of the configuration means with the same exact
  permutation p (the OLS t on C − 2 df rejected null sweeps of 3 configurations above its
  level in the calibration suite, docs/measurements.md#analysis-measures-table; the
  permutation test cannot exceed its level);
  ``between_coef``/``between_r2``: the OLS slope of the mean target per sd of the mean measure
  and its R² (estimates only).
- **descriptive** (no p-value): ``tau`` (pooled Kendall τ-b over jobs) and ``psi`` (granulated
  Ψ of Jiang et al. 2020), as the literature reports them. Pooled p-values over jobs rejected
  null sweeps with per-configuration effects far above their level
  (docs/measurements.md#analysis-measures-table), so none is given.

``*_holm`` and ``*_bh`` columns correct each p family across the measures.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from landscope.analysis.collect import swept_factors, swept_keys
from landscope.analysis.inference import (
    cluster_ols,
    config_means_association,
    dummies,
    seed_permutation_test,
)
from landscope.analysis.measures import (
    _analysed,
    _numeric,
    correct,
    default_measures,
    granulated_kendall,
    kendall,
    target_column,
)

P_FAMILIES = ("within_tau_p", "within_p", "between_p", "between_p_r")
CLAIMS = {"within_tau": "within-config", "within_coef": "within-config",
          "partial_r": "within-config", "between_tau": "between-config",
          "between_coef": "between-config", "tau": "descriptive", "psi": "descriptive"}


def config_labels(rows: pd.DataFrame, hyperparameters: Sequence[str] | None = None) -> pd.Series:
    """One label per row naming its configuration: the values of the swept hyperparameters
    (every swept config key except the seed), joined; ``"all"`` when nothing is swept."""
    if hyperparameters is None:
        hyperparameters = swept_hyperparameters(rows)
    if not hyperparameters:
        return pd.Series("all", index=rows.index)
    keyed = rows[list(hyperparameters)].astype(object).where(rows[list(hyperparameters)].notna(),
                                                             "missing").astype(str)
    return keyed.agg(",".join, axis=1)


def swept_hyperparameters(rows: pd.DataFrame) -> list[str]:
    config = [c for c in rows.columns if "." in c and not c.startswith(
        ("probe.", "landscape.", "final.", "config."))]
    return swept_factors(rows, swept_keys(rows, config))


def _within_regression(y: np.ndarray, x: np.ndarray, control: np.ndarray | None,
                       configs: np.ndarray, seeds: np.ndarray) -> dict[str, float]:
    out = dict.fromkeys(("within_coef", "within_se", "within_df", "within_p", "within_ci_low",
                         "within_ci_high", "within_r2", "partial_r"), math.nan)
    out["within_note"] = ""
    n_seeds = len(pd.unique(seeds))
    if n_seeds < 2 or np.std(x) == 0:
        out["within_note"] = f"undefined ({n_seeds} seeds)"
        return out
    z = (x - x.mean()) / x.std(ddof=1)
    D, _ = dummies(configs, "config")
    cols, names = [np.ones(len(y)), z], ["const", "measure"]
    base = [np.ones(len(y))] + list(D.T)
    if control is not None and np.ptp(control) > 0:
        trial = np.column_stack(cols + [control] + list(D.T))
        if np.linalg.matrix_rank(trial) == trial.shape[1]:
            cols.append(control)
            names.append("control")
            base.append(control)
        else:
            out["within_note"] = "control collinear with the configurations: dropped"
    X = np.column_stack(cols + list(D.T))
    if X.shape[1] >= len(y) or np.linalg.matrix_rank(X) < X.shape[1]:
        out["within_note"] = "measure constant within configurations or too few rows"
        return out
    fit = cluster_ols(y, X, seeds, names + [f"c{i}" for i in range(D.shape[1])])
    t = fit.term("measure")
    out.update(within_coef=t["coef"], within_se=t["se"], within_df=t["df"], within_p=t["p"],
               within_ci_low=t["ci_low"], within_ci_high=t["ci_high"], within_r2=fit.r2)
    B = np.column_stack(base)
    rx = z - B @ np.linalg.lstsq(B, z, rcond=None)[0]
    ry = y - B @ np.linalg.lstsq(B, y, rcond=None)[0]
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    out["partial_r"] = float(rx @ ry) / den if den > 1e-300 else math.nan
    return out


def _between_ols(y: np.ndarray, x: np.ndarray, configs: np.ndarray) -> dict[str, float]:
    frame = pd.DataFrame({"x": x, "y": y, "c": configs}).groupby("c")[["x", "y"]].mean()
    out = {"between_coef": math.nan, "between_r2": math.nan}
    n = len(frame)
    if n < 3 or frame["x"].std() == 0:
        return out
    z = (frame["x"] - frame["x"].mean()) / frame["x"].std(ddof=1)
    res = stats.linregress(z.to_numpy(), frame["y"].to_numpy())
    out.update(between_coef=float(res.slope), between_r2=float(res.rvalue ** 2))
    return out


def measures_table(df: pd.DataFrame, measures: Sequence[str] | None = None,
                   target: str = "test_error", control: str | None = "final.train_loss",
                   hyperparameters: Sequence[str] | None = None, n_perm: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """One row per measure (see the module docstring for every column), plus ``n`` (jobs),
    ``n_seeds`` and ``n_configs`` (the independent units of each claim) and
    ``<family>_holm`` / ``<family>_bh`` for every p family. Only included jobs with a finite
    measure and target enter; ``measures`` defaults to :func:`default_measures`."""
    rows = _analysed(df)
    measures = default_measures(rows) if measures is None else list(measures)
    if hyperparameters is None:
        hyperparameters = swept_hyperparameters(rows)
    configs_all = config_labels(rows, hyperparameters).to_numpy()
    seeds_all = rows["seed"].astype(str).to_numpy() if "seed" in rows else \
        np.arange(len(rows)).astype(str)
    y_all = target_column(rows, target).to_numpy()
    z_all = _numeric(rows[control]) if control and control in rows else None
    records = []
    for m in measures:
        x_all = _numeric(rows[m])
        ok = np.isfinite(x_all) & np.isfinite(y_all)
        if z_all is not None:
            ok &= np.isfinite(z_all)
        x, y = x_all[ok], y_all[ok]
        configs, seeds = configs_all[ok], seeds_all[ok]
        rec = {"measure": m, "target": target, "n": int(ok.sum()),
               "n_seeds": int(len(pd.unique(seeds))), "n_configs": int(len(pd.unique(configs)))}
        rec["tau"], _ = kendall(x, y)
        rec["psi"] = granulated_kendall(rows[ok].reset_index(drop=True), m, target,
                                        hyperparameters).psi if len(hyperparameters) else math.nan
        if rec["n_seeds"] >= 2 and not pd.Series(list(zip(configs, seeds))).duplicated().any():
            a = seed_permutation_test(x, y, configs, seeds, "kendall", n_perm, seed)
            rec.update(within_tau=a.estimate, within_tau_p=a.p, within_perms=a.n_perm)
        else:
            rec.update(within_tau=math.nan, within_tau_p=math.nan, within_perms=0)
        rec.update(_within_regression(y, x, None if z_all is None else z_all[ok], configs, seeds))
        b = config_means_association(x, y, configs, "kendall", seed=seed)
        rec.update(between_tau=b.estimate, between_p=b.p)
        r = config_means_association(x, y, configs, "pearson", seed=seed)
        rec.update(between_r=r.estimate, between_p_r=r.p)
        rec.update(_between_ols(y, x, configs))
        records.append(rec)
    table = pd.DataFrame(records)
    for family in P_FAMILIES:
        if family in table:
            table[f"{family}_holm"] = correct(table[family], "holm")
            table[f"{family}_bh"] = correct(table[family], "fdr_bh")
    return table


def joint_regression(df: pd.DataFrame, measures: Sequence[str], target: str = "test_error",
                     control: str | None = "final.train_loss",
                     hyperparameters: Sequence[str] | None = None) -> pd.DataFrame:
    """One regression of the target on several standardized measures jointly (and the
    control), with configuration fixed effects and CR2 standard errors clustered by seed
    (within-config claim; units: seeds). One row per term: coef, se, df, p, CI, and the
    model's R², n, n_seeds. Empty when the rows cannot support the fit (more columns than
    rows, a rank-deficient design)."""
    rows = _analysed(df)
    if hyperparameters is None:
        hyperparameters = swept_hyperparameters(rows)
    cols = [m for m in measures if m in rows]
    use = cols + ([control] if control and control in rows else [])
    data = pd.DataFrame({c: _numeric(rows[c]) for c in use})
    data["y"] = target_column(rows, target).to_numpy()
    data["config"] = config_labels(rows, hyperparameters).to_numpy()
    data["seed"] = rows["seed"].astype(str).to_numpy() if "seed" in rows else "0"
    data = data[np.isfinite(data[use + ["y"]]).all(axis=1)]
    cols = [c for c in cols if data[c].std() > 0]
    if not cols or data["seed"].nunique() < 2:
        return pd.DataFrame()
    Z = [(data[c] - data[c].mean()) / data[c].std(ddof=1) for c in cols]
    names = ["const"] + cols
    X = [np.ones(len(data))] + [z.to_numpy() for z in Z]
    if control and control in data and data[control].std() > 0:
        X.append(data[control].to_numpy())
        names.append(control)
    D, dn = dummies(data["config"], "config")
    X = np.column_stack(X + list(D.T))
    if X.shape[1] >= len(data) or np.linalg.matrix_rank(X) < X.shape[1]:
        return pd.DataFrame()
    fit = cluster_ols(data["y"].to_numpy(), X, data["seed"], names + dn)
    out = pd.DataFrame([{"term": name, **fit.term(name)} for name in names[1:]])
    out["r2"], out["n"], out["n_seeds"] = fit.r2, fit.n, fit.n_clusters
    return out
