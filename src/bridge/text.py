"""Text from the wire, made fit for everything past the protocol layer.

The SIP parser decodes a message with `surrogateescape`: a byte that is not UTF-8 becomes a
lone surrogate, so that the message can be sent on as it came. Past the SIP layer (the call
runner, the API, the app clients' WebSocket, the event outbox) text must be encodable as
UTF-8, or the first JSON response or SQLite row that carries it fails. `valid_utf8` turns
such text back into its bytes and decodes them with U+FFFD for each sequence that is not
UTF-8.

`ascii_digits` is the check for a number read from the wire: `str.isdigit` is also true for
"²" and other digits that `int()` and `float()` refuse, so "isdigit, then int" raises.
"""

from __future__ import annotations

import re

# What XML 1.0 cannot carry (the carrier's TwiML says names and prompts): C0 controls but tab
# and line breaks, lone surrogates, U+FFFE and U+FFFF.
NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

__all__ = ["NOT_IN_XML", "ascii_digits", "valid_utf8"]


def valid_utf8(text: str) -> str:
    """`text` itself when it can be encoded as UTF-8 (the common case, checked cheaply);
    otherwise with U+FFFD in place of what cannot."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:  # the bytes the parser read, each sequence that is not UTF-8 replaced
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # a surrogate that no byte made
            return text.encode("utf-8", "replace").decode("utf-8")
    return text


def ascii_digits(text: str) -> bool:
    """Whether `text` is one or more of 0-9 and nothing else (what `int()` then takes)."""
    return text.isascii() and text.isdigit()
