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
# # 5. Advanced visualizations: planes, trajectories, mode connectivity
#
# Three pictures of the landscape around trained networks, each with a check of how much
# to trust it:
#
# 1. a **2-D plane** through the trained weights along two filter-normalized random
#    directions (Li et al. 2018);
# 2. the **training trajectory** on the plane of its first two principal components,
#    with the loss the contour predicts against the true loss along the path;
# 3. **mode connectivity** between two seeds: the straight line between them crosses a
#    barrier; a quadratic Bezier curve with a trained bend (Garipov et al. 2018) does not,
#    and we draw the loss on the plane that holds the two minima and the bend.
#
# Two small MLPs on MNIST-1D, trained by the runner (`landscape=full`, without the slow
# intrinsic-dimension part), then `python -m runner.connect` for the paths.

# %%
import copy
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Image, display

from landscope.geometry.slices import plane_slice, symmetric_grid
from landscope.geometry.space import ParamSpace
from landscope.jobdir import JobDir
from landscope.plots import plot_path
from landscope.probes.probe_data import ProbeData

torch.set_num_threads(1)  # small models: one thread is fastest (the runner does the same)
OUT = Path("_out/05_visualizations")
DATA = Path("_out/data")
OUT.mkdir(parents=True, exist_ok=True)
sweep = OUT / "sweep"


def runner(*args: str) -> None:
    """Run a landscope command; stop the notebook with its error if it fails."""
    run = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{args[0]} exited with {run.returncode}:\n{run.stderr[-2000:]}")
    print("\n".join(run.stdout.strip().splitlines()[-2:]))


# %% [markdown]
# ## Two seeds, with the plane and the trajectory
# `landscape.trajectory.enabled` records parameter snapshots during training;
# `landscape.plane.enabled` scans a 21×21 plane. The job directories are named `seed0`,
# `seed1` (`hydra.sweep.subdir`).

# %%
runner("runner", "-m", "seed=0,1", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=seed${seed}",
       f"dataset.data_dir={DATA}", "dataset.train_size=1000", "model.width=32",
       "optimizer=momentum", "train.epochs=15", "probe=basic", "landscape=full",
       "landscape.intrinsic.enabled=false", "landscape.line.eigen=0")
figures = sweep / "seed0" / "figures"
print(sorted(p.name for p in figures.glob("*.png")))

# %%
display(Image(filename=str(figures / "plane_contour.png")))
display(Image(filename=str(figures / "plane_surface.png")))

# %% [markdown]
# Random directions see a bowl. The trajectory plane is not random: its axes are the
# directions along which training moved most. The right panel checks the picture: where
# the true loss at each snapshot and the contour's value at its projection differ, the
# path left the plane (the dotted line is the relative off-plane distance).

# %%
display(Image(filename=str(figures / "trajectory.png")))
job0, job1 = JobDir(sweep / "seed0"), JobDir(sweep / "seed1")
scalars = job0.result()["landscape"]
for key in ("trajectory_snapshots", "trajectory_pc1_explained_variance",
            "trajectory_pc2_explained_variance", "trajectory_off_plane_max",
            "trajectory_contour_error_max"):
    print(f"{key:36s} {scalars[key]:.4g}")

# %% [markdown]
# ## Mode connectivity between the two seeds
# `runner.connect` pairs the jobs of a sweep that differ only in their seed, evaluates the
# straight line between them and trains the bend θ_c of the Bezier curve
# φ(t) = (1 − t)²θ_a + 2t(1 − t)θ_c + t²θ_b. Its `.npz` holds both paths; `landscope.plots`
# draws every figure from such saved arrays.

# %%
runner("runner.connect", str(sweep), "landscape.bezier.epochs=20", "landscape.path_points=21")
pair_json = next((sweep / "connectivity").rglob("*.json"))
pair = json.loads(pair_json.read_text())["scalars"]
linear_barrier = pair["linear_train_loss_barrier_mean"]
bezier_barrier = pair["bezier_train_loss_barrier_mean"]
print(f"train-loss barrier: straight line {linear_barrier:.3f}, Bezier curve {bezier_barrier:.3f}")
paths = np.load(pair_json.with_suffix(".npz"))
drawn = plot_path({kind: {k[len(kind) + 1:]: paths[k] for k in paths.files
                          if k.startswith(kind + "_")} for kind in ("linear", "bezier")},
                  OUT / "paths.png", "seed 0 to seed 1")
