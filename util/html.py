"""Static HTML pages: the one page writer (``html_document``, ``write_html``) and a minimal page of image
rows (pix2pix ``util/html.py`` without the dominate dependency)."""

from __future__ import annotations

import html
from pathlib import Path

from util.fileio import atomic_write


def html_document(title: str, body: str, style: str = "", refresh: int = 0) -> str:
    """A whole UTF-8 page: ``title`` (escaped), an optional ``<style>`` block, ``body`` as given (HTML);
    ``refresh`` > 0 reloads the page in the browser every that many seconds."""
    meta = f"<meta http-equiv='refresh' content='{refresh}'>" if refresh > 0 else ""
    css = f"<style>{style}</style>" if style else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>{meta}<title>{html.escape(title)}</title>{css}"
            f"</head><body>{body}</body></html>")


def write_html(path: str | Path, document: str) -> Path:
    """Write ``document`` to ``path`` as UTF-8, atomically (creating its folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, encoding="utf-8") as handle:
        handle.write(document)
    return path


class HTML:
    """Page ``<web_dir>/index.html`` with headers and rows of images stored under ``<web_dir>/images``.

    The page is rewritten atomically by :meth:`save`; ``refresh`` > 0 reloads it in the browser
    every that many seconds.
    """

    def __init__(self, web_dir: str | Path, title: str, refresh: int = 0) -> None:
        self.web_dir = Path(web_dir)
        self.img_dir = self.web_dir / "images"
        self.img_dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.refresh = refresh
        self.parts: list[str] = []

    def get_image_dir(self) -> Path:
        """Folder the images of the page live in."""
        return self.img_dir

    def add_header(self, text: str) -> None:
        """A section header."""
        self.parts.append(f"<h3>{html.escape(text)}</h3>")

    def add_images(self, images: list[str], captions: list[str], links: list[str] | None = None,
                   width: int = 256) -> None:
        """One row of images (paths relative to ``web_dir``) with captions; each links to ``links[i]``."""
        links = links or images
        cells = "".join(
            f'<td style="padding:4px;text-align:center"><a href="{html.escape(link)}">'
            f'<img src="{html.escape(image)}" style="width:{width}px;image-rendering:pixelated"></a>'
            f"<br>{html.escape(caption)}</td>"
            for image, caption, link in zip(images, captions, links))
        self.parts.append(f'<table style="table-layout:fixed"><tr>{cells}</tr></table>')

    def render(self) -> str:
        """The page as a string."""
        return html_document(self.title, "\n" + "\n".join(self.parts) + "\n", refresh=self.refresh) + "\n"

    def save(self) -> Path:
        """Write ``index.html`` atomically; returns its path."""
        return write_html(self.web_dir / "index.html", self.render())
