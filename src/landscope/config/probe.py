"""The ``probe`` group: the curvature estimators run on a job's final checkpoint, their
budgets and the PAC-Bayes bounds; each field with its default and meaning, :meth:`check`
refusing impossible values."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from landscope.config.check import LAYOUT, need, positive, read_if
from landscope.config.choices import NoiseAlignment, PerBlock, ProbeMode, ProbeName

# the curvature matrices probe.curvature may name (landscope.probes.curvature_ops)
CURVATURE_KINDS = ("ggn", "fisher", "fisher_empirical", "ntk")


@dataclass
class TraceConfig:
    """Hutchinson's estimate of tr H (``probe.trace.*``), deflated by the top-k pairs, run to a
    target relative standard error. Only read with ``enabled``, except ``rse``, the target of
    the block traces too (``probe.per_block``)."""

    enabled: bool = False  # Hutchinson, deflated by the top-k pairs, to a target rel. stderr
    # target relative standard error: stop once the stderr is at most rse times the larger of
    # |tr H| and an estimate of sum |lambda_i|
    rse: float = 0.01
    max_samples: int = 2000  # cap on Hutchinson samples (trace_stderr shows the RSE reached)

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(0 < self.rse < 1, "probe.trace.rse", "in (0, 1)", self.rse)
        need(self.max_samples >= 2, "probe.trace.max_samples", ">= 2", self.max_samples)


@dataclass
class DensityConfig:
    """The spectral density by stochastic Lanczos quadrature (``probe.density.*``). Only read
    with ``enabled``."""

    enabled: bool = False  # stochastic Lanczos quadrature
    probes: int = 10  # random starts (one quadrature rule each)
    steps: int = 30  # the most Lanczos steps per probe
    grid: int = 400  # points of the density's grid (density_grid in probes/<pfp>.npz)
    sigma: float = 0.01  # Gaussian broadening, as a fraction of the spectral range
    logdet_eps: float = 0.0  # > 0: log det(H + eps I) from the quadrature

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(self.probes >= 1 and self.steps >= 2, "probe.density.probes/steps",
             ">= 1 and >= 2", (self.probes, self.steps))
        need(self.grid >= 2 and self.sigma > 0, "probe.density.grid/sigma",
             ">= 2 and > 0", (self.grid, self.sigma))
        need(self.logdet_eps >= 0, "probe.density.logdet_eps", ">= 0", self.logdet_eps)


#: average sharpness (its samples) runs only in the family, and the family only with the step on
_FAMILY = read_if(lambda sharpness, root: sharpness["enabled"] and sharpness["family"])
#: the bounds' settings are read only with the bounds on; the Adam search's only when it runs
_BOUNDS_ON = read_if(lambda pacbayes, root: pacbayes["enabled"])
_OPTIMIZED = read_if(lambda pacbayes, root: pacbayes["enabled"]
                     and pacbayes["posterior"] == "optimized")


@dataclass
class SharpnessConfig:
    """The sharpness measures (``probe.sharpness.*``; :mod:`landscope.probes.sharpness`).
    Only read with ``enabled``, which, as every estimator group's, switches the whole group
    off: the family too."""

    # worst-case l2 (SAM) at rhos; the family adds adaptive (ASAM), Keskar epsilon-sharpness,
    # average sharpness and PAC-Bayes flatness
    enabled: bool = False
    family: bool = False  # only with enabled
    rhos: List[float] = field(default_factory=lambda: [0.05])  # radii of the l2 balls
    # Keskar epsilon-sharpness: the boxes |y_i| <= eps (|theta_i| + 1)
    keskar_epsilons: List[float] = field(default_factory=lambda: [1e-3, 5e-3])
    # loss evaluations per radius for average sharpness
    samples: int = field(default=16, metadata=_FAMILY)
    # ... as pairs (delta, -delta): the gradient term cancels
    antithetic: bool = field(default=True, metadata=_FAMILY)

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        for key in ("rhos", "keskar_epsilons"):
            v = list(getattr(self, key))
            need(len(v) >= 1 and all(x > 0 for x in v), f"probe.sharpness.{key}",
                 "a non-empty list of values > 0", v)
        if self.antithetic:
            need(self.samples >= 4 and self.samples % 2 == 0, "probe.sharpness.samples",
                 "even and >= 4 with probe.sharpness.antithetic=true", self.samples)
        need(self.samples >= 2, "probe.sharpness.samples", ">= 2", self.samples)


@dataclass
class NoiseConfig:
    """The gradient-noise covariance from per-sample gradients (``probe.noise.*``;
    :mod:`landscope.probes.noise`). Only read with ``enabled``."""

    enabled: bool = False  # gradient-noise covariance from per-sample gradients
    samples: int = 256  # per-sample gradients held in memory (n x D)
    alignment: NoiseAlignment = NoiseAlignment.lowrank  # how tr(H Sigma) is computed

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(self.samples >= 2, "probe.noise.samples", ">= 2", self.samples)


@dataclass
class PacBayesConfig:
    """PAC-Bayes bounds on the 0-1 error (Dziugaite & Roy 2017; :mod:`landscope.probes.pacbayes`,
    ``probe.pacbayes.*``): naive parameter count, isotropic and Hessian-informed Gaussian
    posteriors (the latter in the basis of the top_k eigenvectors: needs ``probe.top_k >= 1``).
    Prior mean: the job's initialization. Cost: (13 * (len(beta_grid) + 1) * n_select + 2 *
    n_mc) forward passes over the samples. Only read with ``enabled``."""

    enabled: bool = False  # compute the bounds
    # m samples of the bound; null = whole train split
    data_size: Optional[int] = field(default=None, metadata=_BOUNDS_ON)
    # final Monte Carlo draws per posterior (error upper value)
    n_mc: int = field(default=300, metadata=_BOUNDS_ON)
    # draws per candidate posterior in the selection stage
    n_select: int = field(default=24, metadata=_BOUNDS_ON)
    # confidence of the PAC-Bayes statement
    delta: float = field(default=0.025, metadata=_BOUNDS_ON)
    # confidence of the Monte Carlo error (total: delta + delta_mc)
    delta_mc: float = field(default=0.01, metadata=_BOUNDS_ON)
    # the Hessian posterior's constants beta (tolerated loss rise per eigendirection); the
    # isotropic member (beta = inf) is always added; more entries cost draws, not tightness
    # (the posterior may be chosen after seeing the data)
    beta_grid: List[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0],
                                   metadata=_BOUNDS_ON)
    # how the posteriors are chosen: "optimized" (Dziugaite & Roy: Adam on the mean and the
    # log-variances of a differentiable bound surrogate, landscope.probes.pacbayes_optimize;
    # reports the complexity terms at matched posterior error too) or "grid" (variances on a
    # half-decade grid around the trained weights, the mean fixed; n_select draws each)
    posterior: str = field(default="optimized", metadata=_BOUNDS_ON)
    # optimized: Adam steps per posterior family
    steps: int = field(default=300, metadata=_OPTIMIZED)
    # optimized: Adam step size of the posterior mean
    lr_mean: float = field(default=1e-3, metadata=_OPTIMIZED)
    # optimized: Adam step size of the log-variances
    lr_var: float = field(default=3e-2, metadata=_OPTIMIZED)
    # optimized: samples per step (one draw per step)
    batch_size: int = field(default=256, metadata=_OPTIMIZED)
    # optimized: draws per covariance scale of the matched-error curves
    n_match: int = field(default=32, metadata=_OPTIMIZED)

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(self.data_size is None or self.data_size >= 2, "probe.pacbayes.data_size",
             ">= 2 or null (the bound needs m >= 2 samples)", self.data_size)
        for key in ("n_mc", "n_select", "batch_size", "n_match"):
            need(getattr(self, key) >= 1, f"probe.pacbayes.{key}", ">= 1", getattr(self, key))
        for key in ("delta", "delta_mc"):
            v = getattr(self, key)
            need(math.isfinite(v) and 0 < v < 1, f"probe.pacbayes.{key}", "in (0, 1)", v)
        total = self.delta + self.delta_mc
        need(total < 1, "probe.pacbayes.delta + delta_mc",
             "< 1 (the bounds hold with probability 1 - their sum)", total)
        need(self.posterior in ("optimized", "grid"), "probe.pacbayes.posterior",
             "optimized or grid", self.posterior)
        need(self.steps >= 0, "probe.pacbayes.steps", ">= 0", self.steps)
        for key in ("lr_mean", "lr_var"):
            v = getattr(self, key)
            need(math.isfinite(v) and v >= 0, f"probe.pacbayes.{key}", "finite and >= 0", v)
        grid = list(self.beta_grid)
        need(len(grid) >= 1 and all(positive(b) for b in grid), "probe.pacbayes.beta_grid",
             "a non-empty list of finite values > 0", grid)


@dataclass
class ProbeConfig:
    """Curvature probes on the final checkpoint (and optionally during training).

    The presets in ``conf/probe`` switch estimators on; every field can be overridden.
    """

    name: ProbeName = ProbeName.none
    data_size: Optional[int] = 1000  # seeded subset of the training set; null = all
    micro_batch: int = 1000  # samples per forward/backward pass (bounds memory)
    mode: ProbeMode = ProbeMode.eval
    # caps on the whole probe run: Hessian-vector products, and wall seconds; what a cap cut
    # short is recorded (<estimator>_converged = false, <estimator>_stopped_by); null = none
    max_products: Optional[int] = None
    budget_s: Optional[float] = None
    checkpointing: bool = False  # recompute activations in products (less memory, more time)
    # a tqdm bar per estimator; null = on a terminal
    progress: Optional[bool] = field(default=None, metadata=LAYOUT)
    # local worker processes the products are spread over (data-parallel, landscope.probes.spawn;
    # one GPU each when the model is on a GPU); a layout, not a result: not in the fingerprint
    ranks: int = field(default=1, metadata=LAYOUT)
    seed: int = 0
    top_k: int = 0  # largest eigenpairs (Lanczos); 0 = off
    bottom_k: int = 0  # most negative eigenpairs; 0 = off
    lanczos_tol: float = 1e-6  # converged when ||Hv - lambda v|| <= tol * |lambda|
    # top-k / bottom-k (k >= 2) checked for missed copies of repeated eigenvalues
    # (landscope.probes.complement): free through the density's first run when the density
    # runs, else one Lanczos run on the complement (about the products of the list itself)
    multiplicity_check: bool = True
    # Hutchinson's trace (probe.trace.*), the spectral density (probe.density.*), the
    # sharpness measures (probe.sharpness.*) and the gradient noise (probe.noise.*): each
    # switched on by its own enabled
    trace: TraceConfig = field(default_factory=TraceConfig)
    density: DensityConfig = field(default_factory=DensityConfig)
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    per_block: PerBlock = PerBlock.none  # top-k eigenvalues and trace of each diagonal block
    block_top_k: int = 3
    every_n_epochs: int = 0  # > 0: lambda_max and trace into metrics.jsonl during training
    # > 0: lambda_max (Lanczos, rel. residual 1e-3) and the probe loss after every this many
    # optimizer steps, into the epoch's metrics.jsonl row (curv_step, curv_step_lambda_max,
    # curv_step_loss, curv_step_hvps; landscope.probes.step_curvature): the edge of stability
    every_n_steps: int = 0
    verify: bool = False  # compare every estimate with the dense float64 Hessian
    verify_max_params: int = 5000
    # PAC-Bayes bounds on the 0-1 error (landscope.probes.pacbayes), switched on and set up by
    # probe.pacbayes.enabled / probe.pacbayes.*
    pacbayes: PacBayesConfig = field(default_factory=PacBayesConfig)
    # curvature matrices beside the Hessian (landscope.probes.curvature_ops), any of ggn (the
    # Gauss-Newton of the job's loss), fisher (true Fisher, Monte Carlo labels from the model),
    # fisher_empirical, ntk (the NTK Gram on curvature_ntk_samples samples): top_k eigenvalues
    # and trace of each, the residual H - G and the top eigenspaces' overlap; [] = none
    curvature: List[str] = field(default_factory=list)
    curvature_ntk_samples: int = 64  # the NTK's samples: the first of the probe subset
    curvature_mc_samples: int = 1  # labels drawn per input for the true (Monte Carlo) Fisher
    # the class structure of the outliers (landscope.probes.class_structure): the outlier count
    # against C - 1 and C and the alignment of the top eigenvectors with the class-mean gradients
    classes: bool = False
    # eigenpairs it uses: 0 = the run's top-k when probe.top_k >= C + 1, else C + 2 of its own
    # (C = the model's outputs); > 0: at least this many (its own Lanczos when the run has fewer)
    classes_top_k: int = 0

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        for key in ("data_size", "max_products"):
            v = getattr(self, key)
            need(v is None or v >= 1, f"probe.{key}", ">= 1 or null", v)
        for key in ("micro_batch", "ranks", "block_top_k"):
            need(getattr(self, key) >= 1, f"probe.{key}", ">= 1", getattr(self, key))
        need(self.budget_s is None or self.budget_s > 0, "probe.budget_s", "> 0 seconds or null",
             self.budget_s)
        for key in ("top_k", "bottom_k", "every_n_epochs", "every_n_steps", "seed"):
            need(getattr(self, key) >= 0, f"probe.{key}", ">= 0", getattr(self, key))
        need(0 < self.lanczos_tol < 1, "probe.lanczos_tol", "in (0, 1)", self.lanczos_tol)
        need(self.every_n_steps == 0 or self.name != ProbeName.none, "probe.every_n_steps",
             "0 with probe=none (the probe stage is off; choose a probe preset, e.g. "
             "probe=basic)", self.every_n_steps)
        for group in (self.trace, self.density, self.noise, self.sharpness):
            group.check()
        need(self.classes_top_k == 0 or self.classes_top_k >= 3, "probe.classes_top_k",
             "0 (automatic) or >= 3 (C + 1 for C >= 2 classes)", self.classes_top_k)
        need(not self.classes or self.name != ProbeName.none, "probe.classes",
             "false with probe=none (the probe stage is off; choose a probe preset, e.g. "
             "probe=basic)", self.classes)
        self._check_pacbayes()
        self._check_curvature()

    def _check_curvature(self) -> None:
        kinds = [str(k) for k in self.curvature]
        need(all(k in CURVATURE_KINDS for k in kinds) and len(set(kinds)) == len(kinds),
             "probe.curvature", f"a list of distinct names among {', '.join(CURVATURE_KINDS)}",
             kinds)
        need(not kinds or self.top_k >= 1, "probe.top_k", ">= 1 with probe.curvature (the "
             "curvature matrices' top-k eigenvalues and their overlap with the Hessian's)",
             self.top_k)
        need(not kinds or self.ranks == 1, "probe.ranks", "1 with probe.curvature (the "
             "curvature operators run in one process)", self.ranks)
        for key in ("curvature_ntk_samples", "curvature_mc_samples"):
            need(getattr(self, key) >= 1, f"probe.{key}", ">= 1", getattr(self, key))

    def _check_pacbayes(self) -> None:
        self.pacbayes.check()
        if self.pacbayes.enabled:
            need(self.top_k >= 1, "probe.top_k", ">= 1 with probe.pacbayes.enabled=true (the "
                 "Hessian-informed posterior uses the top-k eigenvectors)", self.top_k)
