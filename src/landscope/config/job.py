"""The groups that say what a job trains: ``dataset``, ``model``, ``optimizer``, ``train``,
and ``logger`` (which changes no result). Each field carries its default and meaning, each
group its :meth:`check`; options marked :data:`~landscope.config.check.LAYOUT` change how a
job runs, never what it computes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from landscope.config.check import LAYOUT, need, positive, read_if
from landscope.config.choices import (
    Activation,
    AugmentName,
    BaseOptimizerName,
    Corruption,
    DatasetName,
    LLPAggregate,
    LLPCurvature,
    LLPMetaAction,
    LLPRule,
    LoggerName,
    LossName,
    ModelName,
    Norm,
    OptimizerName,
    Precision,
    Schedule,
    WandbMode,
)

#: the OOD split's settings are read only with it on; the corruptions only on image sets
_OOD_ON = read_if(lambda ood, root: ood["enabled"])
_OOD_IMAGES = read_if(lambda ood, root: ood["enabled"] and root["dataset"]["name"] != "mnist1d")


@dataclass
class OODConfig:
    """A shifted ("out-of-distribution") test split beside the test split
    (:mod:`landscope.data_shift`): for MNIST-1D a second split drawn from the generator with
    more shear, scale and noise; for image sets the test images under deterministic
    corruptions. Evaluated every epoch (``ood_test_loss``, ``ood_test_acc``); it changes no
    other result."""

    enabled: bool = False
    # 1 (mild) .. 5 (strong): corruption strength / generator shift
    severity: int = field(default=3, metadata=_OOD_ON)
    corruptions: List[Corruption] = field(
        default_factory=lambda: [Corruption.noise, Corruption.blur, Corruption.contrast],
        metadata=_OOD_IMAGES)
    # samples in the split; null = as many as the test split
    size: Optional[int] = field(default=None, metadata=_OOD_ON)

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(1 <= self.severity <= 5, "dataset.ood.severity", "in 1..5", self.severity)
        need(len(self.corruptions) >= 1, "dataset.ood.corruptions", "a non-empty list",
             list(self.corruptions))
        need(self.size is None or self.size >= 1, "dataset.ood.size", ">= 1 or null",
             self.size)


_SYNTHETIC = (DatasetName.quadratic, DatasetName.two_basin)
_SYNTHETIC_ONLY = read_if(lambda dataset, root: dataset["name"] in _SYNTHETIC)
_QUADRATIC_ONLY = read_if(lambda dataset, root: dataset["name"] == "quadratic")
# the generated spectrum's settings: unread when dataset.spectrum gives the eigenvalues
_GENERATED_ONLY = read_if(lambda dataset, root: dataset["name"] == "quadratic"
                          and dataset["spectrum"] is None)
_TWO_BASIN_ONLY = read_if(lambda dataset, root: dataset["name"] == "two_basin")
_NOT_IMAGES = (DatasetName.mnist1d, *_SYNTHETIC)  # dataset.image_size makes no sense for them


@dataclass
class DatasetConfig:
    """Which data, and how much of it.

    ``seed`` fixes the train subset and the label noise; it is separate from the
    job seed so that a multi-seed sweep trains every seed on the same data.
    """

    name: DatasetName = DatasetName.mnist1d
    data_dir: str = field(default="data", metadata=LAYOUT)
    download: bool = field(default=False, metadata=LAYOUT)
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
    # this many classes drawn with dataset.seed (relabelled 0..k-1 in sorted order), before
    # train_size/test_size subsetting; null = all (tiny_imagenet: 200 classes)
    class_subset: Optional[int] = None
    image_size: Optional[int] = None  # image sets: resized to this side; null = native size
    ood: OODConfig = field(default_factory=OODConfig)  # the shifted test split
    # Synthetic problems (landscope.synthetic; ignored by the other datasets). Their
    # train_size/test_size are the generated sample counts (null = 256).
    # quadratic: target noise sigma; two_basin: gradient-noise std
    noise: float = field(default=0.5, metadata=_SYNTHETIC_ONLY)
    # test optimum moved by this (quadratic: norm; two_basin: along v)
    test_shift: float = field(default=0.3, metadata=_SYNTHETIC_ONLY)
    # quadratic: eigenvalues of A; null = generated: the outliers, then dim - len(outliers)
    # values from 1 down to 1/condition
    spectrum: Optional[List[float]] = field(default=None, metadata=_QUADRATIC_ONLY)
    dim: int = field(default=20, metadata=_GENERATED_ONLY)
    condition: float = field(default=100.0, metadata=_GENERATED_ONLY)
    outliers: List[float] = field(default_factory=lambda: [10.0, 5.0],
                                  metadata=_GENERATED_ONLY)
    # quadratic: correct iff |noise-free residual| < tolerance
    tolerance: float = field(default=0.5, metadata=_QUADRATIC_ONLY)
    # two_basin: d2L/dv2 at the sharp minimum (-1, 0)
    sharp_curvature: float = field(default=10.0, metadata=_TWO_BASIN_ONLY)
    # two_basin: d2L/dv2 at the flat minimum (1, 0)
    flat_curvature: float = field(default=1.0, metadata=_TWO_BASIN_ONLY)
    # two_basin: saddle loss minus the mean of the minima's losses
    barrier: float = field(default=0.125, metadata=_TWO_BASIN_ONLY)
    # two_basin: saddle at u = tilt in (-1, 1); > 0: sharp minimum deeper
    tilt: float = field(default=0.0, metadata=_TWO_BASIN_ONLY)

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(0 <= self.label_noise <= 1, "dataset.label_noise", "in [0, 1]", self.label_noise)
        for key in ("train_size", "test_size"):
            v = getattr(self, key)
            need(v is None or v >= 1, f"dataset.{key}", ">= 1 or null", v)
        need(self.seed >= 0, "dataset.seed", ">= 0", self.seed)
        need(self.class_subset is None or self.class_subset >= 2, "dataset.class_subset",
             ">= 2 or null", self.class_subset)
        need(self.image_size is None or self.image_size >= 1, "dataset.image_size",
             ">= 1 or null", self.image_size)
        need(self.image_size is None or self.name not in _NOT_IMAGES, "dataset.image_size",
             f"null with dataset={self.name} (not an image set)", self.image_size)
        need(self.class_subset is None or self.name not in _SYNTHETIC, "dataset.class_subset",
             f"null with dataset={self.name} (a synthetic problem)", self.class_subset)
        need(self.classes is None or self.class_subset is None, "dataset.class_subset",
             "null when dataset.classes is set (choose classes one way)", self.class_subset)
        self.ood.check()


# What landscope.models.build_model reads (fingerprints.MARKED_LATER): the synthetic
# problems' models only init_scale, the convolutions' kernel and the ViTs' patch and heads
_NETWORK = read_if(lambda model, root: model["name"] not in ("quadratic", "two_basin"))
_CONV = read_if(lambda model, root: model["name"] in ("cnn", "resnet", "resnet18", "resnet34"))
_VIT = read_if(lambda model, root: model["name"] in ("vit", "vit_small"))


@dataclass
class ModelConfig:
    name: ModelName = ModelName.mlp
    width: int = field(default=128, metadata=_NETWORK)
    depth: int = field(default=3, metadata=_NETWORK)
    norm: Norm = field(default=Norm.none, metadata=_NETWORK)
    skip: bool = field(default=False, metadata=_NETWORK)
    activation: Activation = field(default=Activation.relu, metadata=_NETWORK)
    init_scale: float = 1.0
    # vit: patch length (1-D) or side (images)
    patch_size: int = field(default=4, metadata=_VIT)
    heads: int = field(default=4, metadata=_VIT)  # vit: attention heads (must divide width)
    kernel_size: int = field(default=3, metadata=_CONV)  # cnn / resnet

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        for key in ("width", "depth", "patch_size", "heads"):
            need(getattr(self, key) >= 1, f"model.{key}", ">= 1", getattr(self, key))
        need(self.init_scale > 0, "model.init_scale", "> 0", self.init_scale)
        need(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "model.kernel_size",
             "odd and >= 1", self.kernel_size)
        if self.name == ModelName.vit:
            need(self.width % self.heads == 0, "model.width",
                 f"divisible by model.heads={self.heads}", self.width)


@dataclass
class LossConfig:
    """The training objective (:mod:`landscope.losses`). The Hessian every probe, slice,
    sharpness measure and PAC-Bayes search sees is the Hessian of this loss; accuracy stays
    the metric.

    ``mse``: 1/2 sum_c (f_c(x) - onehot_c(y))^2 per sample, averaged over samples (the
    squared loss of Cohen et al. 2021's edge-of-stability experiments)."""

    name: LossName = LossName.cross_entropy
    # cross_entropy: targets (1 - s) onehot + s / C (Szegedy et al. 2016); 0 = plain
    label_smoothing: float = 0.0

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(0 <= self.label_smoothing < 1, "loss.label_smoothing", "in [0, 1)",
             self.label_smoothing)
        need(self.name == LossName.cross_entropy or self.label_smoothing == 0,
             "loss.label_smoothing", "0 with loss=mse (it smooths cross-entropy targets)",
             self.label_smoothing)


_AUGMENTING = read_if(lambda augment, root: augment["name"] != "none")


@dataclass
class AugmentConfig:
    """Training-data augmentation (:mod:`landscope.augment`), drawn per (seed, epoch) so a
    resumed job sees the same batches. Evaluation, probes and slices use the un-augmented
    data."""

    name: AugmentName = AugmentName.none
    # images: zero padding on each side before the random crop
    padding: int = field(default=4, metadata=_AUGMENTING)
    # images: horizontal flip with probability 1/2
    flip: bool = field(default=True, metadata=_AUGMENTING)
    # 1-D signals: circular shift by up to this many positions either way
    shift: int = field(default=4, metadata=_AUGMENTING)
    # 1-D signals: std of additive Gaussian noise (input units)
    jitter: float = field(default=0.05, metadata=_AUGMENTING)

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        for key in ("padding", "shift"):
            need(getattr(self, key) >= 0, f"augment.{key}", ">= 0", getattr(self, key))
        need(self.jitter >= 0, "augment.jitter", ">= 0", self.jitter)


#: the meta-model's settings (and the switch itself: off hashes as LLP did before it existed)
_META_ON = read_if(lambda llp, root: llp["meta"])


@dataclass
class LLPConfig:
    """LLP (:mod:`landscope.optim.llp`, ``optimizer=llp``): every ``every`` steps, ``probes``
    random unit directions d, curvature from the gradient change
    (grad L(theta + eps d) - grad L(theta)) / eps on the mini-batch; step
    lr_t = min(lr, c * s / curvature), s = 1 + momentum for a momentum base (else 1); lr is
    the cap. Cost: 1 + probes / every gradient evals per step. Only LLP reads these."""

    probes: int = 4  # N directions per probe step
    eps: float = 1e-4  # finite-difference distance (l2); ReLU kinks bias larger ones
    every: int = 10  # k: steps between probe steps
    rule: LLPRule = LLPRule.inverse
    c: float = 1.0  # 1: eta * lambda_max <= 1, half the stability limit 2 (Cohen et al. 2021)
    curvature: LLPCurvature = LLPCurvature.frobenius
    aggregate: LLPAggregate = LLPAggregate.median
    ema: float = 0.9  # smoothing of the curvature across probe steps (0 = latest only)
    damping: float = 0.0  # in [0, 1]: gradient components along span{Hd_i} times (1 - this)
    seed: Optional[int] = None  # directions' generator; null = the job seed
    # meta-model (landscope.optim.llp_meta): online ridge regression from probe features to
    # the relative mini-batch loss decrease over the next meta_horizon steps; after
    # meta_warmup samples it scales (or vetoes) the steps until the next probe step
    meta: bool = field(default=False, metadata=_META_ON)  # off: LLP as before the meta-model
    meta_action: LLPMetaAction = field(default=LLPMetaAction.scale, metadata=_META_ON)
    # lambda of (X^T X + lambda I)^-1 X^T y
    meta_ridge: float = field(default=1.0, metadata=_META_ON)
    # completed samples before the factor acts (factor 1 before)
    meta_warmup: int = field(default=10, metadata=_META_ON)
    # H: steps after a probe step over which the decrease is measured
    meta_horizon: int = field(default=10, metadata=_META_ON)
    # in (0, 1]: smallest factor; under veto the factor
    meta_min_scale: float = field(default=0.1, metadata=_META_ON)

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        for key in ("probes", "every"):
            need(getattr(self, key) >= 1, f"optimizer.llp.{key}", ">= 1", getattr(self, key))
        for key in ("eps", "c"):
            need(positive(getattr(self, key)), f"optimizer.llp.{key}", "> 0",
                 getattr(self, key))
        need(0 <= self.ema < 1, "optimizer.llp.ema", "in [0, 1)", self.ema)
        need(0 <= self.damping <= 1, "optimizer.llp.damping", "in [0, 1]", self.damping)
        need(self.seed is None or self.seed >= 0, "optimizer.llp.seed", ">= 0 or null",
             self.seed)
        need(positive(self.meta_ridge), "optimizer.llp.meta_ridge", "> 0", self.meta_ridge)
        for key in ("meta_warmup", "meta_horizon"):
            need(getattr(self, key) >= 1, f"optimizer.llp.{key}", ">= 1", getattr(self, key))
        need(0 < self.meta_min_scale <= 1, "optimizer.llp.meta_min_scale", "in (0, 1]",
             self.meta_min_scale)


def _stepper(opt: dict) -> str:
    """The optimizer that takes the steps: ``base`` under sam and llp, else ``name``."""
    return opt["base"] if opt["name"] in ("sam", "llp") else opt["name"]


# What landscope.optim.build_optimizer and build_scheduler read (fingerprints.MARKED_LATER
# keeps the version-2 hashes of the jobs that read them)
_WRAPPING = read_if(lambda opt, root: opt["name"] in ("sam", "llp"))
_MOMENTUM = read_if(lambda opt, root: _stepper(opt) == "momentum")
_ADAM = read_if(lambda opt, root: _stepper(opt) in ("adam", "adamw"))
_SAM = read_if(lambda opt, root: opt["name"] == "sam")
_STEP = read_if(lambda opt, root: opt["schedule"] == "step")
_COSINE = read_if(lambda opt, root: opt["schedule"] == "cosine")


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.sgd
    lr: float = 0.1
    momentum: float = field(default=0.0, metadata=_MOMENTUM)
    nesterov: bool = field(default=False, metadata=_MOMENTUM)
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999], metadata=_ADAM)
    eps: float = field(default=1e-8, metadata=_ADAM)
    # SAM (Foret et al. 2021): two-step ascent/descent around a base optimizer.
    rho: float = field(default=0.05, metadata=_SAM)
    # ASAM (Kwon et al. 2021): perturbation scaled by |theta|
    adaptive: bool = field(default=False, metadata=_SAM)
    # what sam and llp wrap
    base: BaseOptimizerName = field(default=BaseOptimizerName.momentum, metadata=_WRAPPING)
    # LLP (landscope.optim.llp), the curvature-probing optimizer around ``base``
    llp: LLPConfig = field(default_factory=LLPConfig,
                           metadata=read_if(lambda opt, root: opt["name"] == "llp"))
    # learning-rate schedule, stepped once per epoch
    schedule: Schedule = Schedule.constant
    step_size: int = field(default=10, metadata=_STEP)  # step: epochs between decays
    gamma: float = field(default=0.1, metadata=_STEP)  # step: decay factor
    min_lr: float = field(default=0.0, metadata=_COSINE)  # cosine: final learning rate

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(positive(self.lr), "optimizer.lr", "> 0", self.lr)
        need(self.weight_decay >= 0, "optimizer.weight_decay", ">= 0", self.weight_decay)
        need(0 <= self.momentum < 1, "optimizer.momentum", "in [0, 1)", self.momentum)
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optimizer.betas",
             "two values in [0, 1)", list(self.betas))
        need(self.eps > 0, "optimizer.eps", "> 0", self.eps)
        need(self.rho > 0, "optimizer.rho", "> 0", self.rho)
        self.llp.check()
        need(self.step_size >= 1, "optimizer.step_size", ">= 1", self.step_size)
        need(0 < self.gamma <= 1, "optimizer.gamma", "in (0, 1]", self.gamma)
        need(0 <= self.min_lr <= self.lr, "optimizer.min_lr", "in [0, lr]", self.min_lr)


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 64
    full_batch: bool = False  # one gradient step per epoch on the whole training set
    grad_clip: Optional[float] = None  # max global gradient norm; null = off
    target_train_loss: Optional[float] = None  # stop once the train loss (loss group) <= this
    # stop after the step that brings the gradient evaluations (forward+backward passes over a
    # mini-batch, SAM's and LLP's extra ones included) to >= this; null = no budget
    max_grad_evals: Optional[int] = None
    eval_batch_size: int = 2048
    # A checkpoint is written at the end of an epoch that is a multiple of
    # checkpoint_every once checkpoint_interval_s have passed since the last one, and
    # always after the last epoch. Resuming from any of them gives identical results.
    checkpoint_every: int = field(default=1, metadata=LAYOUT)
    checkpoint_interval_s: float = field(default=10.0, metadata=LAYOUT)
    keep_checkpoints: int = field(default=2, metadata=LAYOUT)
    # a job that would train from scratch starts from the checkpoints of a finished job of the
    # same training in a directory beside it (a sweep over probe or landscape settings), as
    # landscope.jobreuse says; false: every job trains
    reuse_trained: bool = field(default=True, metadata=LAYOUT)
    # torch intra-op threads; null = auto
    threads: Optional[int] = field(default=None, metadata=LAYOUT)
    # tqdm bar; null = only on an interactive terminal
    progress: Optional[bool] = field(default=None, metadata=LAYOUT)
    device: str = "cpu"
    # arithmetic of the training forward/backward (probes always run in fp32, float64 in verify)
    precision: Precision = Precision.fp32

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(self.epochs >= 0, "train.epochs", ">= 0", self.epochs)
        for key in ("batch_size", "eval_batch_size", "checkpoint_every", "keep_checkpoints"):
            need(getattr(self, key) >= 1, f"train.{key}", ">= 1", getattr(self, key))
        for key in ("grad_clip", "target_train_loss"):
            v = getattr(self, key)
            need(v is None or v > 0, f"train.{key}", "> 0 or null", v)
        for key in ("max_grad_evals", "threads"):
            v = getattr(self, key)
            need(v is None or v >= 1, f"train.{key}", ">= 1 or null", v)
        need(self.checkpoint_interval_s >= 0, "train.checkpoint_interval_s", ">= 0",
             self.checkpoint_interval_s)


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

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(positive(self.init_timeout), "logger.init_timeout", "> 0 seconds",
             self.init_timeout)
