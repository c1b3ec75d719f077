"""Markdown and HTML written side by side: the building blocks of the report.

Every report section (the measures table, one per hypothesis, one per study preset) writes
into one :class:`Doc` (a :class:`~landscope.analysis.section.Section` writes through the
``ReportContext`` of :mod:`landscope.analysis.report`). Figures are PNG files under ``out/figures``
linked from the Markdown and embedded as data URIs in the HTML, so ``report.html`` alone is enough
to share.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd


def fmt(value: Any) -> str:
    """A table cell: 3 significant digits, scientific below 1e-3, '–' for missing values.

    >>> fmt(3.14159), fmt(0.000123), fmt(12345.6), fmt(0.0)
    ('3.14', '1.2e-04', '1.23e+04', '0')
    >>> fmt(None), fmt(float("nan")), fmt(7)
    ('–', '–', '7')
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "–"
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return str(value)


def short(x: Any) -> str:
    """A number in a plain-text summary: 4 significant digits, 'nan' when missing.

    >>> short(3.14159265), short(None), short("n/a")
    ('3.142', 'nan', 'n/a')
    """
    try:
        return "nan" if x is None or not math.isfinite(float(x)) else f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def table(df: pd.DataFrame, columns: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """``(markdown, html)`` of ``df[columns]`` with the given headers (absent columns skipped)."""
    cols = [c for c, _ in columns if c in df.columns]
    heads = [h for c, h in columns if c in df.columns]
    rows = [[fmt(r[c]) for c in cols] for _, r in df.iterrows()]
    md = "\n".join(["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads),
                    *("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |"
                      for row in rows)])
    th = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in row) + "</tr>"
                  for row in rows)
    return md, f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def safe_name(name: str) -> str:
    """``name`` usable as a file name.

    >>> safe_name("h2 skip/on:1")
    'h2_skip_on_1'
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class Doc:
    """Markdown and HTML written side by side."""

    def __init__(self, title: str) -> None:
        self.md: list[str] = [f"# {title}", ""]
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    def heading(self, text: str, level: int = 2) -> None:
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, md: str, html_table: str) -> None:
        self.md += [md, ""]
        self.html.append(html_table)

    def frame(self, df: pd.DataFrame, columns: Sequence[tuple[str, str]]) -> None:
        """``df[columns]`` as a table (see :func:`table`)."""
        self.table(*table(df, columns))

    def image(self, path: Path, rel: str, alt: str) -> None:
        self.md += [f"![{alt}]({rel})", ""]
        data = base64.b64encode(Path(path).read_bytes()).decode()
        self.html.append(f'<figure><img alt="{html.escape(alt)}" '
                         f'src="data:image/png;base64,{data}"/>'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")

    def pre(self, text: str) -> None:
        self.md += ["```", text, "```", ""]
        self.html.append(f"<pre>{html.escape(text)}</pre>")

    def render_md(self) -> str:
        return "\n".join(self.md) + "\n"

    def render_html(self, title: str) -> str:
        style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;"
                 "padding:2px 6px;text-align:right}th{background:#eee}img{max-width:48%;"
                 "margin:0.5%}figure{display:inline-block;width:48%;margin:0}"
                 "figure img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                f"</title><style>{style}</style></head><body>{''.join(self.html)}</body></html>\n")
