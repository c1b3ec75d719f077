"""λmax every k optimizer steps during training (``probe.every_n_steps``): the measurements of
the edge of stability (Cohen et al., "Gradient descent on neural networks typically occurs at
the edge of stability", ICLR 2021).

:class:`StepCurvature` is an ``on_step`` hook for :func:`landscope.train.fit`: after every
optimizer step whose global number ``t`` (``state.step``, counting from 1) is a multiple of
``k``, it measures at the parameters after that step

- ``λmax``, the largest eigenvalue of the Hessian of the probe loss (the training objective,
  :func:`landscope.losses.task_loss`, averaged over the probe data ``probe.data_size``
  samples, null = the whole training split; in ``probe.mode``), by Lanczos
  (:func:`~landscope.probes.lanczos.lanczos_eigs`, k = 1) to the relative residual
  :data:`TOL` = 1e-3: ``‖H v − θ v‖ ≤ 1e-3·|θ|``, so θ is within 0.1 % of an eigenvalue of H;
- the probe loss at the same parameters (free: the cached gradient graph of the Hessian
  operator evaluates it), so with the whole training split and ``train.full_batch`` it is
  the full-batch training loss after step t.

Every measurement is a cold start from the seeded Gaussian vector of ``probe.seed``, so it
depends on the parameters only and a resumed job repeats an uninterrupted one's values
bitwise. (A warm start from the previous top eigenvector, mixed half and half with a random
vector so that an eigenvalue overtaking it is still found, saved only 10-20 % of the products
on the ``eos`` preset's problem (about 12 cold, 10 warm per measurement), and its vector would
have to travel in the checkpoint.)

The hook keeps the epoch's measurements and :meth:`StepCurvature.pop` hands them to the job
layer at the epoch's end, which puts them into the epoch's ``metrics.jsonl`` row (only rows of
epochs with a measurement carry them):

- ``curv_step``: the global step numbers t measured in the epoch (list of int);
- ``curv_step_lambda_max``: λmax after each of those steps (list of float; NaN when the
  parameters are no longer finite);
- ``curv_step_loss``: the probe loss after each of those steps (list of float);
- ``curv_step_hvps``: the Hessian-vector products the epoch's measurements spent (int).

The rows live in the checkpoint's history, so a job resumed from an epoch's checkpoint keeps
exactly the measurements up to that epoch, and the measured steps (multiples of k of the
global step count, recovered from the history) are those of an uninterrupted run.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from landscope.probes.hvp import HessianOperator
from landscope.probes.lanczos import lanczos_eigs
from landscope.probes.probe_data import ProbeData

TOL = 1e-3  # relative Ritz residual of lambda_max (lanczos_eigs' tol)
KEYS = ("curv_step", "curv_step_lambda_max", "curv_step_loss")  # the lists of a row


class StepCurvature:
    """The ``probe.every_n_steps`` hook (module docstring) on the probe data ``data``."""

    def __init__(self, data: ProbeData, every: int, *, mode: str = "eval", seed: int = 0) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.data, self.every, self.mode, self.seed = data, int(every), str(mode), int(seed)
        self._rows: dict[str, list] = {k: [] for k in KEYS}
        self._hvps = 0

    def begin(self, state: Any) -> None:
        """Before training (or after a resume): ``state.step`` set from the history's steps
        when it is still 0, so a resumed job measures at the same global steps."""
        if getattr(state, "step", 0) == 0 and state.history:
            state.step = sum(int(r.get("steps", 0)) for r in state.history)

    def on_step(self, state: Any) -> None:
        """Hook for ``fit(on_step=...)``: measure after every ``every``-th optimizer step."""
        if state.step % self.every == 0:
            lam, loss = self.measure(state.model, state.step)
            self._rows["curv_step"].append(int(state.step))
            self._rows["curv_step_lambda_max"].append(lam)
            self._rows["curv_step_loss"].append(loss)

    def measure(self, model: torch.nn.Module, step: int) -> tuple[float, float]:
        """``(λmax, probe loss)`` at the model's current parameters after global step ``step``
        (NaN, NaN when they are not finite; λmax NaN when the loss is not)."""
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            return math.nan, math.nan
        p = next(model.parameters())
        if self.data.dtype != p.dtype or self.data.device != p.device:  # moved once, not per call
            self.data = self.data.to(p.dtype, p.device)
        op = HessianOperator(model, self.data, mode=self.mode, seed=self.seed,
                             check_determinism=False)
        loss = op.loss()
        if not math.isfinite(loss):
            return math.nan, loss
        top = lanczos_eigs(op, k=1, which="largest", tol=TOL, seed=self.seed,
                           return_vectors=False)
        self._hvps += top.n_matvecs
        return float(top.eigenvalues[0]), float(loss)

    def pop(self) -> dict:
        """The measurements since the last call, as ``metrics.jsonl`` fields ({} when none)."""
        if not self._rows["curv_step"]:
            return {}
        out: dict = {k: list(v) for k, v in self._rows.items()}
        out["curv_step_hvps"] = self._hvps
        self._rows = {k: [] for k in KEYS}
        self._hvps = 0
        return out
