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
# # 3. Sharpness and generalization
#
# Keskar et al. (2017) observed that large-batch SGD ends in sharper minima that generalize
# worse. Here we run that experiment in miniature: the same MLP on scikit-learn's 8×8
# digits, trained with SGD + momentum at four batch sizes, each **to the same train loss**
# (`train.target_train_loss=0.05`, so no model is simply less trained), then probed for
# λmax, the Hessian trace and the worst-case sharpness at ρ = 0.05.
#
# One sweep, four jobs, about half a minute on a laptop CPU.

# %%
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
from scipy.stats import kendalltau

from landscope.analysis.collect import collect

OUT = Path("_out/03_sharpness_generalization")
OUT.mkdir(parents=True, exist_ok=True)
sweep = OUT / "sweep"

# %% [markdown]
# ## The sweep
# `-m` makes it a multirun over the comma-separated values; every other option is fixed.

# %%
cmd = [sys.executable, "-m", "runner", "-m", "train.batch_size=8,32,128,512",
       f"hydra.sweep.dir={sweep}", "dataset=digits", "model.width=64", "optimizer=momentum",
       "train.epochs=100", "train.target_train_loss=0.05", "probe=basic", "landscape=none",
       "landscape.figures=false"]
run = subprocess.run(cmd, capture_output=True, text=True)
if run.returncode != 0:  # 1: a job failed, 2: bad input (one "error:" line)
    raise RuntimeError(f"the runner exited with {run.returncode}:\n{run.stderr[-2000:]}")
print("\n".join(run.stdout.strip().splitlines()[-2:]))

# %% [markdown]
# ## One table
# `collect` reads every job directory of the sweep into one tidy `pandas` table: the
# config (`train.batch_size`), the final metrics (`final.*`, `test_error`) and the probe
# scalars (`probe.*`).

# %%
jobs = collect(sweep).jobs.sort_values("train.batch_size")
table = jobs[["train.batch_size", "epochs_completed", "final.train_loss", "test_error",
              "final.generalization_gap", "probe.lambda_max", "probe.trace",
              "probe.sharpness_l2_rho0.05"]]
table.columns = ["batch", "epochs", "train loss", "test error", "gap", "lambda_max", "trace",
                 "sharpness"]
table.round(4)

# %% [markdown]
# Every job stopped at the same train loss. The larger the batch, the sharper the minimum:
# λmax and the trace grow with the batch size, and so does the worst-case sharpness.
#
# ## Sharpness against test error

# %%
tau, p = kendalltau(table["lambda_max"], table["test error"])
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
for ax, col in zip(axes, ["lambda_max", "sharpness"]):
    ax.plot(table[col], table["test error"], "o-")
    for _, row in table.iterrows():
        ax.annotate(f"B={row['batch']:.0f}", (row[col], row["test error"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set(xscale="log", xlabel=col, ylabel="test error")
fig.suptitle(f"digits, equal train loss: Kendall tau(lambda_max, test error) = {tau:.2f}")
plt.show()

# %% [markdown]
# **Read this with care.** Four configurations and one seed each is an illustration, not
# evidence: a rank correlation over 4 points cannot be significant (its smallest
# two-sided p is 1/12), and batch size drives both λmax and the error, so a correlation
# between them is no causal claim. Dinh et al. (2017) also showed that λmax can be changed by
# reparametrizing a network without changing its function. The runner's preset
# `experiment=h1_batch` runs the real study (several seeds per batch size), and
# `python -m runner.report SWEEP` tests it with seeds as units and a calibrated test.

# %%
# the numbers above, for the test suite (tests/test_notebooks.py)
_ = (OUT / "checks.json").write_text(json.dumps({
    "batch": table["batch"].tolist(), "lambda_max": table["lambda_max"].tolist(),
    "train_loss": table["train loss"].tolist(), "test_error": table["test error"].tolist(),
    "status": jobs["status"].tolist(), "tau": tau}))
