"""The model's options that only some models read (the convolutions' kernel, the ViTs'
patch and heads; the synthetic problems' models read only ``init_scale``): marked on the
schema, so the training fingerprint leaves them out where they are not read; the hashes of
the jobs that read them are those of version 2 as released."""

from __future__ import annotations

import json
import types

import pytest
import torch
from omegaconf import OmegaConf

from landscope.config import Config, DatasetConfig
from landscope.config.check import unread_keys
from landscope.data import load_data
from landscope.errors import ConfigError
from landscope.fingerprints import MARKED_LATER, earlier_fingerprint, fingerprint
from landscope.models import build_model

IMAGES = types.SimpleNamespace(name="cifar_like", input_shape=(3, 8, 8), num_classes=10,
                               problem=None)
BASE = {"width": 8, "depth": 3, "norm": "none", "skip": False, "activation": "relu",
        "init_scale": 1.0, "patch_size": 4, "heads": 2, "kernel_size": 3}
CHANGED = {"width": 12, "depth": 2, "norm": "batch", "skip": True, "activation": "tanh",
           "patch_size": 2, "heads": 4, "kernel_size": 5}
DEPTH = {"resnet18": 18, "resnet34": 34}


def _meta(name: str):
    if name in ("quadratic", "two_basin"):
        return load_data(DatasetConfig(name=name)).meta
    return IMAGES


def _built(model: dict) -> str:
    """The seeded model's parameters and its output on a fixed input (or the refusal)."""
    meta = _meta(model["name"])
    torch.manual_seed(0)
    try:
        net = build_model(model, meta).eval()
    except ConfigError as exc:
        return str(exc)
    x = torch.randn(2, *meta.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(x)
    params = [(k, tuple(v.shape), float(v.double().sum())) for k, v in net.state_dict().items()]
    return json.dumps([params, out.double().sum().item()])


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "vit", "resnet18", "resnet34",
                                  "vit_small", "quadratic", "two_basin"])
def test_the_model_marks_say_exactly_what_build_model_reads(name):
    tree = OmegaConf.to_container(OmegaConf.structured(Config()), enum_to_str=True)
    tree["model"].update(BASE, name=name, depth=DEPTH.get(name, 3))
    if name in ("quadratic", "two_basin"):
        tree["dataset"]["name"] = name
    unread = set(unread_keys(Config, tree))
    before = _built(tree["model"])
    assert not before.startswith(("model.", "dataset")), before
    for key in (k for k in MARKED_LATER if k.startswith("model.")):
        leaf = key.split(".")[1]
        same = _built({**tree["model"], leaf: CHANGED[leaf]}) == before
        assert same == (key in unread), (name, key)


# version-2 hashes recorded before the model's options were marked (commit 8764f55)
KEPT = {
    "model=cnn": "31186be9ee82739c",
    "model=cnn model.kernel_size=5": "975d055699fbe401",
    "model=resnet": "df8f4bc79496696e",
    "model=vit": "701cee0e0f3bd5f2",
    "model=vit model.patch_size=2 model.heads=2": "5fe0b419ffe7b73c",
    "model=resnet18 dataset=cifar_like": "7af172429d2c5677",
    "model=vit_small dataset=cifar_like": "3a3488467cd725a8",
    "dataset=quadratic model=quadratic": "071f594c46ebffa6",
    "dataset=two_basin model=two_basin": "eb479c557609aaa6",
}
EARLIER = {
    "model.kernel_size=5": "c0c5d1e657560799",
    "model.patch_size=2": "f0cd77bc353d7cd5",
    "model.heads=2": "dffb86779f715798",
    "model=cnn model.heads=2": "31eb485534d62a95",
    "dataset=quadratic model=quadratic model.width=8 model.norm=batch": "6774d1156712ecdf",
}
PLAIN = {"model.kernel_size=5": "", "model.patch_size=2": "", "model.heads=2": "",
         "model=cnn model.heads=2": "model=cnn",
         "dataset=quadratic model=quadratic model.width=8 model.norm=batch":
             "dataset=quadratic model=quadratic"}


def test_jobs_that_read_the_model_options_keep_their_hashes(compose):
    for overrides, recorded in KEPT.items():
        cfg = compose(overrides.split())
        assert fingerprint(cfg) == recorded and earlier_fingerprint(cfg) is None, overrides


def test_a_model_option_the_model_does_not_read_changes_no_hash(compose):
    for overrides, recorded in EARLIER.items():
        cfg = compose(overrides.split())
        assert earlier_fingerprint(cfg) == recorded, overrides
        assert fingerprint(cfg) == fingerprint(compose(PLAIN[overrides].split())), overrides
