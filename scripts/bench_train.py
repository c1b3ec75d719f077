"""Training-loop overhead of landscope against a bare PyTorch loop.

Same model, same data, same batch order, same per-epoch evaluation (train and test
loss/accuracy over the whole splits), measured side by side in one process with the
variants interleaved; the best (min) and median times over the repeats are reported.

- ``bare``      a hand-written PyTorch loop (the floor)
- ``fit``       ``landscope.train.fit`` (the loop itself, no files)
- ``job``       ``landscope.jobs.train_job`` (the loop plus a checkpoint and metrics
                file written atomically every epoch, config and result files; probes,
                landscape scans and figures off, as they are timed by their own benchmarks)

With ``--sweep`` it also times the default 15-job sweep through ``python -m runner``
with the in-process launcher and with the joblib preset (``hydra/launcher=parallel``).

    python scripts/bench_train.py [--epochs 5] [--repeats 5] [--sweep]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hydra import compose, initialize_config_dir  # noqa: E402

from landscope.config import register_configs  # noqa: E402
from landscope.data import load_data  # noqa: E402
from landscope.jobs import seed_everything, train_job  # noqa: E402
from landscope.models import build_model  # noqa: E402
from landscope.optim import build_optimizer, build_scheduler  # noqa: E402
from landscope.train import TrainState, epoch_generator, fit  # noqa: E402


def compose_cfg(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def bare_loop(model, x, y, xt, yt, lr, epochs, batch_size, seed) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tic = time.perf_counter()
    n = len(y)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=epoch_generator(seed, epoch))
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            loss.item()
        model.eval()
        with torch.no_grad():
            for xs, ys in ((x, y), (xt, yt)):
                for i in range(0, len(ys), 2048):
                    out = model(xs[i:i + 2048])
                    F.cross_entropy(out, ys[i:i + 2048], reduction="sum").item()
                    (out.argmax(1) == ys[i:i + 2048]).sum().item()
    return time.perf_counter() - tic


def run_fit(cfg, data, init_state, epochs) -> float:
    model = build_model(cfg.model, data.meta)
    model.load_state_dict(init_state)
    opt = build_optimizer(model.parameters(), cfg.optimizer)
    state = TrainState(model, opt, build_scheduler(opt, cfg.optimizer, epochs))
    tic = time.perf_counter()
    fit(state, data.train, data.test, epochs=epochs, batch_size=cfg.train.batch_size,
        seed=cfg.seed)
    return time.perf_counter() - tic


def run_job(cfg, tmp: Path, k: int) -> float:
    tic = time.perf_counter()
    train_job(cfg, tmp / f"job{k}", [])
    return time.perf_counter() - tic


def bench_loop(args) -> None:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    overrides = [f"train.epochs={args.epochs}", f"dataset.data_dir={tmp / 'data'}",
                 "optimizer=sgd", f"model={args.model}", "probe=none", "landscape=none",
                 "landscape.figures=false"]
    cfg = compose_cfg(overrides)
    data = load_data(cfg.dataset)
    seed_everything(cfg.seed)
    init = copy.deepcopy(build_model(cfg.model, data.meta).state_dict())
    x, y, xt, yt = data.train.x, data.train.y, data.test.x, data.test.y
    times = {"bare": [], "fit": [], "job": []}
    for k in range(args.repeats):
        model = build_model(cfg.model, data.meta)
        model.load_state_dict(init)
        times["bare"].append(bare_loop(model, x, y, xt, yt, cfg.optimizer.lr, args.epochs,
                                       cfg.train.batch_size, cfg.seed))
        times["fit"].append(run_fit(cfg, data, init, args.epochs))
        times["job"].append(run_job(cfg, tmp, k))
    floor_min, floor_med = min(times["bare"]), statistics.median(times["bare"])
    print(f"\nmodel={args.model} dataset=mnist1d (4000 train / 1000 test), batch "
          f"{cfg.train.batch_size}, {args.epochs} epochs, 1 thread, {args.repeats} interleaved "
          "repeats; overhead from the best (min) time, which shared-machine noise inflates least")
    print(f"{'variant':<8}{'min s':>9}{'median s':>10}{'ratio':>8}{'overhead':>10}")
    for name, ts in times.items():
        lo, med = min(ts), statistics.median(ts)
        print(f"{name:<8}{lo:>9.3f}{med:>10.3f}{lo / floor_min:>8.3f}"
              f"{100 * (lo / floor_min - 1):>9.1f}%   (median ratio {med / floor_med:.3f})")


def bench_sweep(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    sweep = ["-m", "optimizer=sgd,adam,momentum", "seed=0,1,2,3,4", f"dataset.data_dir={tmp}/data"]
    subprocess.run([sys.executable, "-m", "runner", "train.epochs=0", "probe=none",
                    f"dataset.data_dir={tmp}/data", "hydra.run.dir=warm"], cwd=tmp,
                   check=True, capture_output=True)  # generate the dataset cache first
    rows = []
    for label, extra in (("basic (in-process)", []), ("joblib n_jobs=2", ["hydra/launcher=parallel"])):
        tic = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "runner", *sweep, *extra,
                               f"hydra.sweep.dir=sweep_{len(rows)}"], cwd=tmp,
                              capture_output=True, text=True)
        rows.append((label, time.perf_counter() - tic, proc.returncode))
    print("\ndefault sweep: optimizer=sgd,adam,momentum x seed=0..4 (15 jobs, probe=standard "
          "on each final checkpoint), goal <= 300 s")
    print(f"{'launcher':<22}{'seconds':>10}{'speedup':>9}  exit")
    for label, sec, rc in rows:
        print(f"{label:<22}{sec:>10.1f}{rows[0][1] / sec:>9.2f}  {rc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--sweep", action="store_true", help="also time the default sweep")
    args = parser.parse_args()
    bench_loop(args)
    if args.sweep:
        bench_sweep(args)


if __name__ == "__main__":
    main()
