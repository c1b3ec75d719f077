"""Tests for landscope.models: shapes, norm/skip/activation/init_scale, errors, torch.func."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from landscope.config import Activation, ModelConfig, ModelName, Norm
from landscope.errors import ConfigError
from landscope.models import FIXED_DEPTH, build_model, count_parameters, frozen_batchnorm_stats
from landscope.models.resnet import blocks_per_stage
from landscope.synthetic import SYNTHETIC


@dataclass(frozen=True)
class Meta:
    """Stand-in for landscope.data.DatasetMeta (only the fields models read)."""

    input_shape: tuple[int, ...]
    num_classes: int



ARCHS = [m.value for m in ModelName if m.value not in SYNTHETIC]  # classifiers
NORMS = [n.value for n in Norm]
ONE_D = Meta((1, 40), 10)
IMAGE = Meta((3, 8, 8), 5)
MNIST = Meta((1, 28, 28), 10)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
ACT_TYPES = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "elu": nn.ELU,
             "leaky_relu": nn.LeakyReLU}


def small_cfg(name: str, **kw) -> ModelConfig:
    base = dict(name=ModelName(name), width=8, depth=2, heads=2, patch_size=4)
    base.update(kw)
    if name in FIXED_DEPTH:  # resnet18/34: the name fixes the depth
        base["depth"] = FIXED_DEPTH[name]
    return ModelConfig(**base)


def build(name: str, meta: Meta = ONE_D, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(small_cfg(name, **kw), meta)


def batch(meta: Meta, n: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *meta.input_shape, generator=g)


def count(model: nn.Module, types) -> int:
    return sum(isinstance(m, types) for m in model.modules())


def check_forward_backward(model: nn.Module, meta: Meta) -> None:
    x = batch(meta)
    x_before = x.clone()
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        out = model(x)
        assert out.shape == (x.shape[0], meta.num_classes)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        out.square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
    assert torch.equal(x, x_before)  # inputs are never modified


@pytest.mark.parametrize("kind", ["1d", "image"])
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ARCHS)
def test_forward_backward_every_combination(name, norm, skip, kind):
    meta = ONE_D if kind == "1d" else IMAGE
    check_forward_backward(build(name, meta, norm=norm, skip=skip), meta)


@pytest.mark.parametrize("name", ARCHS)
def test_forward_backward_mnist_shape(name):
    check_forward_backward(build(name, MNIST, norm="batch", skip=True), MNIST)


@pytest.mark.parametrize("name", ["cnn", "resnet", "vit", "resnet18", "vit_small"])
@pytest.mark.parametrize("meta", [Meta((2, 3), 4), Meta((1, 2, 3), 4), Meta((1, 41), 3)])
def test_tiny_and_odd_inputs(name, meta):
    """Downsampling stops when the feature map gets small; odd sizes are fine."""
    check_forward_backward(build(name, meta, norm="layer", skip=True, depth=3), meta)


def test_conv_layers_follow_input_rank():
    for name in ("cnn", "resnet", "vit", "resnet18", "resnet34", "vit_small"):
        m1, m2 = build(name, ONE_D, norm="batch"), build(name, IMAGE, norm="batch")
        assert count(m1, nn.Conv1d) > 0 and count(m1, nn.Conv2d) == 0
        assert count(m2, nn.Conv2d) > 0 and count(m2, nn.Conv1d) == 0
        if not name.startswith("vit"):
            assert count(m1, nn.BatchNorm1d) > 0 and count(m1, nn.BatchNorm2d) == 0
            assert count(m2, nn.BatchNorm2d) > 0 and count(m2, nn.BatchNorm1d) == 0
            assert count(m1, nn.MaxPool2d) == 0


@pytest.mark.parametrize("name", ARCHS)
def test_skip_changes_the_computation(name):
    x = batch(IMAGE)
    plain, res = build(name, IMAGE, skip=False).eval(), build(name, IMAGE, skip=True).eval()
    assert not torch.allclose(plain(x), res(x))
    shortcuts = [n for n, _ in res.named_modules() if "shortcut" in n]
    if name.startswith("resnet"):
        assert shortcuts  # identity and projection shortcuts
        assert not [n for n, _ in plain.named_modules() if "shortcut" in n]
        assert count(res, nn.Conv2d) > count(plain, nn.Conv2d)  # 1x1 projections
    else:  # skip only rewires the forward: same parameters from the same seed
        sd_plain, sd_res = plain.state_dict(), res.state_dict()
        assert sd_plain.keys() == sd_res.keys()
        assert all(torch.equal(sd_plain[k], sd_res[k]) for k in sd_plain)


def test_mlp_skip_is_exactly_residual():
    model = build("mlp", ONE_D, skip=True, depth=2).eval()
    x = batch(ONE_D)
    h = model.input_layer(x.flatten(1))
    block = model.hidden[0]
    expected = model.head(h + block.act(block.norm(block.linear(h))))
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ARCHS)
def test_norm_layers_as_configured(name, norm):
    depth = 3
    model = build(name, IMAGE, norm=norm, depth=depth, skip=False)
    n_bn, n_ln, n_gn = count(model, BN_TYPES), count(model, nn.LayerNorm), count(model,
                                                                               nn.GroupNorm)
    expected = {"mlp": depth, "cnn": 2 * depth, "resnet": 1 + 2 * depth, "vit": 2 * depth + 1,
                "resnet18": 1 + 2 * 8, "resnet34": 1 + 2 * 16, "vit_small": 2 * depth + 1}
    if norm == "none":
        assert n_bn == n_ln == n_gn == 0
    elif norm == "batch":
        assert (n_bn, n_ln, n_gn) == (expected[name], 0, 0)
    elif name in ("mlp", "vit", "vit_small"):
        assert (n_bn, n_ln, n_gn) == (0, expected[name], 0)
    else:
        assert (n_bn, n_ln, n_gn) == (0, 0, expected[name])
        assert all(m.num_groups == 1 for m in model.modules() if isinstance(m, nn.GroupNorm))


def test_vit_batch_norm_pools_over_tokens():
    model = build("vit", ONE_D, norm="batch")
    norm = model.blocks[0].norm1
    x = torch.randn(3, 5, 8) * 4 + 2
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=(0, 1)), torch.zeros(8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["none", "layer"])
@pytest.mark.parametrize("name", ARCHS)
def test_init_scale_multiplies_weights_only(name, norm):
    base = dict(build(name, IMAGE, norm=norm, seed=3).named_parameters())
    for scale in (2.0, 0.37):
        scaled = dict(build(name, IMAGE, norm=norm, seed=3, init_scale=scale).named_parameters())
        assert scaled.keys() == base.keys()
        n_weights = 0
        for k, p in scaled.items():
            if p.dim() > 1:
                torch.testing.assert_close(p, base[k] * scale, rtol=0, atol=0)
                n_weights += 1
            else:
                assert torch.equal(p, base[k]), k  # biases and norm params untouched
        assert n_weights > 0


@pytest.mark.parametrize("name", ARCHS)
def test_width_and_depth_grow_parameter_count(name):
    widths = [count_parameters(build(name, IMAGE, width=w)) for w in (4, 8, 16)]
    assert widths == sorted(widths) and len(set(widths)) == 3
    if name not in FIXED_DEPTH:  # resnet18/34: the name fixes the depth
        depths = [count_parameters(build(name, IMAGE, depth=d)) for d in (1, 2, 3, 4)]
        assert depths == sorted(depths) and len(set(depths)) == 4
    model = build(name, IMAGE, norm="batch")
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    model.head.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == (
        count_parameters(model) - model.head.weight.numel())


def test_mlp_parameter_count_formula():
    """Default MLP on MNIST-1D: 40 -> 128 -> 128 -> 128 -> 10 with biases (norm none)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(), Meta((1, 40), 10))
    w, d, fin, c = 128, 3, 40, 10
    assert count_parameters(model) == fin * w + w + (d - 1) * (w * w + w) + w * c + c == 39562


