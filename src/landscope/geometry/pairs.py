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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from landscope.errors import ConfigError, LandscopeError
from landscope.wording import counted

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


def _one_per_seed(members: list[dict], notes: list[str]) -> list[dict]:
    """The group's jobs by seed, one per seed: two directories of one seed hold one trained
    model (their configs differ only in options training does not read, such as the probe's),
    and a pair of it with itself is no pair."""
    members = sorted(members, key=lambda m: (int(m["cfg"].seed), m["name"]))
    kept: dict[int, dict] = {}
    for m in members:
        first = kept.setdefault(int(m["cfg"].seed), m)
        if first is not m:
            notes.append(f"skipped: {m['name']} (the same trained model as {first['name']}: "
                         "the same seed, and its config differs only in options training does "
                         "not read)")
    return list(kept.values())


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
        members = _one_per_seed(members, notes)
        if len(members) < 2:
            continue
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


@dataclass
class _Pair:
    """What one pair's paths start from: the first job's model and data, both points, the
    second model's buffers, the train and test subsets and the bend's batch size."""

    model: Any
    data: Any
    space: Any
    theta_a: Any
    theta_b: Any
    buffers_b: dict
    train: Any
    test: Any
    batch: int
    epochs: tuple[int, int]


def _load_pair(pair: dict, settings: dict) -> _Pair:
    import torch

    from landscope.geometry.space import ParamSpace
    from landscope.jobs import default_threads
    from landscope.models import count_parameters
    from landscope.probes.probe_data import ProbeData

    a, b, s = pair["a"], pair["b"], settings
    _, state_a = a["job"].final_checkpoint(a["result"])
    _, state_b = b["job"].final_checkpoint(b["result"])
    model_a, data = a["job"].load_model(state_a["model"], a["cfg"])
    model_b, _ = b["job"].load_model(state_b["model"], b["cfg"])
    torch.set_num_threads(default_threads(count_parameters(model_a)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    space = ParamSpace(model_a)
    tcfg = a["cfg"].train
    return _Pair(model_a, data, space, space.theta0,
                 space.flatten_params(dict(model_b.named_parameters())),
                 {n: t.detach().clone() for n, t in model_b.named_buffers()},
                 ProbeData.from_split(data.train, s["data_size"], s["seed"], s["batch_size"]),
                 ProbeData.from_split(data.test, s["data_size"], s["seed"], s["batch_size"]),
                 len(data.train) if tcfg.full_batch else int(tcfg.batch_size),
                 (state_a["epoch"], state_b["epoch"]))


def _linear(p: _Pair, s: dict, ts, progress: Optional[str] = None):
    from landscope.geometry.connectivity import linear_path

    return linear_path(p.space, p.theta_a, p.theta_b, ts, p.train, p.test, bn=s["bn"],
                       buffers_a=p.space.buffers0, buffers_b=p.buffers_b, progress=progress)


def _bend(p: _Pair, s: dict, data, epochs: int, progress: Optional[str] = None):
    from landscope.geometry.connectivity import train_bezier

    return train_bezier(p.model, p.theta_a, p.theta_b, data, epochs=epochs,
                        lr=s["bezier_lr"], batch_size=p.batch, seed=s["seed"],
                        progress=progress)


def _bezier(p: _Pair, theta_c, ts, grad_evals: int = 0, progress: Optional[str] = None):
    from landscope.geometry.connectivity import bezier_path

    return bezier_path(p.space, p.theta_a, p.theta_b, theta_c, ts, p.train, p.test,
                       bn="recompute", grad_evals=grad_evals, progress=progress)


def connect_pair(pair: dict, settings: dict, progress: bool = False) -> tuple[dict, dict]:
    """Compute one pair: ``(record for the JSON file, arrays for the npz)``; ``progress``:
    a tqdm bar for each path's points and the bend's steps."""
    import numpy as np

    from landscope.geometry.connectivity import path_ts

    s, p = settings, _load_pair(pair, settings)
    label = (lambda part: part) if progress else (lambda part: None)
    ts = path_ts(s["path_points"])
    lin = _linear(p, s, ts, label("linear"))
    scalars = lin.scalars("linear")
    arrays = {f"linear_{k}": v for k, v in lin.arrays().items()}
    record: dict[str, Any] = {"bn": {"linear": s["bn"]}, "has_batchnorm": p.space.has_batchnorm,
                              "data": {"train": p.train.n, "test": p.test.n}}
    if s["bezier"]:
        bend = _bend(p, s, p.data.train, s["bezier_epochs"], label("bend"))
        bez = _bezier(p, bend.theta_c, ts, bend.grad_evals, label("Bezier"))
        scalars.update(bez.scalars("bezier"))
        arrays.update({f"bezier_{k}": v for k, v in bez.arrays().items()})
        arrays["bezier_bend"] = bend.theta_c.cpu().numpy()
        arrays["bezier_loss_history"] = np.asarray(bend.loss_history, dtype=np.float64)
        record["bn"]["bezier"] = "recompute"
        record["bend"] = {"optimizer": bend.optimizer, "lr": bend.lr, "schedule": "cosine",
                          "epochs": bend.epochs, "batch_size": p.batch, "steps": bend.steps,
                          "grad_evals": bend.grad_evals, "seed": bend.seed,
                          "train_samples": len(p.data.train),
                          "final_loss": bend.loss_history[-1]}
    record.update(checkpoint_epoch_a=p.epochs[0], checkpoint_epoch_b=p.epochs[1],
                  n_params=p.space.dim)
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


def _cache_of(pair: dict, settings: dict, out_dir: Path) -> tuple[Any, dict]:
    """The pair's cache and the key its result is stored under (checkpoints and settings)."""
    from landscope.checkpoint import payload_digest
    from landscope.jobdir import Cache

    ckpts = (pair["a"]["job"].newest_checkpoint(), pair["b"]["job"].newest_checkpoint())
    key = {"checkpoint_a": payload_digest(ckpts[0]), "checkpoint_b": payload_digest(ckpts[1]),
           "landscape": settings}
    name = pair_file_name(pair["a"]["name"], pair["b"]["name"])
    return Cache(out_dir / pair["group"], name), key


def run_pair(pair: dict, settings: dict, out_dir: Path,
             progress: bool = False) -> tuple[str, dict]:
    """Connect one pair (or read its cached result): ``("computed"|"cached", record)``."""
    cache, key = _cache_of(pair, settings, out_dir)
    cached = cache.read(key, npz="present")
    if cached is not None:
        return "cached", cached
    tic = time.perf_counter()
    record, arrays = connect_pair(pair, settings, progress)
    record = {"group": pair["group"], "job_a": pair["a"]["name"], "job_b": pair["b"]["name"],
              "seed_a": int(pair["a"]["cfg"].seed), "seed_b": int(pair["b"]["cfg"].seed),
              **key, **record, "wall_time_s": time.perf_counter() - tic}
    return "computed", cache.write(record, arrays)


# ---------------------------------------------------------------------- the plan
def _cached(pair: dict, settings: dict, out_dir: Path) -> bool:
    try:
        cache, key = _cache_of(pair, settings, out_dir)
        return cache.read(key, npz="present") is not None
    except Exception:  # noqa: BLE001 - such a pair fails when it runs, and says why there
        return False


def pair_seconds(pair: dict, settings: dict) -> dict[str, Any]:
    """The seconds of one ``linear`` and one ``bezier`` path point and of one bend ``step`` of
    ``pair``, each point evaluated (train and test) and each step trained as
    :func:`connect_pair` does, with the bend's steps ``per_epoch`` and the path's ``samples``
    (train, test). Two points of each path are evaluated twice; the bend is trained on one
    batch twice, then on five: a step is the difference over four steps."""
    from landscope.geometry.connectivity import path_ts
    from landscope.geometry.plan import warm_seconds

    s, p = settings, _load_pair(pair, settings)
    ends = path_ts(2)
    linear = warm_seconds(lambda: _linear(p, s, ends)) / 2
    out = {"linear": linear, "bezier": linear, "step": 0.0, "per_epoch": 0,
           "samples": (p.train.n, p.test.n)}
    if not s["bezier"]:
        return out
    if p.space.has_batchnorm and s["bn"] != "recompute":  # the curve always recomputes
        middle = 0.5 * (p.theta_a + p.theta_b)
        out["bezier"] = warm_seconds(lambda: _bezier(p, middle, ends)) / 2
    batches = list(itertools.islice(p.data.train.batches(p.batch), 5))
    one = warm_seconds(lambda: _bend(p, s, batches[:1], 1))
    every = warm_seconds(lambda: _bend(p, s, batches, 1), warm=False)
    k = len(batches)  # the bend's copy of the model and its optimizer come once a training
    out["step"] = (every - one) / (k - 1) if k > 1 and every > one else every / k
    out["per_epoch"] = math.ceil(len(p.data.train) / p.batch)
    return out


def plan_lines(pairs: list[dict], settings: dict, out_dir: Path) -> list[str]:
    """One line per group of pairs, said before any is connected: the pairs to compute (those
    cached are read back), each one's path points and bend steps, and about how long they
    take, from one pair of the group timed by :func:`pair_seconds` (model loading aside)."""
    from landscope.errors import one_line
    from landscope.wording import figure

    s, groups, lines = settings, {}, []
    for pair in pairs:
        groups.setdefault(pair["group"], []).append(pair)
    for group, members in groups.items():
        todo = [p for p in members if not _cached(p, s, out_dir)]
        head = (f"connect plan, {group}: {counted(len(members), 'pair')}, "
                f"{len(members) - len(todo)} cached")
        if not todo:
            lines.append(f"{head}, nothing to compute")
            continue
        try:
            t = pair_seconds(todo[0], s)
        except Exception as exc:  # noqa: BLE001 - the pair fails when it runs, and says why
            lines.append(f"{head}; not timed ({one_line(exc, typed=True)})")
            continue
        points, steps = s["path_points"], s["bezier_epochs"] * t["per_epoch"]
        each = t["linear"] * points
        work, rates = f"linear {points} points", f"~{figure(t['linear'] * 1e3)} ms a linear point"
        if s["bezier"]:
            each += t["bezier"] * points + t["step"] * steps
            work += (f", bend {s['bezier_epochs']} epochs of {t['per_epoch']} steps, "
                     f"Bezier {points} points")
            rates += (f", ~{figure(t['bezier'] * 1e3)} ms a Bezier point, "
                      f"~{figure(t['step'] * 1e3)} ms a bend step")
        lines.append(f"{head}, {len(todo)} to compute, each {work} on {t['samples'][0]} train "
                     f"+ {t['samples'][1]} test samples; {rates}, so ~{figure(each)} s a pair, "
                     f"~{figure(each * len(todo))} s in all")
    return lines


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
