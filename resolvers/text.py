"""Checks on text that other people see as a name: display names, device names, group titles."""

from __future__ import annotations

import re
import unicodedata

from resolvers.errors import BadUserInput

# Control (Cc), format (Cf: bidi overrides and isolates, zero-width characters, the BOM) and
# surrogate (Cs) characters: in a name they reorder or hide what others read ("evil\u202egnp.exe"
# shows as "evilexe.png") or make two different names look the same. Whitespace is collapsed
# before this check, so tabs and newlines never reach it.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def check_visible_text(text: str, *, what: str) -> str:
    """`text` unchanged; `BadUserInput` if it holds control, format or zero-width characters."""
    if not text.isascii() or not text.isprintable():
        for char in text:
            if unicodedata.category(char) in _REFUSED_CATEGORIES:
                raise BadUserInput(f"{what} may not contain invisible or control characters (found U+{ord(char):04X}).")
    return text


# NUL and unpaired UTF-16 surrogates: PostgreSQL refuses both in text, and UTF-8 cannot encode
# a surrogate at all. Refused in every string input (graph/input_rules.py) and in text from
# elsewhere (a before-send hook's replacement) rather than failing deep in a database call.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> bool:
    """Whether `text` holds a character no text column can store."""
    if text.isascii():
        return "\x00" in text
    return _UNSTORABLE.search(text) is not None
