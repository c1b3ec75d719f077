"""Structured-config schemas for the runner, registered in Hydra's ConfigStore.

``conf/config.yaml`` starts its defaults list with ``landscope_schema``: every
group file is merged onto these typed dataclasses, so a misspelled key or a value
of the wrong type fails at composition and the message names the key (and, for
enum-typed fields, the allowed values).  Value checks that types cannot express
(lr > 0, width >= 1, ...) live in :func:`validate`, which the runner calls before
any job writes a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from landscope.errors import ConfigError


class DatasetName(str, Enum):
    mnist1d = "mnist1d"
    digits = "digits"
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    quadratic = "quadratic"  # synthetic, closed-form answers (landscope.synthetic)
    two_basin = "two_basin"  # synthetic, closed-form answers (landscope.synthetic)
    cifar_like = "cifar_like"  # seeded tensors of CIFAR's shape (3x32x32): benchmarks, no files


class ModelName(str, Enum):
    mlp = "mlp"
    cnn = "cnn"
    resnet = "resnet"
    vit = "vit"
    resnet18 = "resnet18"  # He et al. 2016, CIFAR stem (3x3 conv, no max-pool)
    resnet34 = "resnet34"
    vit_small = "vit_small"  # patch 4, dim 384, depth 12, 6 heads
    quadratic = "quadratic"  # only with dataset=quadratic
    two_basin = "two_basin"  # only with dataset=two_basin


class Norm(str, Enum):
    none = "none"
    batch = "batch"
    layer = "layer"


class Activation(str, Enum):
    relu = "relu"
    gelu = "gelu"
    tanh = "tanh"
    silu = "silu"
    elu = "elu"
    leaky_relu = "leaky_relu"


class OptimizerName(str, Enum):
    sgd = "sgd"
    momentum = "momentum"
    adam = "adam"
    adamw = "adamw"
    sam = "sam"
    llp = "llp"  # curvature-probing "bore-hole" optimizer (landscope.optim.llp)


class BaseOptimizerName(str, Enum):
    """Optimizers SAM and LLP can wrap."""

    sgd = "sgd"
    momentum = "momentum"
    adam = "adam"
    adamw = "adamw"


class LLPRule(str, Enum):
    """LLP learning-rate rule: inverse = min(lr, llp_c * s / curvature); none = lr."""

    inverse = "inverse"
    none = "none"


class LLPCurvature(str, Enum):
    """LLP curvature scale: frobenius = sqrt(D * agg ||Hd||^2) (~||H||_F); raw = agg ||Hd||."""

    frobenius = "frobenius"
    raw = "raw"


class LLPAggregate(str, Enum):
    """How LLP combines its N probe directions in the curvature scale (median: robust to
    the direction that crosses a ReLU kink)."""

    median = "median"
    mean = "mean"
    max = "max"


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"
    step = "step"


class Precision(str, Enum):
    """Training arithmetic: fp32, or autocast to bf16 / fp16 (fp16 with a gradient scaler)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ProbeName(str, Enum):
    none = "none"
    basic = "basic"
    standard = "standard"
    full = "full"
    pacbayes = "pacbayes"  # standard + PAC-Bayes bounds (H4)


class PerBlock(str, Enum):
    """Diagonal Hessian blocks probed one by one: none, per layer (owning module), per block."""

    none = "none"
    layer = "layer"
    block = "block"


class NoiseAlignment(str, Enum):
    """How tr(H Sigma) is computed: exact (n HVPs), hutchinson (30), lowrank (top-5 of Sigma)."""

    exact = "exact"
    hutchinson = "hutchinson"
    lowrank = "lowrank"


class ProbeMode(str, Enum):
    """BatchNorm/dropout semantics of the probed loss."""

    eval = "eval"
    train = "train"  # batch statistics over a fixed micro-batch partition


class LandscapeName(str, Enum):
    none = "none"
    basic = "basic"
    full = "full"


class DirectionNorm(str, Enum):
    """How random directions are scaled to the weights (Li et al. 2018)."""

    filter = "filter"  # each filter / output row to the norm of the weights' filter
    layer = "layer"  # each parameter tensor to its norm
    model = "model"  # the whole direction to the norm of the whole parameter vector
    none = "none"  # raw N(0, 1) entries


