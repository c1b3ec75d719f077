"""In-place activations in the private working copy, where a dataflow check proves it safe.

A grid point is one forward pass of the working copy under ``inference_mode``. An
activation that writes its result into its input instead of a new tensor saves an
allocation and keeps the activations in cache (the saving on the default MLP:
docs/measurements.md#geometry-forward). Values are bit for bit the same.

In-place is only safe when nothing reads the activation's input afterwards. The working copy
is traced with ``torch.fx``; an activation *module* is switched to ``inplace=True`` only when
every node that calls it satisfies:

* its input node has no other user (nothing reads the pre-activation later), and
* that input is a fresh tensor: the output of a layer that allocates its result
  (``Linear``, ``ConvNd``, BatchNorm, ``LayerNorm``, ``GroupNorm``) or of an arithmetic
  function; an ``Identity`` is looked through with the same two conditions. Never the model's
  input, a view, or anything unknown.

A model that ``torch.fx`` cannot trace (data-dependent control flow, unsupported calls) is
left as it is. The model the user passed in is never touched: only the working copy is.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import torch
from torch import nn

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.SiLU,
                nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish)
FRESH_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d,
                  nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
_FRESH_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add,
                    torch.sub, torch.mul}


def make_activations_inplace(model: nn.Module) -> int:
    """Set ``inplace=True`` on the activation modules of ``model`` that are provably safe (see
    the module docstring); returns how many were switched."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # untraceable: leave the model as it is
        return 0
    verdict: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = model.get_submodule(node.target)
        if type(module) not in _ACTIVATIONS or getattr(module, "inplace", True):
            continue
        safe = len(node.args) == 1 and not node.kwargs and _fresh_only_use(model, node.args[0])
        verdict[node.target] = verdict.get(node.target, True) and safe
    switched = 0
    for target, safe in verdict.items():
        if safe:
            model.get_submodule(target).inplace = True
            switched += 1
    return switched


def _fresh_only_use(model: nn.Module, node: Any) -> bool:
    """``node`` (an fx node) has one user and is a freshly allocated tensor."""
    if not isinstance(node, torch.fx.Node) or len(node.users) != 1:
        return False
    if node.op == "call_module":
        module = model.get_submodule(node.target)
        if type(module) is nn.Identity:
            return len(node.args) == 1 and _fresh_only_use(model, node.args[0])
        return type(module) in FRESH_MODULES
    return node.op == "call_function" and node.target in _FRESH_FUNCTIONS
