"""Execute the tutorial notebooks: ``python scripts/run_notebooks.py [NAME ...] [--out DIR]``.

Each ``notebooks/NN_*.py`` (jupytext percent format, committed without outputs) is converted
to a notebook with jupytext and executed top to bottom with nbclient in a kernel of *this*
interpreter (an explicit kernelspec written to a temporary directory, so neither a user's
``python3`` kernelspec nor a missing one changes which Python runs it), with the working
directory ``notebooks/`` (the notebooks write under ``notebooks/_out/``, git-ignored). The
executed notebooks, figures included, go to ``--out`` (default ``notebooks/_build/``).
A cell that raises stops that notebook (nbclient's ``CellExecutionError``): the command
prints it, goes on with the others and exits 1. ``make notebooks`` runs this.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
KERNEL = "landscope-notebooks"


def sources() -> list[Path]:
    """The tutorial sources, in order (``NN_name.py``)."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def convert(path: Path):
    """The notebook (nbformat v4) of a jupytext percent-format source, without outputs."""
    import jupytext

    nb = jupytext.read(path, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


def kernel_manager(kernel_dir: Path):
    """A kernel manager that starts ``sys.executable -m ipykernel_launcher``, from a kernelspec
    written under ``kernel_dir`` (only that directory is searched)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = kernel_dir / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})", "language": "python"}))
    ksm = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    # ipc: the kernel's sockets are files in the kernel directory, not TCP ports
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm, transport="ipc",
                         ip=str(kernel_dir / "kernel"))


def kernel_env() -> dict[str, str]:
    """The kernel's environment: ours, with ``src/`` first on PYTHONPATH (absolute, so a
    checkout without ``make install`` imports its own landscope from any working directory)."""
    env = dict(os.environ)
    paths = [str(REPO / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures
    return env


def execute(path: Path, cwd: Path, timeout: int = 600):
    """Convert and execute one notebook with ``cwd`` as its working directory; returns the
    executed notebook (raises nbclient's CellExecutionError at the first failing cell)."""
    from nbclient import NotebookClient

    nb = convert(path)
    with tempfile.TemporaryDirectory(prefix="landscope-kernel-") as kdir:
        km = kernel_manager(Path(kdir))
        client = NotebookClient(nb, km=km, timeout=timeout,
                                resources={"metadata": {"path": str(cwd)}})
        try:
            client.execute(env=kernel_env())
        finally:  # a kernel manager we pass in is ours to stop
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    return nb


def pngs(nb) -> int:
    """How many image/png outputs the executed notebook holds."""
    return sum("image/png" in out.get("data", {}) for cell in nb.cells
               for out in cell.get("outputs", []))


def main(argv: list[str] | None = None) -> int:
    import nbformat
    from nbclient.exceptions import CellExecutionError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebooks to run (default: all), e.g. 02_hessian")
    ap.add_argument("--out", default=str(NOTEBOOKS / "_build"), help="executed .ipynb go here")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args(argv)
    chosen = [p for p in sources() if not args.names or p.stem in args.names]
    if not chosen:
        print(f"error: no notebook named {' '.join(args.names)} in {NOTEBOOKS}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in chosen:
        tic = time.perf_counter()
        try:
            nb = execute(path, NOTEBOOKS, args.timeout)
        except CellExecutionError as exc:
            failed += 1
            print(f"{path.name}: FAILED after {time.perf_counter() - tic:.1f} s\n{exc}")
            continue
        target = out / f"{path.stem}.ipynb"
        nbformat.write(nb, target)
        print(f"{path.name}: {time.perf_counter() - tic:.1f} s, {pngs(nb)} figures -> {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