class BNStats(str, Enum):
    """BatchNorm running statistics at an evaluated point."""

    keep = "keep"  # those of the trained model
    recompute = "recompute"  # re-estimated at every point on the slice data


class Projection(str, Enum):
    """Random projection P of intrinsic-dimension training (theta = theta0 + P theta_d)."""

    dense = "dense"
    sparse = "sparse"
    fastfood = "fastfood"


class LoggerName(str, Enum):
    none = "none"
    wandb = "wandb"


class WandbMode(str, Enum):
    auto = "auto"  # online when an API key is configured, else offline
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class DatasetConfig:
    """Which data, and how much of it.

    ``seed`` fixes the train subset and the label noise; it is separate from the
    job seed so that a multi-seed sweep trains every seed on the same data.
    """

    name: DatasetName = DatasetName.mnist1d
    data_dir: str = "data"
    download: bool = False
    train_size: Optional[int] = None  # seeded subset of the training set; null = all
    test_size: Optional[int] = None  # seeded subset of the test set; null = all
    label_noise: float = 0.0  # fraction of training labels replaced by another class
    normalize: bool = True  # standardize inputs per channel with training statistics
    in_memory: Optional[bool] = None  # null = auto (tensors when small, streamed when large)
    seed: int = 0
    # only these classes, relabelled 0..k-1 in this order, before train_size/test_size subsetting
    # ([0, 1]: a binary task as Dziugaite & Roy's binary MNIST, H4); null = all; not for the
    # synthetic problems
    classes: Optional[List[int]] = None
    # Synthetic problems (landscope.synthetic; ignored by the other datasets). Their
    # train_size/test_size are the generated sample counts (null = 256).
    noise: float = 0.5  # quadratic: target noise sigma; two_basin: gradient-noise std
    test_shift: float = 0.3  # test optimum moved by this (quadratic: norm; two_basin: along v)
    spectrum: Optional[List[float]] = None  # quadratic: eigenvalues of A; null = generated:
    dim: int = 20  # ... outliers, then dim - len(outliers) values from 1 down to 1/condition
    condition: float = 100.0
    outliers: List[float] = field(default_factory=lambda: [10.0, 5.0])
    tolerance: float = 0.5  # quadratic: correct iff |noise-free residual| < tolerance
    sharp_curvature: float = 10.0  # two_basin: d2L/dv2 at the sharp minimum (-1, 0)
    flat_curvature: float = 1.0  # two_basin: d2L/dv2 at the flat minimum (1, 0)
    barrier: float = 0.125  # two_basin: saddle loss minus the mean of the minima's losses
    tilt: float = 0.0  # two_basin: saddle at u = tilt in (-1, 1); > 0: sharp minimum deeper


