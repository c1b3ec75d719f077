"""The class structure of the Hessian's outliers: how many eigenvalues split off the bulk,
against C − 1 and C, and how much of the class-mean gradients the top eigenvectors span.

Background (Sagun et al. 2017/2018, "Eigenvalues of the Hessian in deep learning" and
"Empirical analysis of the Hessian of over-parametrized neural networks"; Papyan 2019,
"Measurements of three-level hierarchical structure in the outliers in the spectrum of deepnet
Hessians"; Papyan 2020, "Traces of class/cross-class structure pervade deep learning spectra"):
with the split H = G + (H − G), the Gauss-Newton part G of a C-class network carries about C
outliers, attributed to the class means of the gradients; for cross-entropy often C − 1, since
the softmax Jacobian has the null direction 1 (the logit-gradients p − e_y sum to zero over
the classes, so the class means obey one linear relation once the loss gradient is ~0).

Definitions (``C`` = the model's number of outputs, classes absent from the probe data left out
of the means; ``λ_1 ≥ … ≥ λ_k`` and ``V = [v_1 … v_k]`` the top-k Hessian eigenpairs, k ≥ C + 1;
``V_r`` the first r columns):

* class-mean gradient ``g_c = (1/n_c) Σ_{i: y_i = c} ∇_θ ℓ(f(x_i), y_i)``, from one pass over
  the probe data: per micro-batch, one backward of the sum of the class-c losses per class
  present. ``Σ_c (n_c/n) g_c = ∇L`` (the probe-loss gradient) exactly; ``relation`` =
  ``‖Σ_c (n_c/n) g_c‖ / mean_c ‖g_c‖`` measures how close the g_c are to spanning C − 1
  dimensions (0: exactly C − 1 when they are otherwise independent).
* outlier count (the *gap rule*, :func:`count_outliers_gap`): among the positive eigenvalues,
  the position n of the largest ratio ``λ_n / λ_{n+1}`` (n ≤ k − 1: at least one eigenvalue
  of the bulk must be seen); when ``λ_{m+1} ≤ 0`` the ratio there is infinite. Ties: the
  smallest n. With an SLQ density, also the *edge rule*: the number of top-k eigenvalues above
  the density's outlier threshold (:meth:`~landscope.probes.density.SLQResult.outliers`); when
  all k are above it the count is only a lower bound (``classes_n_outliers_edge_censored``).
* capture ``a_c(r) = ‖V_rᵀ g_c‖² / ‖g_c‖²`` (1: g_c inside span V_r; 0: orthogonal), averaged
  over the classes present, for r = C − 1 and r = C; ``energy(r) = Σ_c ‖V_rᵀ g_c‖² / Σ_c
  ‖g_c‖²`` (the larger gradients weigh more).
* principal cosines between span V_r and span{g_c} (Björck & Golub 1973): the singular values
  of ``V_rᵀ Q`` with Q an orthonormal basis of span{g_c} (SVD, rank at relative tolerance
  1e-10); ``overlap(r)`` = the mean of their squares over the min(r, rank) angles (1: one span
  holds the other).
* centered: the same capture and overlap for the class means around the loss gradient,
  ``g_c − ∇L`` (``∇L = Σ_c (n_c/n) g_c``), which span at most C − 1 dimensions: against
  V_{C−1} only (``classes_{capture,overlap}_centered_top_c_minus_1``).
* per eigenvector, ``share_j = ‖Qᵀ v_j‖²``: the fraction of v_j inside span{g_c} (the outliers'
  eigenvectors near 1 and the bulk's near 0 is Papyan's picture).

Not measured here: Papyan's finer decomposition into the C(C − 1) cross-class means of the
logit-gradients ``J_iᵀ(p_i − e_c')``, and G itself (see the curvature operators).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscope.errors import ConfigError
from landscope.losses import task_loss
from landscope.probes.hvp import Mode, fixed_tensors, forward_mode, resolve_params
from landscope.probes.probe_data import ProbeData

RANK_RTOL = 1e-10  # singular values below this times the largest do not count in span{g_c}


def class_mean_gradients(model: nn.Module, data: ProbeData, mode: Mode = "eval",
                         params: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Tensor]:
    """``(G, counts)``: the C × D class-mean gradients ``g_c`` (rows, :class:`HessianOperator`'s
    flat order, the parameters' dtype; zero rows for absent classes) and the samples per class.
    C is the model's number of outputs. Integer labels only (a classification task)."""
    names, values = resolve_params(model, params)
    dtype, device = values[0].dtype, values[0].device
    fixed = fixed_tensors(model, names, dtype, device)
    data = data.to(dtype, device) if (data.dtype, data.device) != (dtype, device) else data
    if data.batches[0][1].is_floating_point():
        raise ConfigError("probe.classes.enabled=true needs integer class labels (got "
                          f"{data.batches[0][1].dtype} targets: not a classification task)")
    leaves = [v.clone().requires_grad_(True) for v in values]
    sums: Optional[Tensor] = None
    counts: Optional[Tensor] = None
    with torch.enable_grad(), forward_mode(model, mode):
        for x, y in data.batches:
            out = functional_call(model, {**fixed, **dict(zip(names, leaves))}, (x,))
            losses = task_loss(model, out, y, reduction="none").reshape(len(y), -1).sum(1)
            if sums is None:
                c = int(out.shape[-1])
                sums = torch.zeros(c, sum(v.numel() for v in values), dtype=dtype, device=device)
                counts = torch.zeros(c, dtype=torch.long)
            assert counts is not None
            present = torch.unique(y).tolist()
            for j, cls in enumerate(present):
                if not 0 <= cls < sums.shape[0]:
                    raise ConfigError(f"probe.classes.enabled=true: label {cls} outside the "
                                      f"model's {sums.shape[0]} outputs")
                gs = torch.autograd.grad(losses[y == cls].sum(), leaves, allow_unused=True,
                                         retain_graph=j < len(present) - 1)
                sums[cls] += torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                        for g, p in zip(gs, leaves)])
                counts[cls] += int((y == cls).sum())
    assert sums is not None and counts is not None
    return sums / counts.clamp_min(1).to(sums).unsqueeze(1), counts


