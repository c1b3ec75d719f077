"""Wall-time overhead of ``augment=basic`` per epoch (issue #20 item 3).

The default job: MNIST-1D (4,000 training and 1,000 test samples), the default MLP
(``ModelConfig()``, 39,562 parameters), SGD, batch size 64 (63 steps an epoch), float32, one
torch thread. Each round trains one epoch from the same initial state without augmentation
(``none``) and with ``augment=basic`` (circular shift up to 4, jitter 0.05), in rotating order,
and times the augmentation calls alone (the epoch's 63 batches). The full epoch adds the
un-augmented evaluation of both splits, the same for both; its time is measured once per round
and added to each. Printed: the median seconds over ``--repeats`` rounds and the median of the
per-round ratios basic/none with their range.

    PYTHONPATH=src python scripts/bench_augment.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from omegaconf import OmegaConf

from landscope.augment import BasicAugment, augment_generator
from landscope.config import Config
from landscope.data import load_data
from landscope.jobtrain import setup
from landscope.train import epoch_generator, evaluate, train_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    cfg = OmegaConf.structured(Config())
    cfg.dataset.data_dir = args.data_dir
    data = load_data(cfg.dataset)
    state = setup(cfg, data, 1)
    torch.set_num_threads(1)
    start = copy.deepcopy((state.model.state_dict(), state.optimizer.state_dict()))
    aug = BasicAugment()
    bs = cfg.train.batch_size
    times: dict[str, list[float]] = {"none": [], "basic": [], "augment calls": [], "eval": []}
    for r in range(args.repeats):
        order = ["none", "basic"] if r % 2 == 0 else ["basic", "none"]
        for name in order:
            state.model.load_state_dict(start[0])
            state.optimizer.load_state_dict(start[1])
            tic = time.perf_counter()
            train_epoch(state, data.train, bs, epoch_generator(0, r),
                        augment=aug if name == "basic" else None,
                        augment_rng=augment_generator(0, r))
            times[name].append(time.perf_counter() - tic)
        g = augment_generator(0, r)
        batches = [x for x, _ in data.train.batches(bs, shuffle=True,
                                                    generator=epoch_generator(0, r))]
        tic = time.perf_counter()
        for x in batches:
            aug(x, g)
        times["augment calls"].append(time.perf_counter() - tic)
        tic = time.perf_counter()
        evaluate(state.model, data.train, cfg.train.eval_batch_size)
        evaluate(state.model, data.test, cfg.train.eval_batch_size)
        times["eval"].append(time.perf_counter() - tic)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [b / n for b, n in zip(times["basic"], times["none"])]
    full = [(b + e) / (n + e) for b, n, e in zip(times["basic"], times["none"], times["eval"])]
    print(f"mnist1d, default MLP, batch {bs}, {len(data.train)} samples, 1 thread, "
          f"{args.repeats} rounds (median seconds)")
    print(f"{'':24}{'none':>10}{'basic':>10}{'ratio':>8}  range")
    print(f"{'training pass':24}{med['none']:10.4f}{med['basic']:10.4f}"
          f"{statistics.median(ratios):8.3f}  {min(ratios):.3f}-{max(ratios):.3f}")
    print(f"{'epoch (+ evaluation)':24}{med['none'] + med['eval']:10.4f}"
          f"{med['basic'] + med['eval']:10.4f}{statistics.median(full):8.3f}  "
          f"{min(full):.3f}-{max(full):.3f}")
    print(f"augmentation calls alone: {med['augment calls']:.4f} s an epoch "
          f"({1e6 * med['augment calls'] / -(-len(data.train) // bs):.0f} us a batch)")


if __name__ == "__main__":
    main()
