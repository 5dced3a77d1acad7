"""Text from Redis or the table, made safe to print on an operator's terminal.

Consumer names, group names, dead-letter fields and stored values are chosen by whoever can publish or create a
consumer; printed raw, an escape sequence among them would move the cursor, recolour or clear the operator's
screen, or forge lines. Every control character (C0, DEL, C1) is shown as a visible escape instead.
"""

from __future__ import annotations

import unicodedata


def printable(text: str) -> str:
    """`text` with every control or format character (ESC, BEL, CR, U+202E...) shown as `\\xNN` / `\\uNNNN`."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char == " " else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100 and unicodedata.category(char) == "Cc":
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
