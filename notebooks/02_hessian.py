# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Hessian computation: products, Lanczos, Hutchinson, SLQ
#
# The curvature probes never form the Hessian H of the loss: they only ask for products
# **Hv = ∇(∇L · v)** (one backward pass each) and build everything from those. On a model
# small enough to write H down (a 460-parameter MLP on scikit-learn's 8×8 digits) we can
# check each estimator against the exact answer:
#
# | estimator | what it gives | cost |
# |---|---|---|
# | `HessianOperator.matvec` | H v | 1 product |
# | `lanczos_eigs` | top-k eigenpairs, residual ‖Hv − λv‖ ≤ 10⁻⁶·λ | ~20–40 products |
# | `hutchinson` | tr H ± standard error (Rademacher zᵀHz) | 1 product per sample |
# | `slq` | spectral density (stochastic Lanczos quadrature) | probes × steps |
#
# Everything runs in float64 so the comparisons are limited by the estimators, not rounding.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from landscope.config import DatasetConfig
from landscope.data import load_data
from landscope.probes.density import slq
from landscope.probes.hvp import HessianOperator
from landscope.probes.lanczos import lanczos_eigs
from landscope.probes.probe_data import ProbeData
from landscope.probes.trace import hutchinson
from landscope.probes.verify import dense_hessian, spectrum

torch.set_num_threads(1)  # small models: one thread is fastest (the runner does the same)
OUT = Path("_out/02_hessian")
OUT.mkdir(parents=True, exist_ok=True)
_ = torch.manual_seed(0)

# %% [markdown]
# ## A small trained model
# `load_data` gives the digits as (1, 8, 8) images scaled to [0, 1]; we flatten them and
# train a tanh MLP (64 → 6 → 10) for a few hundred full-batch Adam steps.

# %%
data = load_data(DatasetConfig(name="digits"))
x = data.train.x.reshape(len(data.train.x), -1).double()[:600]
y = data.train.y[:600]
model = nn.Sequential(nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10)).double()
opt = torch.optim.Adam(model.parameters(), lr=0.02)
for _ in range(300):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
n_params = sum(p.numel() for p in model.parameters())
print(f"{n_params} parameters, train loss {loss.item():.4f}")

# %% [markdown]
# ## The operator and the dense reference
# `ProbeData` fixes the samples (here all 600, in one micro-batch); `HessianOperator` caches
# the gradient graph once, so each product is a single backward pass. `dense_hessian` builds
# the exact D × D matrix column by column (only for small models).

# %%
probe_data = ProbeData.from_tensors(x, y, micro_batch=600)
H = HessianOperator(model, probe_data)
H_dense = dense_hessian(model, probe_data)
exact = spectrum(H_dense).flip(0).numpy()  # all eigenvalues, descending

v = torch.randn(H.dim, dtype=torch.float64)
hv_err = float((H.matvec(v) - H_dense @ v).norm() / (H_dense @ v).norm())
print(f"D = {H.dim}; relative error of one product against the dense H: {hv_err:.1e}")

# %% [markdown]
# ## Top eigenvalues by Lanczos
# Lanczos with full reorthogonalization stops when every wanted Ritz pair has a residual
# ‖Hv − λv‖ ≤ tol·|λ|.

# %%
H.n_matvecs = 0
top = lanczos_eigs(H, k=5, tol=1e-6, seed=0)
lanczos_rel = np.abs(top.eigenvalues.numpy() - exact[:5]) / np.abs(exact[:5])
for i, (est, ref) in enumerate(zip(top.eigenvalues.numpy(), exact[:5])):
    print(f"lambda_{i + 1}: Lanczos {est:.8f}   dense {ref:.8f}")
print(f"worst relative error {lanczos_rel.max():.1e} in {top.n_matvecs} products "
      f"(dense H: {H.dim} products)")

# %% [markdown]
# ## The trace by Hutchinson
# tr H = E[zᵀHz] for Rademacher z; `target_rse=0.01` stops once the standard error is 1 % of
# the estimate. By default a trace whose target asks for more samples than H has dimensions
# takes the exact sum of eᵢᵀHeᵢ instead (D products, standard error 0); `unit_vectors=False`
# keeps sampling, to see the estimator itself.

# %%
tr = hutchinson(H, target_rse=0.01, seed=0, unit_vectors=False)
exact_trace = float(exact.sum())
trace_z = abs(tr.estimate - exact_trace) / tr.stderr
print(f"Hutchinson: tr H = {tr.estimate:.4f} ± {tr.stderr:.4f} ({tr.n_samples} samples); "
      f"exact {exact_trace:.4f}: {trace_z:.2f} standard errors away")

# %% [markdown]
# ## The spectral density by SLQ
# Stochastic Lanczos quadrature turns m Lanczos steps from a random probe into a quadrature
# rule (Ritz values as nodes, squared first eigenvector components as weights). It is
# exact for the moments tr(Hᵖ)/D with p ≤ 2m − 1 on each probe, so averaged over probes the
# second moment is an unbiased estimate of mean(λ²).

# %%
q = slq(H, n_probes=10, m_steps=40, seed=0)
m2_exact = float((exact ** 2).mean())
print(f"SLQ second moment {q.moment(2):.5f}, exact mean(lambda^2) {m2_exact:.5f}")
grid = torch.linspace(exact.min() - 0.05, exact.max() + 0.05, 600, dtype=torch.float64)
sigma = 0.01 * float(exact.max() - exact.min())
density = q.density(grid, sigma).numpy()
fig, ax = plt.subplots(figsize=(7, 3.4))
ax.hist(exact, bins=120, density=True, alpha=0.4, color="grey", label="exact eigenvalues")
ax.semilogy(grid.numpy(), np.maximum(density, 1e-6), label="SLQ density (10 probes × 40 steps)")
for lam in top.eigenvalues.numpy():
    ax.axvline(lam, color="C3", lw=0.7, ls="--")
ax.set(xlabel="eigenvalue", ylabel="density", ylim=(1e-3, None),
       title="Hessian spectrum: a bulk near zero and a few outliers (red: Lanczos top-5)")
ax.legend()
plt.show()

# %% [markdown]
# The bulk sits at zero and a handful of outliers stand apart (Papyan 2019 relates them to
# the class structure: at most about C of them for C classes); those outliers are what
# λmax and the sharpness measures see.

# %%
# the numbers above, for the test suite (tests/test_notebooks.py)
_ = (OUT / "checks.json").write_text(json.dumps({
    "n_params": H.dim, "hv_rel_error": hv_err, "lanczos_max_rel_error": float(lanczos_rel.max()),
    "lanczos_products": top.n_matvecs, "trace": tr.estimate, "trace_stderr": tr.stderr,
    "trace_exact": exact_trace, "slq_moment2": q.moment(2), "exact_moment2": m2_exact}))
