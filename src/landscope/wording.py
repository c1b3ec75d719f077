"""Counts and figures in the sentences the commands print and the report writes."""

from __future__ import annotations

from typing import Optional


def counted(n: int, noun: str, plural: Optional[str] = None) -> str:
    """``n`` and ``noun`` in its number: ``counted(1, "job")`` is ``"1 job"``,
    ``counted(2, "job")`` ``"2 jobs"``; ``plural`` where it is not ``noun + "s"``.

    >>> counted(1, "pair"), counted(0, "pair"), counted(3, "run"), counted(2, "job's", "jobs'")
    ('1 pair', '0 pairs', '3 runs', "2 jobs'")
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def figure(x: float) -> str:
    """``x`` with two significant digits under 0.1 and one decimal under 10 (a plan of 0.4 s
    or 0.04 s does not read as 0 s), else none.

    >>> figure(0.0432), figure(3.14159), figure(306.4)
    ('0.043', '3.1', '306')
    """
    return f"{x:.2g}" if x < 0.1 else f"{x:.1f}" if x < 10 else f"{x:.0f}"