@dataclass
class ModelConfig:
    name: ModelName = ModelName.mlp
    width: int = 128
    depth: int = 3
    norm: Norm = Norm.none
    skip: bool = False
    activation: Activation = Activation.relu
    init_scale: float = 1.0
    patch_size: int = 4  # vit: patch length (1-D) or side (images)
    heads: int = 4  # vit: attention heads (must divide width)
    kernel_size: int = 3  # cnn / resnet


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.sgd
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # SAM (Foret et al. 2021): two-step ascent/descent around a base optimizer.
    rho: float = 0.05
    adaptive: bool = False  # ASAM (Kwon et al. 2021): perturbation scaled by |theta|
    base: BaseOptimizerName = BaseOptimizerName.momentum  # what sam and llp wrap
    # LLP (landscope.optim.llp): every llp_every steps, llp_probes random unit directions d,
    # curvature from the gradient change (grad L(theta + eps d) - grad L(theta)) / eps on the
    # mini-batch; step lr_t = min(lr, llp_c * s / curvature), s = 1 + momentum for a momentum
    # base (else 1); lr is the cap. Cost: 1 + llp_probes / llp_every gradient evals per step.
    llp_probes: int = 4  # N directions per probe step
    llp_eps: float = 1e-4  # finite-difference distance (l2); ReLU kinks bias larger ones
    llp_every: int = 10  # k: steps between probe steps
    llp_rule: LLPRule = LLPRule.inverse
    llp_c: float = 1.0  # 1: eta * lambda_max <= 1, half the stability limit 2 (Cohen et al. 2021)
    llp_curvature: LLPCurvature = LLPCurvature.frobenius
    llp_aggregate: LLPAggregate = LLPAggregate.median
    llp_ema: float = 0.9  # smoothing of the curvature across probe steps (0 = latest only)
    llp_damping: float = 0.0  # in [0, 1]: gradient components along span{Hd_i} times (1 - this)
    llp_seed: Optional[int] = None  # directions' generator; null = the job seed
    # learning-rate schedule, stepped once per epoch
    schedule: Schedule = Schedule.constant
    step_size: int = 10  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    min_lr: float = 0.0  # cosine: final learning rate


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 64
    full_batch: bool = False  # one gradient step per epoch on the whole training set
    grad_clip: Optional[float] = None  # max global gradient norm; null = off
    target_train_loss: Optional[float] = None  # stop once train cross-entropy <= this
    # stop after the step that brings the gradient evaluations (forward+backward passes over a
    # mini-batch, SAM's and LLP's extra ones included) to >= this; null = no budget
    max_grad_evals: Optional[int] = None
    eval_batch_size: int = 2048
    # A checkpoint is written at the end of an epoch that is a multiple of
    # checkpoint_every once checkpoint_interval_s have passed since the last one, and
    # always after the last epoch. Resuming from any of them gives identical results.
    checkpoint_every: int = 1
    checkpoint_interval_s: float = 10.0
    keep_checkpoints: int = 2
    threads: Optional[int] = None  # torch intra-op threads; null = auto
    progress: Optional[bool] = None  # tqdm bar; null = only on an interactive terminal
    device: str = "cpu"
    # arithmetic of the training forward/backward (probes always run in fp32, float64 in verify)
    precision: Precision = Precision.fp32


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
    progress: Optional[bool] = None  # a tqdm bar per estimator; null = on a terminal
    # local worker processes the products are spread over (data-parallel, landscope.probes.spawn;
    # one GPU each when the model is on a GPU); a layout, not a result: not in the fingerprint
    ranks: int = 1
    seed: int = 0
    top_k: int = 0  # largest eigenpairs (Lanczos); 0 = off
    bottom_k: int = 0  # most negative eigenpairs; 0 = off
    lanczos_tol: float = 1e-6  # converged when ||Hv - lambda v|| <= tol * |lambda|
    trace: bool = False  # Hutchinson, deflated by the top-k pairs, to a target rel. stderr
    trace_rse: float = 0.01
    trace_max_samples: int = 2000  # cap on Hutchinson samples (trace_stderr shows the RSE reached)
    density: bool = False  # stochastic Lanczos quadrature
    slq_probes: int = 10
    slq_steps: int = 30
    density_grid: int = 400
    density_sigma: float = 0.01  # Gaussian broadening, as a fraction of the spectral range
    logdet_eps: float = 0.0  # > 0: log det(H + eps I) from the quadrature
    # sharpness: worst-case l2 (SAM) at sharpness_rhos always; the family adds adaptive
    # (ASAM), Keskar epsilon-sharpness, average sharpness and PAC-Bayes flatness
    sharpness: bool = False
    sharpness_family: bool = False
    sharpness_rhos: List[float] = field(default_factory=lambda: [0.05])
    keskar_epsilons: List[float] = field(default_factory=lambda: [1e-3, 5e-3])
    sharpness_samples: int = 16  # loss evaluations per radius for average sharpness
    sharpness_antithetic: bool = True  # ... as pairs (delta, -delta): the gradient term cancels
    noise: bool = False  # gradient-noise covariance from per-sample gradients
    noise_samples: int = 256  # per-sample gradients held in memory (n x D)
    noise_alignment: NoiseAlignment = NoiseAlignment.lowrank  # how tr(H Sigma) is computed
    per_block: PerBlock = PerBlock.none  # top-k eigenvalues and trace of each diagonal block
    block_top_k: int = 3
    every_n_epochs: int = 0  # > 0: lambda_max and trace into metrics.jsonl during training
    verify: bool = False  # compare every estimate with the dense float64 Hessian
    verify_max_params: int = 5000
    # PAC-Bayes bounds on the 0-1 error (Dziugaite & Roy 2017; landscope.probes.pacbayes):
    # naive parameter count, isotropic and Hessian-informed Gaussian posteriors (the latter in
    # the basis of the top_k eigenvectors: needs top_k >= 1). Prior mean: the job's
    # initialization. Cost: (13 * (len(beta_grid) + 1) * n_select + 2 * n_mc) forward passes
    # over the samples.
    pacbayes: bool = False
    pacbayes_data_size: Optional[int] = None  # m samples of the bound; null = whole train split
    pacbayes_n_mc: int = 300  # final Monte Carlo draws per posterior (error upper value)
    pacbayes_n_select: int = 24  # draws per candidate posterior in the selection stage
    pacbayes_delta: float = 0.025  # confidence of the PAC-Bayes statement
    pacbayes_delta_mc: float = 0.01  # confidence of the Monte Carlo error (total: delta + delta_mc)
    # the Hessian posterior's constants beta (tolerated loss rise per eigendirection); the
    # isotropic member (beta = inf) is always added; more entries cost draws, not tightness
    # (the posterior may be chosen after seeing the data)
    pacbayes_beta_grid: List[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0])
    # how the posteriors are chosen: "optimized" (Dziugaite & Roy: Adam on the mean and the
    # log-variances of a differentiable bound surrogate, landscope.probes.pacbayes_optimize;
    # reports the complexity terms at matched posterior error too) or "grid" (variances on a
    # half-decade grid around the trained weights, the mean fixed; n_select draws each)
    pacbayes_posterior: str = "optimized"
    pacbayes_steps: int = 300  # optimized: Adam steps per posterior family
    pacbayes_lr_mean: float = 1e-3  # optimized: Adam step size of the posterior mean
    pacbayes_lr_var: float = 3e-2  # optimized: Adam step size of the log-variances
    pacbayes_batch_size: int = 256  # optimized: samples per step (one draw per step)
    pacbayes_n_match: int = 32  # optimized: draws per covariance scale of the matched-error curves


