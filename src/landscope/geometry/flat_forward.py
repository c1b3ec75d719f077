"""The working copy's eval-mode forward as one flat function, without per-module call cost.

A grid point is one forward pass, and on small models a good part of that pass is Python:
every ``module(x)`` goes through ``nn.Module.__call__`` (hook checks, ``forward`` lookup,
nested ``Sequential`` and block modules). :func:`flat_forward` traces the working copy with
``torch.fx`` and replaces the calls of common leaf layers by the functional call their own
``forward`` makes, with the same arguments, so the values are bit for bit those of the
modules. The saving on the default MLP: docs/measurements.md#geometry-forward.

Inlined (exact type only: a subclass may change its forward), each with its eval-mode
behaviour:

* ``nn.Linear`` -> ``F.linear``; ``nn.Conv1d/2d/3d`` with ``padding_mode="zeros"`` ->
  ``F.convNd`` (stride, padding, dilation, groups as the module's);
* ``nn.ReLU`` -> ``torch.relu`` or ``torch.relu_`` (the module's ``inplace``); ``nn.GELU``
  -> ``F.gelu`` (its ``approximate``); ``nn.Tanh`` -> ``torch.tanh``; ``nn.SiLU``, ``nn.ELU``,
  ``nn.LeakyReLU`` -> ``F.silu``, ``F.elu``, ``F.leaky_relu`` (their settings);
* BatchNorm with running statistics -> ``F.batch_norm(..., training=False)``;
  ``nn.LayerNorm`` -> ``F.layer_norm``;
* ``nn.Identity`` and ``nn.Dropout`` (identity in eval mode) -> removed; ``nn.Flatten`` ->
  ``torch.flatten``.

Modules with hooks or parametrizations and every other module stay module calls, and so do
the modules in ``keep`` (the layers a scan may serve as input layers, whose ``forward`` is
swapped at run time) where their input may be the model's input or a view of it: a layer
that reads the output of another layer (a fresh tensor) is inlined.
The graph module's ``forward`` is called directly (no ``Module.__call__``) and reads the
parameters and buffers as plain attributes. It is used in eval mode only, and :class:`FlatForward`
checks on the first batch of each input shape that it reproduces the working copy's output bit for
bit; a model that ``torch.fx`` cannot trace, or that fails the check, runs as a module.
"""

from __future__ import annotations

import warnings
from typing import Any, Collection, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from landscope.geometry.inplace import FRESH_MODULES as _FRESH_MODULES

_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_REMOVED = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def flat_forward(model: nn.Module, keep: Collection[nn.Module] = ()) -> Optional[fx.GraphModule]:
    """``model``'s forward (traced in eval mode) with the common leaf layers inlined, or
    ``None`` when it cannot be traced or nothing would be inlined. The graph module shares
    ``model``'s submodules and parameters (no copies)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = fx.symbolic_trace(model)
    except Exception:  # untraceable: the model runs as it is
        return None
    graph = gm.graph
    keep_ids = {id(m) for m in keep}
    fresh = _fresh_nodes(gm, graph)
    inlined = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        module = gm.get_submodule(node.target)
        if hooked(module) or (id(module) in keep_ids and node.args[0] not in fresh):
            continue
        with graph.inserting_before(node):
            new = _inline(graph, node, module)
        if new is None:
            continue
        if node in fresh and isinstance(new, fx.Node):
            fresh.add(new)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        inlined += 1
    if not inlined:
        return None
    _direct_attributes(gm, graph)
    graph.lint()
    gm.recompile()
    return gm


def _direct_attributes(gm: fx.GraphModule, graph: fx.Graph) -> None:
    """Point every ``get_attr`` at a plain attribute of ``gm`` holding the same tensor object:
    ``self.a.b.weight`` costs a ``Module.__getattr__`` per level at every call, a plain
    attribute one dictionary lookup. The tensors are shared, not copied, so in-place updates
    of the working copy's parameters and buffers are seen."""
    names: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "get_attr":
            continue
        value = _resolve(gm, node.target)
        if not isinstance(value, Tensor):
            continue
        if node.target not in names:
            names[node.target] = f"_flat_attr_{len(names)}"
            object.__setattr__(gm, names[node.target], value)
        node.target = names[node.target]


