"""The SGD-as-SDE prediction of basin probabilities on the two-basin problem.

**Noise model** (:mod:`landscope.synthetic_forms`): the per-sample gradient is
``g_i(theta) = grad L(theta) + xi_i`` with ``sum_i xi_i = 0`` and ``(1/n) sum_i xi_i xi_i^T =
sigma^2 I`` (``sigma = dataset.noise``) at every ``theta``.  A batch of ``B`` samples drawn
with replacement has noise covariance ``(sigma^2 / B) I``; drawn without replacement (one
shuffled epoch after another, the runner's SGD) its one-step covariance is
``sigma^2 (n - B) / (B (n - 1)) I`` (the finite-population factor).

**T_eff.**  SGD ``theta <- theta - eta (grad L + xi_B)`` is the Euler-Maruyama step, with
time step ``eta``, of ``d theta = -grad L dt + sqrt(eta C) dW`` (``C`` the batch-noise
covariance; Mandt, Hoffman & Blei 2017; Li, Tai & E 2017).  With ``C = c I`` the
Fokker-Planck equation has the Gibbs stationary density ``p(theta) ∝ exp(-L(theta) / T)``
with ``2 T = eta c``, so::

    T_eff = eta sigma^2 / (2 B)                      (with replacement)
    T_eff = eta sigma^2 (n - B) / (2 B (n - 1))      (epoch sampling, one-step variance)

-- ``eta / B`` times the noise scale, as in Jastrzebski et al. 2017 ("Three factors
influencing minima in SGD") and Smith & Le 2018.

**Prediction (Laplace).**  The mass of basin ``b`` under the Gibbs density, each basin
replaced by its quadratic approximation at the minimum ``theta_b``, is
``exp(-L_b / T) (2 pi T)^{d/2} / sqrt(det H_b)``, so::

    log(p_sharp / p_flat) = -(L_sharp - L_flat) / T + 1/2 log(det H_flat / det H_sharp)

Assumptions: isotropic constant noise (true here by construction), small ``T`` against the
barrier (the Laplace approximation per basin), equilibrium reached (runs longer than the
relaxation time below), and the continuous-time limit (``eta lambda << 1``).

**Checks beside it.**  :func:`gibbs_sharp_fraction`: the exact Gibbs mass of the sharp side
``u < tilt`` (the ``v`` integral is Gaussian, ``sqrt(2 pi T / k(u))``, the ``u`` integral by
quadrature), which removes the Laplace approximation and isolates the SDE/equilibrium
assumptions.  :func:`discrete_log_odds`: the linearized discrete SGD has per-direction
stationary variance ``T / (lambda (1 - eta lambda / 2))`` (the exact stationary covariance of
SGD on a quadratic), so ``det H`` is replaced by ``det(H (I - eta H / 2))``; the difference
from the Laplace line is the step-size effect at fixed ``T``.  :func:`relaxation_steps`: the
Eyring-Kramers rates ``k_b = |lambda_-| / (2 pi) sqrt(det H_b / |det H_saddle|)
exp(-Delta L_b / T)`` (time ``t = eta * steps``); the fraction relaxes towards equilibrium as
``exp(-(k_sharp + k_flat) t)``, so a run of ``N`` steps has equilibrated when
``N >> 1 / (eta (k_sharp + k_flat))``.
"""

from __future__ import annotations

import math

import numpy as np

from landscope.synthetic_forms import TwoBasinReference

SAMPLINGS = ("replacement", "epoch")


def t_eff(eta: float, batch_size: int, sigma: float, n: int,
          sampling: str = "replacement") -> float:
    """``T_eff`` of SGD with step ``eta`` and batch ``B`` (module docstring)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS} (got {sampling!r})")
    b = min(int(batch_size), int(n))
    scale = 1.0 if sampling == "replacement" else (n - b) / max(n - 1, 1)
    return eta * sigma ** 2 * scale / (2.0 * b)


def _dets(ref: TwoBasinReference) -> tuple[float, float]:
    hs, hf = ref.minimum_hessians
    return float(np.linalg.det(hs.numpy())), float(np.linalg.det(hf.numpy()))


def laplace_log_odds(loss_sharp: float, loss_flat: float, det_sharp: float, det_flat: float,
                     temperature: float) -> float:
    """``log(p_sharp / p_flat) = -(L_s - L_f) / T + 1/2 log(det H_f / det H_s)``."""
    return -(loss_sharp - loss_flat) / temperature + 0.5 * math.log(det_flat / det_sharp)


def two_basin_log_odds(ref: TwoBasinReference, temperature: float) -> float:
    """The Laplace log-odds of the two-basin problem from its closed forms."""
    ls, lf = ref.minimum_losses
    ds, df = _dets(ref)
    return laplace_log_odds(ls, lf, ds, df, temperature)


def discrete_log_odds(ref: TwoBasinReference, temperature: float, eta: float) -> float:
    """The Laplace log-odds with ``det H`` replaced by ``det(H (I - eta H / 2))`` (NaN when a
    minimum is unstable, ``eta lambda >= 2``)."""
    dets = []
    for h in ref.minimum_hessians:
        lam = h.diagonal().numpy()
        shrink = 1.0 - eta * lam / 2.0
        if np.any(shrink <= 0):
            return math.nan
        dets.append(float(np.prod(lam * shrink)))
    ls, lf = ref.minimum_losses
    return laplace_log_odds(ls, lf, dets[0], dets[1], temperature)


def gibbs_sharp_fraction(ref: TwoBasinReference, temperature: float,
                         points: int = 40001) -> float:
    """The exact mass of ``u < tilt`` under ``exp(-L / T)`` (trapezoid in ``u`` on
    ``[-1 - w, 1 + w]``, ``w`` wide enough that the tails are below float64 rounding)."""
    s, c = ref.tilt, ref.scale
    # f(u) >= c (|u| - 1)^4 / 4 - ... grows quartically: 40 T / c + 1 covers exp(-40)
    w = 1.0 + (40.0 * temperature / c) ** 0.25 + 1.0
    u = np.linspace(-w, w, points)
    f = np.asarray(ref.f(u), dtype=np.float64)
    k = np.asarray(ref.k(u), dtype=np.float64)
    logw = -(f - f.min()) / temperature - 0.5 * np.log(k)
    dens = np.exp(logw - logw.max())
    du = u[1] - u[0]
    cum = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) * du / 2)])
    return float(np.interp(s, u, cum) / cum[-1])


def relaxation_steps(ref: TwoBasinReference, temperature: float, eta: float) -> float:
    """Eyring-Kramers relaxation time in steps, ``1 / (eta (k_sharp + k_flat))``."""
    hsad = ref.saddle_hessian.diagonal().numpy()
    neg, det_sad = abs(float(hsad[0])), abs(float(np.prod(hsad)))
    rate = 0.0
    for det, height in zip(_dets(ref), ref.barrier_heights):
        rate += neg / (2 * math.pi) * math.sqrt(det / det_sad) * math.exp(-height / temperature)
    return math.inf if rate == 0 else 1.0 / (eta * rate)


def odds_to_fraction(log_odds: float) -> float:
    """``p_sharp = 1 / (1 + exp(-log_odds))``."""
    if math.isnan(log_odds):
        return math.nan
    return 1.0 / (1.0 + math.exp(-log_odds)) if log_odds > -700 else 0.0


def fraction_to_odds(p: float) -> float:
    return math.log(p / (1 - p)) if 0 < p < 1 else (math.inf if p >= 1 else -math.inf)
