"""pipeline/html.py and the page writer of util/html.py: cells, tables, embedded PNGs, whole pages."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib.image
import numpy as np
from matplotlib.figure import Figure

from pipeline.html import PNG_URI_PREFIX, figure_data_uri, file_data_uri, format_value, html_table, image_tag
from util.html import HTML, html_document, write_html


def decode_png(uri: str) -> np.ndarray:
    """The image array of a PNG data URI (rows, columns, RGBA)."""
    assert uri.startswith(PNG_URI_PREFIX)
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(uri[len(PNG_URI_PREFIX):])), format="png")


def test_numbers_are_rounded_and_missing_values_named() -> None:
    assert format_value(0.12345) == "0.123" and format_value(np.float32(2.5), 1) == "2.5"
    assert format_value(float("nan")) == "n/a" and format_value(None, missing="–") == "–"
    assert format_value(np.float64("inf")) == "n/a"
    assert format_value(7) == "7" and format_value("wedge") == "wedge"


def test_table_cells_are_escaped_and_formatted() -> None:
    page = html_table(["a<b", "n"], [("<x>", 0.5), ("y", None)])
    assert page == ("<table><tr><th>a&lt;b</th><th>n</th></tr><tr><td>&lt;x&gt;</td><td>0.500</td></tr>"
                    "<tr><td>y</td><td>n/a</td></tr></table>")


def test_figure_uri_is_a_png_of_the_figure_size() -> None:
    figure = Figure(figsize=(2.0, 1.5))
    figure.add_subplot(1, 1, 1).imshow(np.eye(3))
    assert decode_png(figure_data_uri(figure, dpi=40)).shape[:2] == (60, 80)  # rows = 1.5 in x 40 dpi


def test_file_uri_embeds_the_file_bytes(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    matplotlib.image.imsave(png, np.zeros((5, 7)))
    uri = file_data_uri(png)
    assert base64.b64decode(uri[len(PNG_URI_PREFIX):]) == png.read_bytes()
    assert file_data_uri(tmp_path / "missing.png") is None
    assert image_tag(None, "maps <x>") == "<p class='missing'>(maps &lt;x&gt;: not available)</p>"
    assert image_tag(uri, "a", "50%") == f"<img src='{uri}' alt='a' style='max-width:50%'>"


def test_page_writer_writes_utf8_with_title_style_and_refresh(tmp_path: Path) -> None:
    document = html_document("loss < 1 ± 0.1", "<p>µ</p>", style="p { color: red; }", refresh=5)
    path = write_html(tmp_path / "sub" / "index.html", document)
    text = path.read_bytes().decode("utf-8")
    assert "<title>loss &lt; 1 ± 0.1</title>" in text and "<style>p { color: red; }</style>" in text
    assert "content='5'" in text and "<body><p>µ</p></body>" in text
    assert "refresh" not in html_document("t", "")


def test_image_row_page_uses_the_same_writer(tmp_path: Path) -> None:
    page = HTML(tmp_path / "web", "visuals")
    page.add_header("epoch 1")
    page.add_images(["images/a.png"], ["real_A"])
    text = page.save().read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html><html><head><meta charset='utf-8'><title>visuals</title>")
    assert "<h3>epoch 1</h3>" in text and 'href="images/a.png"' in text and (tmp_path / "web" / "images").is_dir()