def test_resnet_blocks_per_stage():
    assert blocks_per_stage(1) == [1]
    assert blocks_per_stage(2) == [1, 1]
    assert blocks_per_stage(3) == [1, 1, 1]
    assert blocks_per_stage(4) == [2, 1, 1]
    assert blocks_per_stage(8) == [3, 3, 2]
    assert len(build("resnet", IMAGE, depth=5).blocks) == 5


@pytest.mark.parametrize("activation", [a.value for a in Activation])
@pytest.mark.parametrize("name", ARCHS)
def test_activation_respected(name, activation):
    model = build(name, ONE_D, activation=Activation(activation))
    wanted = ACT_TYPES[activation]
    assert count(model, wanted) > 0
    others = tuple(t for a, t in ACT_TYPES.items() if a != activation)
    assert count(model, others) == 0


def test_no_dropout_and_deterministic_eval():
    for name in ARCHS:
        model = build(name, IMAGE, norm="batch", skip=True).eval()
        assert count(model, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)) == 0
        x = batch(IMAGE)
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("cfg_kw, meta, fragment", [
    (dict(name="mlp"), Meta((1, 40), 10), None),  # sanity: this one builds
    (dict(name="vit", width=10, heads=4), ONE_D, "model.width must be divisible by model.heads=4"),
    (dict(name="transformer"), ONE_D, "model.name must be one of mlp, cnn, resnet, vit"),
    (dict(name="mlp", norm="group"), ONE_D, "model.norm"),
    (dict(name="mlp", activation="swish"), ONE_D, "model.activation"),
    (dict(name="cnn", kernel_size=4), ONE_D, "model.kernel_size must be odd"),
    (dict(name="resnet", width=0), ONE_D, "model.width"),
    (dict(name="mlp", depth=0), ONE_D, "model.depth"),
    (dict(name="mlp", init_scale=0.0), ONE_D, "model.init_scale"),
    (dict(name="vit", patch_size=0), ONE_D, "model.patch_size"),
    (dict(name="cnn"), Meta((40,), 10), "needs input_shape (C, L) or (C, H, W)"),
    (dict(name="vit"), Meta((1, 2, 8, 8), 10), "needs input_shape (C, L) or (C, H, W)"),
    (dict(name="mlp"), Meta((1, 40), 0), "num_classes"),
])
def test_config_errors_are_one_line(cfg_kw, meta, fragment):
    cfg = OmegaConf.create({**dict(width=8, depth=2, heads=2), **cfg_kw})
    if fragment is None:
        assert build_model(cfg, meta) is not None
        return
    with pytest.raises(ConfigError) as info:
        build_model(cfg, meta)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and message.strip() == message


