"""Per-layer and per-block spectra: the diagonal blocks ``H_bb`` of the Hessian.

For a partition of the parameters into groups ``b``, ``H_bb = ∂²L/∂θ_b²`` is the curvature seen
when only group ``b`` moves and every other parameter is held at its value.  Its top eigenvalues
say which part of the network carries the sharp directions, and its trace splits the full trace
exactly: ``tr H = Σ_b tr H_bb`` (the off-diagonal blocks contribute nothing to the trace).  The
top eigenvalue of a block is at most ``λmax(H)`` (Cauchy interlacing for principal submatrices),
so ``lambda_max / λmax(H)`` in ``[0, 1]`` reads as the block's share of the sharpest curvature.

Two partitions (``probe.per_block``):

* ``layer`` -- parameters grouped by the module that owns them (``conv``, ``norm``, ``linear``
  each apart; a parameter registered on the root, such as a ViT's ``pos_embed``, on its own);
* ``block`` -- the architectural units: every top-level child of the model, with a top-level
  ``nn.Sequential``/``nn.ModuleList`` of composite modules (the MLP's hidden layers, the CNN's
  stages, the ResNet's and ViT's residual blocks) split into its items.

Each block's top-k pairs come from Lanczos on the restricted operator, checked for missed copies of
a repeated eigenvalue (:func:`~landscope.probes.complement.complement_check`; a block of identical
units, such as the columns of a layer at a symmetric point, has them), its trace from Hutchinson
deflated by those pairs (to ``probe.trace.rse``), or exactly from its unit vectors when the block
has at most :data:`EXACT_TRACE_MAX` parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from landscope.errors import LandscopeError
from landscope.probes.complement import checked_list
from landscope.probes.hvp import HessianOperator, Mode
from landscope.probes.lanczos import lanczos_eigs
from landscope.probes.probe_data import ProbeData
from landscope.probes.trace import deflated_trace, unit_vector_trace

LEVELS: tuple[str, ...] = ("layer", "block")
Stop = Optional[Callable[[], Optional[str]]]
EXACT_TRACE_MAX = 64  # blocks this small get tr H_bb from D_b unit-vector products
TRACE_SAMPLES = (10, 500)  # a larger block's Hutchinson samples: at least, at most


def _split_container(module: nn.Module) -> bool:
    """A Sequential/ModuleList whose items are themselves composite modules (blocks)."""
    return isinstance(module, (nn.Sequential, nn.ModuleList)) and any(
        len(list(child.children())) > 0 for child in module.children())


def parameter_groups(model: nn.Module, level: str) -> dict[str, list[str]]:
    """Ordered ``{group name: [parameter names]}`` of the trainable parameters (module docstring);
    groups appear in ``model.named_parameters()`` order."""
    if level not in LEVELS:
        raise LandscopeError(f"per-block level must be one of {', '.join(LEVELS)} (got {level!r})")
    children = dict(model.named_children())
    groups: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        if len(parts) == 1:
            key = name
        elif level == "layer":
            key = ".".join(parts[:-1])
        else:
            key = ".".join(parts[:2]) if (len(parts) > 2 and _split_container(children[parts[0]])) \
                else parts[0]
        groups.setdefault(key, []).append(name)
    if not groups:
        raise LandscopeError("the model has no trainable parameters to probe")
    return groups


def group_sizes(model: nn.Module, level: str) -> list[int]:
    """The parameters of each group of :func:`parameter_groups`, in order (for the plan)."""
    named = dict(model.named_parameters())
    return [sum(named[n].numel() for n in members)
            for members in parameter_groups(model, level).values()]


@dataclass
class BlockSpectrum:
    """Top eigenvalues (descending, float64) and trace of one diagonal block ``H_bb``."""

    name: str
    params: list[str]
    n_params: int
    eigenvalues: torch.Tensor
    residuals: torch.Tensor
    converged: bool
    trace: float
    trace_stderr: float  # 0 for an exact trace
    n_matvecs: int
    checked: bool = False    # the list was checked for missed copies of repeated eigenvalues
    missed_copies: int = 0   # copies the check put in the list
    stopped_by: str | None = None  # the cap that cut its Lanczos run or trace short

    def summary(self, lambda_max: float | None = None) -> dict[str, Any]:
        finite = math.isfinite(self.trace)
        out: dict[str, Any] = {"n_params": self.n_params,
                               "lambda_max": float(self.eigenvalues[0]),
                               "trace": self.trace if finite else None,
                               "trace_stderr": self.trace_stderr if finite else None,
                               "converged": self.converged, "hvps": self.n_matvecs,
                               "checked": self.checked, "missed_copies": self.missed_copies}
        if self.stopped_by is not None:
            out["stopped_by"] = self.stopped_by
        if lambda_max:
            out["lambda_max_share"] = float(self.eigenvalues[0]) / lambda_max
        return out


class BlockSpectra(list):
    """The blocks' spectra in order, and the cap that ended them early (``stopped_by``): a
    block cut short says so itself, and the blocks after a spent cap are not in the list."""

    stopped_by: str | None = None


def block_spectra(model: nn.Module, data: ProbeData, groups: dict[str, Sequence[str]], *,
                  k: int = 3, mode: Mode = "eval", tol: float = 1e-6, trace_rse: float = 0.01,
                  trace: bool = True, seed: int = 0, multiplicity_check: bool = True,
                  stop: Stop = None, operators: list | None = None) -> BlockSpectra:
    """Top-``k`` eigenpairs (Lanczos, relative residual ``tol``; with ``multiplicity_check``
    checked for missed copies of repeated eigenvalues) and the trace of ``H_bb`` for every
    group of :func:`parameter_groups`; ``model`` is not modified. ``stop``: a cap asked before
    each product (:class:`BlockSpectra`). ``operators``: each block's operator is appended as
    it starts, so that a caller can count the products spent so far."""
    named = dict(model.named_parameters())
    out = BlockSpectra()
    for i, (name, members) in enumerate(groups.items()):
        if stop is not None and (why := stop()) is not None:
            out.stopped_by = why
            break
        op = HessianOperator(model, data, params={n: named[n] for n in members}, mode=mode,
                             check_determinism=False)
        if operators is not None:
            operators.append(op)
        eig = lanczos_eigs(op, k=min(k, op.dim), which="largest", tol=tol, atol=1e-10,
                           seed=seed + i, stop=stop)
        # the check's start: a seed no block's own Lanczos run uses
        eig = checked_list(op, eig, enabled=multiplicity_check, tol=tol, atol=1e-10,
                           seed=seed + len(groups) + i, stop=stop)
        tr, se, cut = float("nan"), float("nan"), eig.stopped_by
        if trace and op.dim <= EXACT_TRACE_MAX and cut is None:
            tr, cut = unit_vector_trace(op, stop)
            se = 0.0 if cut is None else float("nan")
        elif trace and cut is None:
            t = deflated_trace(op, eig, seed=seed + i, target_rse=trace_rse,
                               min_samples=TRACE_SAMPLES[0], max_samples=TRACE_SAMPLES[1],
                               stop=stop)
            tr, se, cut = t.estimate, t.stderr, t.stopped_by
        out.append(BlockSpectrum(name=name, params=list(members), n_params=op.dim,
                                 eigenvalues=eig.eigenvalues, residuals=eig.residuals,
                                 converged=bool(eig.converged.all()), trace=tr,
                                 trace_stderr=se, n_matvecs=op.n_matvecs,
                                 checked=eig.checked, missed_copies=eig.added_by_check,
                                 stopped_by=cut))
        out.stopped_by = out.stopped_by or cut
    return out


def eigenvalue_table(spectra: Sequence[BlockSpectrum], k: int) -> np.ndarray:
    """The blocks' top eigenvalues as a (blocks, ``k``) array, padded with NaN where a block
    has fewer than ``k`` (a block of fewer parameters, or a Lanczos run cut short)."""
    eigs = np.full((len(spectra), k), np.nan)
    for i, b in enumerate(spectra):
        eigs[i, : len(b.eigenvalues)] = b.eigenvalues.numpy()
    return eigs
