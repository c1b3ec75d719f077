"""The closed sets of choices of the config (each an :class:`Choice`: a ``str`` enum whose
``str()`` and format are its value, so ``str(cfg.model.norm) == "batch"`` whether the node
holds the enum or the plain string a stored config.yaml gives back)."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A config choice; compares equal to, prints as and formats as its value.

    >>> str(Norm.batch), f"{Norm.batch}", Norm.batch == "batch"
    ('batch', 'batch', True)
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class DatasetName(Choice):
    mnist1d = "mnist1d"
    digits = "digits"
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    quadratic = "quadratic"  # synthetic, closed-form answers (landscope.synthetic)
    two_basin = "two_basin"  # synthetic, closed-form answers (landscope.synthetic)
    cifar_like = "cifar_like"  # seeded tensors of CIFAR's shape (3x32x32): benchmarks, no files
    tiny_imagenet = "tiny_imagenet"  # 200 classes of 64x64 images, read from data_dir


class ModelName(Choice):
    mlp = "mlp"
    cnn = "cnn"
    resnet = "resnet"
    vit = "vit"
    resnet18 = "resnet18"  # He et al. 2016, CIFAR stem (3x3 conv, no max-pool)
    resnet34 = "resnet34"
    vit_small = "vit_small"  # patch 4, dim 384, depth 12, 6 heads
    quadratic = "quadratic"  # only with dataset=quadratic
    two_basin = "two_basin"  # only with dataset=two_basin


class Norm(Choice):
    none = "none"
    batch = "batch"
    layer = "layer"


class Activation(Choice):
    relu = "relu"
    gelu = "gelu"
    tanh = "tanh"
    silu = "silu"
    elu = "elu"
    leaky_relu = "leaky_relu"


class OptimizerName(Choice):
    sgd = "sgd"
    momentum = "momentum"
    adam = "adam"
    adamw = "adamw"
    sam = "sam"
    llp = "llp"  # curvature-probing "bore-hole" optimizer (landscope.optim.llp)


class BaseOptimizerName(Choice):
    """Optimizers SAM and LLP can wrap."""

    sgd = "sgd"
    momentum = "momentum"
    adam = "adam"
    adamw = "adamw"


class LLPRule(Choice):
    """LLP learning-rate rule: inverse = min(lr, llp.c * s / curvature); none = lr."""

    inverse = "inverse"
    none = "none"


class LLPCurvature(Choice):
    """LLP curvature scale: frobenius = sqrt(D * agg ||Hd||^2) (~||H||_F); raw = agg ||Hd||."""

    frobenius = "frobenius"
    raw = "raw"


class LLPAggregate(Choice):
    """How LLP combines its N probe directions in the curvature scale (median: robust to
    the direction that crosses a ReLU kink)."""

    median = "median"
    mean = "mean"
    max = "max"


class LLPMetaAction(Choice):
    """What LLP's meta-model does with its prediction (landscope.optim.llp_meta): scale = step
    times clip(predicted / mean realised decrease, min_scale, 1); veto = min_scale when a loss
    increase is predicted."""

    scale = "scale"
    veto = "veto"


class Schedule(Choice):
    constant = "constant"
    cosine = "cosine"
    step = "step"


class LossName(Choice):
    """The training objective (landscope.losses)."""

    cross_entropy = "cross_entropy"
    mse = "mse"  # squared error on one-hot targets: 1/2 sum_c (f_c - onehot_c)^2, mean over samples


class AugmentName(Choice):
    """Training-data augmentation (probes, slices and evaluation use the un-augmented data)."""

    none = "none"
    basic = "basic"  # images: random crop with padding + horizontal flip; 1-D: shift + jitter


class Corruption(Choice):
    """Deterministic corruptions of an image test set into its shifted (ood) split."""

    noise = "noise"  # additive Gaussian pixel noise
    blur = "blur"  # Gaussian blur
    contrast = "contrast"  # contrast reduced towards the image mean


class Precision(Choice):
    """Training arithmetic: fp32, or autocast to bf16 / fp16 (fp16 with a gradient scaler)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ProbeName(Choice):
    none = "none"
    basic = "basic"
    standard = "standard"
    full = "full"
    pacbayes = "pacbayes"  # standard + PAC-Bayes bounds (H4)


class PerBlock(Choice):
    """Diagonal Hessian blocks probed one by one: none, per layer (owning module), per block."""

    none = "none"
    layer = "layer"
    block = "block"


class NoiseAlignment(Choice):
    """How tr(H Sigma) is computed: exact (n HVPs), hutchinson (30), lowrank (top-5 of Sigma)."""

    exact = "exact"
    hutchinson = "hutchinson"
    lowrank = "lowrank"


class ProbeMode(Choice):
    """BatchNorm/dropout semantics of the probed loss."""

    eval = "eval"
    train = "train"  # batch statistics over a fixed micro-batch partition


class LandscapeName(Choice):
    none = "none"
    basic = "basic"
    full = "full"


class DirectionNorm(Choice):
    """How random directions are scaled to the weights (Li et al. 2018)."""

    filter = "filter"  # each filter / output row to the norm of the weights' filter
    layer = "layer"  # each parameter tensor to its norm
    model = "model"  # the whole direction to the norm of the whole parameter vector
    none = "none"  # raw N(0, 1) entries


class BNStats(Choice):
    """BatchNorm running statistics at an evaluated point."""

    keep = "keep"  # those of the trained model
    recompute = "recompute"  # re-estimated at every point on the slice data


class Projection(Choice):
    """Random projection P of intrinsic-dimension training (theta = theta0 + P theta_d)."""

    dense = "dense"
    sparse = "sparse"
    fastfood = "fastfood"


class LoggerName(Choice):
    none = "none"
    wandb = "wandb"


class WandbMode(Choice):
    auto = "auto"  # online when an API key is configured, else offline
    online = "online"
    offline = "offline"
    disabled = "disabled"
