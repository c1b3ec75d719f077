"""Fault injection for subprocess tests: a ``sitecustomize`` shim and result comparison.

Every file the runner writes goes through ``landscope.io.atomic_write_bytes``: a temporary
``.<name>.<random>.tmp`` file in the target directory, then ``os.replace``. The shim (written by
:func:`install_shim` into a directory the test puts first on ``PYTHONPATH``) wraps
``os.replace`` in every Python process it starts; each replace of such a temporary file is one
numbered *write*. The number is shared by the processes of one test round through a counter
file (one byte appended per write), so "the N-th write" is deterministic across the sequence
``runner`` then ``runner.report``. With ``LANDSCOPE_FAULT`` set to

- ``log``: every write is appended to ``LANDSCOPE_FAULT_LOG`` as ``N<TAB>pid<TAB>path`` (nothing
  fails; every other mode logs too);
- ``kill-before:N``: the process SIGKILLs itself at write N, its temporary file written but not
  swapped in (the moment a torn write would happen without the temporary-file route);
- ``kill-after:N``: SIGKILL right after write N is swapped in;
- ``enospc:N``: write N and every later one fail with ``OSError(ENOSPC)`` (no file name, as
  from a ``write`` on a disk that filled up; the temporary file is removed by
  ``atomic_write_bytes``'s own clean-up);
- ``hold:TEXT``: at the first write whose target path contains TEXT, the process creates
  ``held.<pid>`` in the state directory and waits (at most 5 minutes) for a file ``release``
  there, so a test can let another process run while this one is inside a job.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

SHIM = r'''
import errno, os, signal
_SPEC = os.environ.get("LANDSCOPE_FAULT", "")
if _SPEC:
    _MODE, _, _ARG = _SPEC.partition(":")
    _AT = int(_ARG) if _ARG.isdigit() else 0
    _STATE = os.path.dirname(os.environ["LANDSCOPE_FAULT_COUNTER"])
    _HELD = []
    _COUNTER = os.environ["LANDSCOPE_FAULT_COUNTER"]
    _LOG = os.environ.get("LANDSCOPE_FAULT_LOG")
    _replace = os.replace

    def _next():
        fd = os.open(_COUNTER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, b".")
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def _faulty_replace(src, dst, *args, **kwargs):
        name = os.path.basename(os.fspath(src))
        if not (name.startswith(".") and name.endswith(".tmp")):  # not an atomic write
            return _replace(src, dst, *args, **kwargs)
        n = _next()
        if _LOG:
            with open(_LOG, "a") as fh:
                fh.write(f"{n}\t{os.getpid()}\t{os.fspath(dst)}\n")
        if _MODE == "hold" and _ARG in os.fspath(dst) and not _HELD:
            import time
            _HELD.append(n)
            open(os.path.join(_STATE, f"held.{os.getpid()}"), "w").close()
            deadline = time.monotonic() + 300
            while not os.path.exists(os.path.join(_STATE, "release")) and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
        if _MODE == "kill-before" and n == _AT:
            os.kill(os.getpid(), signal.SIGKILL)
        if _MODE == "enospc" and n >= _AT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _replace(src, dst, *args, **kwargs)
        if _MODE == "kill-after" and n == _AT:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = _faulty_replace
'''


def install_shim(directory: Path) -> Path:
    """Write ``sitecustomize.py`` into ``directory`` (to be put first on PYTHONPATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SHIM)
    return directory


def fault_env(shim_dir: Path, spec: str, state_dir: Path) -> dict:
    """Environment of a round's processes: the shim first on PYTHONPATH, the fault spec, and
    the round's counter and log files in ``state_dir`` (created fresh by the caller)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(shim_dir), str(REPO / "src")])
    env["LANDSCOPE_FAULT"] = spec
    env["LANDSCOPE_FAULT_COUNTER"] = str(state_dir / "writes.count")
    env["LANDSCOPE_FAULT_LOG"] = str(state_dir / "writes.log")
    return env


def plain_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = str(REPO / "src")
    return env


def run(args: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd``; output captured."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def read_write_log(state_dir: Path) -> list[tuple[int, int, str]]:
    """The round's writes as ``(n, pid, target path)``, in order."""
    path = state_dir / "writes.log"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        n, pid, target = line.split("\t", 2)
        rows.append((int(n), int(pid), target))
    return rows


# --- comparing result trees ---------------------------------------------------------------

# Fields that legitimately differ between two runs of the same job, wherever they appear
# (result.json and its nested probe/landscape scalars, the probe and landscape caches,
# metrics.jsonl rows, checkpoints and their history, the report's jobs.csv/jobs.parquet
# columns): wall-clock measurements (``seconds``, every ``*_seconds``, ``wall_time_s``), the
# dates the job started and finished, whether it resumed (the interruption itself), the host,
# and the code's commit (other work may be committed between a kill and the rerun).
# Everything else must be equal; tensors and arrays bit for bit.
VOLATILE_KEYS = ("seconds", "wall_time_s", "started", "finished", "resumed_from_epoch", "host",
                 "git_commit")


def volatile(key: str) -> bool:
    leaf = str(key).rsplit(".", 1)[-1]  # the report's tables flatten nested keys with dots
    return leaf in VOLATILE_KEYS or leaf.endswith("_seconds")


