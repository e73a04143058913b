"""Building blocks of the self-contained HTML reports (the demo run's and one scan's): numbers as
text, tables, and images embedded as base64 PNG ``data:`` URIs so a page can be copied on its own.
The page itself is written by ``util.html.write_html``."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PNG_URI_PREFIX = "data:image/png;base64,"


def format_value(value: Any, digits: int = 3, missing: str = "n/a") -> str:
    """A table cell as text: floats with ``digits`` decimals, ``missing`` for None and non-finite numbers."""
    if value is None:
        return missing
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}" if np.isfinite(value) else missing
    return str(value)


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table of text cells (escaped; numbers through ``format_value``)."""
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(cell))}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image_tag(uri: str | None, alt: str, width: str = "100%") -> str:
    """An ``<img>`` of a data URI, or a visible "not available" note when ``uri`` is None."""
    if uri is None:
        return f"<p class='missing'>({html.escape(alt)}: not available)</p>"
    return f"<img src='{uri}' alt='{html.escape(alt)}' style='max-width:{width}'>"


def figure_data_uri(figure: Figure, dpi: int = 80) -> str:
    """PNG of a matplotlib figure as a ``data:`` URI."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return PNG_URI_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_data_uri(path: Path) -> str | None:
    """A PNG file as a ``data:`` URI (None when missing)."""
    if not path.is_file():
        return None
    return PNG_URI_PREFIX + base64.b64encode(path.read_bytes()).decode("ascii")