def test_accepts_structured_dictconfig_and_dataclass():
    cfg = small_cfg("vit", norm="layer", skip=True, activation="gelu")
    torch.manual_seed(0)
    from_dataclass = build_model(cfg, IMAGE)
    torch.manual_seed(0)
    from_omegaconf = build_model(OmegaConf.structured(cfg), IMAGE)
    sd1, sd2 = from_dataclass.state_dict(), from_omegaconf.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)


@pytest.mark.parametrize("meta, tokens", [(Meta((1, 42), 3), 11), (Meta((1, 3), 3), 1),
                                          (Meta((2, 7, 9), 3), 6), (Meta((1, 40), 3), 10)])
def test_vit_pads_inputs_not_divisible_by_patch(meta, tokens):
    model = build("vit", meta, patch_size=4, norm="layer", skip=True)
    assert model.patch_embed.num_patches == tokens
    assert model.pos_embed.shape == (1, tokens + 1, 8)
    check_forward_backward(model, meta)
    x = batch(meta)
    pad = [0, (-x.shape[-1]) % 4] + ([0, (-x.shape[-2]) % 4] if x.dim() == 4 else [])
    expected = model.patch_embed.proj(F.pad(x, pad)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.patch_embed(x), expected)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ARCHS)
def test_functional_call_reproduces_forward(name, norm):
    model = build(name, IMAGE, norm=norm, skip=True).eval()
    x = batch(IMAGE)
    params = dict(model.named_parameters())
    torch.testing.assert_close(functional_call(model, params, (x,)), model(x), rtol=0, atol=0)
    doubled = {k: (2 * v if k == "head.bias" else v) for k, v in params.items()}
    out = functional_call(model, doubled, (x,))
    torch.testing.assert_close(out - model(x), model.head.bias.detach().expand_as(out))


