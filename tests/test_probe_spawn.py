"""``probe.ranks``: a job's probes on local worker processes (landscope.probes.spawn), the way
a launcher's job uses them. Two CPU workers (gloo) give the one-process report up to rounding
(float64), worker 0's log lines come back, and a runner job with ``probe.ranks=2`` stores the
same probes as one with a single process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscope.config import (
    DensityConfig,
    NoiseConfig,
    ProbeConfig,
    SharpnessConfig,
    TraceConfig,
)
from landscope.data import TensorSplit
from landscope.errors import LandscopeError
from landscope.probes.spawn import run_probes_on_ranks
from landscope.probes.suite import run_probes
from probe_models import seeded_model

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

# values compared to ~1e-9 relative; counts, names and flags exactly
SKIP = ("probe_ranks",)


def _close(a, b, key: str) -> None:
    if isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-8, abs=1e-10), key
    elif isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), key
        for k in a:
            _close(a[k], b[k], f"{key}.{k}")
    else:
        assert a == b, key


def test_two_workers_give_the_one_process_report() -> None:
    model, x, y = seeded_model(dict(name="mlp", width=6, depth=2), (1, 12), 3, 80, seed=0)
    split = TensorSplit(x, y)
    cfg = ProbeConfig(top_k=3, trace=TraceConfig(enabled=True),
                      density=DensityConfig(enabled=True, probes=3, steps=10),
                      sharpness=SharpnessConfig(enabled=True, rhos=[0.05]),
                      noise=NoiseConfig(enabled=True, samples=40),
                      data_size=None, micro_batch=20, progress=False)
    one = run_probes(model, split, cfg)
    lines: list[str] = []
    two = run_probes_on_ranks(model, split, cfg, ranks=2, log=lines.append)
    assert one.scalars["probe_ranks"] == 1 and two.scalars["probe_ranks"] == 2
    assert lines and lines[0].startswith("probe plan: ")   # worker 0's, replayed
    for key, value in one.scalars.items():
        if key.endswith("seconds") or key in SKIP:
            continue
        _close(two.scalars[key], value, key)
    assert set(two.arrays) == set(one.arrays)
    for key in ("eigenvalues_top", "density", "slq_nodes", "slq_weights"):
        np.testing.assert_allclose(two.arrays[key], one.arrays[key], rtol=1e-8, atol=1e-12)


def test_one_rank_is_this_process_and_missing_gpus_are_refused() -> None:
    model, x, y = seeded_model(dict(name="mlp", width=4, depth=1), (1, 6), 2, 20, seed=1)
    cfg = ProbeConfig(top_k=1, data_size=None, micro_batch=20, progress=False)
    same = run_probes_on_ranks(model, TensorSplit(x, y), cfg, ranks=1).scalars
    assert same["probe_ranks"] == 1 and same["hvps"] == run_probes(model, TensorSplit(x, y),
                                                                   cfg).scalars["hvps"]
    model.to("meta")
    with pytest.raises(LandscopeError, match="probe.ranks > 1 runs on the CPU or CUDA"):
        run_probes_on_ranks(model, TensorSplit(x, y), cfg, ranks=2)


def _job(tmp: Path, name: str, ranks: int) -> dict:
    out = tmp / name
    cmd = [sys.executable, "-m", "runner", "experiment=smoke", "probe=basic",
           f"probe.ranks={ranks}", "probe.data_size=200", "logger=none",
           f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_a_runner_job_with_two_ranks_stores_the_same_probes(tmp_path: Path) -> None:
    one, two = _job(tmp_path, "one", 1), _job(tmp_path, "two", 2)
    assert one["probe_fingerprint"] == two["probe_fingerprint"]  # a layout, not a result
    p1, p2 = one["probes"], two["probes"]
    assert p1["probe_ranks"] == 1 and p2["probe_ranks"] == 2
    for key in ("lambda_max", "trace", "sharpness_l2_rho0.05"):
        assert p2[key] == pytest.approx(p1[key], rel=1e-4), key  # float32: rounding
    assert p2["hvps"] == p1["hvps"]
