"""scripts/bench_gpu.py (issue #18's GPU benchmark) runs end to end in its CPU smoke mode."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_mode_runs_on_the_cpu_and_writes_every_estimate(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_gpu.py"), "--quick",
                           "--device", "cpu", "--no-pyhessian", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["header"]["device"] == "CPU" and res["header"]["quick"]
    assert res["pyhessian"] == {"skipped": "skipped (--no-pyhessian)"}
    ours = res["ours"]
    assert set(ours) == {"top-5", "trace", "SLQ"}
    for name, row in ours.items():
        assert "error" not in row and row["stopped_by"] is None, name
        assert row["products"] > 0 and row["seconds"] > 0, name
    top = ours["top-5"]["eigenvalues"]
    assert len(top) == 5 and all(math.isfinite(v) for v in top)
    assert top == sorted(top, reverse=True)
    trace = ours["trace"]
    assert math.isfinite(trace["estimate"]) and math.isfinite(trace["stderr"])
    assert trace["samples"] >= 30 and trace["stderr"] <= 0.01 * trace["scale"]
    slq = ours["SLQ"]
    assert all(math.isfinite(slq[k]) for k in ("node_min", "node_max", "trace_from_rules"))
    assert slq["node_min"] <= slq["node_max"] <= top[0] * (1 + 1e-3)  # Ritz values <= lambda_max
    assert "| top-5 |" in proc.stdout and "seeded initialization" in proc.stdout
