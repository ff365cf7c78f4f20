"""G.711 (PCMU / PCMA) for the media engine, and the one import of `audioop` in the package.

The SIP side of the engine speaks G.711 only (DESIGN.md, "Media"). The mixer works on 16-bit
signed little-endian linear PCM at 8 kHz, 20 ms frames (160 samples, 320 bytes); this module
turns payloads into such frames and back. Everything goes through `audioop`'s C loops: decoding
a 20 ms frame costs ~0.3 µs and encoding ~1.5 µs here, a Python or numpy round trip costs far
more for frames this small.

`audioop` is deprecated in Python 3.11/3.12 and was removed from the stdlib in 3.13, where the
`audioop-lts` package (a dependency on 3.13+) provides the same module under the same name. It
is imported here, and only here, with its DeprecationWarning silenced, so that no warning leaks
into the daemon's log; the mixer and the recording writer use `g711.audioop`.

PCMU <-> PCMA transcoding is a byte translation table built once from audioop's own codecs, so
it is bit-identical to decoding and re-encoding but costs one `bytes.translate` (~0.4 µs a frame)
and never builds the linear frame.
"""

from __future__ import annotations

import warnings
from typing import Final

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # on Python 3.13+ provided by audioop-lts

__all__ = [
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "LINEAR_SILENCE",
    "PCMA",
    "PCMU",
    "SAMPLE_RATE",
    "SILENCE",
    "SUPPORTED",
    "UnsupportedCodec",
    "audioop",
    "decode",
    "encode",
    "transcode",
]

PCMU: Final = 0
"""RTP static payload type of G.711 mu-law (RFC 3551)."""
PCMA: Final = 8
"""RTP static payload type of G.711 A-law (RFC 3551)."""
SUPPORTED: Final = frozenset({PCMU, PCMA})

SAMPLE_RATE: Final = 8000
FRAME_SAMPLES: Final = 160
"""Samples in one 20 ms frame, the mixer's tick (and the RTP timestamp step of a 20 ms packet)."""
FRAME_BYTES: Final = FRAME_SAMPLES * 2
"""Bytes of one 20 ms linear frame (16-bit samples)."""
LINEAR_SILENCE: Final = bytes(FRAME_BYTES)
"""A 20 ms linear frame of digital silence (what a missing input is mixed as)."""


class UnsupportedCodec(ValueError):
    """A payload type other than PCMU (0) or PCMA (8)."""

    def __init__(self, pt: int) -> None:
        super().__init__(f"payload type {pt} is not G.711 (PCMU 0 or PCMA 8)")
        self.pt = pt


_DECODE = {PCMU: audioop.ulaw2lin, PCMA: audioop.alaw2lin}
_ENCODE = {PCMU: audioop.lin2ulaw, PCMA: audioop.lin2alaw}

SILENCE: Final[dict[int, bytes]] = {
    pt: encode_(LINEAR_SILENCE, 2) for pt, encode_ in _ENCODE.items()
}
"""A 20 ms encoded frame of silence per payload type (0xFF for PCMU, 0xD5 for PCMA): what the
engine sends a leg when it has nothing to send but must keep the stream (and its clock) going."""


def _table(from_pt: int, to_pt: int) -> bytes:
    every_code = bytes(range(256))
    return _ENCODE[to_pt](_DECODE[from_pt](every_code, 2), 2)


# Each G.711 byte decodes to exactly one linear sample, so a per-byte table is exact.
_TRANSCODE = {
    (PCMU, PCMA): _table(PCMU, PCMA),
    (PCMA, PCMU): _table(PCMA, PCMU),
}


def decode(payload: bytes, pt: int) -> bytes:
    """G.711 payload -> 16-bit linear PCM (two bytes per payload byte)."""
    try:
        return _DECODE[pt](payload, 2)
    except KeyError:
        raise UnsupportedCodec(pt) from None


def encode(pcm: bytes, pt: int) -> bytes:
    """16-bit linear PCM -> G.711 payload (one byte per sample)."""
    try:
        return _ENCODE[pt](pcm, 2)
    except KeyError:
        raise UnsupportedCodec(pt) from None


def transcode(payload: bytes, from_pt: int, to_pt: int) -> bytes:
    """A G.711 payload in the other law, as decode-then-encode would give, without the PCM.

    Same payload type in and out returns the payload itself (the relay's common case).
    """
    if from_pt == to_pt:
        if from_pt not in SUPPORTED:
            raise UnsupportedCodec(from_pt)
        return payload
    try:
        table = _TRANSCODE[from_pt, to_pt]
    except KeyError:
        raise UnsupportedCodec(to_pt if from_pt in SUPPORTED else from_pt) from None
    return payload.translate(table)