def _resolve(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _inline(graph: fx.Graph, node: fx.Node, m: nn.Module) -> Optional[Any]:
    """The functional replacement of ``node`` (a call of ``m``), or ``None`` to keep it."""
    x = node.args[0]
    kind = type(m)

    def attr(name: str) -> Optional[fx.Node]:
        return None if getattr(m, name) is None else graph.get_attr(f"{node.target}.{name}")

    if kind in _REMOVED:
        return x
    if kind is nn.ReLU:
        return graph.call_function(torch.relu_ if m.inplace else torch.relu, (x,))
    if kind is nn.GELU:
        return graph.call_function(F.gelu, (x,), {"approximate": m.approximate})
    if kind is nn.Tanh:
        return graph.call_function(torch.tanh, (x,))
    if kind is nn.SiLU:
        return graph.call_function(F.silu, (x, m.inplace))
    if kind is nn.ELU:
        return graph.call_function(F.elu, (x, m.alpha, m.inplace))
    if kind is nn.LeakyReLU:
        return graph.call_function(F.leaky_relu, (x, m.negative_slope, m.inplace))
    if kind is nn.Flatten:
        return graph.call_function(torch.flatten, (x, m.start_dim, m.end_dim))
    if kind is nn.Linear:
        return graph.call_function(F.linear, (x, attr("weight"), attr("bias")))
    if kind in _CONV and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return graph.call_function(_CONV[kind], (x, attr("weight"), attr("bias"), m.stride,
                                                 m.padding, m.dilation, m.groups))
    if kind in _BATCHNORM and m.track_running_stats and m.running_mean is not None:
        return graph.call_function(F.batch_norm, (
            x, attr("running_mean"), attr("running_var"), attr("weight"), attr("bias"),
            False, 0.0, m.eps))
    if kind is nn.LayerNorm:
        return graph.call_function(F.layer_norm, (x, m.normalized_shape, attr("weight"),
                                                  attr("bias"), m.eps))
    return None


_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.ELU, nn.LeakyReLU)


def _fresh_nodes(gm: fx.GraphModule, graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value is certainly a new tensor computed by a layer (not the input or a
    view of it): outputs of linear, convolution and norm modules, and activations of such
    values. Anything else may be the input (conservatively: it stays a module call)."""
    fresh: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        kind = type(gm.get_submodule(node.target))
        if kind in _FRESH_MODULES:
            fresh.add(node)
        elif (kind in _ACTIVATIONS or kind in _REMOVED) and node.args and node.args[0] in fresh:
            fresh.add(node)
    return fresh


def hooked(m: nn.Module) -> bool:
    """``m`` has hooks or parametrizations: calling anything but the module would skip them."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks or getattr(m, "parametrizations", None))


class FlatForward:
    """Calls the flat forward of ``model`` where it was seen to match the module's output, the
    module otherwise. Eval mode only (the caller's contract)."""

    def __init__(self, model: nn.Module, keep: Collection[nn.Module] = ()) -> None:
        self.model = model
        self.graph = flat_forward(model, keep)
        self._fn = None if self.graph is None else self.graph.forward  # no Module.__call__
        self._checked: dict[tuple, bool] = {}

    @property
    def active(self) -> bool:
        return self.graph is not None

    def __call__(self, x: Tensor) -> Any:
        graph = self.graph
        if graph is None or self.model.training:
            return self.model(x)
        key = (tuple(x.shape), x.dtype, x.device)
        ok = self._checked.get(key)
        if ok:
            return self._fn(x)  # type: ignore[misc]
        if ok is None:
            return self._check(key, x)
        return self.model(x)

    def _check(self, key: tuple, x: Tensor) -> Any:
        """The first batch of a shape: both forwards, kept only if bit for bit equal."""
        ref = self.model(x)
        ref = ref.clone() if isinstance(ref, Tensor) else ref  # a buffer reused by the next call
        try:
            out = self._fn(x)  # type: ignore[misc]
            same = isinstance(ref, Tensor) and isinstance(out, Tensor) and _identical(ref, out)
        except Exception:
            same = False
        self._checked[key] = same
        return ref


def _identical(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    both_nan = torch.isnan(a) & torch.isnan(b) if a.is_floating_point() else None
    return both_nan is not None and bool(((a == b) | both_nan).all())

