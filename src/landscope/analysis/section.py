"""A report section as an object (the entries of :data:`landscope.analysis.report.SECTIONS`).

A module that contributes to the report (a hypothesis, a study) defines ``SECTION`` (or a list
``SECTIONS``) of :class:`Section`: ``applies(ctx)`` says whether the collected jobs support it
and ``write(ctx)`` writes it into ``ctx.doc`` (``ctx`` a
:class:`~landscope.analysis.report.ReportContext`). A renamed function then fails at import,
not halfway through a report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Section:
    """``title``: what the section is about (for listings and tests); ``calibration``: the
    name under which the appendix lists the calibration of the tests it used (None: none)."""

    title: str
    applies: Callable[[Any], bool]
    write: Callable[[Any], None]
    calibration: Optional[str] = None
