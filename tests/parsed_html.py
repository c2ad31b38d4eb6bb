"""HTML as a browser's parser reads it: the elements it makes and the text it shows (for escaping tests)."""

from __future__ import annotations

from html.parser import HTMLParser

__all__ = ["ParsedHtml"]


class ParsedHtml(HTMLParser):
    """The start tags, their attributes, and the text outside <script> and <style> of an HTML page or fragment."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text = ""
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs

    def handle_data(self, data: str) -> None:
        if self.lasttag not in ("script", "style"):
            self.text += data
