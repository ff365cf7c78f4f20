"""Random identifiers for SIP messages: tags, branches, Call-IDs.

RFC 3261 §19.3 wants tags cryptographically random; they come from `os.urandom`, but read
4 KiB at a time and sliced, because a call makes about ten of them and one system call each
was a visible share of the CPU per call (`bench/sip_inproc.py`). The event loop is the only
thread that calls this.
"""

from __future__ import annotations

import os

_CHUNK = 4096
_buffer = b""
_position = 0


def random_bytes(nbytes: int) -> bytes:
    """`nbytes` random bytes (like `secrets.token_bytes(nbytes)`), from the buffer."""
    global _buffer, _position
    end = _position + nbytes
    if end > len(_buffer):
        _buffer, _position, end = os.urandom(max(_CHUNK, nbytes)), 0, nbytes
    chunk = _buffer[_position:end]
    _position = end
    return chunk


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as lower-case hex (like `secrets.token_hex(nbytes)`)."""
    return random_bytes(nbytes).hex()
