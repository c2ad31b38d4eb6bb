"""`markup.literal`: hostile strings go through Panel's own Markdown pane (and an HTML parser) as plain text."""

from __future__ import annotations

import html

import panel as pn
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.monitor.markup import literal, printable
from tests.parsed_html import ParsedHtml


def rendered_markdown(markdown: str) -> str:
    """The HTML a `pn.pane.Markdown` sends to the browser (Panel's default renderer, markdown-it, as configured)."""
    model = pn.pane.Markdown(markdown).get_root()
    return html.unescape(model.text)  # the model carries the HTML escaped once more, for its own transport


HOSTILE = [
    ("script", "<script>window.__pwned=1</script>"),
    ("img onerror", '<img src=x onerror="window.__pwned=1">'),
    ("svg onload", "<svg/onload=alert(1)>"),
    ("markdown link", "[click](javascript:alert(1))"),
    ("markdown image", "![x](javascript:alert(1))"),
    ("autolink", "<javascript:alert(1)>"),
    ("bare url", "www.example.com http://example.com/x"),
    ("reference link", "[x]\n\n[x]: javascript:alert(1)"),
    ("emphasis", "**bold** __also__ *it* _it_ ~~gone~~"),
    ("backticks", "`code` ``` fence ```"),
    ("heading after a line break", "ok\n# heading\n---"),
    ("indented code after a blank line", "ok\n\n    <b>code</b>"),
    ("table", "| a | b |\n|---|---|\n| <b>1</b> | 2 |"),
    ("html comment", "<!-- hidden --> shown"),
    ("ampersands", "&amp; &lt;b&gt; &#60;b&#62; & &&"),
    ("quotes", "\"double\" 'single' `back`"),
    ("math", "$x$ $$\\href{javascript:alert(1)}{y}$$"),
    ("emoji shortcode", ":smile: :+1:"),
    ("task list", "- [x] done"),
    ("backslashes", "\\<b\\> \\\\ \\*"),
    ("carriage return and tab", "a\r\nb\tc\x00d"),
    ("unicode", "caf\u00e9 \u4e2d\u6587 \U0001f600 \u202eevil \uff1cb\uff1e"),
    ("empty", ""),
]


def _spaced(value: str) -> str:
    """What `literal(value)` must read as: the value itself, with control characters as spaces."""
    return "".join(" " if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 else char for char in value)


@pytest.mark.parametrize(("value"), [value for _, value in HOSTILE], ids=[name for name, _ in HOSTILE])
def test_a_markdown_pane_shows_the_value_as_text(value: str) -> None:
    parsed = ParsedHtml(rendered_markdown(f"before {literal(value)} after"))
    assert parsed.tags in ([], ["p"])  # one paragraph: no link, image, emphasis, code, heading, table, math
    assert parsed.attributes == []
    assert parsed.text.strip() == f"before {_spaced(value)} after"


@pytest.mark.parametrize(("value"), [value for _, value in HOSTILE], ids=[name for name, _ in HOSTILE])
def test_html_text_and_attributes_show_the_value(value: str) -> None:
    parsed = ParsedHtml(f'<p title="{literal(value)}">{literal(value)}</p>')
    assert parsed.tags == ["p"]
    assert parsed.attributes == [("title", _spaced(value))]
    assert parsed.text == _spaced(value)


def test_inside_a_markdown_table_cell_the_value_stays_in_its_cell() -> None:
    value = "a | b <b>c</b>\n| d |"
    parsed = ParsedHtml(rendered_markdown(f"| k | v |\n|---|---|\n| one | {literal(value)} |"))
    assert parsed.tags.count("td") == 2 and "b" not in parsed.tags
    assert _spaced(value).strip() in parsed.text


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_any_text_reads_back_unchanged_from_markdown(value: str) -> None:
    parsed = ParsedHtml(rendered_markdown(f"x {literal(value)} x"))
    assert set(parsed.tags) <= {"p"}
    assert parsed.text.strip() == f"x {_spaced(value)} x"


TERMINAL = [
    ("window title (OSC 0)", "\x1b]0;pwned\x07", "\ufffd]0;pwned\ufffd"),
    ("clipboard (OSC 52)", "\x1b]52;c;cm0gLXJmIH4=\x1b\\", "\ufffd]52;c;cm0gLXJmIH4=\ufffd\\"),
    ("clear screen", "\x1b[2J\x1b[H", "\ufffd[2J\ufffd[H"),
    ("carriage return overwrite", "ok\rFAILED", "ok\ufffdFAILED"),
    ("backspaces", "unreachable\b\b\b\b\b\b\b\b\b\b\bhealthy", "unreachable" + "\ufffd" * 11 + "healthy"),
    ("C1 CSI", "\x9b2J", "\ufffd2J"),
    ("delete", "a\x7fb", "a\ufffdb"),
    ("bidi override", "evil\u202efdp.exe", "evil\ufffdfdp.exe"),
    ("bidi isolate", "\u2066x\u2069", "\ufffdx\ufffd"),
    ("line feed and tab stay", "a\tb\nc", "a\tb\nc"),
    ("unicode text stays", "Grüße 注文 🙂 عربى", "Grüße 注文 🙂 عربى"),
]


@pytest.mark.parametrize(("value", "shown"), [t[1:] for t in TERMINAL], ids=[t[0] for t in TERMINAL])
def test_a_terminal_is_shown_control_characters_never_given_them(value: str, shown: str) -> None:
    assert printable(value) == shown