display(Image(filename=str(drawn)))

# %% [markdown]
# ## The plane through both minima and the bend
# With the geometry API we can draw the loss on the plane spanned by θ_a, θ_b and θ_c
# (Garipov et al.'s figure). `plane_slice` evaluates θ₀ + x·d₁ + y·d₂ on a grid centred on
# θ₀; we centre it between the three points, with d₁ along θ_b − θ_a and d₂ the
# orthogonal part of θ_c − θ_a (both unit vectors, so coordinates are Euclidean
# distances in weight space).

# %%
model_a, data = job0.load_model()
model_b, _ = job1.load_model()
space_a = ParamSpace(model_a)
theta_a = space_a.theta0.double()
theta_b = space_a.flatten_params(dict(model_b.named_parameters())).double()
bend = np.load(pair_json.with_suffix(".npz"))["bezier_bend"]
theta_c = torch.as_tensor(bend, dtype=torch.float64)

length = float((theta_b - theta_a).norm())
e1 = (theta_b - theta_a) / length
u = theta_c - theta_a
cx = float(u @ e1)
e2 = u - cx * e1
height = float(e2.norm())
e2 = e2 / height
centre = theta_a + 0.5 * length * e1 + 0.5 * height * e2

model_centre = copy.deepcopy(model_a)
model_centre.load_state_dict({**model_centre.state_dict(),
                              **space_a.unflatten(centre.float())})
train = ProbeData.from_split(data.train, 1000, seed=0, micro_batch=1000)
span = 0.75 * max(length, height)
grid = symmetric_grid(span, 25)
plane = plane_slice(ParamSpace(model_centre), e1.float(), e2.float(), grid, grid, train)

# the three points and the curve in plane coordinates (relative to the centre)
pts = {"θ_a": (-0.5 * length, -0.5 * height), "θ_b": (0.5 * length, -0.5 * height),
       "θ_c (bend)": (cx - 0.5 * length, 0.5 * height)}
t = np.linspace(0, 1, 50)
curve_x = 2 * t * (1 - t) * cx + t ** 2 * length - 0.5 * length
curve_y = 2 * t * (1 - t) * height - 0.5 * height
loss = plane.arrays()["train_loss"]
fig, ax = plt.subplots(figsize=(6, 5))
cs = ax.contourf(grid, grid, np.log10(loss.T), levels=30, cmap="viridis")
fig.colorbar(cs, label="log10 train loss")
ax.plot(curve_x, curve_y, "w-", lw=2, label="Bezier curve")
ax.plot([pts["θ_a"][0], pts["θ_b"][0]], [pts["θ_a"][1], pts["θ_b"][1]], "r--", label="line")
for name, (px, py) in pts.items():
    ax.plot(px, py, "wo")
    ax.annotate(name, (px, py), color="white", xytext=(5, 5), textcoords="offset points")
ax.set(xlabel="along θ_b − θ_a", ylabel="towards the bend", aspect="equal",
       title="train loss on the plane of two minima and the bend")
ax.legend(loc="lower right", fontsize=8)
plt.show()

# %% [markdown]
# The two minima sit in one connected low-loss valley that bends around the barrier the
# straight line crosses.

# %%
# the numbers above, for the test suite (tests/test_notebooks.py)
_ = (OUT / "checks.json").write_text(json.dumps({
    "linear_barrier": linear_barrier, "bezier_barrier": bezier_barrier,
    "plane_centre_loss": float(loss[12, 12]),
    "pc_explained": scalars["trajectory_pc1_explained_variance"]
    + scalars["trajectory_pc2_explained_variance"],
    "train_loss_a": job0.result()["final"]["train_loss"],
    "figures": sorted(p.name for p in figures.glob("*.png"))}))
