"""Directions for landscape slices: normalization (Li et al. 2018), seeding, eigen and
checkpoint directions. Numerics in float64 against exact answers."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from landscope.errors import LandscopeError
from landscope.geometry.directions import (
    NORMALIZATIONS,
    direction_to,
    eigen_directions,
    normalize_direction,
    random_direction,
    random_directions,
)
from landscope.geometry.space import ParamSpace
from landscope.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

META = types.SimpleNamespace(input_shape=(1, 12), num_classes=3)
TOL = 1e-12


def _model(kind: str, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = dict(name="mlp", width=8, depth=2) if kind == "mlp" else \
        dict(name="cnn", width=4, depth=1, norm="batch")
    model = build_model(cfg, META).to(dtype)
    with torch.no_grad():  # non-trivial norm parameters
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(params=["mlp", "cnn"])
def space(request) -> ParamSpace:
    return ParamSpace(_model(request.param))


def _parts(space: ParamSpace, flat: torch.Tensor) -> dict:
    return space.unflatten(flat)


def test_filter_normalization_matches_weight_filters(space):
    d = random_direction(space, seed=3, normalization="filter")
    assert d.shape == (space.dim,) and d.dtype == torch.float64
    w, dp = _parts(space, space.theta0), _parts(space, d)
    n_filters = 0
    for name in space.names:
        if w[name].dim() > 1:
            wf = w[name].reshape(w[name].shape[0], -1).norm(dim=1)
            df = dp[name].reshape(dp[name].shape[0], -1).norm(dim=1)
            torch.testing.assert_close(df, wf, rtol=TOL, atol=TOL)
            n_filters += len(wf)
        else:  # biases, BatchNorm weights and biases
            assert torch.count_nonzero(dp[name]) == 0, name
    assert n_filters > 0
    if "cnn" in type(space.model).__name__.lower():
        assert any(w[n].dim() == 3 for n in space.names)  # conv filters (out, in, k)


def test_include_bias_norm_scales_each_1d_parameter_to_its_norm(space):
    base = random_direction(space, seed=3, normalization="filter")
    full = random_direction(space, seed=3, normalization="filter", include_bias_norm=True)
    w, db, df = _parts(space, space.theta0), _parts(space, base), _parts(space, full)
    n_1d = 0
    for name in space.names:
        if w[name].dim() > 1:
            assert torch.equal(db[name], df[name])  # filters unchanged by the option
        else:
            n_1d += 1
            assert torch.count_nonzero(df[name]) == df[name].numel()
            torch.testing.assert_close(df[name].norm(), w[name].norm(), rtol=TOL, atol=TOL)
    assert n_1d > 0


def test_zero_filter_gets_zero_component():
    model = _model("mlp")
    with torch.no_grad():
        model.head.weight[1].zero_()
    space = ParamSpace(model)
    d = _parts(space, random_direction(space, 0))
    assert torch.count_nonzero(d["head.weight"][1]) == 0
    assert torch.count_nonzero(d["head.weight"][0]) == d["head.weight"].shape[1]


def test_layer_and_model_norms(space):
    w = _parts(space, space.theta0)
    layer = _parts(space, random_direction(space, 1, "layer"))
    layer_b = _parts(space, random_direction(space, 1, "layer", include_bias_norm=True))
    for name in space.names:
        if w[name].dim() > 1:
            torch.testing.assert_close(layer[name].norm(), w[name].norm(), rtol=TOL, atol=TOL)
        else:
            assert torch.count_nonzero(layer[name]) == 0
            torch.testing.assert_close(layer_b[name].norm(), w[name].norm(), rtol=TOL, atol=TOL)
    model = random_direction(space, 1, "model")
    torch.testing.assert_close(model.norm(), space.theta0.norm(), rtol=TOL, atol=TOL)
    raw = random_direction(space, 1, "none")
    expected = torch.randn(space.dim, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64)
    assert torch.equal(raw, expected)  # raw N(0, 1), exactly the seeded draw


def test_seeding_is_reproducible_independent_and_leaves_global_rng_alone(space):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = random_direction(space, seed=7)
    b = random_direction(space, seed=7)
    c = random_direction(space, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    many = random_directions(space, 3, seed=7)
    assert many.shape == (3, space.dim)
    assert torch.equal(many[0], a)  # the first of k is the single direction
    assert not torch.allclose(many[0], many[1])
    assert torch.equal(random_directions(space, 2, seed=7), many[:2])


def test_float32_model_gets_the_float64_direction_rounded():
    s64 = ParamSpace(_model("mlp", torch.float64))
    s32 = ParamSpace(_model("mlp", torch.float32))
    d64 = random_direction(s64, 5)
    d32 = random_direction(s32, 5)
    assert d32.dtype == torch.float32
    torch.testing.assert_close(d32.double(), d64, rtol=1e-6, atol=1e-7)


def test_normalizations_accept_enum_members():
    from landscope.config import DirectionNorm
    space = ParamSpace(_model("mlp"))
    assert set(NORMALIZATIONS) == {m.value for m in DirectionNorm}
    assert torch.equal(random_direction(space, 2, DirectionNorm.layer),
                       random_direction(space, 2, "layer"))


def test_eigen_directions_are_the_saved_columns(space):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((space.dim, 4)))
    d = eigen_directions(q, space)
    assert d.shape == (4, space.dim)
    assert np.array_equal(d.numpy(), q.T)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(4, dtype=torch.float64),
                               rtol=TOL, atol=TOL)
    two = eigen_directions({"eigenvectors_top": q, "eigenvalues_top": np.ones(4)}, space, k=2)
    assert np.array_equal(two.numpy(), q[:, :2].T)
    with pytest.raises(LandscopeError, match="saved"):
        eigen_directions(q, space, k=5)
    with pytest.raises(LandscopeError, match="shape"):
        eigen_directions(q[1:], space)
    with pytest.raises(LandscopeError, match="eigenvectors_top"):
        eigen_directions({"eigenvalues_top": np.ones(4)}, space)


def test_direction_to_reaches_the_other_point():
    space = ParamSpace(_model("mlp"))
    other = _model("mlp")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    d = direction_to(space, other.state_dict())
    theta_b = space.flatten_params(dict(other.named_parameters()))
    torch.testing.assert_close(space.theta0 + 1.0 * d, theta_b, rtol=0, atol=1e-15)
    # from another origin, as flat vectors
    origin = theta_b * 0.5
    torch.testing.assert_close(origin + direction_to(space, theta_b, origin), theta_b,
                               rtol=0, atol=1e-15)


def test_bad_inputs_raise_one_line_errors():
    space = ParamSpace(_model("mlp"))
    cases = [
        lambda: random_direction(space, 0, "filters"),
        lambda: random_directions(space, 0, 0),
        lambda: random_direction(space, 1.5),  # type: ignore[arg-type]
        lambda: normalize_direction(torch.randn(space.dim + 1, dtype=torch.float64), space),
        lambda: direction_to(space, torch.zeros(3)),
    ]
    for case in cases:
        with pytest.raises(LandscopeError) as err:
            case()
        assert "\n" not in str(err.value) and str(err.value)
