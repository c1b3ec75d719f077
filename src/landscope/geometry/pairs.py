"""Mode connectivity between the seeds of a finished sweep (what ``runner.connect`` runs; its
docstring describes the paths, the settings and the files): the pairs of completed jobs that
differ only in seed, and one pair's linear and Bezier paths from their final checkpoints,
cached per (checkpoints, settings) in ``SWEEP/connectivity/<group>/<jobA>__<jobB>.json/.npz``."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from landscope.errors import ConfigError, LandscopeError

# the landscape settings a connectivity result depends on (its cache key, under the names the
# cached results carry) -> the option of the landscape group each is read from
KEYS = {"path_points": "path_points", "bezier": "bezier.enabled",
        "bezier_epochs": "bezier.epochs", "bezier_lr": "bezier.lr", "bn": "bn",
        "data_size": "data_size", "seed": "seed", "batch_size": "batch_size"}
_SEED_ITEM = re.compile(r"^seed=\d+$")


def validate(s: dict) -> None:
    """Raise :class:`ConfigError` naming the first impossible connectivity setting."""

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"landscape.{KEYS[key]} must be {what} (got {s[key]!r})")

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


def plan_pairs(sweep: Path) -> tuple[list[dict], list[str]]:
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


def connect_pair(pair: dict, settings: dict) -> tuple[dict, dict]:
    """Compute one pair: ``(record for the JSON file, arrays for the npz)``."""
    import numpy as np
    import torch

    from landscope.geometry.connectivity import bezier_path, linear_path, path_ts, train_bezier
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


#: the longest pair name whose cache files' temporaries (``.<name>.npz.<host>-<pid>.<8>.tmp``)
#: still fit the 255-byte file-name limit, with room for a long host name
MAX_PAIR_NAME = 160


def pair_file_name(job_a: str, job_b: str) -> str:
    """The name of a pair's cache files: ``<jobA>__<jobB>``; when that is longer than
    :data:`MAX_PAIR_NAME` bytes (two long job directory names), ``<hashA>__<hashB>`` with
    12-hex-digit BLAKE2 digests of the names (the json's ``job_a`` / ``job_b`` name them).

    >>> pair_file_name("seed=0", "seed=1")
    'seed=0__seed=1'
    >>> len(pair_file_name("x" * 100, "y" * 100))
    26
    """
    name = f"{job_a}__{job_b}"
    if len(name.encode()) <= MAX_PAIR_NAME:
        return name
    digest = [hashlib.blake2b(j.encode(), digest_size=6).hexdigest() for j in (job_a, job_b)]
    return "__".join(digest)


def run_pair(pair: dict, settings: dict, out_dir: Path) -> tuple[str, dict]:
    """Connect one pair (or read its cached result): ``("computed"|"cached", record)``."""
    from landscope.checkpoint import payload_digest
    from landscope.jobdir import Cache

    ckpts = (pair["a"]["job"].newest_checkpoint(), pair["b"]["job"].newest_checkpoint())
    key = {"checkpoint_a": payload_digest(ckpts[0]), "checkpoint_b": payload_digest(ckpts[1]),
           "landscape": settings}
    cache = Cache(out_dir / pair["group"], pair_file_name(pair["a"]["name"], pair["b"]["name"]))
    cached = cache.read(key, npz="present")
    if cached is not None:
        return "cached", cached
    tic = time.perf_counter()
    record, arrays = connect_pair(pair, settings)
    record = {"group": pair["group"], "job_a": pair["a"]["name"], "job_b": pair["b"]["name"],
              "seed_a": int(pair["a"]["cfg"].seed), "seed_b": int(pair["b"]["cfg"].seed),
              **key, **record, "wall_time_s": time.perf_counter() - tic}
    return "computed", cache.write(record, arrays)


def summary(scalars: dict) -> str:
    """Barriers (mean-of-endpoints / interpolation conventions) of train loss, test error."""
    parts = []
    for p in ("linear", "bezier"):
        for split, metric in (("train", "loss"), ("test", "error")):
            m = scalars.get(f"{p}_{split}_{metric}_barrier_mean")
            i = scalars.get(f"{p}_{split}_{metric}_barrier_interp")
            if m is not None and i is not None:
                parts.append(f"{p} {split} {metric} barrier {m:.4g}/{i:.4g}")
    return ", ".join(parts) + " (vs endpoint mean/interpolation)" if parts else ""
