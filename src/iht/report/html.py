"""Self-contained HTML pages with embedded figures, as written by every ``iht`` report.

A page is one file: inline CSS and each figure as a base64 PNG data URI, with no external
assets, so it can be mailed or archived alone. The study report (:mod:`iht.report.study`), the
train report (:mod:`iht.report.train`), the comparison (:mod:`iht.report.compare`) and the
oracle figure (:mod:`iht.report.oracle`) build their pages from these pieces.

Example::

    >>> png = figure_png(fig)                                        # doctest: +SKIP
    >>> page = html_page("demo", PAGE_CSS, [figure_html(png, "Loss", "The loss.")])  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..storage.files import atomic_write_bytes, make_own_dir

if TYPE_CHECKING:  # matplotlib is imported by the modules that draw, not here
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "PAGE_CSS",
    "TABLE_CSS",
    "PageFigure",
    "escape",
    "figure_html",
    "figure_png",
    "html_page",
    "html_table",
    "img_tag",
    "write_figures",
]

#: Resolution of every PNG (figures are sized in inches).
DPI = 110

#: The page body: font, width, margins.
PAGE_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
"""

#: Tables of :func:`html_table`: numbers right-aligned, ``text_cols`` left-aligned.
TABLE_CSS = """table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
"""


@dataclass(frozen=True)
class PageFigure:
    """One figure of a page, stored as ``<name>.png`` beside it.

    Attributes:
        name: the file stem and the HTML anchor.
        title: heading and alt text.
        png: the image, or None when the figure is skipped (``caption`` says why).
        caption: the text under the figure.
    """

    name: str
    title: str
    png: bytes | None
    caption: str


def figure_png(fig: Figure, *, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes, without the "Software"/date metadata (same data, same bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def write_figures(directory: Path, figures: Iterable[PageFigure]) -> None:
    """Write each figure to ``directory/<name>.png`` atomically; a skipped one's old file goes.

    ``directory`` is created if missing, so it always matches the page.
    """
    make_own_dir(directory)
    for fig in figures:
        path = directory / f"{fig.name}.png"
        if fig.png is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(path, fig.png)


def escape(text: object) -> str:
    """``str(text)`` escaped for HTML text and quoted attribute values."""
    return html.escape(str(text))


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def figure_html(
    png: bytes, title: str, caption: str, *, element_id: str | None = None, heading: bool = False
) -> str:
    """A ``<figure>``: the embedded PNG (alt text ``title``) and its caption.

    Args:
        png: the image.
        title: the alt text, and the ``<h3>`` inside the figure when ``heading``.
        caption: plain text, escaped here.
        element_id: the figure's ``id`` (an anchor), if any.
        heading: start the figure with ``<h3>title</h3>``.
    """
    opening = "<figure>" if element_id is None else f'<figure id="{escape(element_id)}">'
    head = f"<h3>{escape(title)}</h3>" if heading else ""
    return (
        f"{opening}{head}{img_tag(png, title)}<figcaption>{escape(caption)}</figcaption></figure>"
    )


def html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, text_cols: Collection[int] = ()
) -> str:
    """A ``<table>`` with one header row; see :data:`TABLE_CSS`.

    Args:
        header: column titles, plain text (escaped here).
        rows: cells as HTML: escape plain text with :func:`escape` first.
        text_cols: columns aligned left (class ``text``); the others are numbers.

    Example:
        >>> html_table(["name", "n"], [["a &amp; b", "2"]], text_cols=(0,))
        '<table>\\n<tr><th class="text">name</th><th>n</th></tr>\\n<tr><td class="text">a &amp; b</td><td>2</td></tr>\\n</table>'
    """

    def cell(tag: str, i: int, value: str) -> str:
        cls = ' class="text"' if i in text_cols else ""
        return f"<{tag}{cls}>{value}</{tag}>"

    head = "".join(cell("th", i, escape(h)) for i, h in enumerate(header))
    body = "\n".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def html_page(title: str, css: str, body: Iterable[str]) -> str:
    """A whole page: doctype, ``<title>`` (escaped here), inline ``css``, the body's HTML parts.

    The parts are joined by newlines; the page ends with a newline.
    """
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                f"<title>{escape(title)}</title>",
                f"<style>{css}</style></head><body>",
                *body,
                "</body></html>",
            ]
        )
        + "\n"
    )
