"""Strings from agents (or people) as literal text: inside the dashboard's Markdown and HTML panes, and on a
terminal."""

from __future__ import annotations

import string

__all__ = ["code", "literal", "printable"]

# Every ASCII punctuation character becomes a numeric character reference. In HTML that is the escaping
# html.escape does, and more; in Markdown (CommonMark, markdown-it) a character reference is always text,
# never structure: no emphasis, link, image, heading, table cell, math (`$`), emoji (`:x:`) or raw HTML can
# be spelled with it. Line breaks and other control characters become spaces, so that a value can neither
# end the paragraph it sits in nor start a block (an indented code block, a list, a table row).
# Not for code spans or code blocks: Markdown leaves references there undecoded (the value would show as
# `&#60;`); literal text goes into `<code>` elements instead.
_LITERAL = {ord(char): f"&#{ord(char)};" for char in string.punctuation}
_LITERAL.update({code: " " for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))})


def literal(value: object) -> str:
    """`value` as text that Markdown and HTML show exactly as it is (and, in an attribute, as its value)."""
    return str(value).translate(_LITERAL)


def code(value: object) -> str:
    """`value` as literal text in a `<code>` element: what a Markdown code span would be, had it decoded references."""
    return f"<code>{literal(value)}</code>"


# On a terminal, control characters are the markup: ESC starts sequences that move the cursor, clear the
# screen, retitle the window or (OSC 52) write the clipboard, and a carriage return overwrites the line. Each
# becomes U+FFFD (so a reader sees that something was there), except the line feed and tab that the CLI's
# own output is made of; so do the bidirectional overrides and isolates, which reorder what a line shows.
_UNPRINTABLE = {code: "\ufffd" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if code not in (0x0A, 0x09)}
_UNPRINTABLE.update({code: "\ufffd" for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def printable(text: str) -> str:
    """`text` with nothing a terminal would act on instead of show."""
    return text.translate(_UNPRINTABLE)
