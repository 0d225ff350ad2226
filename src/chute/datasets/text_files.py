"""Text files in an encoding other than the one they are read with, told before they are parsed."""

from __future__ import annotations

import codecs
from typing import Any


def wide_encoding(path: str) -> str | None:
    """``UTF-16``/``UTF-32`` when the start of ``path`` (gzipped or not) is text in that encoding."""
    import gzip

    opener: Any = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None  # the reader's own error says what is wrong with the file
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "UTF-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16"
    pairs = len(head) // 2
    if pairs >= 8 and b"\0" in head:
        # Without a mark: ASCII text in UTF-16 has a NUL in one byte of nearly every pair (in UTF-32,
        # three of every four bytes). Text in a one-byte encoding has none.
        if head.count(0) >= 0.7 * 0.75 * len(head):
            return "UTF-32"
        if max(head[0::2].count(0), head[1::2].count(0)) >= 0.7 * pairs:
            return "UTF-16"
    return None
