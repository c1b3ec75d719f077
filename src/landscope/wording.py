"""Counts in the sentences the commands print and the report writes."""

from __future__ import annotations

from typing import Optional


def counted(n: int, noun: str, plural: Optional[str] = None) -> str:
    """``n`` and ``noun`` in its number: ``counted(1, "job")`` is ``"1 job"``,
    ``counted(2, "job")`` ``"2 jobs"``; ``plural`` where it is not ``noun + "s"``.

    >>> counted(1, "pair"), counted(0, "pair"), counted(3, "run"), counted(2, "job's", "jobs'")
    ('1 pair', '0 pairs', '3 runs', "2 jobs'")
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
