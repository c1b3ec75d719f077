"""The notebook API: one object over the probes and the geometry engine, without Hydra.

::

    from landscope import Analyzer

    an = Analyzer(model, train_loader, test_loader, nn.CrossEntropyLoss(), device="cpu")
    an.full_analysis()                      # curvature summary (a dataclass)
    an.visualize_2d_landscape(1.0, 21, "plane.png")
    an.analyze_optimization_trajectory(optimizer, num_steps=500, track_interval=50)
    an.compute_mode_connectivity(other_model, num_points=21)

**Data.** Each loader is read once, in its own order, when the analyzer is built: the first
``max_samples`` samples (default 1,000; ``None``: all) become a fixed sample set, cut into
micro-batches of ``micro_batch``. Every measurement uses these sets, so repeated calls see the
same data (a shuffling loader is fine). :meth:`~Analyzer.analyze_optimization_trajectory`
iterates ``train_loader`` itself, as many passes as it needs.

**Loss.** ``criterion=None`` or a plain ``nn.CrossEntropyLoss()`` is the engine's own
cross-entropy (the same function the runner's jobs are probed with). Any other torch loss
module (``MSELoss``, ``CrossEntropyLoss(label_smoothing=0.1)``, ...) is used through its
per-sample values (``reduction="none"``, averaged over each sample's elements), and the
loss is their mean over the samples. For class-weighted or ``ignore_index`` losses this
differs from the module's own ``"mean"``. Accuracy is ``argmax(output) == target`` for
class-index targets and ``argmax(output) == argmax(target)`` for one-hot or probability
targets of the output's shape.

**The model.** It is moved to ``device``. Only :meth:`~Analyzer.analyze_optimization_trajectory`
changes its weights (with the optimizer you pass); the other methods evaluate private copies or
functional calls. All measurements are in eval mode: BatchNorm uses its running statistics.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from landscope.analyzer_results import Connectivity, CurvatureSummary, TrajectoryHistory
from landscope.errors import LandscopeError
from landscope.probes.cost import ProbeLedger
from landscope.probes.probe_data import ProbeData
from landscope.progress import wanted

DEFAULT_SAMPLES = 1000
ONE_HOT_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CONNECTED_ERROR_BARRIER = 0.02  # Frankle et al. 2020: "linearly connected" below 2% error


# --------------------------------------------------------------------------- plumbing
class _WithCriterion(nn.Module):
    """``model`` with the task loss and correctness of a user's criterion (the hooks of
    :mod:`landscope.losses`), so every probe and scan uses that loss."""

    def __init__(self, model: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.net = model
        self._none = copy.copy(criterion)
        self._none.reduction = "none"

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def task_loss(self, out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        per = self._none(out, y)
        if per.dim() > 1:
            per = per.reshape(per.shape[0], -1).mean(1)
        if reduction == "none":
            return per
        return per.sum() if reduction == "sum" else per.mean()

    def task_correct(self, out: Tensor, y: Tensor) -> Tensor:
        return _correct(out, y)


def _correct(out: Tensor, y: Tensor) -> Tensor:
    if y.shape == out.shape and y.dtype in ONE_HOT_FLOAT:
        return out.argmax(-1) == y.argmax(-1)
    return out.argmax(-1) == y


def _plain_cross_entropy(criterion: Any) -> bool:
    return (type(criterion) is nn.CrossEntropyLoss and criterion.weight is None
            and criterion.label_smoothing == 0.0 and criterion.reduction == "mean"
            and criterion.ignore_index == -100)


def _gather(loader: Iterable, max_samples: Optional[int], what: str) -> tuple[Tensor, Tensor]:
    """The first ``max_samples`` samples of one pass over ``loader`` (pairs ``(x, y)``)."""
    xs, ys, n = [], [], 0
    for i, batch in enumerate(loader):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, Tensor) for t in batch)):
            raise LandscopeError(f"{what}: batch {i} is not a pair of tensors (inputs, targets)")
        x, y = batch
        if len(x) != len(y):
            raise LandscopeError(f"{what}: batch {i} has {len(x)} inputs but {len(y)} targets")
        take = len(x) if max_samples is None else min(len(x), max_samples - n)
        xs.append(x[:take])
        ys.append(y[:take])
        n += take
        if max_samples is not None and n >= max_samples:
            break
    if n == 0:
        raise LandscopeError(f"{what} yielded no samples")
    return torch.cat(xs), torch.cat(ys)


def _check_analysis(top_k: Any, sharpness_rho: Any, trace_rse: Any, negative_tol: Any,
                    slq_steps: Any) -> None:
    """:meth:`Analyzer.full_analysis`'s arguments, or a :class:`LandscopeError` naming one."""
    _check_count(top_k, "top_k")
    if not (isinstance(sharpness_rho, (int, float)) and math.isfinite(sharpness_rho)
            and sharpness_rho > 0):
        raise LandscopeError(f"sharpness_rho must be > 0 (got {sharpness_rho!r})")
    if not (isinstance(trace_rse, (int, float)) and 0 < trace_rse < 1):
        raise LandscopeError(f"trace_rse must be in (0, 1) (got {trace_rse!r})")
    if not (isinstance(negative_tol, (int, float)) and 0 <= negative_tol < 1):
        raise LandscopeError(f"negative_tol must be in [0, 1) (got {negative_tol!r})")
    _check_count(slq_steps, "slq_steps", 2)