@dataclass
class LandscapeConfig:
    """Loss-landscape geometry on the final checkpoint (slices, trajectory, intrinsic dim).

    The presets in ``conf/landscape`` switch parts on; every field can be overridden.
    Pairwise mode connectivity runs over a finished sweep (``python -m runner.connect``).
    """

    name: LandscapeName = LandscapeName.none
    data_size: Optional[int] = 1000  # seeded subset of train and of test; null = whole sets
    seed: int = 0  # directions and data subsets
    batch_size: int = 2048  # samples per forward pass
    normalization: DirectionNorm = DirectionNorm.filter
    include_bias_norm: bool = False  # give biases and norm parameters direction components
    bn: BNStats = BNStats.keep
    workers: int = 1  # processes evaluating grid points (joblib)
    # 1-D slices: theta0 + a d, a in [-line_range, line_range]
    line: bool = False
    line_directions: int = 3  # random directions (a band over them)
    line_eigen: int = 0  # also along the top Hessian eigenvectors (needs probe.top_k >= this)
    line_points: int = 51
    line_range: float = 1.0
    # 2-D slice: theta0 + a d1 + b d2 on a plane_points x plane_points grid
    plane: bool = False
    plane_points: int = 21
    plane_range: float = 1.0
    plane_eigen: bool = False  # d1, d2 = top two Hessian eigenvectors instead of random
    # trajectory: parameter snapshots during training, PCA, path on the PC-plane contour
    trajectory: bool = False
    snapshot_every_steps: Optional[int] = None  # null: one snapshot per epoch
    snapshot_dtype: str = "float32"  # or float16: half the file, ~3 significant digits
    trajectory_points: int = 21  # contour grid per side
    # intrinsic dimension: training in random subspaces of these dimensions
    intrinsic_dim: bool = False
    intrinsic_dims: List[int] = field(default_factory=lambda: [100, 1000, 3000, 10000, 30000])
    intrinsic_projection: Projection = Projection.sparse
    intrinsic_epochs: int = 20
    intrinsic_lr: float = 0.01  # Adam on theta_d
    # mode connectivity (python -m runner.connect): linear path and a trained Bezier curve
    path_points: int = 21
    bezier: bool = True
    bezier_epochs: int = 10
    bezier_lr: float = 0.01
    figures: bool = True  # PNG figures into the job's figures/ directory


