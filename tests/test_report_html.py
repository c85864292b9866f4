"""The shared pieces of the HTML reports: escaping, embedded PNGs, tables, pages, figure files."""

from __future__ import annotations

import base64
import doctest
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from iht.report import html as html_report
from iht.report.html import (
    PageFigure,
    escape,
    figure_html,
    figure_png,
    html_page,
    html_table,
    img_tag,
    write_figures,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Cells(HTMLParser):
    """The text of every <th>/<td>, row by row, and the class of each cell."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self.classes: list[list[str | None]] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
            self.classes.append([])
        elif tag in ("th", "td"):
            self._in_cell = True
            self.rows[-1].append("")
            self.classes[-1].append(dict(attrs).get("class"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.rows[-1][-1] += data


def _figure() -> Figure:
    fig = Figure(figsize=(2.0, 1.5))
    fig.subplots().plot([0, 1, 2], [1, 0, 1])
    return fig


def test_escape_text_and_attributes() -> None:
    assert escape("<b>R&D</b>") == "&lt;b&gt;R&amp;D&lt;/b&gt;"
    assert escape("say \"hi\" & 'bye'") == "say &quot;hi&quot; &amp; &#x27;bye&#x27;"
    assert escape(0.25) == "0.25" and escape(None) == "None"


def test_embedded_png_decodes_to_the_figure_bytes() -> None:
    png = figure_png(_figure())
    assert png.startswith(PNG_MAGIC)
    assert figure_png(_figure()) == png  # no date/software metadata: same figure, same bytes
    tag = img_tag(png, 'loss < 1 "final"')
    match = re.fullmatch(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)">', tag)
    assert match is not None
    assert base64.b64decode(match.group(1), validate=True) == png
    assert match.group(2) == "loss &lt; 1 &quot;final&quot;"


def test_figure_html_holds_image_caption_and_anchor() -> None:
    png = figure_png(_figure())
    plain = figure_html(png, "Loss", "a < b")
    assert plain.startswith("<figure><img ") and plain.endswith(
        "<figcaption>a &lt; b</figcaption></figure>"
    )
    assert img_tag(png, "Loss") in plain
    anchored = figure_html(png, "A & B", "c", element_id="loss", heading=True)
    assert anchored.startswith('<figure id="loss"><h3>A &amp; B</h3><img ')


def test_table_from_a_dataframe() -> None:
    frame = pd.DataFrame({"method": ["<dense>", "iht & co"], "acc": [0.95, 0.9]})
    rows = [[escape(m), f"{a:.2f}"] for m, a in zip(frame["method"], frame["acc"], strict=True)]
    table = html_table(["method <name>", "acc"], rows, text_cols=(0,))
    assert table.startswith("<table>\n<tr><th") and table.endswith("</tr>\n</table>")
    parsed = _Cells()
    parsed.feed(table)
    assert parsed.rows == [["method <name>", "acc"], ["<dense>", "0.95"], ["iht & co", "0.90"]]
    assert parsed.classes == [["text", None]] * 3
    # Cells are HTML as given (markup kept); the header is plain text (escaped).
    marked = html_table(["<h>"], [['<span class="x">1</span>']])
    assert "<th>&lt;h&gt;</th>" in marked and '<td><span class="x">1</span></td>' in marked


def test_page_is_self_contained() -> None:
    png = figure_png(_figure())
    page = html_page("a <report>", "body { color: red; }", ["<h1>T</h1>", img_tag(png, "f")])
    assert page.startswith("<!DOCTYPE html>\n") and page.endswith("</body></html>\n")
    assert "<title>a &lt;report&gt;</title>" in page
    assert "<style>body { color: red; }</style></head><body>\n<h1>T</h1>\n<img " in page
    assert "<link" not in page and "<script" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_write_figures_writes_pngs_and_removes_skipped_ones(tmp_path: Path) -> None:
    directory = tmp_path / "figures"
    png = figure_png(_figure())
    write_figures(directory, [PageFigure("a", "A", png, ""), PageFigure("b", "B", png, "")])
    assert (directory / "a.png").read_bytes() == png and (directory / "b.png").exists()
    write_figures(
        directory, [PageFigure("a", "A", None, "skipped"), PageFigure("b", "B", b"x", "")]
    )
    assert not (directory / "a.png").exists()
    assert (directory / "b.png").read_bytes() == b"x"
    assert sorted(p.name for p in directory.iterdir()) == ["b.png"]  # no temporary files left


def test_docstring_examples() -> None:
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(html_report, globs=vars(html_report)):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
