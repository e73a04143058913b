"""util/html.py: the training page's structure, escaping, links and refresh."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from util.html import HTML


class PageParser(HTMLParser):
    """Collects the tags (with attributes) and the text of a page, and checks that tags nest."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []
        self.text: list[str] = []
        self.closed_in_order = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in ("meta", "img", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.closed_in_order &= bool(self.open) and self.open.pop() == tag

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_page_lists_headers_then_image_rows_linking_to_their_targets(tmp_path: Path) -> None:
    page = HTML(tmp_path / "web", "Experiment <coronal>")
    assert page.get_image_dir() == tmp_path / "web" / "images" and page.get_image_dir().is_dir()
    page.add_header("epoch0001 iter00000010")
    page.add_images(["images/a.png", "images/b.png"], ["fake_ct", "real & mask"], ["images/a_big.png", "b.html"])
    page.add_header("epoch0001 iter00000005")
    page.add_images(["images/c.png"], ["c"], width=128)
    path = page.save()
    assert path == tmp_path / "web" / "index.html"
    parsed = parse(path)
    assert parsed.closed_in_order and parsed.open == []
    assert [tag for tag, _ in parsed.tags if tag in ("h3", "table", "a", "img")] == [
        "h3", "table", "a", "img", "a", "img", "h3", "table", "a", "img"]
    links = [attrs["href"] for tag, attrs in parsed.tags if tag == "a"]
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert links == ["images/a_big.png", "b.html", "images/c.png"]  # without links, each image links to itself
    assert images == ["images/a.png", "images/b.png", "images/c.png"]
    assert [attrs["style"].split(";")[0] for tag, attrs in parsed.tags if tag == "img"] == [
        "width:256px", "width:256px", "width:128px"]
    assert parsed.text == ["Experiment <coronal>", "epoch0001 iter00000010", "fake_ct", "real & mask",
                           "epoch0001 iter00000005", "c"]  # escaped in the file, the same text once parsed
    assert "<coronal>" not in path.read_text(encoding="utf-8")
    assert not any(tag == "meta" and attrs.get("http-equiv") for tag, attrs in parsed.tags)


def test_refresh_adds_a_reload_and_save_rewrites_the_page(tmp_path: Path) -> None:
    page = HTML(tmp_path, "t", refresh=60)
    page.add_header("first")
    page.save()
    page.add_header("second")
    parsed = parse(page.save())
    assert ("meta", {"http-equiv": "refresh", "content": "60"}) in parsed.tags
    assert ("meta", {"charset": "utf-8"}) in parsed.tags
    assert parsed.text == ["t", "first", "second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "index.html"]  # no temporary left