@dataclass
class LoggerConfig:
    """Experiment tracking (``logger=wandb``: one Weights & Biases run per job; see
    :mod:`landscope.tracking`). Changing it never changes a job's results or directory."""

    name: LoggerName = LoggerName.none
    project: str = "landscope"
    entity: Optional[str] = None  # W&B user or team; null = the API key's default
    mode: WandbMode = WandbMode.auto
    job_type: str = "train"
    tags: List[str] = field(default_factory=list)
    dir: Optional[str] = None  # where W&B writes its files; null = the job directory
    log_figures: bool = True  # the job's figures/*.png as images
    init_timeout: float = 30.0  # seconds W&B may take to start online; then the job runs untracked


@dataclass
class Config:
    seed: int = 0
    name: str = "default"  # sweep name: outputs/sweeps/<name>/<overrides>
    resume: bool = True  # resume from the job directory's checkpoint if one exists
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    landscape: LandscapeConfig = field(default_factory=LandscapeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def register_configs() -> None:
    """Register the schema as ``landscope_schema`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="landscope_schema", node=Config)


def _check(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {requirement} (got {value!r})")


def validate(cfg: Any) -> None:
    """Reject values that compose but make no sense; raise :class:`ConfigError`.

    First: keys the schema does not define (added with ``+``/``++``), non-finite numbers and,
    on a composed job (with its ``hydra`` node), a group choice contradicting ``<group>.name``."""
    from landscope.config_checks import check_composed_job, check_schema_and_numbers, plain_tree

    check_schema_and_numbers(plain_tree(cfg))
    check_composed_job(cfg)
    d, m, o, t = cfg.dataset, cfg.model, cfg.optimizer, cfg.train
    _check(cfg.seed >= 0, "seed", ">= 0", cfg.seed)
    _check(math.isfinite(o.lr) and o.lr > 0, "optimizer.lr", "> 0", o.lr)
    _check(o.weight_decay >= 0, "optimizer.weight_decay", ">= 0", o.weight_decay)
    _check(0 <= o.momentum < 1, "optimizer.momentum", "in [0, 1)", o.momentum)
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optimizer.betas",
           "two values in [0, 1)", list(o.betas))
    _check(o.eps > 0, "optimizer.eps", "> 0", o.eps)
    _check(o.rho > 0, "optimizer.rho", "> 0", o.rho)
    _check(o.llp_probes >= 1, "optimizer.llp_probes", ">= 1", o.llp_probes)
    _check(math.isfinite(o.llp_eps) and o.llp_eps > 0, "optimizer.llp_eps", "> 0", o.llp_eps)
    _check(o.llp_every >= 1, "optimizer.llp_every", ">= 1", o.llp_every)
    _check(math.isfinite(o.llp_c) and o.llp_c > 0, "optimizer.llp_c", "> 0", o.llp_c)
    _check(0 <= o.llp_ema < 1, "optimizer.llp_ema", "in [0, 1)", o.llp_ema)
    _check(0 <= o.llp_damping <= 1, "optimizer.llp_damping", "in [0, 1]", o.llp_damping)
    _check(o.llp_seed is None or o.llp_seed >= 0, "optimizer.llp_seed", ">= 0 or null",
           o.llp_seed)
    _check(o.step_size >= 1, "optimizer.step_size", ">= 1", o.step_size)
    _check(0 < o.gamma <= 1, "optimizer.gamma", "in (0, 1]", o.gamma)
    _check(0 <= o.min_lr <= o.lr, "optimizer.min_lr", "in [0, lr]", o.min_lr)
    _check(t.epochs >= 0, "train.epochs", ">= 0", t.epochs)
    _check(t.batch_size >= 1, "train.batch_size", ">= 1", t.batch_size)
    _check(t.eval_batch_size >= 1, "train.eval_batch_size", ">= 1", t.eval_batch_size)
    _check(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "> 0 or null", t.grad_clip)
    _check(t.target_train_loss is None or t.target_train_loss > 0, "train.target_train_loss",
           "> 0 or null", t.target_train_loss)
    _check(t.max_grad_evals is None or t.max_grad_evals >= 1, "train.max_grad_evals",
           ">= 1 or null", t.max_grad_evals)
    _check(t.checkpoint_every >= 1, "train.checkpoint_every", ">= 1", t.checkpoint_every)
    _check(t.checkpoint_interval_s >= 0, "train.checkpoint_interval_s", ">= 0",
           t.checkpoint_interval_s)
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", ">= 1", t.keep_checkpoints)
    _check(t.threads is None or t.threads >= 1, "train.threads", ">= 1 or null", t.threads)
    _check(m.width >= 1, "model.width", ">= 1", m.width)
    _check(m.depth >= 1, "model.depth", ">= 1", m.depth)
    _check(m.init_scale > 0, "model.init_scale", "> 0", m.init_scale)
    _check(m.patch_size >= 1, "model.patch_size", ">= 1", m.patch_size)
    _check(m.heads >= 1, "model.heads", ">= 1", m.heads)
    _check(m.kernel_size >= 1 and m.kernel_size % 2 == 1, "model.kernel_size", "odd and >= 1",
           m.kernel_size)
    if m.name == ModelName.vit:
        _check(m.width % m.heads == 0, "model.width", f"divisible by model.heads={m.heads}",
               m.width)
    _check(0 <= d.label_noise <= 1, "dataset.label_noise", "in [0, 1]", d.label_noise)
    _check(d.train_size is None or d.train_size >= 1, "dataset.train_size", ">= 1 or null",
           d.train_size)
    _check(d.test_size is None or d.test_size >= 1, "dataset.test_size", ">= 1 or null",
           d.test_size)
    _check(d.seed >= 0, "dataset.seed", ">= 0", d.seed)
    if any(str(getattr(x, "value", x)) in ("quadratic", "two_basin") for x in (d.name, m.name)):
        from landscope.synthetic import validate_synthetic

        validate_synthetic(cfg)  # the dataset/model pair and the synthetic fields
    p = cfg.probe
    _check(p.data_size is None or p.data_size >= 1, "probe.data_size", ">= 1 or null",
           p.data_size)
    _check(p.micro_batch >= 1, "probe.micro_batch", ">= 1", p.micro_batch)
    _check(p.ranks >= 1, "probe.ranks", ">= 1", p.ranks)
    _check(p.max_products is None or p.max_products >= 1, "probe.max_products", ">= 1 or null",
           p.max_products)
    _check(p.budget_s is None or p.budget_s > 0, "probe.budget_s", "> 0 seconds or null",
           p.budget_s)
    for key in ("top_k", "bottom_k", "every_n_epochs", "seed"):
        _check(getattr(p, key) >= 0, f"probe.{key}", ">= 0", getattr(p, key))
    _check(0 < p.lanczos_tol < 1, "probe.lanczos_tol", "in (0, 1)", p.lanczos_tol)
    _check(0 < p.trace_rse < 1, "probe.trace_rse", "in (0, 1)", p.trace_rse)
    _check(p.trace_max_samples >= 2, "probe.trace_max_samples", ">= 2", p.trace_max_samples)
    _check(p.slq_probes >= 1 and p.slq_steps >= 2, "probe.slq_probes/slq_steps",
           ">= 1 and >= 2", (p.slq_probes, p.slq_steps))
    _check(p.density_grid >= 2 and p.density_sigma > 0, "probe.density_grid/density_sigma",
           ">= 2 and > 0", (p.density_grid, p.density_sigma))
    _check(p.logdet_eps >= 0, "probe.logdet_eps", ">= 0", p.logdet_eps)
    _check(p.noise_samples >= 2, "probe.noise_samples", ">= 2", p.noise_samples)
    _check(len(p.sharpness_rhos) >= 1 and all(r > 0 for r in p.sharpness_rhos),
           "probe.sharpness_rhos", "a non-empty list of values > 0", list(p.sharpness_rhos))
    _check(len(p.keskar_epsilons) >= 1 and all(e > 0 for e in p.keskar_epsilons),
           "probe.keskar_epsilons", "a non-empty list of values > 0", list(p.keskar_epsilons))
    _check(p.block_top_k >= 1, "probe.block_top_k", ">= 1", p.block_top_k)
    if p.sharpness_antithetic:
        _check(p.sharpness_samples >= 4 and p.sharpness_samples % 2 == 0, "probe.sharpness_samples",
               "even and >= 4 with probe.sharpness_antithetic=true", p.sharpness_samples)
    _check(p.sharpness_samples >= 2, "probe.sharpness_samples", ">= 2", p.sharpness_samples)
    _check(p.pacbayes_data_size is None or p.pacbayes_data_size >= 2, "probe.pacbayes_data_size",
           ">= 2 or null (the bound needs m >= 2 samples)", p.pacbayes_data_size)
    _check(p.pacbayes_n_mc >= 1, "probe.pacbayes_n_mc", ">= 1", p.pacbayes_n_mc)
    _check(p.pacbayes_n_select >= 1, "probe.pacbayes_n_select", ">= 1", p.pacbayes_n_select)
    for key in ("pacbayes_delta", "pacbayes_delta_mc"):
        v = getattr(p, key)
        _check(math.isfinite(v) and 0 < v < 1, f"probe.{key}", "in (0, 1)", v)
    _check(p.pacbayes_delta + p.pacbayes_delta_mc < 1, "probe.pacbayes_delta + pacbayes_delta_mc",
           "< 1 (the bounds hold with probability 1 - their sum)",
           p.pacbayes_delta + p.pacbayes_delta_mc)
    _check(p.pacbayes_posterior in ("optimized", "grid"), "probe.pacbayes_posterior",
           "optimized or grid", p.pacbayes_posterior)
    for key in ("pacbayes_steps", "pacbayes_batch_size", "pacbayes_n_match"):
        _check(getattr(p, key) >= (0 if key == "pacbayes_steps" else 1), f"probe.{key}",
               ">= 0" if key == "pacbayes_steps" else ">= 1", getattr(p, key))
    for key in ("pacbayes_lr_mean", "pacbayes_lr_var"):
        _check(math.isfinite(getattr(p, key)) and getattr(p, key) >= 0, f"probe.{key}",
               "finite and >= 0", getattr(p, key))
    _check(len(p.pacbayes_beta_grid) >= 1 and all(math.isfinite(b) and b > 0
                                                  for b in p.pacbayes_beta_grid),
           "probe.pacbayes_beta_grid", "a non-empty list of finite values > 0",
           list(p.pacbayes_beta_grid))
    if p.pacbayes:
        _check(p.top_k >= 1, "probe.top_k", ">= 1 with probe.pacbayes=true (the Hessian-informed "
               "posterior uses the top-k eigenvectors)", p.top_k)
    timeout = cfg.logger.init_timeout
    _check(math.isfinite(timeout) and timeout > 0, "logger.init_timeout", "> 0 seconds", timeout)
    ls = cfg.landscape
    _check(ls.data_size is None or ls.data_size >= 1, "landscape.data_size", ">= 1 or null",
           ls.data_size)
    for key in ("seed", "line_directions", "line_eigen"):
        _check(getattr(ls, key) >= 0, f"landscape.{key}", ">= 0", getattr(ls, key))
    for key in ("batch_size", "workers", "intrinsic_epochs", "bezier_epochs"):
        _check(getattr(ls, key) >= 1, f"landscape.{key}", ">= 1", getattr(ls, key))
    for key in ("line_points", "plane_points", "trajectory_points"):
        v = getattr(ls, key)
        _check(v >= 3 and v % 2 == 1, f"landscape.{key}", "odd and >= 3 (the centre is a point)",
               v)
    for key in ("line_range", "plane_range", "intrinsic_lr", "bezier_lr"):
        v = getattr(ls, key)
        _check(math.isfinite(v) and v > 0, f"landscape.{key}", "> 0", v)
    _check(ls.snapshot_every_steps is None or ls.snapshot_every_steps >= 1,
           "landscape.snapshot_every_steps", ">= 1 or null", ls.snapshot_every_steps)
    _check(ls.snapshot_dtype in ("float32", "float16"), "landscape.snapshot_dtype",
           "float32 or float16", ls.snapshot_dtype)
    _check(len(ls.intrinsic_dims) >= 1 and all(d >= 1 for d in ls.intrinsic_dims),
           "landscape.intrinsic_dims", "a non-empty list of values >= 1", list(ls.intrinsic_dims))
    _check(ls.path_points >= 3, "landscape.path_points", ">= 3", ls.path_points)
