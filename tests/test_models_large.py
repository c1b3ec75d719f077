"""The named models of the research plan: resnet18, resnet34 (CIFAR ResNets) and vit_small."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from landscope.config import ModelConfig, ModelName, validate
from landscope.errors import ConfigError
from landscope.models import FIXED_DEPTH, build_model, count_parameters
from landscope.models.resnet import NAMED_STAGES


@dataclass(frozen=True)
class Meta:
    input_shape: tuple[int, ...]
    num_classes: int


CIFAR = Meta((3, 32, 32), 10)
MNIST1D = Meta((1, 40), 10)
LARGE = ("resnet18", "resnet34", "vit_small")


def cfg_of(name: str, **kw) -> ModelConfig:
    """The conf/model/<name>.yaml defaults, then ``kw``."""
    base = dict(name=ModelName(name), norm="batch", skip=True, activation="relu", width=64,
                depth=FIXED_DEPTH.get(name, 12), heads=6, patch_size=4)
    if name == "vit_small":
        base.update(width=384, norm="layer", activation="gelu")
    base.update(kw)
    return ModelConfig(**base)


def tiny(name: str, meta: Meta = CIFAR, seed: int = 0, **kw) -> nn.Module:
    small = dict(width=12, depth=2) if name == "vit_small" else dict(width=4)
    small.update(kw)
    torch.manual_seed(seed)
    return build_model(cfg_of(name, **small), meta)


def count(model: nn.Module, types) -> int:
    return sum(isinstance(m, types) for m in model.modules())


def resnet_params(stages, width=64, cin=3, classes=10, k=3, norm=True) -> int:
    """He et al.'s CIFAR ResNet, counted by hand: convs without bias, 2 BatchNorm parameters
    per channel, a 1x1 projection (+ norm) where the shape changes."""
    nb = 2 if norm else 0
    total, c = cin * width * k * k + nb * width, width
    for s, n in enumerate(stages):
        cout = width * 2 ** s
        for b in range(n):
            total += c * cout * k * k + nb * cout + cout * cout * k * k + nb * cout
            if c != cout or (s > 0 and b == 0):
                total += c * cout + nb * cout
            c = cout
    return total + c * classes + classes


def vit_params(dim=384, depth=12, ratio=4, patch=4, cin=3, tokens=64, classes=10) -> int:
    block = 2 * 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) \
        + (dim * ratio * dim + ratio * dim) + (ratio * dim * dim + dim)
    return (cin * patch * patch * dim + dim) + dim + (tokens + 1) * dim + depth * block \
        + 2 * dim + dim * classes + classes


def test_full_size_parameter_counts_on_cifar_shape():
    """resnet18: the usual 11,173,962 of the CIFAR ResNet-18; resnet34 21,282,122; vit_small
    (ViT-S, patch 4, 65 tokens) 21,342,346 -- each also counted by hand."""
    expected = {"resnet18": 11_173_962, "resnet34": 21_282_122, "vit_small": 21_342_346}
    assert resnet_params(NAMED_STAGES["resnet18"]) == expected["resnet18"]
    assert resnet_params(NAMED_STAGES["resnet34"]) == expected["resnet34"]
    assert vit_params() == expected["vit_small"]
    for name, n in expected.items():
        torch.manual_seed(0)
        assert count_parameters(build_model(cfg_of(name), CIFAR)) == n, name


@pytest.mark.parametrize("name", LARGE)
def test_conf_files_compose_and_build(compose, name):
    cfg = compose([f"model={name}", "dataset=cifar_like"])
    validate(cfg)
    assert cfg.model.name == name
    want = cfg_of(name)
    for key in ("width", "depth", "norm", "skip", "activation"):
        assert cfg.model[key] == getattr(want, key), key
    if name == "vit_small":
        assert (cfg.model.heads, cfg.model.patch_size) == (6, 4)
    assert cfg.model.depth == {"resnet18": 18, "resnet34": 34, "vit_small": 12}[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnet_layout(name):
    """CIFAR stem (3x3, stride 1, no max-pool), the named stages, channels width*(1,2,4,8),
    stride 2 and a 1x1 projection at the start of stages 2-4 only."""
    model = tiny(name, width=4)
    stem = model.stem[0]
    assert isinstance(stem, nn.Conv2d) and stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert count(model, (nn.MaxPool2d, nn.MaxPool1d)) == 0
    stages = NAMED_STAGES[name]
    assert len(model.blocks) == sum(stages)
    i = 0
    for s, n in enumerate(stages):
        for b in range(n):
            block = model.blocks[i]
            assert block.conv1[0].out_channels == 4 * 2 ** s
            first = s > 0 and b == 0
            assert block.conv1[0].stride == ((2, 2) if first else (1, 1))
            if first:
                proj = block.shortcut[0]
                assert proj.kernel_size == (1, 1) and proj.stride == (2, 2)
            else:
                assert isinstance(block.shortcut, nn.Identity)
            i += 1
    x = torch.randn(2, 3, 32, 32)
    assert model.blocks(model.stem(x)).shape == (2, 32, 4, 4)  # 32 -> 16 -> 8 -> 4


@pytest.mark.parametrize("name", LARGE)
@pytest.mark.parametrize("meta", [CIFAR, MNIST1D], ids=["cifar", "mnist1d"])
def test_tiny_forward_backward(name, meta):
    model = tiny(name, meta)
    convs = count(model, nn.Conv1d), count(model, nn.Conv2d)
    assert (convs[0] > 0) == (len(meta.input_shape) == 2) and (convs[1] > 0) == (len(
        meta.input_shape) == 3)
    x, y = torch.randn(4, *meta.input_shape), torch.arange(4) % meta.num_classes
    model.train()
    out = model(x)
    assert out.shape == (4, meta.num_classes) and torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnet_norm_switch(name):
    n_norms = 1 + 2 * sum(NAMED_STAGES[name]) + 3  # stem, two per block, three projections
    batch, layer, none = (tiny(name, norm=n) for n in ("batch", "layer", "none"))
    assert count(batch, nn.BatchNorm2d) == n_norms and count(batch, nn.GroupNorm) == 0
    assert count(layer, nn.GroupNorm) == n_norms and count(layer, nn.BatchNorm2d) == 0
    assert count(none, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) == 0
    # convs carry a bias only without a norm
    assert all(c.bias is None for c in batch.modules() if isinstance(c, nn.Conv2d))
    assert all(c.bias is not None for c in none.modules() if isinstance(c, nn.Conv2d))
    assert count(tiny(name, MNIST1D, norm="batch"), nn.BatchNorm1d) == n_norms


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnet_skip_switch(name):
    res, plain = tiny(name, skip=True), tiny(name, skip=False)
    assert not [n for n, _ in plain.named_modules() if "shortcut" in n]
    assert count(res, nn.Conv2d) == count(plain, nn.Conv2d) + 3  # the three projections
    w = 4
    projections = sum(w * 2 ** (s - 1) * w * 2 ** s + 2 * w * 2 ** s for s in (1, 2, 3))
    assert count_parameters(res) - count_parameters(plain) == projections
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(res.eval()(x), plain.eval()(x))


def test_vit_small_structure_and_switches():
    model = tiny("vit_small", width=12, depth=3, heads=6)
    assert len(model.blocks) == 3 and model.blocks[0].attn.heads == 6
    assert model.blocks[0].mlp[0].out_features == 4 * 12  # MLP ratio 4 (vit's is 2)
    assert model.patch_embed.num_patches == 64 and model.pos_embed.shape == (1, 65, 12)
    assert count(model, nn.LayerNorm) == 2 * 3 + 1
    assert count(tiny("vit_small", norm="batch", depth=3), nn.BatchNorm1d) == 2 * 3 + 1
    assert count(tiny("vit_small", norm="none"), (nn.LayerNorm, nn.BatchNorm1d)) == 0
    plain, res = tiny("vit_small", skip=False).eval(), tiny("vit_small", skip=True).eval()
    sd_plain, sd_res = plain.state_dict(), res.state_dict()
    assert all(torch.equal(sd_plain[k], sd_res[k]) for k in sd_res)  # skip rewires only
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(plain(x), res(x))
    assert tiny("vit_small", MNIST1D).patch_embed.num_patches == 10


@pytest.mark.parametrize("cfg_kw, fragment", [
    (dict(name="resnet18", depth=3), "model.depth must be 18 with model=resnet18"),
    (dict(name="resnet34", depth=18), "model.depth must be 34 with model=resnet34"),
    (dict(name="vit_small", width=10, heads=6), "model.width must be divisible by model.heads=6"),
    (dict(name="resnet18", depth=18, kernel_size=2), "model.kernel_size must be odd"),
])
def test_bad_configs_fail_in_one_line(cfg_kw, fragment):
    cfg = OmegaConf.create({"width": 4, **cfg_kw})
    with pytest.raises(ConfigError) as info:
        build_model(cfg, CIFAR)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_tiny_resnet18_trains_on_cifar_like(compose, tmp_path):
    from landscope.jobs import COMPLETED, train_job

    torch.set_num_threads(1)
    overrides = ["model=resnet18", "model.width=4", "dataset=cifar_like",
                 "dataset.train_size=128", "dataset.test_size=64", "train.batch_size=32",
                 "train.epochs=2", "probe=none", "landscape=none"]
    result = train_job(compose(overrides), tmp_path, overrides)
    assert result["status"] == COMPLETED and result["epochs_completed"] == 2
    assert result["n_params"] == resnet_params((2, 2, 2, 2), width=4)
    assert math.isfinite(result["final"]["train_loss"])


@pytest.mark.parametrize("override, fragment", [
    ("model.depth=3", "model.depth must be 18 with model=resnet18"),
    ("model.heads=5", "model.width must be divisible by model.heads=5"),
])
def test_bad_named_model_is_invalid_before_anything_is_written(compose, tmp_path, override,
                                                                 fragment):
    from landscope.jobs import INVALID, run_job

    name = "resnet18" if "depth" in override else "vit_small"
    job = tmp_path / "job"
    summary = run_job(compose([f"model={name}", override, "dataset=cifar_like"]), job, [])
    assert summary["status"] == INVALID and fragment in summary["message"]
    assert "\n" not in summary["message"] and not job.exists()
