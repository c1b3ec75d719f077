"""Data-parallel Hessian probes (landscope.probes.distributed): two CPU processes (gloo) with a
shard each give the one-process operator on the whole data: products, loss and gradient to
~1e-12 (float64), and the same top-k eigenvalues, Hutchinson trace and SLQ rule, identical on
both ranks; wrong set-ups are refused on every rank with one error line; without a process
group everything is exactly what it was; ``torchrun -m runner.probe`` writes from rank 0 only
and matches a one-process run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from landscope.errors import LandscopeError
from landscope.probes.density import slq
from landscope.probes.distributed import hessian_operator, init_from_env, rank_and_world, shard
from landscope.probes.hvp import HessianOperator
from landscope.probes.lanczos import lanczos_eigs
from landscope.probes.probe_data import ProbeData
from landscope.probes.trace import hutchinson
from probe_models import seeded_model

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
CLASSES = 3
MODELS = {
    "mlp": (dict(name="mlp", width=6, depth=2), (1, 12)),
    "cnn_bn": (dict(name="cnn", width=2, depth=2, norm="batch"), (1, 6, 6)),
}


def _setup(name: str, n: int, micro: int):
    cfg, shape = MODELS[name]
    model, x, y = seeded_model(cfg, shape, CLASSES, n, seed=0)
    return model, ProbeData.from_tensors(x, y, micro)


def _quantities(op, estimators: bool = True) -> dict:
    """Everything the tests compare, computed through ``op`` (``estimators=False``: the
    product, loss and gradient only)."""
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(7), dtype=op.dtype)
    if not estimators:
        return {"hv": op.matvec(v), "loss": op.loss(), "grad": op.gradient(),
                "hvps": op.n_matvecs}
    top = lanczos_eigs(op, k=3, seed=0)
    bottom = lanczos_eigs(op, k=2, which="smallest", seed=1)
    tr = hutchinson(op, n_samples=12, seed=3)
    q = slq(op, n_probes=2, m_steps=8, seed=4)
    return {"hv": op.matvec(v), "loss": op.loss(), "grad": op.gradient(),
            "top": top.eigenvalues, "bottom": bottom.eigenvalues, "top_hvps": top.n_matvecs,
            "trace": tr.estimate, "nodes": q.nodes, "weights": q.weights, "hvps": op.n_matvecs}


# ------------------------------------------------------------------ two processes (gloo)
def _entry(rank: int, world: int, init: str, out: str, job: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        result = globals()[job](*args)
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


def _spawn(tmp_path: Path, job: str, *args) -> list:
    mp.start_processes(_entry, args=(2, str(tmp_path / "init"), str(tmp_path), job, args),
                       nprocs=2, start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _distributed_quantities(name: str, n: int, micro: int, mode: str, method: str) -> dict:
    model, data = _setup(name, n, micro)
    op = hessian_operator(model, data, mode=mode, method=method, seed=0)
    return {**_quantities(op, estimators=method != "forward_over_reverse"), "shard_n": op.data.n,
            "n_total": op.data.n_total, "group": op.group is not None,
            "rank_world": rank_and_world()}


# (model, n, micro_batch, mode, method): one micro-batch split by samples, uneven ones, and
# train-mode BatchNorm sharded by whole micro-batches
CASES = [("mlp", 30, 30, "eval", "cached"), ("mlp", 30, 8, "eval", "double_backward"),
         ("mlp", 30, 8, "eval", "forward_over_reverse"), ("cnn_bn", 32, 8, "train", "cached")]


def _all_cases() -> list[dict]:
    return [_distributed_quantities(*case) for case in CASES]


def test_two_ranks_give_the_one_process_operator(tmp_path):
    ranks = _spawn(tmp_path, "_all_cases")  # one spawn for every case (process start-up rules)
    for index, case in enumerate(CASES):
        _check_case(case, ranks[0][index], ranks[1][index])


def _check_case(case: tuple, a: dict, b: dict) -> None:
    name, n, micro, mode, method = case
    model, data = _setup(name, n, micro)
    ref = _quantities(HessianOperator(model, data, mode=mode, method=method, seed=0),
                      estimators=method != "forward_over_reverse")
    assert a["rank_world"] == (0, 2) and b["rank_world"] == (1, 2) and a["group"]
    assert a["shard_n"] + b["shard_n"] == n and a["n_total"] == b["n_total"] == n
    for key in ("hv", "grad", "top", "bottom", "nodes", "weights"):  # identical on both ranks
        assert key not in a or torch.equal(a[key], b[key]), (case, key)
    assert a["loss"] == b["loss"] and a.get("trace") == b.get("trace") and a["hvps"] == b["hvps"]
    for key in ("hv", "grad"):
        assert float((a[key] - ref[key]).norm() / ref[key].norm()) < 1e-12, (case, key)
    assert abs(a["loss"] - ref["loss"]) < 1e-12 * abs(ref["loss"]), case
    if "top" not in ref:
        return
    assert torch.allclose(a["top"], ref["top"], rtol=1e-10, atol=0)
    assert torch.allclose(a["bottom"], ref["bottom"], rtol=0, atol=1e-10)
    assert a["top_hvps"] == ref["top_hvps"] and a["hvps"] == ref["hvps"]
    assert abs(a["trace"] - ref["trace"]) < 1e-10 * abs(ref["trace"])
    assert torch.allclose(a["weights"], ref["weights"], rtol=0, atol=1e-9)
    scale = float(ref["nodes"].abs().max())
    assert float((a["nodes"] - ref["nodes"]).abs().max()) < 1e-9 * scale


def _refusals() -> list[str]:
    """The error line of each wrong set-up (every rank must refuse it, none may hang)."""
    rank, _ = rank_and_world()
    model, data = _setup("mlp", 20, 5)
    messages = []
    attempts = [
        lambda: HessianOperator(model, data, group=dist.group.WORLD),  # the whole set twice
        lambda: hessian_operator(model, ProbeData(data.batches[:1]), mode="train"),  # 1 batch
        lambda: hessian_operator(model, ProbeData([(data.batches[0][0][:1],
                                                    data.batches[0][1][:1])])),  # 1 sample
    ]
    other, _, _ = seeded_model(*MODELS["mlp"], CLASSES, 4, seed=1 + rank)  # per-rank weights
    attempts.append(lambda: hessian_operator(other, data))
    torch.manual_seed(0)
    dropout = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5),
                                  torch.nn.Dropout(0.5), torch.nn.Linear(5, CLASSES)).double()
    dropout.train()
    attempts.append(lambda: hessian_operator(dropout, data, mode="train"))
    for attempt in attempts:
        try:
            attempt()
            messages.append("accepted")
        except LandscopeError as exc:
            messages.append(str(exc))
    return messages


def test_wrong_setups_are_refused_on_every_rank(tmp_path):
    a, b = _spawn(tmp_path, "_refusals")
    assert a == b and all("\n" not in m for m in a)
    whole, one_batch, one_sample, models, dropout = a
    assert "add up to 2, not 1" in whole and "ProbeData.shard" in whole
    assert "1 micro-batch for 2 ranks" in one_batch and "probe.micro_batch" in one_batch
    assert "1 sample for 2 ranks" in one_sample
    assert "different parameter values" in models
    assert "not deterministic" in dropout


def _clocks_that_differ() -> dict:
    """A time-capped probe run whose ranks' clocks disagree: rank 0's runs a second a reading
    (its time is up within the top-k's run), rank 1's is the real one (up much later)."""
    import itertools
    import time
    import types

    from landscope.config import ProbeConfig, SharpnessConfig, TraceConfig
    from landscope.data import TensorSplit
    from landscope.probes import cost
    from landscope.probes.suite import run_probes

    if rank_and_world()[0] == 0:
        base, ticks = time.perf_counter(), itertools.count()
        cost.time = types.SimpleNamespace(perf_counter=lambda: base + next(ticks))
    model, x, y = seeded_model(*MODELS["mlp"], CLASSES, 40, seed=0)
    cfg = ProbeConfig(top_k=3, trace=TraceConfig(enabled=True), data_size=None, micro_batch=20,
                      budget_s=8.0, progress=False, sharpness=SharpnessConfig(enabled=True))
    s = run_probes(model, TensorSplit(x, y), cfg).scalars
    return {k: s.get(k) for k in ("top_stopped_by", "trace_stopped_by", "hvps", "lambda_max",
                                  "sharpness_stopped_by", "sharpness_skipped")}


def test_ranks_whose_clocks_differ_stop_at_the_same_product(tmp_path):
    """Each rank's time cap read its own clock, so one rank could stop while another went on
    into a product's all-reduce and waited there: now the ranks agree before each product and
    each sharpness evaluation."""
    a, b = _spawn(tmp_path, "_clocks_that_differ")
    assert a == b, (a, b)
    assert a["top_stopped_by"] == a["trace_stopped_by"] == "budget_s" and 1 < a["hvps"] < 20
    # the sharpness evaluations are collectives too (summed over the ranks' shards)
    assert a["sharpness_stopped_by"] == "budget_s" and a["sharpness_skipped"] == ["worst_case"]


SHARPNESS = dict(top_k=0, data_size=None, micro_batch=10, progress=False)


def _sharpness_scalars(s: dict) -> dict:
    return {k: v for k, v in s.items() if k.startswith(("sharpness_", "pac_bayes"))}


def _sharpness_run() -> dict:
    from landscope.config import ProbeConfig, SharpnessConfig
    from landscope.data import TensorSplit
    from landscope.probes.suite import run_probes, start_run

    model, x, y = seeded_model(*MODELS["mlp"], CLASSES, 40, seed=0)
    cfg = ProbeConfig(sharpness=SharpnessConfig(enabled=True, family=True), **SHARPNESS)
    out = _sharpness_scalars(run_probes(model, TensorSplit(x, y), cfg).scalars)
    objective = start_run(model, TensorSplit(x, y), cfg).objective  # what it evaluates on
    return {**out, "objective_samples": (objective.data.n, objective.data.n_total)}


def test_two_ranks_split_the_sharpness_measures_and_give_the_one_process_values(tmp_path):
    """The sharpness measures ran whole on every rank; their evaluations are now summed over
    the ranks' shards like the products: identical on both ranks, the one-process values to
    rounding (float64), with the same number of evaluations."""
    a, b = _spawn(tmp_path, "_sharpness_run")
    ref = _sharpness_run()
    assert ref.pop("objective_samples") == (40, 40)  # one process: the whole set
    assert a.pop("objective_samples") == b.pop("objective_samples") == (20, 40)  # a shard each
    assert a == b
    assert set(a) == set(ref) and a["sharpness_loss_evals"] == ref["sharpness_loss_evals"]
    assert a["sharpness_acc_evals"] == ref["sharpness_acc_evals"] > 0
    floats = [k for k, v in ref.items() if isinstance(v, float)]
    assert len(floats) > 10
    for k in floats:
        assert a[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k


# ------------------------------------------------------------------ one process, no group
def test_without_a_group_everything_is_the_one_process_operator():
    assert rank_and_world() == (0, 1) and init_from_env() == (0, 1)
    model, data = _setup("mlp", 30, 8)
    assert shard(data) is data and shard(data, "train") is data
    op = hessian_operator(model, data, seed=0)
    ref = HessianOperator(model, data, seed=0)
    assert type(op) is HessianOperator and op.group is None and op.data is data
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1), dtype=op.dtype)
    assert torch.equal(op.matvec(v), ref.matvec(v))
    assert op.loss() == ref.loss() and torch.equal(op.gradient(), ref.gradient())
    assert data.weights == [8 / 30, 8 / 30, 8 / 30, 6 / 30] and data.n_total == 30


def test_shards_cover_the_set_with_whole_set_weights():
    x, y = torch.arange(23.0).reshape(23, 1), torch.arange(23) % 3
    data = ProbeData.from_tensors(x, y, 5)
    for world in (2, 3, 4):
        parts = [data.shard(r, world) for r in range(world)]
        assert torch.equal(torch.cat([xb for p in parts for xb, _ in p.batches]), x)
        assert all(p.total == 23 and max(len(yb) for _, yb in p.batches) <= 5 for p in parts)
        assert abs(sum(w for p in parts for w in p.weights) - 1) < 1e-15
        kept = [data.shard(r, world, keep_batches=True) for r in range(world)]
        assert [b for p in kept for b in p.batches] == data.batches  # the same partition
        assert sum(p.n for p in kept) == 23 and kept[0].to(torch.float64).total == 23
    assert data.shard(0, 1) is data
    with pytest.raises(LandscopeError, match="5 micro-batches for 6 ranks"):
        data.shard(0, 6, keep_batches=True)
    with pytest.raises(LandscopeError, match="rank 2 of world size 2"):
        data.shard(2, 2)
    with pytest.raises(LandscopeError, match="cannot belong"):
        ProbeData(data.batches, total=3)


def test_init_from_env_needs_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(LandscopeError, match="torchrun"):
        init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(LandscopeError, match="whole number"):
        init_from_env()


# ------------------------------------------------------------------ torchrun -m runner.probe
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def test_torchrun_probe_writes_from_rank_zero_and_matches_one_process(compose, tmp_path):
    from landscope.jobs import train_job

    job = tmp_path / "job"
    overrides = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=32",
                 "model.width=8", "model.depth=2", "landscape=none", "train.epochs=1",
                 "probe=none"]
    train_job(compose(overrides), job, overrides)
    single, multi = tmp_path / "single" / "job", tmp_path / "multi" / "job"
    for d in (single, multi):
        shutil.copytree(job, d)
    before = _files(multi)
    probe = ["probe=basic", "probe.data_size=96", "probe.sharpness.enabled=false",
             "probe.trace.max_samples=20"]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TMPDIR": str(tmp),
           "OMP_NUM_THREADS": "1"}
    from runner import probe as probe_command

    with pytest.raises(SystemExit) as one:  # the one-process reference, in this process
        probe_command.main([str(single), *probe])
    assert one.value.code == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                          "-m", "runner.probe", str(multi), *probe],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("probed:") == 1 and "Traceback" not in two.stderr
    assert sorted(_files(multi)) == sorted(_files(single))  # rank 1 wrote nothing here
    after = _files(multi)  # and changed no file rank 0 does not write either
    assert {k: after[k] for k in before if k not in ("result.json", ".lock")} == \
        {k: v for k, v in before.items() if k not in ("result.json", ".lock")}
    assert not list(tmp.glob("landscope-rank*"))  # rank 1's private copy is gone
    p1 = json.loads((single / "result.json").read_text())["probes"]
    p2 = json.loads((multi / "result.json").read_text())["probes"]
    assert p2["probe_data_size"] == p1["probe_data_size"] == 96
    assert abs(p2["lambda_max"] - p1["lambda_max"]) <= 1e-4 * abs(p1["lambda_max"])
    assert abs(p2["trace"] - p1["trace"]) <= 1e-4 * abs(p1["trace"])
