"""The layers that read the data directly, evaluated on a scan as linear combinations.

On a slice every point is ``theta = theta0 + sum_k c_k d_k`` and the data never change. A
layer that reads the data ``x`` directly and is linear in its parameters (``nn.Linear``,
``nn.ConvNd``: ``x W^T + b`` is linear in ``(W, b)`` jointly) therefore has, at every point,
the output

    f(x; theta) = f(x; theta0) + sum_k c_k f(x; d_k)

The terms on the right are computed once per scan (one call per term, by the layer's own
forward with the flat buffer temporarily set to ``theta0`` or to ``d_k``), and each point
then costs one or two vector additions instead of the layer. That pays when the layer's
fan-in is large (784 inputs); with 40 inputs (the default MLP on mnist1d) the additions'
memory traffic costs about as much as the layer (the timings:
docs/measurements.md#geometry-input-layers), so layers with a fan-in below :data:`MIN_FAN_IN` are
left alone. The centre (all ``c_k == 0``) returns the layer's own output at ``theta0`` bit for bit.

What qualifies, conservatively:

* the module's type is exactly ``nn.Linear`` or ``nn.Conv1d/2d/3d`` (a subclass may change
  its forward), it has no hooks and no parametrizations, and every parameter it owns is a
  coordinate of the space (a frozen parameter would not scale with the direction);
* its input *is* the data: a view of a registered data tensor with the same storage, offset,
  shape and strides (the registry holds the data tensors, so their memory cannot be reused
  by another tensor); an input computed from the data (normalized, augmented) is not;
* the layer's fan-in (inputs per output) is at least :data:`MIN_FAN_IN`;
* the terms fit in ``budget_bytes`` (default 256 MiB per space); beyond it the layer runs
  as usual.

Anything else, and any evaluation outside a scan (no coefficients declared), runs the
layer's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from landscope.geometry.flat_forward import hooked

BUDGET_BYTES = 256 * 2 ** 20
MIN_FAN_IN = 64
_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

Coefficients = tuple[tuple[int, float], ...]


@dataclass
class _Entry:
    """One layer on one data tensor: the output at theta0, one output per direction, the
    last partial sum (its coefficients) and the buffer the result is written to."""

    base: Tensor
    terms: list[Tensor]
    out: Tensor
    row: Optional[Tensor] = None
    row_key: Optional[tuple[int, float]] = None


@dataclass
class _Layer:
    module: nn.Module
    forward: Callable[..., Any]  # the module's own
    fan_in: int
    entries: dict[tuple, Optional[_Entry]] = field(default_factory=dict)
    wrapper: Optional[Callable[[Tensor], Tensor]] = None


class InputLayers:
    """Installed on a :class:`~landscope.geometry.space.ParamSpace` working copy; idle until
    :meth:`start` registers a scan's directions and data."""

    def __init__(self, work: nn.Module, flat: Tensor, theta0: Callable[[], Tensor],
                 budget_bytes: int = BUDGET_BYTES) -> None:
        self._flat, self._theta0 = flat, theta0
        self.budget_bytes = int(budget_bytes)
        self._layers: list[_Layer] = []
        for m in work.modules():
            if (type(m) not in _TYPES or not _owned(m, flat) or hooked(m)
                    or m.weight[0].numel() < MIN_FAN_IN):
                continue
            layer = _Layer(m, m.forward, int(m.weight[0].numel()))
            layer.wrapper = self._make_forward(layer)
            self._layers.append(layer)
        self._dirs: Optional[Tensor] = None
        self._data: dict[int, Tensor] = {}  # storage address -> the data tensor (kept alive)
        self._coefficients: Optional[Coefficients] = None
        self._used = 0
        self.n_hits = 0  # evaluations served from the terms (tests, diagnostics)

    @property
    def modules(self) -> list[nn.Module]:
        """The layers that may be served (their ``forward`` is swapped during a scan)."""
        return [layer.module for layer in self._layers]

    @property
    def active(self) -> bool:
        """A scan is registered and some layer may be served."""
        return self._dirs is not None

    # ------------------------------------------------------------------ scan lifetime
    def start(self, dirs: Tensor, data: Sequence[Tensor]) -> None:
        """Serve layers reading any of ``data`` at points ``theta0 + sum c_k dirs[k]``."""
        self.stop()
        if not self._layers:
            return
        self._dirs = dirs
        for x in data:
            self._data[x.untyped_storage().data_ptr()] = x
        for layer in self._layers:  # each layer's forward goes through the wrapper ...
            layer.module.forward = layer.wrapper  # type: ignore[method-assign]

    def stop(self) -> None:
        """Forget the scan (and free the terms)."""
        self._dirs, self._coefficients, self._used = None, None, 0
        self._data.clear()
        for layer in self._layers:
            layer.entries.clear()
            _unwrap(layer)

    def declare(self, coefficients: Optional[Coefficients]) -> None:
        """The current point is ``theta0 + sum c * dirs[k]`` over ``(k, c)`` pairs (the first
        pair is the slowly varying one: its partial sum is reused); ``None``: unknown."""
        self._coefficients = None if self._dirs is None else coefficients

    # ------------------------------------------------------------------ forward
    def _make_forward(self, layer: _Layer) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            coefficients = self._coefficients
            if coefficients is None or 2 * len(coefficients) + 1 >= layer.fan_in:  # few inputs
                return layer.forward(x)
            entry = self._entry(layer, x, coefficients)
            if entry is None:
                if not layer.entries or all(e is None for e in layer.entries.values()):
                    _unwrap(layer)  # ... until it is seen not to read the data
                return layer.forward(x)
            return self._combine(entry, coefficients)
        return forward

    def _entry(self, layer: _Layer, x: Tensor, coefficients: Coefficients) -> Optional[_Entry]:
        data = self._data.get(x.untyped_storage().data_ptr())
        if data is None or x.dtype != data.dtype or x.device != data.device:
            return None  # not the data (not cached: another tensor may get this address)
        key = (x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), x.stride())
        if key in layer.entries:
            return layer.entries[key]
        entry = self._build(layer, x)
        layer.entries[key] = entry
        return entry

    def _build(self, layer: _Layer, x: Tensor) -> Optional[_Entry]:
        assert self._dirs is not None
        k = self._dirs.shape[0]
        saved = self._flat.clone()
        try:
            with torch.inference_mode():
                self._flat.copy_(self._theta0())
                base = layer.forward(x)
                size = base.numel() * base.element_size() * (k + 3)
                if self._used + size > self.budget_bytes:
                    return None
                terms = []
                for j in range(k):
                    self._flat.copy_(self._dirs[j])
                    terms.append(layer.forward(x))
        finally:
            with torch.no_grad():
                self._flat.copy_(saved)
        self._used += size
        return _Entry(base, terms, torch.empty_like(base))

    def _combine(self, entry: _Entry, coefficients: Coefficients) -> Tensor:
        self.n_hits += 1
        live = [(k, c) for k, c in coefficients if c != 0]
        with torch.inference_mode():
            if not live:
                return entry.out.copy_(entry.base)
            head, rest = coefficients[0], coefficients[1:]
            start = entry.base
            if head[1] != 0 and rest:  # the row's partial sum, reused along the row
                if entry.row_key != head:
                    if entry.row is None:
                        entry.row = torch.empty_like(entry.base)
                    torch.add(entry.base, entry.terms[head[0]], alpha=head[1], out=entry.row)
                    entry.row_key = head
                start, live = entry.row, [(k, c) for k, c in rest if c != 0]
                if not live:
                    return entry.out.copy_(start)
            (k0, c0), tail = live[0], live[1:]
            torch.add(start, entry.terms[k0], alpha=c0, out=entry.out)
            for k, c in tail:
                entry.out.add_(entry.terms[k], alpha=c)
            return entry.out


def _unwrap(layer: _Layer) -> None:
    layer.module.__dict__.pop("forward", None)  # the class's forward again


def _owned(m: nn.Module, flat: Tensor) -> bool:
    """Every parameter of ``m`` is a view of the flat buffer (a coordinate of the space)."""
    ptr = flat.untyped_storage().data_ptr()
    params = list(m.parameters(recurse=False))
    return bool(params) and all(p.untyped_storage().data_ptr() == ptr for p in params)
