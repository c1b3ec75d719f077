"""Model zoo: ``build_model(cfg, meta)`` maps a model config and dataset metadata to a module.

Every model maps ``x`` of shape ``(B, *meta.input_shape)`` (float32) to logits
``(B, meta.num_classes)``; 1-D data ``(C, L)`` gets ``Conv1d``/``BatchNorm1d``/1-D pooling
and images ``(C, H, W)`` get the 2-D versions.  Shared knobs (see each module docstring
for what ``width`` and ``depth`` mean there):

* ``norm`` -- ``none | batch | layer``; ``skip`` -- residual connections on/off;
* ``activation`` -- ``relu | gelu | tanh | silu | elu | leaky_relu``;
* ``init_scale`` -- every parameter with ``dim() > 1`` is multiplied by it after the default
  initialisation (biases and norm parameters untouched);
* ``kernel_size`` (cnn, resnet), ``patch_size`` and ``heads`` (vit).

Architectures: :mod:`~landscope.models.mlp`, :mod:`~landscope.models.cnn`,
:mod:`~landscope.models.resnet`, :mod:`~landscope.models.vit`; the named models of the research
plan reuse them: ``resnet18`` / ``resnet34`` (CIFAR ResNets, BasicBlock stages ``[2, 2, 2, 2]`` /
``[3, 4, 6, 3]``, channels ``width * (1, 2, 4, 8)``; ``model.depth`` must be 18 / 34, the
layout being fixed by the name) and ``vit_small`` (the vit with an MLP ratio of 4 instead of 2;
its conf file holds ViT-S's sizes: patch 4, width 384, depth 12, 6 heads, each overridable, so
tests build tiny ones).  ``quadratic`` and ``two_basin``
are the models of the synthetic datasets of the same names (:mod:`landscope.synthetic`: a
parameter vector, ``init_scale * N(0, I)``; they run on their own dataset only).  No dropout
anywhere and no in-place ops on activations, so models work under ``torch.func.functional_call``,
``grad``, ``jvp``, ``hessian`` and ``vmap``.  With ``norm=batch`` in train mode the forward
updates running statistics in place, which the ``torch.func`` transforms reject: probe in
``eval()`` mode or inside :func:`frozen_batchnorm_stats` (batch statistics, no buffer
writes).  ``build_model`` does not seed: call
``torch.manual_seed`` first for a reproducible initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from landscope import synthetic
from landscope.config import Choice, ModelConfig
from landscope.errors import ConfigError
from landscope.losses import attach, loss_of
from landscope.models.blocks import (
    ACTIVATIONS,
    NORMS,
    frozen_batchnorm_stats,
    scale_weights,
    spatial_dims_of,
)
from landscope.models.cnn import CNN
from landscope.models.mlp import MLP
from landscope.models.resnet import NAMED_STAGES, ResNet, named_depth
from landscope.models.vit import MLP_RATIO, MLP_RATIO_SMALL, ViT

__all__ = ["FIXED_DEPTH", "MODEL_NAMES", "build_model", "check_named_model", "count_parameters",
           "frozen_batchnorm_stats", "MLP", "CNN", "ResNet", "ViT"]

MODEL_NAMES: tuple[str, ...] = ("mlp", "cnn", "resnet", "vit", "resnet18", "resnet34", "vit_small",
                                 *synthetic.SYNTHETIC)
# Named models whose depth the name fixes: model.depth must equal it.
FIXED_DEPTH: dict[str, int] = {name: named_depth(name) for name in NAMED_STAGES}
_DEFAULTS = ModelConfig()


def _field(cfg: Any, key: str) -> Any:
    """``cfg.key`` for a dataclass / DictConfig / mapping, falling back to the schema default."""
    default = getattr(_DEFAULTS, key)
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    value = default if value is None else value
    return str(value) if isinstance(value, Choice) else value


def _require(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"model.{key} must be {requirement} (got {value!r})")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (``sum(p.numel())``), optionally only ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_named_model(cfg: Any) -> None:
    """The checks of the named models that need no data (the job runs them before writing
    anything): resnet18/34's fixed depth, vit_small's width divisible by its heads."""
    name, depth = _field(cfg, "name"), _field(cfg, "depth")
    if name in FIXED_DEPTH:
        _require(depth == FIXED_DEPTH[name], "depth", f"{FIXED_DEPTH[name]} with model={name} "
                 f"(its stages are fixed: {list(NAMED_STAGES[name])} blocks; use model=resnet "
                 "for another depth)", depth)
    if name == "vit_small":
        width, heads = _field(cfg, "width"), _field(cfg, "heads")
        _require(isinstance(heads, int) and heads >= 1 and width % heads == 0, "width",
                 f"divisible by model.heads={heads}", width)


def build_model(cfg: Any, meta: Any, loss: Any = None) -> nn.Module:
    """Build the model ``cfg`` describes for data with ``meta.input_shape``/``num_classes``,
    with the task loss of the ``loss`` config node (None: cross-entropy; losses.attach).

    ``cfg`` is a :class:`~landscope.config.ModelConfig`, a DictConfig with its fields, or a
    mapping.  Raises :class:`~landscope.errors.ConfigError` (one-line message) for an unknown
    name/norm/activation or an impossible combination such as a vit width not divisible by
    heads.  Weights are drawn from the global torch RNG.
    """
    name = _field(cfg, "name")
    width, depth = _field(cfg, "width"), _field(cfg, "depth")
    norm, activation = _field(cfg, "norm"), _field(cfg, "activation")
    skip, init_scale = bool(_field(cfg, "skip")), _field(cfg, "init_scale")
    _require(name in MODEL_NAMES, "name", f"one of {', '.join(MODEL_NAMES)}", name)
    _require(isinstance(width, int) and width >= 1, "width", "an integer >= 1", width)
    _require(isinstance(depth, int) and depth >= 1, "depth", "an integer >= 1", depth)
    _require(norm in NORMS, "norm", f"one of {', '.join(NORMS)}", norm)
    _require(activation in ACTIVATIONS, "activation", f"one of {', '.join(ACTIVATIONS)}",
             activation)
    _require(isinstance(init_scale, (int, float)) and math.isfinite(init_scale)
             and init_scale > 0, "init_scale", "finite and > 0", init_scale)

    if synthetic.is_synthetic(name):
        return attach(synthetic.build_synthetic_model(name, meta, float(init_scale)),
                      loss_of(loss))
    if getattr(meta, "problem", None) is not None:
        raise ConfigError(f"dataset={meta.name} runs only with model={meta.name} (got "
                          f"model={name})")
    input_shape = tuple(int(s) for s in meta.input_shape)
    num_classes = int(meta.num_classes)
    if num_classes < 1 or not input_shape or min(input_shape) < 1:
        raise ConfigError(f"dataset metadata needs num_classes >= 1 and a non-empty positive "
                          f"input_shape (got {num_classes}, {input_shape})")
    common = dict(input_shape=input_shape, num_classes=num_classes, width=width, depth=depth,
                  norm=norm, skip=skip, activation=activation)

    model: nn.Module
    if name == "mlp":
        model = MLP(**common)
    elif name in ("cnn", "resnet", *NAMED_STAGES):
        spatial_dims_of(input_shape, name)
        kernel_size = _field(cfg, "kernel_size")
        _require(isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1,
                 "kernel_size", "odd and >= 1", kernel_size)
        if name in NAMED_STAGES:
            check_named_model(cfg)
            model = ResNet(**common, kernel_size=kernel_size, stages=NAMED_STAGES[name])
        else:
            model = (CNN if name == "cnn" else ResNet)(**common, kernel_size=kernel_size)
    else:
        spatial_dims_of(input_shape, name)
        patch_size, heads = _field(cfg, "patch_size"), _field(cfg, "heads")
        _require(isinstance(patch_size, int) and patch_size >= 1, "patch_size",
                 "an integer >= 1", patch_size)
        _require(isinstance(heads, int) and heads >= 1, "heads", "an integer >= 1", heads)
        _require(width % heads == 0, "width", f"divisible by model.heads={heads}", width)
        model = ViT(**common, patch_size=patch_size, heads=heads,
                    mlp_ratio=MLP_RATIO_SMALL if name == "vit_small" else MLP_RATIO)
    scale_weights(model, float(init_scale))
    return attach(model, loss_of(loss))
