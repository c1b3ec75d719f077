"""Shared fixtures: in-process config composition and a subprocess runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# Figures cost ~1 s of matplotlib per process: jobs in tests skip them unless a test asks
# (tests/test_plots.py and tests/test_landscape_job.py draw them).
NO_FIGURES = ["landscape.figures=false"]


def pytest_configure(config):
    """Under pytest-xdist (`make test`), each worker gets a temporary directory of its own
    (TMPDIR, inherited by the subprocesses it starts), so that tests which list or clean
    the shared temporary directory (e.g. landscope-slice-* stores) never see another
    worker's files. Removed when the worker ends."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and not hasattr(config, "_landscope_tmpdir"):
        path = tempfile.mkdtemp(prefix=f"landscope-tests-{worker}-")
        config._landscope_tmpdir = path
        os.environ["TMPDIR"] = path
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again
        # One intra-op thread per worker (and per subprocess it starts): with one worker per
        # core, a second thread in each only makes the workers' OpenMP pools spin against
        # each other (the runner itself uses one thread for models under 1M parameters).
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        import torch

        torch.set_num_threads(1)


def pytest_unconfigure(config):
    path = getattr(config, "_landscope_tmpdir", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data directory per test session, so MNIST-1D is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def compose(data_dir):
    """compose(overrides) -> DictConfig, exactly as `python -m runner` would build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from landscope.config import register_configs

    register_configs()

    def _compose(overrides=(), with_data_dir=True):
        first = NO_FIGURES if with_data_dir else []  # a test's own override wins
        extra = [f"dataset.data_dir={data_dir}"] if with_data_dir else []
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=[*first, *overrides, *extra])

    return _compose


def run_cli(args, cwd, *, data_dir=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """Run `python -m runner ARGS` in ``cwd`` and capture its output."""
    extra = [f"dataset.data_dir={data_dir}", *NO_FIGURES] if data_dir is not None else []
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "runner", *args, *extra], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def metrics_without_time(job_dir: Path) -> list[dict]:
    """metrics.jsonl minus wall-clock fields (everything else must be reproducible)."""
    from landscope.io import read_jsonl

    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in read_jsonl(Path(job_dir) / "metrics.jsonl")]


# A fixture trained on another host: the same code gives the same metrics and weights only to
# float32 rounding there, since the CPU's BLAS kernels sum in another order (1e-7 relative
# measured on 2026-12-06 between the release fixture's host and an AMD EPYC one). On one host
# a retrained job is bit-identical (the tests that compare two runs of their own ask that).
RELEASE_RTOL = 1e-5


def close_to_fixture(rows: list[dict], ref: list[dict]) -> bool:
    """Metrics rows equal to a fixture's: the same keys and non-float values, floats to
    :data:`RELEASE_RTOL`."""
    import math

    def same(a, b) -> bool:
        if isinstance(a, float) or isinstance(b, float):
            return (isinstance(a, (int, float)) and isinstance(b, (int, float))
                    and math.isclose(a, b, rel_tol=RELEASE_RTOL, abs_tol=1e-9))
        return a == b

    return len(rows) == len(ref) and all(
        r.keys() == q.keys() and all(same(r[k], q[k]) for k in r) for r, q in zip(rows, ref))


def weights_close_to_fixture(a: dict, b: dict) -> bool:
    """State dicts equal to a fixture's to :data:`RELEASE_RTOL` (see there)."""
    import torch

    return a.keys() == b.keys() and all(
        torch.allclose(a[k], b[k], rtol=RELEASE_RTOL, atol=1e-7) if a[k].is_floating_point()
        else torch.equal(a[k], b[k]) for k in a)


def cut_back_to_epoch_2(job_dir: Path) -> None:
    """Make a finished job (3 or more epochs, every checkpoint kept) look interrupted after
    epoch 2: drop the later checkpoints and result.json, so the next train_job resumes from
    epoch 2."""
    later = sorted((Path(job_dir) / "checkpoints").glob("epoch_*.pt"))[2:]
    assert later and later[0].name == "epoch_000003.pt", later
    for ckpt in later:
        ckpt.unlink()
    (Path(job_dir) / "result.json").unlink()


def interrupted_pair(compose, overrides: list, root: Path) -> tuple[Path, Path]:
    """Train the job ``overrides`` (4 epochs, every checkpoint kept) into ``root/"full"`` and
    into ``root/"part"``, then cut ``part`` back to epoch 2: the caller resumes it and compares
    it with ``full``. Returns ``(full, part)``."""
    from landscope.jobs import train_job

    full, part = Path(root) / "full", Path(root) / "part"
    train_job(compose(overrides), full, overrides)
    train_job(compose(overrides), part, overrides)
    cut_back_to_epoch_2(part)
    return full, part


@pytest.fixture
def tiny_job(compose, tmp_path, request):
    """``tiny_job(overrides, name="job") -> (result, job_dir)``: one job trained into
    ``tmp_path/name`` with the test module's ``TINY`` overrides appended."""
    from landscope.jobs import train_job

    tiny = list(getattr(request.module, "TINY", ()))

    def _job(overrides, name="job"):
        overrides = [*overrides, *tiny]
        return train_job(compose(overrides), tmp_path / name, overrides), tmp_path / name
    return _job


@pytest.fixture
def compose_no_stages(compose):
    """``compose`` with probes and landscape off unless the overrides choose them (the
    defaults run them on every job)."""
    def _compose(overrides=(), **kw):
        off = [f"{g}=none" for g in ("probe", "landscape")
               if not any(str(o).startswith(f"{g}=") for o in overrides)]
        return compose([*overrides, *off], **kw)
    return _compose


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread (as the runner and the worker processes use), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap():
    """Before each test module, the objects earlier modules left alive (caches, fixtures) are
    moved out of the garbage collector's reach (``gc.freeze``): a worker that has run many
    tests otherwise spends most of a GC-heavy test traversing them (the calibration tests ran
    4× slower in the suite than alone)."""
    import gc

    gc.collect()
    gc.freeze()
    yield


class Bars:
    """Stands in for tqdm: records each bar's label, total, start and updates."""

    def __init__(self) -> None:
        self.made: list[dict] = []

    def __call__(self, total=None, initial=0, desc=None, disable=False, **_):
        rec = {"desc": desc, "total": total, "n": initial, "initial": initial,
               "disable": disable, "closed": False}
        self.made.append(rec)

        class _Bar:
            def update(self, k=1):
                rec["n"] += k

            def close(self):
                rec["closed"] = True

        return _Bar()

    def shown(self) -> list[dict]:
        return [b for b in self.made if not b["disable"]]


@pytest.fixture
def bars(monkeypatch):
    """The tqdm bars made during the test (:class:`Bars`), none of them drawn."""
    import tqdm.auto

    rec = Bars()
    monkeypatch.setattr(tqdm.auto, "tqdm", rec)
    return rec