def strip(value):
    """``value`` less every volatile key, at any depth (tensors are left as they are)."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not volatile(k)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    if isinstance(value, tuple):
        return tuple(strip(v) for v in value)
    return value


# multirun.yaml records the directory the sweep was started from (hydra.runtime.cwd)
MULTIRUN_VOLATILE = ("cwd",)
# files whose bytes carry no result: the job lock (it holds its last holder's pid)
IGNORED_NAMES = (".lock",)


def _checkpoint_state(path: Path) -> dict:
    from landscope.checkpoint import load_checkpoint

    return strip(load_checkpoint(path))  # verifies the checksum: a torn checkpoint raises


def _bits(t):
    return t.detach().cpu().reshape(-1).contiguous().view(torch.uint8)


def _same(a, b) -> bool:
    """Exact equality of nested checkpoint states (tensors bit-for-bit)."""
    if isinstance(a, torch.Tensor):  # bit-for-bit (NaNs included)
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and \
            torch.equal(_bits(a), _bits(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and \
            all(_same(x, y) for x, y in zip(a, b))
    return a == b


def comparable(path: Path, root: Path):
    """What of ``path`` (a file below ``root``) must be identical between runs (None: the file
    is not compared). The report's tables name each job by its absolute path: compared
    relative to ``root``."""
    name = path.name
    if name in IGNORED_NAMES:
        return None
    if path.suffix == ".json":
        return strip(json.loads(path.read_text()))
    if name == "multirun.yaml":
        import yaml

        doc = yaml.safe_load(path.read_text())
        runtime = doc.get("hydra", {}).get("runtime", {})
        for key in MULTIRUN_VOLATILE:
            runtime.pop(key, None)
        return doc
    if path.suffix == ".jsonl":
        return [strip(json.loads(line)) for line in path.read_text().splitlines() if line]
    if path.suffix in (".csv", ".parquet"):
        import pandas as pd

        table = pd.read_parquet(path) if path.suffix == ".parquet" else \
            pd.read_csv(path, dtype=str, keep_default_na=False)  # the text, exactly
        table = table.drop(columns=[c for c in table.columns if volatile(c)])
        text = table.to_csv(index=False)  # text: NaN cells compare equal
        for prefix in {str(root.resolve()), str(root)}:
            text = text.replace(prefix, "<root>")
        return text
    return path.read_bytes()


def is_temporary(path: Path) -> bool:
    """A temporary file of an atomic write (``.<name>.<random>.tmp``) or of a scan chunk."""
    return path.name.endswith(".tmp") or path.name.endswith(".part")


def tree(root: Path, ignored: tuple = ()) -> dict[str, Path]:
    """Every file below ``root`` by relative path (less those named in ``ignored``)."""
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ignored}


def leftovers(root: Path) -> list[str]:
    """Temporary files left below ``root`` (by a killed write that nothing cleaned up)."""
    return [rel for rel, p in tree(root).items() if is_temporary(p)]


STAGES = (("checkpoints/", "checkpoint"), ("probes/", "probes"), ("landscape/", "slices"),
          ("figures/", "figures"), ("/.figures.json", "figures"), ("report/", "report"),
          ("metrics.jsonl", "training"),
          ("result.json", "result"))


def stage(target: str) -> str:
    """The pipeline stage a written file belongs to (for the campaign's tally)."""
    for marker, name in STAGES:
        if marker in target:
            return name
    return "setup"  # multirun.yaml, config.yaml, overrides.yaml (before training)


def differences(reference: Path, other: Path) -> list[str]:
    """Relative paths whose comparable content differs (or that exist on one side only);
    temporary files are not results (:func:`leftovers` lists them)."""
    ref, got = tree(reference, IGNORED_NAMES), tree(other, IGNORED_NAMES)
    ref = {k: p for k, p in ref.items() if not is_temporary(p)}
    got = {k: p for k, p in got.items() if not is_temporary(p)}
    out = [f"only in reference: {k}" for k in ref.keys() - got.keys()]
    out += [f"only in rerun: {k}" for k in got.keys() - ref.keys()]
    for key in sorted(ref.keys() & got.keys()):
        a, b = ref[key], got[key]
        if a.suffix == ".pt":
            if not _same(_checkpoint_state(a), _checkpoint_state(b)):
                out.append(f"checkpoint differs: {key}")
        elif comparable(a, reference) != comparable(b, other):
            out.append(f"differs: {key}")
    return sorted(out)


def damaged(root: Path) -> list[str]:
    """Result files below ``root`` that are torn or unreadable: JSON (and JSON lines) that
    does not parse, npz archives that do not load, checkpoints that do not verify, PNGs
    without their end chunk (temporary files: :func:`leftovers`)."""
    import pandas as pd
    import yaml

    from landscope.checkpoint import load_checkpoint
    from landscope.errors import CheckpointError

    bad = []
    for rel, path in tree(root).items():
        name = path.name
        try:
            if is_temporary(path):
                continue
            if name.endswith(".json"):
                json.loads(path.read_text())
            elif name.endswith(".jsonl"):
                for line in path.read_text().splitlines():
                    json.loads(line)
            elif name.endswith(".npz"):
                with np.load(io.BytesIO(path.read_bytes())) as z:
                    for key in z.files:
                        z[key]
            elif name.endswith(".yaml"):
                yaml.safe_load(path.read_text())
            elif name.endswith(".parquet"):
                pd.read_parquet(path)
            elif name.endswith(".pt"):
                load_checkpoint(path)
            elif name.endswith(".png"):
                if not path.read_bytes().endswith(b"IEND\xaeB`\x82"):
                    bad.append(f"truncated png: {rel}")
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile, CheckpointError,
                yaml.YAMLError) as exc:
            bad.append(f"unreadable: {rel} ({type(exc).__name__})")
    return bad
