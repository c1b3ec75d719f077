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
# # 1. Introduction: a job, its results, and the `Analyzer`
#
# landscope has two front doors onto one engine:
#
# * **the runner** (`python -m runner ...`, Hydra): trains a job, checkpoints it, probes the
#   curvature of its final model, scans the landscape around it and writes everything to a
#   job directory (`result.json`, `metrics.jsonl`, `probes/`, `landscape/`, `figures/`);
# * **the notebook API** `landscope.Analyzer(model, train_loader, test_loader, criterion)`:
#   the same probes and geometry on any model and data loaders of your own.
#
# This notebook trains one small job on the embedded MNIST-1D data (generated locally, no
# download), reads its results, then hands the trained model to the `Analyzer`.
# Everything is written under `_out/` next to the notebook.

# %%
import json
import subprocess
import sys
from pathlib import Path

import torch
from IPython.display import Image, display
from torch.utils.data import DataLoader, TensorDataset

from landscope import Analyzer
from landscope.jobdir import JobDir

torch.set_num_threads(1)  # small models: one thread is fastest (the runner does the same)
OUT = Path("_out/01_introduction")
DATA = Path("_out/data")  # MNIST-1D is generated here once (a few seconds)
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Train one job with the runner
# Any option of the config can be set on the command line. Here: the default MLP at width
# 64 on 1,000 training samples for 30 epochs of SGD with momentum, `probe=basic` (λmax, trace,
# sharpness) and `landscape=basic` (1-D slices). `hydra.run.dir` puts the job directory
# where we want it; running the cell again skips the finished job.

# %%
job_dir = OUT / "job"
cmd = [sys.executable, "-m", "runner", f"hydra.run.dir={job_dir}", f"dataset.data_dir={DATA}",
       "dataset.train_size=1000", "model.width=64", "train.epochs=30", "optimizer=momentum",
       "probe=basic", "landscape=basic"]
run = subprocess.run(cmd, capture_output=True, text=True)
if run.returncode != 0:  # 1: the job failed, 2: bad input (one "error:" line)
    raise RuntimeError(f"the runner exited with {run.returncode}:\n{run.stderr[-2000:]}")
print("\n".join(run.stdout.strip().splitlines()[-2:]))

# %% [markdown]
# ## What the job wrote
# `JobDir` is the one reader of a job directory: its result, config, checkpoints and model.

# %%
job = JobDir(job_dir)
result = job.result()
final, probes = result["final"], result["probes"]
print(f"status {result['status']} after {result['epochs_completed']} epochs, "
      f"{result['n_params']} parameters")
print(f"train acc {final['train_acc']:.3f}, test acc {final['test_acc']:.3f}")
print(f"lambda_max {probes['lambda_max']:.4f}, trace {probes['trace']:.2f} "
      f"± {probes['trace_stderr']:.2f}, sharpness (rho=0.05) {probes['sharpness_l2_rho0.05']:.4f}")
print(sorted(p.name for p in (job_dir / "figures").glob("*.png")))

# %%
display(Image(filename=str(job_dir / "figures" / "training.png")))
display(Image(filename=str(job_dir / "figures" / "line.png")))

# %% [markdown]
# The 1-D slices are the train and test loss along three random filter-normalized
# directions through the trained weights (Li et al. 2018): a bowl, wider for test than
# train.
#
# ## The same model in the `Analyzer`
# `JobDir.load_model()` rebuilds the model (with its loss) and the dataset from the job's
# config and loads the final checkpoint. The Analyzer reads each loader once and keeps the
# first 1,000 samples as a fixed sample set: here the whole training set, the same data
# the job's probe used, so both λmax must agree up to float32 rounding.

# %%
model, data = job.load_model()
train = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=128, shuffle=True)
test = DataLoader(TensorDataset(data.test.x, data.test.y), batch_size=512)
an = Analyzer(model, train, test, criterion=None)  # None: the job's own loss
summary = an.full_analysis(top_k=3, trace_rse=0.03, slq_steps=20)  # looser than the defaults
print(f"lambda_max {summary.lambda_max:.4f} (the job's probe: {probes['lambda_max']:.4f})")
print(f"top eigenvalues {[round(v, 4) for v in summary.top_eigenvalues]}, "
      f"condition number (resolved part) {summary.condition_number:.1f}")
print(f"trace {summary.trace:.2f} ± {summary.trace_stderr:.2f} (the job's probe, at 1 %: "
      f"{probes['trace']:.2f} ± {probes['trace_stderr']:.2f})")
print(f"sharpness {summary.sharpness:.4f}, PAC-Bayes flatness sigma' {summary.flatness:.4f}")
print(f"{summary.hessian_products} Hessian-vector products in {summary.seconds:.1f} s")

# %% [markdown]
# ## A 2-D picture of the landscape
# The loss on the plane θ + α d₁ + β d₂ along two filter-normalized random directions,
# centre evaluated exactly.

# %%
plane = an.visualize_2d_landscape(distance=1.0, resolution=15, save_path=OUT / "plane.png")
display(Image(filename=str(OUT / "plane.png")))
loss = plane.arrays()["train_loss"]
print(f"train loss at the centre {loss[7, 7]:.4f}, highest on the plane {loss.max():.2f}")

# %% [markdown]
# Next: notebook 2 checks the estimators behind these numbers against an exact Hessian.

# %%
# the numbers above, for the test suite (tests/test_notebooks.py)
_ = (OUT / "checks.json").write_text(json.dumps({
    "status": result["status"], "job_lambda_max": probes["lambda_max"],
    "analyzer_lambda_max": summary.lambda_max, "n_samples": summary.n_samples,
    "train_size": len(data.train), "centre_loss": float(loss[7, 7]),
    "job_train_loss": final["train_loss"], "torch": torch.__version__}))
