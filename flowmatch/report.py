"""Self-contained HTML reports: sections of text, tables and matplotlib figures in one file;
and plain-text tables for terminals (:func:`format_table`).

Figures are embedded as base64 PNG ``data:`` URIs and the stylesheet is inline, so the file can
be mailed, archived or opened from any folder without the files it was made from.

>>> from matplotlib.figure import Figure
>>> report = Report("digits-mlp")
>>> report.add_section("Scores")
>>> report.add_table([{"method": "affine", "stitched acc": 0.967}], caption="test split")
>>> fig = Figure(); _ = fig.add_subplot().plot([0, 1], [1, 0])
>>> report.add_figure(fig, caption="a line")
>>> path = report.to_html("runs/demo/report.html")  # atomic write
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowmatch._io import atomic_write_text

__all__ = ["Report", "figure_png", "format_table", "format_value"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;
background:#fafafa;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:1.5rem 2rem 4rem}
h1{font-size:1.7rem;margin:.2rem 0}h2{font-size:1.3rem;margin-top:2.2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}
.subtitle{color:#555;margin:0 0 1rem}
nav ol{columns:2;font-size:.92rem;color:#333}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem;background:#fff}
caption{caption-side:top;text-align:left;color:#444;font-size:.88rem;padding:.3rem 0}
th,td{border:1px solid #ddd;padding:.3rem .6rem}th{background:#f0f0f3;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f8f8fb}
figure{margin:1rem 0;background:#fff;border:1px solid #e4e4e7;padding:.6rem;display:inline-block;
max-width:100%}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.88rem;color:#444;margin-top:.4rem;max-width:70rem}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4rem .8rem;font-size:.9rem}
pre{background:#f3f3f6;padding:.6rem;overflow-x:auto;font-size:.85rem}
"""


