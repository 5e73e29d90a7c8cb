"""The HTML report: structure, escaping, embedded figures, atomic writes, and a headless
Chromium rendering in which every image must decode."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from flowmatch.report import Report, figure_png, format_value

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Injected only into the copy that the browser renders: after load, write every image's decoded
# size, the size it is displayed at, and the number of tables into the DOM, which --dump-dom
# then prints.
_PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images).map(
    i => [i.complete, i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight]);
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images: imgs, tables: document.querySelectorAll("table").length,
                                    rows: document.querySelectorAll("tbody tr").length});
  document.body.appendChild(out);
});
</script>"""


def _figure(width: float = 3.0, height: float = 2.0) -> Figure:
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    ax.plot(np.arange(5), np.arange(5) ** 2)
    return fig


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]


#: The browser window of the rendering checks: a laptop screen.
WINDOW = (1400, 1000)


def render_in_chromium(html_path: Path, tmp_path: Path) -> dict:
    """Render ``html_path`` headless in a :data:`WINDOW`-sized window and return
    ``{"images": [[complete, w, h, shown_w, shown_h], ...], "tables": n, "rows": n}`` as
    measured by the browser (``w, h``: decoded size; ``shown_*``: size on the page)."""
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"))
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=10000",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--dump-dom",
        probe.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe output from chromium (rc={done.returncode}): {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def assert_legible(images: list) -> None:
    """Every figure decodes, is the size of a figure (not a sliver, not a poster) and is shown
    at no less than 3/4 of its size, so that its 8-point text (12 px at 110 dpi) stays at 9 px
    or more on the page."""
    for ok, w, h, shown_w, shown_h in images:
        assert ok and w > 0, "an image did not decode"
        assert 500 <= w <= WINDOW[0] and 250 <= h <= 1100, (w, h)
        assert shown_w / w >= 0.75 and shown_h / h >= 0.75, (w, h, shown_w, shown_h)


# ---------------------------------------------------------------------- units
def test_format_value():
    assert format_value(None) == "–"
    assert format_value(float("nan")) == "–"
    assert format_value(0.123456) == "0.1235"
    assert format_value(3) == "3"
    assert format_value(True) == "yes"
    assert format_value(1.5e7) == "1.500e+07"


def test_text_and_tables_are_escaped_and_counted():
    r = Report("a <b> title", "sub & title")
    r.add_section("one").add_text("x < y\n\nsecond <script>alert(1)</script>")
    r.add_table([{"m": "<i>", "v": 0.5}, {"m": "b"}], caption="cap & more")
    r.add_section("two").add_note("skipped <figure>")
    text = r.render()
    assert "<script>" not in text
    assert "&lt;script&gt;" in text and "&lt;i&gt;" in text and "cap &amp; more" in text
    assert text.count("<p>") == 2  # blank line = two paragraphs
    assert text.count("<table>") == 1 and r.n_tables == 1
    assert "<td>–</td>" in text  # the missing cell
    assert '<td class="num">0.5</td>' in text
    assert 'href="#s1"' in text and 'id="s2"' in text  # table of contents with anchors
    assert "<title>a &lt;b&gt; title</title>" in text


def test_table_columns_and_bad_rows():
    r = Report("t")
    r.add_table([{"a": 1, "b": 2}], columns=["b", "a"])
    assert re.search(r"<th>b</th><th>a</th>", r.render())
    with pytest.raises(TypeError, match="sequence of mappings"):
        r.add_table({"a": 1})
    with pytest.raises(TypeError, match="mapping"):
        r.add_table([[1, 2]])


def test_figures_embed_decodable_pngs(tmp_path):
    r = Report("figs")
    r.add_figure(_figure(3.0, 2.0), caption="first", dpi=100)
    png = figure_png(_figure(4.0, 1.0), dpi=50)
    r.add_figure(png, caption="bytes")
    (tmp_path / "f.png").write_bytes(png)
    r.add_figure(tmp_path / "f.png")
    pngs = _embedded_pngs(r.render())
    assert r.n_figures == 3 and len(pngs) == 3
    assert _png_size(pngs[0]) == (300, 200)
    assert _png_size(pngs[1]) == _png_size(pngs[2]) == (200, 50)
    assert [c for c, _ in r.images] == ["first", "bytes", ""]
    assert [p for _, p in r.images] == pngs
    import matplotlib.image

    img = matplotlib.image.imread(io.BytesIO(pngs[0]), format="png")
    assert img.shape[:2] == (200, 300)
    assert float(img[..., :3].std()) > 0  # something was drawn
    with pytest.raises(ValueError, match="not a PNG"):
        r.add_figure(b"GIF89a...")
    with pytest.raises(TypeError, match="matplotlib Figure"):
        r.add_figure(42)


def test_png_is_reproducible():
    assert figure_png(_figure()) == figure_png(_figure())


def test_to_html_is_atomic_and_complete(tmp_path):
    path = tmp_path / "sub" / "report.html"
    r = Report("x").add_text("hello")
    assert r.to_html(path) == path
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary left


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    Report("old").to_html(path)
    before = path.read_bytes()

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(KeyboardInterrupt):
        Report("new").to_html(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# ---------------------------------------------------------------------- browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_chromium_renders_every_image_and_table(tmp_path):
    r = Report("rendered")
    r.add_section("figures")
    r.add_figure(_figure(3.0, 2.0), caption="a", dpi=100)
    r.add_figure(_figure(5.0, 2.0), caption="b", dpi=80)
    r.add_section("tables")
    r.add_table([{"method": "x", "score": 0.9}, {"method": "y", "score": 0.8}], caption="t")
    r.add_html("<table><tbody><tr><td>fragment</td></tr></tbody></table>")
    path = r.to_html(tmp_path / "report.html")
    seen = render_in_chromium(path, tmp_path)
    assert seen["images"] == [[True, 300, 200, 300, 200], [True, 400, 160, 400, 160]]
    assert seen["tables"] == 2 and seen["rows"] == 3


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_chromium_probe_detects_a_broken_image(tmp_path):
    """The browser check can fail: a corrupt embedded PNG decodes to width 0."""
    path = tmp_path / "broken.html"
    bad = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()
    path.write_text(
        f'<!DOCTYPE html><html><body><img src="data:image/png;base64,{bad}"></body></html>'
    )
    seen = render_in_chromium(path, tmp_path)
    assert seen["images"][0][1] == 0
    with pytest.raises(AssertionError, match="did not decode"):
        assert_legible(seen["images"])


def test_legibility_check_refuses_a_squashed_figure():
    """A figure twice the window's width is shown at half its size: refused."""
    with pytest.raises(AssertionError):
        assert_legible([[True, 2315, 484, 1115, 233]])
    assert_legible([[True, 1375, 924, 1115, 749]])  # a 12.5-inch figure at 110 dpi passes