def _check_count(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise LandscopeError(f"{what} must be an integer >= {minimum} (got {value!r})")
    return int(value)


# --------------------------------------------------------------------------- the API
class Analyzer:
    """Curvature, landscape pictures, training dynamics and mode connectivity of one model
    (module docstring: data, loss, what is left untouched).

    ``model``: any ``nn.Module`` mapping a batch of inputs to outputs; ``train_loader`` /
    ``test_loader``: iterables of ``(inputs, targets)`` batches (``test_loader`` may be
    None); ``criterion``: a torch loss module (default cross-entropy); ``device``: where
    the model and the sample sets live; ``max_samples``: samples taken from each loader for
    the measurements (None: all); ``micro_batch``: samples per forward pass; ``seed``:
    every random choice (Lanczos starts, Hutchinson probes, directions); ``progress``: tqdm bars
    of each estimator's products and of the slice's points (None: on a terminal; True in a
    notebook)."""

    def __init__(self, model: nn.Module, train_loader: Iterable, test_loader: Optional[Iterable]
                 = None, criterion: Optional[nn.Module] = None,
                 device: Union[str, torch.device] = "cpu", *,
                 max_samples: Optional[int] = DEFAULT_SAMPLES, micro_batch: int = 1000,
                 seed: int = 0, progress: Optional[bool] = None) -> None:
        if not isinstance(model, nn.Module):
            raise LandscopeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
        if max_samples is not None:
            _check_count(max_samples, "max_samples")
        _check_count(micro_batch, "micro_batch")
        if criterion is not None and not (callable(criterion) and hasattr(criterion, "reduction")):
            raise LandscopeError("criterion must be a torch loss module with a reduction "
                                 f"attribute, e.g. nn.CrossEntropyLoss() (got {criterion!r})")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.criterion = criterion
        self.seed = int(seed)
        self.progress = wanted(progress)
        self.train_loader = train_loader
        self._custom = criterion is not None and not _plain_cross_entropy(criterion)
        self._net = _WithCriterion(self.model, criterion) if self._custom else self.model
        dtype = next(iter(self.model.parameters())).dtype

        def sample_set(loader: Iterable, what: str) -> ProbeData:
            x, y = _gather(loader, max_samples, what)
            x = x.to(self.device, dtype if x.is_floating_point() else x.dtype)
            return ProbeData.from_tensors(x, y.to(self.device), micro_batch)

        self.train = sample_set(train_loader, "train_loader")
        self.test = None if test_loader is None else sample_set(test_loader, "test_loader")
        self._check_loss()

    def _check_loss(self) -> None:
        from landscope.losses import task_loss

        x, y = self.train.batches[0]
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self._net(x[:2])
                per = task_loss(self._net, out, y[:2], reduction="none")
        except Exception as exc:
            raise LandscopeError(f"the model and criterion fail on a train batch: "
                                 f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.model.train(was)
        if per.shape != (len(out),):
            raise LandscopeError(f"the criterion gives per-sample losses of shape "
                                 f"{tuple(per.shape)} for {len(out)} samples")

    # ------------------------------------------------------------------ curvature
    def full_analysis(self, top_k: int = 5, sharpness_rho: float = 0.05,
                      trace_rse: float = 0.01, negative_tol: float = 1e-3,
                      slq_steps: int = 80) -> CurvatureSummary:
        """Hessian spectrum (top-k, checked for copies of a repeated eigenvalue, and bottom
        eigenvalue, Lanczos), trace (≥ 30 samples, to a stderr of ``trace_rse`` · max(|tr H|,
        an estimate of Σ|λ|), as the probes), spectral density (10 probes of ``slq_steps``
        Lanczos steps: the number of eigenvalues below −``negative_tol``·|λmax|), worst-case
        sharpness at radius ``sharpness_rho`` and PAC-Bayes flatness at the model's weights, on
        the train sample set (eval mode)."""
        from landscope.probes.complement import complement_check
        from landscope.probes.density import slq
        from landscope.probes.hvp import HessianOperator
        from landscope.probes.lanczos import lanczos_eigs, spectral_summary
        from landscope.probes.sharpness import (
            ModelObjective,
            pac_bayes_flatness,
            worst_case_sharpness,
        )
        from landscope.probes.steps import TRACE_MIN_SAMPLES
        from landscope.probes.trace import deflated_trace

        _check_analysis(top_k, sharpness_rho, trace_rse, negative_tol, slq_steps)
        tic, seed = time.perf_counter(), self.seed
        op = HessianOperator(self._net, self.train, mode="eval", seed=seed)
        k = min(top_k, op.dim)
        # no caps: the ledger only moves a bar of each estimator's products
        ledger = ProbeLedger(counter=lambda: op.n_matvecs, progress=self.progress)
        with ledger.stage("top"):
            top = lanczos_eigs(op, k=k, which="largest", seed=seed, stop=ledger.stop)
            if k >= 2:  # copies of a repeated eigenvalue one Lanczos run misses
                top = complement_check(op, top, seed=seed + 2, stop=ledger.stop)
        with ledger.stage("bottom"):
            bottom = lanczos_eigs(op, k=1, which="smallest", atol=1e-6, seed=seed + 1,
                                  stop=ledger.stop)
        summary = spectral_summary(top, bottom)
        with ledger.stage("trace"):
            tr = deflated_trace(op, top, seed=seed, target_rse=trace_rse, max_samples=2000,
                                min_samples=TRACE_MIN_SAMPLES, stop=ledger.stop)
        with ledger.stage("density", 10 * min(slq_steps, op.dim)):
            q = slq(op, n_probes=10, m_steps=min(slq_steps, op.dim), seed=seed,
                    stop=ledger.stop)
        cut = -negative_tol * abs(summary["lambda_max"])
        negative = q.trace_f((q.nodes < cut).to(torch.float64))  # tr 1[H < cut] = count
        obj = ModelObjective(self._net, self.train, mode="eval")
        loss0, acc0 = obj.loss(obj.theta0), obj.accuracy(obj.theta0)
        wc = worst_case_sharpness(obj, [float(sharpness_rho)], seed=seed)
        pb = pac_bayes_flatness(obj, seed=seed)
        return CurvatureSummary(
            lambda_max=summary["lambda_max"],
            top_eigenvalues=tuple(float(v) for v in top.eigenvalues),
            lambda_min=summary["lambda_min"], spectral_gap=summary["spectral_gap"],
            condition_number=summary["condition_number"],
            negative_ratio=summary["negative_ratio"], trace=tr.estimate,
            trace_stderr=tr.stderr, n_negative_eigenvalues=negative.estimate,
            n_negative_stderr=negative.stderr, negative_tol=float(negative_tol),
            sharpness=wc.values[0], sharpness_rho=float(sharpness_rho), flatness=pb.sigma,
            flatness_measure=pb.measure, train_loss=loss0, train_acc=acc0, n_params=op.dim,
            n_samples=self.train.n, all_converged=bool(summary["all_converged"]),
            hessian_products=op.n_matvecs, seconds=time.perf_counter() - tic)

    # ------------------------------------------------------------------ pictures
    def visualize_2d_landscape(self, distance: float = 1.0, resolution: int = 21,
                               save_path: Optional[Union[str, Path]] = None, *,
                               normalization: str = "filter", bn: str = "keep",
                               workers: int = 1) -> Any:
        """The loss on the plane ``θ + α d1 + β d2``, α and β in [−distance, distance] with
        ``resolution`` (odd) points each, along two seeded random directions
        (filter-normalized by default: Li et al. 2018). Returns the
        :class:`~landscope.geometry.slices.PlaneSlice` (``arrays()``: ``x``, ``y``,
        ``train_loss``, ``train_acc``, and the test ones with a test loader; ``scalars()``);
        with ``save_path``, draws the train loss as contours and a 3-D surface into it."""
        from landscope.geometry.directions import random_directions
        from landscope.geometry.slices import plane_slice, symmetric_grid
        from landscope.geometry.space import ParamSpace

        grid = symmetric_grid(distance, resolution)
        space = ParamSpace(self._net)
        d1, d2 = random_directions(space, 2, seed=self.seed, normalization=normalization)
        plane = plane_slice(space, d1, d2, grid, grid, self.train, self.test, bn=bn,
                            workers=workers, progress="landscape plane" if self.progress else None)
        if save_path is not None:
            from landscope.plots import plot_plane

            plot_plane(plane.arrays(), Path(save_path), "train_loss",
                       f"train loss, {normalization}-normalized directions")
        return plane

    # ------------------------------------------------------------------ dynamics
    def analyze_optimization_trajectory(self, optimizer: torch.optim.Optimizer,
                                        num_steps: int, track_interval: Optional[int] = None,
                                        *, grad_clip: Optional[float] = None,
                                        lanczos_tol: float = 1e-3) -> TrajectoryHistory:
        """Train the model for ``num_steps`` optimizer steps on ``train_loader`` (cycled),
        and every ``track_interval`` steps (default: 20 points), at step 0 and at the end
        record the train and test loss and accuracy, the full gradient norm and the
        sharpness λmax (Lanczos to relative tolerance ``lanczos_tol``), all on the fixed
        sample sets in eval mode. ``optimizer`` must hold the model's parameters; SAM and
        LLP from :mod:`landscope.optim` take their extra gradient evaluations as in the
        runner. Stops early if the loss becomes non-finite (``diverged``)."""
        from landscope.train import optimizer_step

        steps = _check_count(num_steps, "num_steps")
        every = max(1, steps // 20) if track_interval is None else \
            _check_count(track_interval, "track_interval")
        own = {id(p) for p in self.model.parameters()}
        if not any(id(p) in own for g in optimizer.param_groups for p in g["params"]):
            raise LandscopeError("the optimizer holds none of the model's parameters")
        was = self.model.training
        history = TrajectoryHistory()
        tic, grad_evals, batch_loss = time.perf_counter(), 0, math.nan
        batches = self._cycle(self.train_loader)
        try:
            history.rows.append(self._track(0, batch_loss, grad_evals, tic, lanczos_tol))
            for step in range(1, steps + 1):
                x, y = next(batches)
                self.model.train()
                loss, spent = optimizer_step(self._net, optimizer, x, y, grad_clip)
                grad_evals += spent
                batch_loss = float(loss)
                if not math.isfinite(batch_loss):
                    history.diverged = True
                    history.rows.append({"step": step, "batch_loss": batch_loss,
                                         "grad_evals": grad_evals,
                                         "seconds": time.perf_counter() - tic})
                    break
                if step % every == 0 or step == steps:
                    history.rows.append(self._track(step, batch_loss, grad_evals, tic,
                                                    lanczos_tol))
        finally:
            self.model.train(was)
        return history

    def _cycle(self, loader: Iterable) -> Any:
        while True:
            empty = True
            for x, y in loader:
                empty = False
                x = x.to(self.device, self.train.dtype if x.is_floating_point() else x.dtype)
                yield x, y.to(self.device)
            if empty:
                raise LandscopeError("train_loader yielded no batches")

    def _track(self, step: int, batch_loss: float, grad_evals: int, tic: float,
               tol: float) -> dict[str, float]:
        from landscope.probes.hvp import HessianOperator
        from landscope.probes.lanczos import lanczos_eigs
        from landscope.probes.sharpness import ModelObjective

        self.model.eval()
        obj = ModelObjective(self._net, self.train, mode="eval")
        loss, grad = obj.loss_and_grad(obj.theta0)
        row = {"step": step, "train_loss": loss, "train_acc": obj.accuracy(obj.theta0)}
        if self.test is not None:
            test = ModelObjective(self._net, self.test, mode="eval")
            row.update(test_loss=test.loss(test.theta0), test_acc=test.accuracy(test.theta0))
        op = HessianOperator(self._net, self.train, mode="eval", seed=self.seed)
        top = lanczos_eigs(op, k=1, tol=tol, seed=self.seed, return_vectors=False)
        row.update(grad_norm=float(grad.norm()), lambda_max=float(top.eigenvalues[0]),
                   batch_loss=batch_loss, grad_evals=grad_evals,
                   seconds=time.perf_counter() - tic)
        return row

    # ------------------------------------------------------------------ connectivity
    def compute_mode_connectivity(self, other_model: nn.Module, num_points: int = 21, *,
                                  bn: Optional[str] = None) -> Connectivity:
        """Loss and error along the straight line from this model to ``other_model`` (same
        architecture), ``num_points`` evenly spaced t with both endpoints evaluated exactly,
        on the train (and test) sample sets. ``bn``: ``"recompute"`` re-estimates BatchNorm
        statistics at every t (the default for models with BatchNorm), ``"keep"``
        interpolates the two models' running statistics. Neither model is changed."""
        from landscope.geometry.connectivity import linear_path, path_ts
        from landscope.geometry.space import ParamSpace, batchnorm_modules

        if not isinstance(other_model, nn.Module):
            raise LandscopeError(f"other_model must be a torch.nn.Module "
                                 f"(got {type(other_model).__name__})")
        points = _check_count(num_points, "num_points", 2)
        space = ParamSpace(self._net)
        prefix = "net." if self._custom else ""
        params = {prefix + n: p.detach().to(self.device)
                  for n, p in other_model.named_parameters()}
        buffers = {prefix + n: b.detach().to(self.device) for n, b in other_model.named_buffers()}
        theta_b = space.flatten_params(params)
        mode = bn if bn is not None else ("recompute" if batchnorm_modules(self.model)
                                          else "keep")
        path = linear_path(space, space.theta0, theta_b, path_ts(points), self.train,
                           self.test, bn=mode, buffers_b=buffers)
        s = path.scalars("linear")
        split = "test" if self.test is not None else "train"
        error_barrier = s[f"linear_{split}_error_barrier_mean"]
        test_err = None if path.test_acc is None else 1.0 - path.test_acc
        return Connectivity(
            barrier_height=s["linear_train_loss_barrier_mean"],
            barrier_height_interp=s["linear_train_loss_barrier_interp"],
            error_barrier=error_barrier, error_split=split,
            connectivity_score=1.0 - max(0.0, error_barrier),
            linearly_connected=bool(error_barrier <= CONNECTED_ERROR_BARRIER),
            path_length=float((theta_b.double() - space.theta0.double()).norm()),
            t=path.t, train_loss=path.train_loss, train_error=1.0 - path.train_acc,
            test_loss=path.test_loss, test_error=test_err, bn=path.bn, scalars=s)