def count_outliers_gap(eigenvalues: Any) -> int:
    """The gap rule (module docstring): the position n ≤ k − 1 of the largest ratio
    ``λ_n / λ_{n+1}`` among the positive eigenvalues (descending); infinite where the next one is
    ≤ 0; 0 when λ_1 ≤ 0 or k < 2.

    >>> count_outliers_gap([50., 40., 30., 3., 2.9, 2.8])
    3
    >>> count_outliers_gap([5., 4., -1.]), count_outliers_gap([-1., -2.])
    (2, 0)
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    if len(lam) < 2 or lam[0] <= 0:
        return 0
    ratios = np.array([lam[j] / lam[j + 1] if lam[j + 1] > 0 else np.inf
                       for j in range(len(lam) - 1) if lam[j] > 0])
    return int(np.argmax(ratios)) + 1


def count_above(eigenvalues: Any, threshold: float) -> int:
    """The number of eigenvalues above ``threshold`` (the edge rule)."""
    return int((np.asarray(eigenvalues, dtype=np.float64) > threshold).sum())


def span_basis(G: Any, rtol: float = RANK_RTOL) -> np.ndarray:
    """An orthonormal D × rank basis of the span of the rows of ``G`` (SVD, rank at ``rtol``
    times the largest singular value)."""
    u, s, _ = np.linalg.svd(np.asarray(G, dtype=np.float64).T, full_matrices=False)
    rank = int((s > rtol * s[0]).sum()) if len(s) and s[0] > 0 else 0
    return u[:, :rank]


def capture(V: Any, G: Any) -> np.ndarray:
    """``‖Vᵀ g_c‖² / ‖g_c‖²`` per row g_c of ``G`` (V orthonormal columns; NaN for a zero row).

    >>> capture(np.eye(3)[:, :1], [[1., 0., 0.], [1., 1., 0.], [0., 0., 2.]])
    array([1. , 0.5, 0. ])
    """
    V, G = np.asarray(V, dtype=np.float64), np.asarray(G, dtype=np.float64)
    norms = (G * G).sum(1)
    inside = ((G @ V) ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, inside / norms, np.nan)


def principal_cosines(V: Any, Q: Any) -> np.ndarray:
    """The cosines of the principal angles between span V and span Q (both orthonormal
    columns), descending: the singular values of ``Vᵀ Q`` (min(r, q) of them), clipped to 1."""
    V, Q = np.asarray(V, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    if V.shape[1] == 0 or Q.shape[1] == 0:
        return np.zeros(0)
    return np.minimum(np.linalg.svd(V.T @ Q, compute_uv=False), 1.0)


@dataclass
class ClassStructure:
    """One measurement (module docstring); per-class arrays have C entries (NaN for absent
    classes), ``eigenvalues`` and ``share`` k, the cosines min(r, rank)."""

    n_classes: int
    counts: np.ndarray
    eigenvalues: np.ndarray
    grad_norms: np.ndarray
    relation: float
    capture: dict[int, np.ndarray]  # r (C - 1 and C) -> a_c(r)
    energy: dict[int, float]
    cosines: dict[int, np.ndarray]
    share: np.ndarray
    span_rank: int
    centered: tuple[float, float]  # (capture, overlap) of g_c - grad L against V_{C-1}
    n_outliers: int
    top_source: str  # "run" (the run's top-k) or "own" (computed for this probe)
    hvps: int = 0
    edge_threshold: Optional[float] = None  # the SLQ outlier threshold, when a density ran
    converged: bool = True  # every eigenpair used converged (Lanczos)

    def scalars(self) -> dict[str, Any]:
        """The ``classes_*`` names of the results contract."""
        C = self.n_classes
        s: dict[str, Any] = dict(
            classes_n_classes=C, classes_present=int((self.counts > 0).sum()),
            classes_top_k=len(self.eigenvalues), classes_top_source=self.top_source,
            classes_hvps=self.hvps, classes_top_converged=self.converged,
            classes_n_outliers=self.n_outliers,
            classes_gap_ratio_c_minus_1=_ratio(self.eigenvalues, C - 1),
            classes_gap_ratio_c=_ratio(self.eigenvalues, C),
            classes_grad_norm_mean=float(np.nanmean(self.grad_norms)),
            classes_relation=self.relation, classes_span_rank=self.span_rank)
        if self.edge_threshold is not None:
            edge = count_above(self.eigenvalues, self.edge_threshold)
            s["classes_n_outliers_edge"] = edge
            s["classes_edge_threshold"] = self.edge_threshold
            # all k above the threshold: a lower bound (more top-k pairs would count more)
            s["classes_n_outliers_edge_censored"] = edge == len(self.eigenvalues)
        for r, tag in ((C - 1, "c_minus_1"), (C, "c")):
            s[f"classes_capture_top_{tag}"] = float(np.nanmean(self.capture[r]))
            s[f"classes_energy_top_{tag}"] = self.energy[r]
            cos = self.cosines[r]
            s[f"classes_overlap_top_{tag}"] = float(np.mean(cos ** 2)) if len(cos) else 0.0
        s["classes_capture_centered_top_c_minus_1"] = self.centered[0]
        s["classes_overlap_centered_top_c_minus_1"] = self.centered[1]
        return s

    def arrays(self) -> dict[str, np.ndarray]:
        C = self.n_classes
        return {"classes_eigenvalues": self.eigenvalues, "classes_counts": self.counts,
                "classes_grad_norms": self.grad_norms, "classes_eigvec_share": self.share,
                "classes_capture_top_c_minus_1": self.capture[C - 1],
                "classes_capture_top_c": self.capture[C],
                "classes_cosines_top_c_minus_1": self.cosines[C - 1],
                "classes_cosines_top_c": self.cosines[C]}


def _ratio(lam: np.ndarray, n: int) -> float:
    """``λ_n / λ_{n+1}`` (1-based), NaN where undefined."""
    if not 1 <= n < len(lam) or lam[n] <= 0:
        return float("nan")
    return float(lam[n - 1] / lam[n])


def class_structure(G: Any, counts: Any, eigenvalues: Any, eigenvectors: Any, *,
                    top_source: str = "run", hvps: int = 0,
                    edge_threshold: Optional[float] = None,
                    converged: bool = True) -> ClassStructure:
    """The measurement from the class-mean gradients ``G`` (C × D; rows of absent classes
    ignored), their ``counts`` and the top-k eigenpairs (k ≥ C + 1; eigenvectors D × k, orthonormal,
    in descending order of eigenvalue). Computed in float64."""
    G = np.asarray(torch.as_tensor(G).detach().cpu().double())
    V = np.asarray(torch.as_tensor(eigenvectors).detach().cpu().double())
    lam = np.asarray(torch.as_tensor(eigenvalues).detach().cpu().double())
    counts = np.asarray(torch.as_tensor(counts).cpu()).astype(np.int64)
    C = G.shape[0]
    if C < 2 or V.shape[1] < C + 1 or len(lam) != V.shape[1]:
        raise ValueError(f"need C >= 2 classes and k >= C + 1 eigenpairs (got C={C}, "
                         f"k={V.shape[1]})")
    present = counts > 0
    Gp = G[present]
    norms = np.where(present, np.linalg.norm(G, axis=1), np.nan)
    weights = counts / max(int(counts.sum()), 1)
    total = np.linalg.norm(weights @ G)
    Q = span_basis(Gp)
    cap, energy, cos = {}, {}, {}
    for r in (C - 1, C):
        a = np.full(C, np.nan)
        a[present] = capture(V[:, :r], Gp)
        cap[r] = a
        energy[r] = float(((Gp @ V[:, :r]) ** 2).sum() / (Gp * Gp).sum()) if Gp.any() else 0.0
        cos[r] = principal_cosines(V[:, :r], Q)
    centered = Gp - weights @ G  # around the loss gradient: rank <= C - 1
    cos_c = principal_cosines(V[:, :C - 1], span_basis(centered))
    with np.errstate(invalid="ignore"):
        cap_c = float(np.nanmean(capture(V[:, :C - 1], centered)))
    return ClassStructure(
        n_classes=C, counts=counts, eigenvalues=lam, grad_norms=norms,
        centered=(cap_c, float(np.mean(cos_c ** 2)) if len(cos_c) else 0.0),
        relation=float(total / np.nanmean(norms)) if np.nanmean(norms) > 0 else float("nan"),
        capture=cap, energy=energy, cosines=cos, share=((Q.T @ V) ** 2).sum(0),
        span_rank=Q.shape[1], n_outliers=count_outliers_gap(lam), top_source=top_source,
        hvps=hvps, edge_threshold=edge_threshold, converged=converged)
