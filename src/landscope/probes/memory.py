"""Memory of a Hessian-vector product: activation checkpointing and a peak-memory measure.

:func:`activation_checkpointing` makes a model's repeated blocks run their forward under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` (T. Chen et al., "Training
deep nets with sublinear memory cost", 2016): a block keeps only its inputs for backward and
recomputes its activations when the backward pass needs them.

Three things the plain ``checkpoint`` call gets wrong for the probes, handled here:

* **functional_call.**  The recomputation runs during backward, after
  ``torch.func.functional_call`` has put the module's own parameters back, so a plain
  checkpoint recomputes with the *wrong* tensors (``H v`` and the gradient come out wrong:
  docs/measurements.md#probes-memory).  Each block's current parameters and buffers (the substituted
  ones inside ``functional_call``) are passed to the checkpointed function as inputs and the block
  is re-run with them.
* **Torch-function modes** (:class:`~landscope.probes.primitives.CurvaturePrimitives`) are
  not active during backward, so a plain recomputation runs different ops than the forward
  did: a ``CheckpointError`` with BatchNorm, a silently wrong ``H v`` on the MLP and the
  ViT.
  The modes active at the forward are re-entered for the recomputation; each block's inputs
  enter it through an alias, so a mode's state (the last affine call) never crosses a block
  boundary and the forward and the recomputation make the same rewrites.
* **Second derivatives.**  Torch's non-reentrant checkpoint supports ``create_graph=True``
  and grad-of-grad (tested against the unchecked product to 1e-10 in float64).  It does
  *not* support ``torch.func`` transforms (``grad``/``jvp`` refuse saved-tensor hooks), so
  the ``forward_over_reverse`` product cannot be checkpointed.

What it buys (``scripts/bench_memory.py``; the figures: docs/measurements.md#probes-memory):
the peak of a *gradient* falls by more than half, but a Hessian-vector product gains little.
Reverse-over-reverse differentiates the whole gradient graph; that graph holds every activation
again (recomputed in the first backward), and the second backward walks the checkpointed forward
once more, recomputing it again.  With ``double_backward`` the peak of a product falls a little for
more time; the ``cached`` operator keeps the recomputed activations in its graph (what it keeps
shrinks a little) and every product recomputes every block (more time).  Forward-mode AD over a
checkpointed backward (dual tensors; not a method of the operator) was tried on two models: correct,
and its peak *rose* with checkpointing.

:func:`peak_memory` measures a callable: on CUDA ``torch.cuda.max_memory_allocated`` above
the memory allocated at the start; elsewhere :class:`LiveTensorBytes`, the peak of the
bytes held by tensor storages that aten ops allocate during the call (views and in-place
results are not allocations; storages that existed before the call are not counted).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

__all__ = ["activation_checkpointing", "checkpoint_blocks", "peak_memory", "LiveTensorBytes",
           "MemoryPeak"]

_CONTAINERS = (nn.Sequential, nn.ModuleList)


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks checkpointed by :func:`activation_checkpointing`.

    Rule: the composite children (modules with submodules of their own) of every
    ``Sequential``/``ModuleList`` that is a direct child of the model, looking through nested
    containers (ResNet-18-style stages ``layer1..layer4``).  In landscope's models that is the
    MLP's hidden blocks, the CNN's stages, the ResNet's BasicBlocks and the ViT's transformer
    blocks; a container of single layers (a ``conv -> norm -> act`` stem) is not split, and
    stems, embeddings and heads run normally.
    """
    blocks: list[nn.Module] = []

    def collect(container: nn.Module) -> None:
        for child in container.children():
            if isinstance(child, _CONTAINERS):
                collect(child)
            elif next(child.children(), None) is not None:
                blocks.append(child)

    for child in model.children():
        if isinstance(child, _CONTAINERS):
            collect(child)
    return blocks


def _alias(a: Any) -> Any:
    return a.view_as(a) if isinstance(a, Tensor) else a


class _Replay:
    """The recomputation's context: the torch-function modes active at the forward (those
    not active any more) re-entered as they were stacked, and the block's modules in their
    forward-time ``training`` / BatchNorm ``track_running_stats`` flags (a backward can run
    after ``forward_mode`` or ``frozen_batchnorm_stats`` restored them)."""

    def __init__(self, block: nn.Module, modes: Sequence[TorchFunctionMode]) -> None:
        self.modes = modes
        self.flags = [(m, m.training, getattr(m, "track_running_stats", None))
                      for m in block.modules()]
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> None:
        now = [(m, m.training, getattr(m, "track_running_stats", None)) for m, _, _ in self.flags]
        self.stack.callback(_set_flags, now)
        _set_flags(self.flags)
        active = {id(m) for m in _get_current_function_mode_stack()}
        for mode in self.modes:
            if id(mode) not in active:
                self.stack.enter_context(mode)

    def __exit__(self, *exc: Any) -> None:
        self.stack.close()


