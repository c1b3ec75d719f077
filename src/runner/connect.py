"""Mode connectivity over a finished sweep: ``python -m runner.connect SWEEP_DIR [overrides]``.

Finds the completed jobs of ``SWEEP_DIR`` (``*/result.json`` with status ``completed``),
groups those whose configs are identical apart from ``seed`` (the job's ``config.yaml``
compared with the exclusions of the job fingerprint), and connects every pair of seeds
within a group, from their final checkpoints:

* the straight line between the two parameter vectors (BatchNorm per ``landscape.bn``:
  ``keep`` interpolates the two models' running statistics, ``recompute`` re-estimates
  them at every point on the train subset);
* with ``landscape.bezier=true``, a quadratic Bezier curve whose bend is trained
  (Garipov et al. 2018) for ``landscape.bezier_epochs`` epochs over the job's training
  split, with the job's ``train.batch_size``, Adam at ``landscape.bezier_lr`` (cosine
  decay) and t ~ U[0, 1] per batch seeded by ``landscape.seed``; BatchNorm statistics are
  always re-estimated at every point of the curve.

Both are evaluated at ``landscape.path_points`` evenly spaced t in [0, 1] (ends exact) on
seeded subsets of the train and test splits (``landscape.data_size`` samples each, seed
``landscape.seed``, ``landscape.batch_size`` samples per forward pass).

Overrides set the landscape config as for the runner (default ``landscape=basic``), e.g.
``landscape.path_points=11 landscape.bezier=false landscape.bezier_epochs=5
landscape.bn=recompute``; only ``landscape`` keys are accepted.

Output per pair (written atomically), in ``SWEEP_DIR/connectivity/<group>/``, where
``<group>`` is the job directory name without its ``seed=N`` item:

* ``<jobA>__<jobB>.json``: ``scalars`` (``linear_*`` and ``bezier_*``: barriers against the
  endpoint mean and against the endpoint interpolation, max, its t, mean, integral, start
  and end of loss and error on train and test; see ``landscope.geometry.connectivity``),
  the ``landscape`` settings used, the checkpoints' SHA-256 digests and epochs, the bend's
  training record;
* ``<jobA>__<jobB>.npz``: ``linear_t``, ``linear_train_loss``, ``linear_train_acc``,
  ``linear_test_loss``, ``linear_test_acc``, the same with ``bezier_``, ``bezier_bend``
  (the bend as a flat parameter vector) and ``bezier_loss_history``.

A pair whose JSON file already holds the same checkpoint digests and settings is not
recomputed.  One line per pair, then a summary.  Exit codes: 0 all pairs done, 1 a pair
failed (the others still ran), 2 bad input (not a sweep directory, no pairs to connect,
an unknown or non-landscape override, an output directory that cannot be written, checked
before anything is computed): one ``error:`` line on stderr.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from landscope.errors import ConfigError, LandscopeError

# the landscape settings a connectivity result depends on (its cache key)
KEYS = ("path_points", "bezier", "bezier_epochs", "bezier_lr", "bn", "data_size", "seed",
        "batch_size")
_SEED_ITEM = re.compile(r"^seed=\d+$")


def _landscape_config(overrides: list[str]) -> dict:
    from runner.cli import group_config

    for o in overrides:
        if not o.lstrip("+~").startswith(("landscape.", "landscape=")):
            raise ConfigError(f"only landscape overrides are accepted here (got {o!r}), "
                              "e.g. landscape.path_points=11")
    if not any(o.startswith("landscape=") for o in overrides):
        overrides = ["landscape=basic", *overrides]
    land = group_config("landscape", overrides)
    c = OmegaConf.to_container(land, resolve=True, enum_to_str=True)
    settings = {k: c[k] for k in KEYS}
    _validate(settings)
    return settings


def _validate(s: dict) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"landscape.{key} must be {what} (got {s[key]!r})")

    need(s["path_points"] >= 2, "path_points", ">= 2")
    need(s["data_size"] is None or s["data_size"] >= 1, "data_size", ">= 1 or null")
    need(s["batch_size"] >= 1, "batch_size", ">= 1")
    need(s["seed"] >= 0, "seed", ">= 0")
    need(s["bezier_epochs"] >= 1, "bezier_epochs", ">= 1")
    need(math.isfinite(s["bezier_lr"]) and s["bezier_lr"] > 0, "bezier_lr", "> 0")


def _group_key(cfg: DictConfig) -> str:
    from landscope.jobs import fingerprint

    unseeded = cfg.copy()
    unseeded.seed = 0
    return fingerprint(unseeded)


def _group_name(job_name: str) -> str:
    items = [i for i in job_name.split(",") if not _SEED_ITEM.match(i)]
    return ",".join(items) or "seeds"


def _plan(sweep: Path) -> tuple[list[dict], list[str]]:
    """``(pairs, notes)``: every pair of completed jobs differing only in seed."""
    from landscope.data import check_available
    from landscope.jobdir import Sweep, screen

    if not sweep.is_dir():
        raise LandscopeError(f"{sweep} is not a sweep directory")
    groups: dict[str, list[dict]] = {}
    notes = []
    for s in screen(Sweep(sweep).job_dirs(required=True), ("completed",)):
        error = s.error
        if s.ok:
            try:
                cfg = s.job.config()
            except Exception as exc:  # noqa: BLE001 - a note, the other jobs still pair
                error = exc
        if error is not None:
            notes.append(f"skipped: {s.job.name} (unreadable result.json or config.yaml: "
                         f"{type(error).__name__})")
            continue
        if not s.ok:
            notes.append(f"skipped: {s.job.name} (status {s.status})")
            continue
        groups.setdefault(_group_key(cfg), []).append(
            {"job": s.job, "name": s.job.name, "cfg": cfg, "result": s.result})
    pairs, names = [], set()
    for key, members in groups.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda m: (int(m["cfg"].seed), m["name"]))
        name = _group_name(members[0]["name"])
        if name in names:
            name = f"{name}_{key[:8]}"
        names.add(name)
        for m in members:
            check_available(m["cfg"].dataset)
        pairs += [{"group": name, "a": a, "b": b} for a, b in itertools.combinations(members, 2)]
    if not pairs:
        n = sum(len(m) for m in groups.values())
        raise LandscopeError(f"no pairs to connect in {sweep}: {n} completed job(s), none "
                             "sharing a config apart from seed")
    return pairs, notes


def _connect(pair: dict, settings: dict) -> tuple[dict, dict]:
    """Compute one pair: ``(record for the JSON file, arrays for the npz)``."""
    import numpy as np
    import torch

    from landscope.geometry.connectivity import (bezier_path, linear_path, path_ts,
                                                 train_bezier)
    from landscope.geometry.space import ParamSpace
    from landscope.jobs import default_threads
    from landscope.models import count_parameters
    from landscope.probes.probe_data import ProbeData

    a, b = pair["a"], pair["b"]
    _, state_a = a["job"].final_checkpoint(a["result"])
    _, state_b = b["job"].final_checkpoint(b["result"])
    model_a, data = a["job"].load_model(state_a["model"], a["cfg"])
    model_b, _ = b["job"].load_model(state_b["model"], b["cfg"])
    torch.set_num_threads(default_threads(count_parameters(model_a)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    s = settings
    train = ProbeData.from_split(data.train, s["data_size"], s["seed"], s["batch_size"])
    test = ProbeData.from_split(data.test, s["data_size"], s["seed"], s["batch_size"])
    space = ParamSpace(model_a)
    theta_a = space.theta0
    theta_b = space.flatten_params(dict(model_b.named_parameters()))
    buffers_b = {n: t.detach().clone() for n, t in model_b.named_buffers()}
    ts = path_ts(s["path_points"])
    lin = linear_path(space, theta_a, theta_b, ts, train, test, bn=s["bn"],
                      buffers_a=space.buffers0, buffers_b=buffers_b)
    scalars = lin.scalars("linear")
    arrays = {f"linear_{k}": v for k, v in lin.arrays().items()}
    record: dict[str, Any] = {"bn": {"linear": s["bn"]}, "has_batchnorm": space.has_batchnorm,
                              "data": {"train": train.n, "test": test.n}}
    if s["bezier"]:
        tcfg = a["cfg"].train
        batch = len(data.train) if tcfg.full_batch else int(tcfg.batch_size)
        bend = train_bezier(model_a, theta_a, theta_b, data.train, epochs=s["bezier_epochs"],
                            lr=s["bezier_lr"], batch_size=batch, seed=s["seed"])
        bez = bezier_path(space, theta_a, theta_b, bend.theta_c, ts, train, test,
                          bn="recompute", grad_evals=bend.grad_evals)
        scalars.update(bez.scalars("bezier"))
        arrays.update({f"bezier_{k}": v for k, v in bez.arrays().items()})
        arrays["bezier_bend"] = bend.theta_c.cpu().numpy()
        arrays["bezier_loss_history"] = np.asarray(bend.loss_history, dtype=np.float64)
        record["bn"]["bezier"] = "recompute"
        record["bend"] = {"optimizer": bend.optimizer, "lr": bend.lr, "schedule": "cosine",
                          "epochs": bend.epochs, "batch_size": batch, "steps": bend.steps,
                          "grad_evals": bend.grad_evals, "seed": bend.seed,
                          "train_samples": len(data.train),
                          "final_loss": bend.loss_history[-1]}
    record.update(checkpoint_epoch_a=state_a["epoch"], checkpoint_epoch_b=state_b["epoch"],
                  n_params=space.dim)
    return {**record, "scalars": scalars}, arrays


def _summary(scalars: dict) -> str:
    """Barriers (mean-of-endpoints / interpolation conventions) of train loss, test error."""
    parts = []
    for p in ("linear", "bezier"):
        for split, metric in (("train", "loss"), ("test", "error")):
            m = scalars.get(f"{p}_{split}_{metric}_barrier_mean")
            i = scalars.get(f"{p}_{split}_{metric}_barrier_interp")
            if m is not None and i is not None:
                parts.append(f"{p} {split} {metric} barrier {m:.4g}/{i:.4g}")
    return ", ".join(parts) + " (vs endpoint mean/interpolation)" if parts else ""


def run_pair(pair: dict, settings: dict, out_dir: Path) -> tuple[str, dict]:
    """Connect one pair (or read its cached result): ``("computed"|"cached", record)``."""
    from landscope.checkpoint import payload_digest
    from landscope.jobdir import Cache

    ckpts = (pair["a"]["job"].newest_checkpoint(), pair["b"]["job"].newest_checkpoint())
    key = {"checkpoint_a": payload_digest(ckpts[0]), "checkpoint_b": payload_digest(ckpts[1]),
           "landscape": settings}
    cache = Cache(out_dir / pair["group"], f"{pair['a']['name']}__{pair['b']['name']}")
    cached = cache.read(key, npz="present")
    if cached is not None:
        return "cached", cached
    tic = time.perf_counter()
    record, arrays = _connect(pair, settings)
    record = {"group": pair["group"], "job_a": pair["a"]["name"], "job_b": pair["b"]["name"],
              "seed_a": int(pair["a"]["cfg"].seed), "seed_b": int(pair["b"]["cfg"].seed),
              **key, **record, "wall_time_s": time.perf_counter() - tic}
    return "computed", cache.write(record, arrays)


def main(argv: list[str] | None = None) -> None:
    from runner.cli import arguments, check_writable, input_errors, paths_and_overrides, run_each

    args = arguments(argv, __doc__)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    paths, overrides = paths_and_overrides(args)
    with input_errors(composing=True):
        if len(paths) != 1:
            raise LandscopeError(f"expected one sweep directory, got {len(paths)}: "
                                 f"{' '.join(paths) or '(none)'}")
        settings = _landscape_config(overrides)
        sweep = Path(paths[0])
        pairs, notes = _plan(sweep)
        check_writable(sweep / "connectivity" / g for g in sorted({p["group"] for p in pairs}))
    for note in notes:
        print(note, flush=True)
    counts = run_each(pairs, lambda p: f"{p['group']}/{p['a']['name']}__{p['b']['name']}",
                      lambda p: run_pair(p, settings, sweep / "connectivity"),
                      lambda record: _summary(record["scalars"]))
    print(f"{len(pairs)} pairs: {counts['computed']} computed, {counts['cached']} cached, "
          f"{counts['failed']} failed ({sweep / 'connectivity'})")
    sys.exit(1 if counts["failed"] else 0)


if __name__ == "__main__":
    main()
