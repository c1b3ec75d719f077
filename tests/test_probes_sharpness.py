"""Tests for landscope.probes.sharpness: every measure against a closed form on float64
quadratics, plus a tiny MLP through ModelObjective (finite, ordered, model untouched)."""

from __future__ import annotations

import math
import types

import pytest
import torch

from landscope.errors import LandscopeError
from landscope.models import build_model
from landscope.probes.flatness import (
    WALK_OVERSHOOT,
    _bracket_from,
    _quadratic_step,
    _secant_step,
)
from landscope.probes.hvp import HessianOperator
from landscope.probes.operator import quadratic_with_spectrum
from landscope.probes.probe_data import ProbeData
from landscope.probes.sharpness import (
    ModelObjective,
    QuadraticObjective,
    average_sharpness,
    keskar_sharpness,
    pac_bayes_flatness,
    sigma_guess,
    worst_case_sharpness,
)

torch.set_num_threads(1)

F64 = torch.float64
LAM = torch.tensor([4.0, 2.0, 1.5, 1.0, 0.8, 0.5, 0.3, 0.2, 0.1, 0.0], dtype=F64)
DIAG = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.0, 1.5], dtype=F64)


def vec(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def trust_region_max(A: torch.Tensor, theta: torch.Tensor, rho: float) -> float:
    """``max_{||d|| <= rho} 1/2 (theta+d)^T A (theta+d) - 1/2 theta^T A theta`` (A PSD), from
    the secular equation ``sum (lam_i t_i / (mu - lam_i))^2 = rho^2``, ``mu > lam_max``."""
    lam, Q = torch.linalg.eigh(A)
    t = Q.T @ theta
    if float(t.norm()) == 0.0:
        return 0.5 * rho ** 2 * float(lam.max())
    lo, hi = float(lam.max()), float(lam.max()) * (1 + float(t.norm()) / rho) + 1e-12
    for _ in range(200):
        mu = 0.5 * (lo + hi)
        if float(((lam * t / (mu - lam)) ** 2).sum()) > rho ** 2:
            lo = mu
        else:
            hi = mu
    x = t + lam * t / (mu - lam)
    return float(0.5 * (lam * x * x).sum() - 0.5 * (lam * t * t).sum())


def box_max_diag(a: torch.Tensor, theta: torch.Tensor, half: torch.Tensor) -> float:
    """``max_{|y_i| <= half_i} 1/2 sum a_i (theta_i+y_i)^2 - ...`` for ``a >= 0`` (a corner)."""
    return float(0.5 * (a * ((theta.abs() + half) ** 2 - theta ** 2)).sum())


# ----------------------------------------------------------------------------- worst case
def test_worst_case_at_minimum_is_half_rho2_lambda_max() -> None:
    A, _ = quadratic_with_spectrum(LAM, seed=1)
    obj = QuadraticObjective(A)
    res = worst_case_sharpness(obj, [0.1, 0.5], steps=30, seed=3, tol=0.0)
    for rho, v in zip(res.rhos, res.values):
        assert v == pytest.approx(0.5 * rho ** 2 * 4.0, rel=1e-6)
    assert res.one_step == [0.0, 0.0]  # zero gradient: SAM's step is delta = 0
    # the origin, then per radius a random start and at most one more restart
    assert res.n_grad_evals <= 1 + 2 * res.restarts * res.steps
    assert res.n_grad_evals == 1 + sum(res.evals) and res.n_loss_evals == res.n_grad_evals
    # the stated precision: the last gain below tol leaves ~ tol q/(1-q) to go, q ~ 0.56 per
    # step here (lambda_2/lambda_1 = 1/2 from a random start), so within 2 tol; fewer evaluations
    fast = worst_case_sharpness(QuadraticObjective(A), [0.1, 0.5], steps=30, seed=3)
    for rho, v in zip(fast.rhos, fast.values):
        assert 0.5 * rho ** 2 * 4.0 * (1 - 2 * fast.tol) <= v <= 0.5 * rho ** 2 * 4.0 * (1 + 1e-12)
    assert fast.converged == [True, True] and fast.n_grad_evals < res.n_grad_evals
    assert torch.equal(obj.theta0, torch.zeros(10, dtype=F64))


@pytest.mark.parametrize("rho", [0.05, 0.3, 2.0])
def test_worst_case_matches_trust_region(rho: float) -> None:
    A, _ = quadratic_with_spectrum(LAM, seed=2)
    theta = vec(10, 4)
    obj = QuadraticObjective(A, theta0=theta)
    res = worst_case_sharpness(obj, [rho], steps=40, tol=0.0)
    exact = trust_region_max(A, theta, rho)
    assert res.values[0] == pytest.approx(exact, rel=1e-6)
    fast = worst_case_sharpness(QuadraticObjective(A, theta0=theta), [rho], steps=40)
    assert exact * (1 - fast.tol) <= fast.values[0] <= exact * (1 + 1e-12)
    assert fast.n_grad_evals < res.n_grad_evals
    assert 0 < res.one_step[0] <= res.values[0] + 1e-15
    assert torch.equal(obj.theta0, theta)


def test_adaptive_l2_matches_scaled_trust_region() -> None:
    A, _ = quadratic_with_spectrum(LAM, seed=5)
    theta, eta, rho = vec(10, 6), 0.1, 0.2
    res = worst_case_sharpness(QuadraticObjective(A, theta0=theta), [rho], adaptive=True,
                               eta=eta, steps=60, tol=0.0)
    c = theta.abs() + eta  # theta + c*z = C (theta/c + z): trust region for C A C
    exact = trust_region_max(c[:, None] * A * c[None, :], theta / c, rho)
    assert res.values[0] == pytest.approx(exact, rel=1e-6)
    assert res.scale == "adaptive" and res.one_step[0] <= res.values[0] + 1e-15


def test_adaptive_linf_diagonal_is_box_corner() -> None:
    theta, eta, rho = vec(8, 7), 0.05, 0.1
    res = worst_case_sharpness(QuadraticObjective(torch.diag(DIAG), theta0=theta), [rho],
                               p="inf", adaptive=True, eta=eta, steps=5)
    exact = box_max_diag(DIAG, theta, rho * (theta.abs() + eta))
    assert res.values[0] == pytest.approx(exact, rel=1e-12)


# ----------------------------------------------------------------------------- Keskar
def test_keskar_at_zero_is_corner_value() -> None:
    res = keskar_sharpness(QuadraticObjective(torch.diag(DIAG)), [1e-3, 5e-3], steps=5)
    for eps, v in zip(res.epsilons, res.values):
        assert v == pytest.approx(100 * 0.5 * float(DIAG.sum()) * eps ** 2, rel=1e-12)


def test_keskar_away_from_zero_with_offset() -> None:
    theta, eps, c0 = vec(8, 8), 5e-3, 0.7
    obj = QuadraticObjective(torch.diag(DIAG), c=c0, theta0=theta)
    res = keskar_sharpness(obj, [eps], steps=5)
    base = 0.5 * float((DIAG * theta ** 2).sum()) + c0
    assert res.base_loss == pytest.approx(base, rel=1e-12)
    inc = box_max_diag(DIAG, theta, eps * (theta.abs() + 1))
    assert res.max_increase[0] == pytest.approx(inc, rel=1e-12)
    assert res.values[0] == pytest.approx(100 * inc / (1 + base), rel=1e-12)


# ----------------------------------------------------------------------------- average
def test_random_average_sharpness_is_half_rho2_trace() -> None:
    A, _ = quadratic_with_spectrum(LAM, seed=9)
    theta = vec(10, 10)  # the linear term averages out: independent of theta
    res = average_sharpness(QuadraticObjective(A, theta0=theta), [0.1, 0.3], n_samples=400,
                            seed=1)
    for rho, m, s in zip(res.rhos, res.means, res.stderrs):
        assert abs(m - 0.5 * rho ** 2 * float(LAM.sum())) <= 4 * s
    assert res.n_loss_evals == 1 + 2 * 400


def test_adaptive_average_sharpness_is_weighted_diagonal() -> None:
    A, _ = quadratic_with_spectrum(LAM, seed=11)
    theta, eta, rho = vec(10, 12), 0.2, 0.3
    res = average_sharpness(QuadraticObjective(A, theta0=theta), [rho], adaptive=True,
                            eta=eta, n_samples=400, seed=2)
    c = theta.abs() + eta
    exact = 0.5 * rho ** 2 * float((torch.diagonal(A) * c ** 2).sum())
    assert abs(res.means[0] - exact) <= 4 * res.stderrs[0]
    again = average_sharpness(QuadraticObjective(A, theta0=theta), [rho], adaptive=True,
                              eta=eta, n_samples=400, seed=2)
    assert again.means == res.means  # seeded


def test_antithetic_pairs_cancel_the_gradient_term() -> None:
    """Far from the minimum (a large gradient) plain draws carry the spread of g . delta; each
    antithetic pair is exactly rho^2/2 xi^T A xi on a quadratic, so the same number of loss
    evaluations gives a far smaller standard error around the same expectation."""
    A, _ = quadratic_with_spectrum(LAM, seed=9)
    theta, rho, n = 30 * vec(10, 10), 0.1, 64
    exact = 0.5 * rho ** 2 * float(LAM.sum())
    obj = QuadraticObjective(A, theta0=theta)
    anti = average_sharpness(obj, [rho], n_samples=n, seed=3)
    plain = average_sharpness(QuadraticObjective(A, theta0=theta), [rho], n_samples=n,
                              antithetic=False, seed=3)
    assert anti.antithetic and not plain.antithetic
    assert anti.n_loss_evals == plain.n_loss_evals == 1 + n
    assert abs(anti.means[0] - exact) <= 4 * anti.stderrs[0]
    assert abs(plain.means[0] - exact) <= 4 * plain.stderrs[0]
    assert anti.stderrs[0] < plain.stderrs[0] / 20, (anti.stderrs, plain.stderrs)
    # the pair means are the quadratic forms of the seeded draws (n/2 of them)
    xi = torch.randn(n // 2, 10, generator=torch.Generator().manual_seed(3), dtype=F64)
    forms = 0.5 * rho ** 2 * torch.einsum("ni,ij,nj->n", xi, A, xi)
    assert anti.means[0] == pytest.approx(float(forms.mean()), rel=1e-9)
    assert anti.stderrs[0] == pytest.approx(float(forms.std() / math.sqrt(n // 2)), rel=1e-6)


@pytest.mark.parametrize("n", [2, 5, 7])
def test_antithetic_needs_an_even_count_of_at_least_four(n: int) -> None:
    obj = QuadraticObjective(torch.diag(DIAG))
    with pytest.raises(LandscopeError, match="even n_samples >= 4"):
        average_sharpness(obj, [0.1], n_samples=n)
    assert average_sharpness(obj, [0.1], n_samples=max(n, 2),
                             antithetic=False).n_samples == max(n, 2)


# ----------------------------------------------------------------------------- PAC-Bayes
def test_pac_bayes_loss_target_on_quadratic() -> None:
    A, _ = quadratic_with_spectrum(LAM, seed=13)
    target = 0.05
    res = pac_bayes_flatness(QuadraticObjective(A), target=target, n_draws=800, seed=4)
    assert res.criterion == "loss" and res.bracketed
    exact = math.sqrt(2 * target / float(LAM.sum()))
    assert res.sigma == pytest.approx(exact, rel=0.05)
    assert res.measure == pytest.approx(1 / res.sigma ** 2)


def test_pac_bayes_magnitude_aware_on_quadratic() -> None:
    theta, target, eps = vec(8, 14), 0.02, 1e-2
    res = pac_bayes_flatness(QuadraticObjective(torch.diag(DIAG), theta0=theta),
                             target=target, magnitude_aware=True, eps=eps, n_draws=800)
    # E[L(theta+u)] - L(theta) = 1/2 sum a_i (sigma^2 theta_i^2 + eps^2)
    exact = math.sqrt((2 * target - eps ** 2 * float(DIAG.sum()))
                      / float((DIAG * theta ** 2).sum()))
    assert res.sigma == pytest.approx(exact, rel=0.05)


@pytest.mark.parametrize("guess", [None, 0.02, 1e-4, 0.9, 5e-6, 9.0])
def test_pac_bayes_guess_finds_the_same_sigma(guess) -> None:
    """A guess only changes where the search starts: good, far too low, far too high or next
    to an end of sigma_range, the answer is the no-guess answer within rtol."""
    A, _ = quadratic_with_spectrum(LAM, seed=13)
    target, rtol = 0.05, 1e-3
    ref = pac_bayes_flatness(QuadraticObjective(A), target=target, n_draws=200, seed=4, rtol=rtol)
    res = pac_bayes_flatness(QuadraticObjective(A), target=target, n_draws=200, seed=4, rtol=rtol,
                             guess=guess)
    assert res.bracketed and res.sigma == pytest.approx(ref.sigma, rel=2 * rtol)
    # the deviation at the answer is below the target, just above it exceeds it (the draws
    # are the same for every sigma)
    dev = dict(res.deviations)
    assert dev[res.sigma] <= target
    assert any(s <= res.sigma * (1 + 2 * rtol) and d > target for s, d in res.deviations)


def test_a_good_guess_saves_points() -> None:
    A, _ = quadratic_with_spectrum(LAM, seed=13)
    target = 0.05
    avg = average_sharpness(QuadraticObjective(A), [0.1], n_samples=64, seed=0)
    guess = sigma_guess(avg.means[0], 0.1, loss_increase=target)
    exact = math.sqrt(2 * target / float(LAM.sum()))
    assert guess == pytest.approx(exact, rel=0.1)  # the quadratic: E dL = sigma^2/2 tr A
    ref = pac_bayes_flatness(QuadraticObjective(A), target=target, n_draws=200, seed=4)
    res = pac_bayes_flatness(QuadraticObjective(A), target=target, n_draws=200, seed=4,
                             guess=guess)
    assert res.sigma == pytest.approx(ref.sigma, rel=2e-3)
    assert res.n_evals < 0.7 * ref.n_evals, (res.n_evals, ref.n_evals)
    # the walk's second point is where a sigma^2 deviation reaches the target, 15 % past it:
    # the bracket is that wide, not the factor guess_factor = 4 of a blind walk
    (s0, d0), (s1, d1) = res.deviations[:2]
    assert (d0 < target) != (d1 < target)
    assert s1 / s0 == pytest.approx(math.sqrt(target / d0) * WALK_OVERSHOOT, rel=1e-12)
    assert s1 / s0 < 1.5


def test_quadratic_step_of_the_walk() -> None:
    """sqrt(target / deviation) (or its inverse above the target) times WALK_OVERSHOOT, at least
    WALK_OVERSHOOT, at most the factor; a zero or non-finite deviation takes the factor."""
    assert _quadratic_step(0.025, 0.1, 4.0) == pytest.approx(2.0 * WALK_OVERSHOOT)
    assert _quadratic_step(0.4, 0.1, 4.0) == pytest.approx(2.0 * WALK_OVERSHOOT)
    assert _quadratic_step(0.1, 0.1, 4.0) == pytest.approx(WALK_OVERSHOOT)
    assert _quadratic_step(1e-6, 0.1, 4.0) == 4.0
    assert _quadratic_step(0.0, 0.1, 4.0) == 4.0 and _quadratic_step(math.inf, 0.1, 4.0) == 4.0


def test_secant_step_of_the_walk() -> None:
    """Where a deviation growing as sigma^p (p from the last two points) reaches the target,
    times WALK_OVERSHOOT, within [WALK_OVERSHOOT, factor]; p = 2 is the quadratic step; points
    that show no growth, or a zero or non-finite deviation, take the factor."""
    t = 0.1
    for d in (0.025, 0.04, 0.09):  # p = 2: the quadratic step, from below and from above
        assert _secant_step([(0.5, d / 4), (1.0, d)], t, 4.0) == pytest.approx(
            _quadratic_step(d, t, 4.0), rel=1e-12)
        assert _secant_step([(2.0, 4 * t * t / d), (1.0, t * t / d)], t, 4.0) == pytest.approx(
            _quadratic_step(t * t / d, t, 4.0), rel=1e-12)
    # p = 1: the deviation doubles with sigma, so 0.05 -> 0.1 takes a factor 2
    assert _secant_step([(1.0, 0.025), (2.0, 0.05)], t, 4.0) == pytest.approx(
        2.0 * WALK_OVERSHOOT, rel=1e-12)
    assert _secant_step([(1.0, 0.05), (2.0, 0.0999999)], t, 4.0) == pytest.approx(
        WALK_OVERSHOOT, rel=1e-5)
    assert _secant_step([(1.0, 1e-4), (2.0, 2e-4)], t, 4.0) == 4.0  # capped
    for seen in ([(1.0, 0.05), (2.0, 0.05)], [(1.0, 0.05), (2.0, 0.04)], [(1.0, 0.0), (2.0, 0.05)],
                 [(1.0, 0.05), (2.0, math.inf)], [(1.0, 0.05), (1.0, 0.06)]):
        assert _secant_step(seen, t, 4.0) == 4.0


def test_the_walk_follows_the_growth_it_has_seen() -> None:
    """A deviation growing as sigma (slower than the sigma^2 of the first step): the first step
    stops short of the target, and the second is placed by the growth of the first two points,
    15 % past the crossing, not a blind factor 4 past it."""
    target, star = 0.1, 0.3
    seen: list[tuple[float, float]] = []

    def above(sigma: float) -> bool:
        seen.append((sigma, target * sigma / star))
        return seen[-1][1] > target

    lo, d_lo, hi, d_hi = _bracket_from(above, seen, star / 3, 4.0, 1e-6, 10.0, target)
    assert len(seen) == 3 and lo == seen[1][0] and hi == seen[2][0]
    assert seen[1][0] / seen[0][0] == pytest.approx(math.sqrt(3) * WALK_OVERSHOOT, rel=1e-12)
    assert hi == pytest.approx(star * WALK_OVERSHOOT, rel=1e-12)
    assert lo < star < hi and hi / lo < 1.8
    # the same from above: a guess 3x too high walks down to the crossing alike
    seen.clear()
    lo, d_lo, hi, d_hi = _bracket_from(above, seen, 3 * star, 4.0, 1e-6, 10.0, target)
    assert len(seen) == 3 and lo == pytest.approx(star / WALK_OVERSHOOT, rel=1e-12)
    assert lo < star < hi and hi / lo < 1.8


@pytest.mark.parametrize("guess", [1e-3, 1.0])
def test_a_guess_keeps_the_range_limits(guess) -> None:
    """sigma' beyond either end of sigma_range is reported unbracketed, guess or not."""
    A, _ = quadratic_with_spectrum(LAM, seed=13)
    flat = pac_bayes_flatness(QuadraticObjective(A), target=1e6, n_draws=20, guess=guess)
    assert not flat.bracketed and flat.sigma == 10.0
    sharp = pac_bayes_flatness(QuadraticObjective(A), target=1e-14, n_draws=20, guess=guess,
                               sigma_range=(1e-3, 10.0))
    assert not sharp.bracketed and sharp.sigma == 1e-3


def test_sigma_guess_needs_a_positive_increase() -> None:
    assert sigma_guess(0.0, 0.05) is None and sigma_guess(float("nan"), 0.05) is None
    assert sigma_guess(float("inf"), 0.05) is None and sigma_guess(-1.0, 0.05) is None
    assert sigma_guess(0.3, 0.05) == pytest.approx(0.05)


def test_errors() -> None:
    obj = QuadraticObjective(torch.diag(DIAG))
    with pytest.raises(LandscopeError):
        worst_case_sharpness(obj, [])
    with pytest.raises(LandscopeError):
        worst_case_sharpness(obj, [0.1], p="1")  # type: ignore[arg-type]
    with pytest.raises(LandscopeError):
        keskar_sharpness(obj, [-1e-3])
    with pytest.raises(LandscopeError):
        pac_bayes_flatness(obj, criterion="accuracy")
    with pytest.raises(LandscopeError):
        average_sharpness(obj, [0.1], n_samples=1)


# ----------------------------------------------------------------------------- a network
def test_mlp_model_objective() -> None:
    torch.manual_seed(0)
    meta = types.SimpleNamespace(input_shape=(1, 12), num_classes=3)
    model = build_model(dict(name="mlp", width=6, depth=2), meta).double().train()
    x, y = torch.randn(20, 1, 12, dtype=F64), torch.randint(0, 3, (20,))
    data = ProbeData.from_tensors(x, y, micro_batch=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = ModelObjective(model, data)

    op = HessianOperator(model, data, check_determinism=False)
    loss, grad = obj.loss_and_grad(obj.theta0)
    assert loss == pytest.approx(op.loss(), rel=1e-12)
    assert torch.allclose(grad, op.gradient(), rtol=1e-10, atol=1e-12)
    assert obj.accuracy(obj.theta0) == float((model.eval()(x).argmax(-1) == y).double().mean())
    model.train()

    rhos = [0.01, 0.05, 0.2]
    wc = worst_case_sharpness(obj, rhos, steps=8, restarts=2)
    assert all(math.isfinite(v) and v >= 0 for v in wc.values)
    assert all(a <= b for a, b in zip(wc.values, wc.values[1:]))
    assert all(o <= v + 1e-12 for o, v in zip(wc.one_step, wc.values))
    asam = worst_case_sharpness(obj, rhos, adaptive=True, p="inf", steps=5, restarts=1)
    assert all(math.isfinite(v) and v >= 0 for v in asam.values)
    assert all(a <= b for a, b in zip(asam.values, asam.values[1:]))
    ks = keskar_sharpness(obj, [1e-3, 5e-3], steps=5, restarts=1)
    assert all(math.isfinite(v) and v >= 0 for v in ks.values) and ks.values[0] <= ks.values[1]
    avg = average_sharpness(obj, rhos, n_samples=8)
    assert all(math.isfinite(m) and math.isfinite(s) for m, s in zip(avg.means, avg.stderrs))
    pb = pac_bayes_flatness(obj, target=0.1, n_draws=4, rtol=1e-2)
    assert pb.criterion == "accuracy" and 0 < pb.sigma <= 10 and math.isfinite(pb.measure)
    pbm = pac_bayes_flatness(obj, magnitude_aware=True, n_draws=4, rtol=1e-2)
    assert pbm.criterion == "accuracy" and math.isfinite(pbm.measure)

    assert model.training  # flags restored
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(obj.theta0, torch.cat([p.detach().reshape(-1)
                                              for p in model.parameters()]))


# ----------------------------------------------------------------------------- divergence
class _Overflowing(QuadraticObjective):
    """A quadratic whose loss is NaN (or inf) outside the ball ``||theta|| <= radius``, as a
    network's float32 forward pass overflows far from its weights."""

    def __init__(self, A: torch.Tensor, radius: float, bad: float = math.nan) -> None:
        super().__init__(A, theta0=0.1 * vec(A.shape[0], 5))
        self.radius, self.bad = radius, bad

    def loss(self, theta: torch.Tensor) -> float:
        return super().loss(theta) if float(theta.norm()) <= self.radius else self.bad

    def loss_and_grad(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        f, g = super().loss_and_grad(theta)
        if float(theta.norm()) <= self.radius:
            return f, g
        return self.bad, torch.full_like(g, math.nan)


def test_loss_value_treats_non_finite_as_plus_inf() -> None:
    from landscope.probes.sharpness import loss_value

    assert loss_value(1.5) == 1.5 and loss_value(-2.0) == -2.0
    assert loss_value(math.nan) == math.inf
    assert loss_value(-math.inf) == math.inf and loss_value(math.inf) == math.inf


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_is_never_dropped(bad: float) -> None:
    """A NaN loss in the ascent used to vanish in max() and read as sharpness 0."""
    obj = _Overflowing(torch.diag(DIAG), radius=1.0, bad=bad)
    wc = worst_case_sharpness(obj, [0.1, 10.0], steps=5, restarts=2, seed=1)
    assert math.isfinite(wc.values[0]) and wc.values[0] > 0 and wc.diverged[0] is False
    assert wc.values[1] == math.inf and wc.diverged[1] is True
    assert wc.one_step[1] == math.inf  # SAM's step lands outside the ball
    asam = worst_case_sharpness(obj, [10.0], adaptive=True, p="inf", steps=3, restarts=1)
    assert asam.values == [math.inf] and asam.diverged == [True]
    ks = keskar_sharpness(obj, [1e-3, 50.0], steps=3, restarts=1)
    assert math.isfinite(ks.values[0]) and ks.values[1] == math.inf
    assert ks.diverged == [False, True]
    avg = average_sharpness(obj, [0.01, 10.0], n_samples=4)
    assert math.isfinite(avg.means[0]) and avg.means[1] == math.inf
    pb = pac_bayes_flatness(obj, criterion="loss", target=0.1, n_draws=4,
                            sigma_range=(1e-6, 100.0), rtol=1e-2)
    assert pb.bracketed and pb.sigma < 100.0
    assert any(dev == math.inf for _, dev in pb.deviations)


def test_float32_network_at_huge_radius_reads_diverged() -> None:
    """A radius of 1e30 on a float32 network: every ascent value is inf and flagged diverged,
    never 0.0; the ordinary radius next to it is untouched (the suite turns these into
    ``_diverged`` flags)."""
    torch.manual_seed(0)
    meta = types.SimpleNamespace(input_shape=(1, 12), num_classes=3)
    model = build_model(dict(name="mlp", width=6, depth=2), meta).train()
    x, y = torch.randn(16, 1, 12), torch.randint(0, 3, (16,))
    obj = ModelObjective(model, ProbeData.from_tensors(x, y, micro_batch=8), mode="train")
    for res in (worst_case_sharpness(obj, [0.05, 1e30]),
                worst_case_sharpness(obj, [0.05, 1e30], adaptive=True)):
        assert res.values[1] == math.inf and res.diverged == [False, True]
        assert math.isfinite(res.values[0]) and res.values[0] >= 0
    assert worst_case_sharpness(obj, [1e30]).one_step == [math.inf]
    ks = keskar_sharpness(obj, [1e-3, 1e30])
    assert ks.values[1] == math.inf and ks.diverged == [False, True]
    assert math.isfinite(ks.values[0]) and ks.values[0] >= 0
    avg = average_sharpness(obj, [0.05, 1e30], n_samples=4)
    assert math.isfinite(avg.means[0]) and avg.means[1] == math.inf