def _loss_fn(model, buffers, x, y):
    def loss(params):
        return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)
    return loss


@pytest.mark.parametrize("name", ARCHS)
def test_torch_func_hvp_and_vmap(name):
    """Forward-over-reverse HVP (train mode, frozen BN stats) and per-sample grads (eval)."""
    model = build(name, IMAGE, norm="batch", skip=True, activation="gelu")
    x, y = batch(IMAGE, n=6), torch.arange(6) % IMAGE.num_classes
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    v = {k: torch.randn_like(p) for k, p in params.items()}
    loss = _loss_fn(model, buffers, x, y)
    model.train()
    with frozen_batchnorm_stats(model):
        _, hvp = jvp(grad(loss), (params,), (v,))
    assert all(torch.isfinite(t).all() for t in hvp.values())
    # symmetric Hessian: u.(H v) == v.(H u)
    u = {k: torch.randn_like(p) for k, p in params.items()}
    with frozen_batchnorm_stats(model):
        _, hvu = jvp(grad(loss), (params,), (u,))
    dot = lambda a, b: sum((a[k] * b[k]).sum() for k in a)  # noqa: E731
    torch.testing.assert_close(dot(u, hvp), dot(v, hvu), rtol=1e-3, atol=1e-5)
    assert all(bn.track_running_stats for bn in model.modules() if isinstance(bn, BN_TYPES))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no buffer was written
    model.eval()
    per_sample = vmap(lambda xi, yi: grad(_loss_fn(model, buffers, xi[None], yi[None]))(params))(
        x, y)
    full = grad(loss)(params)
    for k in params:
        assert per_sample[k].shape == (6, *params[k].shape)
        torch.testing.assert_close(per_sample[k].mean(0), full[k], rtol=1e-4, atol=1e-6)


def test_default_models_are_small():
    """Width 128, depth 3 defaults stay CPU-friendly on MNIST-1D (1, 40) -> 10."""
    limits = {"mlp": 50_000, "cnn": 2_000_000, "resnet": 2_000_000, "vit": 500_000}
    for name, limit in limits.items():
        torch.manual_seed(0)
        model = build_model(ModelConfig(name=ModelName(name)), Meta((1, 40), 10))
        assert count_parameters(model) < limit, name
        assert model(torch.randn(2, 1, 40)).shape == (2, 10)


def test_every_parameter_dim_rule_covers_vit_embeddings():
    model = build("vit", IMAGE, init_scale=2.0, seed=5)
    ref = build("vit", IMAGE, seed=5)
    for attr in ("cls_token", "pos_embed"):
        torch.testing.assert_close(getattr(model, attr), 2 * getattr(ref, attr), rtol=0, atol=0)
    assert math.isclose(model.head.bias.sum().item(), ref.head.bias.sum().item())


def test_all_combinations_build_quickly():
    """Smoke: every arch x norm x skip x activation builds for both input ranks."""
    for name, norm, skip, act in itertools.product(ARCHS, NORMS, (False, True),
                                                  [a.value for a in Activation]):
        for meta in (ONE_D, IMAGE):
            build(name, meta, norm=norm, skip=skip, activation=act, width=4, depth=1)