def _set_flags(flags: Sequence[tuple[nn.Module, bool, Optional[bool]]]) -> None:
    for m, training, track in flags:
        m.training = training
        if track is not None:
            m.track_running_stats = track


def _checkpointed_forward(block: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    """A ``forward`` for ``block`` that runs ``forward`` under a non-reentrant checkpoint
    with the block's current parameters and buffers as explicit inputs."""
    inside = [False]  # the re-run through functional_call calls this forward again

    def run(n_args: int, names: Sequence[str], kwargs: dict[str, Any], *flat: Any) -> Any:
        args = tuple(_alias(a) for a in flat[:n_args])
        inside[0] = True
        try:
            return functional_call(block, dict(zip(names, flat[n_args:])), args, kwargs,
                                   tie_weights=False, strict=False)
        finally:
            inside[0] = False

    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        if inside[0] or not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        state = [*block.named_parameters(remove_duplicate=False),
                 *block.named_buffers(remove_duplicate=False)]
        names = [n for n, _ in state]
        modes = list(_get_current_function_mode_stack())
        return checkpoint(run, len(args), names, kwargs, *args, *(t for _, t in state),
                          use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), _Replay(block, modes)))

    return checkpointed


@contextlib.contextmanager
def activation_checkpointing(model: nn.Module, blocks: Optional[Sequence[nn.Module]] = None
                             ) -> Iterator[list[nn.Module]]:
    """Within the block, ``blocks`` (default :func:`checkpoint_blocks`) recompute their
    activations in backward instead of keeping them; yields the checkpointed blocks.

    Works inside ``torch.func.functional_call`` and with second derivatives (see the module
    docstring); without gradients (``no_grad``) the blocks run as usual.  Each block's
    ``forward`` is replaced by an instance attribute and put back on exit, exceptions
    included.  A BatchNorm in train mode that updates its running statistics would update
    them again at the recomputation: probe in eval mode or under ``frozen_batchnorm_stats``.
    """
    chosen = checkpoint_blocks(model) if blocks is None else list(blocks)
    saved: list[tuple[nn.Module, Optional[Any]]] = []
    try:
        for block in chosen:
            own = block.__dict__.get("forward")  # an instance-level forward, if any
            saved.append((block, own))
            block.forward = _checkpointed_forward(block, block.forward)
        yield chosen
    finally:
        for block, own in reversed(saved):
            if own is None:
                del block.forward
            else:
                block.forward = own


# ---------------------------------------------------------------------- peak memory
class LiveTensorBytes(TorchDispatchMode):
    """While active, tracks the bytes of tensor storages allocated by aten ops and still
    alive; ``peak`` is their maximum (the CPU analogue of ``max_memory_allocated``).

    An op's output is an allocation when its storage is none of its inputs' storages (so
    views and in-place ops are not); its bytes count until the storage is freed.  Backward
    ops and checkpoint recomputations are seen too (the dispatch mode follows autograd).
    Memory that kernels use internally, and Python objects, are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.n_allocations = 0
        self._tracked: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Optional[dict[str, Any]] = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {_storage(t)[1] for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, Tensor):
                continue
            storage, key, nbytes = _storage(t)
            if storage is None or nbytes == 0 or key in inputs or key in self._tracked:
                continue
            self._tracked.add(key)
            weakref.finalize(storage, self._free, key, nbytes)
            self.live += nbytes
            self.n_allocations += 1
            self.peak = max(self.peak, self.live)
        return out


def _storage(t: Tensor) -> tuple[Any, int, int]:
    """``(storage, data_ptr, nbytes)``; ``(None, 0, 0)`` for tensors without a plain storage
    (sparse or wrapper tensors)."""
    try:
        storage = t.untyped_storage()
        return storage, storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):
        return None, 0, 0


@dataclass(frozen=True)
class MemoryPeak:
    """``peak_bytes`` above the start of the call, by ``measure``; ``retained_bytes`` of what
    the call allocated are still held at its end (a cached gradient graph); ``seconds`` of
    wall time (slowed by the CPU tracker's bookkeeping: time without it); ``result`` is
    what the callable returned."""

    peak_bytes: int
    retained_bytes: int
    measure: str
    seconds: float
    result: Any = None


def peak_memory(fn: Callable[[], Any], device: Optional[torch.device] = None) -> MemoryPeak:
    """Run ``fn()`` once and measure its peak memory (see the module docstring).

    ``device`` (default: CUDA when available) picks the measure: ``cuda`` uses the caching
    allocator's statistics, anything else :class:`LiveTensorBytes`.
    """
    dev = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
        t0 = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) - start
        retained = torch.cuda.memory_allocated(dev) - start
        return MemoryPeak(int(peak), int(retained), "cuda.max_memory_allocated", seconds,
                          result)
    tracker = LiveTensorBytes()
    t0 = time.perf_counter()
    with tracker:
        result = fn()
    seconds = time.perf_counter() - t0
    return MemoryPeak(tracker.peak, tracker.live, "live tensor storage bytes (dispatch mode)",
                      seconds, result)
