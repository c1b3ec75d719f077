"""Training-loop overhead of landscope against a bare PyTorch loop.

Same model, same data, same batch order, same per-epoch evaluation (train and test
loss/accuracy over the whole splits), measured side by side in one process with the
variants interleaved; the best (min) and median times over the repeats are reported.
``--precision bf16|fp16`` trains every variant in that arithmetic (autocast; fp16 with a
``torch.amp.GradScaler``; evaluation in float32 everywhere, as landscope does), so the ratio
is landscope's overhead at that precision (the GPU goal: <= 5% with bf16).

- ``bare``      a hand-written PyTorch loop (the floor)
- ``fit``       ``landscope.train.fit`` (the loop itself, no files)
- ``job``       ``landscope.jobs.train_job`` (the loop plus a checkpoint and metrics
                file written atomically every epoch, config and result files; probes,
                landscape scans and figures off, as they are timed by their own benchmarks)

With ``--sweep`` it also times the default 15-job sweep through ``python -m runner``
with the in-process launcher and with the joblib preset (``hydra/launcher=parallel``).

    python scripts/bench_train.py [--epochs 5] [--repeats 5] [--sweep]
    python scripts/bench_train.py --precision bf16 --dataset cifar_like --model resnet18 \
        --set model.width=16 --device cuda
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
from landscope.models import build_model, count_parameters  # noqa: E402
from landscope.optim import build_optimizer, build_scheduler, make_precision  # noqa: E402
from landscope.train import TrainState, epoch_generator, fit  # noqa: E402


def compose_cfg(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bare_loop(model, x, y, xt, yt, lr, epochs, batch_size, seed, precision="fp32",
              device="cpu") -> float:
    """The hand-written loop: CPU tensors, each batch moved to ``device``; autocast for
    bf16/fp16 (with a GradScaler for fp16); float32 evaluation."""
    dev = torch.device(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    tic = time.perf_counter()
    n = len(y)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=epoch_generator(seed, epoch))
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = x[idx].to(dev, non_blocking=True), y[idx].to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            if precision == "fp32":
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
            else:
                with torch.autocast(dev.type, dtype=DTYPES[precision]):
                    loss = F.cross_entropy(model(xb), yb)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
            loss.item()
        model.eval()
        with torch.no_grad():
            for xs, ys in ((x, y), (xt, yt)):
                for i in range(0, len(ys), 2048):
                    xb, yb = xs[i:i + 2048].to(dev), ys[i:i + 2048].to(dev)
                    out = model(xb)
                    F.cross_entropy(out, yb, reduction="sum").item()
                    (out.argmax(1) == yb).sum().item()
    return time.perf_counter() - tic


def run_fit(cfg, data, init_state, epochs) -> float:
    model = build_model(cfg.model, data.meta).to(cfg.train.device)
    model.load_state_dict(init_state)
    opt = build_optimizer(model.parameters(), cfg.optimizer)
    state = TrainState(model, opt, build_scheduler(opt, cfg.optimizer, epochs),
                       amp=make_precision(cfg.train.precision, cfg.optimizer.name,
                                          cfg.train.device))
    tic = time.perf_counter()
    fit(state, data.train, data.test, epochs=epochs, batch_size=cfg.train.batch_size,
        seed=cfg.seed)
    return time.perf_counter() - tic


def run_job(cfg, tmp: Path, k: int) -> float:
    tic = time.perf_counter()
    train_job(cfg, tmp / f"job{k}", [])
    return time.perf_counter() - tic


def bench_loop(args) -> None:
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    overrides = [f"train.epochs={args.epochs}", f"dataset.data_dir={tmp / 'data'}",
                 "optimizer=sgd", f"model={args.model}", f"dataset={args.dataset}",
                 f"train.precision={args.precision}", f"train.device={args.device}",
                 f"train.threads={args.threads}", "probe=none", "landscape=none",
                 "landscape.figures=false", *args.set]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    cfg = compose_cfg(overrides)
    data = load_data(cfg.dataset)
    seed_everything(cfg.seed)
    first = build_model(cfg.model, data.meta)
    init, n_params = copy.deepcopy(first.state_dict()), count_parameters(first)
    x, y, xt, yt = data.train.x, data.train.y, data.test.x, data.test.y
    times = {"bare": [], "fit": [], "job": []}
    for k in range(args.repeats):
        model = build_model(cfg.model, data.meta).to(args.device)
        model.load_state_dict(init)
        times["bare"].append(bare_loop(model, x, y, xt, yt, cfg.optimizer.lr, args.epochs,
                                       cfg.train.batch_size, cfg.seed, args.precision,
                                       args.device))
        times["fit"].append(run_fit(cfg, data, init, args.epochs))
        times["job"].append(run_job(cfg, tmp, k))
    floor_min, floor_med = min(times["bare"]), statistics.median(times["bare"])
    print(f"\nmodel={' '.join([args.model, *args.set])} ({n_params:,} parameters) "
          f"dataset={args.dataset} ({data.meta.train_size} train / {data.meta.test_size} test), "
          f"batch {cfg.train.batch_size}, {args.epochs} epochs, precision {args.precision}, "
          f"device {args.device}, {args.threads} thread(s), {args.repeats} interleaved repeats; "
          "overhead from the best (min) time, which shared-machine noise inflates least")
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
    for label, extra in (("basic (in-process)", []),
                         ("joblib n_jobs=2", ["hydra/launcher=parallel"])):
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
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="training arithmetic of every variant (evaluation stays fp32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override, e.g. --set model.width=16 (repeatable)")
    parser.add_argument("--sweep", action="store_true", help="also time the default sweep")
    args = parser.parse_args()
    bench_loop(args)
    if args.sweep:
        bench_sweep(args)


if __name__ == "__main__":
    main()