def format_value(value: Any) -> str:
    """Table cell text: floats to 4 significant digits, ``None``/NaN as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Plain-text table of ``rows`` (mappings) with right-aligned columns: ``columns`` or the
    keys of the first row; floats to 4 significant digits, a missing key as an empty cell."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) for v, w in zip(values, widths))

    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, cells)])


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib Figure (no timestamp in the PNG metadata).

    The figure is closed afterwards when it belongs to pyplot, so a long report does not keep
    every figure alive.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    import sys

    if "matplotlib.pyplot" in sys.modules:  # only pyplot keeps a registry of open figures
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


@dataclass(frozen=True)
class _Block:
    kind: str  # "section" | "html"
    html: str
    title: str = ""


class Report:
    """An HTML report built block by block, written as one self-contained file.

    Parameters
    ----------
    title : heading of the page and its ``<title>``.
    subtitle : one line under the heading (e.g. pair, seed, versions).

    Attributes
    ----------
    n_figures, n_tables : numbers of figures and tables added so far.
    images : list of ``(caption, png_bytes)``, one per figure, in order.
    """

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self._blocks: list[_Block] = []
        self.n_figures = 0
        self.n_tables = 0
        self.images: list[tuple[str, bytes]] = []

    # ------------------------------------------------------------------ content
    def add_section(self, title: str) -> Report:
        """Start a new section (an ``<h2>`` listed in the table of contents)."""
        anchor = f"s{sum(b.kind == 'section' for b in self._blocks) + 1}"
        self._blocks.append(
            _Block("section", f'<h2 id="{anchor}">{html.escape(title)}</h2>', title)
        )
        return self

    def add_text(self, text: str) -> Report:
        """A paragraph of plain text (escaped; blank lines separate paragraphs)."""
        for para in str(text).split("\n\n"):
            if para.strip():
                self._blocks.append(_Block("html", f"<p>{html.escape(para.strip())}</p>"))
        return self

    def add_note(self, text: str) -> Report:
        """A highlighted note, e.g. why a figure is missing."""
        self._blocks.append(_Block("html", f'<p class="note">{html.escape(str(text))}</p>'))
        return self

    def add_code(self, text: str) -> Report:
        """Preformatted text (a command, a config, a log)."""
        self._blocks.append(_Block("html", f"<pre>{html.escape(str(text))}</pre>"))
        return self

    def add_html(self, fragment: str) -> Report:
        """A trusted HTML fragment inserted verbatim (e.g. ``ComparisonReport.to_html()``).

        A fragment that contains ``<table`` counts as a table."""
        self._blocks.append(_Block("html", str(fragment)))
        self.n_tables += str(fragment).count("<table")
        return self

    def add_table(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
        caption: str | None = None,
    ) -> Report:
        """A table from a list of dicts (one per row); columns default to the first row's keys.

        Parameters
        ----------
        rows : row mappings column → value; missing cells are shown as an en dash.
        columns : the columns and their order.
        caption : text above the table.
        """
        if isinstance(rows, Mapping):
            raise TypeError("rows must be a sequence of mappings (one per row), not one mapping")
        rows = list(rows)
        cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
        esc = html.escape
        head = "".join(f"<th>{esc(str(c))}</th>" for c in cols)
        body = []
        for r in rows:
            if not isinstance(r, Mapping):
                raise TypeError(f"each row must be a mapping, got {type(r).__name__}")
            cells = []
            for c in cols:
                v = r.get(c)
                num = isinstance(v, (int, float)) and not isinstance(v, bool)
                cls = ' class="num"' if num else ""
                cells.append(f"<td{cls}>{esc(format_value(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        cap = f"<caption>{esc(caption)}</caption>" if caption else ""
        self._blocks.append(
            _Block(
                "html",
                f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>",
            )
        )
        self.n_tables += 1
        return self

    def add_figure(
        self, figure: Any, caption: str | None = None, *, alt: str | None = None, dpi: int = 110
    ) -> Report:
        """Embed a figure as a base64 PNG.

        Parameters
        ----------
        figure : a matplotlib Figure, PNG bytes, or the path of a PNG file.
        caption : text under the figure.
        alt : alternative text (default: the caption).
        dpi : resolution for matplotlib figures.
        """
        if isinstance(figure, (str, os.PathLike)):
            png = Path(figure).read_bytes()
        elif isinstance(figure, (bytes, bytearray)):
            png = bytes(figure)
        elif hasattr(figure, "savefig"):
            png = figure_png(figure, dpi=dpi)
        else:
            raise TypeError(
                f"figure must be a matplotlib Figure, PNG bytes or a path, got {type(figure)}"
            )
        if not png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("figure is not a PNG image")
        data = base64.b64encode(png).decode("ascii")
        esc = html.escape
        text = caption or ""
        cap = f"<figcaption>{esc(text)}</figcaption>" if text else ""
        self._blocks.append(
            _Block(
                "html",
                f'<figure><img src="data:image/png;base64,{data}" '
                f'alt="{esc(alt or text or "figure")}">{cap}</figure>',
            )
        )
        self.n_figures += 1
        self.images.append((text, png))
        return self

    # ------------------------------------------------------------------ output
    def render(self) -> str:
        """The whole page as one HTML string."""
        esc = html.escape
        sections = [b for b in self._blocks if b.kind == "section"]
        toc = ""
        if len(sections) > 1:
            items = "".join(
                f'<li><a href="#s{i}">{esc(b.title)}</a></li>' for i, b in enumerate(sections, 1)
            )
            toc = f"<nav><ol>{items}</ol></nav>"
        sub = f'<p class="subtitle">{esc(self.subtitle)}</p>' if self.subtitle else ""
        body = "\n".join(b.html for b in self._blocks)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="generator" content="flowmatch">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{_CSS}</style></head>\n"
            f"<body><main><h1>{esc(self.title)}</h1>{sub}{toc}\n{body}\n</main></body></html>\n"
        )

    def to_html(self, path: str | os.PathLike) -> Path:
        """Write :meth:`render` to ``path`` atomically (temporary file, then rename); an
        existing ``path`` must be a report flowmatch wrote (:mod:`flowmatch.outputs`)."""
        return atomic_write_text(path, self.render(), kind="report")

    def __repr__(self) -> str:
        return f"Report({self.title!r}, figures={self.n_figures}, tables={self.n_tables})"
