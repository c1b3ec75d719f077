"""tqdm bars, shown where a config's ``progress`` option asks for them.

Every ``progress`` option (``train.progress``, ``probe.progress``, ``landscape.progress``)
reads the same way: ``true`` shows the bars, ``false`` hides them and ``null`` shows them
only when standard error is a terminal (a log file or a SLURM job's output gets the plan
lines, not bars).
"""

from __future__ import annotations

import sys
from typing import Any, Optional


def wanted(setting: Optional[bool]) -> bool:
    """Whether bars are shown under the option value ``setting`` (``None``: on a terminal)."""
    return sys.stderr.isatty() if setting is None else bool(setting)


def bar(desc: Optional[str], total: Optional[int], unit: str = "it", initial: int = 0) -> Any:
    """A tqdm bar labelled ``desc`` that clears itself when closed (``leave=False``), as every
    stage's does; ``desc=None``: a disabled bar, whose ``update`` and ``close`` do nothing."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False,
                dynamic_ncols=True, disable=desc is None)
