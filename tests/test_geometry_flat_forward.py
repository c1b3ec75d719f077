"""Tests for landscope.geometry.flat_forward: the working copy's eval forward with common leaf
layers inlined as functional calls gives the module's output bit for bit, keeps hooked, unknown
and input-reading layers as module calls, and falls back to the module where it cannot be
traced or does not match."""

from __future__ import annotations

import operator
import types

import pytest
import torch
from torch import nn

from landscope.geometry.flat_forward import FlatForward, flat_forward
from landscope.geometry.space import ParamSpace
from landscope.models import build_model
from landscope.probes.probe_data import ProbeData

pytestmark = pytest.mark.usefixtures("one_torch_thread")
META_1D = types.SimpleNamespace(input_shape=(1, 12), num_classes=3)
META_2D = types.SimpleNamespace(input_shape=(1, 8, 8), num_classes=3)


def _module_calls(gm: torch.fx.GraphModule) -> list[str]:
    return [n.target for n in gm.graph.nodes if n.op == "call_module"]


def _functions(gm: torch.fx.GraphModule) -> list[object]:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("cfg, meta", [
    (dict(name="mlp", width=8, depth=2), META_1D),
    (dict(name="mlp", width=8, depth=2, norm="batch", skip=True, activation="gelu"), META_1D),
    (dict(name="cnn", width=2, depth=1, norm="batch"), META_2D),
    (dict(name="resnet", width=2, depth=2, norm="batch", skip=True), META_1D),
    (dict(name="vit", width=8, depth=1, heads=2, patch_size=4, norm="layer"), META_2D),
    (dict(name="mlp", width=8, depth=2, activation="tanh"), META_1D),
    (dict(name="mlp", width=8, depth=2, activation="leaky_relu"), META_1D),
])
def test_model_families_are_inlined_and_bit_exact(cfg, meta):
    torch.manual_seed(0)
    model = build_model(cfg, meta).double().eval()
    if cfg.get("norm") == "batch":  # non-trivial running statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(16, *meta.input_shape, dtype=torch.float64) * 2 + 1)
        model.eval()
    space = ParamSpace(model)
    gm = space._forward.graph
    assert gm is not None
    assert torch.nn.functional.linear in _functions(gm)  # the head at least
    x = torch.randn(7, *meta.input_shape, dtype=torch.float64)
    with torch.inference_mode():
        ref = model(x)
        assert torch.equal(space._forward(x), ref)  # the checked call
        assert torch.equal(space._forward(x), ref)  # the flat graph itself
        assert space._forward._checked == {((7, *meta.input_shape), torch.float64,
                                            x.device): True}
        assert torch.equal(gm.forward(x), ref)
    data = ProbeData.from_tensors(x, torch.randint(0, 3, (7,)), 4)
    plain = FlatForward(space.working_model)
    plain.graph = None  # module path
    fast = space.evaluate(space.theta0, data)[0]
    space._forward = plain
    assert space.evaluate(space.theta0, data)[0] == fast


def test_default_mlp_has_no_module_calls_left():
    torch.manual_seed(0)
    model = build_model(dict(name="mlp", width=8, depth=3), META_1D).eval()
    gm = flat_forward(model)
    assert gm is not None and _module_calls(gm) == []
    assert all(not n.target.count(".") for n in gm.graph.nodes if n.op == "get_attr")
    p = dict(model.named_parameters())["head.weight"]
    assert any(v is p for v in vars(gm).values())  # shared, not copied


def test_hooked_subclassed_and_unknown_layers_stay_module_calls():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Softplus(), MyLinear(6, 6),
                          nn.Conv1d(1, 1, 3, padding=1, padding_mode="circular"),
                          nn.Linear(6, 3)).eval()
    calls = []
    model[5].register_forward_hook(lambda m, i, o: calls.append(1))
    model = nn.Sequential(model[0], model[1], model[2], model[3], nn.Unflatten(1, (1, 6)),
                          model[4], nn.Flatten(), model[5]).eval()
    gm = flat_forward(model)
    assert gm is not None
    # Softplus, Unflatten, circular conv, hooked linear; fx traces through the subclass's own
    # forward (not a torch.nn leaf), so its "* 2" is kept
    assert _module_calls(gm) == ["2", "4", "5", "7"]
    assert operator.mul in _functions(gm)
    x = torch.randn(5, 1, 12)
    with torch.inference_mode():
        assert torch.equal(gm.forward(x), model(x))
    assert len(calls) == 2  # the hook ran for the graph too


def test_keep_applies_only_to_layers_that_may_read_the_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Identity(), nn.ReLU(),
                          nn.Linear(6, 3)).eval()
    gm = flat_forward(model, keep=[model[1], model[4]])
    assert _module_calls(gm) == ["1"]  # reads a view of the input; [4] reads a fresh value


def test_untraceable_model_runs_as_module():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(12, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.lin(x.flatten(1))
            return -self.lin(x.flatten(1))

    model = Branchy().eval()
    fast = FlatForward(model)
    assert not fast.active
    x = torch.randn(4, 1, 12)
    with torch.inference_mode():
        assert torch.equal(fast(x), model(x))


def test_graph_that_disagrees_with_the_module_is_not_used():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.scale = nn.Linear(12, 3), 1.0

        def forward(self, x):
            return self.lin(x.flatten(1)) * self.scale  # the float is baked into the trace

    model = Scaled().eval()
    fast = FlatForward(model)
    assert fast.active
    model.scale = 2.0
    x = torch.randn(4, 1, 12)
    with torch.inference_mode():
        assert torch.equal(fast(x), model(x))
        assert torch.equal(fast(x), model(x))
    assert fast._checked == {((4, 1, 12), torch.float32, x.device): False}


def test_train_mode_uses_the_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    fast = FlatForward(model.eval())
    model.train()
    x = torch.randn(8, 1, 12)
    with torch.no_grad():
        out = fast(x)
    assert fast._checked == {}
    assert float(model[2].running_mean.abs().sum()) > 0  # the module's train-mode forward ran
    assert out.shape == (8, 3)
